"""The static sign analysis (lrpjax.signs) and the z+/alpha-beta forms it enables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import SpecNet, assert_fast_equals_general, random_net

import lrpjax
from lrpjax import composites as C
from lrpjax import core, signs
from lrpjax import rules as R
from lrpjax.models import CNN


def _dense(params, a):
    return a @ params["kernel"] + params["bias"]


class Chain(nnx.Module):
    """Linear layers separated by the given activation functions (None: nothing)."""

    def __init__(self, acts, rngs):
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs) for _ in range(len(acts) + 1)])
        self.acts = acts

    def __call__(self, x):
        for layer, act in zip(self.layers, self.acts, strict=False):
            x = layer(x)
            x = x if act is None else act(x)
        return self.layers[-1](x)


ACTS = {  # activation -> is its output provably >= 0
    "relu": (jax.nn.relu, True),
    "sigmoid": (jax.nn.sigmoid, True),
    "softmax": (jax.nn.softmax, True),
    "abs_then_avg": (lambda x: jnp.abs(x).reshape(-1, 3, 2).mean(-1).repeat(2, -1), True),
    "relu_max_pool": (lambda x: jnp.max(jax.nn.relu(x).reshape(-1, 3, 2), -1).repeat(2, -1), True),
    "tanh": (jnp.tanh, False),
    "identity": (None, False),
    "relu_minus_1": (lambda x: jax.nn.relu(x) - 1.0, False),
    "relu_times_neg": (lambda x: -2.0 * jax.nn.relu(x), False),
    "leaky_relu": (jax.nn.leaky_relu, False),
    "clip_0_6": (lambda x: jnp.clip(x, 0.0, 6.0), True),
    "relu_squared_minus": (lambda x: jax.nn.relu(x) ** 2 - jax.nn.relu(x), False),
}


@pytest.mark.parametrize("name", list(ACTS))
def test_layer_input_signs(name):
    act, expected = ACTS[name]
    model = Chain([act, jax.nn.relu], nnx.Rngs(0))
    x = jnp.ones((2, 6))
    fn, _ = lrpjax.nnx.lrp_function(model, C.Uniform(R.ZPlus()), x)
    state = signs.nonneg_layer_inputs(fn, x)
    assert state.flags == [(False,), (expected,), (True,)]


def test_layers_inside_loops_stay_unknown():
    """A scan carry that starts >= 0 may turn negative: layers in loop bodies are never trusted."""
    params = {"kernel": -jnp.eye(3), "bias": jnp.zeros(3)}

    def fn(x):
        def body(c, _):
            return core.apply_rule(_dense, R.ZPlus(), params, c), None
        c, _ = jax.lax.scan(body, jax.nn.relu(x), None, length=3)
        return core.apply_rule(_dense, R.ZPlus(), params, jax.nn.relu(c))

    state = signs.nonneg_layer_inputs(fn, jnp.ones((1, 3)))
    assert state.flags == [(False,), (True,)]


def test_mismatched_trace_trusts_nothing():
    state = core.SignState(flags=[(True,), (True,)], shapes=[(((2, 3), jnp.float32),)] * 2,
                           gated=[True, True])
    token = core._SIGNS.set(state)
    try:
        assert core._next_signs((jnp.zeros((2, 4)),)) == ((False,), False)  # shape differs
        assert core._next_signs((jnp.zeros((2, 3)),)) == ((False,), False)  # and nothing after
    finally:
        core._SIGNS.reset(token)


@pytest.mark.parametrize("composite", ["EpsilonPlusFlat", "EpsilonAlpha2Beta1", "DeepTaylor"])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_fast_forms_equal_general_forms(composite, pool):
    """With and without the analysis the heatmaps agree (the dropped products are exact zeros)."""
    model = CNN(pool=pool, rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
    comp = getattr(C, composite)() if composite != "DeepTaylor" else C.DeepTaylor(0.0, 1.0)
    fn, _ = lrpjax.nnx.lrp_function(model, comp, x)
    assert any(f[0] for f in signs.nonneg_layer_inputs(fn, x).flags)

    assert_fast_equals_general(lambda: lrpjax.relevance(model, x, composite=comp), rel=1e-6)


def test_fast_form_matches_float64_reference():
    """alpha2-beta1 with proven signs against the NumPy float64 reference (tests/reference_lrp)."""
    from reference_lrp import lrp as np_lrp

    rng = np.random.default_rng(5)
    net, shape = random_net(rng, "cnn", bias=True, pool="avg")
    n_linear = sum(layer[0] in ("dense", "conv") for layer in net)
    x = rng.uniform(-1, 1, size=(3, *shape))
    ref = np_lrp(net, x, [("ab", 2.0, 1.0)] * n_linear, np.arange(3))
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64)
        fn, _ = lrpjax.nnx.lrp_function(model, C.Uniform(R.AlphaBeta(2.0, 1.0)), jnp.asarray(x))
        flags = signs.nonneg_layer_inputs(fn, jnp.asarray(x)).flags
        R_ = lrpjax.relevance(model, jnp.asarray(x), composite=C.Uniform(R.AlphaBeta(2.0, 1.0)),
                              target=jnp.arange(3))
    assert flags[0] == (False,) and sum(f[0] for f in flags) >= 2
    assert float(np.max(np.abs(np.asarray(R_) - ref)) / np.max(np.abs(ref))) <= 1e-10
