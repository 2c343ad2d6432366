"""Caching trained experts and generators in ``checkpoints/`` (atomic, keyed by a config hash).

A file ``<cache_dir>/<name>-<hash>.npz`` holds the parameter leaves and a JSON record of the
configuration; the hash covers the configuration, a fingerprint of the training data and
``CACHE_VERSION``, so changing any of them trains afresh instead of loading stale parameters.
The record holds a sha256 of the leaves. A file that cannot be read, does not fit the expected
structure (checked from the ``.npy`` headers before any data is read), holds non-finite values
or differs from its sha256 is reported (a warning) and retrained. Processes training one entry
take turns (lock file ``.<name>-<hash>.lock``): the second waits, then loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lrpjax.files import Member, atomic_write_bytes, file_lock, read_npz

__all__ = [
    "CACHE_VERSION",
    "config_hash",
    "data_fingerprint",
    "load_or_train",
    "load_tree",
    "save_tree",
]

CACHE_VERSION = 2  # bump when a training algorithm changes (2: minibatch-std discriminator)


def data_fingerprint(x: Any) -> str:
    """sha256 of the array's shape, dtype and bytes (first 16 hex digits)."""
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the JSON-encoded config with sorted keys (first 12 hex digits)."""
    blob = json.dumps({"config": config, "version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _leaves_sha256(leaves: list[np.ndarray]) -> str:
    """sha256 over the dtype, shape and bytes of every leaf."""
    h = hashlib.sha256()
    for a in leaves:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_tree(path: str | os.PathLike, tree: Any, meta: dict[str, Any]) -> Path:
    """Write the leaves of ``tree`` and ``meta`` (JSON, plus ``leaves_sha256``) to ``path``
    (.npz) atomically."""
    leaves = [np.asarray(v) for v in jax.tree.leaves(jax.device_get(tree))]
    arrays = {f"leaf_{i:04d}": v for i, v in enumerate(leaves)}
    meta = {**meta, "leaves_sha256": _leaves_sha256(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_tree(path: str | os.PathLike, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a tree saved by :func:`save_tree` into the structure of ``like``.

    Member names, shapes and dtype kinds are checked before any data is read; ``ValueError``
    naming the file for any problem (unreadable archive or record, mismatch, non-finite
    values, leaves that differ from the recorded sha256).
    """
    ref, treedef = jax.tree.flatten(like)
    kinds = [np.dtype(r.dtype if hasattr(r, "dtype") else np.asarray(r).dtype).kind for r in ref]
    specs = {f"leaf_{i:04d}": Member(tuple(np.shape(r)), k) for i, (r, k) in enumerate(zip(ref, kinds))}
    specs["meta"] = Member((None,), "u", max_bytes=1 << 20)
    arrays = read_npz(path, specs)
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: unreadable record ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the record is {type(meta).__name__}, not an object")  # noqa: TRY004
    leaves = [arrays[f"leaf_{i:04d}"] for i in range(len(ref))]
    bad = [i for i, a in enumerate(leaves) if a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"{path}: non-finite values in leaves {bad}")
    if "leaves_sha256" in meta and meta["leaves_sha256"] != _leaves_sha256(leaves):
        raise ValueError(f"{path}: the leaves differ from the recorded sha256")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in leaves]), meta


def load_or_train(
    name: str,
    config: dict[str, Any],
    train: Callable[[], tuple[Any, dict[str, Any]]],
    like: Callable[[], Any],
    cache_dir: str | os.PathLike = "checkpoints",
    verbose: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Load ``<cache_dir>/<name>-<config_hash(config)>.npz`` or run ``train()`` and save it.

    ``train() -> (params, info)``; ``like()`` returns a tree with the params' structure (e.g.
    ``jax.eval_shape`` of the init). The returned info holds the config, training time and
    ``cached`` (whether it was loaded).
    """
    path = Path(cache_dir) / f"{name}-{config_hash(config)}.npz"
    with file_lock(path.with_name(f".{path.stem}.lock")):  # a second process waits, then loads
        if path.exists():
            problem = None
            try:
                params, meta = load_tree(path, like())
            except (ValueError, OSError) as err:
                problem = str(err)
            else:
                if meta.get("config") != json.loads(json.dumps(config, default=str)):
                    problem = "its record has a different config"
                elif "leaves_sha256" not in meta:
                    problem = "no leaves_sha256 (written by an older lrpjax)"
            if problem is None:
                if verbose:
                    print(f"{name}: loaded {path}")
                return params, {**meta, "cached": True, "path": str(path)}
            warnings.warn(f"{name}: unusable cache {path} ({problem}); retraining", stacklevel=2)
        start = time.perf_counter()
        params, info = train()
        params = jax.block_until_ready(params)
        meta = {**info, "config": config, "train_seconds": time.perf_counter() - start}
        save_tree(path, params, meta)
    if verbose:
        print(f"{name}: trained in {meta['train_seconds']:.1f} s, saved {path}")
    return params, {**meta, "cached": False, "path": str(path)}
