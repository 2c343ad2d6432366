"""Wrappers: explanation methods built on top of any explain callable ``x -> R``.

* :func:`translation_trick` - Montavon et al. (2018), Sec. 6 (recommendations): explain the
  translation-averaged function f̄(x) = 1/|T| sum_{τ in T} f(τx) instead of f, i.e.

      R̄(x) = 1/|T| sum_{τ in T} τ^{-1} R(τx),

  where τ is a small integer translation with zero fill. This smooths heatmaps when the first-layer
  filters are noisy or strided (checkerboard artefacts). :func:`stride_shifts` gives the shift
  set that averages each pixel over all phases of a stride.
* :func:`stride_energy` - how much of a heatmap is a pattern of period ``stride``: the share of
  its 2-D power spectrum (mean removed) at the frequencies k·H/s, l·W/s, the artefact the
  trick removes.

An explain callable maps a batch (N, H, W, ...) to heatmaps of the same shape; with ``target`` it
is called as ``explain(x, target)``. Every wrapper here is traceable (``jax.jit``, ``jax.vmap``,
``lax.scan`` inside :func:`lrpjax.evaluate.pixel_flipping`). Further wrappers (e.g. SmoothGrad,
Integrated Gradients) belong in this module and can reuse :func:`_call_explain`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_SHIFTS", "ExplainFn", "shift_set", "stride_energy", "stride_shifts", "translate",
           "translation_trick"]

Array = jax.Array
ExplainFn = Callable[..., Array]
Shifts = int | Sequence[tuple[int, int]] | np.ndarray | Array

# The 4-neighbourhood and the identity: (dx, dy) in pixels, dx > 0 right, dy > 0 down.
DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))


# ------------------------------------------------------------------ shared helpers
def _check_batch(x: Any, name: str = "x") -> Array:
    """A floating batch of images (N, H, W) or (N, H, W, C, ...); raises otherwise."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"{name} must be a batch of images (N, H, W) or (N, H, W, C), "
                         f"got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return jnp.asarray(x)


def _call_explain(explain: ExplainFn, x: Array, target: Any) -> Array:
    """R = explain(x) or explain(x, target); checks that R has the shape of x."""
    R = explain(x) if target is None else explain(x, target)
    if not hasattr(R, "shape") or tuple(R.shape) != tuple(x.shape):
        got = tuple(R.shape) if hasattr(R, "shape") else type(R).__name__
        raise ValueError(f"explain must return heatmaps shaped like its input {tuple(x.shape)}, "
                         f"got {got}")
    return R


# ------------------------------------------------------------------ translations
def shift_set(radius: int, pattern: str = "square") -> tuple[tuple[int, int], ...]:
    """Integer shifts (dx, dy) within ``radius`` pixels, the identity included.

    ``"square"``: all |dx|, |dy| <= r ((2r+1)^2 shifts); ``"cross"``: dx = 0 or dy = 0 (4r+1
    shifts; r = 1 gives :data:`DEFAULT_SHIFTS` up to order).
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    r = int(radius)
    span = range(-r, r + 1)
    if pattern == "square":
        return tuple((dx, dy) for dy in span for dx in span)
    if pattern == "cross":
        return tuple((dx, dy) for dy in span for dx in span if dx == 0 or dy == 0)
    raise ValueError(f"pattern must be 'square' or 'cross', got {pattern!r}")


def stride_shifts(stride: int) -> tuple[tuple[int, int], ...]:
    """The s^2 shifts (dx, dy) with 0 <= dx, dy < s, s = ``stride``: one full stride period.

    After a first layer of stride s, a pixel's position modulo s (its phase) decides which kernel
    taps reach it; averaging τ^{-1} R(τx) over these shifts gives every pixel each phase exactly
    once, so a pattern of period s in R(x) cancels (a symmetric set such as {-1, 0, 1} does not
    weigh the phases equally when s = 2).
    """
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    s = int(stride)
    return tuple((dx, dy) for dy in range(s) for dx in range(s))


def stride_energy(R: Any, stride: int) -> np.ndarray:
    """Share of a heatmap's power at the stride frequencies, per image -> (N,) in [0, 1].

    With the channels summed, R (N, H, W[, C]) -> r (N, H, W), and r̂ the DFT of r - mean(r):

        E_s(r) = sum_{(k, l) in S} |r̂(k, l)|^2 / sum_{(k, l)} |r̂(k, l)|^2,
        S = {(a H/s, b W/s) : 0 <= a, b < s} minus (0, 0).

    By Parseval this is ||p - mean(r)||^2 / ||r - mean(r)||^2, with p[i, j] the mean of r over
    the pixels of the same phase (i mod s, j mod s): the share of r's variance that a pattern
    of period s explains. 1 for any pattern of period s, ~0 for a smooth image, (s^2 - 1) /
    (HW - 1) expected for white noise; 0 for a constant image (nothing to explain) and for s = 1.
    ``stride`` must divide H and W. Computed in float64 NumPy (a diagnostic, not traceable).
    """
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    r = np.asarray(R)  # NumPy, not _check_batch: jnp would round float64 input to float32
    if r.ndim < 3:
        raise ValueError(f"R must be a batch of heatmaps (N, H, W) or (N, H, W, C), got shape "
                         f"{r.shape}")
    if not np.issubdtype(r.dtype, np.floating):
        raise TypeError(f"R must be a floating-point array, got dtype {r.dtype}")
    r = r.astype(np.float64)
    r = r if r.ndim == 3 else r.reshape(r.shape[:3] + (-1,)).sum(-1)
    h, w = r.shape[1], r.shape[2]
    if h % stride or w % stride:
        raise ValueError(f"stride {stride} does not divide the heatmap size {h} x {w}")
    if not np.isfinite(r).all():
        raise ValueError("R contains NaN or inf")
    power = np.abs(np.fft.fft2(r - r.mean((1, 2), keepdims=True))) ** 2
    power[:, 0, 0] = 0.0  # the mean is no pattern (0 up to rounding)
    at_stride = power[:, :: h // stride, :: w // stride].sum((1, 2))
    total = power.sum((1, 2))
    return np.where(total > 0, at_stride / np.where(total > 0, total, 1.0), 0.0)


def _as_shifts(shifts: Shifts, height: int, width: int) -> np.ndarray:
    """Validate ``shifts`` (a radius or (S, 2) integer (dx, dy) pairs) -> int array (S, 2)."""
    if isinstance(shifts, (int, np.integer)) and not isinstance(shifts, bool):
        shifts = shift_set(int(shifts))
    if isinstance(shifts, jax.core.Tracer):
        raise TypeError("shifts must be concrete (Python ints or a NumPy array), not traced: "
                        "they fix the number of explained copies")
    s = np.asarray(shifts)
    if s.ndim != 2 or s.shape[1] != 2 or s.shape[0] == 0:
        raise ValueError(f"shifts must be a radius or a non-empty sequence of (dx, dy) pairs, "
                         f"got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.integer) or
            (np.issubdtype(s.dtype, np.floating) and np.all(s == np.round(s)))):
        raise ValueError(f"shifts must be integers (pixels), got {s.tolist()}")
    s = s.astype(np.int32)
    if np.any(np.abs(s[:, 0]) >= width) or np.any(np.abs(s[:, 1]) >= height):
        raise ValueError(f"shifts {s.tolist()} move the image out of its {height} x {width} frame")
    return s


def translate(x: Array, dx: int | Array, dy: int | Array) -> Array:
    """Integer translation τ with zero fill on (N, H, W, ...): (τx)[n, i, j] = x[n, i - dy, j - dx].

    dx > 0 moves content right, dy > 0 down; pixels moved in from outside are 0. ``dx``, ``dy``
    may be traced (vmap over shifts); τ^{-1} is ``translate(., -dx, -dy)`` up to the lost border.
    """
    h, w = x.shape[1], x.shape[2]
    rows, cols = jnp.arange(h) - dy, jnp.arange(w) - dx
    keep = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    keep = keep.reshape((1, h, w) + (1,) * (x.ndim - 3))
    moved = jnp.take(jnp.take(x, jnp.clip(rows, 0, h - 1), axis=1), jnp.clip(cols, 0, w - 1), axis=2)
    return jnp.where(keep, moved, jnp.zeros((), x.dtype))


def translation_trick(
    explain: ExplainFn, x: Array, shifts: Shifts = DEFAULT_SHIFTS, *, target: Any = None
) -> Array:
    """Heatmaps of the translation-averaged model (Montavon et al. 2018, Sec. 6):

        R̄(x) = 1/|T| sum_{τ in T} τ^{-1} R(τx),   f̄(x) = 1/|T| sum_{τ in T} f(τx).

    ``shifts``: (dx, dy) integer pairs (default: identity and the four 1-pixel moves) or a radius
    r (all |dx|, |dy| <= r, see :func:`shift_set`); after a first layer of stride s,
    :func:`stride_shifts` (s^2 shifts, one stride period) cancels the stride pattern, which a
    symmetric ±r set only damps. Vectorised over the |T| shifts: with a
    ``target``, one call ``explain(T x, target tiled)`` on a batch of |T| N images (shift-major);
    without, a ``jax.vmap`` over shifts, so each call sees the original batch (N, ...).

    Targets: the class must be fixed per image, not re-predicted for each shifted copy. Pass
    ``target`` (an int, (N,) ints, or a callable that acts per sample; ``explain`` is then called
    as ``explain(x, target)``) or let ``explain`` close over fixed targets. With
    ``explain = lambda a: relevance(model, a, ...)`` and no target, each copy explains its own
    argmax, which can differ between copies.

    Conservation: if sum_i R_i(τx) = f(τx), then sum_i R̄_i = f̄(x) minus the mean relevance
    that R(τx) put on the zero-filled pixels (exactly those τ^{-1} drops); nothing is lost when
    ``explain`` gives zero pixels no relevance (x ⊙ ∇f, z+), but z^B does give them some.
    """
    x = _check_batch(x)
    n = x.shape[0]
    s = jnp.asarray(_as_shifts(shifts, x.shape[1], x.shape[2]))
    m = s.shape[0]
    if target is None:
        def one(shift: Array) -> Array:
            R = _call_explain(explain, translate(x, shift[0], shift[1]), None)
            return translate(R, -shift[0], -shift[1])

        return jnp.mean(jax.vmap(one)(s), axis=0)
    if not callable(target):
        t = jnp.asarray(target)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
            raise ValueError(f"target must be an int or have one entry per image ({n}), "
                             f"got shape {tuple(t.shape)}")
        target = jnp.tile(jnp.broadcast_to(t, (n,)), m)
    xs = jax.vmap(lambda d: translate(x, d[0], d[1]))(s)  # (|T|, N, H, W, ...)
    R = _call_explain(explain, xs.reshape((m * n,) + x.shape[1:]), target)
    R = jax.vmap(lambda r, d: translate(r, -d[0], -d[1]))(R.reshape(xs.shape), s)
    return jnp.mean(R, axis=0)
