"""Tests for lrpjax.selectivity, lrpjax.curves and lrpjax.bootstrap against independent references:
a float64 NumPy re-implementation of the flipping loop (patches and windows, relevance once and
recomputed), closed forms for AUC / AOPC / the expected noise curve of a linear model, and the
exact bootstrap distribution of a Bernoulli mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial
from scipy import stats

from lrpjax import evaluate
from lrpjax.bootstrap import bootstrap_ci, paired_bootstrap, pairwise_differences
from lrpjax.curves import class_score, curve_aopc, relative_aopc
from lrpjax.selectivity import (
    _flip_scan,
    pixel_flipping,
    region_perturbation,
    window_relevance,
)

RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------- reference
def reference_flip(f, explain, x, *, patch, windows, replacement, steps, recompute):
    """Float64 NumPy MoRF loop for ONE image (H, W, C), written from the definition."""
    h, w, _ = x.shape
    if windows:
        r = patch // 2
        regions = [(max(i - r, 0), min(i + r + 1, h), max(j - r, 0), min(j + r + 1, w))
                   for i in range(h) for j in range(w)]
        anchors = [(i, j) for i in range(h) for j in range(w)]
    else:
        regions = [(i, i + patch, j, j + patch) for i in range(0, h, patch)
                   for j in range(0, w, patch)]
        anchors = [(i, j) for i, _, j, _ in regions]
    xk, removed = x.astype(np.float64).copy(), np.zeros((h, w), bool)
    rel = explain(xk)
    curve, order = [f(xk)], []
    for _ in range(steps):
        if recompute:
            rel = explain(xk)
        score = [rel[a:b, c:d].sum() for a, b, c, d in regions]
        avail = [not removed[i, j] for i, j in anchors]
        best = max((k for k in range(len(regions)) if avail[k]), key=lambda k: (score[k], -k),
                   default=None)
        if best is not None:
            a, b, c, d = regions[best]
            xk[a:b, c:d] = replacement[a:b, c:d]
            removed[a:b, c:d] = True
        curve.append(f(xk))
        order.append(-1 if best is None else best)
    return np.array(curve), np.array(order)


def quadratic_model(h: int, w: int, c: int = 1):
    """f(x) = w.x + (v.x)^2 / 2 (float32 JAX and float64 NumPy) and R = x * grad f."""
    wv = RNG.normal(size=(h, w, c))
    vv = RNG.normal(size=(h, w, c)) * 0.3

    def f_np(z):
        return float((wv * z).sum() + 0.5 * (vv * z).sum() ** 2)

    def r_np(z):
        return z * (wv + (vv * z).sum() * vv)

    wj, vj = jnp.asarray(wv, jnp.float32), jnp.asarray(vv, jnp.float32)

    def f(z):
        return (z * wj).sum((1, 2, 3)) + 0.5 * ((z * vj).sum((1, 2, 3))) ** 2

    def explain(z):
        return z * (wj + (z * vj).sum((1, 2, 3))[:, None, None, None] * vj)

    return f, explain, f_np, r_np


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("windows,recompute", [(False, False), (False, True), (True, False),
                                               (True, True)])
def test_matches_float64_reference(windows, recompute):
    f, explain, f_np, r_np = quadratic_model(6, 6)
    x = RNG.uniform(0.0, 1.0, size=(3, 6, 6, 1)).astype(np.float32)
    repl = RNG.uniform(-1.0, 1.0, size=(6, 6, 1)).astype(np.float32)  # a fixed array
    patch, steps = (3, 12) if windows else (2, 9)
    res = pixel_flipping(f, x, explain=explain, patch=patch, steps=steps, replacement=repl,
                         regions="windows" if windows else "patches", recompute=recompute)
    for i in range(3):
        curve, order = reference_flip(f_np, r_np, x[i], patch=patch, windows=windows,
                                      replacement=repl, steps=steps, recompute=recompute)
        np.testing.assert_array_equal(res.order[i], order)
        # float32 arithmetic against float64: a few ulps of values of order 10
        np.testing.assert_allclose(res.curves[i], curve, rtol=1e-5, atol=1e-5)
    if windows:  # 36 windows of 3x3 on 6x6: at most 36 steps, here at least 4 needed
        assert (np.asarray(res.order) >= 0).sum(1).min() >= 4


def test_windows_run_out_and_stay():
    x = np.ones((1, 5, 5, 1), np.float32)
    f = lambda z: z.sum((1, 2, 3))
    res = pixel_flipping(f, x, x, patch=5, regions="windows", steps=6, replacement=0.0)
    # the centre window (index 12) covers the whole image; nothing is left after it
    np.testing.assert_array_equal(res.order[0], [12, -1, -1, -1, -1, -1])
    np.testing.assert_allclose(res.curves[0], [25.0, 0, 0, 0, 0, 0, 0])


def test_window_relevance_box_sum():
    r = RNG.normal(size=(2, 7, 6, 2)).astype(np.float32)
    got = np.asarray(window_relevance(jnp.asarray(r), 3))
    pad = np.pad(r.sum(-1).astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    ref = sum(pad[:, a:a + 7, b:b + 6] for a in range(3) for b in range(3))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_multi_score_equals_separate_runs_and_params_stay_traced():
    w1 = RNG.normal(size=(16, 3)).astype(np.float32)

    def logits(wt, z):
        return z.reshape(z.shape[0], -1) @ wt

    x = RNG.uniform(size=(5, 4, 4, 1)).astype(np.float32)
    t = np.array([0, 1, 2, 0, 1])
    r = RNG.normal(size=x.shape).astype(np.float32)
    both = pixel_flipping(class_score(Partial(logits, jnp.asarray(w1)), ("logit", "probability")),
                          x, r, patch=2, targets=t, n_scores=2)
    assert both.curves.shape == (5, 2, 5) and both.auc.shape == (5, 2)
    for k, name in enumerate(("logit", "probability")):
        one = pixel_flipping(class_score(Partial(logits, jnp.asarray(w1)), name), x, r, patch=2,
                             targets=t)
        np.testing.assert_allclose(both.curves[:, k], one.curves, rtol=1e-6, atol=1e-7)
    # new parameter values of the same shapes reuse the compiled scan (they are traced)
    size = _flip_scan._cache_size()
    w2 = RNG.normal(size=(16, 3)).astype(np.float32)
    other = pixel_flipping(class_score(Partial(logits, jnp.asarray(w2)), "logit"), x, r, patch=2,
                           targets=t)
    assert _flip_scan._cache_size() == size
    z = x.reshape(5, -1).astype(np.float64) @ w2.astype(np.float64)
    np.testing.assert_allclose(other.curves[:, 0], z[np.arange(5), t], rtol=1e-5)


# ----------------------------------------------------------------------------- scores
def test_class_score_values_and_errors():
    z = RNG.normal(size=(4, 5)) * 3
    t = np.array([0, 4, 2, 2])
    f = class_score(lambda a: jnp.asarray(z, jnp.float32)[: a.shape[0]],
                    ("logit", "relu_logit", "probability"))
    out = np.asarray(f(jnp.zeros((4, 1, 1, 1)), t))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    zt = z[np.arange(4), t]
    np.testing.assert_allclose(out, np.stack([zt, np.maximum(zt, 0), p[np.arange(4), t]], 1),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown score"):
        class_score(lambda a: a, "softmax")
    with pytest.raises(ValueError, match="unknown score"):
        class_score(lambda a: a, ())
    with pytest.raises(ValueError, match="pass targets="):
        pixel_flipping(class_score(lambda a: a.reshape(a.shape[0], -1), "logit"),
                       np.ones((1, 4, 4, 1)), np.ones((1, 4, 4, 1)))


# ----------------------------------------------------------------------------- AOPC
def test_relative_aopc_closed_form_and_linear_random_expectation():
    c = np.array([[4.0, 1.0, 0.0]])
    r = np.array([[4.0, 3.0, 1.0]])
    # AOPC(c) = (0+3+4)/3, AOPC(r) = (0+1+3)/3 -> 1 = mean_k (r_k - c_k)
    np.testing.assert_allclose(relative_aopc(c, r), [1.0])
    np.testing.assert_allclose(curve_aopc(c) - curve_aopc(r), [1.0])
    with pytest.raises(ValueError, match="one shape"):
        relative_aopc(c, r[:, :2])
    # f = w.x, black patches, a uniform random order over P patches: E[c_k] = f0 - k/P * S,
    # so E[AOPC] = 1/(P+1) sum_k k S / P = S / 2
    w = RNG.normal(size=(8, 8, 1)).astype(np.float32)
    x = RNG.uniform(size=(1, 8, 8, 1)).astype(np.float32)
    f = lambda z: (z * w).sum((1, 2, 3))
    s_total = float((x * w).sum())
    rand = pixel_flipping(f, np.repeat(x, 4000, 0), order="random", key=jax.random.key(2),
                          patch=2)
    sd = float(np.std(np.asarray(rand.aopc))) / np.sqrt(4000)
    assert abs(float(np.mean(np.asarray(rand.aopc))) - s_total / 2) < 4 * sd + 1e-5


def test_region_perturbation_noise_expectation_and_seeds():
    # f = w.x; a pixel set to U[a, b] noise changes f by w_i (u - x_i): E[c_k] = f0 -
    # sum_{i removed} w_i (x_i - (a + b) / 2); the removed set is fixed by the relevance.
    h = 9
    w = RNG.normal(size=(h, h, 1))
    x = RNG.uniform(size=(2, h, h, 1)).astype(np.float32)
    f = lambda z: (z * jnp.asarray(w, jnp.float32)).sum((1, 2, 3))
    r = (x * w).astype(np.float32)
    lo, hi = -1.0, 3.0
    res = region_perturbation(f, x, r, key=jax.random.key(5), size=3, steps=4, n_seeds=400,
                              data_min=lo, data_max=hi)
    assert res.seed_curves.shape == (400, 2, 5) and res.order.shape == (400, 2, 4)
    np.testing.assert_array_equal(res.order, np.broadcast_to(res.order[:1], res.order.shape))
    np.testing.assert_allclose(res.curves, np.asarray(res.seed_curves).mean(0), rtol=1e-6)
    assert len({round(float(v), 6) for v in np.asarray(res.seed_curves)[:, 0, 1]}) > 300
    for i in range(2):
        removed = np.zeros((h, h), bool)
        expected = [float((x[i] * w).sum())]
        for j in np.asarray(res.order[0, i]):
            ci, cj = divmod(int(j), h)
            removed[max(ci - 1, 0):ci + 2, max(cj - 1, 0):cj + 2] = True
            expected.append(float((w[..., 0] * np.where(removed, (lo + hi) / 2,
                                                         x[i, ..., 0])).sum()))
        # Monte Carlo: sd of one seed's value <= sqrt(sum w^2) * (hi - lo) / sqrt(12)
        tol = 5 * np.sqrt((w ** 2).sum()) * (hi - lo) / np.sqrt(12) / np.sqrt(400)
        np.testing.assert_allclose(res.curves[i], expected, atol=tol)
    np.testing.assert_allclose(res.aopc, curve_aopc(np.asarray(res.curves)), rtol=1e-6)


def test_region_perturbation_errors():
    x = np.ones((2, 9, 9, 1), np.float32)
    f = lambda z: z.sum((1, 2, 3))
    key = jax.random.key(0)
    for n_seeds in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_seeds"):
            region_perturbation(f, x, x, key=key, n_seeds=n_seeds)
    with pytest.raises(ValueError, match="PRNG key"):
        region_perturbation(f, x, x, key=None)
    with pytest.raises(ValueError, match="needs relevance"):
        region_perturbation(f, x, key=key)
    with pytest.raises(ValueError, match="odd window size"):
        region_perturbation(f, x, x, key=key, size=4)
    with pytest.raises(ValueError, match="unknown regions"):
        pixel_flipping(f, x, x, regions="tiles")
    with pytest.raises(ValueError, match="n_scores"):
        pixel_flipping(f, x, x, patch=3, n_scores=0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        pixel_flipping(f, x, x, patch=3, n_scores=2)


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_bernoulli_exact_distribution():
    # resampling N values with k ones: the bootstrap mean is Binomial(N, k/N) / N exactly
    n, k = 200, 60
    v = np.r_[np.ones(k), np.zeros(n - k)]
    for level in (0.5, 0.8, 0.95):  # percentiles (1 -+ level) / 2 of that distribution
        ci = bootstrap_ci(v, level=level, n_boot=20000, seed=3)
        assert float(ci.mean) == pytest.approx(0.3)
        lo, hi = stats.binom.ppf([(1 - level) / 2, (1 + level) / 2], n, k / n) / n
        # lattice step 1/N plus the Monte Carlo error of a percentile of 20,000 resamples
        assert abs(float(ci.low) - lo) <= 1.5 / n and abs(float(ci.high) - hi) <= 1.5 / n


def test_bootstrap_normal_width_and_constant():
    v = RNG.normal(2.0, 3.0, size=(4000, 2))
    ci = bootstrap_ci(v, n_boot=4000)
    half = 1.959964 * v.std(0, ddof=1) / np.sqrt(4000)
    np.testing.assert_allclose((ci.high - ci.low) / 2, half, rtol=0.08)
    np.testing.assert_allclose((ci.high + ci.low) / 2, v.mean(0), atol=0.1 * float(half.max()))
    const = bootstrap_ci(np.full(10, 1.25))
    assert float(const.low) == float(const.high) == 1.25
    again = bootstrap_ci(v, n_boot=4000)  # fixed seed: the same numbers
    np.testing.assert_array_equal(again.low, ci.low)


def test_paired_bootstrap_and_pairwise():
    base = RNG.normal(0.0, 10.0, size=300)  # large per-digit spread shared by the methods
    a, b = base + 0.1 + RNG.normal(0, 0.2, 300), base.copy()
    d = paired_bootstrap(a, b)
    assert d.differs and d.low > 0 and d.diff == pytest.approx(float((a - b).mean()))
    ca, cb = bootstrap_ci(a), bootstrap_ci(b)
    assert ca.low < cb.high  # the unpaired intervals overlap: pairing is what separates them
    shift = paired_bootstrap(b + 0.5, b)
    assert shift.differs and shift.low == pytest.approx(0.5) and shift.high == pytest.approx(0.5)
    same = paired_bootstrap(b, b)
    assert not same.differs and same.low == same.high == 0.0
    table = pairwise_differences({"a": a, "b": b, "c": b + 0.5})
    assert list(table) == [("a", "b"), ("a", "c"), ("b", "c")]
    for (p, q), got in table.items():
        ref = paired_bootstrap({"a": a, "b": b, "c": b + 0.5}[p], {"a": a, "b": b, "c": b + 0.5}[q])
        np.testing.assert_allclose(got[:3], ref[:3], rtol=1e-9, atol=1e-12)  # BLAS reorderings
        assert got.differs == ref.differs
    for bad, msg in [(np.r_[1.0, np.nan], "NaN"), (np.ones(1), "at least 2"),
                     (np.ones((3, 2)), "paired 1-D")]:
        with pytest.raises(ValueError, match=msg):
            paired_bootstrap(bad, bad)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(a, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(a, n_boot=0)
    with pytest.raises(ValueError, match="at least 2 methods"):
        pairwise_differences({"a": a})
    with pytest.raises(ValueError, match="paired 1-D"):
        pairwise_differences({"a": a, "b": b[:10]})


def test_reexported_from_evaluate():
    for name in ("pixel_flipping", "region_perturbation", "class_score", "relative_aopc",
                 "bootstrap_ci", "paired_bootstrap", "pairwise_differences", "FlipResult",
                 "window_relevance", "curve_auc", "curve_aopc", "flip_order", "patch_relevance"):
        assert name in evaluate.__all__ and hasattr(evaluate, name), name
