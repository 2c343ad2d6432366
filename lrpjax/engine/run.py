"""Running: evaluate the planned jaxpr with every site as an LRP layer (a custom VJP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import ops
from ..core import apply_rule
from ..rules import Gradient
from .graph import Plan, _bind, _body, _Call, _Layer, _Level, _lit


# ------------------------------------------------------------------ running
def _read(env: dict, v: Any) -> Any:
    return v.val if _lit(v) else env[v]


class Taps:
    """Zero probes added to chosen sites' inputs and outputs: their cotangents in the VJP are
    the relevance leaving and arriving at those layers (Captum's LayerLRP)."""

    def __init__(self, paths: set[str]):
        self.paths, self.shapes, self.values = paths, [], None
        self.k = 0

    def add(self, path: str, v: Any, role: str) -> Any:
        if path not in self.paths:
            return v
        if self.values is None:
            self.shapes.append((path, role, jax.ShapeDtypeStruct(v.shape, v.dtype)))
            return v
        self.k += 1
        return v + self.values[self.k - 1]


def run(p: Plan, args: list, taps: Taps | None = None) -> list:
    """Evaluate the planned jaxpr on ``args``; its VJP propagates relevance."""
    return _run(p.level, p.jaxpr.jaxpr, list(p.jaxpr.consts), args, taps)


def _run(level: _Level, jaxpr: Any, consts: list, args: list, taps: Taps | None = None) -> list:
    env: dict = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    eqns = jaxpr.eqns
    for i, eqn in enumerate(eqns):  # parameters first: everything that does not depend on x
        if not level.dep[i]:
            env.update(zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars]),
                           strict=True))
    for i, eqn in enumerate(eqns):
        if not level.dep[i] or i in level.skip:
            continue
        act = level.actions.get(i)
        if act is None:
            outs = _bind(eqn, [_read(env, v) for v in eqn.invars])
        elif isinstance(act, _Call):
            outs = _call(act, eqn, [_read(env, v) for v in eqn.invars], taps)
        else:
            env[act.out] = _layer(act, eqns, env, taps)
            continue
        env.update(zip(eqn.outvars, outs, strict=True))
    return [_read(env, v) for v in jaxpr.outvars]


def _call(act: _Call, eqn: Any, args: list, taps: Taps | None) -> list:
    """The body of a call, walked; a ``jax.checkpoint`` body stays under ``jax.checkpoint``
    (same ``policy`` and ``prevent_cse``), so LRP keeps the gradient's memory savings."""
    def body(*a: Any) -> list:
        return _run(act.level, act.jaxpr, act.consts, list(a), taps)
    if eqn.primitive.name in ops.REMAT:
        body = jax.checkpoint(body, prevent_cse=eqn.params.get("prevent_cse", True),
                              policy=eqn.params.get("policy"))
    return body(*args)


def _layer(act: _Layer, eqns: list, env: dict, taps: Taps | None) -> Any:
    fwd, params = _form(act, eqns, env)
    xs = [env[v] for v in act.xs]
    path, rule = act.site.path, act.site.rule
    if taps is not None:
        xs = [taps.add(path, x, "in") for x in xs]
    if rule is None or isinstance(rule, Gradient):
        z = fwd(params, *xs)
    else:
        z = apply_rule(fwd, rule, params, *xs, name=path, facts=act.site.facts)
    return z if taps is None else taps.add(path, z, "out")


def _eval_members(act: _Layer, eqns: list, consts: tuple, xs: tuple) -> Any:
    local = dict(zip(act.consts, consts, strict=True))
    local.update(zip(act.xs, xs, strict=True))
    for m in act.members:
        e = eqns[m]
        local.update(zip(e.outvars, _bind(e, [_read(local, v) for v in e.invars]), strict=True))
    return local[act.out]


def _form(act: _Layer, eqns: list, env: dict) -> tuple[Callable, Any]:
    consts = tuple(env[v] if not _lit(v) else v.val for v in act.consts)
    if act.form == "eqns":
        return (lambda p, *xs: _eval_members(act, eqns, p, xs)), consts
    if act.form == "linear":
        eqn, k = eqns[act.members[0]], act.extra
        params = {"kernel": consts[0]} | ({"bias": consts[1]} if len(consts) > 1 else {})

        def linear(p: dict, a: Any) -> Any:
            z = _bind(eqn, [a, p["kernel"]] if k == 0 else [p["kernel"], a])[0]
            return z + p["bias"] if "bias" in p else z
        return linear, params
    if act.form == "affine":  # z = x * w + b with w = f(1) - f(0), b = f(0)
        x = env[act.xs[0]]
        b = _eval_members(act, eqns, consts, (jnp.zeros_like(x),))
        w = _eval_members(act, eqns, consts, (jnp.ones_like(x),)) - b
        shift = act.site.kind == "affine"
        return ((lambda p, a: a * p["kernel"] + p["bias"]) if shift else
                (lambda p, a: a * p["kernel"])), ({"kernel": w, "bias": b} if shift
                                                  else {"kernel": w})
    mark, rins = act.extra
    eqn = eqns[act.members[0]]
    body = _body(eqn)
    vals = [_read(env, v) for v in eqn.invars]
    state = jax.tree.unflatten(mark.state_tree, vals[:mark.n_state])
    others = tuple(v for n, v in enumerate(vals[mark.n_state:], mark.n_state) if n not in rins)

    def module(p: Any, *xs: Any) -> Any:
        st, rest = p
        it_x, it_o = iter(xs), iter(rest)
        flat = jax.tree.leaves(st)
        full = flat + [next(it_x) if n in rins else next(it_o)
                       for n in range(mark.n_state, len(eqn.invars))]
        return _eval_jaxpr(body, full)
    return module, (state, others)


def _eval_jaxpr(body: tuple, args: list) -> Any:
    jaxpr, consts = body
    env: dict = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for e in jaxpr.eqns:
        env.update(zip(e.outvars, _bind(e, [_read(env, v) for v in e.invars]), strict=True))
    (out,) = [_read(env, v) for v in jaxpr.outvars]
    return out
