"""Naturalness scores (lrpjax.maximize.density) against float64 NumPy references, and the weight
sweep of AM objectives (weighted_terms) against separate runs and a closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrpjax.maximize import (
    SCORES,
    activation_maximization,
    fit_judge,
    fit_ppca,
    intensity_w1,
    l2_regularizer,
    naturalness,
    nearest_cosine,
    nearest_distance,
    ppca_log_prob,
    weighted_terms,
)


def _images(seed: int, n: int, d: int = 36) -> np.ndarray:
    """Sparse, digit-like data in [0, 1]: most pixels 0, some strokes, correlated pixels."""
    rng = np.random.default_rng(seed)
    basis = rng.uniform(size=(6, d)) ** 3
    x = np.clip(rng.uniform(size=(n, 6)) @ basis - 0.4, 0, 1)
    return x.astype(np.float32)


def test_ppca_log_density_matches_float64_closed_form():
    x = _images(0, 400)
    k = 5
    model = fit_ppca(x, k=k)
    # reference: ML PPCA from the float64 covariance; C = U(Λ − σ²)Uᵀ + σ²I built explicitly
    x64 = x.astype(np.float64)
    mu = x64.mean(0)
    cov = (x64 - mu).T @ (x64 - mu) / len(x64)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    noise = max(evals[k:].mean(), 1e-4)
    lam = np.maximum(evals[:k], noise)
    C = evecs[:, :k] @ np.diag(lam - noise) @ evecs[:, :k].T + noise * np.eye(x.shape[1])
    probe = np.concatenate([_images(1, 20), np.zeros((1, 36), np.float32)])
    r = probe.astype(np.float64) - mu
    _, logdet = np.linalg.slogdet(C)
    expected = -0.5 * (36 * np.log(2 * np.pi) + logdet
                       + np.einsum("nd,nd->n", r, np.linalg.solve(C, r.T).T))
    got = np.asarray(ppca_log_prob(model, probe), np.float64)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=0.05)
    assert float(model.noise) == pytest.approx(noise, rel=1e-3)


def test_nearest_distance_and_cosine_match_brute_force():
    ref = _images(2, 300)
    x = np.concatenate([_images(3, 25), ref[7:9] + 1e-4, np.zeros((1, 36), np.float32)])
    a, b = x.astype(np.float64), ref.astype(np.float64)
    dist = np.array([min(np.linalg.norm(v - r) for r in b) for v in a])
    np.testing.assert_allclose(nearest_distance(x, ref), dist, rtol=1e-5, atol=1e-6)
    # the near-duplicates: ≈ 6e-4 exactly, not √(float32 rounding of ‖x‖² − 2⟨x,r⟩ + ‖r‖²)
    assert np.all(np.asarray(nearest_distance(x, ref))[25:27] < 1e-3)

    nonzero = b[np.linalg.norm(b, axis=1) > 0]
    cos = np.array([max(v @ r / (np.linalg.norm(v) * np.linalg.norm(r)) for r in nonzero)
                    if np.linalg.norm(v) > 0 else 0.0 for v in a])
    np.testing.assert_allclose(nearest_cosine(x, ref), cos, rtol=1e-5, atol=1e-6)
    assert float(nearest_cosine(x, ref)[-1]) == 0.0                       # no shape, no match
    # contrast-blind: a faint copy of a reference example is a perfect match
    np.testing.assert_allclose(nearest_cosine(0.1 * ref[:3], ref), 1.0, atol=1e-6)


def _w1_by_cdf(a: np.ndarray, b: np.ndarray) -> float:
    """∫ |F_a(t) − F_b(t)| dt over the merged support (float64), an independent route to W₁."""
    a, b = np.sort(a.astype(np.float64)), np.sort(b.astype(np.float64))
    t = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(a, t[:-1], side="right") / len(a)
    fb = np.searchsorted(b, t[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(t)))


def test_intensity_w1_matches_cdf_integral_and_scipy():
    ref = _images(4, 50)
    x = np.concatenate([_images(5, 4), np.zeros((1, 36), np.float32),
                        np.random.default_rng(0).normal(size=(1, 36)).astype(np.float32)])
    got = np.asarray(intensity_w1(x, ref))
    expected = [_w1_by_cdf(v, ref.ravel()) for v in x]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(got, [stats.wasserstein_distance(v, ref.ravel()) for v in x],
                               rtol=1e-5, atol=1e-6)
    # W₁ sees pixel values only: shuffling a reference example's pixels changes nothing
    shuffled = np.random.default_rng(1).permutation(ref[0])
    np.testing.assert_allclose(intensity_w1(shuffled[None], ref), intensity_w1(ref[:1], ref),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        intensity_w1(x)


def test_judge_scores_and_blind_spots():
    ref = _images(6, 300)
    judge = fit_judge(ref, k=5)
    real, black = _images(7, 50), np.zeros((1, 36), np.float32)
    s_real, s_black = naturalness(judge, real), naturalness(judge, black)
    assert set(s_real) == set(SCORES) and all(v.shape == (50,) for v in s_real.values())
    np.testing.assert_allclose(s_real["nn_distance"], nearest_distance(real, ref), rtol=1e-6)
    np.testing.assert_allclose(s_real["ppca_log_density"],
                               ppca_log_prob(fit_ppca(ref, 5), real), rtol=1e-6)
    # the black image: no shape (cosine 0) and the wrong pixel statistics (W₁ = mean pixel)
    assert s_black["nn_cosine"][0] == 0.0
    assert s_black["intensity_w1"][0] == pytest.approx(float(ref.mean()), rel=1e-5)
    assert s_black["intensity_w1"][0] > s_real["intensity_w1"].mean()
    with pytest.raises(ValueError, match="values per example"):
        naturalness(judge, np.zeros((1, 35), np.float32))
    with pytest.raises(ValueError, match="0 < k < D"):
        fit_ppca(ref, k=36)


def test_weight_sweep_is_one_run_matching_closed_form_and_separate_runs():
    # objective(x, c) = −‖x − e_c‖², term −‖x‖²: x* = e_c / (1 + w) for every (c, w) pair
    centres = jnp.eye(3)
    objective = lambda x, c: -jnp.sum((x - centres[c]) ** 2)
    term = lambda x: -jnp.sum(x**2)
    sweep = weighted_terms(objective, term)
    ws = jnp.array([0.0, 0.5, 1.0, 3.0])
    classes = jnp.tile(jnp.arange(3), len(ws))
    weights = jnp.repeat(ws, 3)[:, None]
    x0 = jnp.zeros((1, 3))
    res = activation_maximization(sweep, x0, (classes, weights), steps=200,
                                  optimizer=optax.sgd(0.1))
    expected = centres[classes] / (1.0 + weights)
    np.testing.assert_allclose(res.best_x(), expected, atol=1e-5)
    # the same as a separate run per weight with the term as an ordinary regularizer
    for i in (1, 3):
        w = ws[i]
        one = activation_maximization(objective, x0, jnp.arange(3), steps=200,
                                      optimizer=optax.sgd(0.1),
                                      regularizer=l2_regularizer(float(w)))
        np.testing.assert_allclose(res.best_x()[3 * i:3 * i + 3], one.best_x(), atol=1e-6)


def test_weight_sweep_input_checks():
    objective = lambda x, c: -jnp.sum(x**2)
    sweep = weighted_terms(objective, lambda x: jnp.sum(x), lambda x: jnp.sum(x**2))
    x0 = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match=r"shape \(T, 2\)"):
        activation_maximization(sweep, x0, (jnp.arange(2), jnp.ones((2, 1))), steps=1)
    with pytest.raises(ValueError, match="finite"):
        activation_maximization(sweep, x0, (jnp.arange(2), jnp.full((2, 2), jnp.nan)), steps=1)
    with pytest.raises(ValueError, match="at least one term"):
        weighted_terms(objective)


def test_weight_sweep_keeps_the_class_check():
    from lrpjax.maximize import class_log_prob

    logits = lambda x: x.reshape(len(x), -1)[:, :3]
    sweep = weighted_terms(class_log_prob(logits), lambda x: -jnp.sum(x**2))
    with pytest.raises(ValueError, match="invalid class index 5"):
        activation_maximization(sweep, jnp.zeros((1, 4)), (jnp.array([0, 5]),
                                                          jnp.ones((2, 1))), steps=1)
    key = jax.random.PRNGKey(0)
    res = activation_maximization(sweep, 0.01 * jax.random.normal(key, (1, 4)),
                                  (jnp.array([0, 2]), jnp.full((2, 1), 0.1)), steps=50)
    assert np.all(np.argmax(np.asarray(res.best_x())[:, :3], axis=1) == [0, 2])
