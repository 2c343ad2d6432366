"""SmoothGrad and Integrated Gradients: attributions averaged over noise or along a path.

* :func:`smoothgrad` (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise") wraps
  *any* explanation ``explain: x -> heatmap`` (LRP, gradient, ...) and averages it over noisy
  copies of the input,

      SG(x) = 1/n sum_i explain(x + e_i),   e_i ~ N(0, (sigma (x_max - x_min))^2),

  with ``sigma`` relative to the data range (per sample by default, as in the paper, or a
  fixed ``data_range=(low, high)``). ``sigma = 0`` gives ``explain(x)`` back.
* :func:`integrated_gradients` (Sundararajan et al. 2017, "Axiomatic attribution for deep
  networks") integrates the gradient of the explained output along the straight path from a
  baseline x' to x,

      IG_i(x) = (x_i - x'_i) int_0^1 df_c(x' + a (x - x')) / dx_i da  ~  (x_i - x'_i) sum_k w_k g_k,

  with a quadrature rule (nodes a_k, weights w_k). It satisfies *completeness*,
  sum_i IG_i = f_c(x) - f_c(x'), up to the quadrature error (``return_delta=True`` reports it).

Both are pure JAX: the noise draws / path points are evaluated with ``jax.vmap`` in chunks of
``batch`` (a Python loop over chunks bounds memory; XLA:CPU runs convolutions inside
``lax.scan``/``lax.map`` loops much slower, so no loop primitive is used), and both compose
with ``jax.jit`` and ``jax.vmap`` (``n``, ``steps``, ``batch`` and ``method`` are static).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import frontends
from .explain import (
    Target,
    _check_input,
    _split_target,
    forward_fn,
    output_relevance,
    output_relevance_check,
)

__all__ = ["METHODS", "integrated_gradients", "quadrature", "smoothgrad"]

Array = jax.Array
METHODS = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle",
           "gausslegendre")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, total)) for i in range(0, total, size)]


# ---------------------------------------------------------------- SmoothGrad
def smoothgrad(explain: Callable[[Array], Array], x: Array, *, key: Array, n: int = 32,
               sigma: float = 0.1, batch: int | None = None,
               data_range: tuple[float, float] | None = None) -> Array:
    """SmoothGrad of any explanation: the mean of ``explain(x + noise)`` over ``n`` draws.

    ``explain`` maps a batch (N, ...) to heatmaps (N, ...) and must be vmappable (all lrpjax
    explain functions are); fix its target (e.g. the class predicted for the clean x), or each
    noisy copy explains its own prediction. The noise standard deviation is
    ``sigma * (high - low)``: ``(low, high) = data_range``, or per sample the min and max of
    x[i] when ``data_range`` is None. ``batch`` noisy copies of the whole batch are explained
    per call (default: all ``n``); draw i uses ``jax.random.fold_in(key, i)``, so the result
    does not depend on ``batch``.
    """
    n = _positive_int("n", n)
    batch = n if batch is None else _positive_int("batch", batch)
    x = _check_input(x)
    if not callable(explain):
        raise TypeError(f"explain must be a callable x -> heatmap, got {type(explain).__name__}")
    if not isinstance(sigma, jax.core.Tracer) and not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if data_range is None:
        flat = x.reshape(x.shape[0], -1)
        span = (flat.max(axis=1) - flat.min(axis=1)).reshape(-1, *([1] * (x.ndim - 1)))
    else:
        low, high = data_range
        span = jnp.asarray(high, x.dtype) - jnp.asarray(low, x.dtype)
    std = jnp.asarray(sigma, x.dtype) * span

    def noisy(i: Array) -> Array:
        return x + std * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)

    total = None
    for start, stop in _chunks(n, batch):
        xs = jax.vmap(noisy)(jnp.arange(start, stop))
        part = jax.vmap(explain)(xs).sum(axis=0)
        total = part if total is None else total + part
    return total / n


# ---------------------------------------------------------------- Integrated Gradients
def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes a_k in [0, 1] and weights w_k (summing to 1) of a quadrature rule on [0, 1].

    "riemann_trapezoid" (``steps`` >= 2 equidistant nodes including both ends, end weights
    halved; exact for gradients linear along the path), "riemann_left" / "riemann_right" /
    "riemann_middle" (``steps`` equal cells, left/right ends or midpoints), "gausslegendre".
    """
    steps = _positive_int("steps", steps)
    k = np.arange(steps, dtype=np.float64)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2 (both ends of the path)")
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] *= 0.5
        return k / (steps - 1), w
    if method in ("riemann_left", "riemann_right", "riemann_middle"):
        shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        return (k + shift) / steps, np.full(steps, 1.0 / steps)
    if method == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(steps)
        return (t + 1.0) / 2.0, w / 2.0
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _baseline(baseline: Any, x: Array) -> Array:
    b = jnp.asarray(baseline, x.dtype)
    try:
        shape = np.broadcast_shapes(b.shape, x.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"baseline of shape {b.shape} does not match the input of shape "
                         f"{x.shape}: use a scalar, one baseline {x.shape[1:]} for all samples "
                         f"or one per sample {x.shape}")
    return jnp.broadcast_to(b, x.shape)


def _ig(fn: Callable[[Array], Array], x: Array, base: Array, target_arr: Any, *,
        target_fn: Any, method: str, steps: int, batch: int) -> tuple[Array, Array]:
    alphas, weights = quadrature(method, steps)
    y = fn(x)
    ct = jax.lax.stop_gradient(output_relevance(
        y, target_fn if target_fn is not None else target_arr, "onehot"))
    diff = x - base

    def grad_at(alpha: Array) -> Array:
        _, pull = jax.vjp(fn, base + alpha * diff)
        return pull(ct)[0]

    avg = jnp.zeros_like(x)
    for start, stop in _chunks(len(alphas), batch):
        a = jnp.asarray(alphas[start:stop], x.dtype)
        w = jnp.asarray(weights[start:stop], x.dtype).reshape(-1, *([1] * x.ndim))
        avg = avg + (w * jax.vmap(grad_at)(a)).sum(axis=0)
    ig = diff * avg
    gap = (ct * (y - fn(base))).reshape(x.shape[0], -1).sum(axis=1)
    return ig, ig.reshape(x.shape[0], -1).sum(axis=1) - gap


@partial(jax.jit, static_argnames=("static", "target_fn", "method", "steps", "batch"))
def _ig_routed(dynamic: Any, *args: Any, static: Any, **kw: Any) -> tuple[Array, Array]:
    return _ig(frontends.build(static, dynamic), *args, **kw)


def integrated_gradients(model_or_fn: Any, x: Array, *, baseline: Any = 0.0, steps: int = 256,
                         target: Target = None, method: str = "riemann_trapezoid",
                         batch: int | None = None, variables: Any = None,
                         return_delta: bool = False) -> Array | tuple[Array, Array]:
    """Integrated Gradients of the target output along the straight path baseline -> x.

    ``model_or_fn``: any model :func:`lrpjax.relevance` takes (compiled once per structure and
    shape, as there; with ``variables`` for a Linen module or ``fn(params, x)``). ``baseline``: a scalar (default 0:
    the black image), one input shaped like x[0], or one per sample. ``target``: as in
    :func:`lrpjax.relevance`, resolved at x (None: the class predicted for x, the same along
    the whole path); a callable target gives the output cotangent c = target(f(x)), i.e.
    explains <c, f>. ``steps`` nodes of ``method`` (:func:`quadrature`); ``batch`` path points
    per vmapped call (default: about 1024 inputs per call). With ``return_delta`` also
    returns the completeness error per sample, sum_i IG_i - (f_c(x) - f_c(x')).

    The trapezoid and left rules evaluate the gradient *at* the baseline; for a bias-free ReLU
    net and baseline 0 that is a kink where the gradient is 0, costing w_0 f_c(x) of
    completeness ("riemann_middle" or "gausslegendre" avoid the endpoint).
    """
    quadrature(method, steps)  # validates method and steps
    x = _check_input(x)
    base = _baseline(baseline, x)
    batch = max(1, 1024 // x.shape[0]) if batch is None else _positive_int("batch", batch)
    target_fn, target_arr = _split_target(target)
    if target_arr is not None and not isinstance(target_arr, jax.core.Tracer):
        output_relevance_check(jax.eval_shape(forward_fn(model_or_fn, variables), x),
                               target_arr)
    static = {"target_fn": target_fn, "method": method, "steps": int(steps), "batch": batch}
    route, dynamic = frontends.split(model_or_fn, variables)
    ig, delta = _ig_routed(dynamic, x, base, target_arr, static=route, **static)
    return (ig, delta) if return_delta else ig
