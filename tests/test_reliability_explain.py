"""Issue 16, items 2-4 at the API: half precision is computed in float32, overflow raises on
concrete inputs, invalid rows under jax.jit are NaN (and raise in the checked mode),
explain_dataset validates batches, empty batches and inputs outside a z^B box raise."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify
from lrp_nets import SpecNet, random_net

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax import sharded


def _linear(kernel, bias=None, param_dtype=jnp.float32):
    lin = nnx.Linear(kernel.shape[0], kernel.shape[1], rngs=nnx.Rngs(0), param_dtype=param_dtype)
    lin.kernel[...] = jnp.asarray(kernel, param_dtype)
    lin.bias[...] = jnp.zeros(kernel.shape[1], param_dtype) if bias is None else bias
    return lin


@pytest.fixture(scope="module")
def cnn():
    net, shape = random_net(np.random.default_rng(0), "cnn")
    x = np.random.default_rng(1).uniform(0, 1, size=(4, *shape)).astype(np.float32)
    return SpecNet(net), jnp.asarray(x)


# ------------------------------------------------------------------ item 2: half precision
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_inputs_are_explained_in_float32(dtype, cnn):
    model, x = cnn
    xh = x.astype(dtype)
    ref = lrpjax.relevance(model, xh.astype(jnp.float32), composite=C.EpsilonPlus())
    got = lrpjax.relevance(model, xh, composite=C.EpsilonPlus())
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, ref)
    for fn in (lrpjax.gradient, lrpjax.sensitivity, lrpjax.gradient_x_input):
        assert fn(model, xh).dtype == jnp.float32


def test_relevance_above_the_float16_range_stays_finite():
    """The finding: float16 inputs on a float32 model gave an x-typed heatmap, inf above 65504."""
    lin = _linear(np.ones((4, 3)))
    x = jnp.full((1, 4), 60000.0, jnp.float16)
    Rx = lrpjax.relevance(lin, x, composite=C.Uniform(R.Epsilon(0.0)), target=0)
    assert Rx.dtype == jnp.float32
    np.testing.assert_allclose(Rx, np.full((1, 4), 60000.0), rtol=1e-6)


def test_half_models_are_explained_in_float32():
    rng = np.random.default_rng(2)
    k = rng.normal(size=(6, 3)) * 300
    x = rng.uniform(0, 100, size=(2, 6))
    half = _linear(k, param_dtype=jnp.float16)
    full = _linear(np.asarray(jnp.asarray(k, jnp.float16), np.float32))
    for comp in (C.Uniform(R.Epsilon()), C.Uniform(R.Gamma()), C.AlphaBetaAll(2.0, 1.0)):
        got = lrpjax.relevance(half, jnp.asarray(x, jnp.float16), composite=comp, target=1)
        assert got.dtype == jnp.float32 and np.all(np.isfinite(got))
        ref = lrpjax.relevance(full, jnp.asarray(jnp.asarray(x, jnp.float16), jnp.float32),
                               composite=comp, target=1)
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_sensitivity_of_half_inputs_does_not_overflow():
    """The finding: (df/dx)^2 was squared in float16 (inf above 256)."""
    lin = _linear(np.full((4, 2), 1000.0))
    S = lrpjax.sensitivity(lin, jnp.ones((1, 4), jnp.float16), target=0)
    assert S.dtype == jnp.float32
    np.testing.assert_allclose(S, np.full((1, 4), 1e6))


def test_overflow_raises_on_concrete_inputs_and_is_inf_under_jit():
    lin = _linear(np.full((4, 2), 1e20))
    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match="the sensitivity of row 0 is not finite although x "
                                         "and f\\(x\\) are: a value overflowed"):
        lrpjax.sensitivity(lin, x, target=0)
    assert np.all(np.isinf(jax.jit(lambda a: lrpjax.sensitivity(lin, a, target=0))(x)))


def test_huge_relevance_does_not_overflow_the_quotients():
    """alpha-beta's share R / stab(u + b+) with R ~ 1e33 and u ~ 1e-30 is -1e39 in float32
    (overflow), though every heatmap entry is representable: the output relevance is scaled
    by a power of two for the backward pass and back (exact), so it stays finite."""
    W = np.array([[1.0], [-1e30]])
    x = np.array([[1e-30, 1e3]])
    lin = _linear(W)
    Rx = lrpjax.relevance(lin, jnp.asarray(x, jnp.float32), composite=C.AlphaBetaAll(2.0, 1.0),
                          target=0)
    z = float((x @ W)[0, 0])
    u, v = 1e-60, -1e33
    ref = [2 * 1e-30 * 1.0 * z / (u + 1e-6), -1 * 1e3 * -1e30 * z / (v - 1e-6)]
    assert np.all(np.isfinite(Rx))
    np.testing.assert_allclose(np.asarray(Rx, np.float64)[0], ref, rtol=1e-5)


# ------------------------------------------------------------------ item 3: targets, NaN
def test_invalid_rows_under_jit_are_nan(cnn):
    model, x = cnn
    x = x.at[2, 3, 3, 0].set(jnp.nan)
    t = jnp.array([0, 7, 1, -3])
    comp = C.EpsilonGammaBox(0.0, 1.0)
    for fn in (lambda a, tt: lrpjax.relevance(model, a, composite=comp, target=tt),
               lambda a, tt: lrpjax.gradient(model, a, target=tt),
               lambda a, tt: lrpjax.sensitivity(model, a, target=tt)):
        out = np.asarray(jax.jit(fn)(x, t)).reshape(4, -1)
        assert np.all(np.isnan(out[1:])) and np.all(np.isfinite(out[0]))
    # vmap (traced) likewise, and the valid row equals the eager heatmap
    one = jax.vmap(lambda a, tt: lrpjax.relevance(model, a[None], composite=comp,
                                                  target=tt[None])[0])(x, t)
    np.testing.assert_allclose(one[0], lrpjax.relevance(model, x[:1], composite=comp,
                                                        target=0)[0], rtol=1e-5, atol=1e-7)
    assert np.all(np.isnan(np.asarray(one[1:])))


def test_eager_calls_still_reject_bad_targets_and_nan(cnn):
    model, x = cnn
    with pytest.raises(ValueError, match="out of range"):
        lrpjax.relevance(model, x, composite=C.EpsilonPlus(), target=jnp.array([0, 7, 1, -3]))
    with pytest.raises(ValueError, match="NaN"):
        lrpjax.gradient(model, x.at[0, 0, 0, 0].set(jnp.nan))


def test_checked_mode_raises_under_jit(cnn):
    model, x = cnn
    comp = C.EpsilonGammaBox(0.0, 1.0)
    f = checkify.checkify(jax.jit(lambda a, t: lrpjax.relevance(
        model, a, composite=comp, target=t, checked=True)))
    err, R_ok = f(x, jnp.array([0, 1, 2, 3]))
    assert err.get() is None
    np.testing.assert_allclose(R_ok, lrpjax.relevance(model, x, composite=comp,
                                                      target=jnp.array([0, 1, 2, 3])), rtol=1e-6)
    cases = [(x, [0, 7, 1, 2], "target 7 at row 1 is out of range for 5 classes"),
             (x, [0, 1, 2, -3], "target -3 at row 3 is out of range"),
             (x.at[2, 0, 0, 0].set(jnp.inf), [0, 1, 2, 3], "x row 2 contains NaN or infinite"),
             (x.at[1, 4, 4, 0].set(5.0), [0, 1, 2, 3],
              r"at layer 'layers/0': its input 5.0 \(row 1\) lies outside the box")]
    for a, t, match in cases:
        err, _ = f(a, jnp.array(t))
        with pytest.raises(ValueError, match=match):
            err.throw()
    g = checkify.checkify(jax.jit(lambda a, t: lrpjax.gradient(model, a, target=t,
                                                               checked=True)))
    with pytest.raises(ValueError, match="target 7 at row 1"):
        g(x, jnp.array([0, 7, 1, 2]))[0].throw()


# ------------------------------------------------------------------ item 4: box, empty batch
def test_inputs_outside_the_zbox_box(cnn):
    model, x = cnn
    outside = x.at[1, 2, 2, 0].set(5.0)
    for comp in (C.EpsilonGammaBox(0.0, 1.0), C.DeepTaylor(0.0, 1.0), C.LRPTutorial(0.0, 1.0)):
        with pytest.raises(ValueError, match=r"ZBox\(low=0.0, high=1.0.*\) at layer "
                                             r"'layers/0': its input 5.0 \(row 1\) lies "
                                             r"outside the box"):
            lrpjax.relevance(model, outside, composite=comp)
        # under jax.jit without checks: the formula as written (finite), documented
        assert np.all(np.isfinite(jax.jit(lambda a, c=comp: lrpjax.relevance(
            model, a, composite=c))(outside)))
    # the box edges themselves (and float rounding at them) are inside
    edges = jnp.clip(x, 0.0, 1.0).at[0, 0, 0, 0].set(1.0).at[0, 1, 0, 0].set(0.0)
    lrpjax.relevance(model, edges, composite=C.EpsilonGammaBox(0.0, 1.0))
    lrpjax.relevance(model, x, composite=C.EpsilonGammaBox(jnp.zeros((8, 8, 1)), 1.0))
    with pytest.raises(ValueError, match="outside the box"):
        lrpjax.relevance(model, x, composite=C.EpsilonGammaBox(np.full((8, 8, 1), 0.5), 1.0))


def test_empty_batches_raise(cnn):
    model, x = cnn
    for call in (lambda: lrpjax.relevance(model, x[:0], composite=C.EpsilonPlus()),
                 lambda: lrpjax.gradient(model, x[:0]),
                 lambda: lrpjax.describe(model, x[:0], composite=C.EpsilonPlus())):
        with pytest.raises(ValueError, match=r"x is an empty batch \(shape \(0, 8, 8, 1\)\)"):
            call()


# ------------------------------------------------------------------ sharded.explain_dataset
def test_explain_dataset_validates_batches_and_rows(tmp_path, cnn):
    model, x = cnn
    x = np.asarray(x)
    t = np.arange(4, dtype=np.int32)
    calls = []

    def explain(a, tt):
        calls.append(1)
        return lrpjax.relevance(model, a, composite=C.EpsilonPlus(), target=tt)

    bad_x = x.copy()
    bad_x[3, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch 1, row 1 \(sample 3\): x contains NaN"):
        sharded.explain_dataset(explain, [(bad_x[:2], t[:2]), (bad_x[2:], t[2:])],
                                tmp_path / "R.npy", batch_size=4)
    assert calls == []  # nothing was dispatched
    bad_t = t.copy()
    bad_t[2] = 7
    with pytest.raises(ValueError, match=r"batch 1, row 0 \(sample 2\): the heatmap is not "
                                         r"finite \(extras at that row: 7\)"):
        sharded.explain_dataset(explain, [(x[:2], t[:2]), (x[2:], bad_t[2:])],
                                tmp_path / "R.npy", batch_size=2)
    assert os.listdir(tmp_path) == []
    path = sharded.explain_dataset(explain, [(x, t)], tmp_path / "R.npy", batch_size=2)
    np.testing.assert_allclose(np.load(path), explain(jnp.asarray(x), jnp.asarray(t)),
                               rtol=1e-5, atol=1e-7)
