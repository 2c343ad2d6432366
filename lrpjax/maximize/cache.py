"""Caching trained experts and generators in ``checkpoints/`` (atomic, keyed by a config hash).

A file ``<cache_dir>/<name>-<hash>.npz`` holds the parameter leaves and a JSON record of the
configuration; the hash covers the configuration, a fingerprint of the training data and
``CACHE_VERSION``, so changing any of them trains afresh instead of loading stale parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lrpjax.io import atomic_write_bytes

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


def save_tree(path: str | os.PathLike, tree: Any, meta: dict[str, Any]) -> Path:
    """Write the leaves of ``tree`` and ``meta`` (JSON) to ``path`` (.npz) atomically."""
    leaves = jax.tree.leaves(jax.device_get(tree))
    arrays = {f"leaf_{i:04d}": np.asarray(v) for i, v in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_tree(path: str | os.PathLike, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a tree saved by :func:`save_tree` into the structure of ``like`` (shapes checked)."""
    with np.load(path) as f:
        meta = json.loads(f["meta"].tobytes().decode())
        leaves = [f[f"leaf_{i:04d}"] for i in range(sum(k.startswith("leaf_") for k in f.files))]
    ref, treedef = jax.tree.flatten(like)
    if len(ref) != len(leaves) or any(np.shape(r) != a.shape for r, a in zip(ref, leaves)):
        raise ValueError(f"{path}: stored parameters do not match the expected structure")
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
    if path.exists():
        try:
            params, meta = load_tree(path, like())
        except (ValueError, OSError, KeyError) as err:
            if verbose:
                print(f"{name}: ignoring unusable cache {path} ({err}); training")
        else:
            if meta.get("config") == json.loads(json.dumps(config, default=str)):
                if verbose:
                    print(f"{name}: loaded {path}")
                return params, {**meta, "cached": True, "path": str(path)}
    start = time.perf_counter()
    params, info = train()
    params = jax.block_until_ready(params)
    meta = {**info, "config": config, "train_seconds": time.perf_counter() - start}
    save_tree(path, params, meta)
    if verbose:
        print(f"{name}: trained in {meta['train_seconds']:.1f} s, saved {path}")
    return params, {**meta, "cached": False, "path": str(path)}
