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
from flax import linen as nn
from flax import nnx

from . import jaxpr as jaxpr_frontend
from . import linen as linen_frontend
from . import nnx as nnx_frontend
from . import signs
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


def forward_fn(model: Any, variables: Any = None) -> Callable[[Array], Array]:
    """The plain forward ``x -> output`` of an NNX module, a Linen module or a callable."""
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("a Linen module needs its variables: pass variables=...")
        return lambda x: model.apply(variables, x)
    if isinstance(model, nnx.Module) or callable(model):
        if variables is not None and not isinstance(model, nnx.Module):
            return lambda x: model(variables, x)
        return model
    raise TypeError(f"cannot explain an object of type {type(model).__name__}: "
                    "pass an nnx.Module, a Linen module with variables, or a callable")


def _lrp_fn(model: Any, variables: Any, composite: Composite, x: Array, strict: bool,
            report_only: bool = False):
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be an lrpjax Composite, got {type(composite).__name__}")
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("a Linen module needs its variables: pass variables=...")
        return linen_frontend.lrp_function(model, variables, composite, x, strict=strict)
    if isinstance(model, nnx.Module):
        return nnx_frontend.lrp_function(model, composite, x, strict=strict)
    if callable(model):
        return jaxpr_frontend.lrp_function(model, variables, composite, x, strict=strict,
                                           on_unsupported="warn", _report_only=report_only)
    raise TypeError(f"cannot explain an object of type {type(model).__name__}")


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


_STATIC_NAMES = ("composite", "mode", "strict", "target_fn")


def relevance(
    model: Any, x: Array, *, composite: Composite, target: Target = None, variables: Any = None,
    params: Any = None, output_relevance: Literal["logit", "onehot"] = "logit",
    strict: bool = True, on_unsupported: Literal["raise", "warn"] = "raise",
) -> Array:
    """LRP heatmaps R (shaped like x): relevance propagated from the output to the input.

    ``model``: an ``nnx.Module``; a Linen module with ``variables``; or any JAX function
    ``fn(params, x)`` (or ``fn(x)``), explained through its jaxpr (:mod:`lrpjax.jaxpr`; primitives
    without a rule raise, or warn with ``on_unsupported="warn"``).
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
    target_fn, target_arr = _split_target(target)
    variables = _function_params(model, variables, params)
    if target_arr is not None and _concrete(target_arr):
        out = jax.eval_shape(forward_fn(model, variables), x)
        output_relevance_check(out, target_arr)
    static = {"composite": composite, "mode": output_relevance, "strict": strict,
              "target_fn": target_fn}
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("a Linen module needs its variables: pass variables=...")
        return _linen_relevance(model, variables, x, target_arr, **static)
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return _nnx_relevance(graphdef, state, x, target_arr, **static)
    if callable(model):
        return _fn_relevance(model, variables, x, target_arr, on_unsupported=on_unsupported,
                             **static)
    raise TypeError(f"cannot explain an object of type {type(model).__name__}: pass an "
                    "nnx.Module, a Linen module with variables, or a function fn(params, x)")


@partial(jax.jit, static_argnums=(0,), static_argnames=(*_STATIC_NAMES, "on_unsupported"))
def _fn_relevance(fn: Callable, params: Any, x: Array, target_arr: Any, *, composite: Composite,
                  mode: str, strict: bool, target_fn: Any, on_unsupported: str) -> Array:
    f, _ = jaxpr_frontend.lrp_function(fn, params, composite, x, strict=strict,
                                       on_unsupported=on_unsupported)
    return _propagate(f, x, target_arr, target_fn, mode)


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


def _propagate(fn: Callable, x: Array, target_arr: Any, target_fn: Any, mode: str) -> Array:
    y, pull = signs.vjp(fn, x)  # with the cheaper forms that lrpjax.signs proves exact
    target = target_fn if target_fn is not None else target_arr
    (R,) = pull(output_relevance(y, target, mode))  # type: ignore[arg-type]
    return R


@partial(jax.jit, static_argnums=(0,), static_argnames=_STATIC_NAMES)
def _nnx_relevance(graphdef: Any, state: Any, x: Array, target_arr: Any, *, composite: Composite,
                   mode: str, strict: bool, target_fn: Any) -> Array:
    fn, _ = nnx_frontend.lrp_function(nnx.merge(graphdef, state), composite, x, strict=strict)
    return _propagate(fn, x, target_arr, target_fn, mode)


@partial(jax.jit, static_argnums=(0,), static_argnames=_STATIC_NAMES)
def _linen_relevance(model: nn.Module, variables: Any, x: Array, target_arr: Any, *,
                     composite: Composite, mode: str, strict: bool, target_fn: Any) -> Array:
    fn, _ = linen_frontend.lrp_function(model, variables, composite, x, strict=strict)
    return _propagate(fn, x, target_arr, target_fn, mode)


def _function_params(model: Any, variables: Any, params: Any) -> Any:
    """``params=`` is another name for a plain function's ``variables=`` (never ignored)."""
    if params is None:
        return variables
    if isinstance(model, nnx.Module):
        raise TypeError("params= is for a plain function fn(params, x); an NNX module carries "
                        "its own parameters")
    if isinstance(model, nn.Module):
        raise TypeError("params= is for a plain function fn(params, x); pass a Linen module's "
                        "variables as variables=")
    if variables is not None:
        raise ValueError("pass the function's parameters as params= or variables=, not both")
    return params


def gradient(model: Any, x: Array, *, target: Target = None, variables: Any = None,
             params: Any = None) -> Array:
    """The gradient df_c/dx of the target output (callable targets give the output cotangent)."""
    x = _check_input(x)
    y, pull = jax.vjp(forward_fn(model, _function_params(model, variables, params)), x)
    (g,) = pull(output_relevance(y, target, "onehot"))
    return g


def sensitivity(model: Any, x: Array, *, target: Target = None, variables: Any = None,
                params: Any = None) -> Array:
    """Sensitivity analysis (Montavon et al. 2018, Sec. 4.1): R_i = (df_c/dx_i)^2."""
    return jnp.square(gradient(model, x, target=target, variables=variables, params=params))


def gradient_x_input(model: Any, x: Array, *, target: Target = None, variables: Any = None,
                     params: Any = None) -> Array:
    """Simple Taylor decomposition at the root 0 (Sec. 4.2): R_i = x_i df_c/dx_i."""
    x = _check_input(x)
    return x * gradient(model, x, target=target, variables=variables, params=params)


def describe(
    model: Any, composite: Composite, x: Array, *, variables: Any = None, params: Any = None,
    strict: bool = False,
) -> Coverage:
    """The coverage report: per layer path, layer type and the rule it gets (or "plain gradient"
    and why), and the facts :mod:`lrpjax.signs` proved that let the rule use a cheaper exact
    form ("input >= 0", "gated"). ``print(describe(...))`` shows a table."""
    x = _check_input(x)
    variables = _function_params(model, variables, params)
    _, coverage = _lrp_fn(model, variables, composite, x, strict)
    return coverage.with_facts(_traced_facts(model, variables, composite, x, strict))


def _traced_facts(model: Any, variables: Any, composite: Composite, x: Array,
                  strict: bool) -> dict[str, tuple[bool, bool]]:
    """``signs.layer_facts`` as :func:`relevance` sees them: parameters and x traced (a jit
    argument proves nothing by its value), for the facts describe() reports."""
    if isinstance(model, nnx.Module):
        graphdef, params = nnx.split(model)

        def build(p: Any) -> tuple[Any, Any]:
            return nnx.merge(graphdef, p), None
    else:
        params = variables

        def build(p: Any) -> tuple[Any, Any]:
            return model, p
    facts: dict[str, tuple[bool, bool]] = {}

    def probe(p: Any, a: Array) -> Array:
        fn, _ = _lrp_fn(*build(p), composite, a, strict, report_only=True)
        facts.update(signs.layer_facts(fn, a))
        return jnp.zeros(())

    try:
        jax.eval_shape(probe, params, x)
    except Exception:  # noqa: BLE001 - the facts are extra information: report none
        return {}
    return facts
