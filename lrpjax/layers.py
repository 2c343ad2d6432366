"""Building blocks: pooling, flattening and residual sums as Flax modules.

The engine (:mod:`lrpjax.engine`) sees every operation, so a bare ``jnp.mean``, ``x + y`` or
``jax.nn.relu`` gets the same rule as these modules (Montavon et al. 2018, Sec. 5.3). The
modules name the operation in :func:`lrpjax.describe` and let a composite target it by type:

* ``AvgPool`` / ``SumPool`` -> ``Norm`` (proportional split R_j = a_j / sum_j a_j * R_k);
* ``MaxPool`` -> winner-take-all (the plain gradient);
* ``Add`` (residual sum) -> ``Norm``;
* ``ReLU`` -> ``Pass`` (relevance passes unchanged, as in Zennit; so does a bare ReLU).

Pooling uses a reshape (window == stride, no padding): on XLA:CPU this is much faster in the
backward pass than ``flax.nnx.max_pool``'s select-and-scatter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

__all__ = [
    "Add",
    "AvgPool",
    "Flatten",
    "Identity",
    "LinenAdd",
    "LinenAvgPool",
    "LinenFlatten",
    "LinenMaxPool",
    "LinenReLU",
    "LinenSumPool",
    "MaxPool",
    "ReLU",
    "SumPool",
    "avg_pool",
    "flatten",
    "max_pool",
    "sum_pool",
]


def _windows(x: jax.Array, window: int) -> jax.Array:
    """Reshape NHWC ``x`` to (N, H/w, w, W/w, w, C); H and W must be divisible by ``window``."""
    if x.ndim != 4:
        raise ValueError(f"pooling expects NHWC input with 4 dimensions, got shape {x.shape}")
    n, h, w, c = x.shape
    if h % window or w % window:
        raise ValueError(f"pooling window {window} does not divide the spatial shape {(h, w)}")
    return x.reshape(n, h // window, window, w // window, window, c)


def sum_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping sum pooling, z_k = sum_{j in window k} a_j."""
    return _windows(x, window).sum(axis=(2, 4))


def avg_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping average pooling, z_k = mean_{j in window k} a_j."""
    return _windows(x, window).mean(axis=(2, 4))


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping max pooling, z_k = max_{j in window k} a_j.

    Its gradient (and LRP relevance) goes to the *first* maximum of each window in row-major
    order (winner-take-all, ties as in torch/Zennit), not split among ties.
    """
    blocks = _windows(x, window).transpose(0, 1, 3, 5, 2, 4)  # (N, H/w, W/w, C, w, w)
    blocks = blocks.reshape(*blocks.shape[:4], window * window)
    first = jnp.argmax(blocks, axis=-1)
    return jnp.take_along_axis(blocks, first[..., None], axis=-1, mode="clip")[..., 0]


def flatten(x: jax.Array) -> jax.Array:
    """Flatten all but the batch axis (NHWC order)."""
    return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------- Flax NNX modules
class AvgPool(nnx.Module):
    """Average pooling over ``window`` x ``window`` blocks (LRP: Norm rule)."""

    def __init__(self, window: int = 2):
        self.window = window

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool(x, self.window)


class SumPool(nnx.Module):
    """Sum pooling over ``window`` x ``window`` blocks (LRP: Norm rule)."""

    def __init__(self, window: int = 2):
        self.window = window

    def __call__(self, x: jax.Array) -> jax.Array:
        return sum_pool(x, self.window)


class MaxPool(nnx.Module):
    """Max pooling over ``window`` x ``window`` blocks (LRP: winner-take-all)."""

    def __init__(self, window: int = 2):
        self.window = window

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(x, self.window)


class Flatten(nnx.Module):
    """Flatten all but the batch axis (LRP: relevance passes unchanged)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return flatten(x)


class Add(nnx.Module):
    """Residual sum z = x + y (LRP: Norm rule, R_x = x / (x + y) R, R_y = y / (x + y) R)."""

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return x + y


class ReLU(nnx.Module):
    """max(0, x) as a module, so LRP can pass relevance through it unchanged (Pass)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class Identity(nnx.Module):
    """The identity, e.g. where a BatchNorm was folded away (LRP: Pass). Ignores keywords."""

    def __call__(self, x: jax.Array, **kwargs: object) -> jax.Array:
        return x


# ---------------------------------------------------------------- Flax Linen twins
class LinenAvgPool(nn.Module):
    """Linen twin of :class:`AvgPool`."""

    window: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool(x, self.window)


class LinenSumPool(nn.Module):
    """Linen twin of :class:`SumPool`."""

    window: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return sum_pool(x, self.window)


class LinenMaxPool(nn.Module):
    """Linen twin of :class:`MaxPool`."""

    window: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(x, self.window)


class LinenFlatten(nn.Module):
    """Linen twin of :class:`Flatten`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return flatten(x)


class LinenAdd(nn.Module):
    """Linen twin of :class:`Add`."""

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return x + y




class LinenReLU(nn.Module):
    """Linen twin of :class:`ReLU`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)
