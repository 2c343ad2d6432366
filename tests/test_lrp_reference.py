"""lrpjax LRP against the independent float64 NumPy reference (tests/reference_lrp.py)."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_nets import SpecNet, composite_for, linen_model, random_net
from reference_lrp import lrp as np_lrp

import lrpjax

RULES = {
    "eps0": ("eps", 0.0),
    "eps": ("eps", 0.25),
    "zplus": ("zplus",),
    "a2b1": ("ab", 2.0, 1.0),
    "a3b2": ("ab", 3.0, 2.0),
    "gamma": ("gamma", 0.25),
    "zbox": ("zbox", -1.0, 1.0),
    "flat": ("flat",),
    "wsquare": ("wsquare",),
}


def _input(rng, shape, n=4):
    return rng.uniform(-1.0, 1.0, size=(n, *shape))


def _max_rel_err(R, ref):
    return float(np.max(np.abs(np.asarray(R, np.float64) - ref)) / np.max(np.abs(ref)))


def _cases():
    for kind, pool in (("mlp", "avg"), ("cnn", "avg"), ("cnn", "max")):
        for bias in (True, False):
            yield kind, pool, bias


@pytest.mark.parametrize("kind,pool,bias", list(_cases()))
@pytest.mark.parametrize("rule", list(RULES))
def test_uniform_rule_matches_numpy_float64(kind, pool, bias, rule):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{pool}{bias}{rule}".encode()))
    net, shape = random_net(rng, kind, bias=bias, pool=pool)
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    specs = [RULES[rule]] * n_linear
    x = _input(rng, shape)
    target = np.arange(4) % 5
    ref = np_lrp(net, x, specs, target)
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64)
        R = lrpjax.relevance(model, jnp.asarray(x), composite=composite_for(specs),
                             target=jnp.asarray(target))
        assert R.dtype == jnp.float64
    assert np.all(np.isfinite(R))
    assert _max_rel_err(R, ref) <= 1e-10


@pytest.mark.parametrize("kind,pool,bias", list(_cases()))
@pytest.mark.parametrize("rule", ["eps", "zplus", "a2b1", "gamma", "zbox", "flat"])
def test_uniform_rule_matches_numpy_float32(kind, pool, bias, rule):
    rng = np.random.default_rng(7 + len(rule))
    net, shape = random_net(rng, kind, bias=bias, pool=pool)
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    specs = [RULES[rule]] * n_linear
    x = _input(rng, shape)
    target = np.arange(4) % 5
    ref = np_lrp(net, x, specs, target)
    model = SpecNet(net)
    R = lrpjax.relevance(model, jnp.asarray(x, jnp.float32), composite=composite_for(specs),
                         target=jnp.asarray(target))
    assert R.dtype == jnp.float32
    assert _max_rel_err(R, ref) <= 1e-5


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_mixed_rules_per_layer(kind):
    """zB at the input, gamma / alpha-beta in the middle, epsilon / LRP-0 on top."""
    rng = np.random.default_rng(3)
    net, shape = random_net(rng, kind, bias=True)
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    middle = [("gamma", 0.1), ("ab", 2.0, 1.0), ("eps", 0.1), ("zplus",)]
    specs = [("zbox", -1.0, 1.0)] + middle[: n_linear - 2] + [("eps", 0.0)]
    x = _input(rng, shape)
    target = np.array([1, 0, 3, 2])
    ref = np_lrp(net, x, specs, target)
    with jax.enable_x64(True):
        R = lrpjax.relevance(SpecNet(net, dtype=jnp.float64), jnp.asarray(x),
                             composite=composite_for(specs), target=jnp.asarray(target))
    assert _max_rel_err(R, ref) <= 1e-10


def test_zbox_array_bounds_broadcast():
    rng = np.random.default_rng(11)
    net, shape = random_net(rng, "cnn", bias=True)
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    low = rng.uniform(-1.5, -1.0, size=shape)
    high = rng.uniform(1.0, 1.5, size=shape)
    specs = [("zbox", low, high)] + [("eps", 1e-6)] * (n_linear - 1)
    x = _input(rng, shape)
    ref = np_lrp(net, x, specs, np.zeros(4, int))
    with jax.enable_x64(True):
        R = lrpjax.relevance(SpecNet(net, dtype=jnp.float64), jnp.asarray(x),
                             composite=composite_for(specs), target=0)
    assert _max_rel_err(R, ref) <= 1e-10


def test_onehot_output_relevance():
    rng = np.random.default_rng(5)
    net, shape = random_net(rng, "mlp")
    specs = [("eps", 0.1)] * 3
    x = _input(rng, shape)
    ref = np_lrp(net, x, specs, np.full(4, 2), mode="onehot")
    with jax.enable_x64(True):
        R = lrpjax.relevance(SpecNet(net, dtype=jnp.float64), jnp.asarray(x),
                             composite=composite_for(specs), target=2, output_relevance="onehot")
    assert _max_rel_err(R, ref) <= 1e-10


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_linen_equals_nnx_equals_numpy(kind):
    rng = np.random.default_rng(21)
    net, shape = random_net(rng, kind)
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    specs = [("zbox", -1.0, 1.0)] + [("gamma", 0.25)] * (n_linear - 2) + [("eps", 0.25)]
    x = _input(rng, shape)
    target = np.arange(4) % 5
    with jax.enable_x64(True):
        comp = composite_for(specs)
        linen, variables = linen_model(net, jnp.float64)
        R_linen = lrpjax.relevance(linen, jnp.asarray(x), composite=comp, variables=variables,
                                   target=jnp.asarray(target))
        R_nnx = lrpjax.relevance(SpecNet(net, dtype=jnp.float64), jnp.asarray(x),
                                 composite=comp, target=jnp.asarray(target))
    # two front-ends trace two programs that XLA may fuse and order differently: float64
    # reorderings only (~1e-16 relative), never a different rule
    np.testing.assert_allclose(np.asarray(R_linen), np.asarray(R_nnx), rtol=1e-12, atol=1e-14)
    assert _max_rel_err(R_linen, np_lrp(net, x, specs, target)) <= 1e-10
