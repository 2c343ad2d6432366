"""Output gates: where the relevance reaching an LRP layer is provably zero at z < 0.

The marked trace of :mod:`lrpjax.signs` (every LRP layer a ``jit`` call named
``lrpjax_layer_<k>``) is read backwards. A layer's output gate holds where its output z only
feeds a ReLU -- a bare ``max(z, 0)`` / ``jax.nn.relu`` (VJP [z > 0] g), or a Pass-rule activation
layer whose zero outputs get zero relevance because every consumer's rule has the form
R_j = a_j (...) (``scales_by_input``) -- possibly through reshapes, transposes, max pooling,
gathers, concatenation and nested jit/remat bodies. Anything else (a model output, an add, a
cast, a custom_vjp, a loop or branch) is "not proven". Gamma then drops its s_n half: one
transpose instead of two (Montavon et al. 2019's gamma rule, Zennit's two-sided form).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import core

__all__ = ["output_gates"]

_SUB_JAXPR = ("jaxpr", "call_jaxpr")
# Call-like primitives whose body runs once on exactly the call's operands. Loops (scan,
# while) and branches (cond) are never entered: a carry's sign can change between iterations,
# so layers inside them stay "unknown".
_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2", "named_call"}
# Calls whose VJP is the VJP of their body (custom_jvp / custom_vjp calls have their own).
_GRAD_CALLS = _CALLS - {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}


def _sub_jaxpr(eqn: Any) -> Any:
    for key in _SUB_JAXPR:
        sub = eqn.params.get(key)
        if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
            return sub
    return None


def _body(eqn: Any) -> Any:
    """The open jaxpr of a call-like equation's body (``_sub_jaxpr`` unwrapped), or None."""
    sub = _sub_jaxpr(eqn)
    return sub.jaxpr if hasattr(sub, "jaxpr") else sub


def _marker(eqn: Any) -> int | None:
    """k for the marked LRP layer call ``lrpjax_layer_<k>`` (:mod:`lrpjax.core`), else None."""
    if eqn.primitive.name not in ("jit", "pjit"):
        return None
    label = str(eqn.params.get("name", ""))
    return int(label[len(core.MARKER):]) if label.startswith(core.MARKER) else None


def _sub_jaxprs(eqn: Any) -> list:
    """Every jaxpr among an equation's parameters (call bodies, loop bodies, cond branches)."""
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "eqns"):
                found.append(item)
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                found.append(item.jaxpr)
    return found


def _markers_in(jaxpr: Any, out: set) -> None:
    for eqn in jaxpr.eqns:
        if _marker(eqn) is not None:
            out.add(_marker(eqn))
        for sub in _sub_jaxprs(eqn):
            _markers_in(sub, out)


# ---------------------------------------------------------------- output gates (backward)
# Ops whose relevance is their plain VJP and that move values without changing them: where an
# operand element is < 0 (or == 0), every output element it reaches is too, and its cotangent
# is a sum of those outputs' cotangents (max/max-pooling/gathers: of the output that selected
# it). So "relevance is zero where the value is < 0 (== 0)" carries from outputs to operand 0
# (for max and concatenate: to every operand).
# Casts are left out: rounding can turn a tiny x < 0 into -0.0.
_MOVE_FIRST = {"reshape", "squeeze", "expand_dims", "transpose", "broadcast_in_dim", "copy",
               "copy_p", "slice", "dynamic_slice", "gather", "pad", "reduce_max",
               "reduce_window_max", "rev"}
_MOVE_ALL = {"max", "concatenate"}


def _is_float(var: Any) -> bool:
    """A floating (or complex) result -- bfloat16 and float8 included -- carries relevance."""
    dtype = getattr(getattr(var, "aval", None), "dtype", None)
    return dtype is None or jnp.issubdtype(dtype, jnp.inexact)


def _literal(v: Any) -> float | None:
    if isinstance(v, jax.extend.core.Literal) and np.ndim(v.val) == 0:
        return float(v.val)
    return None


def _activation_kind(jaxpr: Any) -> str | None:
    """How a one-input, one-output jaxpr maps its input to its output, followed along the
    dataflow: "move" when only reshapes lie between them (element i of the output is element i
    of the input), "relu" when also max(., 0) (element i is relu of element i), else None."""
    if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1:
        return None
    kind = {jaxpr.invars[0]: "move"}  # variables derived from the input, by how
    for eqn in jaxpr.eqns:
        name, body = eqn.primitive.name, _body(eqn)
        ins = [v for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)]
        if len(ins) != 1 or ins[0] not in kind or len(eqn.outvars) != 1:
            continue  # not on a path from the input (if the output uses it: None below)
        here = kind[ins[0]]
        if body is not None and (name in _GRAD_CALLS or _is_relu_call(eqn)):
            step = _activation_kind(body)
        elif name == "max" and len(eqn.invars) == 2 and 0.0 in map(_literal, eqn.invars):
            step = "relu"
        elif name in ("reshape", "squeeze", "expand_dims", "copy", "copy_p"):
            step = "move"
        else:
            step = None
        if step is not None:
            kind[eqn.outvars[0]] = "relu" if "relu" in (here, step) else "move"
    return kind.get(jaxpr.outvars[0])


def _is_relu_call(eqn: Any) -> bool:
    """``jax.nn.relu`` (a custom_jvp call; its VJP is [x > 0] * g), told by its source."""
    if eqn.primitive.name != "custom_jvp_call":
        return False
    sub = eqn.params.get("call_jaxpr")
    info = getattr(getattr(sub, "jaxpr", sub), "debug_info", None)
    src = str(getattr(info, "func_src_info", "") or "").replace("\\", "/")
    return src.startswith("relu at ") and "jax/_src/nn/functions.py" in src


class _Gates:
    """Decides, per (variable, kind), whether the relevance reaching a variable is zero wherever
    its value is < 0 (kind "neg") or == 0 (kind "zero"). ``rules[k]`` is marked call k's rule."""

    def __init__(self, rules: Sequence[Any], n_inputs: Sequence[int]):
        self.rules, self.n_inputs = rules, n_inputs
        self.memo: dict = {}

    def walk(self, jaxpr: Any, outer: Callable[[int, str], bool], gates: dict) -> None:
        """Fill ``gates[k]`` for every marked call k in ``jaxpr`` and the calls inside it."""
        for eqn in jaxpr.eqns:
            k, inner = _marker(eqn), _body(eqn)
            if k is not None:
                gates[k] = (gates.get(k, True) and k < len(self.rules)  # every call site
                            and len(eqn.outvars) == 1
                            and self.holds(jaxpr, eqn.outvars[0], "neg", outer))
            elif (eqn.primitive.name in _GRAD_CALLS and inner is not None
                  and len(inner.invars) == len(eqn.invars)):
                self.walk(inner, self._outer(jaxpr, eqn, outer), gates)

    def _outer(self, jaxpr: Any, eqn: Any, outer: Callable) -> Callable[[int, str], bool]:
        """For a call's body: its i-th result is the call's i-th output in ``jaxpr``."""
        return lambda i, kind: self.holds(jaxpr, eqn.outvars[i], kind, outer)

    def holds(self, jaxpr: Any, var: Any, kind: str, outer: Callable[[int, str], bool]) -> bool:
        key = (id(jaxpr), id(var), kind, outer)  # a body shared by several calls: per call
        if key not in self.memo:
            self.memo[key] = self._holds(jaxpr, var, kind, outer)
        return self.memo[key]

    def _holds(self, jaxpr: Any, var: Any, kind: str, outer: Callable[[int, str], bool]) -> bool:
        for i, out in enumerate(jaxpr.outvars):
            if out is var and not outer(i, kind):
                return False
        for eqn in jaxpr.eqns:
            positions = [j for j, v in enumerate(eqn.invars) if v is var]
            if positions and not self._consumer(jaxpr, eqn, positions, kind, outer):
                return False
        return True

    def _consumer(self, jaxpr: Any, eqn: Any, positions: list[int], kind: str,
                  outer: Callable[[int, str], bool]) -> bool:
        """Is the relevance this one consumer sends back zero where the operand is < 0 / == 0?"""
        if not any(_is_float(v) for v in eqn.outvars):
            return True  # integer / boolean results carry no relevance
        name, body, k = eqn.primitive.name, _body(eqn), _marker(eqn)

        def after(kind_out: str) -> bool:
            return self.holds(jaxpr, eqn.outvars[0], kind_out, outer)

        if k is not None:
            if k >= len(self.rules):  # a stale marker (a trace JAX cached): know nothing
                return False
            rule, n_params = self.rules[k], len(eqn.invars) - self.n_inputs[k]
            if all(j < n_params for j in positions):
                return True  # parameters get zero cotangents
            if kind == "zero" and getattr(rule, "scales_by_input", False):
                return True  # R_in = a * (...)
            if getattr(rule, "passes_relevance", False) and body is not None:
                act = _activation_kind(body)
                if act == "relu":  # z < 0 and z == 0 both give a zero output
                    return after("zero")
                if act == "move":
                    return after(kind)
            return False
        if _is_relu_call(eqn) and body is not None:  # zero wherever x <= 0
            return _activation_kind(body) == "relu"
        if name in _GRAD_CALLS and body is not None:
            if len(body.invars) != len(eqn.invars):
                return False
            body_outer = self._outer(jaxpr, eqn, outer)
            return all(self.holds(body, body.invars[j], kind, body_outer) for j in positions)
        if name == "max" and len(eqn.invars) == 2:
            other = _literal(eqn.invars[1 - positions[0]]) if len(positions) == 1 else None
            if other is not None and (other > 0 or (other == 0 and kind == "neg")):
                return True  # the operand loses wherever it is < 0 (or == 0 < other)
            return after(kind)
        if name in _MOVE_ALL or (name in _MOVE_FIRST and positions == [0]):
            return after(kind)
        return False


def output_gates(jaxpr: Any, log: Sequence[tuple]) -> list[bool]:
    """Per marked call k (``log[k] = (input shapes, rule, name)``): is the relevance reaching its
    output provably zero wherever that output is < 0?"""
    gates: dict[int, bool] = {}
    analysis = _Gates([entry[1] for entry in log], [len(entry[0]) for entry in log])
    analysis.walk(jaxpr, lambda i, kind: False, gates)  # the model's outputs: not proven
    return [gates.get(k, False) for k in range(len(log))]
