"""The route choice, in one place: any model becomes a pure ``f(dynamic, x)`` for the engine.

A model is a Flax NNX module, a Flax Linen module with its variables, a plain JAX function
``fn(params, x)`` or ``fn(x)``, a ``functools.partial`` of one, or a callable pytree (an
Equinox-style module). :func:`split` cuts it into a hashable *static* part (what ``jax.jit``
compiles for) and a *dynamic* pytree of arrays (the parameters, traced). :func:`build` puts
them back together as ``x -> output``; with a ``marks`` list, the NNX and Linen routes also
mark every leaf module call as a named jit call whose name indexes ``marks``, so the engine
knows each layer's path and type.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import nnx

from .engine import MARK, SCOPE, Mark

__all__ = ["build", "check_eval_mode", "linen_leaf_calls", "new_token", "split"]

_TOKENS = itertools.count()
_REENTRY: contextvars.ContextVar[bool] = contextvars.ContextVar("lrpjax_reentry", default=False)
LINEN_IDENTITY: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "lrpjax_linen_identity", default=frozenset())
"""Linen module paths whose calls are the identity (BatchNorms folded away, see
:class:`lrpjax.canonizers.FoldedLinen`)."""


def new_token() -> str:
    """A fresh id for one trace's marks (a mark from another trace is refused)."""
    return str(next(_TOKENS))


def _is_array(v: Any) -> bool:
    return isinstance(v, (jax.Array, np.ndarray, jax.core.Tracer)) or (
        hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, type))


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


def _marked_call(fn: Callable, state: Any, args: tuple, kwargs: dict, mark: Mark,
                 marks: list, token: str) -> Any:
    """Call ``fn(state, *args, **kwargs)`` as a jit call named after its index in ``marks``."""
    leaves, tree = jax.tree.flatten(state)
    arg_leaves, arg_tree = jax.tree.flatten(args)
    dyn = [_is_array(v) for v in arg_leaves]
    marks.append(Mark(mark.path, mark.module, tree, len(leaves)))

    def body(state_leaves: list, dyn_args: list) -> Any:
        it = iter(dyn_args)
        full = [next(it) if d else v for v, d in zip(arg_leaves, dyn, strict=True)]
        return fn(jax.tree.unflatten(tree, state_leaves),
                  *jax.tree.unflatten(arg_tree, full), **kwargs)

    body.__name__ = f"{MARK}{token}_{len(marks) - 1}"
    return jax.jit(body)(leaves, [v for v, d in zip(arg_leaves, dyn, strict=True) if d])


# ---------------------------------------------------------------- NNX
def _is_leaf(module: nnx.Module) -> bool:
    return not any(isinstance(n, nnx.Module) and n is not module
                   for _, n in nnx.iter_graph(module))


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


def _delegate(name: str) -> Any:
    """Other attributes and methods (``embed.attend``) reach the wrapped module."""
    def get(self: Any, attr: str) -> Any:
        if attr in ("inner", "path", "marks", "token") or attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)
    get.__name__ = name
    return get


_Marked.__getattr__ = _delegate("__getattr__")  # type: ignore[method-assign]
_Scoped.__getattr__ = _delegate("__getattr__")  # type: ignore[method-assign]


def scope_name(path: str) -> str:
    """The named scope that tells the engine the layer path of the operations inside."""
    return SCOPE + path.replace("/", "|")


def _nnx_marked(model: nnx.Module, marks: list, token: str) -> nnx.Module:
    def wrap(path: tuple, node: Any) -> Any:
        if isinstance(node, nnx.Module) and path and callable(node):
            name = "/".join(map(str, path))
            return (_Marked(node, name, marks, token) if _is_leaf(node)
                    else _Scoped(node, name))
        return node  # the model itself; containers (nnx.List, nnx.Dict) stay as they are
    return nnx.recursive_map(wrap, model)


def check_eval_mode(model: nnx.Module) -> None:
    """Raise when Dropout or BatchNorm would run in training mode (call ``model.eval()``)."""
    for path, node in nnx.iter_graph(model):
        name = "/".join(map(str, path)) or "(root)"
        if (isinstance(node, nnx.Dropout) and not getattr(node, "deterministic", True)
                and getattr(node, "rate", 0) > 0):
            raise ValueError(f"nnx.Dropout at {name!r} is in training mode (random masks): "
                             "call model.eval() before explaining (model.train() undoes it)")
        if isinstance(node, nnx.BatchNorm) and not getattr(node, "use_running_average", True):
            raise ValueError(f"nnx.BatchNorm at {name!r} is in training mode (batch "
                             "statistics): call model.eval() before explaining, then fold it "
                             "(lrpjax.canonizers.fold_batchnorm)")


# ---------------------------------------------------------------- Linen
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
