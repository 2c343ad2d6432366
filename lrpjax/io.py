"""Atomic file writing and the shared ``figures/results.json``.

Every file lrpjax writes goes to a temporary file in the same folder first and is then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash never leaves a
half-written checkpoint, figure or data file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "read_results", "update_results"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, else delete it."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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
    """Return the results dictionary (empty when the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def update_results(
    section: str, values: dict[str, Any], path: str | os.PathLike = "figures/results.json"
) -> dict[str, Any]:
    """Set ``results[section] = values`` in the JSON file at ``path`` (atomic read-modify-write).

    Each experiment script owns one section, so scripts can run in any order.
    """
    results = read_results(path)
    results[section] = _jsonable(values)
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results
