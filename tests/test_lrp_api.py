"""Invariants of the explain API: conservation, LRP-0 = gradient x input, jit/vmap, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lrp_nets import SpecNet, linen_model, random_net

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax.coverage import UnsupportedLayerError

TIGHT = {
    "lrp0": R.Epsilon(0.0),
    "zplus": R.ZPlus(epsilon=1e-12),
    "gamma": R.Gamma(0.5, epsilon=1e-12),
    "flat": R.Flat(epsilon=1e-12),
    "wsquare": R.WSquare(epsilon=1e-12),
}


def _tight(rule):
    return C.Composite(C.by_type({"dense": rule, "conv": rule, "avgpool": R.Norm(0.0)}))


@st.composite
def architectures(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        depth = draw(st.integers(1, 3))
        sizes = tuple(draw(st.lists(st.sampled_from([2, 5, 12]), min_size=depth + 1,
                                    max_size=depth + 1)))
        net, shape = random_net(rng, "mlp", bias=False, sizes=(*sizes, 3))
    else:
        net, shape = random_net(rng, "cnn", bias=False, pool=draw(st.sampled_from(["avg", "max"])))
    x = rng.uniform(-1, 1, size=(3, *shape))
    return net, x


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(architectures(), st.sampled_from(sorted(TIGHT)))
def test_conservation_bias_free(arch, rule_name):
    """sum_i R_i = f_c(x) on bias-free ReLU nets (float64, relative error <= 1e-5).

    Flat and w^2 give relevance to dead units, which avg pooling (Norm) cannot pass on where a
    whole window is 0: they conserve on MLPs and max-pool nets only.
    """
    net, x = arch
    assume(not (rule_name in ("flat", "wsquare") and any(k[0] == "avgpool" for k in net)))
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64)
        xj = jnp.asarray(x)
        y = model(xj)
        target = jnp.argmax(y, axis=1)
        Rx = lrpjax.relevance(model, xj, composite=_tight(TIGHT[rule_name]), target=target)
    f = np.asarray(y)[np.arange(3), np.asarray(target)]
    total = np.asarray(Rx).reshape(3, -1).sum(axis=1)
    ok = np.abs(f) > 1e-8
    if rule_name == "zplus":  # z+ conserves where the explained output is positive
        ok &= f > 0
    assert np.all(np.abs(total - f)[ok] <= 1e-5 * np.abs(f)[ok]), (total, f)


@pytest.mark.parametrize("kind,pool,relu_fn", [("mlp", "avg", False), ("cnn", "avg", True),
                                               ("cnn", "max", False)])
def test_lrp0_equals_gradient_times_input(kind, pool, relu_fn):
    rng = np.random.default_rng(1)
    net, shape = random_net(rng, kind, bias=False, pool=pool)
    x = rng.uniform(-1, 1, size=(4, *shape))
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64, relu_fn=relu_fn)
        xj = jnp.asarray(x)
        Rx = lrpjax.relevance(model, xj, composite=_tight(R.Epsilon(0.0)), target=2)
        gx = lrpjax.gradient_x_input(model, xj, target=2)
        # one-hot mode: the top layer's LRP-0 divides by f(x), so R = x * grad f / f(x)
        R1 = lrpjax.relevance(model, xj, composite=_tight(R.Epsilon(0.0)), target=2,
                              output_relevance="onehot")
        f = np.asarray(model(xj))[:, 2]
    np.testing.assert_allclose(np.asarray(Rx), np.asarray(gx), rtol=1e-9, atol=1e-12)
    scale = f.reshape(-1, *([1] * (x.ndim - 1)))
    np.testing.assert_allclose(np.asarray(R1) * scale, np.asarray(gx), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(Rx).reshape(4, -1).sum(1), f, rtol=1e-9)


def test_gradient_methods_closed_form():
    """On a linear model f(x) = W x: gradient = W_c, sensitivity = W_c^2, simple Taylor x W_c."""
    lin = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 5))
    W = np.asarray(lin.kernel[...])
    np.testing.assert_allclose(lrpjax.gradient(lin, x, target=1), np.tile(W[:, 1], (4, 1)), rtol=1e-6)
    np.testing.assert_allclose(lrpjax.sensitivity(lin, x, target=1), np.tile(W[:, 1] ** 2, (4, 1)),
                               rtol=1e-6)
    np.testing.assert_allclose(lrpjax.gradient_x_input(lin, x, target=1), np.asarray(x) * W[:, 1],
                               rtol=1e-6)
    pred = np.argmax(np.asarray(lin(x)), axis=1)
    np.testing.assert_allclose(lrpjax.gradient(lin, x), W[:, pred].T, rtol=1e-6)


def _cnn(seed=0, bias=True, pool="avg"):
    rng = np.random.default_rng(seed)
    net, shape = random_net(rng, "cnn", bias=bias, pool=pool)
    x = jnp.asarray(rng.uniform(0, 1, size=(5, *shape)), jnp.float32)
    return SpecNet(net), net, x


def test_jit_equals_eager_and_vmap_equals_loop():
    model, _, x = _cnn()
    comp = C.EpsilonGammaBox(0.0, 1.0)
    eager = lrpjax.relevance(model, x, composite=comp, target=1)
    jitted = jax.jit(lambda a: lrpjax.relevance(model, a, composite=comp, target=1))(x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    # x closed over (a constant of the trace) and the target traced: still checked, same result
    by_target = jax.jit(lambda t: lrpjax.relevance(model, x, composite=comp, target=t))
    np.testing.assert_allclose(by_target(1), eager, rtol=1e-6, atol=1e-7)
    x_nan = x.at[0, 0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN"):
        jax.jit(lambda t: lrpjax.relevance(model, x_nan, composite=comp, target=t))(1)
    # nnx.jit with the model as an argument
    f = nnx.jit(lambda m, a: lrpjax.relevance(m, a, composite=comp, target=1))
    np.testing.assert_allclose(f(model, x), eager, rtol=1e-6, atol=1e-7)
    # vmap over groups of inputs == a Python loop
    groups = x.reshape(5, 1, *x.shape[1:])
    vm = jax.vmap(lambda a: lrpjax.relevance(model, a, composite=comp, target=1))(groups)
    loop = jnp.stack([lrpjax.relevance(model, g, composite=comp, target=1) for g in groups])
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loop.reshape(x.shape), eager, rtol=1e-5, atol=1e-7)


class PerExample(nnx.Module):
    """Conv-conv-dense written for one unbatched image (H, W, C), batched with jax.vmap."""

    def __init__(self, vmapped: bool):
        rngs = nnx.Rngs(0)
        self.conv1 = nnx.Conv(3, 4, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), padding="SAME", rngs=rngs)
        self.dense = nnx.Linear(4 * 6 * 6, 5, rngs=rngs)
        self.vmapped = vmapped

    def __call__(self, x):
        def net(a):
            a = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(a))))
            return self.dense(a.reshape(*a.shape[:-3], -1))
        return jax.vmap(net)(x) if self.vmapped else net(x)


def test_layers_that_see_unbatched_inputs_under_vmap():
    """Inside the vmap every layer sees (H, W, C): its leading axis is not a batch axis, which
    the input-independent terms (z^B, Flat, w^2) must not assume."""
    x = jax.random.uniform(jax.random.key(1), (4, 6, 6, 3))
    for comp in (C.EpsilonGammaBox(0.0, 1.0), C.EpsilonPlusFlat(),
                 C.Composite(C.first(R.WSquare()), C.by_type({"conv": R.Epsilon(),
                                                               "dense": R.Epsilon()}))):
        vm = lrpjax.relevance(PerExample(True), x, composite=comp, target=0)
        batched = lrpjax.relevance(PerExample(False), x, composite=comp, target=0)
        np.testing.assert_allclose(vm, batched, rtol=0, atol=1e-5 * float(jnp.abs(batched).max()))


def test_linen_under_jit_is_never_the_plain_gradient():
    rng = np.random.default_rng(2)
    net, shape = random_net(rng, "cnn", bias=True)
    linen, variables = linen_model(net)
    x = jnp.asarray(rng.uniform(0, 1, size=(3, *shape)), jnp.float32)
    comp = C.Uniform(R.ZPlus())
    # a trace of the plain model made outside any LRP context, cached first
    plain = jax.jit(lambda v, a: linen.apply(v, a))
    plain(variables, x)
    eager = lrpjax.relevance(linen, x, composite=comp, variables=variables, target=0)
    jitted = jax.jit(lambda v, a: lrpjax.relevance(linen, a, composite=comp, variables=v,
                                                   target=0))(variables, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    nnx_R = lrpjax.relevance(SpecNet(net), x, composite=comp, target=0)
    np.testing.assert_allclose(jitted, nnx_R, rtol=1e-6, atol=1e-7)
    gxi = lrpjax.gradient_x_input(linen, x, variables=variables, target=0)
    assert float(jnp.max(jnp.abs(jitted - gxi * linen.apply(variables, x)[:, :1, None, None]))) > 1e-3


def test_targets_int_array_and_callable():
    model, _, x = _cnn()
    comp = C.EpsilonPlus()
    t = jnp.array([0, 1, 2, 3, 4])
    per = lrpjax.relevance(model, x, composite=comp, target=t)
    for i in range(5):
        single = lrpjax.relevance(model, x[i:i + 1], composite=comp, target=int(t[i]))
        np.testing.assert_allclose(per[i:i + 1], single, rtol=1e-5, atol=1e-7)
    onehot_logit = lrpjax.relevance(model, x, composite=comp,
                                    target=lambda y: y * jax.nn.one_hot(t, y.shape[1]))
    np.testing.assert_allclose(onehot_logit, per, rtol=1e-6, atol=1e-7)
    pred = lrpjax.relevance(model, x, composite=comp)
    argmax = jnp.argmax(model(x), axis=1)
    np.testing.assert_allclose(pred, lrpjax.relevance(model, x, composite=comp, target=argmax),
                               rtol=1e-6)


def test_describe_positions_and_matchers():
    model, _, x = _cnn()
    cov = lrpjax.describe(model, x, composite=C.EpsilonPlusFlat())
    rules = {row.path: type(row.rule).__name__ for row in cov.rows}
    assert rules == {"layers/0": "Flat", "layers/1": "Pass", "layers/2": "Norm",
                     "layers/3": "ZPlus", "layers/4": "Pass", "layers/5": "Norm",
                     "layers/6": "Pass", "layers/7": "Epsilon", "layers/8": "Pass",
                     "layers/9": "Epsilon"}
    assert "Flat" in str(cov) and "layers/9" in str(cov) and not cov.fallbacks
    comp = C.Composite(C.last(R.Epsilon(0.0)), C.by_path({"layers/[03]": R.Gamma(0.1)}),
                       C.where(lambda path, m: R.ZPlus() if isinstance(m, nnx.Linear) else None))
    rules = {row.path: row.rule for row in lrpjax.describe(model, x, composite=comp).rows}
    assert rules["layers/9"] == R.Epsilon(0.0) and rules["layers/7"] == R.ZPlus()
    assert rules["layers/0"] == R.Gamma(0.1) == rules["layers/3"]
    tut = {r.path: r.rule for r in lrpjax.describe(model, x, composite=C.LRPTutorial()).rows}
    assert isinstance(tut["layers/0"], R.ZBox) and tut["layers/3"] == R.Gamma(0.1)
    assert tut["layers/7"] == R.Epsilon(0.1, rms=True) and tut["layers/9"] == R.Epsilon(0.0)


def test_bad_inputs_give_clear_errors():
    model, _, x = _cnn()
    comp = C.EpsilonPlus()
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        R.AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="beta >= 0"):
        R.AlphaBeta(0.5, -0.5)
    with pytest.raises(ValueError, match="input of shape"):
        lrpjax.relevance(model, jnp.ones((2, 9, 9, 1)), composite=comp)
    with pytest.raises(ValueError, match="out of range"):
        lrpjax.relevance(model, x, composite=comp, target=5)
    with pytest.raises(ValueError, match="out of range"):
        lrpjax.relevance(model, x, composite=comp, target=jnp.array([0, 1, 2, 3, -1]))
    with pytest.raises(ValueError, match="one entry per sample"):
        lrpjax.relevance(model, x, composite=comp, target=jnp.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        lrpjax.relevance(model, x.at[0, 0, 0, 0].set(jnp.nan), composite=comp)
    with pytest.raises(TypeError, match="floating"):
        lrpjax.relevance(model, jnp.ones((2, 8, 8, 1), jnp.int32), composite=comp)
    with pytest.raises(ValueError, match="batch axis"):
        lrpjax.gradient(model, jnp.ones((8,)))
    with pytest.raises(TypeError, match="Composite"):
        lrpjax.relevance(model, x, composite=R.ZPlus())
    with pytest.raises(ValueError, match="broadcast"):
        bad = C.Composite(C.first(R.ZBox(jnp.zeros(3), 1.0)), C.by_type({"conv": R.ZPlus()}))
        lrpjax.relevance(model, x, composite=bad)


class WithLayerNorm(nnx.Module):
    def __init__(self):
        self.dense = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
        self.norm = nnx.LayerNorm(4, rngs=nnx.Rngs(0))
        self.out = nnx.Linear(4, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.out(self.norm(self.dense(x)))


def test_unsupported_layer_raises_unless_not_strict():
    model = WithLayerNorm()
    x = jnp.ones((2, 4))
    # the engine walks into the LayerNorm and names the first operation it has no rule for
    with pytest.raises(UnsupportedLayerError, match=r"'norm/[a-z_]+/\d+' \(test_lrp_api.py:"):
        lrpjax.relevance(model, x, composite=C.EpsilonPlus())
    with pytest.warns(UserWarning, match="norm/"):
        R_loose = lrpjax.relevance(model, x, composite=C.EpsilonPlus(), strict=False)
    assert np.all(np.isfinite(R_loose))
    cov = lrpjax.describe(model, x, composite=C.EpsilonPlus())
    assert cov.fallbacks and all(r.path.startswith("norm/") for r in cov.fallbacks)
    assert "plain gradient" in str(cov)
    bn = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
                        nnx.BatchNorm(4, use_running_average=True, rngs=nnx.Rngs(0)))
    with pytest.raises(UnsupportedLayerError, match="fold it"):
        lrpjax.relevance(bn, x, composite=C.EpsilonPlus())


@pytest.mark.parametrize("name", ["eps", "zplus", "a2b1", "gamma", "zbox", "flat", "wsquare"])
def test_zero_input_and_dead_relus_are_finite(name):
    rule = {"eps": R.Epsilon(0.0), "zplus": R.ZPlus(), "a2b1": R.AlphaBeta(2.0, 1.0),
            "gamma": R.Gamma(0.25), "zbox": R.ZBox(0.0, 1.0), "flat": R.Flat(),
            "wsquare": R.WSquare()}[name]
    rng = np.random.default_rng(4)
    net, shape = random_net(rng, "cnn", bias=False)
    # all-zero input: every pre-activation is 0, every denominator 0 for LRP-0
    model = SpecNet(net)
    R0 = lrpjax.relevance(model, jnp.zeros((2, *shape)), composite=C.Uniform(rule), target=0)
    assert np.all(np.isfinite(R0))
    if name in ("eps", "zplus", "a2b1", "gamma"):
        assert np.all(np.asarray(R0) == 0)
    # dead ReLUs everywhere: large negative biases in the hidden layers
    dead = [(k[0], k[1], -10.0 * np.ones_like(k[2])) if k[0] in ("conv", "dense") else k
            for k in net]
    Rd = lrpjax.relevance(SpecNet(dead), jnp.ones((2, *shape)), composite=C.Uniform(rule),
                          target=0)
    assert np.all(np.isfinite(Rd))


def test_linen_unbound_variables_error():
    linen = nn.Dense(3)
    with pytest.raises(ValueError, match="variables"):
        lrpjax.relevance(linen, jnp.ones((1, 2)), composite=C.EpsilonPlus())
