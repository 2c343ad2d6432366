"""The Flax NNX front-end: an LRP *view* of a model whose layers apply their rules.

NNX has no method interception, so the front-end builds a view with ``nnx.recursive_map`` in
which every supported leaf module (Linear, Conv, pooling, residual adds) is wrapped by a module
that calls :func:`lrpjax.core.apply_rule`. The view shares its Variables with the model (no
copy of the weights); keep views out of checkpoints, their paths gain a wrapper. Rules are keyed
by module path, never by ``id()``, so the view is rebuilt correctly inside ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from .composites import Composite
from .core import apply_rule
from .coverage import Coverage, LayerRow, assign_rules, classify
from .rules import Gradient

__all__ = ["call_order", "leaf_paths", "lrp_function", "lrp_view"]

_NO_WRAP = ("dropout",)


def _is_leaf(module: nnx.Module) -> bool:
    return not any(
        isinstance(node, nnx.Module) and node is not module for _, node in nnx.iter_graph(module)
    )


def _path(path: tuple) -> str:
    return "/".join(str(p) for p in path)


class _Recorder(nnx.Module):
    def __init__(self, inner: nnx.Module, path: str, log: list):
        self.inner = inner
        self.path = path
        self.log = log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append((self.path, self.inner))
        return self.inner(*args, **kwargs)


class _LRPLayer(nnx.Module):
    """A leaf module whose backward pass is an LRP rule."""

    def __init__(self, inner: nnx.Module, rule: Any, path: str):
        self.inner = inner
        self.rule = rule
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graphdef, state = nnx.split(self.inner)

        def fwd(params: Any, *xs: Any) -> Any:
            return nnx.merge(graphdef, params)(*xs, **kwargs)

        return apply_rule(fwd, self.rule, state, *args, name=self.path)


def leaf_paths(model: nnx.Module) -> dict[str, nnx.Module]:
    """All leaf modules of ``model`` (modules without sub-modules) by '/'-joined path."""
    found: dict[str, nnx.Module] = {}

    def visit(path: tuple, node: Any) -> Any:
        if isinstance(node, nnx.Module) and _is_leaf(node):
            found[_path(path)] = node
        return node

    nnx.recursive_map(visit, model)
    return found


def call_order(model: nnx.Module, x: Any, *args: Any, **kwargs: Any) -> list[tuple[str, Any]]:
    """The leaf modules in the order the forward pass calls them (one abstract evaluation)."""
    log: list[tuple[str, Any]] = []

    def wrap(path: tuple, node: Any) -> Any:
        if isinstance(node, nnx.Module) and _is_leaf(node):
            return _Recorder(node, _path(path), log)
        return node

    recorder = nnx.recursive_map(wrap, model)
    try:
        jax.eval_shape(lambda a: recorder(a, *args, **kwargs), x)
    except Exception as err:  # a shape/dtype problem of the input: say so
        raise ValueError(
            f"the model cannot be evaluated on an input of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}: {type(err).__name__}: {err}"
        ) from err
    return log


def lrp_view(
    model: nnx.Module, composite: Composite, x: Any, *, strict: bool = True
) -> tuple[nnx.Module, Coverage]:
    """Return ``(view, coverage)``: ``view(x)`` equals ``model(x)``, its VJP is LRP."""
    rows, coverage = assign_rules(call_order(model, x), composite, strict=strict)

    def wrap(path: tuple, node: Any) -> Any:
        if not isinstance(node, nnx.Module):
            return node
        row: LayerRow | None = rows.get(_path(path))
        if row is None or row.rule is None or isinstance(row.rule, Gradient):
            return node
        if classify(node) in _NO_WRAP:
            return node
        return _LRPLayer(node, row.rule, row.path)

    return nnx.recursive_map(wrap, model), coverage


def lrp_function(
    model: nnx.Module, composite: Composite, x: Any, *, strict: bool = True
) -> tuple[Callable[[Any], Any], Coverage]:
    """``(f, coverage)`` with ``f(x) = model(x)`` whose VJP propagates relevance."""
    view, coverage = lrp_view(model, composite, x, strict=strict)
    return view, coverage
