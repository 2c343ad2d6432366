"""Selectivity: pixel flipping and region perturbation (MoRF), their curves, AUC and AOPC.

* Pixel flipping (Montavon et al. 2018, Sec. 7.2): record f(x); find the most relevant region
  of the *current* x; remove it; repeat. Relevance computed once (``recompute=False``) or on
  every perturbed input (``recompute=True``, the paper's box).
* Region perturbation (Samek et al. 2017, "Evaluating the visualization of what a deep neural
  network has learned", IEEE TNNLS 28(11)): x^k = g(x^{k-1}, r_k), g replaces a 9 x 9 region
  around location r_k by uniform noise; AOPC = 1/(L+1) sum_{k=0..L} (f(x^0) - f(x^k)), reported
  relative to a random order.

Everything takes plain callables: ``f: (N,H,W,C) -> (N,)`` (or ``(N, K)`` with ``n_scores=K``:
K scores of the same inputs, e.g. :func:`class_score` with a tuple) is the score of the explained
class and ``explain: (N,H,W,C) -> (N,H,W,C)`` the relevance map; with ``targets`` both are called
as ``f(x, t)`` / ``explain(x, t)``. Both run inside ``jax.jit`` as static arguments, so arrays
they close over are compiled in as constants: pass a model's parameters through a
``jax.tree_util.Partial(fn, params)`` or a module that is a pytree of arrays (an NNX module) and
they become traced arguments instead (one compilation serves every parameter value).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrpjax.curves import SCORES, class_score, curve_aopc, curve_auc, relative_aopc
from lrpjax.selectivity_checks import (
    _bad,
    _call,
    _check_nhwc,
    _grid,
    _join,
    _n_regions,
    _replacement,
    _rng,
    _split,
)

__all__ = [
    "SCORES", "FlipResult", "RegionResult", "class_score", "curve_aopc", "curve_auc",
    "flip_order", "patch_relevance", "pixel_flipping", "region_perturbation", "relative_aopc",
    "window_relevance",
]

Array = jax.Array
ScoreFn = Callable[..., Array]
ExplainFn = Callable[..., Array]


class FlipResult(NamedTuple):
    """Output of :func:`pixel_flipping` (N images, L steps, K scores when f returns (N, K))."""

    curves: Array  # (N, [K,] L+1): f(x^k) after k removals, k = 0..L
    auc: Array  # (N, [K]): curve_auc(curves); NaN only where nan_mask
    aopc: Array  # (N, [K]): curve_aopc(curves); NaN only where nan_mask
    mean_curve: Array  # ([K,] L+1): mean of the curves over the images not in nan_mask
    order: Array  # (N, L): region index removed at step k (row-major); -1: none was left
    nan_mask: Array  # (N,): True where f gave a non-finite value (nan_policy="mask")


class RegionResult(NamedTuple):
    """Output of :func:`region_perturbation`: S noise seeds, averaged per image."""

    curves: Array  # (N, [K,] L+1): mean over the seeds of f(x^k)
    seed_curves: Array  # (S, N, [K,] L+1)
    auc: Array  # (N, [K]): curve_auc(curves)
    aopc: Array  # (N, [K]): curve_aopc(curves) = mean over seeds of each seed's AOPC
    mean_curve: Array  # ([K,] L+1)
    order: Array  # (S, N, L)
    nan_mask: Array  # (N,): non-finite f for some seed (nan_policy="mask")


# ----------------------------------------------------------------------------- regions
def patch_relevance(relevance: Array, patch: int = 4) -> Array:
    """Patch relevance R_P = sum_{(i,j) in P} sum_c R_{ijc} on non-overlapping blocks.

    Returns (N, H/p, W/p).
    """
    _check_nhwc(relevance, "relevance")
    gh, gw = _grid(relevance.shape, patch)
    n, _, _, c = relevance.shape
    return jnp.asarray(relevance).reshape(n, gh, patch, gw, patch, c).sum(axis=(2, 4, 5))


def window_relevance(relevance: Array, size: int = 9) -> Array:
    """R_w(i, j) = sum over the size x size window centred on (i, j) of sum_c R (zeros outside
    the image) -> (N, H, W); ``size`` odd."""
    _check_nhwc(relevance, "relevance")
    _n_regions(np.shape(relevance), size, "windows")
    r = size // 2
    return jax.lax.reduce_window(jnp.asarray(relevance).sum(-1), 0.0, jax.lax.add,
                                 (1, size, size), (1, 1, 1), ((0, 0), (r, r), (r, r)))


def flip_order(relevance: Array, patch: int = 4) -> Array:
    """MoRF order: flat patch indices by decreasing R_P (ties: lower index first) -> (N, P)."""
    pr = patch_relevance(relevance, patch)
    return jnp.argsort(-pr.reshape(pr.shape[0], -1), axis=1, stable=True)


def _region_scores(rel: Array, patch: int, windows: bool) -> Array:
    scores = window_relevance(rel, patch) if windows else patch_relevance(rel, patch)
    return scores.reshape(rel.shape[0], -1)


def _region_mask(choice: Array, h: int, w: int, patch: int, windows: bool) -> Array:
    """(b,) region indices -> (b, H, W) pixels of the patch / of the window centred there."""
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    if windows:
        ci, cj = (choice // w)[:, None, None], (choice % w)[:, None, None]
        return (jnp.abs(rows - ci) <= patch // 2) & (jnp.abs(cols - cj) <= patch // 2)
    ci, cj = (choice // (w // patch))[:, None, None], (choice % (w // patch))[:, None, None]
    return (rows // patch == ci) & (cols // patch == cj)


# ----------------------------------------------------------------------------- the loop
_STATIC = ("f_def", "e_def", "patch", "windows", "n_scores")


def _step(carry, scorec, replc, tc, f, explain, patch, windows, n_scores):
    """One removal: the highest-scoring available region of x^{k-1} -> x^k, f(x^k), choice."""
    xk, removed, bad = carry
    b, h, w, _ = xk.shape
    if scorec is None:  # greedy: most relevant available region of explain(x^{k-1})
        scorec = _region_scores(_call(explain, xk, tc, xk.shape, "explain"), patch, windows)
        bad = bad | ~jnp.isfinite(scorec).all(1)
    # a patch is available until removed; a window while its centre pixel is intact
    avail = ~(removed if windows else removed[:, ::patch, ::patch]).reshape(b, -1)
    choice = jnp.argmax(jnp.where(avail, scorec, -jnp.inf), axis=1)  # ties: lowest index
    left = avail.any(1)
    mask = _region_mask(choice, h, w, patch, windows) & left[:, None, None]
    xk = jnp.where(mask[..., None], replc, xk)
    fk = _call(f, xk, tc, (b,) if n_scores == 1 else (b, n_scores), "f")
    return (xk, removed | mask, bad), (fk, jnp.where(left, choice, -1))


@partial(jax.jit, static_argnames=_STATIC)
def _flip_start(xc, tc, f_leaves, *, f_def, e_def, patch, windows, n_scores):
    b, h, w, _ = xc.shape
    f0 = _call(_join(f_def, f_leaves), xc, tc, (b,) if n_scores == 1 else (b, n_scores), "f")
    return f0, (xc, jnp.zeros((b, h, w), bool), jnp.zeros((b,), bool))


@partial(jax.jit, static_argnames=_STATIC)
def _flip_step(carry, replc, tc, f_leaves, e_leaves, *, f_def, e_def, patch, windows, n_scores):
    return _step(carry, None, replc, tc, _join(f_def, f_leaves), _join(e_def, e_leaves), patch,
                 windows, n_scores)


@partial(jax.jit, static_argnames=(*_STATIC, "n_steps"))
def _flip_scan(xc, scorec, replc, tc, f_leaves, e_leaves, *, f_def, e_def, patch, windows,
               n_scores, n_steps):
    """Relevance fixed: a lax.scan over the steps (explain(x) first when scorec is None)."""
    f, explain = _join(f_def, f_leaves), _join(e_def, e_leaves)
    f0, (x0, removed, bad) = _flip_start.__wrapped__(xc, tc, f_leaves, f_def=f_def, e_def=e_def,
                                                     patch=patch, windows=windows,
                                                     n_scores=n_scores)
    if scorec is None:
        scorec = _region_scores(_call(explain, xc, tc, xc.shape, "explain"), patch, windows)
        bad = ~jnp.isfinite(scorec).all(1)
    (_, _, bad), (fs, chosen) = jax.lax.scan(
        lambda c, _: _step(c, scorec, replc, tc, f, explain, patch, windows, n_scores),
        (x0, removed, bad), None, length=n_steps)
    return f0, fs, chosen, bad


def _flip_run(xc, scorec, replc, tc, f_leaves, e_leaves, *, recompute, n_steps, **static):
    """One chunk -> curves (b, [K,] L+1), chosen (b, L), bad (b,). Recomputation runs one
    jitted step per removal from Python: inside a lax.scan XLA:CPU (jax 0.10.2) ran the
    explanation 5-6x slower than the same jitted step called in a loop (measured, 2 cores)."""
    if recompute:
        f0, carry = _flip_start(xc, tc, f_leaves, **static)
        outs = []
        for _ in range(n_steps):
            carry, out = _flip_step(carry, replc, tc, f_leaves, e_leaves, **static)
            outs.append(out)
        fs, chosen = jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])
        bad = carry[2]
    else:
        f0, fs, chosen, bad = _flip_scan(xc, scorec, replc, tc, f_leaves, e_leaves,
                                         n_steps=n_steps, **static)
    return jnp.concatenate([f0[..., None], jnp.moveaxis(fs, 0, -1)], axis=-1), chosen.T, bad


def pixel_flipping(
    f: ScoreFn,
    x: Array,
    relevance: Array | None = None,
    *,
    explain: ExplainFn | None = None,
    patch: int = 4,
    regions: str = "patches",
    replacement: str | float | Array = "black",
    steps: int | None = None,
    recompute: bool = False,
    order: str = "relevance",
    key: Array | None = None,
    data_min: float = 0.0,
    data_max: float = 1.0,
    data_mean: float | Array | None = None,
    targets: Array | None = None,
    n_scores: int = 1,
    batch_size: int = 250,
    nan_policy: str = "raise",
) -> FlipResult:
    """Pixel flipping / region perturbation, MoRF: curves c_k = f(x^k), k = 0..L.

    x^0 = x; x^k = x^{k-1} with the region of highest relevance R_r = sum_{p in r} R_p among
    the available ones replaced (all channels). ``regions="patches"``: non-overlapping
    ``patch`` x ``patch`` tiles (``patch`` must divide H and W), each removed once;
    ``"windows"``: the ``patch`` x ``patch`` window centred on every pixel (odd ``patch``),
    available while its centre pixel is intact (Samek et al. 2017); order -1 once none is left.
    R: computed once from ``relevance`` or ``explain(x)``, recomputed as explain(x^{k-1}) at
    every step (``recompute=True``, Montavon et al. 2018, Sec. 7.2), or a random priority per
    image (``order="random"``, needs ``key``). Ties: lowest region index first.

    replacement: ``"black"`` = ``data_min``; ``"mean"`` = ``data_mean`` (scalar or image);
    ``"noise"`` = U[data_min, data_max) drawn once per pixel, channel and image (needs ``key``;
    a pixel keeps its noise value when removed again); a number or an array broadcastable to x.
    steps: L, default every region. targets: (N,) per image; f and explain are then called as
    ``f(x, t)`` / ``explain(x, t)``. n_scores: K > 1 when f returns (N, K) scores of the same
    inputs (e.g. :func:`class_score` with K names): curves (N, K, L+1). nan_policy:
    ``"raise"`` or ``"mask"`` (non-finite f is reported in ``nan_mask``, auc/aopc NaN there).
    Non-finite relevance always raises.
    Returns curves, ``auc`` = 1/L sum_k (c_{k-1}+c_k)/2 (lower = more selective) and ``aopc`` =
    1/(L+1) sum_k (c_0 - c_k), per image. Per ``batch_size`` images: one jitted ``lax.scan``
    (relevance fixed) or L calls of one jitted step (``recompute=True``).
    """
    xn = np.asarray(x)
    _check_nhwc(xn, "x")
    if not np.issubdtype(xn.dtype, np.floating):
        xn = xn.astype(np.float32)
    n = xn.shape[0]
    n_reg = _n_regions(xn.shape, patch, regions)
    n_steps = n_reg if steps is None else int(steps)
    if not 1 <= n_steps <= n_reg:
        raise ValueError(f"steps must be in [1, {n_reg}] (number of regions), got {steps}")
    if order not in ("relevance", "random"):
        raise ValueError(f"unknown order {order!r}: use 'relevance' or 'random'")
    if nan_policy not in ("raise", "mask"):
        raise ValueError(f"unknown nan_policy {nan_policy!r}: use 'raise' or 'mask'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(n_scores, (int, np.integer)) or n_scores < 1:
        raise ValueError(f"n_scores must be an integer >= 1, got {n_scores!r}")
    if not np.isfinite(xn).all():
        raise ValueError("x contains NaN or inf")
    rn = None
    if relevance is not None:
        rn = np.asarray(relevance, dtype=xn.dtype)
        if rn.shape != xn.shape:
            raise ValueError(f"relevance shape {rn.shape} differs from x shape {xn.shape}")
        finite = np.isfinite(rn).reshape(n, -1).all(1)
        if not finite.all():
            raise ValueError(f"relevance contains NaN or inf for {_bad(~finite)}")
    if order == "random":
        if recompute:
            raise ValueError("recompute=True needs order='relevance'")
    elif recompute:
        if explain is None or relevance is not None:
            raise ValueError("recompute=True needs explain (and no relevance): R is recomputed "
                             "on every perturbed input")
    elif (relevance is None) == (explain is None):
        raise ValueError("pass exactly one of relevance or explain")
    if targets is not None and np.shape(targets)[:1] != (n,):
        raise ValueError(f"targets must have leading dimension N={n}, got {np.shape(targets)}")
    repl = _replacement(replacement, xn, data_min, data_max, data_mean)
    noise = repl is None
    if (noise or order == "random") and key is None:
        what = "replacement='noise'" if noise else "order='random'"
        raise ValueError(f"{what} needs a PRNG key (key=jax.random.key(0))")
    scores = None
    if order == "random":  # one independent uniform priority order per image
        perm = _rng(key, 0).permuted(np.tile(np.arange(n_reg), (n, 1)), axis=1)
        scores = np.empty((n, n_reg), np.float32)
        np.put_along_axis(scores, perm, np.arange(n_reg, 0, -1, dtype=np.float32), axis=1)
    elif rn is not None:
        scores = np.asarray(_region_scores(jnp.asarray(rn), patch, regions == "windows"))
    if noise:  # drawn for all images at once: results do not depend on batch_size
        repl = _rng(key, 1).uniform(data_min, data_max, xn.shape).astype(xn.dtype)

    f_def, f_leaves = _split(f)
    e_def, e_leaves = _split(explain if scores is None else None)
    bs = min(batch_size, n)
    curves, orders, bads = [], [], []
    for start in range(0, n, bs):  # pad the last chunk so that one compilation serves all
        idx = np.minimum(np.arange(start, start + bs), n - 1)
        m = min(bs, n - start)
        out = _flip_run(xn[idx], None if scores is None else scores[idx], repl[idx],
                        None if targets is None else np.asarray(targets)[idx], f_leaves,
                        e_leaves, f_def=f_def, e_def=e_def, recompute=recompute, patch=patch,
                        windows=regions == "windows", n_steps=n_steps, n_scores=int(n_scores))
        for acc, o in zip((curves, orders, bads), out):
            acc.append(np.asarray(o)[:m])
    cur, bad = np.concatenate(curves), np.concatenate(bads)
    if bad.any():
        raise ValueError(f"explain returned NaN or inf relevance for {_bad(bad)}")
    nan_mask = ~np.isfinite(cur).reshape(n, -1).all(axis=1)
    if nan_policy == "raise" and nan_mask.any():
        raise ValueError(f"f returned NaN or inf for {_bad(nan_mask)} "
                         "(use nan_policy='mask' to keep going)")
    keep = ~nan_mask
    mean_curve = cur[keep].mean(0) if keep.any() else np.full(cur.shape[1:], np.nan)
    nan_b = nan_mask.reshape((n,) + (1,) * (cur.ndim - 2))
    out = (cur, np.where(nan_b, np.nan, curve_auc(cur)), np.where(nan_b, np.nan, curve_aopc(cur)),
           mean_curve, np.concatenate(orders), nan_mask)
    return FlipResult(*(jnp.asarray(a) for a in out))


def region_perturbation(
    f: ScoreFn,
    x: Array,
    relevance: Array | None = None,
    *,
    key: Array,
    size: int = 9,
    steps: int | None = None,
    n_seeds: int = 5,
    order: str = "relevance",
    data_min: float = 0.0,
    data_max: float = 1.0,
    targets: Array | None = None,
    n_scores: int = 1,
    batch_size: int = 250,
    nan_policy: str = "raise",
) -> RegionResult:
    """Region perturbation (Samek et al. 2017, Alg. 1): ``size`` x ``size`` windows around the
    locations of highest window relevance replaced by U[data_min, data_max) noise, MoRF.

    :func:`pixel_flipping` with ``regions="windows"``, ``replacement="noise"``, run for
    ``n_seeds`` independent noise draws (and random orders for ``order="random"``, which
    ignores ``relevance``) in one batch; curves, AUC and AOPC are averaged over the seeds per
    image. Relevance is computed once, on x. Compare methods by :func:`relative_aopc`.
    Choices made here (the paper's ImageNet setting leaves them open for small images): a
    location's priority is the relevance summed over its window, and a window whose centre
    was already perturbed is skipped, so every step removes new pixels.
    """
    if not isinstance(n_seeds, (int, np.integer)) or isinstance(n_seeds, bool) or n_seeds < 1:
        raise ValueError(f"n_seeds must be an integer >= 1, got {n_seeds!r}")
    if key is None:
        raise ValueError("region_perturbation needs a PRNG key (key=jax.random.key(0))")
    if nan_policy not in ("raise", "mask"):
        raise ValueError(f"unknown nan_policy {nan_policy!r}: use 'raise' or 'mask'")
    xn = np.asarray(x)
    _check_nhwc(xn, "x")
    n = xn.shape[0]
    if order == "random":
        relevance = None
    elif relevance is None:
        raise ValueError("region_perturbation needs relevance (computed once on x) unless "
                         "order='random'")
    if targets is not None and np.shape(targets)[:1] != (n,):
        raise ValueError(f"targets must have leading dimension N={n}, got {np.shape(targets)}")

    def tile(a: Any) -> Any:  # seed-major: row s * N + i is image i under seed s
        return None if a is None else np.tile(np.asarray(a), (n_seeds,) + (1,) * (np.ndim(a) - 1))

    res = pixel_flipping(f, tile(xn), tile(relevance), patch=size, regions="windows",
                         replacement="noise", steps=steps, order=order, key=key,
                         data_min=data_min, data_max=data_max, targets=tile(targets),
                         n_scores=n_scores, batch_size=batch_size, nan_policy="mask")
    seed_curves = np.asarray(res.curves).reshape(n_seeds, n, *res.curves.shape[1:])
    nan_mask = np.asarray(res.nan_mask).reshape(n_seeds, n).any(0)
    if nan_policy == "raise" and nan_mask.any():
        raise ValueError(f"f returned NaN or inf for {_bad(nan_mask)} "
                         "(use nan_policy='mask' to keep going)")
    cur = seed_curves.mean(0)
    keep = ~nan_mask
    nan_b = nan_mask.reshape((n,) + (1,) * (cur.ndim - 2))
    out = (cur, seed_curves, np.where(nan_b, np.nan, curve_auc(cur)),
           np.where(nan_b, np.nan, curve_aopc(cur)),
           cur[keep].mean(0) if keep.any() else np.full(cur.shape[1:], np.nan),
           np.asarray(res.order).reshape(n_seeds, n, -1), nan_mask)
    return RegionResult(*(jnp.asarray(a) for a in out))
