"""The route choice, in one place: any model becomes a pure ``f(dynamic, x)`` for the engine.

A model is a Flax NNX module, a Flax Linen module with its variables, a plain JAX function
``fn(params, x)`` or ``fn(x)``, a ``functools.partial`` of one, or a callable pytree (an
Equinox-style module). :func:`split` cuts it into a hashable *static* part (what ``jax.jit``
compiles for) and a *dynamic* pytree of arrays (the parameters, traced). :func:`build` puts
them back together as ``x -> output``; with a ``marks`` list, the NNX and Linen routes also
mark every leaf module call as a named jit call whose name indexes ``marks``, so the engine
knows each layer's path and type. :mod:`lrpjax.frontends.calls` records the leaf module calls
of a forward pass (for the Linen marks and the canonizers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any

import jax
from flax import linen as nn
from flax import nnx

from .calls import LINEN_IDENTITY, LeafCall, linen_leaf_calls, linen_path, nnx_leaf_calls
from .flax_linen import _linen_marked
from .flax_nnx import _nnx_marked, check_eval_mode
from .marks import _is_array, new_token, scope_name

__all__ = ["LINEN_IDENTITY", "LeafCall", "build", "check_eval_mode", "linen_leaf_calls",
           "linen_path", "new_token", "nnx_leaf_calls", "scope_name", "split"]


def _kwargs(model_kwargs: dict | None) -> tuple:
    items = tuple(sorted((model_kwargs or {}).items()))
    try:
        hash(items)
    except TypeError as err:
        raise TypeError(f"model_kwargs must be hashable values (bools, numbers, strings), got "
                        f"{model_kwargs!r}") from err
    return items


class _ById:
    """An unhashable model (a Linen module holding a list) as a jit-static key, by identity."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ById) and other.obj is self.obj


def _hashable(obj: Any) -> Any:
    try:
        hash(obj)
    except TypeError:
        return _ById(obj)
    return obj


def split(model: Any, variables: Any = None, params: Any = None,
          model_kwargs: dict | None = None) -> tuple[Hashable, Any]:
    """``(static, dynamic)`` for ``model``; raises for what cannot be explained."""
    if params is not None:
        if isinstance(model, (nnx.Module, nn.Module)):
            raise TypeError("params= is for a plain function fn(params, x); "
                            + ("an NNX module carries its own parameters"
                               if isinstance(model, nnx.Module)
                               else "pass a Linen module's variables as variables="))
        if variables is not None:
            raise ValueError("pass the function's parameters as params= or variables=, not both")
        variables = params
    kw = _kwargs(model_kwargs)
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise TypeError("an NNX module carries its own parameters: do not pass variables=")
        check_eval_mode(model)
        graphdef, state = nnx.split(model)
        return ("nnx", graphdef, kw), state
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("a Linen module needs its variables: pass variables=...")
        return ("linen", _hashable(model), kw), variables
    if not callable(model):
        raise TypeError(f"cannot explain an object of type {type(model).__name__}: pass an "
                        "nnx.Module, a Linen module with variables, or a function fn(params, x)")
    if kw:
        raise TypeError("model_kwargs= is for Flax modules; close over keywords in a function")
    if isinstance(model, functools.partial) and variables is None:
        leaves, tree = jax.tree.flatten((model.args, model.keywords))
        mask = tuple(_is_array(v) for v in leaves)
        static = tuple(None if m else v for v, m in zip(leaves, mask, strict=True))
        try:
            hash(static)
        except TypeError:
            return ("fn", model, False), None
        return (("partial", model.func, tree, mask, static),
                [v for v, m in zip(leaves, mask, strict=True) if m])
    leaves, tree = jax.tree.flatten(model)
    if variables is None and any(_is_array(v) for v in leaves):  # a callable pytree
        return ("pytree", tree), leaves
    return ("fn", model, variables is not None), variables


def build(static: Hashable, dynamic: Any, marks: list | None = None,
          token: str = "") -> Callable[[Any], Any]:
    """``x -> output`` of the model; leaf module calls marked into ``marks`` when given."""
    route = static[0]
    if route == "nnx":
        _, graphdef, kw = static
        model = nnx.merge(graphdef, dynamic)
        if marks is not None:
            model = _nnx_marked(model, marks, token)
        return lambda x: model(x, **dict(kw))
    if route == "linen":
        _, module, kw = static
        module = module.obj if isinstance(module, _ById) else module
        if marks is None:
            return lambda x: module.apply(dynamic, x, **dict(kw))
        return _linen_marked(module, dynamic, dict(kw), marks, token)
    if route == "fn":
        _, fn, has_params = static
        return (lambda x: fn(dynamic, x)) if has_params else fn
    if route == "pytree":
        return jax.tree.unflatten(static[1], dynamic)
    _, func, tree, mask, fixed = static  # partial
    it = iter(dynamic)
    leaves = [next(it) if m else v for v, m in zip(fixed, mask, strict=True)]
    args, keywords = jax.tree.unflatten(tree, leaves)
    return functools.partial(func, *args, **keywords)
