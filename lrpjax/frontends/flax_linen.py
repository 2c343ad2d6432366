"""The Linen front-end: ``nn.intercept_methods`` marks each leaf module call.

The interceptor is installed inside the traced function (a trace made without it would be
cached and return the plain gradient), calls an unbound clone with explicit variables and
guards re-entry with a context variable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import linen as nn

from ..engine import Mark
from .marks import _REENTRY, LINEN_IDENTITY, _marked_call, scope_name


def linen_path(module: nn.Module) -> str:
    """A bound Linen module's path, "Block_0/Dense_1"."""
    return "/".join(module.scope.path) if module.scope is not None else ""


def _is_linen_jit(cls: type) -> bool:
    return cls.__module__ == "flax.linen.transforms" and cls.__name__.startswith("Jit")


def linen_leaf_calls(module: nn.Module, variables: Any, x: Any, kw: dict) -> dict[str, Any]:
    """Path -> module of the Linen modules called with no module call beneath them."""
    log: list[tuple[str, Any]] = []
    jitted: list[str] = []

    def record(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        if _is_linen_jit(type(context.module)):
            jitted.append(type(context.module).__name__)
        if context.method_name == "__call__":
            if linen_path(context.module) in LINEN_IDENTITY.get():
                return args[0]
            log.append((linen_path(context.module), context.module))
        return next_fun(*args, **kwargs)

    def run(a: Any) -> Any:
        with nn.intercept_methods(record):
            return module.apply(variables, a, **kw)

    jax.eval_shape(run, x)
    if jitted:
        raise ValueError(
            f"cannot explain through flax.linen.jit ({sorted(set(jitted))}): JAX reuses one "
            "trace for every instance of a jitted module class, which hides their layers. Use "
            "the plain module class; lrpjax compiles the whole model anyway.")
    paths = [p for p, _ in log]
    return {p: m for p, m in log
            if p and not any(q != p and q.startswith(p + "/") for q in paths)}


def _linen_marked(module: nn.Module, variables: Any, kw: dict, marks: list,
                  token: str) -> Callable[[Any], Any]:
    def f(x: Any) -> Any:
        leaves = linen_leaf_calls(module, variables, x, kw)

        def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
            m = context.module
            path = linen_path(m)
            if context.method_name != "__call__" or _REENTRY.get() or not path:
                return next_fun(*args, **kwargs)
            if path in LINEN_IDENTITY.get():  # a folded BatchNorm
                return args[0]
            if path not in leaves:
                with jax.named_scope(scope_name(path)):
                    return next_fun(*args, **kwargs)
            unbound = m.clone(parent=None)

            def call(v: Any, *a: Any, **k: Any) -> Any:
                reset = _REENTRY.set(True)
                try:
                    return unbound.apply(v, *a, **k)
                finally:
                    _REENTRY.reset(reset)

            return _marked_call(call, m.variables, args, kwargs, Mark(path, m, None, 0),
                                marks, token)

        with nn.intercept_methods(interceptor):
            return module.apply(variables, x, **kw)
    return f
