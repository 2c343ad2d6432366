"""Static sign analysis: which LRP layer inputs are >= 0 for *every* input of the model.

The sign-split rules (z+, alpha-beta) compute W+ a+ and W- a- separately. Behind a ReLU
a- = 0, and half of that work multiplies zeros. Whether a layer's input is non-negative is a
property of the model, not of one batch, so it is decided once per trace: the model is traced
to a jaxpr with every LRP layer as a named call, and non-negativity is propagated forward
through the primitives (max(x, 0), abs, exp, sigmoid, sums/products/pooling/reshapes of
non-negative values, ...). Anything not proven is "unknown" and takes the general path, so the
analysis can only save work, never change a result: the cheaper forms drop products that are
exactly zero.

The same trace is read backwards for a second fact, the *output gate* of a layer: that the
relevance reaching it is zero wherever its output z < 0. It holds where z only feeds a ReLU (a
plain ``max(z, 0)``, ``jax.nn.relu``, or an activation layer with the Pass rule whose own
zero outputs receive zero relevance, e.g. because every consumer's rule has the form
R_j = a_j * (...)), possibly through reshapes, transposes, max pooling and gathers. Gamma
then drops its s_n half (one transpose instead of two). Again only proofs count: any
unrecognised consumer, a model output, or a loop or branch means "not proven".
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import core

__all__ = ["disabled", "known_signs", "nonneg_layer_inputs", "output_gates", "vjp"]

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
# JAX caches the traces of jitted and checkpointed functions (``jax.jit(lambda m, x: m(x))`` at
# module level, inside a model). The analysis trace replaces every LRP layer by a plain marked
# call, and a real trace bakes the proven facts into its layers; neither may be served to a
# trace made with other facts (a plain gradient in place of a rule; one model's facts in
# another). A jit-cache-sensitive context keeps them apart: a fresh value per analysis, and
# the facts themselves for a real trace. Layers inside one cached body share one LRP call, so
# the analysis combines the facts of all its call sites (a fact must hold at every one).
_TRACE_FACTS = jax.make_user_context(default_value=None)
_ANALYSES = itertools.count()


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
            k = int(label[len(core.MARKER):])  # one traced body can serve several call sites
            found[k] = [a and b for a, b in zip(found.get(k, signs), signs, strict=True)]
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
# Calls whose VJP is the VJP of their body (custom_jvp / custom_vjp calls have their own).
_GRAD_CALLS = _CALLS - {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}


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
        name, sub = eqn.primitive.name, _sub_jaxpr(eqn)
        ins = [v for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)]
        if len(ins) != 1 or ins[0] not in kind or len(eqn.outvars) != 1:
            continue  # not on a path from the input (if the output uses it: None below)
        here = kind[ins[0]]
        if sub is not None and (name in _GRAD_CALLS or _is_relu_call(eqn)):
            step = _activation_kind(sub.jaxpr if hasattr(sub, "jaxpr") else sub)
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
            name, sub = eqn.primitive.name, _sub_jaxpr(eqn)
            label = str(eqn.params.get("name", "")) if name in ("jit", "pjit") else ""
            if label.startswith(core.MARKER):
                k = int(label[len(core.MARKER):])
                gates[k] = (gates.get(k, True) and k < len(self.rules)  # every call site
                            and len(eqn.outvars) == 1
                            and self.holds(jaxpr, eqn.outvars[0], "neg", outer))
            elif name in _GRAD_CALLS and sub is not None:
                inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
                if len(inner.invars) == len(eqn.invars):
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
        name, sub = eqn.primitive.name, _sub_jaxpr(eqn)

        def after(kind_out: str) -> bool:
            return self.holds(jaxpr, eqn.outvars[0], kind_out, outer)

        label = str(eqn.params.get("name", "")) if name in ("jit", "pjit") else ""
        if label.startswith(core.MARKER):
            k = int(label[len(core.MARKER):])
            if k >= len(self.rules):  # a stale marker (a trace JAX cached): know nothing
                return False
            rule, n_params = self.rules[k], len(eqn.invars) - self.n_inputs[k]
            if all(j < n_params for j in positions):
                return True  # parameters get zero cotangents
            if kind == "zero" and getattr(rule, "scales_by_input", False):
                return True  # R_in = a * (...)
            body = None if sub is None else (sub.jaxpr if hasattr(sub, "jaxpr") else sub)
            if getattr(rule, "passes_relevance", False) and body is not None:
                act = _activation_kind(body)
                if act == "relu":  # z < 0 and z == 0 both give a zero output
                    return after("zero")
                if act == "move":
                    return after(kind)
            return False
        if _is_relu_call(eqn) and sub is not None:  # zero wherever x <= 0
            return _activation_kind(sub.jaxpr if hasattr(sub, "jaxpr") else sub) == "relu"
        if name in _GRAD_CALLS and sub is not None:
            inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
            if len(inner.invars) != len(eqn.invars):
                return False
            body_outer = self._outer(jaxpr, eqn, outer)
            return all(self.holds(inner, inner.invars[j], kind, body_outer) for j in positions)
        if name == "max" and len(eqn.invars) == 2:
            other = _literal(eqn.invars[1 - positions[0]]) if len(positions) == 1 else None
            if other is not None and (other > 0 or (other == 0 and kind == "neg")):
                return True  # the operand loses wherever it is < 0 (or == 0 < other)
            return after(kind)
        if name in _MOVE_ALL or (name in _MOVE_FIRST and positions == [0]):
            return after(kind)
        return False


def nonneg_layer_inputs(fn: Callable[[Any], Any], x: Any) -> core.SignState | None:
    """Trace ``fn(x)`` once with marked layers; per LRP layer call, which inputs are >= 0 and
    whether its output gate holds (see the module docstring).

    Returns None when the model cannot be traced that way (every layer then takes the
    general path). ``x`` itself counts as unknown.
    """
    log: list = []
    token = core._MARKING.set(log)
    try:
        with _TRACE_FACTS(("analysis", next(_ANALYSES))):  # marked traces stay out of caches
            closed = jax.make_jaxpr(fn)(x)
    except Exception:  # noqa: BLE001 - an optimisation only: fall back to the general path
        return None
    finally:
        core._MARKING.reset(token)
    found: dict[int, list[bool]] = {}
    _analyse(closed.jaxpr, closed.consts, [False] * len(closed.jaxpr.invars), found)
    shapes = [entry[0] for entry in log]
    flags = []
    for k, layer_shapes in enumerate(shapes):
        signs = found.get(k, [])
        n = len(layer_shapes)  # the layer inputs are the last n arguments of the marked call
        flags.append(tuple(signs[-n:]) if len(signs) >= n else (False,) * n)
    try:
        gated = output_gates(closed.jaxpr, log)
    except RecursionError:  # an absurdly long chain of reshapes: prove nothing
        gated = [False] * len(log)
    return core.SignState(flags=flags, shapes=shapes, gated=gated)


def output_gates(jaxpr: Any, log: Sequence[tuple]) -> list[bool]:
    """Per marked call k (``log[k] = (input shapes, rule)``): is the relevance reaching its
    output provably zero wherever that output is < 0?"""
    gates: dict[int, bool] = {}
    analysis = _Gates([rule for _, rule in log], [len(shapes) for shapes, _ in log])
    analysis.walk(jaxpr, lambda i, kind: False, gates)  # the model's outputs: not proven
    return [gates.get(k, False) for k in range(len(log))]


@contextlib.contextmanager
def known_signs(fn: Callable[[Any], Any], x: Any) -> Iterator[core.SignState | None]:
    """Within the block, LRP layers traced by ``fn(x)`` get their proven input signs."""
    state = nonneg_layer_inputs(fn, x) if _ENABLED[0] else None
    token = core._SIGNS.set(state)
    try:
        yield state
    finally:
        core._SIGNS.reset(token)


def vjp(fn: Callable[[Any], Any], x: Any) -> tuple[Any, Callable]:
    """``jax.vjp(fn, x)`` with the proven facts applied to its LRP layers. Should the traced
    layer calls not match the analysed ones one for one, it traces again without them."""
    with known_signs(fn, x) as state:
        key = None if state is None else (tuple(state.shapes), tuple(state.flags),
                                          tuple(state.gated))
        with _TRACE_FACTS(key):
            y, pull = jax.vjp(fn, x)
    if state is None or state.matched():
        return y, pull
    with disabled(), known_signs(fn, x):
        return jax.vjp(fn, x)


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
