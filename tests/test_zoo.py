"""The model zoo (tests/zoo.py) through the LRP engine.

For every zoo model, written as an NNX module, a Linen module and a plain function with the same
weights:

* the three routes give the same heatmap (float32, max|dR| / max|R| <= 1e-6);
* each route equals the independent float64 NumPy reference (tests/zoo_reference.py) to 1e-10,
  for LRP-epsilon and (ReLU nets) z+;
* bias-free LRP-0 (with Norm(0) on pooling and residual adds) conserves: sum(R) == f_target(x)
  to 1e-10 in float64 (and equals the reference);
* random compositions of the zoo's blocks (hypothesis): routes agree, float64 conservation;
* operations LRP has no rule for (attention, h * h, sin, scan / fori_loop / while_loop over the
  hidden state) raise a ValueError naming the primitive, the layer path (module routes) and the
  user's source line; with on_unsupported="warn" each warns exactly once.

Knobs: ``AVG_STAB`` (where an average's Norm stabiliser acts, "sum" as specified or "mean" as
in Zennit), ``CHECK_LINES`` (the source-line assertions), environment ``ZOO_FULL=1`` (every
route for every check, 15 hypothesis examples; about 1.5x the time).
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo
import zoo_reference as zr
from flax import linen as nn
from flax import nnx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lrpjax
from lrpjax.composites import Composite, by_type, last
from lrpjax.rules import Epsilon, Norm, ZPlus

ROUTES = ("nnx", "linen", "fn")
TARGET = np.array([1, 3, 0])  # explicit targets, one per sample (3 samples)

# Where the Norm stabiliser of an *average* (avg pooling, jnp.mean) acts: "sum" is the engine's
# specified semantics, R_j = a_j R_k / stab(sum_window a, 1e-6); "mean" is Zennit's / the old
# reference_lrp.py's, R_j = a_j R_k / (n stab(mean_window a, 1e-6)). They differ by ~1e-5
# relative (caught at 1e-10), and not at all for Norm(0) (the conservation tests).
AVG_STAB = "mean"

EPS = Composite(by_type({"dense": Epsilon(0.25), "conv": Epsilon(0.25)}), name="zoo-eps")
EPS_REF = zr.Rules(dense=("eps", 0.25), conv=("eps", 0.25), avg_stab=AVG_STAB)
ZPLUS = Composite(last(Epsilon(0.25)), by_type({"dense": ZPlus(), "conv": ZPlus()}),
                  name="zoo-zplus")
ZPLUS_REF = zr.Rules(dense=("zplus",), conv=("zplus",), last=("eps", 0.25),
                     avg_stab=AVG_STAB)
LRP0 = Composite(by_type({"dense": Epsilon(0.0), "conv": Epsilon(0.0), "avgpool": Norm(0.0),
                          "add": Norm(0.0)}), name="zoo-lrp0")
LRP0_REF = zr.Rules(pool=0.0, add=0.0, avg_stab=AVG_STAB)

MODELS = list(zoo.MODELS)
# The suite runs every zoo model through all three routes for LRP-epsilon (float32 and
# float64), and z+ / LRP-0 conservation on one route per model (rotating); ZOO_FULL=1 runs every
# route for every check and more hypothesis examples (about 1.5x the time).
FULL = os.environ.get("ZOO_FULL", "") == "1"
RELU_NETS = [name for name, m in zoo.MODELS.items() if m.relu_net]


def relevance(route: str, r: zoo.Routes, x, composite: Composite, target, **kw):
    if route == "nnx":
        return lrpjax.relevance(r.nnx, x, composite=composite, target=target, **kw)
    if route == "linen":
        return lrpjax.relevance(r.linen, x, composite=composite, target=target,
                                variables=r.variables, **kw)
    return lrpjax.relevance(r.fn, x, composite=composite, target=target, params=r.params, **kw)


def rel_err(R, ref) -> float:
    R, ref = np.asarray(R, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(R - ref)) / np.max(np.abs(ref)))


def check_conservation(R, y, target, tol: float = 1e-10) -> None:
    """sum_i R_i == f_target(x) per sample, relative to the largest |f| (and |R| mass)."""
    R = np.asarray(R, np.float64).reshape(len(y), -1)
    f = np.asarray(y, np.float64)[np.arange(len(y)), target]
    scale = max(1.0, float(np.max(np.abs(f))), float(np.max(np.abs(R).sum(axis=1))))
    np.testing.assert_allclose(R.sum(axis=1), f, rtol=0, atol=tol * scale)


# ------------------------------------------------------------------ the zoo itself
@pytest.mark.parametrize("name", MODELS)
def test_zoo_twins_compute_the_same_function(name):
    """The zoo's own contract (no LRP, nothing compiled): the spellings have the reference's
    output shape, the weight converters round-trip, the Linen variables have init's layout.
    (That they compute the same function is checked by every reference test below: each
    route's heatmap must equal the reference's, and conservation compares with the
    reference's output.)"""
    m = zoo.MODELS[name]
    params = zoo.init_params(m, seed=1)
    x = zoo.inputs(m, seed=1)
    with jax.enable_x64(True):
        r = zoo.make(m, params, jnp.float64)
        xj = jnp.asarray(x)
        shapes = {jax.eval_shape(r.nnx, xj).shape, jax.eval_shape(r.fn, r.params, xj).shape,
                  jax.eval_shape(r.linen.apply, r.variables, xj).shape}
        assert shapes == {zr.forward(r.ref, r.ref_params, x).shape}
        back = zoo.params_from_nnx(m, zoo.nnx_model(m, params, jnp.float64, fold=False), params)
        assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
        assert jax.tree.all(jax.tree.map(np.array_equal, zoo.params_from_linen(m, r.variables),
                                         r.ref_params))
        shapes = jax.tree.map(jnp.shape, jax.eval_shape(r.linen.init, jax.random.key(0), xj))
        assert shapes == jax.tree.map(jnp.shape, r.variables)


# ------------------------------------------------------------------ routes agree (float32)
@pytest.mark.parametrize("name", MODELS)
def test_routes_agree_float32(name):
    m = zoo.MODELS[name]
    r = zoo.make(m)
    x = jnp.asarray(zoo.inputs(m), jnp.float32)
    Rs = {route: np.asarray(relevance(route, r, x, EPS, TARGET)) for route in ROUTES}
    for route, R in Rs.items():
        assert R.dtype == np.float32 and R.shape == x.shape and np.all(np.isfinite(R)), route
    assert np.max(np.abs(Rs["fn"])) > 0
    errs = {route: rel_err(Rs[route], Rs["fn"]) for route in ("nnx", "linen")}
    assert max(errs.values()) <= 1e-6, errs


# ------------------------------------------------------------------ the float64 reference
def _against_reference(name: str, route: str, composite: Composite, rules: zr.Rules,
                       bias: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = zoo.MODELS[name]
    x = zoo.inputs(m)
    with jax.enable_x64(True):
        r = zoo.make(m, dtype=jnp.float64, bias=bias)
        R = relevance(route, r, jnp.asarray(x), composite, jnp.asarray(TARGET))
        assert R.dtype == jnp.float64
    ref = zr.lrp(r.ref, r.ref_params, x, TARGET, rules)
    assert np.all(np.isfinite(np.asarray(R)))
    err = rel_err(R, ref)
    assert err <= 1e-10, f"{name} ({route}): max|R - ref| / max|ref| = {err:.3g}"
    return np.asarray(R), ref, zr.forward(r.ref, r.ref_params, x)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", MODELS)
def test_reference_epsilon_float64(name, route):
    _against_reference(name, route, EPS, EPS_REF)


def _rotated(names: list[str], offset: int) -> list[tuple[str, str]]:
    """(model, route) pairs: every route (ZOO_FULL=1) or one route per model, rotating so
    each route gets a third of the models (the routes agree with each other above)."""
    if FULL:
        return [(n, route) for n in names for route in ROUTES]
    return [(n, ROUTES[(MODELS.index(n) + offset) % 3]) for n in names]


@pytest.mark.parametrize("name,route", _rotated(RELU_NETS, 1))
def test_reference_zplus_float64(name, route):
    _against_reference(name, route, ZPLUS, ZPLUS_REF)


@pytest.mark.parametrize("name,route", _rotated(MODELS, 2))
def test_conservation_lrp0_bias_free_float64(name, route):
    R, _, y = _against_reference(name, route, LRP0, LRP0_REF, bias=False)
    check_conservation(R, y, TARGET)


def test_reference_conserves():
    """The oracle itself: bias-free LRP-0 with Norm(0) conserves on every zoo model."""
    for m in zoo.MODELS.values():
        params = zoo.init_params(m, bias=False)
        x = zoo.inputs(m)
        tw = zoo.twin_params(m, params)
        R = zr.lrp(m.ref, tw, x, TARGET, LRP0_REF)
        check_conservation(R, zr.forward(m.ref, tw, x), TARGET, tol=1e-12)


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("rule", [("eps", 0.25), ("zplus",)])
def test_reference_matches_reference_lrp(pool, rule):
    """The oracle against the older independent NumPy reference (tests/reference_lrp.py, which
    stabilises an average pool's mean): equal with ``avg_stab="mean"``."""
    from lrp_nets import random_net
    from reference_lrp import lrp as layer_lrp

    net, shape = random_net(np.random.default_rng(8), "cnn", pool=pool)

    def ref(T, p, h):
        for layer in net:
            kind = layer[0]
            if kind in ("dense", "conv"):
                h = getattr(T, kind)(h, {"kernel": layer[1], "bias": layer[2]})
            elif kind == "relu":
                h = T.act(h, "relu")
            elif kind == "flatten":
                h = T.flatten(h)
            else:
                h = getattr(T, kind)(h, layer[1])
        return h

    x = np.random.default_rng(9).uniform(-1, 1, (4, *shape))
    target = np.array([0, 4, 2, 1])
    mine = zr.lrp(ref, None, x, target, zr.Rules(dense=rule, conv=rule, avg_stab="mean"))
    np.testing.assert_allclose(mine, layer_lrp(net, x, [rule] * 4, target), rtol=1e-12,
                               atol=1e-13)


# ------------------------------------------------------------------ random compositions
WIDTH = 8
FEATURE_BLOCKS = ("dense_act", "residual", "residual_sub", "layerscale", "concat")
ACTS = ("relu", "tanh", "leaky_relu", "gelu")


@st.composite
def compositions(draw):
    """(specs, input_shape, seed): an optional conv part on (8, 8, 4) images (convs with
    stride 1/2 and 1/2/4 groups, residual convs, avg/max pooling), flatten or global mean,
    then feature blocks of width 8, then a dense output layer with 3 classes."""
    specs: list[tuple] = []
    if draw(st.booleans()):
        c, size = 4, 8
        input_shape: tuple = (size, size, c)
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["conv", "resconv", "avgpool", "maxpool"]))
            if kind in ("avgpool", "maxpool") and size % 2:
                kind = "resconv"
            if kind == "conv":
                stride = draw(st.sampled_from([1, 2]))
                specs.append(("conv", stride, draw(st.sampled_from([1, 2, 4])), c))
                size = -(-size // stride)
            elif kind == "resconv":
                specs.append(("resconv", c))
            else:
                specs.append((kind,))
                size //= 2
        reduce = draw(st.sampled_from(["flatten", "gap"]))
        specs.append((reduce,))
        d = size * size * c if reduce == "flatten" else c
    else:
        input_shape = (WIDTH,)
        d = WIDTH
    specs.append(("dense_act", draw(st.sampled_from(ACTS)), d, WIDTH))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(FEATURE_BLOCKS))
        if kind == "dense_act":
            specs.append(("dense_act", draw(st.sampled_from(ACTS)), WIDTH, WIDTH))
        else:
            specs.append((kind, WIDTH))
    specs.append(("dense", WIDTH, 3))
    return tuple(specs), input_shape, draw(st.integers(0, 2**16))


@settings(max_examples=15 if FULL else 6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(compositions())
# two fixed compositions so that strided / grouped / depthwise convs and both poolings always run
@example(((("conv", 2, 4, 4), ("avgpool",), ("resconv", 4), ("flatten",),
           ("dense_act", "tanh", 16, WIDTH), ("layerscale", WIDTH), ("dense", WIDTH, 3)),
          (8, 8, 4), 1))
@example(((("conv", 1, 2, 4), ("maxpool",), ("gap",), ("dense_act", "gelu", 4, WIDTH),
           ("concat", WIDTH), ("residual_sub", WIDTH), ("dense", WIDTH, 3)), (8, 8, 4), 2))
def test_random_compositions(case):
    """Bias-free LRP-0 in float64: the three routes agree (to 1e-10, through the reference)
    and conserve."""
    specs, input_shape, seed = case
    m = zoo.composed_model(specs, input_shape)
    target = np.array([2, 0, 1])
    x = zoo.inputs(m, seed=seed)
    with jax.enable_x64(True):
        r = zoo.make(m, dtype=jnp.float64, seed=seed, bias=False)
        Rs = {route: np.asarray(relevance(route, r, jnp.asarray(x), LRP0, jnp.asarray(target)))
              for route in ROUTES}
    ref = zr.lrp(r.ref, r.ref_params, x, target, LRP0_REF)
    y = zr.forward(r.ref, r.ref_params, x)
    for route, R in Rs.items():
        assert rel_err(R, ref) <= 1e-10, (route, specs)
        check_conservation(R, y, target)


# ------------------------------------------------------------------ must raise
# Each offending operation sits on a line tagged "ZOO-LINE <case>/<route>"; the error must
# name it as "test_zoo.py:<line>".
CHECK_LINES = True  # LINE CHECK: set False to skip the source-line assertions


def line_of(tag: str) -> int:
    """The line number of the line tagged ``# ZOO-LINE <tag>`` in this file."""
    lines = pathlib.Path(__file__).read_text().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# ZOO-LINE {tag}")]
    assert len(hits) == 1, (tag, hits)
    return hits[0]


D, T = 8, 4  # features, sequence length / loop steps


def _w(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) / np.sqrt(shape[0])


class Wrapped(nnx.Module):
    """embed -> <block> at attribute ``name`` -> head, so the block's path is ``name``."""

    def __init__(self, name: str, block: nnx.Module, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(D, D, rngs=rngs)
        setattr(self, name, block)
        self.name = name
        self.head = nnx.Linear(D, 3, rngs=rngs)

    def __call__(self, x):
        h = getattr(self, self.name)(self.embed(x))
        return self.head(h.reshape(h.shape[0], -1, D).mean(axis=1))


# ---- NNX blocks
class MHA(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.mha = nnx.MultiHeadAttention(num_heads=2, in_features=D, qkv_features=D,
                                          decode=False, rngs=rngs)

    def __call__(self, h):
        return self.mha(h)  # ZOO-LINE mha/nnx


class HandAttention(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.q = nnx.Linear(D, D, rngs=rngs)
        self.k = nnx.Linear(D, D, rngs=rngs)
        self.v = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, h):
        q, k, v = self.q(h), self.k(h), self.v(h)
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(D), axis=-1)  # ZOO-LINE attention/nnx
        return a @ v


class Square(nnx.Module):
    def __call__(self, h):
        return h * h  # ZOO-LINE square/nnx


class Sin(nnx.Module):
    def __call__(self, h):
        return jnp.sin(h)  # ZOO-LINE sin/nnx


class Loop(nnx.Module):
    """A recurrent cell h <- tanh(h W) run 4 times by scan, fori_loop or while_loop."""

    def __init__(self, how: str, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jnp.asarray(_w(5, D, D), jnp.float32))
        self.how = how

    def __call__(self, h):
        W = self.kernel[...]
        if self.how == "scan":
            h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ W), None), h, None, length=T)  # ZOO-LINE scan/nnx
            return h
        if self.how == "fori":
            return jax.lax.fori_loop(0, T, lambda i, c: jnp.tanh(c @ W), h)  # ZOO-LINE fori/nnx
        return jax.lax.while_loop(lambda c: c[0] < T, lambda c: (c[0] + 1, jnp.tanh(c[1] @ W)), (0, h))[1]  # ZOO-LINE while/nnx


# ---- Linen blocks
class LWrapped(nn.Module):
    """Linen twin of :class:`Wrapped`: the block built in setup as attribute ``block_name``."""

    block_name: str
    make_block: Callable[[], nn.Module]

    def setup(self):
        self.embed = nn.Dense(D)
        setattr(self, self.block_name, self.make_block())
        self.head = nn.Dense(3)

    def __call__(self, x):
        h = getattr(self, self.block_name)(self.embed(x))
        return self.head(h.reshape(h.shape[0], -1, D).mean(axis=1))


class LMHA(nn.Module):
    def setup(self):
        self.mha = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=D)

    def __call__(self, h):
        return self.mha(h)  # ZOO-LINE mha/linen


class LHandAttention(nn.Module):
    def setup(self):
        self.q, self.k, self.v = nn.Dense(D), nn.Dense(D), nn.Dense(D)

    def __call__(self, h):
        q, k, v = self.q(h), self.k(h), self.v(h)
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(D), axis=-1)  # ZOO-LINE attention/linen
        return a @ v


class LSquare(nn.Module):
    @nn.compact
    def __call__(self, h):
        return h * h  # ZOO-LINE square/linen


class LSin(nn.Module):
    @nn.compact
    def __call__(self, h):
        return jnp.sin(h)  # ZOO-LINE sin/linen


class LLoop(nn.Module):
    how: str

    @nn.compact
    def __call__(self, h):
        W = self.param("kernel", lambda key: jnp.asarray(_w(5, D, D), jnp.float32))
        if self.how == "scan":
            h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ W), None), h, None, length=T)  # ZOO-LINE scan/linen
            return h
        if self.how == "fori":
            return jax.lax.fori_loop(0, T, lambda i, c: jnp.tanh(c @ W), h)  # ZOO-LINE fori/linen
        return jax.lax.while_loop(lambda c: c[0] < T, lambda c: (c[0] + 1, jnp.tanh(c[1] @ W)), (0, h))[1]  # ZOO-LINE while/linen


# ---- plain functions fn(params, x): embed -> block -> head
def _fn_block(case: str, p: dict, h):
    if case == "mha":
        q, k, v = (jnp.reshape(h @ p[n], (*h.shape[:-1], 2, D // 2)) for n in "qkv")
        return nnx.dot_product_attention(q, k, v).reshape(h.shape)  # ZOO-LINE mha/fn
    if case == "attention":
        q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(D), axis=-1)  # ZOO-LINE attention/fn
        return a @ v
    if case == "square":
        return h * h  # ZOO-LINE square/fn
    if case == "sin":
        return jnp.sin(h)  # ZOO-LINE sin/fn
    W = p["W"]
    if case == "scan":
        h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ W), None), h, None, length=T)  # ZOO-LINE scan/fn
        return h
    if case == "fori":
        return jax.lax.fori_loop(0, T, lambda i, c: jnp.tanh(c @ W), h)  # ZOO-LINE fori/fn
    return jax.lax.while_loop(lambda c: c[0] < T, lambda c: (c[0] + 1, jnp.tanh(c[1] @ W)), (0, h))[1]  # ZOO-LINE while/fn


def _fn_model(case: str):
    def fn(p, x):
        h = _fn_block(case, p, jnp.tanh(x @ p["embed"]))
        return h.reshape(h.shape[0], -1, D).mean(axis=1) @ p["head"]
    params = {"embed": _w(1, D, D), "head": _w(2, D, 3), "W": _w(5, D, D),
              **{n: _w(10 + i, D, D) for i, n in enumerate("qkv")}}
    return fn, jax.tree.map(jnp.asarray, params)


# case: (primitive regex, attribute name of the block (path), NNX block, Linen block)
UNSUPPORTED = {
    "mha": (r"dot_general", lambda r: MHA(rngs=r), LMHA),
    "attention": (r"dot_general", lambda r: HandAttention(rngs=r), LHandAttention),
    "square": (r"\bmul\b", lambda r: Square(), LSquare),
    "sin": (r"\bsin\b", lambda r: Sin(), LSin),
    "scan": (r"\bscan\b", lambda r: Loop("scan", rngs=r), lambda: LLoop("scan")),
    # fori_loop with static bounds lowers to scan, with traced bounds to while
    "fori": (r"\bscan\b|\bwhile\b", lambda r: Loop("fori", rngs=r), lambda: LLoop("fori")),
    "while": (r"\bwhile\b", lambda r: Loop("while", rngs=r), lambda: LLoop("while")),
}
BLOCK_NAME = {"mha": "attn", "attention": "attn", "square": "square", "sin": "sin",
              "scan": "rnn", "fori": "rnn", "while": "rnn"}


def unsupported_model(case: str, route: str):
    """(model, relevance keywords) of ``case`` for ``route``; input (2, T, D)."""
    _, nnx_block, linen_block = UNSUPPORTED[case]
    if route == "nnx":
        return Wrapped(BLOCK_NAME[case], nnx_block(nnx.Rngs(0)), rngs=nnx.Rngs(1)), {}
    if route == "linen":
        model = LWrapped(BLOCK_NAME[case], linen_block)
        x = jnp.zeros((1, T, D))
        return model, {"variables": model.init(jax.random.key(0), x)}
    fn, params = _fn_model(case)
    return fn, {"params": params}


def _x(n: int = 2):
    return jnp.asarray(np.random.default_rng(3).normal(size=(n, T, D)), jnp.float32)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_raises(case, route):
    prim = UNSUPPORTED[case][0]
    model, kw = unsupported_model(case, route)
    with pytest.raises(ValueError, match=prim) as info:
        lrpjax.relevance(model, _x(), composite=EPS, target=0, **kw)
    info.match(r"test_zoo\.py")
    msg = str(info.value)
    if route != "fn":  # the module routes know the layer path
        assert BLOCK_NAME[case] in msg, msg
    if CHECK_LINES:  # LINE CHECK: the user's source line of the operation
        assert f"test_zoo.py:{line_of(f'{case}/{route}')}" in msg, msg


def square_in_sequential(route: str):
    """h * h as the third layer of a Sequential (NNX path layers/2, Linen layers_2)."""
    if route == "nnx":
        r = nnx.Rngs(0)
        return nnx.Sequential(nnx.Linear(D, D, rngs=r), nnx.relu, Square(),
                              nnx.Linear(D, 3, rngs=r)), {}
    if route == "linen":
        model = nn.Sequential((nn.Dense(D), nn.relu, LSquare(), nn.Dense(3)))
        return model, {"variables": model.init(jax.random.key(0), jnp.zeros((1, D)))}

    def fn(p, x):
        return _fn_block("square", p, jax.nn.relu(x @ p["embed"])) @ p["head"]
    return fn, {"params": {"embed": jnp.asarray(_w(1, D, D)), "head": jnp.asarray(_w(2, D, 3))}}


@pytest.mark.parametrize("route", ROUTES)
def test_unsupported_in_sequential_names_the_index_path(route):
    model, kw = square_in_sequential(route)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, D)), jnp.float32)
    with pytest.raises(ValueError, match=r"\bmul\b") as info:
        lrpjax.relevance(model, x, composite=EPS, target=0, **kw)
    info.match(r"test_zoo\.py")
    msg = str(info.value)
    if route != "fn":
        assert re.search(r"layers[/_.]2", msg), msg
    if CHECK_LINES:  # LINE CHECK
        assert f"test_zoo.py:{line_of(f'square/{route}')}" in msg, msg


@pytest.mark.parametrize("route", ROUTES)
def test_on_unsupported_warn_once_per_operation(route):
    """h * h with on_unsupported="warn": one UserWarning (naming 'mul'), a finite heatmap."""
    model, kw = unsupported_model("square", route)
    x = _x(5)  # a batch size no other test uses: the trace (and its warnings) happens here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        R = lrpjax.relevance(model, x, composite=EPS, target=0, on_unsupported="warn", **kw)
    user = [w for w in caught if issubclass(w.category, UserWarning)
            and re.search(r"\bmul\b", str(w.message))]
    assert len(user) == 1, [str(w.message) for w in caught]
    assert np.all(np.isfinite(np.asarray(R))) and R.shape == x.shape
