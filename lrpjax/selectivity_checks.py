"""Argument checks and helpers of :mod:`lrpjax.selectivity` (shapes, regions, replacement
values, random streams, and how callables travel through ``jax.jit``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Array = jax.Array

def _check_nhwc(x: Any, name: str) -> None:
    if np.ndim(x) != 4:
        raise ValueError(f"{name} must be a batch of images (N,H,W,C), got shape {np.shape(x)}")


def _grid(shape: tuple[int, ...], patch: int) -> tuple[int, int]:
    h, w = shape[1], shape[2]
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch={patch} does not divide the spatial shape (H, W) = {(h, w)}")
    return h // patch, w // patch


def _n_regions(shape: tuple[int, ...], patch: int, regions: str) -> int:
    if regions == "patches":
        gh, gw = _grid(shape, patch)
        return gh * gw
    if regions == "windows":
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"regions='windows' needs an odd window size patch >= 1 (centred on "
                             f"a pixel), got patch={patch}")
        return shape[1] * shape[2]
    raise ValueError(f"unknown regions {regions!r}: use 'patches' or 'windows'")


def _call(fn: Callable[..., Array], x: Array, t: Array | None, shape: tuple[int, ...],
          name: str) -> Array:
    out = fn(x) if t is None else fn(x, t)
    if out.shape != shape:
        raise ValueError(f"{name} must return shape {shape} for input {x.shape}, got {out.shape}"
                         + (" (n_scores sets K of (N, K) scores)" if name == "f" else ""))
    return out


def _bad(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    return f"{idx.size} image(s), indices {idx[:10].tolist()}{' ...' if idx.size > 10 else ''}"


def _rng(key: Array, stream: int) -> np.random.Generator:
    """NumPy generator seeded by the bits of a JAX key (no threefry compile per shape)."""
    bits = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) \
        else key
    return np.random.default_rng([*np.asarray(bits, np.uint32).ravel().tolist(), stream])


def _split(fn: Callable[..., Array] | None) -> tuple[Any, list]:
    """(static part, traced leaves): a pytree whose leaves are all arrays travels as leaves."""
    if fn is None:
        return None, []
    leaves, treedef = jax.tree.flatten(fn)
    if leaves and all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
        return ("tree", treedef), leaves
    return ("static", fn), []


def _join(static: Any, leaves: list) -> Callable[..., Array] | None:
    if static is None:
        return None
    return jax.tree.unflatten(static[1], leaves) if static[0] == "tree" else static[1]


def _replacement(replacement: Any, x: np.ndarray, data_min: float, data_max: float,
                 data_mean: Any) -> np.ndarray | None:
    """Fixed replacement values as a broadcast view of x's shape; None means uniform noise."""
    if isinstance(replacement, str):
        if replacement == "noise":
            if not data_max > data_min:
                raise ValueError(f"replacement='noise' needs data_max > data_min, got "
                                 f"[{data_min}, {data_max}]")
            return None
        if replacement == "black":
            value = data_min
        elif replacement == "mean":
            if data_mean is None:
                raise ValueError("replacement='mean' needs data_mean (a scalar or the mean image)")
            value = data_mean
        else:
            raise ValueError(f"unknown replacement {replacement!r}: use 'black', 'mean', 'noise', "
                             "a number or an array")
    else:
        value = replacement
    arr = np.asarray(value, dtype=x.dtype)
    try:
        arr = np.broadcast_to(arr, x.shape)
    except ValueError:
        raise ValueError(f"replacement of shape {arr.shape} does not broadcast to x's shape "
                         f"{x.shape}") from None
    if not np.isfinite(arr).all():
        raise ValueError("replacement values contain NaN or inf")
    return arr
