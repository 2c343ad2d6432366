"""Unsupervised pseudo-labels for the self-conditioned GAN: k-means on leading principal components.

Lloyd's algorithm (Lloyd 1982) with k-means++ seeding (Arthur & Vassilvitskii 2007), in NumPy;
self-conditioning after Liu et al. 2020, "Diverse image generation via self-conditioned GANs".
"""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_labels", "kmeans"]


def kmeans(features: np.ndarray, k: int, seed: int = 0,
           iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), in NumPy.

    Returns (centres (k, D), labels (N,)); stops when the labels no longer change.
    """
    f = np.asarray(features, np.float64)
    n = len(f)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= {n} clusters, got k={k}")
    rng = np.random.default_rng(seed)
    centres = [f[rng.integers(n)]]
    d2 = np.sum((f - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(f[rng.choice(n, p=p)])
        d2 = np.minimum(d2, np.sum((f - centres[-1]) ** 2, axis=1))
    c = np.stack(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        dist = (f**2).sum(1)[:, None] - 2 * f @ c.T + (c**2).sum(1)[None]
        new = np.argmin(dist, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.stack([f[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
    return c, labels


def cluster_labels(x: np.ndarray, k: int, components: int = 30, seed: int = 0) -> np.ndarray:
    """k-means labels of images x (N, ...) on their leading principal components."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    flat = flat - flat.mean(0)
    if k == 1:
        return np.zeros(len(x), np.int64)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return kmeans(flat @ vt[:min(components, len(vt))].T, k, seed)[1]
