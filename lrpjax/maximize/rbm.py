"""A Gaussian-Bernoulli restricted Boltzmann machine: the density "expert" p(x) for AM.

Visible units v ∈ R^D are Gaussian with unit variance, hidden units h ∈ {0,1}^H binary; energy

    E(v, h) = ½‖v − a‖² − bᵀh − vᵀW h,
    p(h_j = 1 | v) = σ(W_jᵀv + b_j),        p(v | h) = N(a + W h, I).

Summing h out gives the free energy, log p(v) = −F(v) − log Z,

    F(v) = ½‖v − a‖² − Σ_j softplus(W_jᵀv + b_j).

Training (Hinton 2002, contrastive divergence CD-k; Tieleman 2008, persistent CD) follows the
log-likelihood gradient −∇⟨F(v)⟩_data + ∇⟨F(v)⟩_model with model samples from k Gibbs steps,
written as the surrogate loss ⟨F(v_data)⟩ − ⟨F(sg(v_model))⟩ and minimised with optax.

The RBM models *standardised* pixels v = (x − μ)/s (μ the per-pixel mean, s one global scale:
unit-variance visibles need the signal to be large against unit noise). In pixel space
log p(x) = −F((x − μ)/s) + const; :func:`pixel_log_prob` returns that (unnormalised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "RBMParams",
    "Standardizer",
    "cd_loss",
    "fit_standardizer",
    "free_energy",
    "gibbs_step",
    "init_rbm",
    "load_or_train_rbm",
    "log_partition",
    "log_prob",
    "pixel_log_prob",
    "rbm_train_step",
    "reconstruction_error",
    "train_rbm",
]


class RBMParams(NamedTuple):
    """W: (D, H) couplings, a: (D,) visible bias (the Gaussian mean), b: (H,) hidden bias."""

    W: jax.Array
    a: jax.Array
    b: jax.Array


class Standardizer(NamedTuple):
    """v = (x − mean) / scale, x flattened to D pixels."""

    mean: jax.Array
    scale: jax.Array


def fit_standardizer(x: jax.Array, scale: float | None = None) -> Standardizer:
    """Per-pixel mean μ and one global scale s (default: the std of all centred pixels)."""
    x = jnp.asarray(x).reshape(len(x), -1)
    mean = x.mean(axis=0)
    s = jnp.std(x - mean) if scale is None else jnp.asarray(scale, x.dtype)
    return Standardizer(mean=mean, scale=s)


def init_rbm(key: jax.Array, n_visible: int, n_hidden: int, scale: float = 0.01,
             visible_mean: jax.Array | None = None) -> RBMParams:
    """W ~ N(0, scale²), a = data mean of v (or 0), b = 0 (Hinton 2010, "A practical guide")."""
    W = scale * jax.random.normal(key, (n_visible, n_hidden))
    a = jnp.zeros(n_visible) if visible_mean is None else jnp.asarray(visible_mean)
    return RBMParams(W=W, a=a, b=jnp.zeros(n_hidden))


def free_energy(params: RBMParams, v: jax.Array) -> jax.Array:
    """F(v) = ½‖v − a‖² − Σ_j softplus(W_jᵀv + b_j), over the last axis of v."""
    quadratic = 0.5 * jnp.sum((v - params.a) ** 2, axis=-1)
    return quadratic - jnp.sum(jax.nn.softplus(v @ params.W + params.b), axis=-1)


def log_prob(params: RBMParams, v: jax.Array) -> jax.Array:
    """log p(v) + log Z = −F(v): the unnormalised log-density."""
    return -free_energy(params, v)


def log_partition(params: RBMParams) -> jax.Array:
    """log Z by enumerating all 2^H hidden states (tiny RBMs only, for tests):

    Z = (2π)^{D/2} Σ_h exp(bᵀh + ½‖a + W h‖² − ½‖a‖²).
    """
    n_visible, n_hidden = params.W.shape
    if n_hidden > 20:
        raise ValueError(f"log_partition enumerates 2^H states; H={n_hidden} is too many")
    h = (jnp.arange(2**n_hidden)[:, None] >> jnp.arange(n_hidden)) & 1
    h = h.astype(params.W.dtype)
    mean = params.a + h @ params.W.T
    e = h @ params.b + 0.5 * jnp.sum(mean**2, -1) - 0.5 * jnp.sum(params.a**2)
    return 0.5 * n_visible * jnp.log(2 * jnp.pi) + jax.scipy.special.logsumexp(e)


def gibbs_step(params: RBMParams, v: jax.Array, key: jax.Array) -> jax.Array:
    """One block-Gibbs sweep v → h ~ p(h|v) → v' ~ N(a + W h, I)."""
    kh, kv = jax.random.split(key)
    h = jax.random.bernoulli(kh, jax.nn.sigmoid(v @ params.W + params.b)).astype(v.dtype)
    mean = params.a + h @ params.W.T
    return mean + jax.random.normal(kv, mean.shape, v.dtype)


def cd_loss(params: RBMParams, v_data: jax.Array, v_model: jax.Array) -> jax.Array:
    """⟨F(v_data)⟩ − ⟨F(sg(v_model))⟩: its gradient is the CD/PCD estimate of −∇ log-likelihood."""
    v_model = jax.lax.stop_gradient(v_model)
    return jnp.mean(free_energy(params, v_data)) - jnp.mean(free_energy(params, v_model))


def reconstruction_error(params: RBMParams, v: jax.Array) -> jax.Array:
    """Mean squared error of the mean-field reconstruction a + W σ(Wᵀv + b) (a monitor only)."""
    rec = params.a + jax.nn.sigmoid(v @ params.W + params.b) @ params.W.T
    return jnp.mean((rec - v) ** 2)


def rbm_train_step(
    optimizer: optax.GradientTransformation, k: int = 1, persistent: bool = False
) -> Callable[..., Any]:
    """A jittable step (params, opt_state, chains, v_batch, key) -> (params, opt_state, chains, loss).

    CD-k (Hinton 2002) starts the k Gibbs steps at the batch; PCD (Tieleman 2008) continues the
    persistent ``chains`` (same shape as the batch) and returns them advanced.
    """

    def step(params, opt_state, chains, v, key):
        start = chains if persistent else v
        keys = jax.random.split(key, k)
        v_model = jax.lax.fori_loop(0, k, lambda i, s: gibbs_step(params, s, keys[i]), start)
        loss, grads = jax.value_and_grad(cd_loss)(params, v, v_model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, (v_model if persistent else chains), loss

    return step


def train_rbm(
    v: jax.Array,
    *,
    n_hidden: int = 256,
    epochs: int = 20,
    batch_size: int = 100,
    k: int = 1,
    persistent: bool = True,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> tuple[RBMParams, dict[str, list[float]]]:
    """Train a GB-RBM on standardised data v (N, D) with CD-k or PCD and adamw.

    One epoch = one ``lax.scan`` over shuffled minibatches (compiled once). Returns the params
    and a history with the mean surrogate loss and reconstruction error per epoch.
    """
    v = jnp.asarray(v, jnp.float32).reshape(len(v), -1)
    n, d = v.shape
    n_batches = n // batch_size
    if n_batches < 1:
        raise ValueError(f"need at least batch_size={batch_size} samples, got {n}")
    key = jax.random.PRNGKey(seed)
    key, kinit, kchain = jax.random.split(key, 3)
    params = init_rbm(kinit, d, n_hidden, visible_mean=v.mean(0))
    optimizer = optax.adamw(learning_rate, b1=0.5, weight_decay=weight_decay)
    opt_state = optimizer.init(params)
    chains = v[jax.random.choice(kchain, n, (batch_size,), replace=False)]
    step = rbm_train_step(optimizer, k=k, persistent=persistent)

    @jax.jit
    def epoch(params, opt_state, chains, key):
        kperm, kstep = jax.random.split(key)
        batches = v[jax.random.permutation(kperm, n)[: n_batches * batch_size]]
        batches = batches.reshape(n_batches, batch_size, d)

        def body(carry, inp):
            params, opt_state, chains = carry
            vb, kb = inp
            params, opt_state, chains, loss = step(params, opt_state, chains, vb, kb)
            return (params, opt_state, chains), (loss, reconstruction_error(params, vb))

        keys = jax.random.split(kstep, n_batches)
        (params, opt_state, chains), (loss, rec) = jax.lax.scan(
            body, (params, opt_state, chains), (batches, keys))
        return params, opt_state, chains, loss.mean(), rec.mean()

    history: dict[str, list[float]] = {"loss": [], "reconstruction": []}
    epochs_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_iter = tqdm(epochs_iter, desc="GB-RBM", unit="epoch", leave=False)
    for _ in epochs_iter:
        key, sub = jax.random.split(key)
        params, opt_state, chains, loss, rec = epoch(params, opt_state, chains, sub)
        history["loss"].append(float(loss))
        history["reconstruction"].append(float(rec))
        if not np.isfinite(history["loss"][-1]):
            raise FloatingPointError("GB-RBM training diverged (non-finite CD loss); lower the "
                                     "learning rate or raise the data scale")
    return params, history


def pixel_log_prob(params: RBMParams, std: Standardizer) -> Callable[[jax.Array], jax.Array]:
    """log p(x) + const = −F((x − μ)/s) for one unbatched pixel-space x (any shape with D pixels)."""

    def log_px(x: jax.Array) -> jax.Array:
        return log_prob(params, (x.reshape(-1) - std.mean) / std.scale)

    return log_px


def load_or_train_rbm(
    x: jax.Array,
    *,
    scale: float | None = None,
    cache_dir: str = "checkpoints",
    verbose: bool = True,
    **config: Any,
) -> tuple[RBMParams, Standardizer, dict[str, Any]]:
    """Fit the standardiser on pixel data x (N, ...), then load or train a GB-RBM on it.

    ``config`` goes to :func:`train_rbm`; it, ``scale`` and a fingerprint of x name the cache
    file ``<cache_dir>/gbrbm-<hash>.npz``. Returns (params, standardiser, info).
    """
    from lrpjax.maximize.cache import data_fingerprint, load_or_train

    x = jnp.asarray(x, jnp.float32).reshape(len(x), -1)
    std = fit_standardizer(x, scale)
    v = (x - std.mean) / std.scale
    key = {"model": "gbrbm", "scale": scale, "data": data_fingerprint(x), **config}
    n_hidden = config.get("n_hidden", 256)

    def train():
        params, history = train_rbm(v, progress=verbose, **config)
        return params, {"final_loss": history["loss"][-1],
                        "final_reconstruction": history["reconstruction"][-1]}

    def like():
        return jax.eval_shape(lambda: init_rbm(jax.random.PRNGKey(0), x.shape[1], n_hidden))

    params, info = load_or_train("gbrbm", key, train, like, cache_dir, verbose)
    return RBMParams(*params), std, info
