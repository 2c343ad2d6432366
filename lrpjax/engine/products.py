"""Products of relevance-carrying values (attention, gates, normalisers) and where relevance
flows at all.

A product of two values that both depend on x (q k^T, A v, gate * up, x / std(x)) has no
single LRP rule; the composite decides (AttnLRP, Achtibat et al. 2024):

* a **normaliser** -- a factor computed from x through a reduction (LayerNorm's and RMSNorm's
  1 / std, a softmax's 1 / sum) -- is held constant when the composite gives kind
  ``"normalizer"`` a rule (the identity rule of AttnLRP: the product is then a scale, and the
  reductions behind the normaliser receive no relevance);
* the other products get the composite's rule for kind ``"product"``; a rule with
  ``values_only = True`` (CP-LRP) holds the factors that come out of a softmax or an activation
  (attention weights, gates) constant, so relevance flows through the values only.

:func:`liveness` then finds, backwards from the output, the operations relevance reaches: only
those need a rule (a constant factor's computation, or a ``stop_gradient``-ed branch, is never
asked for one).
"""

from __future__ import annotations

from typing import Any

from .. import ops
from ..composites import LayerInfo
from .graph import _body, _Layer, _lit

__all__ = ["constant_operands", "liveness", "origins", "rule_for"]

PRODUCTS = ("mul", "div", "dot_general", "conv_general_dilated")
_REDUCE = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax")
_FOLLOW = ("broadcast_in_dim", "reshape", "expand_dims", "squeeze", "transpose",
           "convert_element_type", "copy", "copy_p", "slice", "reduce_precision")
_ELEMENTWISE = ("add", "sub", "mul", "div", "neg", "sqrt", "rsqrt", "integer_pow", "pow",
                "max", "min", "exp", "log", "abs", "square", "stop_gradient")
_REDUCED = ("reduction", "normalizer")


def origins(eqns: list, R: Any, level: Any) -> dict:
    """Per relevance-carrying variable: "reduction" (a sum of x, possibly rescaled, shifted,
    broadcast: a mean), "normalizer" (a nonlinear function of reductions: 1 / std, a max),
    "attention" (a softmax's output), "gate" (an activation's output) or absent. A mean-pooled
    vector is a reduction, not a normaliser: its own norm is the factor held constant."""
    tag: dict = {}
    for i, eqn in enumerate(eqns):
        outs = [v for v in eqn.outvars if R(v)]
        if not outs:
            continue
        act = level.actions.get(i)
        if isinstance(act, _Layer) and act.site.kind in ("softmax", "activation"):
            tag[act.out] = "attention" if act.site.kind == "softmax" else "gate"
            continue
        name = eqn.primitive.name
        ins = [tag.get(v) for v in eqn.invars if R(v)]
        called = _called(eqn)
        if called == "softmax" or called in ops.ACTIVATIONS or name in ("tanh", "logistic"):
            for v in outs:
                tag[v] = "attention" if called == "softmax" else "gate"
            continue
        reduced = bool(ins) and all(x in _REDUCED for x in ins)
        if name in _REDUCE:
            t = "reduction" if name == "reduce_sum" and ins != ["normalizer"] else "normalizer"
        elif name == "div" and reduced and R(eqn.invars[1]):
            t = "normalizer"  # a reciprocal
        elif (name in _FOLLOW or name in ("mul", "div", "neg", "select_n")) and len(ins) == 1:
            t = ins[0]  # moved, scaled or masked by a constant: still the same kind of factor
        elif name in ("add", "sub", "add_any") and reduced:
            t = "normalizer" if "normalizer" in ins else "reduction"
        elif name in _ELEMENTWISE and reduced:
            t = "normalizer"
        else:
            t = None
        if t is not None:
            for v in outs:
                tag.setdefault(v, t)
    return tag


def _called(eqn: Any) -> str:
    """The function a call equation calls: jit's name, or the one call inside a custom_jvp."""
    body = _body(eqn)
    if body is None:
        return ""
    name = str(eqn.params.get("name", ""))
    if not name and len(body[0].eqns) == 1:
        return _called(body[0].eqns[0])
    return name


def rule_for(ctx: Any, kind: str) -> Any:
    """The composite's rule for an operation kind (no path: products are matched by kind)."""
    rule, _ = ctx.composite.rule_for(LayerInfo(path="", kind=kind, module_type=type(None)))
    return rule


def constant_operands(eqn: Any, R: Any, tag: dict, ctx: Any) -> set[int]:
    """Operand positions of a product that the composite holds constant."""
    if eqn.primitive.name not in PRODUCTS:
        return set()
    rel = [k for k, v in enumerate(eqn.invars) if R(v)]
    if len(rel) < 2:
        return set()
    const = set()
    if rule_for(ctx, "normalizer") is not None:
        norm = [k for k in rel if tag.get(eqn.invars[k]) == "normalizer"
                or (eqn.primitive.name == "div" and k == 1 and tag.get(eqn.invars[k]) in _REDUCED)]
        if len(norm) == 1 and (eqn.primitive.name != "div" or norm == [1]):
            const.update(norm)
    product = rule_for(ctx, "product")
    if not const and getattr(product, "values_only", False):
        weights = {k for k in rel if tag.get(eqn.invars[k]) in ("attention", "gate")}
        if weights and len(weights) < len(rel):
            const.update(weights)
    return const


def held_reason(eqn: Any, positions: set[int], tag: dict) -> str:
    """Words for what a product holds constant: a normaliser (AttnLRP's identity rule for
    LayerNorm / RMSNorm / a cosine's norms) or attention weights / a gate (CP-LRP)."""
    tags = {tag.get(eqn.invars[k]) for k in positions}
    if tags & {"attention", "gate"}:
        return "attention weights held constant" if "attention" in tags else "gate held constant"
    return "normaliser held constant"


def liveness(jaxpr: Any, R: Any, tag: dict, ctx: Any, live_out: list[bool] | None
             ) -> tuple[set, dict[int, set[int]]]:
    """(variables relevance reaches, constant operands per product equation)."""
    outs = jaxpr.outvars
    live = {v for k, v in enumerate(outs)
            if not _lit(v) and R(v) and (live_out is None or live_out[k])}
    consts: dict[int, set[int]] = {}
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        if not any(v in live for v in eqn.outvars):
            continue
        const = constant_operands(eqn, R, tag, ctx)
        if const:
            consts[i] = const
        live.update(v for k, v in enumerate(eqn.invars) if R(v) and k not in const)
    return live, consts
