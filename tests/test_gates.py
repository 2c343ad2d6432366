"""The output-gate analysis (lrpjax.gates.output_gates) and Gamma's one-transpose form it enables.

A layer is "gated" when the relevance reaching it is provably zero wherever its output z < 0;
Gamma then drops its s_n half. The analysis may only say so where it is true: every test that
finds a gate also checks the heatmap against the general form or the float64 reference, and the
counter-examples show what an unsound gate would change.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import SpecNet, assert_fast_equals_general, random_net

import lrpjax
from lrpjax import composites as C
from lrpjax import core, layers, signs
from lrpjax import rules as R
from lrpjax.models import CNN


class Chain(nnx.Module):
    """Linear -> act -> Linear -> relu -> Linear, activations as bare functions."""

    def __init__(self, act, rngs):
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs) for _ in range(3)])
        self.act = act

    def __call__(self, x):
        x = self.layers[0](x)
        x = x if self.act is None else self.act(x)
        return self.layers[2](jax.nn.relu(self.layers[1](x)))


BARE = {  # activation after layer 0 -> is layer 0 gated (relevance 0 where z < 0)
    "relu": (jax.nn.relu, True),
    "relu_minus_1": (lambda x: jax.nn.relu(x) - 1.0, True),  # relu's own VJP is [x > 0] g
    "maximum_0": (lambda x: jnp.maximum(x, 0.0), True),
    "relu_max_pool": (lambda x: jnp.max(jax.nn.relu(x).reshape(-1, 3, 2), -1).repeat(2, -1),
                      True),
    "max_pool_then_relu": (lambda x: jax.nn.relu(jnp.max(x.reshape(-1, 3, 2), -1)).repeat(2, -1),
                           True),
    "identity": (None, False),
    "tanh": (jnp.tanh, False),
    "sigmoid": (jax.nn.sigmoid, False),
    "leaky_relu": (jax.nn.leaky_relu, False),
    "abs": (jnp.abs, False),
    "maximum_minus_1": (lambda x: jnp.maximum(x, -1.0), False),
    "relu_plus_x": (lambda x: jax.nn.relu(x) + x, False),
    "avg_pool": (lambda x: x.reshape(-1, 3, 2).mean(-1).repeat(2, -1), False),
}


def _gates(fn, x):
    return signs.nonneg_layer_inputs(fn, x).gated


@pytest.mark.parametrize("name", list(BARE))
def test_gate_behind_bare_activations(name):
    act, expected = BARE[name]
    model = Chain(act, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 6))
    fn, _ = lrpjax.nnx.lrp_function(model, C.Uniform(R.Gamma(0.25)), x)
    gated = _gates(fn, x)
    assert gated[0] is expected
    assert gated[1] is True and gated[2] is False  # layer 1 feeds a relu; layer 2 is the output


def _seq(*mods):
    return nnx.Sequential(*mods)


def test_gate_through_pass_activation_needs_input_scaled_consumers():
    """layers.ReLU passes relevance unchanged (Pass): the gate then rests on the next rule
    giving zero relevance to zero inputs (R_j = a_j (...)). Flat and ZBox do not."""
    rngs = nnx.Rngs(0)
    model = _seq(nnx.Linear(6, 6, rngs=rngs), layers.ReLU(), nnx.Linear(6, 6, rngs=rngs),
                 layers.ReLU(), layers.Flatten(), nnx.Linear(6, 3, rngs=rngs))
    x = jax.random.normal(jax.random.key(1), (4, 6))
    for rule, expected in [(R.Epsilon(), True), (R.ZPlus(), True), (R.AlphaBeta(2.0, 1.0), True),
                           (R.Gamma(0.5), True), (R.Flat(), False), (R.WSquare(), False),
                           (R.ZBox(-1.0, 1.0), False)]:
        comp = C.Composite(C.by_path({"layers/0": R.Gamma(0.25), "layers/2": rule}),
                           C.by_type({nnx.Linear: R.Epsilon()}))
        fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
        gated = _gates(fn, x)
        assert gated[0] is expected, rule
        assert gated[2] is True  # ReLU -> Flatten (Pass, a reshape) -> epsilon
        assert gated[5] is False  # the output layer


def test_no_gate_for_the_model_output_or_a_residual_add():
    rngs = nnx.Rngs(0)
    lin0, lin1 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 6, rngs=rngs)

    def residual(x):
        h = lin0(x)
        return lin1(jax.nn.relu(h + x))  # h feeds an add: relevance can reach h < 0

    x = jax.random.normal(jax.random.key(1), (4, 6))
    fn, _ = lrpjax.nnx.lrp_function(nnx.Sequential(lin0), C.Uniform(R.Gamma()), x)
    assert _gates(fn, x) == [False]
    comp = C.Uniform(R.Gamma())
    f = lambda params, x: residual(x)  # the jaxpr front-end on a plain function
    g, _ = lrpjax.jaxpr.lrp_function(f, {}, comp, x)
    assert _gates(g, x)[0] is False


# ---------------------------------------------------------------- the gated form is exact
@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("composite", ["EpsilonGammaBox", "Gamma"])
def test_gated_gamma_equals_general_form(composite, pool):
    model = CNN(pool=pool, rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
    comp = C.EpsilonGammaBox(0.0, 1.0) if composite != "Gamma" else C.Uniform(R.Gamma(0.25))
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    state = signs.nonneg_layer_inputs(fn, x)
    assert sum(g and f[0] for g, f in zip(state.gated, state.flags, strict=True)) >= 2
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


@pytest.mark.parametrize("relu_fn", [False, True])
def test_gated_gamma_matches_float64_reference(relu_fn):
    from reference_lrp import lrp as np_lrp

    rng = np.random.default_rng(7)
    net, shape = random_net(rng, "cnn", bias=True, pool="max")
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    x = rng.uniform(-1, 1, size=(3, *shape))
    specs = [("gamma", 0.25)] * n_linear
    ref = np_lrp(net, x, specs, np.arange(3))
    comp = C.Uniform(R.Gamma(0.25))
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64, relu_fn=relu_fn)
        fn, _ = lrpjax.nnx.lrp_function(model, comp, jnp.asarray(x))
        state = signs.nonneg_layer_inputs(fn, jnp.asarray(x))
        R_ = lrpjax.relevance(model, jnp.asarray(x), composite=comp, target=jnp.arange(3))
    linear = [k for k, f in enumerate(state.flags) if len(state.shapes[k]) == 1]
    assert sum(state.gated) >= 2 and len(linear) >= n_linear
    assert float(np.max(np.abs(np.asarray(R_) - ref)) / np.max(np.abs(ref))) <= 1e-10


def test_an_unsound_gate_would_change_the_heatmap():
    """Counter-example: with leaky ReLU relevance does reach z < 0. Forcing the gate there
    changes the result, so the equality tests above would catch a gate claimed wrongly."""
    model = Chain(jax.nn.leaky_relu, nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(4), (8, 6))
    comp = C.Uniform(R.Gamma(0.5))
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    honest = signs.nonneg_layer_inputs(fn, x)
    assert honest.gated[0] is False
    truth = lrpjax.relevance(model, x, composite=comp)

    forced = core.SignState(flags=[(True,)] * len(honest.flags), shapes=honest.shapes,
                            gated=[True] * len(honest.gated))
    token = core._SIGNS.set(forced)
    try:
        y, pull = jax.vjp(fn, x)
        (wrong,) = pull(jax.nn.one_hot(jnp.argmax(y, -1), 6) * y)
    finally:
        core._SIGNS.reset(token)
    assert float(jnp.max(jnp.abs(wrong - truth))) > 1e-3 * float(jnp.max(jnp.abs(truth)))


def test_every_front_end_finds_the_conv_gates():
    """NNX (Pass-wrapped ReLU modules), Linen (bare nn.relu) and the jaxpr front-end (ReLU as
    max(x, 0) wrapped as a Pass layer) all prove both convolutions of the CNN gated, and give
    the heatmap of the general form."""
    from lrpjax import jaxpr as jaxpr_frontend
    from lrpjax import linen as linen_frontend
    from lrpjax.models import CNNLinen, to_linen_variables

    model = CNN(pool="avg", rngs=nnx.Rngs(0))
    linen, variables = CNNLinen(pool="avg"), to_linen_variables(model)
    x = jax.random.uniform(jax.random.key(5), (2, 28, 28, 1))
    comp = C.EpsilonGammaBox(0.0, 1.0)
    fns = {
        "nnx": lrpjax.nnx.lrp_function(model, comp, x)[0],
        "linen": linen_frontend.lrp_function(linen, variables, comp, x)[0],
        "jaxpr": jaxpr_frontend.lrp_function(lambda p, a: linen.apply(p, a), variables, comp,
                                             x)[0],
    }
    for name, fn in fns.items():
        state = signs.nonneg_layer_inputs(fn, x)
        for conv_input in ((28, 28, 1), (14, 14, 16)):  # a gated layer takes each conv's input
            calls = [k for k, shapes in enumerate(state.shapes) if shapes[0][0][1:] == conv_input]
            assert any(state.gated[k] for k in calls), (name, conv_input)
    calls = {"nnx": lambda: lrpjax.relevance(model, x, composite=comp),
             "linen": lambda: lrpjax.relevance(linen, x, composite=comp, variables=variables),
             "jaxpr": lambda: lrpjax.relevance(lambda p, a: linen.apply(p, a), x, composite=comp,
                                               variables=variables)}
    for name, call in calls.items():
        assert_fast_equals_general(call, name=name)


def test_gated_gamma_with_zero_bias_keeps_both_signs():
    """The gate is proven for the layer's real output z = Wa + b; with zero_bias the masks use
    Wa, which can be < 0 where z > 0 and relevance arrives. So zero_bias must not take the
    one-transpose form (positive biases make this case common)."""
    model = Chain(jax.nn.relu, nnx.Rngs(6))
    for layer in model.layers:
        layer.bias[...] = jnp.full_like(layer.bias[...], 0.5)
    x = jax.random.normal(jax.random.key(7), (16, 6))
    comp = C.Uniform(R.Gamma(0.25, zero_bias=True))
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp), rel=1e-6)


# ---------------------------------------------------------------- found in review
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
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    assert _gates(fn, x)[0] is False
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


class _DeadReLU(nnx.Module):
    """An activation layer that computes a ReLU and returns its input: Pass-wrapped, no gate."""

    def __call__(self, x):
        jnp.maximum(x, 0.0)
        return x


def test_a_pass_layer_gates_only_through_what_it_returns():
    rngs = nnx.Rngs(3)
    model = _seq(nnx.Linear(8, 8, rngs=rngs), _DeadReLU(), nnx.Linear(8, 4, rngs=rngs))
    x = jax.random.normal(jax.random.key(1), (16, 8))
    comp = C.Composite(C.by_type({nnx.Linear: R.Gamma(0.25), _DeadReLU: R.Pass()}))
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    assert _gates(fn, x)[0] is False


_APPLY = jax.jit(lambda module, x: module(x))  # reused across traces: JAX caches its trace
_REMAT = jax.checkpoint(lambda module, x: module(x))


class _Wrapped(nnx.Module):
    def __init__(self, wrapper, rngs):
        self.l0, self.l1 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 6, rngs=rngs)
        self.l2 = nnx.Linear(6, 3, rngs=rngs)
        self.wrapper = wrapper

    def __call__(self, x):
        h = jax.nn.relu(self.l0(x))
        return self.l2(jax.nn.relu(self.wrapper(self.l1, h)))


@pytest.mark.parametrize("wrapper", [_APPLY, _REMAT], ids=["jit", "checkpoint"])
def test_the_analysis_trace_never_reaches_jax_caches(wrapper):
    """The analysis replaces every LRP layer by a plain marked call; a module-level jitted or
    checkpointed wrapper must not cache that trace for the real one (it did: the layer inside
    fell back to the plain gradient and the next layer took its facts)."""
    model = _Wrapped(wrapper, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 6))
    comp = C.Uniform(R.Gamma(0.25))
    for _ in range(2):  # also a second analysis of the same model: no stale markers
        fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
        assert _gates(fn, x) == [True, True, False]
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))
    eps = lrpjax.relevance(model, x, composite=C.Uniform(R.Epsilon(0.0)))
    np.testing.assert_allclose(eps, lrpjax.gradient_x_input(model, x), rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(eps))))  # LRP-0, sanity


def test_traces_that_differ_from_the_analysis_fall_back_to_the_general_forms():
    """signs.vjp: if the real trace makes other layer calls than the analysed one (here a
    Python-side counter adds a layer to the first trace only), it traces again without facts."""
    params = {"kernel": jax.random.normal(jax.random.key(0), (4, 4)), "bias": -0.1 * jnp.ones(4)}
    traces = []

    def fn(x):
        traces.append(1)
        h = x
        if len(traces) == 1:
            h = core.apply_rule(_dense, R.Gamma(0.5), params, jax.nn.relu(h))
        return core.apply_rule(_dense, R.Gamma(0.5), params, h)

    x = jax.random.normal(jax.random.key(1), (5, 4))
    y, pull = signs.vjp(fn, x)
    assert len(traces) == 3  # analysis, mismatched trace, trace without the analysis
    (R_,) = pull(y)
    with signs.disabled():
        y0, pull0 = jax.vjp(fn, x)
    np.testing.assert_allclose(R_, pull0(y0)[0], rtol=1e-6, atol=1e-7)


def _dense(params, a):
    return a @ params["kernel"] + params["bias"]


def test_a_very_long_chain_of_reshapes_proves_nothing_but_works():
    class Deep(nnx.Module):
        def __init__(self, rngs):
            self.l0, self.l1 = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            z = self.l0(jax.nn.relu(x))
            for _ in range(600):
                z = z.reshape(z.shape[0], 2, 4).reshape(z.shape[0], 8)
            return self.l1(jax.nn.relu(z))

    model, x = Deep(nnx.Rngs(0)), jax.random.normal(jax.random.key(1), (4, 8))
    comp = C.Uniform(R.Gamma(0.25))
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


# ---------------------------------------------------------------- found in the second review
class _Tied(nnx.Module):
    """One Linear applied three times through a module-level wrapper (JAX traces its body once:
    one LRP layer call serves all three sites), first on the signed input, then on ReLUs."""

    def __init__(self, wrapper, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)
        self.wrapper = wrapper

    def __call__(self, x):
        h = x
        for _ in range(3):
            h = jax.nn.relu(self.wrapper(self.b, h))
        return self.o(h)


@pytest.mark.parametrize("wrapper", [_APPLY, _REMAT], ids=["jit", "checkpoint"])
@pytest.mark.parametrize("rule", [R.Gamma(0.25), R.ZPlus()], ids=["gamma", "zplus"])
def test_a_body_shared_by_several_call_sites_gets_only_facts_true_at_all(wrapper, rule):
    model = _Tied(wrapper, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 6))
    comp = C.Uniform(rule)
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    state = signs.nonneg_layer_inputs(fn, x)
    assert state.flags[0] == (False,)  # the first site's input is signed
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


class _Gated(nnx.Module):  # l0's input >= 0 and its output feeds a ReLU: both facts proven
    def __init__(self, rngs):
        self.l0, self.l2 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(_APPLY(self.l0, jax.nn.relu(x))))


class _Ungated(_Gated):  # the same layer (path, rule, shapes), its output used linearly
    def __call__(self, x):
        return self.l2(_APPLY(self.l0, jax.nn.relu(x)))


def test_facts_baked_into_a_cached_trace_never_reach_another_model():
    x = jax.random.normal(jax.random.key(1), (8, 6))
    comp = C.Uniform(R.Gamma(0.25))
    gated, ungated = _Gated(nnx.Rngs(0)), _Ungated(nnx.Rngs(1))
    jax.clear_caches()
    with signs.disabled():
        truth = lrpjax.relevance(ungated, x, composite=comp)
    jax.clear_caches()
    lrpjax.relevance(gated, x, composite=comp)  # traces _APPLY with the gate proven
    after = lrpjax.relevance(ungated, x, composite=comp)  # no cache clearing: normal use
    np.testing.assert_allclose(after, truth, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(truth))))


def test_a_user_subclass_with_the_older_signature_still_works():
    """A Gamma subclass whose __call__ predates ``gated=`` inherits the opt-in attribute but not
    the keyword: it gets the keywords it accepts only (and the general two-transpose form)."""

    @dataclasses.dataclass(frozen=True)
    class MyGamma(R.Gamma):
        def __call__(self, fwd, params, inputs, z, R_, *, nonneg=(False,)):
            return super().__call__(fwd, params, inputs, z, R_, nonneg=nonneg)

    model = CNN(pool="max", rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    mine = lrpjax.relevance(model, x, composite=C.Uniform(MyGamma(0.25)))
    ours = lrpjax.relevance(model, x, composite=C.Uniform(R.Gamma(0.25)))
    np.testing.assert_allclose(mine, ours, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(ours))))


def test_linen_jit_inside_a_model_is_refused():
    """flax.linen.jit shares one trace between instances: the second block's layers never reach
    the interceptor, so the heatmap would be silently wrong. lrpjax says so instead."""
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

    x = jax.random.normal(jax.random.key(1), (4, 6))
    model = Model()
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="flax.linen.jit"):
        lrpjax.relevance(model, x, composite=C.Uniform(R.Gamma()), variables=variables)


# ---------------------------------------------------------------- found in the third review
class _LoopToo(nnx.Module):
    """A layer body JAX caches, used once outside (input >= 0, output gated) and once inside a
    scan or cond on a signed input: the loop's call site must take the general forms too."""

    def __init__(self, wrapper, mode, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)
        self.wrapper, self.mode = wrapper, mode

    def __call__(self, x):
        h = jax.nn.relu(self.wrapper(self.b, jax.nn.relu(x)))
        if self.mode == "scan":
            h2, _ = jax.lax.scan(lambda c, _: (self.wrapper(self.b, c), None), h - 0.5, None,
                                 length=2)
        else:
            h2 = jax.lax.cond(x[0, 0] > -100, lambda c: self.wrapper(self.b, c), lambda c: c,
                              h - 0.5)
        return self.o(h2)


@pytest.mark.parametrize("mode", ["scan", "cond"])
@pytest.mark.parametrize("rule", [R.Gamma(0.25), R.AlphaBeta(2.0, 1.0)], ids=["gamma", "a2b1"])
def test_a_cached_body_also_used_inside_a_loop_or_branch_proves_nothing(mode, rule):
    model = _LoopToo(_APPLY, mode, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 6))
    comp = C.Uniform(rule)
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    state = signs.nonneg_layer_inputs(fn, x)
    assert state.flags[0] == (False,) and state.gated[0] is False
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


class _IntScale(nnx.Module):
    """A ReLU output times |int32(...)|: abs of a signed integer can wrap below zero."""

    def __init__(self, rngs):
        self.l0, self.l1 = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        scale = jax.lax.stop_gradient(jnp.abs((x * 1e10).astype(jnp.int32)) * 1e-9)
        return self.l1(jax.nn.relu(self.l0(x)) * scale)


def test_signed_integer_arithmetic_proves_no_sign():
    model, x = _IntScale(nnx.Rngs(0)), jax.random.normal(jax.random.key(1), (8, 6))
    comp = C.Uniform(R.ZPlus())
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    assert signs.nonneg_layer_inputs(fn, x).flags[1] == (False,)
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))


class _GradInside(nnx.Module):
    """The forward pass differentiates one of its own layers (JAX splits the marked call)."""

    def __init__(self, rngs):
        self.b, self.o = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.b(jax.nn.relu(x)))
        g = jax.grad(lambda r: jax.nn.relu(self.b(r)).sum())(h)
        return self.o(h * g)


def test_a_model_that_differentiates_its_own_layers_does_not_crash_the_analysis():
    model, x = _GradInside(nnx.Rngs(0)), jax.random.normal(jax.random.key(1), (8, 6))
    comp = C.Uniform(R.Gamma(0.25))
    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp))
