"""The sign facts (lrpjax.facts) proven on the engine's plan, and the cheaper forms they enable.

* ``nonneg``: a linear layer's relevance input is >= 0 for every model input (a forward
  whitelist of primitives); z+, alpha-beta and gamma then skip the a- products.
* ``gated``: no relevance reaches the layer's output where z < 0 (every use is a ReLU-like
  activation whose zero outputs receive no relevance); gamma then drops its s_n half.

A fact may only be claimed where it is true: every test that finds one also checks the heatmap
against the general forms (``lrpjax.facts.disabled()``) or the float64 NumPy reference, and the
counter-examples force a false fact onto the plan to show that the checks would catch it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import SpecNet, linen_model, random_net
from reference_lrp import lrp as np_lrp

import lrpjax
from lrpjax import composites as C
from lrpjax import facts, frontends, layers
from lrpjax import rules as R
from lrpjax.explain import lrp_function, output_relevance


# ---------------------------------------------------------------- helpers
def _plan(model, x, comp, *, variables=None, params=None):
    """``(f, plan)`` as describe builds it: unsupported operations are reported, not raised."""
    static, dynamic = frontends.split(model, variables, params)
    return lrp_function(static, dynamic, comp, x, strict=False, on_unsupported="ignore")


def _linear(model, x, comp=None, **kw) -> list[tuple[str, bool, bool]]:
    """(path, input >= 0, gated) of every dense / conv call in forward order."""
    _, plan = _plan(model, x, comp or C.Uniform(R.Gamma(0.25)), **kw)
    return [(s.path, s.facts.get("nonneg", (False,))[0], s.facts.get("gated", False))
            for s in plan.sites if s.kind in ("dense", "conv")]


def _nonneg(model, x, comp=None, **kw) -> list[bool]:
    return [n for _, n, _ in _linear(model, x, comp, **kw)]


def _gated(model, x, comp=None, **kw) -> list[bool]:
    return [g for _, _, g in _linear(model, x, comp, **kw)]


def _proven(cov) -> dict[str, str]:
    return {r.path: r.proven for r in cov.rows if r.kind in ("dense", "conv")}


def _heatmap(f, x, target=None):
    def heatmap(a):
        y, pull = jax.vjp(f, a)
        return pull(output_relevance(y, target))[0]
    return jax.jit(heatmap)(x)  # one compilation: faster than running it op by op


def _forced(model, x, comp, index: int, forced: dict, target=None, **kw):
    """The heatmap with ``forced`` facts put on the ``index``-th linear call of the plan."""
    f, plan = _plan(model, x, comp, **kw)
    site = [s for s in plan.sites if s.kind in ("dense", "conv")][index]
    site.facts.update(forced)
    return _heatmap(f, x, target)


def _general(call):
    """``call()`` with the facts disabled (relevance compiles a separate function for that:
    ``with_facts`` is one of its static arguments, so no cache needs clearing)."""
    with facts.disabled():
        return call()


def assert_fast_equals_general(call, rel: float = 2e-6, name: str = "") -> None:
    """As ``lrp_nets.assert_fast_equals_general`` (the heatmap with the facts equals the one
    without, to ``rel`` of the largest relevance) without clearing JAX's caches, which makes
    every later test compile again (3x this file's time)."""
    fast, general = call(), _general(call)
    atol = rel * float(jnp.max(jnp.abs(general)))
    np.testing.assert_allclose(fast, general, rtol=0, atol=atol, err_msg=name)


def _differs(a, b, rel=1e-3) -> bool:
    return float(jnp.max(jnp.abs(a - b))) > rel * float(jnp.max(jnp.abs(b)))


def _close_to_reference(R_, ref, rel=1e-10):
    assert float(np.max(np.abs(np.asarray(R_) - ref)) / np.max(np.abs(ref))) <= rel


def _cnn_net(pool="avg", seed=0):
    rng = np.random.default_rng(seed)
    net, shape = random_net(rng, "cnn", pool=pool)  # conv relu pool conv relu pool flat dense..
    return net, jnp.asarray(rng.uniform(0, 1, size=(2, *shape)), jnp.float32)


class Chain(nnx.Module):
    """Linear layers (6 -> 6) separated by the given activation functions (None: nothing);
    ``relu_in`` puts a ReLU before the first one (so its input is >= 0 and a gate can be
    proven for it)."""

    def __init__(self, acts, rngs, relu_in=False):
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs) for _ in range(len(acts) + 1)])
        self.acts, self.relu_in = tuple(acts), relu_in

    def __call__(self, x):
        x = jax.nn.relu(x) if self.relu_in else x
        for layer, act in zip(self.layers, self.acts, strict=False):
            x = layer(x)
            x = x if act is None else act(x)
        return self.layers[-1](x)


X6 = jax.random.normal(jax.random.key(1), (8, 6))


@functools.cache
def _cnn28():
    """lrpjax.lab.models.CNN with max pooling (built once: its initialisation costs a second)."""
    from lrpjax.lab.models import CNN

    return CNN(pool="max", rngs=nnx.Rngs(1))


# ================================================================ input >= 0
ACTS = {  # activation after layer 0 -> is layer 1's input provably >= 0
    "relu": (jax.nn.relu, True),
    "sigmoid": (jax.nn.sigmoid, True),
    "softmax": (jax.nn.softmax, True),
    "exp": (jnp.exp, True),
    "square": (lambda x: x ** 2, True),
    "abs_then_avg": (lambda x: jnp.abs(x).reshape(-1, 3, 2).mean(-1).repeat(2, -1), True),
    "relu_max_pool": (lambda x: jnp.max(jax.nn.relu(x).reshape(-1, 3, 2), -1).repeat(2, -1), True),
    "maximum_0": (lambda x: jnp.maximum(x, 0.0), True),
    "relu6": (jax.nn.relu6, True),
    "clip_0_6": (lambda x: jnp.clip(x, 0.0, 6.0), True),
    "clamp_0_6": (lambda x: jax.lax.clamp(0.0, x, 6.0), True),
    "relu_times_2": (lambda x: 2.0 * jax.nn.relu(x), True),
    "tanh": (jnp.tanh, False),
    "identity": (None, False),
    "relu_minus_1": (lambda x: jax.nn.relu(x) - 1.0, False),
    "relu_times_neg": (lambda x: -2.0 * jax.nn.relu(x), False),
    "leaky_relu": (jax.nn.leaky_relu, False),
    "relu_squared_minus": (lambda x: jax.nn.relu(x) ** 2 - jax.nn.relu(x), False),
    "clamp_0_neg": (lambda x: jax.lax.clamp(0.0, x, -1.0), False),  # = -1 everywhere
    "pad_negative": (lambda x: jnp.pad(jax.nn.relu(x)[:, 1:], ((0, 0), (1, 0)),
                                       constant_values=-1.0), False),
    "concat_negative": (lambda x: jnp.concatenate(
        [jax.nn.relu(x)[:, 1:], -jnp.ones((x.shape[0], 1))], -1), False),
}


@pytest.mark.parametrize("name", list(ACTS))
def test_layer_input_signs(name):
    act, expected = ACTS[name]
    model = Chain([act, jax.nn.relu], nnx.Rngs(0))
    assert _nonneg(model, jnp.ones((2, 6)), C.Uniform(R.ZPlus())) == [False, expected, True]


def test_facts_per_model_kind():
    """The model input proves nothing; every layer behind a ReLU (through pooling, flatten)
    has its input >= 0; a gate for each hidden layer whose output feeds a ReLU, none for the
    output layer."""
    rng = np.random.default_rng(0)
    mlp_net, mlp_shape = random_net(rng, "mlp")
    mlp_x = jnp.asarray(rng.normal(size=(2, *mlp_shape)), jnp.float32)
    assert _linear(SpecNet(mlp_net), mlp_x) == [
        ("layers/0", False, False), ("layers/2", True, True), ("layers/4", True, False)]
    for pool in ("avg", "max"):
        net, x = _cnn_net(pool)
        assert _linear(SpecNet(net), x) == [
            ("layers/0", False, False), ("layers/3", True, True), ("layers/7", True, True),
            ("layers/9", True, False)], pool
    # bare jax.nn.relu calls: test_gated_gamma_matches_float64_reference[bare_relu]
    assert _linear(_cnn28(), jnp.zeros((1, 28, 28, 1))) == [
        ("conv1", False, False), ("conv2", True, True), ("dense1", True, True),
        ("dense2", True, False)]


def _two_heads(middle):
    """fn(p, x): relu(x W0 + b0) -> ``middle`` -> a gamma layer plus a z+ layer (the last)."""
    k = jax.random.split(jax.random.key(3), 5)
    p = {"w0": jax.random.normal(k[0], (6, 6)), "b0": 0.3 * jax.random.normal(k[1], (6,)),
         "w1": jax.random.normal(k[2], (6, 3)), "b1": jnp.full((3,), 0.1),
         "w2": jax.random.normal(k[3], (6, 3))}

    def fn(p, x):
        g = middle(jax.nn.relu(x @ p["w0"] + p["b0"]))
        return (g @ p["w1"] + p["b1"]) + g @ p["w2"]
    return fn, p


TWO_RULES = C.Composite(C.last(R.ZPlus()), C.by_type({"dense": R.Gamma(0.25)}))
IDX = jnp.array([0, 7, 2, -9, 4, 5])  # 7 and -9 are out of range


def _check_unproven_and_exact(middle):
    """Neither layer behind ``middle`` is proven >= 0; the heatmap equals the general one,
    and would not if the fact were claimed (the check has teeth)."""
    fn, p = _two_heads(middle)
    assert _nonneg(fn, X6, TWO_RULES, params=p) == [False, False, False]
    call = lambda: lrpjax.relevance(fn, X6, params=p, composite=TWO_RULES)
    assert_fast_equals_general(call)
    f, plan = _plan(fn, X6, TWO_RULES, params=p)
    for site in [s for s in plan.sites if s.kind == "dense"][1:]:
        site.facts.update(nonneg=(True,))
    assert _differs(_heatmap(f, X6), _general(call))


def test_a_gather_that_fills_with_a_negative_value_proves_nothing():
    """Found in review of the old analysis: a gather with mode="fill" and fill_value < 0
    puts negative values between a ReLU and the next layers."""
    _check_unproven_and_exact(
        lambda h: jnp.take(h, IDX, axis=1, mode="fill", fill_value=-5.0))
    # the same gather with a fill >= 0, or with clipped indices, is >= 0
    for middle in (lambda h: jnp.take(h, IDX, axis=1, mode="fill", fill_value=5.0),
                   lambda h: jnp.take(h, IDX, axis=1, mode="clip")):
        fn, p = _two_heads(middle)
        assert _nonneg(fn, X6, TWO_RULES, params=p) == [False, True, True]


def test_a_clamp_with_lo_above_hi_proves_nothing():
    """Found in review of the old analysis: clamp(lo, x, hi) = min(max(x, lo), hi) is hi
    everywhere when lo > hi, so lo >= 0 (and x >= 0) proves nothing."""
    _check_unproven_and_exact(lambda h: jax.lax.clamp(1.0, h, -2.0))
    fn, p = _two_heads(lambda h: jax.lax.clamp(1.0, h, 2.0))
    assert _nonneg(fn, X6, TWO_RULES, params=p) == [False, True, True]


class _IntScale(nnx.Module):
    """A ReLU output times |int32(...)|: abs of a signed integer can wrap below zero."""

    def __init__(self, rngs):
        self.l0, self.l1 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        scale = jax.lax.stop_gradient(jnp.abs((x * 1e10).astype(jnp.int32)) * 1e-9)
        return self.l1(jax.nn.relu(self.l0(x)) * scale)


def test_signed_integer_arithmetic_proves_no_sign():
    model, comp = _IntScale(nnx.Rngs(0)), C.Uniform(R.ZPlus())
    assert _nonneg(model, X6, comp) == [False, False]
    assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp))


def _loop_model(mode):
    """relu(x) -> a loop or branch whose operands are all >= 0 but whose result is not ->
    a dense layer, and another one after a ReLU."""
    p = {"out": jax.random.normal(jax.random.key(0), (6, 3))}

    def fn(p, x):
        c = jax.nn.relu(x)
        if mode == "scan":
            c, _ = jax.lax.scan(lambda c, _: (c - 1.0, None), c, None, length=3)
        elif mode == "while":
            c = jax.lax.while_loop(lambda ic: ic[0] < 3, lambda ic: (ic[0] + 1, ic[1] - 1.0),
                                   (0, c))[1]
        else:
            c = jax.lax.cond(x[0, 0] > -100, lambda c: c - 1.0, lambda c: c, c)
        return c @ p["out"] + jax.nn.relu(c) @ p["out"]
    return fn, p


@pytest.mark.parametrize("mode", ["scan", "while", "cond"])
def test_loops_and_branches_prove_nothing(mode):
    """Loops and branches are unsupported operations (their plain gradient, with a warning);
    their result has no known sign, though their input was >= 0."""
    fn, p = _loop_model(mode)
    comp = C.Uniform(R.AlphaBeta(2.0, 1.0))
    assert _nonneg(fn, X6, comp, params=p) == [False, True]
    if mode != "cond":
        return  # JAX cannot reverse-differentiate a while loop; a scan: the test below
    with pytest.warns(UserWarning, match=f"control flow '{mode}'"):
        assert_fast_equals_general(lambda: lrpjax.relevance(
            fn, X6, params=p, composite=comp, on_unsupported="warn"))


class _LoopToo(nnx.Module):
    """A layer body JAX caches, called once outside (input >= 0) and again inside a scan on a
    carry that starts >= 0 and turns negative."""

    def __init__(self, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(_APPLY(self.b, jax.nn.relu(x)))
        h2, _ = jax.lax.scan(lambda c, _: (-_APPLY(self.b, c), None), h, None, length=2)
        return self.o(h2)


def test_a_cached_body_also_used_inside_a_loop():
    model, comp = _LoopToo(nnx.Rngs(0)), C.Uniform(R.AlphaBeta(2.0, 1.0))
    assert _linear(model, X6, comp) == [("b", True, False), ("o", False, False)]
    with pytest.warns(UserWarning, match="control flow 'scan'"):
        assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp,
                                                            on_unsupported="warn"))


# ================================================================ the fast forms are exact
PRESETS = {
    "EpsilonPlusFlat": C.EpsilonPlusFlat(),  # z+ on the second conv
    "DeepTaylor": C.DeepTaylor(0.0, 1.0),  # z+ on every layer behind the first
    "EpsilonAlpha2Beta1": C.EpsilonAlpha2Beta1(),
    "EpsilonGammaBox": C.EpsilonGammaBox(0.0, 1.0),  # gated gamma on the second conv
}  # a gamma on every layer: test_gated_gamma_matches_float64_reference


@pytest.mark.parametrize(("name", "pool"), [
    ("EpsilonPlusFlat", "avg"), ("EpsilonGammaBox", "avg"), ("DeepTaylor", "max"),
    ("EpsilonAlpha2Beta1", "max"),
])  # alpha2-beta1 with avg pooling: test_alpha2_beta1_fast_form_matches_float64_reference;
#     EpsilonGammaBox with max pooling: test_the_cnn_model_fast_forms_equal_general_forms
def test_fast_forms_equal_general_forms(name, pool):
    """With and without the facts the heatmaps agree (the dropped products are exact zeros)."""
    net, x = _cnn_net(pool, seed=1)
    model, comp = SpecNet(net), PRESETS[name]
    proven = set(_proven(lrpjax.describe(model, x, composite=comp)).values())
    assert proven - {""}, proven  # some layer uses a cheaper form
    if name == "EpsilonGammaBox":
        assert "input >= 0, gated" in proven
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


def test_the_cnn_model_fast_forms_equal_general_forms():
    """The same on lrpjax.lab.models.CNN (max pooling) with the gated Gamma of EpsilonGammaBox."""
    model = _cnn28()
    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    comp = C.EpsilonGammaBox(0.0, 1.0)
    assert _proven(lrpjax.describe(model, x, composite=comp))["conv2"] == "input >= 0, gated"
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


def test_alpha2_beta1_fast_form_matches_float64_reference():
    rng = np.random.default_rng(5)
    net, shape = random_net(rng, "cnn", bias=True, pool="avg")
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    x = rng.uniform(-1, 1, size=(3, *shape))
    ref = np_lrp(net, x, [("ab", 2.0, 1.0)] * n_linear, np.arange(3))
    comp = C.Uniform(R.AlphaBeta(2.0, 1.0))
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64)
        assert _nonneg(model, jnp.asarray(x), comp) == [False, True, True, True]
        R_ = lrpjax.relevance(model, jnp.asarray(x), composite=comp, target=jnp.arange(3))
    _close_to_reference(R_, ref)


@pytest.mark.parametrize("relu_fn", [False, True], ids=["relu_module", "bare_relu"])
def test_gated_gamma_matches_float64_reference(relu_fn):
    rng = np.random.default_rng(7)
    net, shape = random_net(rng, "cnn", bias=True, pool="max")
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    x = rng.uniform(-1, 1, size=(3, *shape))
    ref = np_lrp(net, x, [("gamma", 0.25)] * n_linear, np.arange(3))
    comp = C.Uniform(R.Gamma(0.25))
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64, relu_fn=relu_fn)
        assert _gated(model, jnp.asarray(x), comp) == [False, True, True, False]
        R_ = lrpjax.relevance(model, jnp.asarray(x), composite=comp, target=jnp.arange(3))
    _close_to_reference(R_, ref)


# ================================================================ gated
BARE = {  # activation after layer 0 (whose input is >= 0) -> is layer 0 gated
    "relu": (jax.nn.relu, True),
    "maximum_0": (lambda x: jnp.maximum(x, 0.0), True),
    "relu6": (jax.nn.relu6, True),
    "clamp_0_6": (lambda x: jax.lax.clamp(0.0, x, 6.0), True),
    "relu_max_pool": (lambda x: jnp.max(jax.nn.relu(x).reshape(-1, 3, 2), -1).repeat(2, -1),
                      True),
    "relu_flatten": (lambda x: jax.nn.relu(x).reshape(-1, 3, 2).reshape(-1, 6), True),
    "relu_tanh": (lambda x: jnp.tanh(jax.nn.relu(x)), True),  # tanh(0) = 0, relevance passes
    "relu_sigmoid": (lambda x: jax.nn.sigmoid(jax.nn.relu(x)), False),  # sigmoid(0) = 1/2
    "identity": (None, False),
    "tanh": (jnp.tanh, False),
    "sigmoid": (jax.nn.sigmoid, False),
    "leaky_relu": (jax.nn.leaky_relu, False),
    "abs": (jnp.abs, False),
    "maximum_minus_1": (lambda x: jnp.maximum(x, -1.0), False),
    "relu_minus_1": (lambda x: jax.nn.relu(x) - 1.0, False),  # 0 -> -1 gets relevance
    "relu_plus_x": (lambda x: jax.nn.relu(x) + x, False),
    "avg_pool": (lambda x: x.reshape(-1, 3, 2).mean(-1).repeat(2, -1), False),
}


@pytest.mark.parametrize("name", list(BARE))
def test_gate_behind_bare_activations(name):
    act, expected = BARE[name]
    model = Chain([act, jax.nn.relu], nnx.Rngs(0), relu_in=True)
    comp = C.Uniform(R.Gamma(0.25))
    (_, nonneg0, gated0), (_, nonneg1, gated1), (_, _, gated2) = _linear(model, X6, comp)
    assert nonneg0 and gated0 is expected
    assert gated1 is nonneg1 and not gated2  # layer 1 feeds a relu; layer 2 is the output
    if name in ("relu", "clamp_0_6", "relu_max_pool"):  # the gated form is exact
        assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp))


def test_clamp_with_negative_upper_bound_is_no_gate():
    """clamp(0, z, hi) with hi < 0 is hi everywhere, not 0 where z < 0: its outputs there are
    not zero and receive relevance, which passes to z < 0."""
    model = Chain([lambda h: jax.lax.clamp(0.0, h, -1.0), jax.nn.relu], nnx.Rngs(0),
                  relu_in=True)
    comp = C.Uniform(R.Gamma(0.25))
    assert _gated(model, X6, comp)[0] is False
    assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp))


def test_leaky_relu_would_break_a_forced_gate():
    """Counter-example: with leaky ReLU relevance does reach z < 0. Forcing the gate there
    changes the heatmap, so the equality checks above would catch a gate claimed wrongly."""
    model = Chain([jax.nn.leaky_relu, jax.nn.relu], nnx.Rngs(3), relu_in=True)
    comp = C.Uniform(R.Gamma(0.5))
    assert _gated(model, X6, comp)[0] is False
    truth = lrpjax.relevance(model, X6, composite=comp)
    assert _differs(_forced(model, X6, comp, 0, {"gated": True}), truth)


def test_gate_through_relu_modules_needs_input_scaled_consumers():
    """layers.ReLU passes relevance unchanged (Pass): the gate then rests on the next rule
    giving zero relevance to zero inputs (R_j = a_j (...)). Flat, w^2 and ZBox do not."""
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(layers.ReLU(), nnx.Linear(6, 6, rngs=rngs), layers.ReLU(),
                           nnx.Linear(6, 6, rngs=rngs), layers.ReLU(), layers.Flatten(),
                           nnx.Linear(6, 3, rngs=rngs))
    for rule, expected in [(R.Epsilon(), True), (R.ZPlus(), True), (R.AlphaBeta(2.0, 1.0), True),
                           (R.Gamma(0.5), True), (R.Flat(), False), (R.WSquare(), False),
                           (R.ZBox(-1.0, 1.0), False)]:
        comp = C.Composite(C.by_path({"layers/1": R.Gamma(0.25), "layers/3": rule}),
                           C.by_type({nnx.Linear: R.Epsilon()}))
        assert _linear(model, X6, comp) == [("layers/1", True, expected),
                                            ("layers/3", True, True),  # ReLU -> Flatten -> eps
                                            ("layers/6", True, False)], rule
    flat = C.Composite(C.by_path({"layers/1": R.Gamma(0.25), "layers/3": R.Flat()}),
                       C.by_type({nnx.Linear: R.Epsilon()}))
    truth = _general(lambda: lrpjax.relevance(model, X6, composite=flat))
    assert _differs(_forced(model, X6, flat, 0, {"gated": True}), truth)  # a gate is wrong
    assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=flat))


def test_no_gate_for_the_model_output_or_a_residual_add():
    rngs = nnx.Rngs(0)
    out_only = nnx.Sequential(layers.ReLU(), nnx.Linear(6, 6, rngs=rngs))
    assert _linear(out_only, X6) == [("layers/1", True, False)]
    relu_out = nnx.Sequential(layers.ReLU(), nnx.Linear(6, 6, rngs=rngs), layers.ReLU())
    assert _gated(relu_out, X6) == [False]  # relevance put on the output reaches its zeros
    comp, ones = C.Uniform(R.Gamma(0.25)), (lambda y: jnp.ones_like(y))
    truth = _general(lambda: lrpjax.relevance(relu_out, X6, composite=comp, target=ones))
    assert _differs(_forced(relu_out, X6, comp, 0, {"gated": True}, target=ones), truth)
    lin0, lin1 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 6, rngs=rngs)

    def residual(params, x):  # a plain function: the function route
        h = lin0(jax.nn.relu(x))
        return lin1(jax.nn.relu(h + x))  # h feeds an add: relevance can reach h < 0

    assert _gated(residual, X6, params={}) == [False, False]
    assert _differs(_forced(residual, X6, comp, 0, {"gated": True}, params={}),
                    _general(lambda: lrpjax.relevance(residual, X6, params={}, composite=comp)))


class _DeadReLU(nnx.Module):
    """A module that computes a ReLU and returns its input."""

    def __call__(self, x):
        jnp.maximum(x, 0.0)
        return x


def test_a_relu_whose_result_is_unused_is_no_gate():
    rngs = nnx.Rngs(3)
    model = nnx.Sequential(layers.ReLU(), nnx.Linear(6, 6, rngs=rngs), _DeadReLU(),
                           nnx.Linear(6, 4, rngs=rngs))
    assert _gated(model, X6) == [False, False]


def test_gated_gamma_with_zero_bias_uses_the_gate():
    """Gamma's zero_bias takes each output's branch from the real output z = Wa + b (Zennit's
    zero_params; only the denominators drop b), and the gate is proven for that z: R = 0 where
    z < 0. So zero_bias may take the one-transpose form, and it must equal the general form,
    also with positive biases, where Wa < 0 < z is common."""
    model = Chain([jax.nn.relu, jax.nn.relu], nnx.Rngs(6), relu_in=True)
    for layer in model.layers:
        layer.bias[...] = jnp.full_like(layer.bias[...], 0.5)
    x = jax.random.normal(jax.random.key(7), (16, 6))
    comp = C.Uniform(R.Gamma(0.25, zero_bias=True))
    assert _gated(model, x, comp) == [True, True, False]
    proven = list(_proven(lrpjax.describe(model, x, composite=comp)).values())
    assert proven == ["input >= 0, gated", "input >= 0, gated", "input >= 0"]
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp), rel=1e-6)


class _Cast(nnx.Module):
    """A Gamma layer whose output goes through a bfloat16 round trip, not a ReLU."""

    def __init__(self, rngs):
        self.l0, self.l1 = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 4, rngs=rngs)
        self.l0.bias[...] = jnp.full((8,), -0.3)

    def __call__(self, x):
        z = self.l0(jax.nn.relu(x)).astype(jnp.bfloat16).astype(jnp.float32)
        return self.l1(z)


def test_bfloat16_results_carry_relevance():
    model, x = _Cast(nnx.Rngs(3)), jax.random.normal(jax.random.key(1), (16, 8))
    comp = C.Uniform(R.Gamma(0.25))
    assert _linear(model, x, comp) == [("l0", True, False), ("l1", False, False)]
    R_ = lrpjax.relevance(model, x, composite=comp)
    assert float(jnp.max(jnp.abs(R_))) > 0
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


class _Reshapes(nnx.Module):
    def __init__(self, n, rngs):
        self.l0, self.l1 = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
        self.n = n

    def __call__(self, x):
        z = jax.nn.relu(self.l0(jax.nn.relu(x)))
        for _ in range(self.n):
            z = z.reshape(z.shape[0], 2, 4).reshape(z.shape[0], 8)
        return self.l1(z)


def test_a_very_long_chain_of_reshapes_proves_nothing_but_works():
    x, comp = jax.random.normal(jax.random.key(1), (4, 8)), C.Uniform(R.Gamma(0.25))
    assert _gated(_Reshapes(3, nnx.Rngs(0)), x, comp) == [True, False]
    model = _Reshapes(110, nnx.Rngs(0))  # 220 moves between the ReLU and the next layer
    assert _linear(model, x, comp) == [("l0", True, False), ("l1", True, False)]
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


# ================================================================ a layer called more than once
class Shared(nnx.Module):
    """One Linear applied twice, to f(h) and g(h) (h = a(x) has no known sign)."""

    def __init__(self, f, g, rngs: nnx.Rngs):
        self.a = nnx.Linear(4, 4, rngs=rngs)
        self.b = nnx.Linear(4, 3, rngs=rngs)
        self.f, self.g = f, g

    def __call__(self, x):
        h = self.a(x)
        return self.b(self.f(h)) + self.b(self.g(h))


def test_a_layer_called_twice_reports_the_facts_true_at_every_call():
    x = jnp.ones((2, 4))
    comp = C.Composite(C.by_type({"dense": R.ZPlus()}))
    relu, ident = jax.nn.relu, (lambda h: h)
    for f, g in ((relu, ident), (ident, relu)):  # proven at one call only, first or last
        model = Shared(f, g, nnx.Rngs(0))
        assert _proven(lrpjax.describe(model, x, composite=comp))["b"] == ""
        assert sorted(_nonneg(model, x, comp)[1:]) == [False, True]  # each call its own
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))
    both = Shared(relu, lambda h: relu(-h), nnx.Rngs(0))
    assert _proven(lrpjax.describe(both, x, composite=comp))["b"] == "input >= 0"


class _Twice(nnx.Module):
    """b (6 -> 6) on relu(x) and then on its own ReLU output; ``relu_after`` decides whether
    the second call's output also goes through a ReLU (then both calls are gated)."""

    def __init__(self, relu_after, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)
        self.relu_after = relu_after

    def __call__(self, x):
        h = self.b(jax.nn.relu(self.b(jax.nn.relu(x))))
        return self.o(jax.nn.relu(h) if self.relu_after else h)


def test_a_layer_called_twice_is_gated_only_if_every_call_is():
    comp = C.Uniform(R.Gamma(0.25))
    for relu_after, expected in ((True, "input >= 0, gated"), (False, "input >= 0")):
        model = _Twice(relu_after, nnx.Rngs(0))
        assert _gated(model, X6, comp) == [True, relu_after, False]
        assert _proven(lrpjax.describe(model, X6, composite=comp))["b"] == expected
    # each call gets its own facts: the second, not gated, takes the general form
    assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp))


_APPLY = jax.jit(lambda module, x: module(x))  # reused across traces: JAX caches its trace
_REMAT = jax.checkpoint(lambda module, x: module(x))


class _Tied(nnx.Module):
    """One Linear applied three times through a module-level wrapper (JAX traces its body once,
    one jaxpr for the three calls), first on the signed input, then on ReLUs."""

    def __init__(self, wrapper, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)
        self.wrapper = wrapper

    def __call__(self, x):
        h = x
        for _ in range(3):
            h = jax.nn.relu(self.wrapper(self.b, h))
        return self.o(h)


@pytest.mark.parametrize("wrapper", [_APPLY, _REMAT], ids=["jit", "checkpoint"])
def test_a_body_shared_by_several_calls_gets_the_facts_of_each_call(wrapper):
    model, comp = _Tied(wrapper, nnx.Rngs(0)), C.Uniform(R.Gamma(0.25))
    for _ in range(2):  # also a second analysis of the same model: no stale trace
        assert _linear(model, X6, comp) == [("b", False, False), ("b", True, True),
                                            ("b", True, True), ("o", True, False)]
    assert _proven(lrpjax.describe(model, X6, composite=comp)) == {"b": "", "o": "input >= 0"}
    assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp))


class _Gated(nnx.Module):  # l0's input >= 0 and its output feeds a ReLU: both facts proven
    def __init__(self, rngs):
        self.l0, self.l2 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(_APPLY(self.l0, jax.nn.relu(x))))


class _Ungated(_Gated):  # the same layer (path, rule, shapes), its output used linearly
    def __call__(self, x):
        return self.l2(_APPLY(self.l0, jax.nn.relu(x)))


def test_facts_of_a_cached_trace_never_reach_another_model():
    comp = C.Uniform(R.Gamma(0.25))
    gated, ungated = _Gated(nnx.Rngs(0)), _Ungated(nnx.Rngs(1))
    truth = _general(lambda: lrpjax.relevance(ungated, X6, composite=comp))
    lrpjax.relevance(gated, X6, composite=comp)  # traces _APPLY with the gate proven
    after = lrpjax.relevance(ungated, X6, composite=comp)  # no cache clearing: normal use
    np.testing.assert_allclose(after, truth, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(truth))))


# ================================================================ rules and the report
RECEIVED: dict[str, set] = {}


@dataclasses.dataclass(frozen=True)
class RecordingGamma(R.Gamma):
    """Gamma that records the facts relevance() hands it."""

    tag: str = ""

    def __call__(self, fwd, params, inputs, z, Rr, *, nonneg=(False,), gated=False):
        RECEIVED.setdefault(self.tag, set()).add((all(nonneg), bool(gated)))
        return super().__call__(fwd, params, inputs, z, Rr, nonneg=nonneg, gated=gated)


@dataclasses.dataclass(frozen=True)
class NonnegOnlyGamma(R.Gamma):
    """A user's subclass written before ``gated=`` existed: inherits the opt-in attribute but
    not the keyword."""

    def __call__(self, fwd, params, inputs, z, Rr, *, nonneg=(False,)):
        return super().__call__(fwd, params, inputs, z, Rr, nonneg=nonneg)


@dataclasses.dataclass(frozen=True)
class OldGamma(R.Gamma):
    """A user's subclass written before rules received facts: gets none."""

    def __call__(self, fwd, params, inputs, z, Rr):
        return super().__call__(fwd, params, inputs, z, Rr)


class Scaled(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.c1, self.c2, self.c3 = (nnx.Conv(c, 4, (3, 3), rngs=rngs) for c in (1, 4, 4))
        self.scale = nnx.Param(jnp.ones(4))  # >= 0 by value only: relevance() traces it
        self.dense = nnx.Linear(4 * 36, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.c1(x))  # input x: sign unknown
        h = jax.nn.relu(self.c2(h))  # input >= 0, output feeds a ReLU
        h = jax.nn.relu(self.c3(h * self.scale))  # input: times a parameter
        return self.dense(h.reshape(h.shape[0], -1))


def test_the_column_shows_what_the_rule_receives_and_uses():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    model = Scaled(nnx.Rngs(0))
    recording = {"c1": RecordingGamma(tag="c1"), "c2": RecordingGamma(tag="c2", zero_bias=True),
                 "c3": RecordingGamma(tag="c3")}
    comp = C.Composite(C.by_path(recording), C.by_type({"dense": R.Epsilon()}))
    RECEIVED.clear()
    lrpjax.relevance(model, x, composite=comp, target=0)
    assert RECEIVED == {"c1": {(False, False)}, "c2": {(True, True)}, "c3": {(False, False)}}
    # c2 receives both facts and uses both: zero_bias keeps the branches of the real z = Wa + b
    assert _proven(lrpjax.describe(model, x, composite=comp)) == {
        "c1": "", "c2": "input >= 0, gated", "c3": "", "dense": ""}


def test_a_user_subclass_with_the_older_signature_still_works():
    """Subclasses whose __call__ predates the keywords get only those they accept (and the
    general forms for the rest): same heatmap, and the report says what they used."""
    model = Chain([jax.nn.relu, jax.nn.relu], nnx.Rngs(2), relu_in=True)
    ours = lrpjax.relevance(model, X6, composite=C.Uniform(R.Gamma(0.25)))
    assert _proven(lrpjax.describe(model, X6, composite=C.Uniform(R.Gamma(0.25))))[
        "layers/0"] == "input >= 0, gated"
    for rule, used in ((NonnegOnlyGamma(0.25), "input >= 0"), (OldGamma(0.25), "")):
        comp = C.Uniform(rule)
        mine = lrpjax.relevance(model, X6, composite=comp)
        np.testing.assert_allclose(mine, ours, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(ours))))
        assert _proven(lrpjax.describe(model, X6, composite=comp))["layers/0"] == used


def test_nnx_linen_and_function_routes_report_the_same_facts():
    net, x = _cnn_net("avg")
    comp = C.EpsilonGammaBox(0.0, 1.0)  # ZBox, Gamma on the second conv, epsilon on the dense
    model = SpecNet(net)
    nnx_facts = list(_proven(lrpjax.describe(model, x, composite=comp)).values())
    assert nnx_facts == ["", "input >= 0, gated", "", ""]
    linen, variables = linen_model(net)
    linen_cov = lrpjax.describe(linen, x, composite=comp, variables=variables)
    assert list(_proven(linen_cov).values()) == nnx_facts
    graphdef, state = nnx.split(model)
    fn = lambda p, a: nnx.merge(graphdef, p)(a)
    fn_cov = lrpjax.describe(fn, x, composite=comp, params=state)
    assert list(_proven(fn_cov).values()) == nnx_facts
    # z+ uses the input signs but has no gated form; epsilon uses neither
    plus = lrpjax.describe(model, x, composite=C.Composite(C.by_type({"conv": R.ZPlus()})))
    assert list(_proven(plus).values())[:2] == ["", "input >= 0"]
    text = str(lrpjax.describe(model, x, composite=comp))
    assert "proven" in text.splitlines()[1] and "input >= 0, gated" in text
    calls = {"nnx": lambda: lrpjax.relevance(model, x, composite=comp),
             "linen": lambda: lrpjax.relevance(linen, x, composite=comp, variables=variables),
             "function": lambda: lrpjax.relevance(fn, x, composite=comp, params=state)}
    for name, call in calls.items():
        assert_fast_equals_general(call, name=name)


def test_nothing_proven_with_the_facts_disabled():
    net, x = _cnn_net("avg")
    model = SpecNet(net)
    comp = C.Composite(C.by_type({"conv": RecordingGamma(tag="off")}),
                       C.by_type({"dense": R.ZPlus()}))
    RECEIVED.clear()
    with facts.disabled():
        assert not facts.enabled()
        cov = lrpjax.describe(model, x, composite=comp)
        lrpjax.relevance(model, x, composite=comp)
    assert facts.enabled()
    assert set(_proven(cov).values()) == {""}
    assert "proven" not in str(cov)
    assert RECEIVED == {"off": {(False, False)}}  # the rules got no facts
    assert set(_proven(lrpjax.describe(model, x, composite=comp)).values()) > {""}  # and now do


# ================================================================ found in review
def test_linen_jit_inside_a_model_is_refused():
    """flax.linen.jit shares one trace between instances: the second block's layers would be
    hidden and take the first one's facts. lrpjax says so instead."""
    from flax import linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.Dense(6)(h)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            jitted = nn.jit(Block)
            h = nn.relu(jitted(name="b0")(x))
            return nn.Dense(3)(nn.relu(jitted(name="b1")(h)))

    model = Model()
    variables = model.init(jax.random.key(0), X6)
    with pytest.raises(ValueError, match="flax.linen.jit"):
        lrpjax.relevance(model, X6, composite=C.Uniform(R.Gamma()), variables=variables)


class _GradInside(nnx.Module):
    """The forward pass differentiates one of its own layers."""

    def __init__(self, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.b(jax.nn.relu(x)))
        g = jax.grad(lambda r: jax.nn.relu(self.b(r)).sum())(h)
        return self.o(h * g)


def test_a_model_that_differentiates_its_own_layers():
    model, comp = _GradInside(nnx.Rngs(0)), C.Uniform(R.Gamma(0.25))
    assert_fast_equals_general(lambda: lrpjax.relevance(model, X6, composite=comp,
                                                        on_unsupported="warn"))
