"""The Linen front-end: ``nn.intercept_methods`` marks each leaf module call.

The leaf calls come from the recorder (:func:`lrpjax.frontends.calls.linen_leaf_calls`, which
also refuses ``flax.linen.jit``). The marking interceptor is installed inside the traced
function (a trace made without it would be cached and return the plain gradient), calls an
unbound clone with explicit variables and guards re-entry with a context variable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import linen as nn

from ..engine import Mark
from .calls import linen_identity, linen_leaf_calls, linen_path
from .marks import _REENTRY, _marked_call, scope_name


def _linen_marked(module: nn.Module, variables: Any, kw: dict, marks: list,
                  token: str) -> Callable[[Any], Any]:
    def f(x: Any) -> Any:
        leaves = {c.path for c in linen_leaf_calls(module, variables, x, kw)}

        def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
            m = context.module
            path = linen_path(m)
            if context.method_name != "__call__" or _REENTRY.get() or not path:
                return next_fun(*args, **kwargs)
            if linen_identity(context):  # a folded BatchNorm
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
