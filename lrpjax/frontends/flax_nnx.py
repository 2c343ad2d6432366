"""The NNX front-end: a view of the model whose leaf modules are marked layer calls.

``nnx.recursive_map`` returns a view that shares the model's Variables; leaf modules (no
sub-modules) become :class:`_Marked` (a named jit call per call), the others :class:`_Scoped`
(a named scope with their path).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from ..engine import Mark
from .calls import delegate_to_inner, is_leaf, nnx_path
from .marks import _marked_call, scope_name


class _Marked(nnx.Module):
    """A leaf module whose calls appear in the jaxpr as named jit calls."""

    def __init__(self, inner: nnx.Module, path: str, marks: list, token: str):
        self.inner, self.path, self.marks, self.token = inner, path, marks, token

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graphdef, state = nnx.split(self.inner)

        def call(st: Any, *a: Any, **kw: Any) -> Any:
            return nnx.merge(graphdef, st)(*a, **kw)

        return _marked_call(call, state, args, kwargs, Mark(self.path, self.inner, None, 0),
                            self.marks, self.token)


class _Scoped(nnx.Module):
    """A module with sub-modules whose calls name their operations' layer path (a
    ``jax.named_scope`` the engine reads)."""

    def __init__(self, inner: nnx.Module, path: str):
        self.inner, self.path = inner, path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with jax.named_scope(scope_name(self.path)):
            return self.inner(*args, **kwargs)


# other attributes and methods (``embed.attend``) reach the wrapped module
delegate_to_inner(_Marked, ("inner", "path", "marks", "token"))
delegate_to_inner(_Scoped, ("inner", "path"))


def _nnx_marked(model: nnx.Module, marks: list, token: str) -> nnx.Module:
    def wrap(path: tuple, node: Any) -> Any:
        if isinstance(node, nnx.Module) and path and callable(node):
            name = nnx_path(path)
            return (_Marked(node, name, marks, token) if is_leaf(node)
                    else _Scoped(node, name))
        return node  # the model itself; containers (nnx.List, nnx.Dict) stay as they are
    return nnx.recursive_map(wrap, model)


def check_eval_mode(model: nnx.Module) -> None:
    """Raise when Dropout or BatchNorm would run in training mode (call ``model.eval()``)."""
    for path, node in nnx.iter_graph(model):
        name = nnx_path(path) or "(root)"
        if (isinstance(node, nnx.Dropout) and not getattr(node, "deterministic", True)
                and getattr(node, "rate", 0) > 0):
            raise ValueError(f"nnx.Dropout at {name!r} is in training mode (random masks): "
                             "call model.eval() before explaining (model.train() undoes it)")
        if isinstance(node, nnx.BatchNorm) and not getattr(node, "use_running_average", True):
            raise ValueError(f"nnx.BatchNorm at {name!r} is in training mode (batch "
                             "statistics): call model.eval() before explaining, then fold it "
                             "(lrpjax.canonizers.fold_batchnorm)")
