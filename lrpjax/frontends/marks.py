"""Marks: how a module front-end tells the engine each layer call's path and type.

A leaf module call becomes a jit call named ``lrpjax_mark_<token>_<k>`` whose ``k`` indexes
the trace's list of :class:`lrpjax.engine.Mark` records; a module with sub-modules runs in a
``jax.named_scope`` carrying its path. Shared by the NNX and Linen front-ends.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..engine import MARK, SCOPE, Mark

_TOKENS = itertools.count()
_REENTRY: contextvars.ContextVar[bool] = contextvars.ContextVar("lrpjax_reentry", default=False)


def new_token() -> str:
    """A fresh id for one trace's marks (a mark from another trace is refused)."""
    return str(next(_TOKENS))


def _is_array(v: Any) -> bool:
    return isinstance(v, (jax.Array, np.ndarray, jax.core.Tracer)) or (
        hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, type))


def scope_name(path: str) -> str:
    """The named scope that tells the engine the layer path of the operations inside."""
    return SCOPE + path.replace("/", "|")


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
