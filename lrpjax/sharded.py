"""Explain a whole dataset in batches, data-parallel over all local devices, streamed to disk.

:func:`explain_dataset` takes any explanation ``explain(x, *extras) -> heatmaps`` (e.g.
``lambda x, t: lrpjax.relevance(model, x, composite=..., target=t)``), an iterable of batches
of any sizes, and writes one ``.npy`` file holding a heatmap per input, in input order. Batches
are regrouped to ``batch_size`` rows (the last one padded by repeating its last row, so one
compiled shape serves all), placed on a ``Mesh`` over a "data" axis with the batch axis
sharded (``NamedSharding(mesh, P("data"))``) and explained by one ``jax.jit``-compiled SPMD
program: each device explains its slice of the batch. While the devices work on batch k+1 the
host writes batch k (JAX dispatch is asynchronous), so only about two batches are in memory.
The file is written to a temporary name beside ``out_path`` and renamed at the end (atomic:
readers never see a partial file); its .npy header is written last, when the number of rows
is known. Each sample's heatmap depends only on that sample: the file is bit-for-bit the
one a single device writes with the same ``batch_size`` (tested with 4 host devices); other
batch sizes may change the last bits (XLA picks kernels per shape).

Several GPUs / TPUs and several hosts
-------------------------------------
The same code runs unchanged on one host with several accelerators: the default mesh spans
``jax.devices()``, and ``batch_size`` (the *global* batch) must be a multiple of the device
count. On several hosts (processes), call ``jax.distributed.initialize()`` first in every
process (on Cloud TPU and SLURM/Open MPI clusters it needs no arguments; elsewhere pass
``coordinator_address``, ``num_processes`` and ``process_id``). Then each process passes only
*its own* part of the dataset (e.g. the files ``i::jax.process_count()`` for process
``jax.process_index()``), as ``batch_size // jax.process_count()`` rows per step. The function
assembles the global batch with ``jax.make_array_from_process_local_data`` (each process
contributes the rows for its local devices), runs the one SPMD program over all devices of all
hosts, and each process writes the heatmaps of its own rows to
``<out_path stem>.process<i>-of-<n>.npy``. All processes must run the same number of steps:
give them equally many samples (pad the dataset), or the collective program waits forever.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .files import atomic_open

__all__ = ["data_mesh", "explain_dataset", "output_path"]

_HEADER_BYTES = 256  # fixed .npy v1.0 header size (a multiple of 64): room for any shape


def data_mesh(devices: Any = None) -> Mesh:
    """A one-axis ``Mesh`` named "data" over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def output_path(out_path: str | os.PathLike) -> Path:
    """Where this process writes: ``out_path``, or ``<stem>.process<i>-of-<n>.npy`` when the
    program runs in several processes."""
    path = Path(out_path)
    if jax.process_count() == 1:
        return path
    return path.with_name(f"{path.stem}.process{jax.process_index()}-of-"
                          f"{jax.process_count()}{path.suffix}")


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A .npy format 1.0 header of exactly ``_HEADER_BYTES`` bytes."""
    text = (f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, "
            f"'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}")
    room = _HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(text) + 1 > room:
        raise ValueError(f"array shape {shape} is too long for the .npy header")
    return (np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + struct.pack("<H", room)
            + (text.ljust(room - 1) + "\n").encode("latin1"))


def _as_tuple(item: Any) -> tuple[np.ndarray, ...]:
    parts = item if isinstance(item, (tuple, list)) else (item,)
    arrays = tuple(np.asarray(a) for a in parts)
    n = {a.shape[0] if a.ndim else None for a in arrays}
    if len(n) != 1 or None in n:
        raise ValueError("each batch must be an array (n, ...) or a tuple of arrays with the "
                         f"same leading size, got shapes {[a.shape for a in arrays]}")
    return arrays


def _validate(arrays: tuple[np.ndarray, ...], index: int, start: int) -> None:
    """Every floating array of a batch is finite, else a ValueError naming batch and row."""
    for j, a in enumerate(arrays):
        if not np.issubdtype(a.dtype, np.inexact) and a.dtype.kind != "V":
            continue
        try:
            finite = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        except TypeError:  # a dtype without isfinite: not ours to judge
            continue
        if not finite.all():
            r = int(np.argmin(finite))
            what = "x" if j == 0 else f"array {j} of the batch"
            raise ValueError(f"batch {index}, row {r} (sample {start + r}): {what} contains NaN "
                             "or infinite values; nothing was written")


def _regroup(batches: Iterable[Any], size: int,
             starts: list[int]) -> Iterator[tuple[tuple[np.ndarray, ...], int]]:
    """Batches of exactly ``size`` rows and the number of real rows (the last is padded).
    Each incoming batch is validated (:func:`_validate`) and its first sample's index is
    appended to ``starts``."""
    buffer: list[tuple[np.ndarray, ...]] = []
    held, seen = 0, 0
    for index, item in enumerate(batches):
        arrays = _as_tuple(item)
        _validate(arrays, index, seen)
        starts.append(seen)
        seen += arrays[0].shape[0]
        buffer.append(arrays)
        held += arrays[0].shape[0]
        while held >= size:
            parts = [np.concatenate(col) for col in zip(*buffer, strict=True)]
            yield tuple(p[:size] for p in parts), size
            rest = tuple(p[size:] for p in parts)
            held -= size
            buffer = [rest] if held else []
    if held:
        parts = [np.concatenate(col) for col in zip(*buffer, strict=True)]
        pad = [(0, size - held)]
        yield tuple(np.pad(p, pad + [(0, 0)] * (p.ndim - 1), mode="edge") for p in parts), held


def _local_rows(out: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded array held by this process, in order."""
    if out.is_fully_addressable:
        return np.asarray(out)
    shards = {s.index[0].start or 0: s for s in out.addressable_shards}
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


class _Writer:
    """Streams rows into an open .npy file whose header is completed at the end."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.rows, self.dtype, self.row_shape = fh, 0, None, None
        fh.write(b"\0" * _HEADER_BYTES)

    def write(self, rows: np.ndarray) -> None:
        if self.dtype is None:
            self.dtype, self.row_shape = rows.dtype, rows.shape[1:]
        elif rows.shape[1:] != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(f"explain returned {rows.dtype}{rows.shape[1:]} rows after "
                             f"{self.dtype}{self.row_shape}")
        self.fh.write(np.ascontiguousarray(rows).tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        if self.dtype is None:
            raise ValueError("the dataset is empty: no batches to explain")
        self.fh.seek(0)
        self.fh.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.fh.seek(0, os.SEEK_END)


def _check_rows(ok: np.ndarray, first: int, starts: list[int], extras: tuple) -> None:
    """Heatmap rows that are not finite: a ValueError naming the batch and row."""
    if ok.all():
        return
    r = int(np.argmin(ok))
    sample = first + r
    b = bisect.bisect_right(starts, sample) - 1
    seen = [f"{a[r].item()!r}" for a in extras if a.ndim == 1]
    extra = f" (extras at that row: {', '.join(seen)})" if seen else ""
    raise ValueError(
        f"batch {b}, row {sample - starts[b]} (sample {sample}): the heatmap is not finite"
        f"{extra}. lrpjax's explain functions return NaN rows under jax.jit for a target out of "
        "range of the model's classes; inf means a value overflowed. Nothing was written")


def explain_dataset(explain: Callable[..., Any], batches: Iterable[Any],
                    out_path: str | os.PathLike, *, batch_size: int,
                    mesh: Mesh | None = None) -> Path:
    """Explain every sample of ``batches`` and stream the heatmaps into the .npy ``out_path``.

    ``batches`` yields arrays (n, ...) or tuples ``(x, *extras)`` of per-sample arrays (e.g.
    targets) passed on as ``explain(x, *extras)``; sizes may vary, the iterable is consumed
    once. ``batch_size`` is the global batch explained per step (a multiple of the devices of
    ``mesh``, default :func:`data_mesh` over all devices). Returns the path written (see
    :func:`output_path`); ``np.load(path, mmap_mode="r")`` reads it without loading it all.

    Each batch is validated before it is dispatched (NaN or infinite values in a floating
    array raise a ValueError naming the batch and row), and each heatmap row before it is
    written (a row that is not finite, e.g. the NaN row of an out-of-range target, raises
    likewise); the output file is then not created.
    """
    mesh = data_mesh() if mesh is None else mesh
    if "data" not in mesh.axis_names:
        raise ValueError(f"the mesh needs a 'data' axis, got axes {mesh.axis_names}")
    n_dev, n_proc = mesh.shape["data"], jax.process_count()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size % n_dev or batch_size % n_proc:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {n_dev} devices "
                         f"of the mesh's 'data' axis (and of the {n_proc} processes)")
    sharding = NamedSharding(mesh, P("data"))

    def checked(*args: Any) -> tuple[Any, Any]:
        out = explain(*args)
        return out, jnp.all(jnp.isfinite(out.reshape(out.shape[0], -1)), axis=1)

    step = jax.jit(checked, out_shardings=(sharding, sharding))
    local = batch_size // n_proc
    path = output_path(out_path)
    starts: list[int] = []
    with atomic_open(path, "wb") as fh:
        writer, pending, first = _Writer(fh), None, 0

        def flush(done: tuple) -> None:
            out, ok, n_real, at, extras = done
            _check_rows(_local_rows(ok)[:n_real], at, starts, extras)
            writer.write(_local_rows(out)[:n_real])

        for arrays, n_real in _regroup(batches, local, starts):
            inputs = [jax.make_array_from_process_local_data(sharding, a,
                                                             (batch_size, *a.shape[1:]))
                      for a in arrays]
            out, ok = step(*inputs)  # asynchronous: runs while the previous batch is written
            if pending is not None:
                flush(pending)
            pending = (out, ok, n_real, first, arrays[1:])
            first += n_real
        if pending is not None:
            flush(pending)
        writer.close()
    return path
