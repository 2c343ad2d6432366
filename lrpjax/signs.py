"""Static sign analysis: which LRP layer inputs are >= 0 for *every* input of the model.

The sign-split rules (z+, alpha-beta) compute W+ a+ and W- a- separately. Behind a ReLU
a- = 0, and half of that work multiplies zeros. Whether a layer's input is non-negative is a
property of the model, not of one batch, so it is decided once per trace: the model is traced
to a jaxpr with every LRP layer as a named call, and non-negativity is propagated forward
through the primitives (max(x, 0), abs, exp, sigmoid, sums/products/pooling/reshapes of
non-negative values, ...). Anything not proven is "unknown" and takes the general path, so the
analysis can only save work, never change a result: the cheaper forms drop products that are
exactly zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from . import core

__all__ = ["disabled", "known_signs", "nonneg_layer_inputs"]

_ALWAYS = {"abs", "exp", "exp2", "logistic", "sqrt", "rsqrt", "square", "iota"}
_ALL = {  # non-negative when every operand is
    "add", "add_any", "mul", "div", "min", "dot_general", "conv_general_dilated",
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_window_sum",
    "reduce_window_max", "reduce_window_min", "cumsum", "cummax", "cummin", "cumprod",
    "concatenate", "pad", "convert_element_type", "copy", "copy_p", "reshape", "broadcast_in_dim",
    "squeeze", "expand_dims", "transpose", "rev", "slice", "reduce_precision", "stop_gradient",
    "optimization_barrier",
}
_FIRST = {"dynamic_slice", "gather", "split", "pow"}  # follows the first operand
_SUB_JAXPR = ("jaxpr", "call_jaxpr")
# Call-like primitives whose body runs once on exactly the call's operands. Loops (scan,
# while) and branches (cond) are never entered: a carry's sign can change between iterations,
# so layers inside them stay "unknown".
_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2", "named_call"}
_ENABLED = [True]


def _value_nonneg(val: Any) -> bool:
    if isinstance(val, jax.core.Tracer):
        return False
    try:
        arr = np.asarray(val)
        return bool(arr.dtype == bool or np.all(arr >= 0))
    except Exception:  # noqa: BLE001 - an opaque constant is simply "unknown"
        return False


def _dtype_nonneg(var: Any) -> bool:
    dtype = getattr(getattr(var, "aval", None), "dtype", None)
    return dtype is not None and (dtype == bool or np.issubdtype(dtype, np.unsignedinteger))


def _primitive(name: str, params: dict, ins: list[bool]) -> bool:
    if name in _ALWAYS:
        return True
    if name == "max":
        return any(ins)
    if name in _ALL:
        return all(ins)
    if name in _FIRST:
        return ins[0]
    if name == "select_n":
        return all(ins[1:])
    if name == "integer_pow":
        return params.get("y", 1) % 2 == 0 or ins[0]
    if name == "clamp":  # clamp(lo, x, hi)
        return ins[0] or (ins[1] and ins[2])
    if name == "dynamic_update_slice":
        return ins[0] and ins[1]
    return False


def _sub_jaxpr(eqn: Any) -> Any:
    for key in _SUB_JAXPR:
        sub = eqn.params.get(key)
        if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
            return sub
    return None


def _analyse(jaxpr: Any, consts: Sequence[Any], ins: Sequence[bool], found: dict) -> list[bool]:
    """Propagate non-negativity through ``jaxpr``; record marked layer inputs in ``found``."""
    env: dict = {}

    def sign(v: Any) -> bool:
        if isinstance(v, jax.extend.core.Literal):
            return _value_nonneg(v.val)
        return env.get(v, False) or _dtype_nonneg(v)

    for var, val in zip(jaxpr.constvars, consts, strict=False):
        env[var] = _value_nonneg(val)
    for var, s in zip(jaxpr.invars, ins, strict=True):
        env[var] = s
    for eqn in jaxpr.eqns:
        signs = [sign(v) for v in eqn.invars]
        name = eqn.primitive.name
        label = str(eqn.params.get("name", "")) if name in ("jit", "pjit") else ""
        if label.startswith(core.MARKER):
            found[int(label[len(core.MARKER):])] = signs
        sub = _sub_jaxpr(eqn)
        if name not in _CALLS and sub is not None:
            outs = [False] * len(eqn.outvars)
        elif sub is not None:
            inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "jaxpr") else (sub, ())
            if len(inner.invars) == len(eqn.invars):
                outs = _analyse(inner, inner_consts, signs, found)
            else:
                outs = [False] * len(eqn.outvars)
        elif any(key in eqn.params for key in ("branches", "body_jaxpr", "cond_jaxpr")):
            outs = [False] * len(eqn.outvars)
        else:
            outs = [_primitive(name, eqn.params, signs)] * len(eqn.outvars)
        for var, s in zip(eqn.outvars, outs, strict=True):
            env[var] = s
    return [sign(v) for v in jaxpr.outvars]


def nonneg_layer_inputs(fn: Callable[[Any], Any], x: Any) -> core.SignState | None:
    """Trace ``fn(x)`` once with marked layers; per LRP layer call, which inputs are >= 0.

    Returns None when the model cannot be traced that way (every layer then takes the
    general path). ``x`` itself counts as unknown.
    """
    log: list = []
    token = core._MARKING.set(log)
    try:
        closed = jax.make_jaxpr(fn)(x)
    except Exception:  # noqa: BLE001 - an optimisation only: fall back to the general path
        return None
    finally:
        core._MARKING.reset(token)
    found: dict[int, list[bool]] = {}
    _analyse(closed.jaxpr, closed.consts, [False] * len(closed.jaxpr.invars), found)
    flags = []
    for k, shapes in enumerate(log):
        signs = found.get(k, [])
        n = len(shapes)  # the layer inputs are the last n arguments of the marked call
        flags.append(tuple(signs[-n:]) if len(signs) >= n else (False,) * n)
    return core.SignState(flags=flags, shapes=log)


@contextlib.contextmanager
def known_signs(fn: Callable[[Any], Any], x: Any) -> Iterator[core.SignState | None]:
    """Within the block, LRP layers traced by ``fn(x)`` get their proven input signs."""
    state = nonneg_layer_inputs(fn, x) if _ENABLED[0] else None
    token = core._SIGNS.set(state)
    try:
        yield state
    finally:
        core._SIGNS.reset(token)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Turn the analysis off (every layer takes the general path), e.g. to compare results.

    Affects functions traced inside the block; ``lrpjax.relevance`` caches compiled functions,
    so clear them (``jax.clear_caches()``) when comparing.
    """
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = True
