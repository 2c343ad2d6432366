"""The density expert (GB-RBM), the GAN, the PPCA naturalness model and the checkpoint cache."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrpjax.maximize import rbm as R
from lrpjax.maximize.cache import config_hash, data_fingerprint, load_or_train
from lrpjax.maximize.density import fit_ppca, nearest_distance, ppca_log_prob
from lrpjax.maximize.gan import (
    d_loss,
    g_loss,
    gan_train_steps,
    init_gan,
    load_or_train_gan,
    train_gan,
)


def tiny_rbm(d: int = 3, h: int = 4, seed: int = 0) -> R.RBMParams:
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return R.RBMParams(W=0.7 * jax.random.normal(k1, (d, h)), a=jax.random.normal(k2, (d,)),
                       b=jax.random.normal(k3, (h,)))


def brute_force_log_p(params: R.RBMParams, v: np.ndarray) -> np.ndarray:
    """log p(v) = log Σ_h p(h) N(v; a + W h, I), enumerating h ∈ {0,1}^H in plain NumPy (float64).

    p(h) ∝ ∫ exp(−E(v, h)) dv = (2π)^{D/2} exp(bᵀh + ½‖a + W h‖² − ½‖a‖²) (Gaussian integral).
    """
    W, a, b = (np.asarray(p, np.float64) for p in params)
    d, n_hidden = W.shape
    hs = np.array(list(itertools.product([0, 1], repeat=n_hidden)), np.float64)
    means = a + hs @ W.T
    log_w = hs @ b + 0.5 * np.sum(means**2, 1) - 0.5 * a @ a
    log_ph = log_w - np.logaddexp.reduce(log_w)
    sq = np.sum((v[:, None, :] - means[None]) ** 2, -1)
    log_n = -0.5 * sq - 0.5 * d * np.log(2 * np.pi)
    return np.logaddexp.reduce(log_ph[None] + log_n, axis=1)


def test_free_energy_matches_brute_force_enumeration():
    params = tiny_rbm()
    v = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (6, 3)), np.float64) * 2
    log_p = brute_force_log_p(params, v)
    minus_f = np.asarray(-R.free_energy(params, jnp.asarray(v, jnp.float32)), np.float64)
    # log p(v) + log Z = −F(v): one constant (log Z) across all v
    offsets = minus_f - log_p
    np.testing.assert_allclose(offsets, offsets[0], atol=1e-4)
    np.testing.assert_allclose(offsets, float(R.log_partition(params)), atol=1e-4)


def test_partition_function_by_numerical_integration():
    params = tiny_rbm(d=2, h=3, seed=1)
    grid = np.linspace(-12, 12, 481)
    v = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(-np.asarray(R.free_energy(params, jnp.asarray(v)), np.float64))
    z_numeric = density.sum() * (grid[1] - grid[0]) ** 2
    np.testing.assert_allclose(np.log(z_numeric), float(R.log_partition(params)), atol=1e-3)


def exact_nll(params: R.RBMParams, v: jax.Array) -> float:
    return float(jnp.mean(R.free_energy(params, v)) + R.log_partition(params))


def test_rbm_training_reduces_exact_negative_log_likelihood():
    key = jax.random.PRNGKey(0)
    centres = jnp.array([[2.5, -2.5, 2.5, -2.5], [-2.5, 2.5, -2.5, 2.5]])
    v = centres[jax.random.bernoulli(key, 0.5, (200,)).astype(int)]
    v = v + 0.5 * jax.random.normal(jax.random.PRNGKey(1), v.shape)
    start = R.init_rbm(jax.random.PRNGKey(2), 4, 3, visible_mean=v.mean(0))
    for persistent in (False, True):
        params, history = R.train_rbm(v, n_hidden=3, epochs=15, batch_size=20,
                                      learning_rate=0.03, persistent=persistent, seed=2)
        assert exact_nll(params, v) < exact_nll(start, v) - 0.5, persistent
        assert history["reconstruction"][-1] < history["reconstruction"][0]


def test_rbm_train_step_updates_and_pixel_log_prob():
    params = tiny_rbm(d=4, h=2)
    optimizer = optax.sgd(0.01)
    step = jax.jit(R.rbm_train_step(optimizer, k=2, persistent=True))
    v = jnp.ones((5, 4))
    chains = jnp.zeros((5, 4))
    new, _, chains2, loss = step(params, optimizer.init(params), chains, v, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss)) and not np.allclose(chains2, chains)
    assert not np.allclose(new.W, params.W)
    x = jnp.arange(12.0).reshape(3, 4)
    std = R.fit_standardizer(x)
    lp = R.pixel_log_prob(params, std)(x[1])
    np.testing.assert_allclose(lp, -R.free_energy(params, (x[1] - std.mean) / std.scale),
                               rtol=1e-6)


def test_gan_steps_reduce_their_losses():
    key = jax.random.PRNGKey(0)
    x = (jax.random.uniform(key, (64, 4, 4, 1)) > 0.7).astype(jnp.float32)
    params = init_gan(jax.random.PRNGKey(1), latent_dim=8, hidden=(16, 16), n_pixels=16)
    g_opt, d_opt = optax.adam(1e-2), optax.adam(1e-2)
    d_step, g_step = gan_train_steps(g_opt, d_opt, 8, shape=(4, 4, 1))
    d_step, g_step = jax.jit(d_step), jax.jit(g_step, static_argnums=2)
    z = jax.random.normal(jax.random.PRNGKey(2), (64, 8))
    d_before = d_loss(params.d, params.g, x, z)
    p, state = params, d_opt.init(params.d)
    for i in range(20):  # D steps with G fixed: the discriminator loss falls
        p, state, _ = d_step(p, state, x, jax.random.PRNGKey(10 + i))
    assert d_loss(p.d, p.g, x, z) < d_before - 0.1
    g_before = g_loss(p.g, p.d, z, (4, 4, 1))
    state = g_opt.init(p.g)
    for i in range(20):  # G steps with D fixed: the generator loss falls
        p, state, _ = g_step(p, state, 64, jax.random.PRNGKey(50 + i))
    assert g_loss(p.g, p.d, z, (4, 4, 1)) < g_before - 0.1


def test_train_gan_and_cache(tmp_path):
    x = jax.random.uniform(jax.random.PRNGKey(0), (32, 6, 6, 1))
    config = {"latent_dim": 4, "hidden": (8, 8), "steps": 6, "chunk": 3, "batch_size": 8}
    params, info = load_or_train_gan(x, cache_dir=tmp_path, verbose=False, **config)
    assert not info["cached"] and len(list(tmp_path.glob("gan-*.npz"))) == 1
    again, info2 = load_or_train_gan(x, cache_dir=tmp_path, verbose=False, **config)
    assert info2["cached"]
    jax.tree.map(np.testing.assert_array_equal, params, again)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="batch_size"):
        train_gan(x[:4], batch_size=8)


def test_config_or_data_change_invalidates_the_cache(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return {"w": jnp.ones(3) * len(calls)}, {}

    def like():
        return {"w": jnp.zeros(3)}

    for config in ({"a": 1, "data": "x"}, {"a": 1, "data": "x"}, {"a": 2, "data": "x"},
                   {"a": 1, "data": "y"}):
        load_or_train("thing", config, train, like, tmp_path, verbose=False)
    assert len(calls) == 3 and len(list(tmp_path.glob("thing-*.npz"))) == 3
    assert data_fingerprint(np.ones(3)) != data_fingerprint(np.ones(4))
    assert data_fingerprint(np.ones(3)) != data_fingerprint(np.ones(3, np.float32))


def test_load_or_train_rbm_cache(tmp_path):
    x = jax.random.uniform(jax.random.PRNGKey(0), (40, 3, 3, 1))
    params, _std, info = R.load_or_train_rbm(x, cache_dir=tmp_path, verbose=False, n_hidden=5,
                                            epochs=2, batch_size=10)
    assert params.W.shape == (9, 5) and not info["cached"]
    again, _, info2 = R.load_or_train_rbm(x, cache_dir=tmp_path, verbose=False, n_hidden=5,
                                          epochs=2, batch_size=10)
    assert info2["cached"]
    np.testing.assert_array_equal(params.W, again.W)


def test_cache_rejects_corrupt_file(tmp_path):
    config = {"a": 1}
    path = tmp_path / f"thing-{config_hash(config)}.npz"
    path.write_bytes(b"not an npz")
    calls = []

    def train():
        calls.append(1)
        return {"w": jnp.ones(3)}, {}

    _params, info = load_or_train("thing", config, train, lambda: {"w": jnp.zeros(3)}, tmp_path,
                                 verbose=False)
    assert calls and not info["cached"]
    _params2, info2 = load_or_train("thing", config, train, lambda: {"w": jnp.zeros(3)},
                                   tmp_path, verbose=False)
    assert info2["cached"] and len(calls) == 1


def test_ppca_matches_gaussian_logpdf_and_nearest_distance():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (500, 5)) @ jnp.diag(jnp.array([3.0, 2.0, 1.0, 0.5, 0.5]))
    model = fit_ppca(x, k=3)
    cov = (model.components * (model.variances - model.noise)) @ model.components.T
    cov = cov + model.noise * jnp.eye(5)
    expected = jax.scipy.stats.multivariate_normal.logpdf(x[:10], model.mean, cov)
    np.testing.assert_allclose(ppca_log_prob(model, x[:10]), expected, rtol=1e-4, atol=1e-4)
    ref = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(nearest_distance(jnp.array([[3.0, 0.0], [3.0, 4.0]]), ref),
                               [3.0, 0.0], atol=1e-3)
