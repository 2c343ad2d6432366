"""Static sign analysis: which LRP layer inputs are >= 0 for *every* input of the model.

The sign-split rules (z+, alpha-beta) compute W+ a+ and W- a- separately. Behind a ReLU
a- = 0, and half of that work multiplies zeros. Whether a layer's input is non-negative is a
property of the model, not of one batch, so it is decided once per trace: the model is traced
to a jaxpr with every LRP layer as a named call, and non-negativity is propagated forward
through the primitives (max(x, 0), abs, exp, sigmoid, sums/products/pooling/reshapes of
non-negative values, ...). Anything not proven is "unknown" and takes the general path, so the
analysis can only save work, never change a result: the cheaper forms drop products that are
exactly zero.

The same trace is read backwards (:mod:`lrpjax.gates`) for a second fact, the *output gate*: the
relevance reaching a layer is zero wherever its output z < 0. It holds where z only feeds a ReLU (a
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
import numpy as np

from . import core
from .gates import (
    _CALLS,
    _GRAD_CALLS,
    _body,
    _marker,
    _markers_in,
    _sub_jaxpr,
    _sub_jaxprs,
    output_gates,
)

__all__ = ["disabled", "known_signs", "layer_facts", "nonneg_layer_inputs", "vjp"]

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
        k = _marker(eqn)
        if k is not None:  # one traced body can serve several call sites
            seen = found.get(k, signs)
            found[k] = ([a and b for a, b in zip(seen, signs, strict=True)]
                        if len(seen) == len(signs) else [False] * len(signs))
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
        elif any(_signed_int(v) for v in eqn.outvars) and name not in _NO_OVERFLOW:
            outs = [False] * len(eqn.outvars)  # abs, *, +, ... of signed integers can wrap
        else:
            outs = [_primitive(name, eqn.params, signs)] * len(eqn.outvars)
        for var, s in zip(eqn.outvars, outs, strict=True):
            env[var] = s
    return [sign(v) for v in jaxpr.outvars]


_NO_OVERFLOW = {"max", "min", "reshape", "broadcast_in_dim", "squeeze", "expand_dims",
                "transpose", "slice", "dynamic_slice", "gather", "concatenate", "pad", "copy",
                "copy_p", "rev", "select_n", "reduce_max", "reduce_min", "iota"}


def _signed_int(var: Any) -> bool:
    dtype = getattr(getattr(var, "aval", None), "dtype", None)
    return dtype is not None and np.issubdtype(dtype, np.signedinteger)


def _unreached(jaxpr: Any, entered: set, out: set) -> None:
    """Markers inside bodies an analysis does not enter (loops, branches, calls it does not
    follow): they are traced once and may serve call sites the analysis never saw, so no fact
    found elsewhere may be applied to them."""
    for eqn in jaxpr.eqns:
        if _marker(eqn) is not None:
            continue
        inner = _body(eqn)
        if (inner is not None and eqn.primitive.name in entered
                and len(inner.invars) == len(eqn.invars)):
            _unreached(inner, entered, out)
        else:
            for body in _sub_jaxprs(eqn):
                _markers_in(body, out)


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
    unseen_fwd: set[int] = set()
    unseen_bwd: set[int] = set()
    try:
        _analyse(closed.jaxpr, closed.consts, [False] * len(closed.jaxpr.invars), found)
        _unreached(closed.jaxpr, _CALLS, unseen_fwd)
        _unreached(closed.jaxpr, _GRAD_CALLS, unseen_bwd)
        gated = output_gates(closed.jaxpr, log)
    except Exception:  # noqa: BLE001 - e.g. a long reshape chain (RecursionError): prove nothing
        return None
    shapes = [entry[0] for entry in log]
    flags = []
    for k, layer_shapes in enumerate(shapes):
        signs = [] if k in unseen_fwd else found.get(k, [])
        n = len(layer_shapes)  # the layer inputs are the last n arguments of the marked call
        flags.append(tuple(signs[-n:]) if len(signs) >= n else (False,) * n)
    unseen = unseen_fwd | unseen_bwd
    gated = [g and k not in unseen for k, g in enumerate(gated)]
    return core.SignState(flags=flags, shapes=shapes, gated=gated,
                          names=[entry[2] for entry in log])


def layer_facts(fn: Callable[[Any], Any], x: Any) -> dict[str, tuple[bool, bool]]:
    """Per layer path: (every input proven >= 0, output gate proven), AND-ed over the layer's
    calls; empty when the analysis is off or cannot trace ``fn``."""
    state = nonneg_layer_inputs(fn, x) if _ENABLED[0] else None
    facts: dict[str, tuple[bool, bool]] = {}
    if state is None:
        return facts
    for name, flags, gated in zip(state.names, state.flags, state.gated, strict=True):
        nonneg0, gated0 = facts.get(name, (True, True))
        facts[name] = (nonneg0 and all(flags), gated0 and gated)
    return facts


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
