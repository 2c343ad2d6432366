"""Sign facts that make z+, alpha-beta and gamma cheaper, proven on the engine's plan.

The sign-split rules compute W+ a+ and W- a- separately; behind a ReLU a- = 0 and half of that
work multiplies zeros. Gamma needs the relevance of the negative outputs only if any can
arrive there. Both are properties of the model, decided once per trace on the jaxpr the engine
walked (:mod:`lrpjax.engine`), so the cheaper forms drop only products that are exactly zero:

* **input >= 0** (a forward pass): a value is non-negative when a whitelisted primitive makes
  it so from non-negative operands (``max(x, 0)``, ``abs``, ``exp``, sums, products, pooling,
  reshapes of non-negative values, ...). Anything else -- an unknown primitive, a traced
  parameter, a loop, a signed-integer result -- proves nothing.
* **gated** (a backward pass): no relevance reaches a linear layer's output where z < 0,
  because every use of z is a ReLU-like activation whose zero outputs receive zero relevance:
  every consumer of them, through exact data movement and winner-take-all choices, is a rule
  of the form R_j = a_j (...) (``scales_by_input``), a ReLU again, or discards relevance.

Measured (2-core CPU, jax 0.10.2, ``benchmarks/results/signs_onoff_cpu_2core.txt``): the facts
save 20-38 % of EpsilonPlusFlat's heatmap time and 10-26 % of EpsilonGammaBox's, and up to
0.47x the gradient's peak memory. :func:`disabled` turns them off (for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import ops
from .engine.graph import Plan, _body, _Call, _Layer, _Level, _lit

__all__ = ["disabled", "enabled"]

_ON = [True]

_ALWAYS = {"abs", "exp", "exp2", "logistic", "sqrt", "rsqrt", "square", "iota"}
_ALL = {  # non-negative when every operand is
    "add", "add_any", "mul", "div", "min", "dot_general", "conv_general_dilated",
    "reduce_sum", "reduce_max", "reduce_min", "reduce_window_sum", "reduce_window_max",
    "reduce_window_min", "cumsum", "cummax", "cummin", "concatenate", "pad",
    "convert_element_type", "copy", "copy_p", "reshape", "broadcast_in_dim", "squeeze",
    "expand_dims", "transpose", "rev", "slice", "reduce_precision", "stop_gradient",
    "dynamic_slice", "sort",
}
_MOVES = {"reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "slice", "pad",
          "concatenate", "convert_element_type", "copy", "copy_p", "rev", "gather",
          "dynamic_slice", "reduce_precision", "reduce_window_max", "reduce_max", "max",
          "select_n", "dynamic_update_slice"}
_RELU = {"relu", "relu6", "ReLU", "LinenReLU"}


def enabled() -> bool:
    """Whether :func:`lrpjax.relevance` uses the proven facts (default True)."""
    return _ON[0]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Compute every rule in its general form (the heatmaps are equal; slower)."""
    _ON[0] = False
    try:
        yield
    finally:
        _ON[0] = True


def annotate(plan: Plan) -> None:
    """Set ``site.facts`` (``nonneg`` per relevance input, ``gated``) on the plan's layers."""
    layers: list[tuple[_Level, _Layer]] = []
    _forward(plan.level, plan.jaxpr.jaxpr, list(plan.jaxpr.consts),
             [False] * len(plan.jaxpr.jaxpr.invars), layers)
    for level, act in layers:
        if act.site.facts.get("nonneg", (False,))[0] and act.site.kind in ("dense", "conv"):
            act.site.facts["gated"] = _gated(level, act)


# ------------------------------------------------------------------ input >= 0
def _value_nonneg(val: Any) -> bool:
    if isinstance(val, jax.core.Tracer):
        return False
    try:
        arr = np.asarray(val)
        return bool(arr.dtype == bool or np.all(arr >= 0))
    except Exception:  # noqa: BLE001 - an opaque constant is simply "unknown"
        return False


def _dtype_nonneg(dtype: Any) -> bool:
    return dtype == bool or jnp.issubdtype(dtype, jnp.unsignedinteger)


def _primitive(eqn: Any, ins: list[bool]) -> bool:
    name = eqn.primitive.name
    if name in _ALWAYS:
        return True
    if name == "max":
        return any(ins)
    if name in _ALL:
        return all(ins)
    if name == "gather":  # out-of-bounds fill must be >= 0 too (the default fill is NaN)
        mode = str(eqn.params.get("mode", ""))
        fill = eqn.params.get("fill_value")
        filled = "FILL" in mode.upper()
        return ins[0] and (not filled or (fill is not None and _value_nonneg(fill)))
    if name == "select_n":
        return all(ins[1:])
    if name == "integer_pow":
        return eqn.params.get("y", 1) % 2 == 0 or ins[0]
    if name == "clamp":  # clamp(lo, x, hi) = min(max(x, lo), hi): also where lo > hi
        return (ins[0] or ins[1]) and ins[2]
    if name == "dynamic_update_slice":
        return ins[0] and ins[1]
    return False


def _forward(level: _Level | None, jaxpr: Any, consts: list, ins: list[bool],
             layers: list) -> list[bool]:
    nn: dict = {v: _value_nonneg(c) for v, c in zip(jaxpr.constvars, consts, strict=True)}
    nn.update(zip(jaxpr.invars, ins, strict=True))

    def sign(v: Any) -> bool:
        if _lit(v):
            return _value_nonneg(v.val)
        return nn.get(v, False) or _dtype_nonneg(v.aval.dtype)

    for i, eqn in enumerate(jaxpr.eqns):
        signs = [sign(v) for v in eqn.invars]
        act = level.actions.get(i) if level is not None else None
        if isinstance(act, _Layer):
            act.site.facts["nonneg"] = tuple(sign(x) for x in act.xs)
            layers.append((level, act))
        body = _body(eqn)
        if isinstance(act, _Call):
            outs = _forward(act.level, act.jaxpr, act.consts, signs, layers)
        elif body is not None:  # a call the plan does not enter (a whole layer, no relevance)
            outs = _forward(None, body[0], body[1], signs, layers)
        else:
            outs = [_primitive(eqn, signs)] * len(eqn.outvars)
        for v, s in zip(eqn.outvars, outs, strict=True):
            signed_int = jnp.issubdtype(v.aval.dtype, jnp.signedinteger)
            nn[v] = s and not signed_int  # signed integers can wrap around
    return [sign(v) for v in jaxpr.outvars]


# ------------------------------------------------------------------ gated
def _owner(level: _Level, i: int) -> Any:
    act = level.actions.get(i)
    if act is not None:
        return act
    for a in level.actions.values():
        if isinstance(a, _Layer) and i in a.members:
            return a
    return None


def _uses(level: _Level, var: Any) -> Iterator[tuple[_Level, Any, Any]]:
    """(level, eqn or action, var) for every use of ``var``; escaping a call body continues
    at the call's result; the model's output yields (None, None, None)."""
    for i, eqn in enumerate(level.jaxpr.eqns):
        if not any(v is var for v in eqn.invars if not _lit(v)):
            continue
        use = _owner(level, i)
        if isinstance(use, _Call):  # into the body: the uses of the matching parameters
            for k, v in enumerate(eqn.invars):
                if v is var:
                    yield from _uses(use.level, use.jaxpr.invars[k])
        else:
            yield level, use or eqn, var
    for k, v in enumerate(level.jaxpr.outvars):
        if v is var:
            if level.parent is None:
                yield None, None, None
            else:
                parent, i = level.parent
                yield from _uses(parent, parent.jaxpr.eqns[i].outvars[k])


def _relu_like(act: _Layer, level: _Level) -> bool:
    """An activation whose output is 0 where its input is < 0 (and 0 at 0)."""
    if act.site.kind != "activation":
        return False
    if act.site.op in _RELU:
        return True
    eqn = level.jaxpr.eqns[act.members[0]]
    consts = [v for v in eqn.invars if v not in act.xs]
    if act.site.op == "max" and len(consts) == 1:
        return _lit(consts[0]) and _is_zero(consts[0].val)
    if act.site.op == "clamp":  # clamp(0, z, hi) is min(0, hi) where z < 0: needs hi >= 0
        lo, hi = eqn.invars[0], eqn.invars[2]
        return _lit(lo) and _is_zero(lo.val) and _lit(hi) and _value_nonneg(hi.val)
    return False


def _is_zero(val: Any) -> bool:
    try:
        return bool(np.all(np.asarray(val) == 0))
    except Exception:  # noqa: BLE001
        return False


def _gated(level: _Level, act: _Layer) -> bool:
    """Every use of the layer's output is a ReLU whose zero outputs get no relevance."""
    seen: set = set()
    for lev, use, _ in _uses(level, act.out):
        if lev is None or not isinstance(use, _Layer) or not _relu_like(use, lev):
            return False
        if not _zero_gets_nothing(lev, use.out, seen):
            return False
    return True


def _zero_gets_nothing(level: _Level, var: Any, seen: set, depth: int = 0) -> bool:
    """No relevance flows back to the entries of ``var`` that are 0."""
    if (id(level), var) in seen:
        return True
    if depth > 200:  # a very long chain: prove nothing rather than recurse without end
        return False
    seen.add((id(level), var))
    for lev, use, v in _uses(level, var):
        if lev is None:
            return False
        if isinstance(use, _Layer):
            if v not in use.xs:
                return False
            rule = use.site.rule
            if getattr(rule, "scales_by_input", False):
                continue  # R_j = a_j (...): zero at a_j = 0
            passes = getattr(rule, "passes_relevance", False) and (
                use.site.kind in ("scale", "flatten", "dropout") or _relu_like(use, lev)
                or use.site.op == "tanh")
            wta = type(rule).__name__ == "Gradient" and use.site.kind == "maxpool"
            if (passes or wta) and _zero_gets_nothing(lev, use.out, seen, depth + 1):
                continue
            return False
        eqn = use
        if not any(jnp.issubdtype(o.aval.dtype, jnp.inexact) for o in eqn.outvars):
            continue  # comparisons, indices: no relevance flows back
        name = eqn.primitive.name
        if name in ops.STOP:
            continue
        if name == "select_n" and eqn.invars[0] is v:
            continue  # the predicate
        if name in _MOVES and all(_zero_gets_nothing(lev, o, seen, depth + 1)
                                  for o in eqn.outvars):
            continue
        return False
    return True
