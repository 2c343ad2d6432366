"""The Flax Linen front-end: method interception applies each layer's rule.

``nn.intercept_methods`` sees every module's ``__call__``. A leaf module that has a rule is
re-run as an unbound clone with its variables passed explicitly to
:func:`lrpjax.core.apply_rule`, so nothing traced is closed over. A context variable guards
against re-entry (the clone's own ``__call__`` is intercepted too).

The interception context is entered *inside* the function that is differentiated, so a
``jax.jit`` trace of :func:`lrpjax.relevance` always contains the rules: a trace made outside
the context can never silently return a plain gradient.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import jax
from flax import linen as nn

from .composites import Composite
from .core import apply_rule
from .coverage import Coverage, LayerRow, assign_rules, classify
from .rules import Gradient

__all__ = ["call_order", "lrp_function"]

_REENTRY: contextvars.ContextVar[bool] = contextvars.ContextVar("lrpjax_linen_reentry", default=False)
_NO_WRAP = ("dropout",)


def _path(module: nn.Module) -> str:
    return "/".join(module.scope.path) if module.scope is not None else ""


def _is_linen_jit(cls: type) -> bool:
    """A class made by ``flax.linen.jit`` (Flax names it Jit<Name> in flax.linen.transforms)."""
    return cls.__module__ == "flax.linen.transforms" and cls.__name__.startswith("Jit")


def call_order(model: nn.Module, variables: Any, x: Any, **kwargs: Any) -> list[tuple[str, Any]]:
    """Leaf modules in forward order: modules called with no intercepted call below them."""
    log: list[tuple[str, Any]] = []
    jitted: list[str] = []

    def record(next_fun: Callable, args: tuple, kw: dict, context: Any) -> Any:
        if _is_linen_jit(type(context.module)):
            jitted.append(type(context.module).__name__)
        if context.method_name == "__call__" and not _REENTRY.get():
            log.append((_path(context.module), context.module))
        return next_fun(*args, **kw)

    def run(a: Any) -> Any:
        with nn.intercept_methods(record):
            return model.apply(variables, a, **kwargs)

    try:
        jax.eval_shape(run, x)
    except Exception as err:
        raise ValueError(
            f"the model cannot be evaluated on an input of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}: {type(err).__name__}: {err}"
        ) from err
    if jitted:
        raise ValueError(
            f"cannot explain through flax.linen.jit ({sorted(set(jitted))}): JAX reuses one trace for "
            "every instance of a jitted module class, so the layers of all but the first stay "
            "hidden from lrpjax (wrong heatmaps). Use the plain module class; lrpjax.relevance "
            "compiles the whole model anyway.")
    paths = [p for p, _ in log]
    return [(p, m) for p, m in log
            if not any(q != p and (p == "" or q.startswith(p + "/")) for q in paths)]


def lrp_function(
    model: nn.Module, variables: Any, composite: Composite, x: Any, *, strict: bool = True,
    **kwargs: Any,
) -> tuple[Callable[[Any], Any], Coverage]:
    """``(f, coverage)`` with ``f(x) = model.apply(variables, x)`` whose VJP is LRP."""
    rows, coverage = assign_rules(call_order(model, variables, x, **kwargs), composite,
                                  strict=strict)

    def interceptor(next_fun: Callable, args: tuple, kw: dict, context: Any) -> Any:
        if context.method_name != "__call__" or _REENTRY.get():
            return next_fun(*args, **kw)
        module = context.module
        row: LayerRow | None = rows.get(_path(module))
        if (row is None or row.rule is None or isinstance(row.rule, Gradient)
                or classify(module) in _NO_WRAP):
            return next_fun(*args, **kw)
        unbound = module.clone(parent=None)

        def fwd(params: Any, *xs: Any) -> Any:
            token = _REENTRY.set(True)
            try:
                return unbound.apply(params, *xs, **kw)
            finally:
                _REENTRY.reset(token)

        return apply_rule(fwd, row.rule, module.variables, *args, name=row.path)

    def f(a: Any) -> Any:
        with nn.intercept_methods(interceptor):
            return model.apply(variables, a, **kwargs)

    return f, coverage
