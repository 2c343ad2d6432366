"""The model zoo for the LRP engine: every model written three ways with the same weights.

For each model there is

* a Flax NNX module, written the way the Flax docs write them (``nnx.Sequential`` with bare
  functions, ``partial(nnx.avg_pool, ...)`` attributes, bare residual sums ``x + y``, ...);
* a Flax Linen twin (``nn.compact`` or ``setup``; ``model.apply(variables, x)``);
* a plain JAX function ``fn(params, x)`` (``jax.lax`` convolutions, ``x @ W + b``, ...);
* a float64 NumPy reference forward (tests/zoo_reference.py) for the reference LRP.

Weights live in one *canonical* form, a nested dict of float64 NumPy arrays such as
``{"conv1": {"kernel": ..., "bias": ...}, "gamma": ...}``; ``nnx_model``, ``linen_model`` and
``fn_params`` turn it into each front-end's form in any dtype, ``params_from_nnx`` and
``params_from_linen`` read it back. The function route gets exactly the canonical dict (as
jnp arrays), so its parameter names are the canonical names.

BatchNorm (model "strided_bn_cnn"): the canonical weights hold the conv and the BN statistics.
The NNX model has the ``nnx.BatchNorm`` and is put in eval mode and folded with
``lrpjax.canonizers.fold_batchnorm``; the Linen and function twins (and the reference) use the
conv with the BN folded in (NumPy float64, :func:`zoo_reference.fold_bn`).

``BLOCKS`` / :func:`composed_model`: the blocks of the random compositions of the hypothesis
test, each also written three ways (plus the reference's ``ref_block``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import zoo_reference as zr
from flax import linen as nn
from flax import nnx

from lrpjax import canonizers, layers

N_OUT = 5


# ------------------------------------------------------------------ shared plain-JAX pieces
def flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def dense(p: dict, x: jax.Array) -> jax.Array:
    return x @ p["kernel"] + p["bias"]


def conv(p: dict, x: jax.Array, strides: tuple = (1, 1), padding: str = "SAME",
         groups: int = 1) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, p["kernel"], strides, padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups)
    return y + p["bias"]


def lax_avg_pool(x: jax.Array, k: int = 2) -> jax.Array:
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, k, k, 1), "VALID") / (k * k)


def lax_max_pool(x: jax.Array, k: int = 2) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")


def reshape_mean_pool(x: jax.Array, k: int = 2) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))


# activations: (NNX spelling, Linen spelling, plain-JAX spelling)
ACTIVATIONS: dict[str, tuple[Callable, Callable, Callable]] = {
    "relu": (nnx.relu, nn.relu, jax.nn.relu),
    "tanh": (nnx.tanh, nn.tanh, jnp.tanh),
    "leaky_relu": (nnx.leaky_relu, nn.leaky_relu, jax.nn.leaky_relu),
    "gelu": (nnx.gelu, nn.gelu, jax.nn.gelu),
    "silu": (nnx.silu, nn.silu, jax.nn.silu),
    "elu": (nnx.elu, nn.elu, jax.nn.elu),
    "softplus": (nnx.softplus, nn.softplus, jax.nn.softplus),
    "sigmoid": (nnx.sigmoid, nn.sigmoid, jax.nn.sigmoid),
}


def _kw(dtype: Any, rngs: nnx.Rngs | None = None) -> dict:
    kw = {"dtype": dtype, "param_dtype": dtype}
    if rngs is not None:
        kw["rngs"] = rngs
    return kw


# ------------------------------------------------------------------ canonical initialisers
def _lin(rng: np.random.Generator, din: int, dout: int, bias: bool) -> dict:
    return {"kernel": rng.normal(size=(din, dout)) / np.sqrt(din),
            "bias": rng.normal(scale=0.2, size=dout) if bias else np.zeros(dout)}


def _cv(rng: np.random.Generator, k: int, cin: int, cout: int, bias: bool,
        groups: int = 1) -> dict:
    fan_in = k * k * cin // groups
    return {"kernel": rng.normal(size=(k, k, cin // groups, cout)) / np.sqrt(fan_in),
            "bias": rng.normal(scale=0.2, size=cout) if bias else np.zeros(cout)}


# ================================================================== (a) NNX Sequential CNN
def SequentialCNN(dtype: Any = jnp.float32, *, rngs: nnx.Rngs) -> nnx.Sequential:
    """(a) the NNX CNN tutorial's layers in an ``nnx.Sequential`` with bare functions."""
    kw = _kw(dtype, rngs)
    return nnx.Sequential(
        nnx.Conv(1, 4, kernel_size=(3, 3), **kw),
        nnx.relu,
        partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2)),
        nnx.Conv(4, 6, kernel_size=(3, 3), **kw),
        nnx.relu,
        partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2)),
        flatten,
        nnx.Linear(54, 16, **kw),
        nnx.relu,
        nnx.Linear(16, N_OUT, **kw),
    )


def LinenSequentialCNN(dtype: Any = jnp.float32) -> nn.Module:
    kw = _kw(dtype)
    return nn.Sequential((
        nn.Conv(4, (3, 3), **kw),
        nn.relu,
        partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2)),
        nn.Conv(6, (3, 3), **kw),
        nn.relu,
        partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2)),
        flatten,
        nn.Dense(16, **kw),
        nn.relu,
        nn.Dense(N_OUT, **kw),
    ))


def seq_cnn_fn(p: dict, x: jax.Array) -> jax.Array:
    x = lax_avg_pool(jax.nn.relu(conv(p["conv1"], x)))
    x = lax_avg_pool(jax.nn.relu(conv(p["conv2"], x)))
    x = jax.nn.relu(dense(p["dense1"], flatten(x)))
    return dense(p["dense2"], x)


def small_cnn_init(rng: np.random.Generator, bias: bool) -> dict:
    return {"conv1": _cv(rng, 3, 1, 4, bias), "conv2": _cv(rng, 3, 4, 6, bias),
            "dense1": _lin(rng, 54, 16, bias), "dense2": _lin(rng, 16, N_OUT, bias)}


# ================================================================== (b) Linen MNIST example CNN
class LinenMnistCNN(nn.Module):
    """(b) the Linen MNIST example: nn.avg_pool called as a function, reshape, nn.Dense."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = _kw(self.dtype)
        x = nn.Conv(features=4, kernel_size=(3, 3), **kw)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=6, kernel_size=(3, 3), **kw)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(features=16, **kw)(x)
        x = nn.relu(x)
        x = nn.Dense(features=N_OUT, **kw)(x)
        return x


class TutorialCNN(nnx.Module):
    """NNX twin of (b), as the Flax NNX MNIST tutorial writes it."""

    def __init__(self, dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        kw = _kw(dtype, rngs)
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), **kw)
        self.conv2 = nnx.Conv(4, 6, kernel_size=(3, 3), **kw)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(54, 16, **kw)
        self.linear2 = nnx.Linear(16, N_OUT, **kw)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.linear1(x))
        x = self.linear2(x)
        return x


def mnist_cnn_fn(p: dict, x: jax.Array) -> jax.Array:
    x = reshape_mean_pool(jax.nn.relu(conv(p["conv1"], x)))
    x = reshape_mean_pool(jax.nn.relu(conv(p["conv2"], x)))
    x = jax.nn.relu(dense(p["dense1"], x.reshape(x.shape[0], -1)))
    return dense(p["dense2"], x)


# ================================================================== (c) strided conv + BN + maxpool
def StridedBNCNN(dtype: Any = jnp.float32, *, rngs: nnx.Rngs) -> nnx.Sequential:
    """(c) strided SAME conv, BatchNorm, relu, nnx.max_pool, dense, relu, Dropout, dense."""
    kw = _kw(dtype, rngs)
    return nnx.Sequential(
        nnx.Conv(1, 6, kernel_size=(3, 3), strides=(2, 2), padding="SAME", **kw),
        nnx.BatchNorm(6, **kw),
        nnx.relu,
        partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2)),
        flatten,
        nnx.Linear(54, 12, **kw),
        nnx.relu,
        nnx.Dropout(0.5, rngs=rngs),
        nnx.Linear(12, N_OUT, **kw),
    )


class LinenStridedCNN(nn.Module):
    """Linen twin of (c) with the BatchNorm already folded into the conv."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = _kw(self.dtype)
        x = nn.Conv(6, (3, 3), strides=(2, 2), padding="SAME", **kw)(x)
        x = nn.relu(x)
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(12, **kw)(x))
        x = nn.Dropout(0.5, deterministic=True)(x)
        return nn.Dense(N_OUT, **kw)(x)


def strided_cnn_fn(p: dict, x: jax.Array) -> jax.Array:
    """Function twin of (c): ``p["conv"]`` is the folded conv (see :func:`twin_params`)."""
    x = jax.nn.relu(conv(p["conv"], x, strides=(2, 2), padding="SAME"))
    x = lax_max_pool(x)
    x = jax.nn.relu(dense(p["dense1"], flatten(x)))
    return dense(p["dense2"], x)


def strided_bn_init(rng: np.random.Generator, bias: bool) -> dict:
    c = 6
    bn = {"scale": rng.uniform(0.5, 1.5, c),
          "bias": rng.normal(scale=0.2, size=c) if bias else np.zeros(c),
          "mean": rng.normal(scale=0.2, size=c) if bias else np.zeros(c),
          "var": rng.uniform(0.5, 2.0, c)}
    return {"conv": _cv(rng, 3, 1, c, bias), "bn": bn, "dense1": _lin(rng, 54, 12, bias),
            "dense2": _lin(rng, 12, N_OUT, bias)}


def strided_bn_twin(p: dict) -> dict:
    q = {k: v for k, v in p.items() if k != "bn"}
    q["conv"] = zr.fold_bn(p["conv"], p["bn"])
    return q


# ================================================================== (d) bare residuals
class ResidualMLP(nnx.Module):
    """(d) o(relu(d(x)) + x) with a bare ``+``."""

    def __init__(self, din: int = 16, dout: int = N_OUT, dtype: Any = jnp.float32, *,
                 rngs: nnx.Rngs):
        self.d = nnx.Linear(din, din, **_kw(dtype, rngs))
        self.o = nnx.Linear(din, dout, **_kw(dtype, rngs))

    def __call__(self, x):
        return self.o(nnx.relu(self.d(x)) + x)


class LinenResidualMLP(nn.Module):
    din: int = 16
    dout: int = N_OUT
    dtype: Any = jnp.float32

    def setup(self):
        self.d = nn.Dense(self.din, **_kw(self.dtype))
        self.o = nn.Dense(self.dout, **_kw(self.dtype))

    def __call__(self, x):
        return self.o(nn.relu(self.d(x)) + x)


def residual_mlp_fn(p: dict, x: jax.Array) -> jax.Array:
    return dense(p["o"], jax.nn.relu(dense(p["d"], x)) + x)


def residual_mlp_init(rng: np.random.Generator, bias: bool) -> dict:
    return {"d": _lin(rng, 16, 16, bias), "o": _lin(rng, 16, N_OUT, bias)}


class ResidualCNN(nnx.Module):
    """(d) a bare residual CNN: h + relu(conv2 h) - relu(conv3 h), jnp.mean over H, W."""

    def __init__(self, dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        kw = _kw(dtype, rngs)
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), **kw)
        self.conv2 = nnx.Conv(4, 4, kernel_size=(3, 3), **kw)
        self.conv3 = nnx.Conv(4, 4, kernel_size=(3, 3), **kw)
        self.head = nnx.Linear(4, N_OUT, **kw)

    def __call__(self, x):
        h = nnx.relu(self.conv1(x))
        h = h + nnx.relu(self.conv2(h)) - nnx.relu(self.conv3(h))
        h = jnp.mean(h, axis=(1, 2))
        return self.head(h)


class LinenResidualCNN(nn.Module):
    dtype: Any = jnp.float32

    def setup(self):
        kw = _kw(self.dtype)
        self.conv1 = nn.Conv(4, (3, 3), **kw)
        self.conv2 = nn.Conv(4, (3, 3), **kw)
        self.conv3 = nn.Conv(4, (3, 3), **kw)
        self.head = nn.Dense(N_OUT, **kw)

    def __call__(self, x):
        h = nn.relu(self.conv1(x))
        h = h + nn.relu(self.conv2(h)) - nn.relu(self.conv3(h))
        return self.head(jnp.mean(h, axis=(1, 2)))


def residual_cnn_fn(p: dict, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(conv(p["conv1"], x))
    h = h + jax.nn.relu(conv(p["conv2"], h)) - jax.nn.relu(conv(p["conv3"], h))
    return dense(p["head"], h.mean(axis=(1, 2)))


def residual_cnn_init(rng: np.random.Generator, bias: bool) -> dict:
    return {"conv1": _cv(rng, 3, 1, 4, bias), "conv2": _cv(rng, 3, 4, 4, bias),
            "conv3": _cv(rng, 3, 4, 4, bias), "head": _lin(rng, 4, N_OUT, bias)}


# ================================================================== (e) activation MLPs
def _act_sizes(n_act: int) -> tuple[int, ...]:
    return (16, *([12, 10, 8, 8][:n_act]), N_OUT)


class ActMLP(nnx.Module):
    """(e) dense -> act per hidden layer (``acts``: names in ACTIVATIONS), dense output."""

    def __init__(self, acts: tuple[str, ...], dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        self.acts = tuple(ACTIVATIONS[a][0] for a in acts)
        self.layers = nnx.List([nnx.Linear(a, b, **_kw(dtype, rngs))
                                for a, b in itertools.pairwise(_act_sizes(len(acts)))])

    def __call__(self, x):
        for layer, act in zip(self.layers, self.acts, strict=False):
            x = act(layer(x))
        return self.layers[-1](x)


class LinenActMLP(nn.Module):
    acts: tuple[str, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        sizes = _act_sizes(len(self.acts))
        for d_out, act in zip(sizes[1:], self.acts, strict=False):
            x = ACTIVATIONS[act][1](nn.Dense(d_out, **_kw(self.dtype))(x))
        return nn.Dense(sizes[-1], **_kw(self.dtype))(x)


def make_act_mlp_fn(acts: tuple[str, ...]) -> Callable:
    def fn(p: dict, x: jax.Array) -> jax.Array:
        for i, act in enumerate(acts):
            x = ACTIVATIONS[act][2](dense(p[f"dense{i}"], x))
        return dense(p[f"dense{len(acts)}"], x)
    return fn


def make_act_mlp_init(acts: tuple[str, ...]) -> Callable:
    def init(rng: np.random.Generator, bias: bool) -> dict:
        sizes = _act_sizes(len(acts))
        return {f"dense{i}": _lin(rng, a, b, bias)
                for i, (a, b) in enumerate(itertools.pairwise(sizes))}
    return init


# ================================================================== (f) concat branches
class ConcatCNN(nnx.Module):
    """(f) two conv branches concatenated on the channel axis, lrpjax.layers.AvgPool, dense."""

    def __init__(self, dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        kw = _kw(dtype, rngs)
        self.branch_a = nnx.Conv(1, 3, kernel_size=(3, 3), **kw)
        self.branch_b = nnx.Conv(1, 2, kernel_size=(1, 1), **kw)
        self.pool = layers.AvgPool(2)
        self.head = nnx.Linear(6 * 6 * 5, N_OUT, **kw)

    def __call__(self, x):
        h = jnp.concatenate([nnx.relu(self.branch_a(x)), nnx.relu(self.branch_b(x))], axis=-1)
        h = self.pool(h)
        return self.head(h.reshape(h.shape[0], -1))


class LinenConcatCNN(nn.Module):
    dtype: Any = jnp.float32

    def setup(self):
        kw = _kw(self.dtype)
        self.branch_a = nn.Conv(3, (3, 3), **kw)
        self.branch_b = nn.Conv(2, (1, 1), **kw)
        self.pool = layers.LinenAvgPool(2)
        self.head = nn.Dense(N_OUT, **kw)

    def __call__(self, x):
        h = jnp.concatenate([nn.relu(self.branch_a(x)), nn.relu(self.branch_b(x))], axis=-1)
        return self.head(flatten(self.pool(h)))


def concat_cnn_fn(p: dict, x: jax.Array) -> jax.Array:
    a = jax.nn.relu(conv(p["branch_a"], x))
    b = jax.nn.relu(conv(p["branch_b"], x))
    h = layers.avg_pool(jnp.concatenate([a, b], axis=-1), 2)
    return dense(p["head"], flatten(h))


def concat_cnn_init(rng: np.random.Generator, bias: bool) -> dict:
    return {"branch_a": _cv(rng, 3, 1, 3, bias), "branch_b": _cv(rng, 1, 1, 2, bias),
            "head": _lin(rng, 180, N_OUT, bias)}


# ================================================================== (g) LayerScale
class LayerScaleMLP(nnx.Module):
    """(g) x + gamma * relu(dense(x)) with a learned per-feature gamma, then dense."""

    def __init__(self, d: int = 16, dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(d, d, **_kw(dtype, rngs))
        self.gamma = nnx.Param(jnp.full((d,), 0.1, dtype))
        self.head = nnx.Linear(d, N_OUT, **_kw(dtype, rngs))

    def __call__(self, x):
        x = x + self.gamma[...] * nnx.relu(self.dense(x))
        return self.head(x)


class LinenLayerScaleMLP(nn.Module):
    d: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(0.1), (self.d,), self.dtype)
        x = x + gamma * nn.relu(nn.Dense(self.d, name="dense", **_kw(self.dtype))(x))
        return nn.Dense(N_OUT, name="head", **_kw(self.dtype))(x)


def layerscale_fn(p: dict, x: jax.Array) -> jax.Array:
    return dense(p["head"], x + p["gamma"] * jax.nn.relu(dense(p["dense"], x)))


def layerscale_init(rng: np.random.Generator, bias: bool) -> dict:
    return {"dense": _lin(rng, 16, 16, bias),
            "gamma": rng.uniform(0.1, 1.0, 16) * rng.choice([-1.0, 1.0], 16),
            "head": _lin(rng, 16, N_OUT, bias)}


# ================================================================== (h) grouped / depthwise convs
class GroupedCNN(nnx.Module):
    """(h) stem conv, depthwise conv (feature_group_count=4, 2 outputs per channel), grouped
    VALID conv (2 groups), lrpjax.layers.MaxPool, dense."""

    def __init__(self, dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        kw = _kw(dtype, rngs)
        self.stem = nnx.Conv(1, 4, kernel_size=(3, 3), **kw)
        self.depthwise = nnx.Conv(4, 8, kernel_size=(3, 3), feature_group_count=4, **kw)
        self.grouped = nnx.Conv(8, 8, kernel_size=(3, 3), feature_group_count=2,
                                padding="VALID", **kw)
        self.pool = layers.MaxPool(2)
        self.head = nnx.Linear(5 * 5 * 8, N_OUT, **kw)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        x = nnx.relu(self.depthwise(x))
        x = nnx.relu(self.grouped(x))
        x = self.pool(x)
        return self.head(x.reshape(x.shape[0], -1))


class LinenGroupedCNN(nn.Module):
    dtype: Any = jnp.float32

    def setup(self):
        kw = _kw(self.dtype)
        self.stem = nn.Conv(4, (3, 3), **kw)
        self.depthwise = nn.Conv(8, (3, 3), feature_group_count=4, **kw)
        self.grouped = nn.Conv(8, (3, 3), feature_group_count=2, padding="VALID", **kw)
        self.pool = layers.LinenMaxPool(2)
        self.head = nn.Dense(N_OUT, **kw)

    def __call__(self, x):
        x = nn.relu(self.stem(x))
        x = nn.relu(self.depthwise(x))
        x = nn.relu(self.grouped(x))
        return self.head(flatten(self.pool(x)))


def grouped_cnn_fn(p: dict, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(conv(p["stem"], x))
    x = jax.nn.relu(conv(p["depthwise"], x, groups=4))
    x = jax.nn.relu(conv(p["grouped"], x, padding="VALID", groups=2))
    return dense(p["head"], flatten(layers.max_pool(x, 2)))


def grouped_cnn_init(rng: np.random.Generator, bias: bool) -> dict:
    return {"stem": _cv(rng, 3, 1, 4, bias), "depthwise": _cv(rng, 3, 4, 8, bias, groups=4),
            "grouped": _cv(rng, 3, 8, 8, bias, groups=2), "head": _lin(rng, 200, N_OUT, bias)}


# ================================================================== the registry
@dataclass(frozen=True)
class ZooModel:
    """One zoo model in all its spellings.

    ``nnx(dtype=..., rngs=...)`` and ``linen(dtype=...)`` build the modules (random weights / none);
    ``nnx_paths`` / ``linen_names`` map each top-level canonical name to the NNX attribute path
    and the Linen submodule (or parameter) name; below that level the names are the same.
    ``twin(params)`` gives the canonical weights of the Linen/function twins and the reference
    (BatchNorm folded). ``relu_net``: z+ makes sense (ReLU network)."""

    name: str
    letter: str
    input_shape: tuple[int, ...]
    init: Callable[[np.random.Generator, bool], dict]
    nnx: Callable[..., nnx.Module]
    nnx_paths: dict[str, tuple]
    linen: Callable[[Any], nn.Module]
    linen_names: dict[str, str]
    fn: Callable
    ref: Callable
    relu_net: bool = True
    twin: Callable[[dict], dict] | None = None
    fold: bool = False
    description: str = field(default="", compare=False)


def _layers_paths(names: list[str], indices: list[int]) -> dict[str, tuple]:
    return {n: ("layers", i) for n, i in zip(names, indices, strict=True)}


def _act_model(name: str, acts: tuple[str, ...], relu_net: bool = False) -> ZooModel:
    n = len(acts) + 1
    return ZooModel(
        name, "e", (16,), make_act_mlp_init(acts), partial(ActMLP, acts),
        {f"dense{i}": ("layers", i) for i in range(n)}, partial(LinenActMLP, acts),
        {f"dense{i}": f"Dense_{i}" for i in range(n)}, make_act_mlp_fn(acts),
        zr.REFERENCE[name], relu_net=relu_net, description=f"MLP with {', '.join(acts)}")


MODELS: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("seq_cnn", "a", (12, 12, 1), small_cnn_init, SequentialCNN,
             _layers_paths(["conv1", "conv2", "dense1", "dense2"], [0, 3, 7, 9]),
             LinenSequentialCNN,
             {"conv1": "layers_0", "conv2": "layers_3", "dense1": "layers_7",
              "dense2": "layers_9"},
             seq_cnn_fn, zr.REFERENCE["seq_cnn"],
             description="nnx.Sequential: Conv, nnx.relu, partial(nnx.avg_pool), Linear"),
    ZooModel("linen_mnist_cnn", "b", (12, 12, 1), small_cnn_init, TutorialCNN,
             {"conv1": ("conv1",), "conv2": ("conv2",), "dense1": ("linear1",),
              "dense2": ("linear2",)},
             LinenMnistCNN,
             {"conv1": "Conv_0", "conv2": "Conv_1", "dense1": "Dense_0", "dense2": "Dense_1"},
             mnist_cnn_fn, zr.REFERENCE["linen_mnist_cnn"],
             description="Linen MNIST example (nn.avg_pool as a function); NNX tutorial twin"),
    ZooModel("strided_bn_cnn", "c", (12, 12, 1), strided_bn_init, StridedBNCNN,
             _layers_paths(["conv", "bn", "dense1", "dense2"], [0, 1, 5, 8]),
             LinenStridedCNN, {"conv": "Conv_0", "dense1": "Dense_0", "dense2": "Dense_1"},
             strided_cnn_fn, zr.REFERENCE["strided_bn_cnn"], twin=strided_bn_twin, fold=True,
             description="strided SAME conv, BatchNorm (folded), nnx.max_pool, Dropout (eval)"),
    ZooModel("residual_mlp", "d", (16,), residual_mlp_init, ResidualMLP,
             {"d": ("d",), "o": ("o",)}, LinenResidualMLP, {"d": "d", "o": "o"},
             residual_mlp_fn, zr.REFERENCE["residual_mlp"],
             description="bare residual MLP o(relu(d(x)) + x)"),
    ZooModel("residual_cnn", "d", (12, 12, 1), residual_cnn_init, ResidualCNN,
             {k: (k,) for k in ("conv1", "conv2", "conv3", "head")}, LinenResidualCNN,
             {k: k for k in ("conv1", "conv2", "conv3", "head")},
             residual_cnn_fn, zr.REFERENCE["residual_cnn"],
             description="bare residual CNN h + relu(conv h) - relu(conv h), jnp.mean"),
    _act_model("tanh_mlp", ("tanh", "tanh")),
    _act_model("leaky_relu_mlp", ("leaky_relu", "leaky_relu")),
    _act_model("gelu_mlp", ("gelu", "gelu")),
    _act_model("mixed_act_mlp", ("silu", "elu", "softplus", "sigmoid")),
    ZooModel("concat_cnn", "f", (12, 12, 1), concat_cnn_init, ConcatCNN,
             {k: (k,) for k in ("branch_a", "branch_b", "head")}, LinenConcatCNN,
             {k: k for k in ("branch_a", "branch_b", "head")},
             concat_cnn_fn, zr.REFERENCE["concat_cnn"],
             description="two conv branches concatenated, lrpjax.layers.AvgPool"),
    ZooModel("layerscale_mlp", "g", (16,), layerscale_init, LayerScaleMLP,
             {k: (k,) for k in ("dense", "gamma", "head")}, LinenLayerScaleMLP,
             {k: k for k in ("dense", "gamma", "head")},
             layerscale_fn, zr.REFERENCE["layerscale_mlp"],
             description="LayerScale x + gamma * relu(dense(x))"),
    ZooModel("grouped_cnn", "h", (12, 12, 1), grouped_cnn_init, GroupedCNN,
             {k: (k,) for k in ("stem", "depthwise", "grouped", "head")}, LinenGroupedCNN,
             {k: k for k in ("stem", "depthwise", "grouped", "head")},
             grouped_cnn_fn, zr.REFERENCE["grouped_cnn"],
             description="depthwise + grouped VALID conv, lrpjax.layers.MaxPool"),
]}


# ================================================================== converters
def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


def _assign(target: Any, value: Any, dtype: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _assign(getattr(target, k), v, dtype)
    else:
        if tuple(target[...].shape) != np.shape(value):
            raise ValueError(f"shape {np.shape(value)} does not fit {target[...].shape}")
        target.set_value(jnp.asarray(value, dtype))  # also BatchNorm's float32 statistics


def _read(obj: Any, like: Any) -> Any:
    if isinstance(like, dict):
        return {k: _read(getattr(obj, k), v) for k, v in like.items()}
    return np.asarray(obj[...], np.float64)


def _make_concrete(module: nnx.Module) -> None:
    """Zeros (and key 0 for RNG keys) for every abstract Variable of an ``nnx.eval_shape``d
    module; the weights are then assigned from the canonical dict."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable):
            v = node.get_raw_value()
            if isinstance(v, jax.ShapeDtypeStruct):
                if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
                    node.set_raw_value(jax.random.key(0) if v.shape == () else
                                       jax.random.split(jax.random.key(0), v.shape))
                else:
                    node.set_raw_value(jnp.asarray(np.zeros(v.shape, v.dtype)))


def init_params(model: ZooModel | str, seed: int = 0, *, bias: bool = True) -> dict:
    """Canonical float64 weights (bias=False: all biases zero, BN mean and shift zero)."""
    model = MODELS[model] if isinstance(model, str) else model
    return model.init(np.random.default_rng(seed), bias)


def twin_params(model: ZooModel, params: dict) -> dict:
    """The canonical weights of the Linen / function twins and the reference."""
    return model.twin(params) if model.twin is not None else params


def nnx_model(model: ZooModel, params: dict, dtype: Any = jnp.float32, *,
              fold: bool = True) -> nnx.Module:
    """The NNX module with ``params``, in eval mode; with BatchNorm folded (``fold``)."""
    # Built abstractly (no eager random initialisation, which compiles per shape and took
    # seconds per model), then every Variable gets a concrete value.
    module = nnx.eval_shape(lambda: model.nnx(dtype=dtype, rngs=nnx.Rngs(0)))
    _make_concrete(module)
    for name, path in model.nnx_paths.items():
        _assign(_get(module, path), params[name], dtype)
    module.eval()
    if model.fold and fold:
        spec = jax.ShapeDtypeStruct((1, *model.input_shape), dtype)
        module = canonizers.fold_batchnorm(module, spec)
    return module


def linen_model(model: ZooModel, params: dict, dtype: Any = jnp.float32) -> tuple[nn.Module, dict]:
    """The Linen module and its variables ({"params": ...}) for the twin weights."""
    tw = twin_params(model, params)
    cast = lambda v: jnp.asarray(v, dtype)
    variables = {"params": {model.linen_names[k]: jax.tree.map(cast, v) for k, v in tw.items()}}
    return model.linen(dtype=dtype), variables


def fn_params(model: ZooModel, params: dict, dtype: Any = jnp.float32) -> dict:
    """The function twin's parameters: the canonical (twin) dict as jnp arrays."""
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), twin_params(model, params))


def params_from_nnx(model: ZooModel, module: nnx.Module, like: dict) -> dict:
    """Canonical weights read back from an (unfolded) NNX module; ``like`` gives the layout."""
    return {name: _read(_get(module, path), like[name]) for name, path in model.nnx_paths.items()}


def params_from_linen(model: ZooModel, variables: dict) -> dict:
    """Canonical twin weights read back from Linen variables."""
    inv = {v: k for k, v in model.linen_names.items()}
    return {inv[k]: jax.tree.map(lambda a: np.asarray(a, np.float64), v)
            for k, v in variables["params"].items()}


def inputs(model: ZooModel, seed: int = 0, n: int = 3) -> np.ndarray:
    """Random float64 inputs in [-1, 1] (no ties for max pooling)."""
    return np.random.default_rng(10_000 + seed).uniform(-1.0, 1.0, (n, *model.input_shape))


class Routes(NamedTuple):
    """The same model three ways, plus the reference's forward and weights."""

    nnx: nnx.Module
    linen: nn.Module
    variables: dict
    fn: Callable
    params: dict
    ref: Callable
    ref_params: dict


def make(model: ZooModel | str, params: dict | None = None, dtype: Any = jnp.float32, *,
         seed: int = 0, bias: bool = True) -> Routes:
    """All routes of ``model`` with the same weights (float64: build inside jax.enable_x64)."""
    model = MODELS[model] if isinstance(model, str) else model
    params = init_params(model, seed, bias=bias) if params is None else params
    linen, variables = linen_model(model, params, dtype)
    return Routes(nnx_model(model, params, dtype), linen, variables, model.fn,
                  fn_params(model, params, dtype), model.ref, twin_params(model, params))


# ================================================================== blocks for random compositions
# Specs (hashable tuples): ("dense_act", act, din, dout), ("residual", w), ("residual_sub", w),
# ("layerscale", w), ("concat", w), ("conv", stride, groups, c), ("resconv", c), ("avgpool",),
# ("maxpool",), ("flatten",), ("gap",), ("dense", din, dout).
class DenseAct(nnx.Module):
    def __init__(self, din: int, dout: int, act: str, dtype: Any, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, dout, **_kw(dtype, rngs))
        self.act = ACTIVATIONS[act][0]

    def __call__(self, x):
        return self.act(self.dense(x))


class Residual(nnx.Module):
    """x + relu(dense(x)) or (sub) x - tanh(dense(x))."""

    def __init__(self, w: int, sub: bool, dtype: Any, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(w, w, **_kw(dtype, rngs))
        self.sub = sub

    def __call__(self, x):
        if self.sub:
            return x - nnx.tanh(self.dense(x))
        return x + nnx.relu(self.dense(x))


class LayerScale(nnx.Module):
    def __init__(self, w: int, dtype: Any, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(w, w, **_kw(dtype, rngs))
        self.gamma = nnx.Param(jnp.full((w,), 0.1, dtype))

    def __call__(self, x):
        return x + self.gamma[...] * nnx.relu(self.dense(x))


class Concat(nnx.Module):
    def __init__(self, w: int, dtype: Any, *, rngs: nnx.Rngs):
        self.a = nnx.Linear(w, w // 2, **_kw(dtype, rngs))
        self.b = nnx.Linear(w, w - w // 2, **_kw(dtype, rngs))

    def __call__(self, x):
        return jnp.concatenate([nnx.relu(self.a(x)), nnx.tanh(self.b(x))], axis=-1)


class ConvBlock(nnx.Module):
    def __init__(self, stride: int, groups: int, c: int, dtype: Any, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c, c, kernel_size=(3, 3), strides=(stride, stride),
                             feature_group_count=groups, **_kw(dtype, rngs))

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class ResConv(nnx.Module):
    def __init__(self, c: int, dtype: Any, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c, c, kernel_size=(3, 3), **_kw(dtype, rngs))

    def __call__(self, x):
        return x + nnx.relu(self.conv(x))


class DenseOut(nnx.Module):
    def __init__(self, din: int, dout: int, dtype: Any, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, dout, **_kw(dtype, rngs))

    def __call__(self, x):
        return self.dense(x)


class LDenseAct(nn.Module):
    dout: int
    act: str
    dtype: Any = jnp.float32

    def setup(self):
        self.dense = nn.Dense(self.dout, **_kw(self.dtype))

    def __call__(self, x):
        return ACTIVATIONS[self.act][1](self.dense(x))


class LResidual(nn.Module):
    w: int
    sub: bool
    dtype: Any = jnp.float32

    def setup(self):
        self.dense = nn.Dense(self.w, **_kw(self.dtype))

    def __call__(self, x):
        if self.sub:
            return x - nn.tanh(self.dense(x))
        return x + nn.relu(self.dense(x))


class LLayerScale(nn.Module):
    w: int
    dtype: Any = jnp.float32

    def setup(self):
        self.dense = nn.Dense(self.w, **_kw(self.dtype))
        self.gamma = self.param("gamma", nn.initializers.constant(0.1), (self.w,), self.dtype)

    def __call__(self, x):
        return x + self.gamma * nn.relu(self.dense(x))


class LConcat(nn.Module):
    w: int
    dtype: Any = jnp.float32

    def setup(self):
        self.a = nn.Dense(self.w // 2, **_kw(self.dtype))
        self.b = nn.Dense(self.w - self.w // 2, **_kw(self.dtype))

    def __call__(self, x):
        return jnp.concatenate([nn.relu(self.a(x)), nn.tanh(self.b(x))], axis=-1)


class LConvBlock(nn.Module):
    stride: int
    groups: int
    c: int
    dtype: Any = jnp.float32

    def setup(self):
        self.conv = nn.Conv(self.c, (3, 3), strides=(self.stride, self.stride),
                            feature_group_count=self.groups, **_kw(self.dtype))

    def __call__(self, x):
        return nn.relu(self.conv(x))


class LResConv(nn.Module):
    c: int
    dtype: Any = jnp.float32

    def setup(self):
        self.conv = nn.Conv(self.c, (3, 3), **_kw(self.dtype))

    def __call__(self, x):
        return x + nn.relu(self.conv(x))


class LDenseOut(nn.Module):
    dout: int
    dtype: Any = jnp.float32

    def setup(self):
        self.dense = nn.Dense(self.dout, **_kw(self.dtype))

    def __call__(self, x):
        return self.dense(x)


def _gap(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


_NNX_POOL = {"avgpool": partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2)),
             "maxpool": partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2)),
             "flatten": flatten, "gap": _gap}
_LINEN_POOL = {"avgpool": partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2)),
               "maxpool": partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2)),
               "flatten": flatten, "gap": _gap}
_FN_POOL = {"avgpool": lax_avg_pool, "maxpool": lax_max_pool, "flatten": flatten, "gap": _gap}


def block_nnx(spec: tuple, dtype: Any, rngs: nnx.Rngs) -> Any:
    kind = spec[0]
    if kind == "dense_act":
        return DenseAct(spec[2], spec[3], spec[1], dtype, rngs=rngs)
    if kind in ("residual", "residual_sub"):
        return Residual(spec[1], kind == "residual_sub", dtype, rngs=rngs)
    if kind == "layerscale":
        return LayerScale(spec[1], dtype, rngs=rngs)
    if kind == "concat":
        return Concat(spec[1], dtype, rngs=rngs)
    if kind == "conv":
        return ConvBlock(spec[1], spec[2], spec[3], dtype, rngs=rngs)
    if kind == "resconv":
        return ResConv(spec[1], dtype, rngs=rngs)
    if kind == "dense":
        return DenseOut(spec[1], spec[2], dtype, rngs=rngs)
    return _NNX_POOL[kind]


def block_linen(spec: tuple, dtype: Any) -> Any:
    kind = spec[0]
    if kind == "dense_act":
        return LDenseAct(spec[3], spec[1], dtype)
    if kind in ("residual", "residual_sub"):
        return LResidual(spec[1], kind == "residual_sub", dtype)
    if kind == "layerscale":
        return LLayerScale(spec[1], dtype)
    if kind == "concat":
        return LConcat(spec[1], dtype)
    if kind == "conv":
        return LConvBlock(spec[1], spec[2], spec[3], dtype)
    if kind == "resconv":
        return LResConv(spec[1], dtype)
    if kind == "dense":
        return LDenseOut(spec[2], dtype)
    return _LINEN_POOL[kind]


def block_fn(spec: tuple, p: dict, x: jax.Array) -> jax.Array:
    kind = spec[0]
    if kind == "dense_act":
        return ACTIVATIONS[spec[1]][2](dense(p["dense"], x))
    if kind == "residual":
        return x + jax.nn.relu(dense(p["dense"], x))
    if kind == "residual_sub":
        return x - jnp.tanh(dense(p["dense"], x))
    if kind == "layerscale":
        return x + p["gamma"] * jax.nn.relu(dense(p["dense"], x))
    if kind == "concat":
        return jnp.concatenate([jax.nn.relu(dense(p["a"], x)), jnp.tanh(dense(p["b"], x))], -1)
    if kind == "conv":
        return jax.nn.relu(conv(p["conv"], x, strides=(spec[1], spec[1]), groups=spec[2]))
    if kind == "resconv":
        return x + jax.nn.relu(conv(p["conv"], x))
    if kind == "dense":
        return dense(p["dense"], x)
    return _FN_POOL[kind](x)


def block_init(rng: np.random.Generator, spec: tuple, bias: bool) -> dict | None:
    kind = spec[0]
    if kind == "dense_act":
        return {"dense": _lin(rng, spec[2], spec[3], bias)}
    if kind in ("residual", "residual_sub"):
        return {"dense": _lin(rng, spec[1], spec[1], bias)}
    if kind == "layerscale":
        w = spec[1]
        return {"dense": _lin(rng, w, w, bias),
                "gamma": rng.uniform(0.1, 1.0, w) * rng.choice([-1.0, 1.0], w)}
    if kind == "concat":
        w = spec[1]
        return {"a": _lin(rng, w, w // 2, bias), "b": _lin(rng, w, w - w // 2, bias)}
    if kind == "conv":
        c = spec[3]
        return {"conv": _cv(rng, 3, c, c, bias, groups=spec[2])}
    if kind == "resconv":
        return {"conv": _cv(rng, 3, spec[1], spec[1], bias)}
    if kind == "dense":
        return {"dense": _lin(rng, spec[1], spec[2], bias)}
    return None


def composed_model(specs: tuple, input_shape: tuple) -> ZooModel:
    """A ZooModel for a sequence of block specs (NNX: nnx.Sequential, Linen: nn.Sequential)."""
    specs = tuple(specs)
    with_params = [i for i, s in enumerate(specs)
                   if block_init(np.random.default_rng(0), s, True) is not None]

    def init(rng: np.random.Generator, bias: bool) -> dict:
        return {f"block{i}": p for i, s in enumerate(specs)
                if (p := block_init(rng, s, bias)) is not None}

    def build_nnx(dtype: Any = jnp.float32, *, rngs: nnx.Rngs) -> nnx.Module:
        return nnx.Sequential(*[block_nnx(s, dtype, rngs) for s in specs])

    def build_linen(dtype: Any = jnp.float32) -> nn.Module:
        return nn.Sequential(tuple(block_linen(s, dtype) for s in specs))

    def fn(p: dict, x: jax.Array) -> jax.Array:
        for i, s in enumerate(specs):
            x = block_fn(s, p.get(f"block{i}", {}), x)
        return x

    return ZooModel(
        "composed", "*", tuple(input_shape), init, build_nnx,
        {f"block{i}": ("layers", i) for i in with_params}, build_linen,
        {f"block{i}": f"layers_{i}" for i in with_params}, fn, zr.make_ref_composed(specs),
        relu_net=False, description=repr(specs))
