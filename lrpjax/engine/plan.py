"""Planning: walk a jaxpr once and give every relevance-carrying operation its rule."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import ops
from ..composites import Composite, LayerInfo
from ..coverage import _KINDS, UnsupportedLayerError, classify
from ..rules import Gradient
from . import products
from .graph import (
    MARK,
    Mark,
    Plan,
    Site,
    UnsupportedPrimitiveError,
    _activation_key,
    _body,
    _Call,
    _inexact,
    _Layer,
    _Level,
    _lit,
    _scope,
    _shape,
    where,
)


# ------------------------------------------------------------------ planning
@dataclass
class _Ctx:
    composite: Composite
    marks: list[Mark]
    token: str
    on_unsupported: str  # "raise" | "warn" | "ignore"
    strict: bool
    sites: list[Site] = field(default_factory=list)
    structural: Counter = field(default_factory=Counter)
    counter: int = 0
    outer: str = "?"  # the source line of the call being walked
    parent: Any = None  # (level, eqn index) of the call being walked

    def where(self, eqn: Any) -> str:
        w = where(eqn, user_only=True)  # else the line of the call we are in, else Flax's
        return w if w != "?" else self.outer if self.outer != "?" else where(eqn)

    def site(self, kind: str, op: str, eqn: Any, prefix: str, **kw: Any) -> Site:
        scope = _scope(eqn)
        s = Site(f"{max(scope, prefix, key=len)}{op}/{self.counter}", kind, op,
                 self.where(eqn), **kw)
        self.counter += 1
        self.sites.append(s)
        return s

    def unsupported(self, what: str, op: str, eqn: Any, prefix: str) -> None:
        s = self.site("unsupported", op, eqn, prefix, source="unsupported")
        msg = (f"{what} at {s.path!r} ({s.where}) depends on the input and LRP has no rule "
               "for it; see lrpjax.ops for the supported operations. Pass "
               "on_unsupported='warn' to use its plain gradient instead.")
        if self.on_unsupported == "raise":
            raise UnsupportedPrimitiveError(msg)
        if self.on_unsupported == "warn":
            warnings.warn(msg, stacklevel=2)


def plan(closed: Any, rel_in: list[bool], composite: Composite, marks: list[Mark], token: str,
         *, on_unsupported: str = "raise", strict: bool = True, with_facts: bool = True
         ) -> Plan:
    """Walk ``closed`` (a ClosedJaxpr) and assign every relevance-carrying operation a rule.

    ``rel_in``: which inputs carry relevance (x yes, parameters no).
    """
    ctx = _Ctx(composite, marks, token, on_unsupported, strict)
    level = _plan_level(closed.jaxpr, rel_in, ctx, "")
    _assign_rules(ctx)
    p = Plan(closed, level, ctx.sites, ctx.structural)
    if with_facts:
        from .. import facts  # the sign facts read the finished plan

        facts.annotate(p)
    return p


def _plan_level(jaxpr: Any, rel_in: list[bool], ctx: _Ctx, prefix: str,
                live_out: list[bool] | None = None) -> _Level:
    rel: dict = dict(zip(jaxpr.invars, rel_in, strict=True))
    dep: dict = dict(rel)
    eqns = jaxpr.eqns
    deps = []
    for eqn in eqns:
        d = any(dep.get(v, False) for v in eqn.invars if not _lit(v))
        r = d and eqn.primitive.name not in ops.STOP and any(
            rel.get(v, False) for v in eqn.invars if not _lit(v))
        for v in eqn.outvars:
            dep[v], rel[v] = d, r and _inexact(v)
        deps.append(d)
    level = _Level(deps, jaxpr, ctx.parent)
    uses = Counter(v for e in eqns for v in e.invars if not _lit(v))
    uses.update(v for v in jaxpr.outvars if not _lit(v))
    R = lambda v: (not _lit(v)) and rel.get(v, False)
    _activation_groups(eqns, R, uses, level, ctx, prefix)
    tag = products.origins(eqns, R, level)
    live, consts = products.liveness(jaxpr, R, tag, ctx, live_out)
    level.held = {i: products.held_reason(eqns[i], ks, tag) for i, ks in consts.items()}
    for i, act in list(level.actions.items()):  # an activation whose output a product holds
        if isinstance(act, _Layer) and act.out not in live:  # constant gets no relevance:
            del level.actions[i]                             # plain equations, no row
            level.skip.difference_update(act.members)
            ctx.sites.remove(act.site)
    for i, eqn in enumerate(eqns):
        if i in level.skip or i in level.actions or not deps[i]:
            continue
        if not any(v in live for v in eqn.outvars):
            continue  # no relevance reaches it (a constant factor, a discarded value)
        const = consts.get(i, set())
        rins = [k for k, v in enumerate(eqn.invars) if R(v) and k not in const]
        if not rins or not any(_inexact(v) for v in eqn.outvars):
            continue  # indices, comparisons: no relevance
        n_sites = len(ctx.sites)
        _plan_eqn(i, eqn, eqns, rins, R, uses, level, ctx, prefix, live, consts)
        if i in level.held:
            for s in ctx.sites[n_sites:]:
                s.held = s.held or level.held[i]
    return level


def _plan_eqn(i, eqn, eqns, rins, R, uses, level, ctx, prefix, live, consts) -> None:
    name = eqn.primitive.name
    out = eqn.outvars[0]
    same = len(eqn.outvars) == 1 and _shape(eqn.invars[rins[0]]) == _shape(out)
    body = _body(eqn)
    if body is not None:
        label = str(eqn.params.get("name", ""))
        if label.startswith(MARK):
            return _plan_mark(i, eqn, label, body, R, level, ctx)
        if label in ops.ACTIVATIONS and len(rins) == 1 and same and _from_nn(body, label):
            return _single(i, eqn, "activation", label, rins, level, ctx, prefix)
        if label == "softmax" and len(rins) == 1 and same and _from_nn(body, label):
            return _single(i, eqn, "softmax", label, rins, level, ctx, prefix)
        level.actions[i] = _Call(_plan_call(eqn, body, R, ctx, prefix, (level, i),
                                            [v in live for v in eqn.outvars]), body[0], body[1])
        return None
    if name in ops.STOP:
        return None
    if name in ops.LINEAR and len(rins) == 1:
        return _plan_linear(i, eqn, eqns, rins[0], R, uses, level, ctx, prefix)
    if name in ops.SUMS and rins == [0]:
        return _plan_sum(i, eqn, eqns, R, uses, level, ctx, prefix)
    if name in ops.ADDS and len(rins) == 2:
        return _single(i, eqn, "add", name, rins, level, ctx, prefix)
    if name in ops.AFFINE and len(rins) == 1 and same and not (name == "div" and rins != [0]):
        return _plan_affine(i, eqn, eqns, R, uses, level, ctx, prefix, consts)
    if ((name in ops.ELEMENTWISE_ACTIVATIONS and same)
            or (name in ("max", "min") and len(rins) == 1 and same)
            or (name == "clamp" and rins == [1] and same)):
        return _single(i, eqn, "activation", name, rins, level, ctx, prefix)
    if (name in products.PRODUCTS and name != "div" and len(rins) >= 2
            and products.rule_for(ctx, "product")):
        return _single(i, eqn, "product", name, rins, level, ctx, prefix)
    if name in ops.SELECT:
        ctx.site("maxpool", name, eqn, prefix, rule=Gradient(), source="table")
        return None
    if name in ops.STRUCTURAL:
        ctx.structural[name] += 1
        return None
    what = "control flow" if name in ("scan", "while", "cond") else "operation"
    kind = ("a quotient of relevance-carrying values" if name == "div" and len(rins) >= 2
            else "a product of relevance-carrying values: lrpjax.transformer.AttnLRP() has "
            "rules for attention and gates" if name in products.PRODUCTS and len(rins) >= 2
            else "broadcasting a relevance-carrying value" if not same else "")
    ctx.unsupported(f"{what} {name!r}" + (f" ({kind})" if kind else ""), name, eqn, prefix)
    return None


def _from_nn(body: tuple, name: str) -> bool:
    """A named call is jax.nn's ``name`` (not a user's function of that name): its equations
    come from ``jax/_src/nn/functions.py``."""
    keys = [_activation_key(e) for e in body[0].eqns]
    return bool(keys) and any(k is not None and k[0] == name for k in keys)


def _single(i, eqn, kind, op, rins, level, ctx, prefix) -> None:
    s = ctx.site(kind, op, eqn, prefix)
    xs = tuple(eqn.invars[k] for k in rins)
    consts = tuple(v for k, v in enumerate(eqn.invars) if k not in rins and not _lit(v))
    level.actions[i] = _Layer(s, (i,), xs, consts, eqn.outvars[0], "eqns")


def _plan_sum(i, eqn, eqns, R, uses, level, ctx, prefix) -> None:
    """A sum, fused with a division by a constant that follows (an average: Norm acts on the
    mean, as for an average-pooling layer)."""
    out, members = eqn.outvars[0], (i,)
    if uses[out] == 1:
        j, nxt = next(((j, e) for j, e in enumerate(eqns[i + 1:], i + 1) if out in e.invars),
                      (None, None))
        if (nxt is not None and nxt.primitive.name in ("div", "mul") and nxt.invars.count(out) == 1
                and _shape(nxt.outvars[0]) == _shape(out)
                and (nxt.primitive.name == "mul" or nxt.invars[0] is out)
                and all(_lit(v) or (not v.aval.shape and not R(v))
                        for v in nxt.invars if v is not out)):
            members = (i, j)
    s = ctx.site("avgpool", eqn.primitive.name if len(members) == 1 else "mean", eqn, prefix)
    last = eqns[members[-1]]
    consts = tuple(v for m in members for v in eqns[m].invars if not _lit(v) and v is not out
                   and v is not eqn.invars[0])
    level.skip.update(members[:-1])
    level.actions[members[-1]] = _Layer(s, members, (eqn.invars[0],), consts, last.outvars[0],
                                        "eqns")


def _plan_linear(i, eqn, eqns, k, R, uses, level, ctx, prefix) -> None:
    out, members, bias = eqn.outvars[0], (i,), None
    for j in range(i + 1, len(eqns)):
        e = eqns[j]
        if out in e.invars:
            if (uses[out] == 1 and e.primitive.name == "add" and len(e.invars) == 2
                    and _shape(e.outvars[0]) == _shape(out)):
                other = e.invars[1 - e.invars.index(out)]
                if not R(other):
                    bias, members, out = other, (i, j), e.outvars[0]
                    level.skip.add(i)
            break
    kind = ops.LINEAR[eqn.primitive.name]
    s = ctx.site(kind, eqn.primitive.name, eqn, prefix)
    level.actions[members[-1]] = _Layer(s, members, (eqn.invars[k],),
                                        (eqn.invars[1 - k],) + ((bias,) if bias is not None
                                                                else ()), out, "linear", k)


def _plan_affine(i, eqn, eqns, R, uses, level, ctx, prefix, held) -> None:
    """A maximal chain of elementwise mul/div/neg/add/sub by constants, as one layer (a
    constant may carry relevance elsewhere and be ``held`` constant here: a normaliser)."""
    def flows(j: int) -> list[int]:
        return [k for k, v in enumerate(eqns[j].invars) if R(v) and k not in held.get(j, ())]

    members, cur = [i], eqn.outvars[0]
    pos = {id(e): n for n, e in enumerate(eqns)}
    while uses[cur] == 1:
        nxt = next((e for e in eqns[members[-1] + 1:] if cur in e.invars), None)
        if nxt is None:
            break
        name = nxt.primitive.name
        rins = flows(pos[id(nxt)])
        if (name not in ops.AFFINE or rins != [nxt.invars.index(cur)] or len(rins) != 1
                or _shape(nxt.outvars[0]) != _shape(cur) or (name == "div" and rins != [0])):
            break
        members.append(pos[id(nxt)])
        cur = nxt.outvars[0]
    shift = any(eqns[m].primitive.name in ("add", "sub") for m in members)
    op = "+".join(eqns[m].primitive.name for m in members)
    s = ctx.site("affine" if shift else "scale", op, eqn, prefix)
    s.held = "; ".join(dict.fromkeys(level.held[m] for m in members if m in level.held))
    x = eqn.invars[flows(i)[0]]
    consts = tuple(dict.fromkeys(v for m in members for k, v in enumerate(eqns[m].invars)
                                 if not _lit(v) and k not in flows(m)))
    level.skip.update(members[:-1])
    level.actions[members[-1]] = _Layer(s, tuple(members), (x,), consts, cur, "affine")


def _activation_groups(eqns, R, uses, level, ctx, prefix) -> None:
    """Equations inlined from one ``jax.nn`` activation call: one Pass layer each."""
    keys = {}
    for i, eqn in enumerate(eqns):
        if level.dep[i] and eqn.primitive.name not in ops.CALLS:
            key = _activation_key(eqn)
            if key is not None:
                keys[i] = key
    parent = {i: i for i in keys}

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i
    made = {v: i for i in keys for v in eqns[i].outvars}
    for i in sorted(keys):  # join equations of one call: same key, connected by dataflow
        for v in eqns[i].invars:
            j = made.get(v) if not _lit(v) else None
            if j is not None and keys[j] == keys[i]:
                parent[root(j)] = root(i)
    comps: dict[int, list[int]] = {}
    for i in sorted(keys):
        comps.setdefault(root(i), []).append(i)
    groups = list(comps.values())
    for g in groups:
        inside = {v for m in g for v in eqns[m].outvars}
        xs = list(dict.fromkeys(v for m in g for v in eqns[m].invars
                                if not _lit(v) and v not in inside and R(v)))
        consts = tuple(dict.fromkeys(v for m in g for v in eqns[m].invars
                                     if not _lit(v) and v not in inside and not R(v)))
        used_outside = [v for v in inside if _used_outside(v, g, eqns, uses)]
        out = eqns[g[-1]].outvars[0] if len(eqns[g[-1]].outvars) == 1 else None
        if (len(xs) == 1 and used_outside == [out] and out is not None
                and (_shape(out) == _shape(xs[0]) or keys[g[0]][0] == "softmax")
                and not any(level.dep[j] for j in range(g[0], g[-1]) if j not in g)):
            name = keys[g[0]][0]
            s = ctx.site("softmax" if name == "softmax" else "activation", name, eqns[g[0]],
                         prefix)
            level.skip.update(g[:-1])
            level.actions[g[-1]] = _Layer(s, tuple(g), tuple(xs), consts, out, "eqns")


def _used_outside(v: Any, group: list[int], eqns: list, uses: Counter) -> bool:
    inner = sum(1 for m in group for u in eqns[m].invars if u is v)
    return uses[v] > inner


_KNOWN_CALLS = {t.__call__ for types, _ in _KINDS for t in types}


def _plan_mark(i, eqn, label, body, R, level, ctx) -> None:
    token, _, k = label[len(MARK):].rpartition("_")
    if token != ctx.token:
        raise UnsupportedLayerError(
            f"a cached trace from another explanation hides the layers at {where(eqn)}: a "
            "jit-compiled function inside the model reused an old trace. Call the modules "
            "without a jit wrapper inside the model (lrpjax compiles the whole model).")
    mark = ctx.marks[int(k)]
    module, kind = mark.module, classify(mark.module)
    rins = [n for n, v in enumerate(eqn.invars) if R(v)]
    info = LayerInfo(path=mark.path, kind=kind, module_type=type(module), module=module)
    _, source = ctx.composite.rule_for(info)
    own = type(module).__call__ in _KNOWN_CALLS  # a subclass overriding __call__: walk it
    whole = ((own and kind not in ("unsupported", "dropout"))  # a layer of known type
             or (kind == "unsupported" and source == "composite"))  # the user's, claimed
    if whole and len(eqn.outvars) == 1 and len(rins) >= 1:
        s = Site(mark.path, kind, type(module).__name__, ctx.where(eqn), type(module), module)
        ctx.sites.append(s)
        xs = tuple(eqn.invars[n] for n in rins)
        consts = tuple(v for n, v in enumerate(eqn.invars) if n not in rins)
        level.actions[i] = _Layer(s, (i,), xs, consts, eqn.outvars[0], "module",
                                  (mark, tuple(rins)))
        return
    level.actions[i] = _Call(_plan_call(eqn, body, R, ctx, mark.path + "/", (level, i)),
                             body[0], body[1])


def _plan_call(eqn: Any, body: tuple, R: Callable, ctx: _Ctx, prefix: str,
               parent: tuple, live_out: list[bool] | None = None) -> _Level:
    saved = ctx.outer, ctx.parent
    ctx.outer, ctx.parent = ctx.where(eqn), parent
    try:
        return _plan_level(body[0], [R(v) for v in eqn.invars], ctx,
                           max(_scope(eqn), prefix, key=len), live_out)
    finally:
        ctx.outer, ctx.parent = saved


def _assign_rules(ctx: _Ctx) -> None:
    linear = [s for s in ctx.sites if s.kind in ("dense", "conv")]
    for s in ctx.sites:
        if s.source:
            continue
        index = next((n for n, t in enumerate(linear) if t is s), -1)
        info = LayerInfo(path=s.path, kind=s.kind, module_type=s.module_type, index=index,
                         n_linear=len(linear), module=s.module)
        s.rule, s.source = ctx.composite.rule_for(info)
        if s.rule is not None:
            continue
        s.source = "unsupported"
        if s.kind == "batchnorm":
            hint = "fold it into the linear layer before it first (lrpjax.canonizers)"
        elif s.kind == "affine":
            hint = ("an elementwise x * w + b with a shift (an unfolded BatchNorm?): fold it "
                    "into the linear layer before it, or give kind 'affine' a rule "
                    "(by_type({'affine': Epsilon()}))")
        else:
            hint = f"assign it a rule in the composite (e.g. by_path({{{s.path!r}: ...}})"
        msg = (f"layer {s.path!r} ({s.op}, {s.where}) has no LRP rule: {hint}, or pass "
               "strict=False to use its plain gradient")
        if ctx.strict and ctx.on_unsupported != "ignore":
            raise UnsupportedLayerError(msg)
        if ctx.on_unsupported == "warn":
            warnings.warn(msg, stacklevel=2)

