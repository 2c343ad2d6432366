"""Robust file handling: atomic writes, checked reads, locks and the shared ``results.json``.

* Every file lrpjax writes goes to a temporary file ``.<name>.<random>.tmp`` in the same folder
  first and is then renamed over the target (``os.replace`` is atomic on POSIX), so a crash never
  leaves a half-written checkpoint, figure or data file behind. A writer holds an advisory lock
  on its temporary file; temporary files that a killed process left behind (unlocked and older
  than ``STALE_TMP_SECONDS``) are removed by the next save into that folder.
* :func:`read_npz` checks an ``.npz`` archive's member names, shapes and dtypes from the
  ``.npy`` headers before it reads (or allocates) any data; :func:`read_json_object` reads a
  JSON object. Both raise ``ValueError`` naming the file and the problem.
* :func:`file_lock` serialises work on one cache entry across processes (``fcntl.flock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks (stale files are then judged by age only)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "STALE_TMP_SECONDS", "Member", "NpzMismatchError", "atomic_open", "atomic_write_bytes",
    "atomic_write_text", "cached_sha256", "file_lock", "file_sha256", "read_json_object",
    "read_npz", "read_results", "remove_stale_tmp", "update_results",
]

logger = logging.getLogger(__name__)

STALE_TMP_SECONDS = 600.0  # an unlocked temporary file this old belongs to a dead writer
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what atomic_open's mkstemp makes


# ----------------------------------------------------------------------------- writing
def _try_flock(fd: int, blocking: bool = False) -> bool:
    """Take an exclusive flock on ``fd``; False when another open file holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as err:  # a file system without flock: work unlocked
        logger.info("flock unsupported here (%s)", err)
    return True


def remove_stale_tmp(folder: str | os.PathLike, max_age_s: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files in ``folder`` older than ``max_age_s`` that no live writer
    holds (an interrupted or SIGKILLed save); return the removed paths (each is logged)."""
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TMP_NAME.match(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < max_age_s:
                continue
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                if not _try_flock(fd):
                    continue  # a live writer still holds it
                os.unlink(entry.path)
            finally:
                os.close(fd)
        except OSError:
            continue
        logger.warning("removed stale temporary file %s (left by an interrupted write)", entry.path)
        removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, else delete it.

    Stale temporary files of earlier, killed writers in that folder are removed first.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    lock_fd = os.dup(fd)  # the flock lives until after the rename, so no cleaner removes it
    try:
        _try_flock(lock_fd)
        with os.fdopen(fd, mode) as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual rights
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(lock_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created, never deleted).

    A second process (or thread) asking for the same lock waits until the first releases it;
    the lock dies with its process. Without ``fcntl`` or on a read-only folder: no lock.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        logger.info("no lock %s (%s); continuing without", path, err)
        yield
        return
    try:
        if not _try_flock(fd):
            logger.warning("waiting for %s: another process works on the same entry", path)
            _try_flock(fd, blocking=True)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SIDECAR = ".lrpjax-sha256.json"
_RACY_S = 2.0  # a file modified this recently may change again within one mtime tick


def cached_sha256(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, remembered in ``.lrpjax-sha256.json`` beside the file.

    The entry is keyed by size, mtime, ctime and inode, so any rewrite invalidates it; files
    modified in the last seconds are hashed but not remembered. The sidecar is a cache: an
    unreadable one is ignored, one that cannot be written is skipped.
    """
    path = Path(path)
    st = path.stat()
    key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    sidecar = path.parent / _SIDECAR
    try:
        table = read_json_object(sidecar) if sidecar.exists() else {}
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable %s (%s)", sidecar, err)
        table = {}
    entry = table.get(path.name)
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    if time.time_ns() - st.st_mtime_ns > _RACY_S * 1e9:
        table[path.name] = {"key": key, "sha256": digest}
        try:
            atomic_write_text(sidecar, json.dumps(table, indent=1, sort_keys=True) + "\n")
        except OSError as err:
            logger.info("cannot cache the sha256 of %s in %s (%s)", path, sidecar, err)
    return digest


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a UTF-8 JSON file holding an object; ``ValueError`` naming the file otherwise."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: not valid UTF-8 JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")  # noqa: TRY004
    return value


class Member(NamedTuple):
    """What :func:`read_npz` accepts for one array: ``shape`` (``None`` = any length along that
    axis), dtype ``kinds`` (``np.dtype.kind`` letters) and, for wildcard shapes, ``max_bytes``."""

    shape: tuple[int | None, ...]
    kinds: str = "f"
    max_bytes: int = 1 << 20


class NpzMismatchError(ValueError):
    """The archive is readable but its arrays do not match; ``problems`` lists each one."""

    def __init__(self, path: Path, problems: list[str]):
        super().__init__(f"{path}: " + "; ".join(problems))
        self.problems = problems


def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header length) of the ``.npy`` stream ``fh``."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), bool(fortran), np.dtype(dtype), fh.tell()


def _member_problem(key: str, shape: tuple[int, ...], dtype: np.dtype, spec: Member) -> str | None:
    if dtype.hasobject or dtype.kind not in spec.kinds:
        return f"dtype of {key!r} is {dtype}, expected kind {spec.kinds!r}"
    if len(shape) != len(spec.shape) or any(s is not None and s != d
                                            for s, d in zip(spec.shape, shape)):
        return f"shape mismatch for {key!r}: file {shape}, expected {spec.shape}"
    if None in spec.shape and math.prod(shape) * dtype.itemsize > spec.max_bytes:
        return f"{key!r} of shape {shape} exceeds {spec.max_bytes} bytes"
    return None


def read_npz(path: str | os.PathLike, expected: Mapping[str, Member]) -> dict[str, np.ndarray]:
    """Read the arrays of the ``.npz`` at ``path`` whose members must be exactly ``expected``.

    Names, shapes and dtypes are checked from the zip directory and the ``.npy`` headers
    before any array data is read, so a forged header cannot make this allocate more than the
    expected arrays need. Raises :class:`NpzMismatchError` for arrays that do not match,
    ``ValueError`` (naming the file) for an unreadable archive, ``OSError`` for a missing one.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            problems = [f"member {i.filename!r} is not an .npy array" for i in infos.values()
                        if not i.filename.endswith(".npy")]
            if len(infos) != len(zf.infolist()):
                problems.append("duplicate member names")
            problems += [f"missing key {k!r} (expected shape {expected[k].shape})"
                         for k in sorted(expected.keys() - infos.keys())]
            problems += [f"unexpected key {k!r}" for k in sorted(infos.keys() - expected.keys())]
            if problems:
                raise NpzMismatchError(path, problems)
            headers = {}
            for key, info in infos.items():
                with zf.open(info) as fh:
                    shape, fortran, dtype, offset = _npy_header(fh)
                problem = _member_problem(key, shape, dtype, expected[key])
                nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
                if problem is None and offset + nbytes != info.file_size:
                    problem = (f"{key!r}: header declares {nbytes} data bytes, "
                               f"the member holds {info.file_size - offset}")
                if problem:
                    problems.append(problem)
                headers[key] = (info, shape, fortran, dtype, offset, nbytes)
            if problems:
                raise NpzMismatchError(path, problems)
            out = {}
            for key, (info, shape, fortran, dtype, offset, nbytes) in headers.items():
                with zf.open(info) as fh:
                    fh.read(offset)
                    raw = fh.read(nbytes)
                    if len(raw) != nbytes or fh.read(1):  # reading to the end checks the CRC
                        raise ValueError(f"{key!r}: data size differs from its header")
                array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
                out[key] = array.astype(dtype.newbyteorder("="), order="C")  # a writable copy
            return out
    except (NpzMismatchError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # any parser failure of an untrusted file: zip, zlib, npy, EOF
        raise ValueError(f"{path}: not a readable .npz archive "
                         f"({type(err).__name__}: {err})") from err


# ----------------------------------------------------------------------- results.json
def _jsonable(obj: Any) -> Any:
    """Convert NumPy/JAX scalars and arrays to plain Python for ``json.dumps``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def read_results(path: str | os.PathLike = "figures/results.json") -> dict[str, Any]:
    """Return the results dictionary (empty when the file does not exist yet).

    A file that is not a JSON object raises ``ValueError`` naming it (it is never overwritten).
    """
    path = Path(path)
    if not path.exists():
        return {}
    return read_json_object(path)


def update_results(
    section: str, values: dict[str, Any], path: str | os.PathLike = "figures/results.json"
) -> dict[str, Any]:
    """Set ``results[section] = values`` in the JSON file at ``path`` (atomic read-modify-write).

    Each experiment script owns one section, so scripts can run in any order, also at the same
    time: the read-modify-write holds a lock (``<path>.lock``), so no section is lost.
    """
    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        results = read_results(path)
        results[section] = _jsonable(values)
        atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results
