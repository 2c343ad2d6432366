"""Naturalness scores for prototypes: held-out densities and distances to real examples.

None of these uses the classifier whose prototypes are judged; all are fitted on, or compare with,
held-out data (digits neither the classifier's expert nor the generator saw).

* Probabilistic PCA (Tipping & Bishop 1999): with the sample covariance's eigenpairs (λ_i, u_i),
  k components and σ² = mean of the remaining eigenvalues,

      C = U_k (Λ_k − σ² I) U_kᵀ + σ² I,
      log p(x) = −½ [D log 2π + log|C| + (x − μ)ᵀ C⁻¹ (x − μ)].

* ``nearest_distance``: min_j ‖x − r_j‖₂, the Euclidean distance to the nearest reference example.
* ``nearest_cosine``: max_j ⟨x, r_j⟩ / (‖x‖ ‖r_j‖), the shape agreement with the most similar
  reference example, blind to contrast (0 for an all-zero x, which has no shape).
* ``intensity_w1``: the 1-Wasserstein distance between the pixel values of x and the pooled pixel
  values of the reference set, W₁ = ∫₀¹ |F_x⁻¹(q) − F_ref⁻¹(q)| dq: whether x has the intensity
  statistics of real examples (MNIST: mostly 0, strokes near 1), blind to where the pixels are.

Every score has a blind spot, which is why several are reported (see ``SCORES``): a Gaussian
density and the ℓ2 distance prefer faint images (an all-black image is closer to a thin "1" than
most real digits are to their nearest neighbour), the cosine prefers smooth shapes such as the
mean digit, and W₁ ignores pixel positions (shuffled pixels score as well as the digit).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PPCA",
    "SCORES",
    "NaturalnessJudge",
    "fit_judge",
    "fit_ppca",
    "intensity_w1",
    "naturalness",
    "nearest_cosine",
    "nearest_distance",
    "ppca_log_prob",
]

#: score name → (True if higher means more natural, a short description)
SCORES: dict[str, tuple[bool, str]] = {
    "ppca_log_density": (True, "PPCA log-density fitted on held-out digits (nats)"),
    "nn_distance": (False, "ℓ2 distance to the nearest held-out digit"),
    "nn_cosine": (True, "cosine similarity to the most similar held-out digit"),
    "intensity_w1": (False, "W₁ between the pixel values and those of held-out digits"),
}


class PPCA(NamedTuple):
    """mean (D,), components U_k (D, k), variances Λ_k (k,), noise σ² (scalar)."""

    mean: jax.Array
    components: jax.Array
    variances: jax.Array
    noise: jax.Array


def _flat(x: jax.Array, name: str = "x") -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} needs a leading batch axis with >= 1 example, got shape "
                         f"{tuple(x.shape)}")
    return x.reshape(len(x), -1)


def fit_ppca(x: jax.Array, k: int = 40, min_noise: float = 1e-4) -> PPCA:
    """Maximum-likelihood PPCA with k components on x (N, ...) flattened to (N, D)."""
    x = _flat(x)
    if not 0 < k < x.shape[1]:
        raise ValueError(f"PPCA needs 0 < k < D = {x.shape[1]}, got k={k}")
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
    """min_j ‖x_i − r_j‖₂ for every x_i: distance to the nearest reference example, (N,).

    The nearest r_j is found with ‖x‖² − 2⟨x, r⟩ + ‖r‖² (one matrix product); its distance is
    then recomputed as ‖x_i − r_j‖ directly, so a near-duplicate gives ≈ 0, not √(rounding).
    """
    a, b = _flat(x), _flat(reference, "reference")
    d2 = jnp.sum(a**2, 1)[:, None] - 2 * a @ b.T + jnp.sum(b**2, 1)[None]
    return jnp.linalg.norm(a - b[jnp.argmin(d2, axis=1)], axis=1)


def nearest_cosine(x: jax.Array, reference: jax.Array) -> jax.Array:
    """max_j ⟨x_i, r_j⟩ / (‖x_i‖ ‖r_j‖), (N,); 0 where x_i = 0 (all-zero references are skipped)."""
    a, b = _flat(x), _flat(reference, "reference")
    na, nb = jnp.linalg.norm(a, axis=1), jnp.linalg.norm(b, axis=1)
    cos = (a @ b.T) / (jnp.where(na > 0, na, 1.0)[:, None] * jnp.where(nb > 0, nb, 1.0)[None])
    cos = jnp.where(nb[None] > 0, cos, -jnp.inf).max(1)
    return jnp.where(na > 0, cos, 0.0)


def _sorted_pixels(reference: jax.Array) -> jax.Array:
    """(D, M) the M·D pooled reference pixel values, sorted, in D blocks of M (M = #examples)."""
    b = _flat(reference, "reference")
    return jnp.sort(b.reshape(-1)).reshape(b.shape[1], b.shape[0])


def intensity_w1(x: jax.Array, reference: jax.Array | None = None, *,
                 sorted_reference: jax.Array | None = None) -> jax.Array:
    """W₁ between the D pixel values of each x_i and the M·D pooled pixel values of M reference
    examples, (N,). Exact: x_i's quantile function is constant on each of D equal slices of
    [0, 1], each slice holds M reference atoms, so W₁ = (1/MD) Σ_d Σ_m |x_(d) − r_(dM+m)|.
    ``sorted_reference``: :func:`_sorted_pixels` of the reference, precomputed (see the judge)."""
    if (reference is None) == (sorted_reference is None):
        raise ValueError("give exactly one of reference or sorted_reference")
    r = _sorted_pixels(reference) if sorted_reference is None else sorted_reference
    a = _flat(x)
    if a.shape[1] != r.shape[0]:
        raise ValueError(f"x has {a.shape[1]} values per example, the reference {r.shape[0]}")
    return jax.lax.map(lambda v: jnp.mean(jnp.abs(jnp.sort(v)[:, None] - r)), a)


class NaturalnessJudge(NamedTuple):
    """Everything the scores need, fitted once on held-out reference examples."""

    ppca: PPCA
    reference: jax.Array        # (M, D) flattened reference examples
    sorted_pixels: jax.Array    # (D, M) see :func:`intensity_w1`


def fit_judge(reference: jax.Array, k: int = 40) -> NaturalnessJudge:
    """Fit PPCA (k components) and keep the reference examples for the distance scores."""
    flat = _flat(reference, "reference")
    return NaturalnessJudge(ppca=fit_ppca(flat, k), reference=flat,
                            sorted_pixels=_sorted_pixels(flat))


def naturalness(judge: NaturalnessJudge, x: jax.Array) -> dict[str, np.ndarray]:
    """Every score of :data:`SCORES` for each x_i: name → (N,) float64 NumPy array.

    One jitted program per input shape: score everything in one call where speed matters."""
    a = _flat(x)
    if a.shape[1] != judge.reference.shape[1]:
        raise ValueError(f"x has {a.shape[1]} values per example, the judge's reference "
                         f"{judge.reference.shape[1]}")
    return {k: np.asarray(v, np.float64) for k, v in _all_scores(judge, a).items()}


@jax.jit
def _all_scores(judge: NaturalnessJudge, a: jax.Array) -> dict[str, jax.Array]:
    return {
        "ppca_log_density": ppca_log_prob(judge.ppca, a),
        "nn_distance": nearest_distance(a, judge.reference),
        "nn_cosine": nearest_cosine(a, judge.reference),
        "intensity_w1": intensity_w1(a, sorted_reference=judge.sorted_pixels),
    }
