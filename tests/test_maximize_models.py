"""The density expert (GB-RBM), the GAN, the PPCA naturalness model and the checkpoint cache."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrpjax.maximize import activation_maximization, class_log_prob
from lrpjax.maximize import rbm as R
from lrpjax.maximize.cache import config_hash, data_fingerprint, load_or_train
from lrpjax.maximize.density import fit_ppca, nearest_distance, ppca_log_prob
from lrpjax.maximize.gan import (
    GANParams,
    code_starts,
    d_loss,
    discriminator,
    g_loss,
    gan_train_steps,
    generator,
    init_gan,
    kmeans,
    load_or_train_gan,
    log_prior,
    prior_regularizer,
    sample,
    sample_codes,
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
    k_real = jnp.arange(64) % 2
    params = init_gan(jax.random.PRNGKey(1), latent_dim=8, hidden=(8, 8), shape=(4, 4, 1),
                      n_clusters=2, separation=3.0)
    g_opt, d_opt = optax.adam(1e-2), optax.adam(1e-2)
    d_step, g_step = gan_train_steps(g_opt, d_opt, shape=(4, 4, 1))
    d_step, g_step = jax.jit(d_step), jax.jit(g_step, static_argnums=2)
    z, k = sample_codes(params.prior, jax.random.PRNGKey(2), 64)
    d_before = d_loss(params.d, params.g, x, k_real, z, k)
    p, state = params, d_opt.init(params.d)
    for i in range(20):  # D steps with G fixed: the discriminator loss falls
        p, state, _ = d_step(p, state, x, k_real, jax.random.PRNGKey(10 + i))
    assert d_loss(p.d, p.g, x, k_real, z, k) < d_before - 0.1
    g_before = g_loss(p.g, p.d, z, k, (4, 4, 1))
    state = g_opt.init(p.g)
    for i in range(20):  # G steps with D fixed: the generator loss falls
        p, state, _ = g_step(p, state, 64, jax.random.PRNGKey(50 + i))
    assert g_loss(p.g, p.d, z, k, (4, 4, 1)) < g_before - 0.1


def test_generator_shape_range_and_vmap():
    params = init_gan(jax.random.PRNGKey(0), latent_dim=6, hidden=(8, 4), shape=(8, 12, 1),
                      n_clusters=3)
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (5, 6))
    x = generator(params.g, z, (8, 12, 1))
    assert x.shape == (5, 8, 12, 1) and params.g[0][0].shape[0] == 6
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.std()) > 1e-3
    # g(z) of one code does not depend on the rest of the batch (no batch statistics)
    one = jax.vmap(lambda zi: generator(params.g, zi[None], (8, 12, 1))[0])(z)
    np.testing.assert_allclose(one, x, atol=1e-6)
    assert discriminator(params.d, x, jnp.array([0, 1, 2, 0, 1])).shape == (5,)
    with pytest.raises(ValueError, match="divisible by 4"):
        init_gan(jax.random.PRNGKey(0), shape=(6, 6, 1))


def test_code_space_am_runs_through_the_generator():
    """AM over z with g inside the vmapped loop: log p(ω_c|g(z)) rises for every target."""
    params = init_gan(jax.random.PRNGKey(0), latent_dim=6, hidden=(8, 4), shape=(8, 8, 1),
                      n_clusters=3, separation=2.0)
    w = jax.random.normal(jax.random.PRNGKey(1), (64, 4))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    objective = class_log_prob(lambda z: logits_fn(generator(params.g, z, (8, 8, 1))))
    z0 = code_starts(params, jax.random.PRNGKey(2), per_component=2)
    assert z0.shape == (6, 6)
    np.testing.assert_allclose(z0.reshape(3, 2, 6).mean(1), params.prior[0], atol=2.5)
    assert np.linalg.norm(params.prior[0][0]) == pytest.approx(2.0, rel=1e-5)
    result = activation_maximization(objective, z0, jnp.arange(4), steps=30, unroll=1,
                                     regularizer=prior_regularizer(params, 1e-3),
                                     optimizer=optax.adam(0.1))
    start = np.asarray(result.trace[..., 0]).max(1)  # F ≈ log p(ω_t|g(z0)) <= 0
    # every target's best restart closes at least 10 % of its best start's gap to log p = 0
    assert np.all(np.asarray(result.total.max(1)) > start + 0.1 * np.abs(start))
    np.testing.assert_array_equal(result.best, np.argmax(np.asarray(result.total), 1))
    assert result.best_x().shape == (4, 6)


def test_mixture_prior_density_sampling_and_regularizer():
    params = init_gan(jax.random.PRNGKey(0), latent_dim=3, hidden=(4, 4), shape=(4, 4, 1),
                      n_clusters=4, separation=5.0, weights=[0.1, 0.2, 0.3, 0.4])
    means = params.prior[0]
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 5.0, rtol=1e-5)
    z = jax.random.normal(jax.random.PRNGKey(1), (7, 3)) * 3
    pdf = sum(w * jax.scipy.stats.multivariate_normal.pdf(z, m, np.eye(3))
              for w, m in zip([0.1, 0.2, 0.3, 0.4], means))
    np.testing.assert_allclose(log_prior(params.prior, z), np.log(pdf), rtol=1e-4)
    zs, k = sample_codes(params.prior, jax.random.PRNGKey(2), 20000)
    np.testing.assert_allclose(np.bincount(np.asarray(k), minlength=4) / 20000,
                               [0.1, 0.2, 0.3, 0.4], atol=0.015)
    np.testing.assert_allclose(np.std(np.asarray(zs - means[k]), axis=0), 1.0, atol=0.03)
    # near component k the mixture regulariser is −λ‖z − μ_k‖² + 2λ log π_k (the others vanish)
    near = means[2] + 0.3 * jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    np.testing.assert_allclose(
        jax.vmap(prior_regularizer(params, 0.5))(near),
        -0.5 * np.sum(np.asarray(near - means[2]) ** 2, axis=1) + np.log(0.3), rtol=1e-3)
    # one component at 0: the regulariser is exactly −λ‖z‖²
    single = init_gan(jax.random.PRNGKey(0), latent_dim=3, hidden=(4, 4), shape=(4, 4, 1),
                      n_clusters=1)
    np.testing.assert_allclose(jax.vmap(prior_regularizer(single, 0.3))(z),
                               -0.3 * np.sum(np.asarray(z) ** 2, axis=1), rtol=1e-5)


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 300)
    f = centres[truth] + rng.normal(size=(300, 2))
    c, labels = kmeans(f, 3, seed=1)
    # the same partition up to renaming: each found cluster is one true cluster
    for j in range(3):
        assert len(set(truth[labels == j])) == 1
    np.testing.assert_allclose(np.sort(c[:, 0] + 3 * c[:, 1]), [0, 10, 30], atol=0.5)
    with pytest.raises(ValueError, match="clusters"):
        kmeans(f[:2], 3)


def test_train_gan_and_cache(tmp_path):
    x = jax.random.uniform(jax.random.PRNGKey(0), (32, 8, 8, 1))
    config = {"latent_dim": 4, "hidden": (4, 4), "steps": 6, "chunk": 3, "batch_size": 8,
              "n_clusters": 2}
    params, info = load_or_train_gan(x, cache_dir=tmp_path, verbose=False, **config)
    assert isinstance(params, GANParams) and params.prior[0].shape == (2, 4)
    assert not info["cached"] and len(list(tmp_path.glob("gan-*.npz"))) == 1
    assert info["config"]["separation"] == 16.0  # defaults are part of the cache key
    again, info2 = load_or_train_gan(x, cache_dir=tmp_path, verbose=False, **config)
    assert info2["cached"]
    jax.tree.map(np.testing.assert_array_equal, params, again)
    assert sample(again, jax.random.PRNGKey(0), 3, (8, 8, 1)).shape == (3, 8, 8, 1)
    # naming a default explicitly is the same model; changing it is another one
    _, info3 = load_or_train_gan(x, cache_dir=tmp_path, verbose=False, separation=16.0,
                                 **config)
    assert info3["cached"]
    _, info4 = load_or_train_gan(x, cache_dir=tmp_path, verbose=False, separation=8.0,
                                 **config)
    assert not info4["cached"] and len(list(tmp_path.glob("gan-*.npz"))) == 2
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="batch_size"):
        train_gan(x[:4], batch_size=8)
    with pytest.raises(TypeError, match="unknown GAN config keys"):
        load_or_train_gan(x, cache_dir=tmp_path, verbose=False, blur=1.0)


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
