"""Read PyTorch checkpoint files (state dicts) into NumPy arrays, without torch.

A ``torch.save`` file is a pickle whose tensors point at raw storages kept outside the pickle.
Unpickling runs whatever the file names, so this reader uses a restricted unpickler: it resolves
only the globals a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the typed storage classes such as
``torch.FloatStorage``, each to a stand-in of ours) and refuses every other global with a
:class:`TorchFileError` that names it. Two layouts are read:

* the zip layout (torch >= 1.6): ``<archive>/data.pkl`` plus one entry ``<archive>/data/<key>``
  per storage and an optional ``<archive>/byteorder``;
* the legacy layout (earlier torch): five pickles in a row (magic number, protocol version,
  system info, the object, the sorted storage keys), then per storage an int64 element count
  and the raw bytes.

Every storage's length is checked against the element count the pickle declares, and every
tensor's offset, size and stride against its storage, before a byte is viewed; the tensor is
returned as a contiguous copy. ``sha256`` (optional) checks the file before it is unpickled.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..files import file_sha256

__all__ = ["STORAGE_DTYPES", "TorchFileError", "load_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}
"""Typed storage class (``torch.<name>``) -> NumPy dtype code (bfloat16 is read as uint16 and
widened to float32)."""


class TorchFileError(ValueError):
    """A file that is not a state dict this reader accepts (the message says why)."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclass
class _Storage:
    key: str
    kind: _StorageType
    numel: int
    data: np.ndarray | None = None  # 1-D, filled when the bytes are read


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, shape: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lives."""
    if not isinstance(storage, _Storage):
        raise TorchFileError("a tensor whose storage is not a storage reference")
    ints = (offset, *shape, *stride)
    if not (isinstance(shape, tuple) and isinstance(stride, tuple) and len(shape) == len(stride)
            and all(type(v) is int and v >= 0 for v in ints)):
        raise TorchFileError(f"a tensor with a bad offset/size/stride: {offset}, {shape}, {stride}")
    if backward_hooks:
        raise TorchFileError("a tensor with backward hooks (not a plain state dict)")
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED`; storages become :class:`_Storage` references."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchFileError(
                f"refusing to load the global {module}.{name}: a state dict needs only "
                "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.*Storage"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise TorchFileError(f"unknown persistent id {pid!r:.80}")
        kind, key, _location, numel = pid[1:5]
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise TorchFileError(f"a bad storage reference {pid!r:.80}")
        if type(numel) is not int or numel < 0:
            raise TorchFileError(f"storage {key!r}: bad element count {numel!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise TorchFileError(f"storage {key!r}: storage views are not supported")
        known = self.storages.setdefault(key, _Storage(key, kind, numel))
        if (known.kind, known.numel) != (kind, numel):
            raise TorchFileError(f"storage {key!r} is declared twice with different types/sizes")
        return known


def _as_array(raw: bytes, st: _Storage, byteorder: str) -> np.ndarray:
    dt = st.kind.dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) != st.numel * dt.itemsize:
        raise TorchFileError(f"storage {st.key!r} ({st.kind.name}) has {len(raw)} bytes, "
                             f"expected {st.numel} x {dt.itemsize} (truncated or corrupt file)")
    a = np.frombuffer(raw, dt).astype(dt.newbyteorder("="))
    if st.kind.name == "BFloat16Storage":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a


def _tensor(ref: _TensorRef, name: str) -> np.ndarray:
    st = ref.storage
    if st.data is None:
        raise TorchFileError(f"{name}: storage {st.key!r} has no data in the file")
    if 0 in ref.shape:
        return np.zeros(ref.shape, st.data.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if last >= st.numel:
        raise TorchFileError(f"{name}: offset {ref.offset}, size {ref.shape} and stride "
                             f"{ref.stride} reach element {last} of a storage of {st.numel}")
    item = st.data.itemsize
    view = np.lib.stride_tricks.as_strided(st.data[ref.offset:], ref.shape,
                                           [s * item for s in ref.stride], writeable=False)
    return np.array(view, order="C")


def _materialize(obj: Any, name: str = "") -> Any:
    if isinstance(obj, _TensorRef):
        return _tensor(obj, name or "tensor")
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, f"{name}.{k}" if name else str(k)))
                         for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def _read_legacy(f: BinaryIO, size: int) -> Any:
    header = [_Unpickler(f).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
        raise TorchFileError("not a torch file (legacy magic number / protocol mismatch)")
    info = header[2]
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise TorchFileError("legacy torch file not written on a little-endian machine")
    unpickler = _Unpickler(f)
    obj = unpickler.load()
    keys = _Unpickler(f).load()
    storages = unpickler.storages
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise TorchFileError("the storage key list does not match the storages the pickle uses")
    for key in keys:
        st = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError(f"storage {key!r}: the file ends before its length")
        (numel,) = struct.unpack("<q", head)
        if numel != st.numel:
            raise TorchFileError(f"storage {key!r}: {numel} elements stored, {st.numel} declared")
        nbytes = st.numel * st.kind.dtype.itemsize
        if nbytes > size - f.tell():
            raise TorchFileError(f"storage {key!r} ({st.kind.name}) needs {nbytes} bytes, the "
                                 f"file has {size - f.tell()} left (truncated or corrupt file)")
        st.data = _as_array(f.read(nbytes), st, "little")
    if f.tell() != size:
        raise TorchFileError(f"{size - f.tell()} unexpected bytes after the last storage")
    return obj


def _read_zip(zf: zipfile.ZipFile) -> Any:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise TorchFileError("a zip file without exactly one <archive>/data.pkl")
    root = pkls[0][: -len("data.pkl")]
    names = set(zf.namelist())
    byteorder = "little"
    if root + "byteorder" in names:
        byteorder = zf.read(root + "byteorder").decode().strip()
        if byteorder not in ("little", "big"):
            raise TorchFileError(f"unknown byte order {byteorder!r}")
    unpickler = _Unpickler(io.BytesIO(zf.read(pkls[0])))
    obj = unpickler.load()
    for key, st in unpickler.storages.items():
        entry = f"{root}data/{key}"
        if entry not in names:
            raise TorchFileError(f"storage {key!r}: no entry {entry} in the file")
        st.data = _as_array(zf.read(entry), st, byteorder)
    return obj


def load_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``-d state dict as NumPy arrays (name -> array).

    Args:
      path: a ``.pth`` / ``.pt`` file in torch's zip or legacy layout.
      sha256: if given, the file's expected hex SHA-256 (checked before unpickling).

    Returns:
      An ``OrderedDict`` of C-contiguous arrays in the file's order, each with its storage's
      dtype (:data:`STORAGE_DTYPES`; bfloat16 widened to float32).

    Raises:
      TorchFileError: a refused global, a checksum mismatch, a truncated storage, a tensor that
        does not fit its storage, or anything else that is not a plain state dict.
    """
    path = Path(path)
    if sha256 is not None and (actual := file_sha256(path)) != sha256.lower():
        raise TorchFileError(f"{path}: SHA-256 {actual} differs from the expected "
                             f"{sha256.lower()}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                obj = _read_zip(zf)
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f, path.stat().st_size)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as err:
        raise TorchFileError(f"{path}: not a readable torch file ({err})") from err
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = _materialize(obj)
    for name, value in out.items():
        if not isinstance(value, np.ndarray):
            raise TorchFileError(f"{path}: entry {name!r} is a {type(value).__name__}, "
                                 "not a tensor")
    return out
