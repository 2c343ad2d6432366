"""Quantitative evaluation of explanations: selectivity (pixel flipping) and continuity.

* Selectivity / region perturbation, MoRF (Samek et al. 2017, "Evaluating the visualization of
  what a deep neural network has learned", IEEE TNNLS 28(11); Montavon et al. 2018, Sec. 7.2):
  remove the most relevant patch, record f, repeat. AOPC = 1/(L+1) sum_{k=0..L} (f(x^0) - f(x^k)).
* Continuity (Montavon et al. 2018, Sec. 7.1): max_{x != x'} ||R(x) - R(x')||_1 / ||x - x'||_2.

Everything takes plain callables, so it works with any model:
``f: (N,H,W,C) -> (N,)`` is the score of the explained class and
``explain: (N,H,W,C) -> (N,H,W,C)`` the relevance map. Both must be JAX-traceable (they run inside
``jax.jit`` / ``lax.scan``). Scores are computed per sample; nothing is normalised over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ContinuityResult", "FlipResult", "ShiftResult", "continuity", "curve_aopc", "curve_auc",
    "flip_order", "patch_relevance", "pixel_flipping", "shift_image", "shift_protocol",
    "translations",
]

Array = jax.Array
ScoreFn = Callable[..., Array]
ExplainFn = Callable[..., Array]


class FlipResult(NamedTuple):
    """Output of :func:`pixel_flipping` (N images, L flipping steps)."""

    curves: Array  # (N, L+1): f(x^k) after k flips, k = 0..L
    auc: Array  # (N,): curve_auc(curves); NaN only where nan_mask
    aopc: Array  # (N,): curve_aopc(curves); NaN only where nan_mask
    mean_curve: Array  # (L+1,): mean of the curves over the images not in nan_mask
    order: Array  # (N, L): flat patch indices (row-major on the (H/p, W/p) grid) in flip order
    nan_mask: Array  # (N,): True where f gave a non-finite value (nan_policy="mask")


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


# ----------------------------------------------------------------------------- helpers
def _check_nhwc(x: Any, name: str) -> None:
    if np.ndim(x) != 4:
        raise ValueError(f"{name} must be a batch of images (N,H,W,C), got shape {np.shape(x)}")


def _grid(shape: tuple[int, ...], patch: int) -> tuple[int, int]:
    h, w = shape[1], shape[2]
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch={patch} does not divide the spatial shape (H, W) = {(h, w)}")
    return h // patch, w // patch


def patch_relevance(relevance: Array, patch: int = 4) -> Array:
    """Patch relevance R_P = sum_{(i,j) in P} sum_c R_{ijc} on non-overlapping blocks -> (N,H/p,W/p)."""
    _check_nhwc(relevance, "relevance")
    gh, gw = _grid(relevance.shape, patch)
    n, _, _, c = relevance.shape
    return jnp.asarray(relevance).reshape(n, gh, patch, gw, patch, c).sum(axis=(2, 4, 5))


def flip_order(relevance: Array, patch: int = 4) -> Array:
    """MoRF order: flat patch indices by decreasing R_P (ties: lower index first) -> (N, P)."""
    pr = patch_relevance(relevance, patch)
    return jnp.argsort(-pr.reshape(pr.shape[0], -1), axis=1, stable=True)


def curve_auc(curves: Array) -> Array:
    """Trapezoidal area on a unit-length axis: AUC = 1/L sum_{k=1..L} (c_{k-1} + c_k)/2 -> (N,).

    Lower is more selective (Samek et al. 2017; Montavon et al. 2018, Sec. 7.2).
    """
    c = curves if isinstance(curves, jax.Array) else np.asarray(curves)
    return (c[..., :-1] + c[..., 1:]).sum(-1) / (2 * (c.shape[-1] - 1))


def curve_aopc(curves: Array) -> Array:
    """AOPC = 1/(L+1) sum_{k=0..L} (c_0 - c_k), per curve (Samek et al. 2017, Eq. 12) -> (N,)."""
    c = curves if isinstance(curves, jax.Array) else np.asarray(curves)
    return (c[..., :1] - c).mean(-1)


def _call(fn: Callable[..., Array], x: Array, t: Array | None, shape: tuple[int, ...],
          name: str) -> Array:
    out = fn(x) if t is None else fn(x, t)
    if out.shape != shape:
        raise ValueError(f"{name} must return shape {shape} for input {x.shape}, got {out.shape}")
    return out


def _replacement(replacement: Any, x: np.ndarray, data_min: float, data_max: float,
                 data_mean: Any) -> np.ndarray | None:
    """Fixed replacement values as a broadcast view of x's shape; None means uniform noise."""
    if isinstance(replacement, str):
        if replacement == "noise":
            if not data_max > data_min:
                raise ValueError(f"replacement='noise' needs data_max > data_min, got "
                                 f"[{data_min}, {data_max}]")
            return None
        if replacement == "black":
            value = data_min
        elif replacement == "mean":
            if data_mean is None:
                raise ValueError("replacement='mean' needs data_mean (a scalar or the mean image)")
            value = data_mean
        else:
            raise ValueError(f"unknown replacement {replacement!r}: use 'black', 'mean', 'noise', "
                             "a number or an array")
    else:
        value = replacement
    arr = np.asarray(value, dtype=x.dtype)
    try:
        arr = np.broadcast_to(arr, x.shape)
    except ValueError:
        raise ValueError(f"replacement of shape {arr.shape} does not broadcast to x's shape "
                         f"{x.shape}") from None
    if not np.isfinite(arr).all():
        raise ValueError("replacement values contain NaN or inf")
    return arr


def _rng(key: Array, stream: int) -> np.random.Generator:
    """NumPy generator seeded by the bits of a JAX key (no threefry compile per shape)."""
    bits = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) \
        else key
    return np.random.default_rng([*np.asarray(bits, np.uint32).ravel().tolist(), stream])


def _bad(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    return f"{idx.size} image(s), indices {idx[:10].tolist()}{' ...' if idx.size > 10 else ''}"


# ----------------------------------------------------------------------------- pixel flipping
@partial(jax.jit, static_argnames=("f", "explain", "recompute", "patch", "n_steps"))
def _flip_run(xc, rc, replc, permc, tc, *, f, explain, recompute, patch, n_steps):
    """One chunk of pixel flipping as a scan over steps (compiled once per f/explain/settings)."""
    _, h, w, _ = xc.shape
    gh, gw = h // patch, w // patch
    n_patch = gh * gw
    b = xc.shape[0]
    bad = jnp.zeros((b,), bool)
    if permc is not None:
        ordc = permc[:, :n_steps]
    elif not recompute:
        if rc is None:
            rc = _call(explain, xc, tc, xc.shape, "explain")
            bad = ~jnp.isfinite(rc).reshape(b, -1).all(1)
        ordc = flip_order(rc, patch)[:, :n_steps]

    def step(carry, k):
        xk, flipped, bad = carry
        if recompute:  # greedy: most relevant unflipped patch of explain(x^{k-1})
            pr = patch_relevance(_call(explain, xk, tc, xk.shape, "explain"), patch)
            pr = pr.reshape(b, n_patch)
            bad = bad | ~jnp.isfinite(pr).all(1)
            choice = jnp.argmax(jnp.where(flipped, -jnp.inf, pr), axis=1)
        else:
            choice = ordc[:, k]
        onehot = jnp.arange(n_patch)[None, :] == choice[:, None]
        pix = jnp.broadcast_to(onehot.reshape(b, gh, 1, gw, 1, 1), (b, gh, patch, gw, patch, 1))
        xk = jnp.where(pix.reshape(b, h, w, 1), replc, xk)
        return (xk, flipped | onehot, bad), (_call(f, xk, tc, (b,), "f"), choice)

    f0 = _call(f, xc, tc, (b,), "f")
    init = (xc, jnp.zeros((b, n_patch), bool), bad)
    (_, _, bad), (fs, chosen) = jax.lax.scan(step, init, jnp.arange(n_steps))
    return jnp.concatenate([f0[:, None], fs.T], axis=1), chosen.T, bad


def pixel_flipping(
    f: ScoreFn,
    x: Array,
    relevance: Array | None = None,
    *,
    explain: ExplainFn | None = None,
    patch: int = 4,
    replacement: str | float | Array = "black",
    steps: int | None = None,
    recompute: bool = False,
    order: str = "relevance",
    key: Array | None = None,
    data_min: float = 0.0,
    data_max: float = 1.0,
    data_mean: float | Array | None = None,
    targets: Array | None = None,
    batch_size: int = 250,
    nan_policy: str = "raise",
) -> FlipResult:
    """Region perturbation, MoRF (Samek et al. 2017, Alg. 1): curves c_k = f(x^k), k = 0..L.

    x^0 = x and x^k = x^{k-1} with the k-th patch (``patch`` x ``patch`` pixels, all channels)
    replaced. The order is the decreasing patch relevance R_P = sum_P R (``recompute=False``:
    computed once from ``relevance`` or ``explain(x)``), the greedy argmax over the unflipped
    patches of explain(x^{k-1}) (``recompute=True``), or a random permutation per image
    (``order="random"``, needs ``key``). Returns the curves, ``auc`` = 1/L sum_k (c_{k-1}+c_k)/2
    (lower = more selective) and ``aopc`` = 1/(L+1) sum_k (c_0 - c_k), both per image.

    replacement: ``"black"`` = ``data_min``; ``"mean"`` = ``data_mean`` (scalar or image, required);
    ``"noise"`` = U[data_min, data_max) drawn independently for every pixel, channel and image
    (a pixel is flipped once, so each step sees fresh noise; needs ``key``); a number or an
    array broadcastable to x.
    steps: L, default all (H/p)(W/p) patches. targets: optional (N,) per-image array; if given,
    f and explain are called as ``f(x, t)`` / ``explain(x, t)`` with the chunk's targets (images
    are processed ``batch_size`` at a time, so a closure can only fix one class).
    nan_policy: ``"raise"`` (default) raises on non-finite f; ``"mask"`` reports it in
    ``nan_mask`` (auc/aopc NaN there, excluded from ``mean_curve``). Non-finite relevance always
    raises. Everything runs as one jitted ``lax.scan`` over steps per chunk of images.
    """
    xn = np.asarray(x)
    _check_nhwc(xn, "x")
    if not np.issubdtype(xn.dtype, np.floating):
        xn = xn.astype(np.float32)
    n = xn.shape[0]
    gh, gw = _grid(xn.shape, patch)
    n_patch = gh * gw
    n_steps = n_patch if steps is None else int(steps)
    if not 1 <= n_steps <= n_patch:
        raise ValueError(f"steps must be in [1, {n_patch}] (number of patches), got {steps}")
    if order not in ("relevance", "random"):
        raise ValueError(f"unknown order {order!r}: use 'relevance' or 'random'")
    if nan_policy not in ("raise", "mask"):
        raise ValueError(f"unknown nan_policy {nan_policy!r}: use 'raise' or 'mask'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        rn = None  # the random baseline ignores relevance
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
    perms = None
    if noise or order == "random":
        if key is None:
            what = "replacement='noise'" if noise else "order='random'"
            raise ValueError(f"{what} needs a PRNG key (key=jax.random.key(0))")
        if order == "random":  # one independent uniform permutation per image
            perms = _rng(key, 0).permuted(np.tile(np.arange(n_patch), (n, 1)), axis=1)
        if noise:  # drawn for all images at once: results do not depend on batch_size
            repl = _rng(key, 1).uniform(data_min, data_max, xn.shape).astype(xn.dtype)

    bs = min(batch_size, n)
    curves, orders, bads = [], [], []
    for start in range(0, n, bs):  # pad the last chunk so that one compilation serves all
        idx = np.minimum(np.arange(start, start + bs), n - 1)
        m = min(bs, n - start)
        out = _flip_run(xn[idx], None if rn is None else rn[idx], repl[idx],
                        None if perms is None else perms[idx],
                        None if targets is None else np.asarray(targets)[idx], f=f,
                        explain=None if rn is not None or perms is not None else explain,
                        recompute=recompute, patch=patch, n_steps=n_steps)
        for acc, o in zip((curves, orders, bads), out):
            acc.append(np.asarray(o)[:m])
    cur, bad = np.concatenate(curves), np.concatenate(bads)
    if bad.any():
        raise ValueError(f"explain returned NaN or inf relevance for {_bad(bad)}")
    nan_mask = ~np.isfinite(cur).all(axis=1)
    if nan_policy == "raise" and nan_mask.any():
        raise ValueError(f"f returned NaN or inf for {_bad(nan_mask)} "
                         "(use nan_policy='mask' to keep going)")
    mean_curve = cur[~nan_mask].mean(0) if (~nan_mask).any() else np.full(n_steps + 1, np.nan)
    out = (cur, np.where(nan_mask, np.nan, curve_auc(cur)),
           np.where(nan_mask, np.nan, curve_aopc(cur)), mean_curve, np.concatenate(orders), nan_mask)
    return FlipResult(*(jnp.asarray(a) for a in out))


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
