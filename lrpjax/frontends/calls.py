"""One recorder: the leaf-module calls of a forward pass, in forward order.

A *leaf* module calls no other module: an NNX module with no sub-module in its graph, a Linen
module beneath whose path no other module is called. :func:`nnx_leaf_calls` and
:func:`linen_leaf_calls` run one abstract evaluation (``jax.eval_shape``, nothing is computed)
and return a :class:`LeafCall` per leaf call, in the order the calls begin; a module called
twice appears twice, and each call's ``args`` are the very objects the model passed, so
``calls[i].args[0] is calls[i - 1].out`` says that nothing happened in between (how
:func:`lrpjax.canonizers.fold_batchnorm` finds a BatchNorm that directly follows a linear layer).
The root module counts as a leaf only when it calls no other module; only ``__call__`` is
recorded (not ``embed.attend``).

Linen specifics, in one place here: a module path is its scope path ("Block_0/Dense_1"); the
calls at the paths in :data:`LINEN_IDENTITY` (BatchNorms folded away) return their input and
are not recorded; a model using ``flax.linen.jit`` is refused, since JAX reuses one trace for
every instance of a jitted module class and hides their layers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
from flax import linen as nn
from flax import nnx

__all__ = ["LINEN_IDENTITY", "LeafCall", "is_leaf", "linen_as_identity", "linen_identity",
           "linen_leaf_calls", "linen_path", "nnx_leaf_calls", "nnx_path"]

LINEN_IDENTITY: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "lrpjax_linen_identity", default=frozenset())
"""Linen module paths whose calls are the identity (BatchNorms folded away, see
:class:`lrpjax.canonizers.FoldedLinen`)."""


@dataclass(frozen=True)
class LeafCall:
    """One call of a leaf module: where it sits, what it is, what it got and returned.

    Attributes:
        path: the module's path, "layers/0" (NNX) or "Block_0/Dense_1" (Linen).
        module: the module: for NNX the model's module as seen in the recorder's view (a copy
            of the same type sharing its Variables), for Linen the bound module of the call.
        args: the positional arguments, the objects the model passed (abstract values).
        kwargs: the keyword arguments.
        out: the returned value (abstract).
    """

    path: str
    module: Any
    args: tuple
    kwargs: dict
    out: Any


# ---------------------------------------------------------------- Flax NNX
def nnx_path(parts: tuple) -> str:
    """An NNX graph path as a string: ``("layers", 0)`` -> "layers/0"."""
    return "/".join(map(str, parts))


def is_leaf(module: nnx.Module) -> bool:
    """Whether an NNX module has no sub-module in its graph."""
    return not any(isinstance(n, nnx.Module) and n is not module
                   for _, n in nnx.iter_graph(module))


def delegate_to_inner(cls: type, own: tuple[str, ...]) -> None:
    """Let a wrapper class with an ``inner`` module reach the wrapped module's other
    attributes and methods (``embed.attend``, ``linear.kernel``); ``own`` are its own names."""
    def __getattr__(self: Any, attr: str) -> Any:
        if attr in own or attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)
    cls.__getattr__ = __getattr__  # type: ignore[attr-defined]


def _record(log: list, path: str, module: Any, call: Callable, args: tuple,
            kwargs: dict) -> Any:
    """``call(*args, **kwargs)``, logged at the position where the call began."""
    i = len(log)
    log.append(None)
    out = call(*args, **kwargs)
    log[i] = LeafCall(path, module, args, dict(kwargs), out)
    return out


class _Recorded(nnx.Module):
    """A leaf module whose calls are appended to ``log``."""

    def __init__(self, inner: nnx.Module, path: str, log: list):
        self.inner, self.path, self.log = inner, path, log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _record(self.log, self.path, self.inner, self.inner, args, kwargs)


delegate_to_inner(_Recorded, ("inner", "path", "log"))


def nnx_leaf_calls(model: nnx.Module, x: Any,
                   model_kwargs: dict | None = None) -> list[LeafCall]:
    """The leaf-module calls of ``model(x, **model_kwargs)`` in forward order.

    Args:
        model: an NNX module; a view of it (``nnx.recursive_map``, sharing its Variables) with
            each leaf module wrapped is evaluated abstractly, the model itself is not changed.
        x: an example input (an array, a ``jax.ShapeDtypeStruct`` or a pytree of them).
        model_kwargs: keyword arguments of the model call.

    Returns:
        One :class:`LeafCall` per leaf call, with the module's graph path ("" for a root that
        is itself a leaf).
    """
    log: list = []

    def wrap(parts: tuple, node: Any) -> Any:
        if isinstance(node, nnx.Module) and is_leaf(node):
            return _Recorded(node, nnx_path(parts), log)
        return node

    view = nnx.recursive_map(wrap, model)
    kw = dict(model_kwargs or {})
    jax.eval_shape(lambda a: view(a, **kw), x)
    return log


# ---------------------------------------------------------------- Flax Linen
def linen_path(module: nn.Module) -> str:
    """A bound Linen module's path, "Block_0/Dense_1"."""
    return "/".join(module.scope.path) if module.scope is not None else ""


def linen_identity(context: Any) -> bool:
    """Whether an intercepted Linen call is a module call listed in :data:`LINEN_IDENTITY`
    (the call then returns its first argument)."""
    return (context.method_name == "__call__"
            and linen_path(context.module) in LINEN_IDENTITY.get())


def _skip_identity(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    return args[0] if linen_identity(context) else next_fun(*args, **kwargs)


@contextlib.contextmanager
def linen_as_identity(paths: frozenset[str]) -> Iterator[None]:
    """Within the block the Linen module calls at ``paths`` return their first argument
    (interceptors installed outside it check :func:`linen_identity` themselves, since they run
    first)."""
    token = LINEN_IDENTITY.set(LINEN_IDENTITY.get() | paths)
    try:
        with nn.intercept_methods(_skip_identity):
            yield
    finally:
        LINEN_IDENTITY.reset(token)


def _is_linen_jit(cls: type) -> bool:
    return cls.__module__ == "flax.linen.transforms" and cls.__name__.startswith("Jit")


def _leaves(log: list[LeafCall]) -> list[LeafCall]:
    """The calls beneath whose path no other call lies (the root: when it is the only path)."""
    paths = {c.path for c in log}
    return [c for c in log
            if not any(q != c.path and (not c.path or q.startswith(c.path + "/"))
                       for q in paths)]


def linen_leaf_calls(module: nn.Module, variables: Any, x: Any,
                     model_kwargs: dict | None = None) -> list[LeafCall]:
    """The leaf-module calls of ``module.apply(variables, x, **model_kwargs)`` in forward order.

    Args:
        module: a Linen module.
        variables: its variables.
        x: an example input (an array, a ``jax.ShapeDtypeStruct`` or a pytree of them).
        model_kwargs: keyword arguments of the model call.

    Returns:
        One :class:`LeafCall` per leaf call (``nn.intercept_methods``), with the bound module
        and its scope path; calls at :data:`LINEN_IDENTITY` paths are skipped.

    Raises:
        ValueError: the model uses ``flax.linen.jit``.
    """
    log: list = []
    jitted: list[str] = []

    def record(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        if _is_linen_jit(type(context.module)):
            jitted.append(type(context.module).__name__)
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if linen_identity(context):
            return args[0]
        return _record(log, linen_path(context.module), context.module, next_fun, args, kwargs)

    def run(a: Any) -> Any:
        with nn.intercept_methods(record):
            return module.apply(variables, a, **dict(model_kwargs or {}))

    jax.eval_shape(run, x)
    if jitted:
        raise ValueError(
            f"cannot explain through flax.linen.jit ({sorted(set(jitted))}): JAX reuses one "
            "trace for every instance of a jitted module class, which hides their layers. Use "
            "the plain module class; lrpjax compiles the whole model anyway.")
    return _leaves(log)
