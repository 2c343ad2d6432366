"""Quantitative evaluation of explanations: selectivity and continuity, in one namespace.

* Selectivity (pixel flipping, region perturbation, AUC / AOPC, bounded class scores):
  :mod:`lrpjax.selectivity`, re-exported here; bootstrap intervals over images:
  :mod:`lrpjax.bootstrap`, re-exported here.
* Continuity (Montavon et al. 2018, Sec. 7.1): max_{x != x'} ||R(x) - R(x')||_1 / ||x - x'||_2.

Everything takes plain callables, so it works with any model:
``f: (N,H,W,C) -> (N,)`` is the score of the explained class and
``explain: (N,H,W,C) -> (N,H,W,C)`` the relevance map. Scores are computed per sample; nothing is
normalised over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrpjax.bootstrap import (
    BootstrapCI,
    PairedDifference,
    bootstrap_ci,
    paired_bootstrap,
    pairwise_differences,
)
from lrpjax.selectivity import (
    SCORES,
    FlipResult,
    RegionResult,
    class_score,
    curve_aopc,
    curve_auc,
    flip_order,
    patch_relevance,
    pixel_flipping,
    region_perturbation,
    relative_aopc,
    window_relevance,
)
from lrpjax.selectivity_checks import _bad, _call, _check_nhwc

__all__ = [
    "SCORES", "BootstrapCI", "ContinuityResult", "FlipResult", "PairedDifference",
    "RegionResult", "ShiftResult", "bootstrap_ci", "class_score", "continuity", "curve_aopc",
    "curve_auc", "flip_order", "paired_bootstrap", "pairwise_differences", "patch_relevance",
    "pixel_flipping", "region_perturbation", "relative_aopc", "shift_image", "shift_protocol",
    "translations", "window_relevance",
]

Array = jax.Array
ScoreFn = Callable[..., Array]
ExplainFn = Callable[..., Array]


class ContinuityResult(NamedTuple):
    """Output of :func:`continuity`: per-image scores and their maximum."""

    scores: Array  # (N,)
    max: float


class ShiftResult(NamedTuple):
    """Output of :func:`shift_protocol` for one image moved along ``shifts`` (S values)."""

    shifts: Array  # (S,)
    inputs: Array  # (S, H, W, C): shift_image(x, s, 0)
    scores: Array  # (S,): f(x_s)
    relevance: Array  # (S, H, W, C): explain(x_s)
    quadrants: Array  # (S, 4): relevance summed over [top-left, top-right, bottom-left, bottom-right]
    ratios: Array  # (S-1,): ||R_{s+1} - R_s||_1 / ||x_{s+1} - x_s||_2 (0 where x_{s+1} == x_s)
    continuity: float  # max(ratios)


# ----------------------------------------------------------------------------- continuity
def _tent(n: int, d: Array) -> Array:
    """Linear-interpolation matrix T[i, k] = max(0, 1 - |i - d - k|): out_i = x(i - d)."""
    i = jnp.arange(n, dtype=jnp.float32)
    return jnp.maximum(0.0, 1.0 - jnp.abs(i[:, None] - d - i[None, :]))


def shift_image(x: Array, dx: float | Array, dy: float | Array) -> Array:
    """Bilinear shift with zero fill: out[i, j] = x(i - dy, j - dx) on (..., H, W, C) images.

    dx > 0 moves content right, dy > 0 moves it down; integer shifts are exact, and
    subpixel ones interpolate linearly between neighbours (pixels outside the image are 0).
    """
    x = jnp.asarray(x)
    h, w = x.shape[-3], x.shape[-2]
    ty, tx = _tent(h, jnp.asarray(dy, jnp.float32)), _tent(w, jnp.asarray(dx, jnp.float32))
    out = jnp.einsum("ik,...klc,jl->...ijc", ty, x, tx, precision=jax.lax.Precision.HIGHEST)
    return out.astype(x.dtype)


def translations(x: Array, shifts: Any) -> Array:
    """Shifted copies (N, M, H, W, C); ``shifts`` is (M,) horizontal or (M, 2) (dx, dy) pairs."""
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[None]
    _check_nhwc(x, "x")
    s = jnp.asarray(shifts, jnp.float32)
    if s.ndim == 1:
        s = jnp.stack([s, jnp.zeros_like(s)], axis=1)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(f"shifts must be (M,) or (M, 2), got shape {s.shape}")
    return jax.vmap(lambda d: shift_image(x, d[0], d[1]), out_axes=1)(s)


def _pairs(m: int, pairs: str) -> np.ndarray:
    if pairs == "all":
        return np.array([(i, j) for i in range(m) for j in range(i + 1, m)]).reshape(-1, 2)
    if pairs == "reference":
        return np.array([(0, j) for j in range(1, m)]).reshape(-1, 2)
    if pairs == "consecutive":
        return np.array([(j, j + 1) for j in range(m - 1)]).reshape(-1, 2)
    raise ValueError(f"unknown pairs {pairs!r}: use 'all', 'reference' or 'consecutive'")


def _pair_ratios(xs: np.ndarray, rs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """||R_a - R_b||_1 / ||x_a - x_b||_2 for pairs (a, b) of (N, M, D) arrays -> (N, P).

    0 where x_a == x_b (excluded: x != x'). Computed in float64, one pair at a time.
    """
    out = np.zeros((xs.shape[0], len(idx)))
    for p, (a, b) in enumerate(idx):
        num = np.abs(rs[:, a] - rs[:, b]).sum(-1, dtype=np.float64)
        den = np.linalg.norm(xs[:, a].astype(np.float64) - xs[:, b], axis=-1)
        out[:, p] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return out


def continuity(explain: ExplainFn, x: Array, perturbations: Array, *, pairs: str = "all",
               batch_size: int = 250) -> ContinuityResult:
    """C(x) = max_{a != b in S(x)} ||R(a) - R(b)||_1 / ||a - b||_2 (Montavon et al. 2018, Sec. 7.1).

    S(x) = (x, x'_1, ..., x'_M) with ``perturbations`` (N, M, H, W, C), e.g. :func:`translations`.
    pairs: ``"all"`` (default, the definition), ``"reference"`` (x vs each x'), or
    ``"consecutive"`` (neighbours along the sequence, for a path). Pairs with identical inputs are
    excluded (x != x'). Returns per-image scores (N,) and their maximum.
    """
    x = np.asarray(x)
    _check_nhwc(x, "x")
    p = np.asarray(perturbations, x.dtype)
    if p.ndim != 5 or p.shape[0] != x.shape[0] or p.shape[2:] != x.shape[1:]:
        raise ValueError(f"perturbations must have shape (N, M, H, W, C) = "
                         f"({x.shape[0]}, M, {', '.join(map(str, x.shape[1:]))}), got {p.shape}")
    n, m = x.shape[0], p.shape[1] + 1
    idx = _pairs(m, pairs)
    if idx.size == 0:
        raise ValueError("continuity needs at least one perturbed input per image")
    xs = np.concatenate([x[:, None], p], axis=1).reshape(n * m, *x.shape[1:])
    rs = np.concatenate([np.asarray(_call(explain, xs[i:i + batch_size], None,
                                          xs[i:i + batch_size].shape, "explain"))
                         for i in range(0, n * m, batch_size)])
    finite = np.isfinite(rs).reshape(n, -1).all(1)
    if not finite.all():
        raise ValueError(f"explain returned NaN or inf for {_bad(~finite)}")
    scores = _pair_ratios(xs.reshape(n, m, -1), rs.reshape(n, m, -1), idx).max(axis=1)
    return ContinuityResult(jnp.asarray(scores), float(scores.max()))


def shift_protocol(f: ScoreFn, explain: ExplainFn, x: Array, shifts: Any) -> ShiftResult:
    """Move one image (H, W, C) horizontally: x_s = shift_image(x, s, 0) for s in ``shifts``.

    Records f(x_s), R(x_s), the relevance per quadrant (split at H//2, W//2) and the path
    continuity max_s ||R_{s+1} - R_s||_1 / ||x_{s+1} - x_s||_2 (Montavon et al. 2018, Sec. 7.1).
    """
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"shift_protocol expects one image (H, W, C), got shape {x.shape}")
    s = jnp.asarray(shifts, jnp.float32)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(f"shifts must be a 1-D array of >= 2 horizontal shifts, got {s.shape}")
    xs = jax.vmap(lambda d: shift_image(x, d, 0.0))(s)
    scores = _call(f, xs, None, (s.shape[0],), "f")
    rel = np.asarray(_call(explain, xs, None, xs.shape, "explain"))
    finite = np.isfinite(rel).reshape(s.shape[0], -1).all(1)
    if not finite.all():
        raise ValueError(f"explain returned NaN or inf at shifts {np.asarray(s)[~finite].tolist()}")
    h2, w2 = x.shape[0] // 2, x.shape[1] // 2
    quads = np.stack([rel[:, :h2, :w2].sum((1, 2, 3)), rel[:, :h2, w2:].sum((1, 2, 3)),
                       rel[:, h2:, :w2].sum((1, 2, 3)), rel[:, h2:, w2:].sum((1, 2, 3))], axis=1)
    ratios = _pair_ratios(np.asarray(xs).reshape(1, s.shape[0], -1),
                          rel.reshape(1, s.shape[0], -1), _pairs(s.shape[0], "consecutive"))[0]
    return ShiftResult(s, xs, scores, jnp.asarray(rel), jnp.asarray(quads), jnp.asarray(ratios),
                       float(ratios.max()))
