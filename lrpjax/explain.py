"""The explain API: relevance (LRP), sensitivity, gradient and simple Taylor.

All functions take a batch ``x`` of N inputs and return N heatmaps shaped like ``x``; they are
pure JAX and compose with ``jax.jit`` and ``jax.vmap``. ``model`` is a Flax NNX module, a Flax
Linen module together with ``variables``, or (for the gradient methods) any callable
``x -> output``.

Targets (which output is explained): ``None`` = the predicted class, an ``int``, an int array
with one class per sample, or a callable ``output -> initial relevance`` (same shape as the
output).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import engine, facts, frontends
from .composites import Composite
from .coverage import Coverage

__all__ = [
    "describe",
    "forward_fn",
    "gradient",
    "gradient_x_input",
    "output_relevance",
    "relevance",
    "sensitivity",
]

Array = jax.Array
Target = None | int | Array | Callable[[Array], Array]


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _all_finite(x: Array) -> bool:
    """Eagerly, also while a ``jax.jit`` traces a function that closes over a concrete x."""
    with jax.ensure_compile_time_eval():
        return bool(jnp.all(jnp.isfinite(x)))


def _check_input(x: Any) -> Array:
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype} "
                        "(convert images to float, e.g. x / 255)")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch axis (N, ...), got shape {tuple(x.shape)}")
    x = jnp.asarray(x)
    if _concrete(x) and not _all_finite(x):
        raise ValueError("x contains NaN or infinite values")
    return x


def forward_fn(model: Any, variables: Any = None, *, params: Any = None,
               model_kwargs: dict | None = None) -> Callable[[Array], Array]:
    """The plain forward ``x -> output`` of any model :mod:`lrpjax.frontends` accepts."""
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    return frontends.build(static, dynamic)


def lrp_function(static: Any, dynamic: Any, composite: Composite, x: Array, *,
                 strict: bool = True, on_unsupported: str = "raise", with_facts: bool = True
                 ) -> tuple[Callable[[Array], Any], engine.Plan]:
    """``(f, plan)``: ``f(x)`` equals the model's output and its VJP propagates relevance.

    The model (``frontends.split``'s ``static, dynamic``) is traced once with its leaf module
    calls marked, and :func:`lrpjax.engine.plan` gives each operation its rule.
    """
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be an lrpjax Composite, got {type(composite).__name__}")
    marks: list = []
    token = frontends.new_token()
    try:
        closed, out_shape = jax.make_jaxpr(
            lambda d, a: frontends.build(static, d, marks, token)(a), return_shape=True
        )(dynamic, x)
    except (engine.UnsupportedLayerError, TypeError):
        raise
    except Exception as err:  # a shape/dtype problem of the input, or a model error: say so
        hint = ("; a module in training mode needs random numbers: explain it in inference "
                "mode (NNX: model.eval(); Linen: model_kwargs such as {'train': False} or "
                "deterministic=True)" if "PRNG" in str(err) or "Rng" in type(err).__name__
                else "")
        raise ValueError(
            f"the model cannot be evaluated on an input of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}: {type(err).__name__}: {err}{hint}") from err
    n = len(jax.tree.leaves(dynamic))
    plan = engine.plan(closed, [False] * n + [True], composite, marks, token,
                       on_unsupported=on_unsupported, strict=strict, with_facts=with_facts)
    tree = jax.tree.structure(out_shape)

    def f(a: Array) -> Any:
        return jax.tree.unflatten(tree, engine.run(plan, [*jax.tree.leaves(dynamic), a]))

    return f, plan


def output_relevance_check(out: Any, target: Array) -> None:
    """Check an int target against an output of shape (N, classes) (shapes only)."""
    output_relevance(jnp.zeros(out.shape, out.dtype), target, "onehot")


def output_relevance(
    y: Array, target: Target = None, mode: Literal["logit", "onehot"] = "logit"
) -> Array:
    """The relevance put on the output: one-hot(target) x logit ("logit") or one-hot ("onehot")."""
    if callable(target):
        r = jnp.asarray(target(y))
        if r.shape != y.shape:
            raise ValueError(f"a callable target must return the output's shape {y.shape}, "
                             f"got {r.shape}")
        return r.astype(y.dtype)
    if y.ndim != 2:
        raise ValueError(f"class targets need an output of shape (N, classes), got {y.shape}; "
                         "pass a callable target for other outputs")
    n, k = y.shape
    if target is None:
        idx = jnp.argmax(y, axis=-1)
    else:
        idx = jnp.asarray(target)
        if not jnp.issubdtype(idx.dtype, jnp.integer):
            raise TypeError(f"target must be an int or int array, got dtype {idx.dtype}")
        if idx.ndim > 1 or (idx.ndim == 1 and idx.shape[0] != n):
            raise ValueError(f"target must be an int or have one entry per sample ({n}), "
                             f"got shape {idx.shape}")
        if _concrete(idx):
            bad = np.asarray(idx)[(np.asarray(idx) < 0) | (np.asarray(idx) >= k)]
            if bad.size:
                raise ValueError(f"target {bad.tolist()} out of range for {k} classes")
        idx = jnp.broadcast_to(idx, (n,))
    onehot = jax.nn.one_hot(idx, k, dtype=y.dtype)
    if mode == "logit":
        return onehot * y
    if mode == "onehot":
        return onehot
    raise ValueError(f"output_relevance must be 'logit' or 'onehot', got {mode!r}")


def relevance(
    model: Any, x: Array, *, composite: Composite, target: Target = None, variables: Any = None,
    params: Any = None, output_relevance: Literal["logit", "onehot"] = "logit",
    strict: bool = True, on_unsupported: Literal["raise", "warn"] = "raise",
    model_kwargs: dict | None = None,
) -> Array:
    """LRP heatmaps R (shaped like x): relevance propagated from the output to the input.

    ``model``: an ``nnx.Module``; a Linen module with ``variables``; or any JAX function
    ``fn(params, x)`` (or ``fn(x)``); a callable pytree. Every route runs one interpreter over
    the model's jaxpr (:mod:`lrpjax.engine`): operations without a rule in :mod:`lrpjax.ops`
    raise naming the primitive, layer path and source line, or warn once each and use the
    plain gradient with ``on_unsupported="warn"``. ``model_kwargs``: keywords for a Flax
    module's ``__call__`` (e.g. ``{"train": False}``).
    The output relevance is one-hot(target) x f(x) (so sum_i R_i ~ f_c(x) where rules
    conserve) or one-hot(target). Raises for unsupported layers unless ``strict=False``.
    Compiled once per model structure, composite and input shape (``jax.jit`` inside) and
    matmul precision: on Ampere and later GPUs JAX's default float32 products are TF32, which
    moved heatmaps by 2e-4 (small nets) to 0.17 (random VGG-16) on an H100; call inside
    ``jax.default_matmul_precision("highest")`` for float32-exact heatmaps.
    """
    x = _check_input(x)
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be an lrpjax Composite, got {type(composite).__name__}")
    if output_relevance not in ("logit", "onehot"):
        raise ValueError(f"output_relevance must be 'logit' or 'onehot', got {output_relevance!r}")
    if on_unsupported not in ("raise", "warn"):
        raise ValueError(f"on_unsupported must be 'raise' or 'warn', got {on_unsupported!r}")
    if not strict:  # every operation and layer without a rule: its gradient, with a warning
        on_unsupported = "warn"
    target_fn, target_arr = _split_target(target)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    _check_target(static, dynamic, x, target_arr)
    return _relevance(dynamic, x, target_arr, static=static, composite=composite,
                      mode=output_relevance, strict=strict, target_fn=target_fn,
                      on_unsupported=on_unsupported, with_facts=facts.enabled())


def _check_target(static: Any, dynamic: Any, x: Array, target_arr: Any) -> None:
    if target_arr is not None and _concrete(target_arr):
        out = jax.eval_shape(frontends.build(static, dynamic), x)
        output_relevance_check(out, target_arr)


@partial(jax.jit, static_argnames=("static", "composite", "mode", "strict", "target_fn",
                                   "on_unsupported", "with_facts"))
def _relevance(dynamic: Any, x: Array, target_arr: Any, *, static: Any, composite: Composite,
               mode: str, strict: bool, target_fn: Any, on_unsupported: str,
               with_facts: bool) -> Array:
    f, _ = lrp_function(static, dynamic, composite, x, strict=strict,
                        on_unsupported=on_unsupported, with_facts=with_facts)
    y, pull = jax.vjp(f, x)
    (R,) = pull(output_relevance(y, target_fn if target_fn is not None else target_arr, mode))
    return R


def _split_target(target: Target) -> tuple[Callable | None, Array | None]:
    """(static callable, array) parts of a target; int targets become int32 arrays."""
    if target is None:
        return None, None
    if callable(target):
        return target, None
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"target must be an int or int array, got dtype {t.dtype}")
    return None, t


def gradient(model: Any, x: Array, *, target: Target = None, variables: Any = None,
             params: Any = None, model_kwargs: dict | None = None) -> Array:
    """The gradient df_c/dx of the target output (callable targets give the output cotangent).

    Compiled once per model structure and input shape, like :func:`relevance`.
    """
    x = _check_input(x)
    target_fn, target_arr = _split_target(target)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    _check_target(static, dynamic, x, target_arr)
    return _gradient(dynamic, x, target_arr, static=static, target_fn=target_fn)


@partial(jax.jit, static_argnames=("static", "target_fn"))
def _gradient(dynamic: Any, x: Array, target_arr: Any, *, static: Any, target_fn: Any) -> Array:
    y, pull = jax.vjp(frontends.build(static, dynamic), x)
    (g,) = pull(output_relevance(y, target_fn if target_fn is not None else target_arr,
                                 "onehot"))
    return g


def sensitivity(model: Any, x: Array, *, target: Target = None, variables: Any = None,
                params: Any = None, model_kwargs: dict | None = None) -> Array:
    """Sensitivity analysis (Montavon et al. 2018, Sec. 4.1): R_i = (df_c/dx_i)^2."""
    return jnp.square(gradient(model, x, target=target, variables=variables, params=params,
                               model_kwargs=model_kwargs))


def gradient_x_input(model: Any, x: Array, *, target: Target = None, variables: Any = None,
                     params: Any = None, model_kwargs: dict | None = None) -> Array:
    """Simple Taylor decomposition at the root 0 (Sec. 4.2): R_i = x_i df_c/dx_i."""
    x = _check_input(x)
    return x * gradient(model, x, target=target, variables=variables, params=params,
                        model_kwargs=model_kwargs)


def describe(model: Any, x: Array, *, composite: Composite, variables: Any = None,
             params: Any = None, model_kwargs: dict | None = None,
             strict: bool = False) -> Coverage:
    """The coverage report of :func:`relevance`: every relevance-carrying operation in
    forward order (layers and the glue between them), its kind, the rule it gets (or "plain
    gradient" and why) and the user's source line. ``print(describe(...))`` shows a table;
    operations without a rule are reported, not raised (``strict=True`` raises).
    """
    if isinstance(x, Composite):
        raise TypeError("describe takes its arguments in the order relevance does: "
                        "describe(model, x, composite=...)")
    x = _check_input(x)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    _, plan = lrp_function(static, dynamic, composite, x, strict=strict,
                           on_unsupported="raise" if strict else "ignore",
                           with_facts=facts.enabled())
    return plan.coverage(composite)
