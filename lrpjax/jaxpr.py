"""The jaxpr front-end: LRP for any JAX function ``fn(params, x)`` (Equinox/Haiku-style code too).

The function is traced to a jaxpr and re-interpreted. Every equation whose result depends on
the input x is classified:

* ``dot_general`` / ``conv_general_dilated`` with one x-dependent operand (the activation) and
  one constant operand (the weights) is a linear layer, fused with a following ``add`` of a
  constant (the bias); it gets the composite's rule (kinds "dense" / "conv");
* sums over x (``reduce_sum``, ``reduce_window_sum``: sum/avg pooling) and adds of two
  x-dependent values (residual connections) get ``Norm`` (kind "avgpool" / "add");
* elementwise ops with one x-dependent operand (ReLU as ``max(x, 0)``, scaling, casts) pass
  relevance unchanged (kind "activation");
* data movement (reshape, transpose, slicing, max pooling) uses its gradient, which moves
  relevance without changing it (max pooling: winner-take-all);
* control flow (scan, while, cond) and any other x-dependent primitive cannot be given a rule:
  they raise, or with ``on_unsupported="warn"`` warn and use the plain gradient.

Calls (jit, custom_jvp/vjp, remat) are interpreted recursively. Linear layers are named
``"<primitive>/<i>"`` with i their index in forward order, so path globs and first/last work.
This depends on JAX internals (primitive names, call parameters); it is tested on jax 0.10.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.extend as jex
import numpy as np

from .composites import Composite, LayerInfo
from .core import apply_rule
from .coverage import Coverage, LayerRow, UnsupportedLayerError
from .rules import Gradient

__all__ = ["UnsupportedPrimitiveError", "lrp_function"]

LINEAR = {"dot_general": "dense", "conv_general_dilated": "conv"}
NORM = {"reduce_sum": "avgpool", "reduce_window_sum": "avgpool"}
ELEMENTWISE = {
    "max", "min", "mul", "div", "add", "sub", "neg", "exp", "log", "tanh", "logistic",
    "convert_element_type", "integer_pow", "abs", "sqrt", "rsqrt", "square", "pow",
    "select_n", "clamp", "erf", "sign", "copy", "copy_p", "stop_gradient", "pjit_relu",
}
MOVEMENT = {
    "reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "slice",
    "dynamic_slice", "concatenate", "pad", "rev", "reduce_max", "reduce_window_max",
    "gather", "reduce_precision",
}
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr"}
CONTROL = {"scan", "while", "cond"}


class UnsupportedPrimitiveError(UnsupportedLayerError):
    """An x-dependent primitive LRP cannot handle (control flow, multiplicative interactions)."""


class _Op:
    """The type that ``by_type`` sees for jaxpr layers (match them by kind string instead)."""


@dataclass
class _Context:
    composite: Composite
    on_unsupported: str
    rules: dict[str, LayerRow] | None  # None: recording pass
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, primitive)
    counter: int = 0


def _read(env: dict, v: Any) -> Any:
    return v.val if isinstance(v, jex.core.Literal) else env[v]


def _dep(deps: dict, v: Any) -> bool:
    return (not isinstance(v, jex.core.Literal)) and deps.get(v, False)


def _bind(eqn: Any, vals: list) -> list:
    out = eqn.primitive.bind(*vals, **eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _sub_jaxpr(eqn: Any) -> tuple[Any, list] | None:
    key = CALLS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    if isinstance(sub, jex.core.ClosedJaxpr):
        return sub.jaxpr, list(sub.consts)
    return sub, []


def _unsupported(ctx: _Context, what: str, prim: str) -> None:
    path = f"{prim}/{ctx.counter}"
    ctx.counter += 1
    if ctx.rules is None:
        ctx.log.append((path, "unsupported", prim))
        return
    msg = (f"{what} depends on the input and has no LRP rule; its plain gradient would be "
           "used. Pass on_unsupported='warn' to accept that.")
    if ctx.on_unsupported == "raise":
        raise UnsupportedPrimitiveError(msg)
    if ctx.on_unsupported == "warn":
        warnings.warn(msg, stacklevel=3)


def _layer(ctx: _Context, kind: str, prim: str) -> tuple[str, Any]:
    """Name the next layer and return (path, rule) — rule None while recording."""
    path = f"{prim}/{ctx.counter}"
    ctx.counter += 1
    if ctx.rules is None:
        ctx.log.append((path, kind, prim))
        return path, None
    row = ctx.rules.get(path)
    return path, None if row is None else row.rule


def _inexact(v: Any) -> bool:
    return jax.numpy.issubdtype(v.aval.dtype, jax.numpy.inexact)


def _interpret(jaxpr: Any, consts: list, args: list, arg_deps: list, ctx: _Context):
    env: dict = {}
    deps: dict = {}  # depends on x (statically)
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v], deps[v] = c, False
    for v, a, d in zip(jaxpr.invars, args, arg_deps, strict=True):
        env[v], deps[v] = a, d
    eqns = jaxpr.eqns
    for eqn in eqns:
        d = any(_dep(deps, v) for v in eqn.invars)
        for v in eqn.outvars:
            deps[v] = d
    # 1) everything that does not depend on x (weights, reshaped biases) is evaluated first
    for eqn in eqns:
        if not (eqn.outvars and deps[eqn.outvars[0]]):
            for v, o in zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars]),
                            strict=True):
                env[v] = o
    uses = Counter(v for e in eqns for v in e.invars if not isinstance(v, jex.core.Literal))
    uses.update(v for v in jaxpr.outvars if not isinstance(v, jex.core.Literal))
    skip: set[int] = set()
    # 2) the x-dependent equations in order, each with its rule
    for i, eqn in enumerate(eqns):
        if i in skip or not (eqn.outvars and deps[eqn.outvars[0]]):
            continue
        name = eqn.primitive.name
        vals = [_read(env, v) for v in eqn.invars]
        # relevance flows through floating-point x-dependent operands only
        dmask = [_dep(deps, v) and _inexact(v) for v in eqn.invars]
        outvars = list(eqn.outvars)
        sub = _sub_jaxpr(eqn)
        if not any(dmask) or not any(_inexact(v) for v in outvars):
            outs = _bind(eqn, vals)  # indices, comparisons: no relevance
        elif sub is not None:
            outs, _ = _interpret(sub[0], sub[1], vals, [_dep(deps, v) for v in eqn.invars], ctx)
        elif name in LINEAR and sum(dmask) == 1:
            outs, outvars = _linear(eqn, i, eqns, vals, dmask, env, deps, uses, skip, ctx)
        elif name in NORM or (name in ("add", "sub") and all(dmask)):
            path, rule = _layer(ctx, NORM.get(name, "add"), name)
            outs = [_wrap(eqn, vals, dmask, rule, path)] if rule is not None else _bind(eqn, vals)
        elif name in ELEMENTWISE and sum(dmask) == 1 and _same_shape(eqn, dmask):
            path, rule = _layer(ctx, "activation", name)
            outs = [_wrap(eqn, vals, dmask, rule, path)] if rule is not None else _bind(eqn, vals)
        elif name in MOVEMENT:
            outs = _bind(eqn, vals)
        else:
            what = "control flow" if name in CONTROL else "primitive"
            _unsupported(ctx, f"{what} {name!r}", name)
            outs = _bind(eqn, vals)
        for v, o in zip(outvars, outs, strict=True):
            env[v] = o
    return [_read(env, v) for v in jaxpr.outvars], [_dep(deps, v) for v in jaxpr.outvars]


def _same_shape(eqn: Any, dmask: list) -> bool:
    dep_var = eqn.invars[dmask.index(True)]
    return tuple(dep_var.aval.shape) == tuple(eqn.outvars[0].aval.shape)


def _wrap(eqn: Any, vals: list, dmask: list, rule: Any, path: str) -> Any:
    """The equation as a layer: x-dependent operands are inputs, the others parameters, except
    concrete scalars (literals such as ReLU's 0): those stay in the layer, where the sign
    analysis (:mod:`lrpjax.signs`) can read them."""
    traced = [not d and (isinstance(v, jax.core.Tracer) or np.ndim(v) > 0)
              for v, d in zip(vals, dmask, strict=True)]
    const = tuple(v for v, t in zip(vals, traced, strict=True) if t)
    xs = [v for v, d in zip(vals, dmask, strict=True) if d]

    def fwd(p: tuple, *a: Any) -> Any:
        it_p, it_a = iter(p), iter(a)
        return _bind(eqn, [next(it_a) if d else next(it_p) if t else v
                           for v, d, t in zip(vals, dmask, traced, strict=True)])[0]

    return apply_rule(fwd, rule, const, *xs, name=path)


def _linear(eqn, i, eqns, vals, dmask, env, deps, uses, skip, ctx):
    """A dot_general/conv with its bias add fused (when the product feeds only that add)."""
    act = dmask.index(True)
    weight = vals[1 - act]
    out = eqn.outvars[0]
    bias_eqn = None
    for j in range(i + 1, len(eqns)):
        e = eqns[j]
        if out in e.invars:
            if (uses[out] == 1 and e.primitive.name == "add" and len(e.invars) == 2
                    and tuple(e.outvars[0].aval.shape) == tuple(out.aval.shape)):
                other = e.invars[1 - e.invars.index(out)]
                if not _dep(deps, other):
                    bias_eqn = (j, other)
            break
    params: dict = {"kernel": weight}
    if bias_eqn is not None:
        params["bias"] = _read(env, bias_eqn[1])
    path, rule = _layer(ctx, LINEAR[eqn.primitive.name], eqn.primitive.name)

    def fwd(p: dict, a: Any) -> Any:
        operands = [a, p["kernel"]] if act == 0 else [p["kernel"], a]
        z = _bind(eqn, operands)[0]
        return z + p["bias"] if "bias" in p else z

    if rule is None or isinstance(rule, Gradient):
        z = fwd(params, vals[act])
    else:
        z = apply_rule(fwd, rule, params, vals[act], name=path)
    if bias_eqn is not None:
        skip.add(bias_eqn[0])
        return [z], [eqns[bias_eqn[0]].outvars[0]]
    return [z], [out]


def lrp_function(
    fn: Callable, params: Any, composite: Composite, x: Any, *, strict: bool = True,
    on_unsupported: str = "raise", _report_only: bool = False,
) -> tuple[Callable[[Any], Any], Coverage]:
    """``(f, coverage)`` with ``f(x) = fn(params, x)`` (or ``fn(x)`` when params is None) whose
    VJP propagates relevance. ``on_unsupported``: "raise" or "warn" for primitives without a rule.
    (``_report_only``: neither, for :func:`lrpjax.describe`, whose coverage reports them.)"""
    if on_unsupported not in ("raise", "warn"):
        raise ValueError(f"on_unsupported must be 'raise' or 'warn', got {on_unsupported!r}")
    if _report_only:
        on_unsupported = "ignore"
    if params is None:
        closed = jax.make_jaxpr(fn)(x)
        leaves: list = []
    else:
        closed = jax.make_jaxpr(fn)(params, x)
        leaves = jax.tree.leaves(params)
    n_p = len(leaves)

    def run(ctx: _Context, a: Any) -> Any:
        outs, _ = _interpret(closed.jaxpr, list(closed.consts), [*leaves, a],
                             [False] * n_p + [True], ctx)
        return jax.tree.unflatten(jax.tree.structure(closed.out_avals), outs) \
            if len(outs) > 1 else outs[0]

    record = _Context(composite, on_unsupported, None)
    jax.eval_shape(lambda a: run(record, a), x)
    linear = [p for p, k, _ in record.log if k in LINEAR.values()]
    rows: dict[str, LayerRow] = {}
    for path, kind, prim in record.log:
        index = linear.index(path) if path in linear else -1
        info = LayerInfo(path=path, kind=kind, module_type=_Op, index=index,
                         n_linear=len(linear))
        rule, source = composite.rule_for(info)
        if kind == "unsupported":
            rule, source = None, "unsupported"
        elif rule is None and strict:
            raise UnsupportedLayerError(f"operation {path!r} ({kind}) has no rule in {composite!r}")
        rows[path] = LayerRow(path, prim, kind, rule, source)
    coverage = Coverage(tuple(rows.values()), composite=repr(composite))
    return (lambda a: run(_Context(composite, on_unsupported, rows), a)), coverage
