"""Scores and curves of selectivity: bounded class scores, AUC, AOPC, AOPC relative to random.

The raw logit is unbounded below, so a pixel-flipping curve of it can go negative and its area
can cancel; ``max(0, z_c)`` and ``p(omega_c | x)`` are bounded below by 0, so their areas
cannot (Montavon et al. 2018, Sec. 7.2). AOPC follows Samek et al. 2017, Eq. 12.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SCORES", "class_score", "curve_aopc", "curve_auc", "relative_aopc"]

Array = jax.Array
ScoreFn = Callable[..., Array]

SCORES = ("logit", "relu_logit", "probability")


@cache
def _score_fn(kinds: tuple[str, ...]) -> Callable[..., Array]:
    def score(logits_fn: Callable[[Array], Array], x: Array, t: Array | None = None) -> Array:
        if t is None:
            raise ValueError("class_score scores the targets' classes: pass targets= to "
                             "pixel_flipping / region_perturbation")
        z = logits_fn(x)
        t = jnp.asarray(t, jnp.int32)[:, None]
        logit = jnp.take_along_axis(z, t, axis=1)[:, 0]
        out = {"logit": lambda: logit, "relu_logit": lambda: jnp.maximum(logit, 0.0),
               "probability": lambda: jnp.take_along_axis(jax.nn.softmax(z, -1), t, 1)[:, 0]}
        return jnp.stack([out[k]() for k in kinds], axis=1) if len(kinds) > 1 else out[kinds[0]]()

    return score


def class_score(logits_fn: Callable[[Array], Array], score: str | Sequence[str] = "probability"
                ) -> ScoreFn:
    """The score of class t as ``f(x, t)``: ``"logit"`` z_t, ``"relu_logit"`` max(0, z_t) or
    ``"probability"`` p(omega_t | x) = softmax(z)_t; a tuple of names gives (N, K) scores.

    ``logits_fn: (N, H, W, C) -> (N, classes)``; pass a ``jax.tree_util.Partial`` to keep its
    parameters traced. The result is a ``jax.tree_util.Partial`` (same names -> same function,
    so repeated calls reuse one compilation).
    """
    kinds = (score,) if isinstance(score, str) else tuple(score)
    unknown = [k for k in kinds if k not in SCORES]
    if not kinds or unknown:
        raise ValueError(f"unknown score {unknown or score!r}: use one or more of {SCORES}")
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    return jax.tree_util.Partial(_score_fn(kinds), logits_fn)


# ----------------------------------------------------------------------------- curves
def curve_auc(curves: Array) -> Array:
    """Trapezoidal area on a unit-length axis: AUC = 1/L sum_{k=1..L} (c_{k-1} + c_k)/2.

    Over the last axis; lower is more selective (Samek et al. 2017; Montavon et al. 2018, 7.2).
    """
    c = curves if isinstance(curves, jax.Array) else np.asarray(curves)
    return (c[..., :-1] + c[..., 1:]).sum(-1) / (2 * (c.shape[-1] - 1))


def curve_aopc(curves: Array) -> Array:
    """AOPC = 1/(L+1) sum_{k=0..L} (c_0 - c_k) over the last axis (Samek et al. 2017, Eq. 12)."""
    c = curves if isinstance(curves, jax.Array) else np.asarray(curves)
    return (c[..., :1] - c).mean(-1)


def relative_aopc(curves: Array, random_curves: Array) -> np.ndarray:
    """AOPC relative to random, per image: AOPC(c) - AOPC(r) (Samek et al. 2017, Fig. 4).

    Both curves start at f(x), so this is 1/(L+1) sum_k (r_k - c_k) (float64).
    """
    c, r = np.asarray(curves, np.float64), np.asarray(random_curves, np.float64)
    if c.shape != r.shape or c.ndim < 2 or c.shape[-1] < 2:
        raise ValueError(f"curves and random_curves must have one shape (N, ..., L+1), L >= 1; "
                         f"got {c.shape} and {r.shape}")
    return curve_aopc(c) - curve_aopc(r)
