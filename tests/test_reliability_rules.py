"""Issue 16, items 1, 2 and 4: Gamma's zero_bias follows Zennit, no rule computes 0 * inf, and
rule and composite parameters are validated when they are built."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_lrp import gamma_four_terms

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R


def dense(params, a):
    return a @ params["kernel"] + params["bias"]


# ------------------------------------------------------------------ item 1: Gamma(zero_bias)
def test_gamma_zero_bias_takes_the_branch_of_the_real_output():
    """W = [[1, -1]], b = [-2], x = [[2, 1]]: z = W x + b = -1 < 0 picks the negative branch
    (Zennit), although W x = 1 > 0: s_n = z / (W x + gamma W- x) = -1 / 0.75."""
    p = {"kernel": jnp.array([[1.0], [-1.0]]), "bias": jnp.array([-2.0])}
    x = jnp.array([[2.0, 1.0]])
    z = dense(p, x)
    (got,) = R.Gamma(0.25, zero_bias=True)(dense, p, (x,), z, z)
    np.testing.assert_allclose(got, [[-8 / 3, 5 / 3]], rtol=1e-5)
    # the same numbers through the engine, the sign analysis on and off
    lin = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    lin.kernel[...], lin.bias[...] = p["kernel"], p["bias"]
    comp = C.Uniform(R.Gamma(0.25, zero_bias=True))
    np.testing.assert_allclose(lrpjax.relevance(lin, x, composite=comp, target=0),
                               [[-8 / 3, 5 / 3]], rtol=1e-5)


@pytest.mark.parametrize("nonneg", [False, True])
def test_gamma_zero_bias_all_forms_match_the_four_term_reference(nonneg):
    """The general form, the a >= 0 form and the gated one-transpose form (where R = 0 at
    z < 0, what lrpjax.facts proves for z = W a + b) all give Zennit's numbers."""
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(7, 5)), rng.normal(size=5)
    a = rng.normal(size=(4, 7))
    if nonneg:
        a = np.maximum(a, 0)
    z = a @ W + b
    R_out = rng.normal(size=z.shape)
    rule = R.Gamma(0.25, zero_bias=True)
    with jax.enable_x64(True):
        p = {"kernel": jnp.asarray(W), "bias": jnp.asarray(b)}
        args = (dense, p, (jnp.asarray(a),), jnp.asarray(z))
        (got,) = rule(*args, jnp.asarray(R_out), nonneg=(nonneg,))
        np.testing.assert_allclose(got, gamma_four_terms(W, a, b, R_out, 0.25, 1e-6, True),
                                   rtol=1e-10, atol=1e-12)
        if nonneg:  # gated: valid where no relevance arrives at z < 0
            gated_R = np.where(z > 0, R_out, 0.0)
            (fast,) = rule(*args, jnp.asarray(gated_R), nonneg=(True,), gated=True)
            np.testing.assert_allclose(
                fast, gamma_four_terms(W, a, b, gated_R, 0.25, 1e-6, True), rtol=1e-10,
                atol=1e-12)
            # ... and the gated form is really taken for zero_bias (it drops s_n)
            (dropped,) = rule(*args, jnp.asarray(R_out), nonneg=(True,), gated=True)
            assert not np.allclose(dropped, got)


# ------------------------------------------------------------------ item 2: no 0 * inf
@pytest.mark.parametrize("rule", [R.AlphaBeta(2.0, 1.0), R.ZPlus(), R.AlphaBeta(1.0, 0.0)])
def test_alpha_beta_skips_the_shares_of_empty_sums(rule):
    """Where W- a+ + W+ a- + b- = 0 every numerator of that share is 0: the share is 0, not
    R / eps (inf for R > 3.4e32 in float32, then 0 * inf = NaN)."""
    W, b = jnp.ones((4, 3)), jnp.zeros(3)
    for a in (jnp.full((2, 4), 1e32), -jnp.full((2, 4), 1e32)):
        p = {"kernel": W, "bias": b}
        z = dense(p, a)
        for nonneg in ((False,), (True,)) if float(a[0, 0]) > 0 else ((False,),):
            (got,) = rule(dense, p, (a,), z, z, nonneg=nonneg)
            assert np.all(np.isfinite(got)), (rule, a[0, 0], nonneg)


def test_alpha_beta_half_precision_linear_of_ones_is_finite():
    """The finding: an nnx.Linear of ones on float16 ones gave NaN for alpha-beta."""
    lin = nnx.Linear(4, 3, kernel_init=nnx.initializers.ones, rngs=nnx.Rngs(0),
                     param_dtype=jnp.float16)
    for comp in (C.AlphaBetaAll(2.0, 1.0), C.Alpha1Beta0(), C.Uniform(R.ZPlus())):
        Rx = lrpjax.relevance(lin, jnp.ones((2, 4), jnp.float16), composite=comp, target=0)
        assert Rx.dtype == jnp.float32 and np.all(np.isfinite(Rx))
    lin32 = nnx.Linear(4, 3, kernel_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
    Rx = lrpjax.relevance(lin32, jnp.full((1, 4), 1e32), composite=C.AlphaBetaAll(2.0, 1.0),
                          target=0)
    np.testing.assert_allclose(Rx, np.full((1, 4), 2e32), rtol=1e-5)


def test_epsilon_rms_is_scale_covariant():
    """The tutorial's epsilon * RMS(z): z^2 overflowed float32 for |z| > 1.8e19, the
    stabilizer became inf and the layer's relevance silently 0."""
    p = {"kernel": jnp.eye(3), "bias": jnp.zeros(3)}
    a = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    rule = R.Epsilon(0.1, rms=True)
    (base,) = rule(dense, p, (a,), a, a)
    (big,) = rule(dense, p, (a * 1e25,), a * 1e25, a * 1e25)
    assert np.all(np.asarray(base)[0] > 0.5)
    np.testing.assert_allclose(big, np.asarray(base) * 1e25, rtol=1e-6)


def test_zbox_bounds_must_fit_the_layer_dtype():
    p = {"kernel": jnp.ones((3, 2), jnp.float16), "bias": jnp.zeros(2, jnp.float16)}
    a = jnp.ones((1, 3), jnp.float16)
    z = dense(p, a)
    with pytest.raises(ValueError, match="low is not finite in the layer input's dtype float16"):
        R.ZBox(-1e30, 1e30)(dense, p, (a,), z, z)


# ------------------------------------------------------------------ item 4: parameters
@pytest.mark.parametrize("build,match", [
    (lambda: R.Epsilon(-1), "Epsilon: epsilon must be >= 0"),
    (lambda: R.Epsilon(float("nan")), "Epsilon: epsilon must be finite"),
    (lambda: R.Epsilon(1e-6, zero_bias=1), "Epsilon: zero_bias must be True or False"),
    (lambda: R.Gamma(float("nan")), "Gamma: gamma must be finite"),
    (lambda: R.Gamma(-0.5), "Gamma: gamma must be >= 0"),
    (lambda: R.ZPlus(epsilon=-1), "ZPlus: epsilon must be >= 0"),
    (lambda: R.AlphaBeta(float("nan"), 1.0), "AlphaBeta: alpha must be finite"),
    (lambda: R.ZBox(1, 0), "ZBox: low must be <= high, got low=1 > high=0"),
    (lambda: R.ZBox(float("nan"), 1), "ZBox: low must be finite"),
    (lambda: R.ZBox(0, float("inf")), "ZBox: high must be finite"),
    (lambda: R.ZBox(np.array([0.0, 2.0]), np.ones(2)), r"low=2 > high=1 at index \(1,\)"),
    (lambda: R.ZBox(np.zeros(3), np.ones(2)), "do not broadcast"),
    (lambda: R.ZBox("a", 1), "ZBox: low must be"),
    (lambda: R.Flat(epsilon=-1e-6), "Flat: epsilon must be >= 0"),
    (lambda: R.WSquare(epsilon=float("inf")), "WSquare: epsilon must be finite"),
    (lambda: R.Norm(epsilon=-1), "Norm: epsilon must be >= 0"),
    (lambda: C.DeepTaylor(1, 0), "DeepTaylor: ZBox: low must be <= high"),
    (lambda: C.LRPTutorial(1, -1), "LRPTutorial: ZBox: low must be <= high"),
    (lambda: C.LRPTutorial(gamma=float("nan")), "LRPTutorial: Gamma: gamma must be finite"),
    (lambda: C.EpsilonGammaBox(0, 1, epsilon=-1), "EpsilonGammaBox: Epsilon: epsilon must"),
    (lambda: C.EpsilonPlus(float("nan")), "EpsilonPlus: Epsilon: epsilon must be finite"),
])
def test_bad_parameters_raise_naming_the_parameter(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_zbox_array_bounds_are_copied_and_compare_by_value():
    low = np.zeros(4)
    box = R.ZBox(low, 1.0)
    low[0] = 5.0  # the caller's array changes: the rule's does not
    assert box.low[0] == 0.0 and not box.low.flags.writeable
    with pytest.raises(ValueError):
        box.low[0] = 1.0
    same = R.ZBox(np.zeros(4), 1.0)
    assert box == same and hash(box) == hash(same)
    assert box != R.ZBox(np.full(4, -1.0), 1.0) and box != R.ZBox(np.zeros(4), 2.0)
    assert R.ZBox(jnp.zeros(4), 1.0) == R.ZBox(np.zeros(4, np.float32), 1.0)  # a JAX array
    assert R.ZBox(0, 1) == R.ZBox(0.0, 1.0) and isinstance(R.ZBox(0, 1).low, float)


def test_mutating_a_zbox_bound_in_place_never_returns_a_stale_heatmap():
    """The finding: a numpy bound mutated in place kept the cached heatmap of the old bound.
    Now the rule holds its own copy: the heatmap follows the rule, and a new rule built
    from the new values gets its own compiled function."""
    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.full((2, 3), 0.5)
    low = np.zeros(3)
    comp = C.Composite(C.first(R.ZBox(low, np.ones(3))))
    before = lrpjax.relevance(lin, x, composite=comp, target=0)
    low[:] = -1.0
    np.testing.assert_array_equal(lrpjax.relevance(lin, x, composite=comp, target=0), before)
    cached = lrpjax.explain._relevance._cache_size()
    again = C.Composite(C.first(R.ZBox(np.zeros(3), np.ones(3))))  # equal bounds: one program
    np.testing.assert_array_equal(lrpjax.relevance(lin, x, composite=again, target=0), before)
    assert lrpjax.explain._relevance._cache_size() == cached
    moved = lrpjax.relevance(lin, x, composite=C.Composite(C.first(R.ZBox(low, np.ones(3)))),
                             target=0)
    ref = lrpjax.relevance(lin, x, composite=C.Composite(C.first(R.ZBox(-1.0, 1.0))), target=0)
    np.testing.assert_allclose(moved, ref, rtol=1e-6)
    assert not np.allclose(moved, before)


def test_matchers_must_return_rules():
    lin = nnx.Linear(4, 5, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 4))

    def picks_an_int(info):
        return 3

    with pytest.raises(TypeError, match=r"matcher .*picks_an_int of Composite, for layer "
                                        r"'[^']+' \(kind dense\): got 3 \(a int\), not a rule"):
        lrpjax.relevance(lin, x, composite=C.Composite(picks_an_int))
    with pytest.raises(TypeError, match="the class Epsilon, not a rule: pass an instance"):
        C.by_type({"dense": R.Epsilon})
    with pytest.raises(TypeError, match="by_path, the rule for 'a/\\*'"):
        C.by_path({"a/*": 0.5})
    with pytest.raises(TypeError, match="first\\(\\): got 'eps'"):
        C.first("eps")
    with pytest.raises(TypeError, match="matcher 1 is 3"):
        C.Composite(C.by_type({"dense": R.Epsilon()}), 3)
    assert C.by_type({"dense": None, "conv": R.ZPlus()})  # None still means "no rule here"


def test_presets_build_their_rules_at_once():
    tut = C.LRPTutorial(low=-1.0, high=1.0, gamma=0.1, epsilon=0.1)
    assert tut.rule_for(C.LayerInfo("l", "dense", object, 0, 4))[0] == R.ZBox(-1.0, 1.0)
