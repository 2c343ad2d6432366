"""Closed-form density models for judging how natural a prototype is.

Probabilistic PCA (Tipping & Bishop 1999) fitted on held-out digits — data the AM expert never
saw — gives a normalised log-density: with the sample covariance's eigenpairs (λ_i, u_i), k
components and σ² = mean of the remaining eigenvalues,

    C = U_k (Λ_k − σ² I) U_kᵀ + σ² I,
    log p(x) = −½ [D log 2π + log|C| + (x − μ)ᵀ C⁻¹ (x − μ)].

Also the Euclidean distance to the nearest reference digit, a model-free check.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PPCA", "fit_ppca", "nearest_distance", "ppca_log_prob"]


class PPCA(NamedTuple):
    """mean (D,), components U_k (D, k), variances Λ_k (k,), noise σ² (scalar)."""

    mean: jax.Array
    components: jax.Array
    variances: jax.Array
    noise: jax.Array


def fit_ppca(x: jax.Array, k: int = 40, min_noise: float = 1e-4) -> PPCA:
    """Maximum-likelihood PPCA with k components on x (N, ...) flattened to (N, D)."""
    x = jnp.asarray(x, jnp.float32).reshape(len(x), -1)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / len(x)
    evals, evecs = jnp.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    noise = jnp.maximum(evals[k:].mean(), min_noise)
    return PPCA(mean=mean, components=evecs[:, :k], variances=jnp.maximum(evals[:k], noise),
                noise=noise)


def ppca_log_prob(model: PPCA, x: jax.Array) -> jax.Array:
    """log p(x) under the PPCA model, for x (N, ...) → (N,) nats."""
    d = model.mean.shape[0]
    r = jnp.asarray(x, jnp.float32).reshape(len(x), d) - model.mean
    proj = r @ model.components                                 # coordinates in the subspace
    resid = jnp.sum(r**2, -1) - jnp.sum(proj**2, -1)            # squared norm off the subspace
    mahal = jnp.sum(proj**2 / model.variances, -1) + resid / model.noise
    k = model.variances.shape[0]
    logdet = jnp.sum(jnp.log(model.variances)) + (d - k) * jnp.log(model.noise)
    return -0.5 * (d * jnp.log(2 * jnp.pi) + logdet + mahal)


def nearest_distance(x: jax.Array, reference: jax.Array) -> jax.Array:
    """min_j ‖x_i − r_j‖₂ for every x_i: distance to the nearest reference example, (N,)."""
    a = jnp.asarray(x, jnp.float32).reshape(len(x), -1)
    b = jnp.asarray(reference, jnp.float32).reshape(len(reference), -1)
    d2 = jnp.sum(a**2, 1)[:, None] - 2 * a @ b.T + jnp.sum(b**2, 1)[None]
    return jnp.sqrt(jnp.maximum(d2.min(1), 0.0))
