"""Networks for the LRP tests: one spec drives the NumPy reference, NNX and Linen models."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from lrpjax import composites, layers, rules

LINEAR = ("dense", "conv")


def random_net(rng: np.random.Generator, kind: str, *, bias: bool = True, pool: str = "avg",
               sizes: tuple[int, ...] | None = None) -> tuple[list, tuple[int, ...]]:
    """A random net spec and its input shape (without batch axis)."""
    def w(*shape: int) -> np.ndarray:
        return rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))

    def b(n: int) -> np.ndarray:
        return rng.normal(scale=0.2, size=n) if bias else np.zeros(n)

    if kind == "mlp":
        sizes = sizes or (12, 10, 8, 5)
        net: list = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(sizes)):
            net.append(("dense", w(d_in, d_out), b(d_out)))
            if i < len(sizes) - 2:
                net.append(("relu",))
        return net, (sizes[0],)
    if kind == "cnn":
        p = "avgpool" if pool == "avg" else "maxpool"
        net = [("conv", w(3, 3, 1, 4), b(4)), ("relu",), (p, 2),
               ("conv", w(3, 3, 4, 6), b(6)), ("relu",), (p, 2), ("flatten",),
               ("dense", w(24, 10), b(10)), ("relu",), ("dense", w(10, 5), b(5))]
        return net, (8, 8, 1)
    raise ValueError(kind)


def _layer_nnx(spec: tuple, dtype) -> nnx.Module:
    kind = spec[0]
    rngs = nnx.Rngs(0)
    if kind == "dense":
        m = nnx.Linear(*spec[1].shape, rngs=rngs, param_dtype=dtype, dtype=dtype)
        m.kernel[...] = jnp.asarray(spec[1], dtype)
        m.bias[...] = jnp.asarray(spec[2], dtype)
        return m
    if kind == "conv":
        kh, kw, c, o = spec[1].shape
        m = nnx.Conv(c, o, (kh, kw), padding="SAME", rngs=rngs, param_dtype=dtype, dtype=dtype)
        m.kernel[...] = jnp.asarray(spec[1], dtype)
        m.bias[...] = jnp.asarray(spec[2], dtype)
        return m
    if kind == "relu":
        return layers.ReLU()
    if kind == "flatten":
        return layers.Flatten()
    return {"avgpool": layers.AvgPool, "maxpool": layers.MaxPool}[kind](spec[1])


class SpecNet(nnx.Module):
    """An NNX model from a spec; modules live in ``self.layers`` (paths layers/0, layers/1, ...).

    ``relu_fn=True`` uses a bare ``jax.nn.relu`` call instead of the ReLU module.
    """

    def __init__(self, net: list, dtype=jnp.float32, relu_fn: bool = False):
        self.kinds = tuple(spec[0] for spec in net)
        self.relu_fn = relu_fn
        self.layers = nnx.List([_layer_nnx(spec, dtype) for spec in net
                                if not (relu_fn and spec[0] == "relu")])

    def __call__(self, x):
        modules = iter(self.layers)
        for kind in self.kinds:
            x = jax.nn.relu(x) if (self.relu_fn and kind == "relu") else next(modules)(x)
        return x


class SpecNetLinen(nn.Module):
    """The Linen twin of :class:`SpecNet` (same spec; variables from :func:`linen_variables`)."""

    net: tuple

    @nn.compact
    def __call__(self, x):
        for i, kind in enumerate(self.net):
            if kind[0] == "dense":
                x = nn.Dense(kind[1], name=f"layer{i}")(x)
            elif kind[0] == "conv":
                x = nn.Conv(kind[1], kind[2], padding="SAME", name=f"layer{i}")(x)
            elif kind[0] == "relu":
                x = layers.LinenReLU(name=f"layer{i}")(x)
            elif kind[0] == "avgpool":
                x = layers.LinenAvgPool(kind[1], name=f"layer{i}")(x)
            elif kind[0] == "maxpool":
                x = layers.LinenMaxPool(kind[1], name=f"layer{i}")(x)
            elif kind[0] == "flatten":
                x = layers.LinenFlatten(name=f"layer{i}")(x)
        return x


def linen_model(net: list, dtype=jnp.float32) -> tuple[SpecNetLinen, dict]:
    structure = []
    params = {}
    for i, spec in enumerate(net):
        if spec[0] == "dense":
            structure.append(("dense", spec[1].shape[1]))
        elif spec[0] == "conv":
            structure.append(("conv", spec[1].shape[3], spec[1].shape[:2]))
        elif spec[0] in ("avgpool", "maxpool"):
            structure.append((spec[0], spec[1]))
        else:
            structure.append((spec[0],))
        if spec[0] in LINEAR:
            params[f"layer{i}"] = {"kernel": jnp.asarray(spec[1], dtype),
                                   "bias": jnp.asarray(spec[2], dtype)}
    return SpecNetLinen(tuple(structure)), {"params": params}


def to_rule(spec: tuple):
    """A reference rule tuple -> the lrpjax rule."""
    name = spec[0]
    return {
        "eps": lambda: rules.Epsilon(spec[1]),
        "zplus": lambda: rules.ZPlus(),
        "ab": lambda: rules.AlphaBeta(spec[1], spec[2]),
        "gamma": lambda: rules.Gamma(spec[1]),
        "zbox": lambda: rules.ZBox(spec[1], spec[2]),
        "flat": lambda: rules.Flat(),
        "wsquare": lambda: rules.WSquare(),
    }[name]()


def composite_for(rule_specs: list) -> composites.Composite:
    """A composite giving the i-th linear layer (forward order) rule_specs[i]."""
    table = tuple(to_rule(s) for s in rule_specs)

    def by_index(info):
        return table[info.index] if info.is_linear else None

    return composites.Composite(by_index, name="by-index")


def assert_fast_equals_general(call, rel: float = 2e-6, name: str = "") -> None:
    """``call()`` (a heatmap) with the sign analysis and with ``lrpjax.facts.disabled()`` agree to
    ``rel`` of the largest relevance (the cheaper forms only drop exact zeros)."""
    from lrpjax import facts

    fast = call()
    with facts.disabled():  # a static argument of relevance's jit: compiled apart
        general = call()
    atol = rel * float(jnp.max(jnp.abs(general)))
    np.testing.assert_allclose(fast, general, rtol=0, atol=atol, err_msg=name)
