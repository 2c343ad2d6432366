"""The engine's data: marks, sites, the planned levels of a jaxpr, and jaxpr helpers."""

from __future__ import annotations

import os
import sysconfig
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp

from .. import ops
from ..composites import Composite
from ..core import rule_keywords
from ..coverage import Coverage, LayerRow, UnsupportedLayerError

MARK = "lrpjax_mark_"
"""Name prefix of the jit calls by which module front-ends mark a leaf module call."""
SCOPE = "lrpjax|"
"""Prefix of the ``jax.named_scope`` in which module front-ends call a module with children."""


class UnsupportedPrimitiveError(UnsupportedLayerError):
    """An operation on x that LRP has no rule for (it names primitive, path and source line)."""


class _Op:
    """The ``module_type`` composites see for an operation outside any module."""


@dataclass(frozen=True)
class Mark:
    """A marked module call: its path, the module, and the pytree of its parameter leaves."""

    path: str
    module: Any
    state_tree: Any  # treedef of the parameter leaves that open the call's arguments
    n_state: int


@dataclass
class Site:
    """One relevance-carrying operation and the rule it gets (a row of the report)."""

    path: str
    kind: str
    op: str
    where: str
    module_type: type = _Op
    module: Any = None
    rule: Any = None
    source: str = ""  # "composite" | "default" | "table" | "unsupported"
    facts: dict = field(default_factory=dict)  # proven by lrpjax.facts: nonneg, gated
    held: str = ""  # what the composite holds constant in this operation (AttnLRP, CP-LRP)


@dataclass
class _Layer:
    site: Site
    members: tuple[int, ...]
    xs: tuple  # relevance-carrying input vars
    consts: tuple  # other outside vars the members read
    out: Any
    form: str  # "eqns" | "linear" | "affine" | "module"
    extra: Any = None


@dataclass
class _Level:
    dep: list[bool]
    jaxpr: Any = None
    parent: Any = None  # (level, eqn index) of the call this level is the body of
    actions: dict[int, Any] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    held: dict[int, str] = field(default_factory=dict)  # eqn -> what it holds constant


@dataclass
class _Call:
    level: _Level
    jaxpr: Any
    consts: list


@dataclass
class Plan:
    """The walked jaxpr: its levels, the sites in forward order, structural-op counts."""

    jaxpr: Any
    level: _Level
    sites: list[Site]
    structural: Counter

    def coverage(self, composite: Composite) -> Coverage:
        """The report: one row per layer path (a layer called twice: the facts true at every
        call), the facts its rule receives in the "proven" column."""
        rows: dict[str, LayerRow] = {}
        for s in self.sites:
            used = rule_keywords(s.rule, s.facts)
            proven = {"input >= 0"} if used.get("nonneg", (False,))[0] else set()
            if used.get("gated") and proven:
                proven.add("gated")
            row = rows.get(s.path)
            if row is not None:
                proven &= set(row.proven.split(", ")) - {""}
            rows[s.path] = LayerRow(
                s.path, s.module_type.__name__ if s.module_type is not _Op else s.op, s.kind,
                s.rule, s.source, proven=", ".join(sorted(proven, reverse=True)),
                where=s.where, held=s.held) if row is None else replace(
                    row, proven=", ".join(sorted(proven, reverse=True)))
        return Coverage(tuple(rows.values()), composite=repr(composite),
                        structural=tuple(sorted(self.structural.items())))


# ------------------------------------------------------------------ helpers
def _lit(v: Any) -> bool:
    return isinstance(v, jex.core.Literal)


def _inexact(v: Any) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _shape(v: Any) -> tuple:
    return tuple(getattr(v.aval, "shape", ()))


def _bind(eqn: Any, vals: list) -> list:
    params = eqn.primitive.get_bind_params(eqn.params)  # as jax.core.eval_jaxpr does
    subfuns, params = params if isinstance(params, tuple) else ((), params)  # older JAX: a pair
    out = eqn.primitive.bind(*subfuns, *vals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _body(eqn: Any) -> tuple[Any, list] | None:
    key = ops.CALLS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    if isinstance(sub, jex.core.ClosedJaxpr):
        return sub.jaxpr, list(sub.consts)
    return sub, []


_LIBS = tuple(os.path.dirname(m.__file__) + os.sep for m in
              (jax, __import__("jaxlib"), __import__("flax"), __import__("lrpjax"))) + (
    sysconfig.get_paths()["stdlib"] + os.sep,)  # contextlib's decorators, functools


def _frames(eqn: Any) -> list:
    tb = getattr(eqn.source_info, "traceback", None)
    return list(tb.frames) if tb is not None else []


_JAX = _LIBS[:2] + _LIBS[3:]  # everything but Flax
_LAB = os.path.join(_LIBS[3], "lab") + os.sep  # lrpjax.lab's models are user code


def where(eqn: Any, user_only: bool = False) -> str:
    """The user's source line of an equation, "file.py:12 (Block.__call__)"; Flax's own line
    (e.g. ``nnx.avg_pool`` called by ``nnx.Sequential``) when no user code is on the stack,
    "?" when none is (or ``user_only`` and no user code)."""
    frames = [f for f in _frames(eqn) if "<frozen" not in f.file_name]
    for libs in (_LIBS,) if user_only else (_LIBS, _JAX):
        for fr in frames:
            if not fr.file_name.startswith(libs) or fr.file_name.startswith(_LAB):
                return f"{os.path.basename(fr.file_name)}:{fr.line_num} ({fr.function_name})"
    return "?"


def _scope(eqn: Any) -> str:
    """The innermost module path a front-end put in the equation's name stack, "a/b/"."""
    stack = getattr(getattr(eqn.source_info, "name_stack", None), "stack", ())
    for scope in reversed(stack):
        name = str(getattr(scope, "name", ""))
        if name.startswith(SCOPE):
            return name[len(SCOPE):].replace("|", "/") + "/"
    return ""


def _activation_key(eqn: Any) -> tuple | None:
    """(activation, caller file, line) when the equation comes from a ``jax.nn`` activation."""
    frames, key = _frames(eqn), None
    for i, fr in enumerate(frames):  # innermost first: keep the outermost activation frame
        if (fr.file_name.endswith(os.path.join("jax", "_src", "nn", "functions.py"))
                and (fr.function_name in ops.ACTIVATIONS or fr.function_name == "softmax")):
            caller = frames[i + 1] if i + 1 < len(frames) else fr
            key = (fr.function_name, caller.file_name, caller.line_num)
    return key

