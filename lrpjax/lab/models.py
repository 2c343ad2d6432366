"""The networks explained in the experiments, as Flax NNX modules with Linen twins.

* :class:`MLP` - the LRP tutorial's MNIST network 784-300-100-10 with ReLU activations.
* :class:`CNN` - a small ReLU convnet following the recommendations of Montavon et al. (2018),
  Sec. 6: few dense layers, sum/average pooling (``pool="avg"``; ``"max"`` for comparison) and,
  optionally, non-positive biases (enforced by the training loop, see :mod:`lrpjax.lab.train`).
* :class:`CNNStrided` - the CNN with a strided first convolution (5 x 5, stride 2, no pooling
  after it): the case the translation trick is recommended for (Sec. 6), since its heatmaps carry
  a stride-periodic pattern.
* :class:`MaxNet` - the two-input ReLU network of the paper's Fig. 6,
  f(x) = max(0, 1/2 max(0, x1 - x2) + 1/2 max(0, x2 - x1) + 1/2 max(0, x1 + x2)),
  which equals max(x1, x2) on the positive quadrant.

Pooling and flattening use the LRP-aware modules of :mod:`lrpjax.layers`, so every front-end sees
them. Attributes are declared in call order. The Linen twins (``MLPLinen``, ``CNNLinen``,
``CNNStridedLinen``, ``MaxNetLinen``) name their submodules like the NNX attributes, so :func:`to_linen_variables`
turns an NNX model's parameters into Linen variables with no renaming.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from lrpjax.layers import (
    AvgPool,
    Flatten,
    LinenAvgPool,
    LinenFlatten,
    LinenMaxPool,
    MaxPool,
)

__all__ = [
    "CNN",
    "MLP",
    "MODEL_NAMES",
    "STRIDE",
    "CNNLinen",
    "CNNStrided",
    "CNNStridedLinen",
    "MLPLinen",
    "MaxNet",
    "MaxNetLinen",
    "build",
    "build_linen",
    "to_linen_variables",
]

Dtype = Any
POOLS = ("avg", "max")
# MaxNet's fixed parameters, (in, out) layout as in nnx.Linear / nn.Dense.
MAXNET_W1 = ((1.0, -1.0, 1.0), (-1.0, 1.0, 1.0))
MAXNET_W2 = ((0.5,), (0.5,), (0.5,))
STRIDE = 2  # first-layer stride of CNNStrided


def _check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    return pool


def _fixed(values: tuple) -> Any:
    """An initializer returning the constant ``values`` (checked against the requested shape)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        w = jnp.asarray(values, dtype)
        if w.shape != tuple(shape):
            raise ValueError(f"fixed weights have shape {w.shape}, layer expects {tuple(shape)}")
        return w

    return init


# ---------------------------------------------------------------- Flax NNX
class MLP(nnx.Module):
    """784-300-100-10 ReLU network; input N x 28 x 28 x 1, output the 10 class scores (logits)."""

    def __init__(
        self, rngs: nnx.Rngs, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.flatten = Flatten()
        self.dense1 = nnx.Linear(784, 300, **kw)
        self.dense2 = nnx.Linear(300, 100, **kw)
        self.dense3 = nnx.Linear(100, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.flatten(x)
        a = jax.nn.relu(self.dense1(a))
        a = jax.nn.relu(self.dense2(a))
        return self.dense3(a)


class CNN(nnx.Module):
    """conv5x5x16 -> pool -> conv5x5x32 -> pool -> flatten -> dense 128 -> dense 10 (ReLU).

    ``pool`` selects 2x2 average ("avg", LRP: proportional split) or max ("max", LRP:
    winner-take-all) pooling. ``nonpositive_bias`` is only a flag stored on the model: the
    training loop projects every bias onto b <= 0 after each optimizer step (paper Sec. 6).
    """

    def __init__(
        self,
        pool: str = "avg",
        nonpositive_bias: bool = False,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
    ):
        self.pool = _check_pool(pool)
        self.nonpositive_bias = bool(nonpositive_bias)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        pooling = AvgPool if pool == "avg" else MaxPool
        self.conv1 = nnx.Conv(1, 16, (5, 5), padding="SAME", **kw)
        self.pool1 = pooling(2)
        self.conv2 = nnx.Conv(16, 32, (5, 5), padding="SAME", **kw)
        self.pool2 = pooling(2)
        self.flatten = Flatten()
        self.dense1 = nnx.Linear(7 * 7 * 32, 128, **kw)
        self.dense2 = nnx.Linear(128, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.pool1(jax.nn.relu(self.conv1(x)))
        a = self.pool2(jax.nn.relu(self.conv2(a)))
        a = jax.nn.relu(self.dense1(self.flatten(a)))
        return self.dense2(a)


class CNNStrided(nnx.Module):
    """conv5x5x16 stride 2 -> conv5x5x32 -> avg pool -> flatten -> dense 128 -> dense 10 (ReLU).

    The first convolution samples every ``STRIDE``-th position (28 -> 14) instead of pooling:
    a 5-wide kernel at stride 2 covers alternate pixels 3 and 2 times, so relevance
    redistributed through it carries a pattern of period 2 (Montavon et al. 2018, Sec. 6,
    translation trick). Otherwise the same layers as :class:`CNN` (avg pooling after conv2).
    """

    def __init__(
        self, *, rngs: nnx.Rngs, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32
    ):
        self.pool = "avg"
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = nnx.Conv(1, 16, (5, 5), strides=STRIDE, padding="SAME", **kw)
        self.conv2 = nnx.Conv(16, 32, (5, 5), padding="SAME", **kw)
        self.pool2 = AvgPool(2)
        self.flatten = Flatten()
        self.dense1 = nnx.Linear(7 * 7 * 32, 128, **kw)
        self.dense2 = nnx.Linear(128, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = jax.nn.relu(self.conv1(x))
        a = self.pool2(jax.nn.relu(self.conv2(a)))
        a = jax.nn.relu(self.dense1(self.flatten(a)))
        return self.dense2(a)


class MaxNet(nnx.Module):
    """The paper's Fig. 6 network: Linear(2, 3) -> ReLU -> Linear(3, 1) -> ReLU, fixed weights.

    W1 = [[1, -1, 1], [-1, 1, 1]], W2 = [1/2, 1/2, 1/2]^T, zero biases; output shape (N, 1).
    """

    def __init__(self, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": nnx.Rngs(0)}
        self.dense1 = nnx.Linear(2, 3, kernel_init=_fixed(MAXNET_W1), **kw)
        self.dense2 = nnx.Linear(3, 1, kernel_init=_fixed(MAXNET_W2), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.dense2(jax.nn.relu(self.dense1(x))))


# ---------------------------------------------------------------- Flax Linen twins
class MLPLinen(nn.Module):
    """Linen twin of :class:`MLP` (same parameter names and layout)."""

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.flatten = LinenFlatten()
        self.dense1 = nn.Dense(300, **kw)
        self.dense2 = nn.Dense(100, **kw)
        self.dense3 = nn.Dense(10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.flatten(x)
        a = nn.relu(self.dense1(a))
        a = nn.relu(self.dense2(a))
        return self.dense3(a)


class CNNLinen(nn.Module):
    """Linen twin of :class:`CNN` (same parameter names and layout)."""

    pool: str = "avg"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        pooling = LinenAvgPool if _check_pool(self.pool) == "avg" else LinenMaxPool
        self.conv1 = nn.Conv(16, (5, 5), padding="SAME", **kw)
        self.pool1 = pooling(2)
        self.conv2 = nn.Conv(32, (5, 5), padding="SAME", **kw)
        self.pool2 = pooling(2)
        self.flatten = LinenFlatten()
        self.dense1 = nn.Dense(128, **kw)
        self.dense2 = nn.Dense(10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.pool1(nn.relu(self.conv1(x)))
        a = self.pool2(nn.relu(self.conv2(a)))
        a = nn.relu(self.dense1(self.flatten(a)))
        return self.dense2(a)


class CNNStridedLinen(nn.Module):
    """Linen twin of :class:`CNNStrided` (same parameter names and layout)."""

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.conv1 = nn.Conv(16, (5, 5), strides=STRIDE, padding="SAME", **kw)
        self.conv2 = nn.Conv(32, (5, 5), padding="SAME", **kw)
        self.pool2 = LinenAvgPool(2)
        self.flatten = LinenFlatten()
        self.dense1 = nn.Dense(128, **kw)
        self.dense2 = nn.Dense(10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = nn.relu(self.conv1(x))
        a = self.pool2(nn.relu(self.conv2(a)))
        a = nn.relu(self.dense1(self.flatten(a)))
        return self.dense2(a)


class MaxNetLinen(nn.Module):
    """Linen twin of :class:`MaxNet`; use the variables ``to_linen_variables(MaxNet())``."""

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.dense1 = nn.Dense(3, **kw)
        self.dense2 = nn.Dense(1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(self.dense2(nn.relu(self.dense1(x))))


# ---------------------------------------------------------------- helpers
def to_linen_variables(model: nnx.Module) -> dict[str, Any]:
    """Return ``{"params": ...}`` for the Linen twin of ``model`` (shares no buffers)."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"params": jax.tree.map(jnp.asarray, params)}


MODEL_NAMES = ("mlp", "cnn", "cnn_max", "cnn_nonpos", "cnn_strided")


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown model name {name!r}; valid names are {', '.join(MODEL_NAMES)}")


def build(
    name: str,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
) -> nnx.Module:
    """Build a freshly initialised model by name: "mlp", "cnn" (avg pool), "cnn_max" (max pool),
    "cnn_nonpos" (avg pool, biases kept <= 0 during training), "cnn_strided" (first convolution
    at stride 2, see :class:`CNNStrided`)."""
    kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
    if name == "mlp":
        return MLP(**kw)
    if name == "cnn":
        return CNN("avg", **kw)
    if name == "cnn_max":
        return CNN("max", **kw)
    if name == "cnn_nonpos":
        return CNN("avg", nonpositive_bias=True, **kw)
    if name == "cnn_strided":
        return CNNStrided(**kw)
    raise _unknown(name)


def build_linen(
    name: str, *, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32
) -> nn.Module:
    """The Linen twin of ``build(name, ...)`` (unbound; pair with :func:`to_linen_variables`)."""
    kw = {"dtype": dtype, "param_dtype": param_dtype}
    if name == "mlp":
        return MLPLinen(**kw)
    if name in ("cnn", "cnn_nonpos"):
        return CNNLinen("avg", **kw)
    if name == "cnn_max":
        return CNNLinen("max", **kw)
    if name == "cnn_strided":
        return CNNStridedLinen(**kw)
    raise _unknown(name)
