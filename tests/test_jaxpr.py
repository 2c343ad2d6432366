"""The jaxpr front-end: LRP for plain JAX functions fn(params, x)."""

from __future__ import annotations

import warnings

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import SpecNet, linen_model, random_net
from reference_lrp import lrp as np_lrp

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax.engine import UnsupportedPrimitiveError
from lrpjax.lab import models


def mlp_fn(params, x):
    """An Equinox/Haiku-style pure function: no Flax at all."""
    h = x
    for i, (W, b) in enumerate(params):
        h = h @ W + b
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h


@pytest.mark.parametrize("rule", [("eps", 0.25), ("zplus",), ("ab", 2.0, 1.0), ("gamma", 0.25)])
def test_pure_function_matches_numpy_reference(rule):
    rng = np.random.default_rng(3)
    net, shape = random_net(rng, "mlp", bias=True)
    x = rng.uniform(-1, 1, size=(4, *shape))
    spec = {"eps": R.Epsilon(0.25), "zplus": R.ZPlus(), "ab": R.AlphaBeta(2.0, 1.0),
            "gamma": R.Gamma(0.25)}[rule[0]]
    ref = np_lrp(net, x, [rule] * 3, np.arange(4) % 5)
    with jax.enable_x64(True):
        params = [(jnp.asarray(layer[1]), jnp.asarray(layer[2])) for layer in net
                  if layer[0] == "dense"]
        Rx = lrpjax.relevance(mlp_fn, jnp.asarray(x), params=params, composite=C.Uniform(spec),
                              target=jnp.arange(4) % 5)
    assert float(np.max(np.abs(np.asarray(Rx) - ref)) / np.max(np.abs(ref))) <= 1e-10


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_max"])
def test_agrees_with_nnx_front_end_on_reference_models(name):
    model = models.build(name, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    graphdef, state = nnx.split(model)

    def fn(p, a):
        return nnx.merge(graphdef, p)(a)

    for comp in (C.EpsilonGammaBox(0.0, 1.0), C.AlphaBetaAll(2.0, 1.0)):
        a = lrpjax.relevance(model, x, composite=comp, target=3)
        b = lrpjax.relevance(fn, x, params=state, composite=comp, target=3)
        # avg pooling is sum-then-divide in the jaxpr: Norm stabilises the sum, not the mean
        tol = 1e-3 if name == "cnn" else 1e-6
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) <= tol, comp
    rows = lrpjax.describe(fn, x, composite=C.EpsilonGammaBox(0.0, 1.0), params=state).rows
    linear = [r for r in rows if r.kind in ("dense", "conv")]
    assert type(linear[0].rule).__name__ == ("ZBox" if name != "mlp" else "Epsilon")
    if name == "cnn":
        assert any(r.kind == "avgpool" and isinstance(r.rule, R.Norm) for r in rows)


def test_residual_add_uses_norm_and_conserves():
    rng = np.random.default_rng(0)
    W1, W2, W3 = (rng.normal(size=s) / 3 for s in [(6, 6), (6, 6), (6, 3)])

    def fn(x):
        h = jax.nn.relu(x @ W1)
        h = h + jax.nn.relu(h @ W2)  # a residual connection
        return h @ W3

    with jax.enable_x64(True):
        x = jnp.asarray(rng.uniform(0, 1, size=(5, 6)))
        comp = C.Composite(C.by_type({"dense": R.Epsilon(0.0), "add": R.Norm(0.0)}))
        Rx = lrpjax.relevance(fn, x, composite=comp, target=0)
        rows = lrpjax.describe(fn, x, composite=comp).rows
        f = fn(x)[:, 0]
    assert any(r.kind == "add" for r in rows)
    np.testing.assert_allclose(np.asarray(Rx).sum(1), np.asarray(f), rtol=1e-10)


def test_control_flow_raises_or_warns():
    W = jnp.ones((3, 3)) / 3

    def fn(x):
        def body(h, _):
            return jax.nn.relu(h @ W), None
        h, _ = jax.lax.scan(body, x, None, length=2)
        return h

    x = jnp.ones((2, 3))
    with pytest.raises(UnsupportedPrimitiveError, match="scan"):
        lrpjax.relevance(fn, x, composite=C.EpsilonPlus(), target=0)
    with pytest.warns(UserWarning, match="scan"):
        Rx = lrpjax.relevance(fn, x, composite=C.EpsilonPlus(), target=0, on_unsupported="warn")
    assert np.all(np.isfinite(Rx))
    with pytest.raises(ValueError, match="on_unsupported"):  # no silent fallback
        lrpjax.relevance(fn, x, composite=C.EpsilonPlus(), on_unsupported="ignore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cov = lrpjax.describe(fn, x, composite=C.EpsilonPlus())
    assert not caught, [str(w.message) for w in caught]  # the report shows it; no warning on top
    assert [r.kind for r in cov.fallbacks] == ["unsupported"]


def test_jit_and_closure_forms():
    rng = np.random.default_rng(1)
    net, shape = random_net(rng, "cnn", bias=True, pool="max")
    model = SpecNet(net)
    graphdef, state = nnx.split(model)
    x = jnp.asarray(rng.uniform(0, 1, size=(2, *shape)), jnp.float32)
    comp = C.EpsilonPlus()
    closure = lrpjax.relevance(lambda a: model(a), x, composite=comp, target=1)
    jitted = jax.jit(lambda p, a: lrpjax.relevance(lambda q, b: nnx.merge(graphdef, q)(b), a,
                                                   params=p, composite=comp, target=1))(state, x)
    np.testing.assert_allclose(closure, jitted, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(closure, lrpjax.relevance(model, x, composite=comp, target=1),
                               rtol=1e-5, atol=1e-7)


def test_gradient_methods_take_params_like_relevance():
    rng = np.random.default_rng(2)
    net, shape = random_net(rng, "cnn", bias=True)
    model = SpecNet(net)
    graphdef, state = nnx.split(model)
    fn = lambda p, a: nnx.merge(graphdef, p)(a)
    x = jnp.asarray(rng.uniform(0, 1, size=(2, *shape)), jnp.float32)
    for method in (lrpjax.gradient, lrpjax.sensitivity, lrpjax.gradient_x_input):
        want = method(model, x, target=3)
        np.testing.assert_allclose(method(fn, x, target=3, params=state), want, rtol=1e-6)
    linen, variables = linen_model(net)
    comp = C.EpsilonPlus()
    calls = (lambda m, **kw: lrpjax.gradient(m, x, target=3, **kw),
             lambda m, **kw: lrpjax.relevance(m, x, composite=comp, target=3, **kw),
             lambda m, **kw: lrpjax.describe(m, x, composite=comp, **kw))
    for call in calls:  # params= is never silently ignored
        for model_, kw, error, match in (
                (model, {"params": state}, TypeError, "NNX module"),
                (linen, {"params": variables}, TypeError, "Linen"),
                (fn, {"params": state, "variables": state}, ValueError, "not both")):
            with pytest.raises(error, match=match):
                call(model_, **kw)


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs in its equations' parameters."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                if isinstance(sub, jex.core.ClosedJaxpr | jex.core.Jaxpr):
                    yield from _eqns(getattr(sub, "jaxpr", sub))


def test_checkpointed_blocks_stay_checkpointed():
    """``jax.checkpoint`` bodies run under ``jax.checkpoint`` again, policy kept: the rules'
    backward (the division by z) runs where the forward is recomputed, so LRP keeps the
    gradient's memory savings on long inputs; the heatmap is unchanged."""
    rng = np.random.default_rng(4)
    Ws = [jnp.asarray(rng.normal(size=(6, 6)) / 3, jnp.float32) for _ in range(3)]
    policy = jax.checkpoint_policies.dots_saveable

    def fn(x, remat):
        h = x
        for W in Ws[:2]:
            block = lambda a, W=W: a + jax.nn.relu(a @ W)
            h = jax.checkpoint(block, policy=policy)(h) if remat else block(h)
        return h @ Ws[2]

    comp = C.Composite(C.by_type({"dense": R.Epsilon(0.0), "add": R.Norm(0.0)}))
    x = jnp.asarray(rng.uniform(0, 1, size=(5, 6)), jnp.float32)
    lrp = lambda a, remat: lrpjax.relevance(lambda b: fn(b, remat), a, composite=comp,
                                            target=0)
    np.testing.assert_allclose(lrp(x, True), lrp(x, False), rtol=1e-6, atol=1e-7)
    (rows, _), (plain, _) = (lrpjax.layer_relevance(lambda b, r=r: fn(b, r), x, composite=comp,
                                                    target=0) for r in (True, False))
    assert [r.path for r in rows] == [r.path for r in plain] and len(rows) >= 4  # taps inside
    for r, p in zip(rows, plain, strict=True):
        np.testing.assert_allclose(r.r_out, p.r_out, rtol=1e-6, atol=1e-7)
    for method, rule_op in ((lambda a: lrp(a, True), "div"),
                            (lambda a: lrpjax.gradient(lambda b: fn(b, True), a, target=0), None)):
        remats = [e for e in _eqns(jax.make_jaxpr(method)(x).jaxpr)
                  if e.primitive.name in ("checkpoint", "remat", "remat2")]
        assert len(remats) == 2 and all(e.params["policy"] is policy for e in remats)
        for e in remats:
            body = {q.primitive.name for q in _eqns(e.params["jaxpr"])}
            assert "dot_general" in body and (rule_op is None or rule_op in body), body
