"""Faithfulness of token attributions: the perturbation protocol of AttnLRP.

Achtibat et al. ("AttnLRP: attention-aware layer-wise relevance propagation for transformers",
ICML 2024, Sec. 4) measure how faithful an attribution R (one value per input token) is by
removing tokens -- their input embeddings set to zero -- in the order of R and recording the
explained score f (a logit, a similarity) after each step:

* MoRF (most relevant first): a faithful R makes f fall fast;
* LeRF (least relevant first): a faithful R keeps f high for long;
* the *area between the curves* (Blücher et al., "Decoupling pixel flipping and occlusion
  strategy for consistent XAI benchmarks", TMLR 2024), on a unit axis of the fraction removed,

      ABC = AUC(LeRF) - AUC(MoRF),   AUC(c) = sum_j (phi_j - phi_{j-1}) (c_{j-1} + c_j) / 2,

  higher = more faithful; a random order gives ABC ~ 0 in expectation.

With n_i removable tokens in prompt i and ``steps`` = S, step j (j = 0..S) removes the first
k_ij = floor(j n_i / S + 1/2) tokens of the order (S = n_i: one token per step), so prompts of
different lengths share the axis phi_j = j / S. Step 0 (nothing removed) and step S (every
removable token removed) do not depend on the order: they are evaluated once per prompt and
shared by all methods and both orders. All steps of all methods for a chunk of prompts are one
batched call of the score, compiled once per call of :func:`perturbation_curves` (equal-sized
chunks: the last is padded by repeating its last prompt).

Confidence intervals over prompts, and paired comparisons of two methods on the same prompts:
:mod:`lrpjax.bootstrap` (``bootstrap_ci(result.abc)``, ``paired_bootstrap(a.abc, b.abc)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Curves", "area_between_curves", "curve_area", "perturbation_curves", "removal_counts",
           "removal_ranks"]

Array = jax.Array


class Curves(NamedTuple):
    """The perturbation curves of one attribution for N prompts and S steps."""

    morf: np.ndarray  # (N, S+1): the score after removing k_ij tokens, most relevant first
    lerf: np.ndarray  # (N, S+1): the same, least relevant first
    fractions: np.ndarray  # (S+1,): phi_j = j / S, the nominal fraction removed
    counts: np.ndarray  # (N, S+1): k_ij, the tokens removed at step j
    abc: np.ndarray  # (N,): area_between_curves(morf, lerf, fractions)


def curve_area(curves: Any, fractions: Any) -> np.ndarray:
    """Trapezoidal area under each curve (.., S+1) on the axis ``fractions`` (S+1,):
    sum_j (phi_j - phi_{j-1}) (c_{j-1} + c_j) / 2 (float64)."""
    c, phi = np.asarray(curves, np.float64), np.asarray(fractions, np.float64)
    if phi.ndim != 1 or c.shape[-1] != phi.shape[0] or phi.shape[0] < 2:
        raise ValueError(f"curves {c.shape} and fractions {phi.shape} do not match (need the "
                         "same last axis, >= 2 points)")
    return (np.diff(phi) * (c[..., 1:] + c[..., :-1]) / 2).sum(-1)


def area_between_curves(morf: Any, lerf: Any, fractions: Any) -> np.ndarray:
    """ABC = AUC(LeRF) - AUC(MoRF) per curve (higher = more faithful)."""
    return curve_area(lerf, fractions) - curve_area(morf, fractions)


def removal_counts(n: Any, steps: int) -> np.ndarray:
    """k_ij = floor(j n_i / S + 1/2): tokens removed at step j = 0..S of a prompt with n_i
    removable tokens -> (N, S+1) int, from 0 to n_i, non-decreasing."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    n = np.asarray(n, np.int64)
    j = np.arange(steps + 1, dtype=np.int64)
    return (2 * j[None, :] * n[:, None] + steps) // (2 * steps)  # exact integer rounding


def removal_ranks(relevance: Any, mask: Any = None, most_relevant_first: bool = True
                  ) -> np.ndarray:
    """The position of each token in the removal order -> (N, T) int: token t of prompt i is
    removed at a step that removes k > rank[i, t] tokens. Ties keep the token order (stable);
    tokens outside ``mask`` (N, T) rank last (>= n_i), so they are never removed."""
    r = np.asarray(relevance, np.float64)
    if r.ndim != 2:
        raise ValueError(f"relevance must be one value per token (N, T), got shape {r.shape}")
    m = np.ones(r.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != r.shape:
        raise ValueError(f"mask of shape {m.shape} does not match the relevance {r.shape}")
    if not np.isfinite(r[m]).all():
        raise ValueError("relevance is not finite (NaN or inf) at a removable token")
    key = np.where(m, -r if most_relevant_first else r, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(r.shape[1])[None, :], axis=1)
    return ranks


def _check(x: Array, relevance: Mapping[str, Any], mask: Any, baseline: Any
           ) -> tuple[np.ndarray, Array]:
    if x.ndim < 2:
        raise ValueError(f"x must be (N, T, ...) (prompts, tokens, embedding), got {x.shape}")
    n, t = x.shape[:2]
    for name, r in relevance.items():
        if np.shape(r) != (n, t):
            raise ValueError(f"relevance {name!r} has shape {np.shape(r)}, expected one value "
                             f"per token {(n, t)} (sum over the embedding axis first)")
    m = np.ones((n, t), bool) if mask is None else np.asarray(mask, bool)
    if m.shape != (n, t):
        raise ValueError(f"mask of shape {m.shape} does not match the tokens {(n, t)}")
    if not m.any(axis=1).all():
        raise ValueError("a prompt has no removable token (mask all False)")
    base = jnp.asarray(baseline, x.dtype)
    try:
        np.broadcast_shapes(base.shape, x.shape[2:])
    except ValueError:
        raise ValueError(f"baseline of shape {base.shape} does not broadcast to one token "
                         f"{x.shape[2:]}") from None
    return m, base


def perturbation_curves(score: Callable[..., Array], x: Any, relevance: Any, *,
                        mask: Any = None, steps: int | None = None, baseline: Any = 0.0,
                        context: tuple = (), batch: int = 8) -> Curves | dict[str, Curves]:
    """MoRF and LeRF curves and their area between (AttnLRP's faithfulness protocol).

    Args:
        score: ``score(x, *context) -> (B,)``, the explained score of a batch of inputs
            (B, T, ...) (e.g. the logit of the explained token); JAX-traceable.
        x: the explained inputs (N, T, ...): N prompts of T token embeddings.
        relevance: one relevance per token (N, T) (sum over the embedding axis), or a dict
            ``{method: (N, T)}``: then all methods are evaluated together.
        mask: (N, T) bool, the removable tokens (default: all); padding and special tokens
            that should stay are False.
        steps: S, points 0..S on the axis of the fraction removed (default: the largest
            number of removable tokens, one token per step).
        baseline: what a removed token's embedding becomes (default 0, as AttnLRP).
        context: arrays with a leading axis N passed on to ``score`` per prompt (targets,
            reference embeddings, ...).
        batch: prompts per call of the score (each brings 2 + 2 M (S - 1) perturbed copies
            for M methods).

    Returns:
        :class:`Curves` (a dict of them for a dict of relevances).
    """
    x = jnp.asarray(x)
    single = not isinstance(relevance, Mapping)
    rel = {"relevance": relevance} if single else dict(relevance)
    if not rel:
        raise ValueError("no relevance given")
    mask, base = _check(x, rel, mask, baseline)
    n_prompts, n_tokens = x.shape[:2]
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    n_removable = mask.sum(axis=1)
    steps = int(n_removable.max()) if steps is None else steps
    ks = removal_counts(n_removable, steps)  # (N, S+1)
    ctx = tuple(jnp.asarray(c) for c in context)
    for c in ctx:
        if c.ndim == 0 or c.shape[0] != n_prompts:
            raise ValueError(f"context arrays need a leading axis of {n_prompts} prompts, got "
                             f"shape {c.shape}")

    # copies per prompt: [nothing removed, all removed, (method, order, step 1..S-1)...]
    never = np.full((n_prompts, n_tokens), n_tokens)  # a rank no count reaches
    every = np.where(mask, 0, n_tokens)  # every removable token goes at k = n_i >= 1
    rank_rows, count_rows = [never, every], [ks[:, 0], ks[:, -1]]
    for r in rel.values():
        for first in (True, False):
            ranks = removal_ranks(r, mask, most_relevant_first=first)
            rank_rows += [ranks] * (steps - 1)
            count_rows += [ks[:, j] for j in range(1, steps)]
    ranks = np.stack(rank_rows, axis=1).astype(np.int32)  # (N, C, T)
    counts = np.stack(count_rows, axis=1).astype(np.int32)  # (N, C)
    copies = ranks.shape[1]

    @jax.jit
    def chunk(xc: Array, rc: Array, kc: Array, *cc: Array) -> Array:
        removed = rc < kc[:, :, None]  # (b, C, T)
        xs = jnp.where(removed.reshape(*removed.shape, *([1] * (xc.ndim - 2))),
                       base, xc[:, None])  # (b, C, T, ...)
        flat = xs.reshape(-1, *xc.shape[1:])
        rep = tuple(jnp.repeat(c, copies, axis=0) for c in cc)
        out = score(flat, *rep)
        if out.shape != (flat.shape[0],):
            raise ValueError(f"score must return one value per input, shape "
                             f"{(flat.shape[0],)}, got {out.shape}")
        return out.reshape(xc.shape[0], copies)

    batch = min(int(batch), n_prompts)
    values = []
    for start in range(0, n_prompts, batch):
        idx = np.minimum(np.arange(start, start + batch), n_prompts - 1)  # pad: repeat last
        out = chunk(x[idx], jnp.asarray(ranks[idx]), jnp.asarray(counts[idx]),
                    *(c[idx] for c in ctx))
        values.append(np.asarray(out, np.float64)[: n_prompts - start])
    y = np.concatenate(values)  # (N, C)

    fractions = np.arange(steps + 1) / steps
    result, col = {}, 2
    for name in rel:
        curves = []
        for _ in range(2):  # MoRF, LeRF
            curves.append(np.concatenate([y[:, :1], y[:, col:col + steps - 1], y[:, 1:2]], 1))
            col += steps - 1
        result[name] = Curves(curves[0], curves[1], fractions, ks,
                              area_between_curves(curves[0], curves[1], fractions))
    return result["relevance"] if single else result

