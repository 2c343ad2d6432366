"""Relevance at the layers, not only at the input (Captum's LayerLRP; the layer-wise
relevances of RelevancePropagation.jl).

LRP computes, for every layer, the relevance R_k arriving at its outputs and the relevance
R_j = sum_k q_jk R_k it passes to its inputs (Montavon et al. 2018, Eq. 5). The engine adds a
zero probe to the inputs and the output of each chosen layer; in one VJP the probes'
cotangents are exactly those relevances. Works for every front-end (NNX, Linen, functions).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import engine, frontends
from .composites import Composite
from .explain import (
    Target,
    _check_input,
    _check_target,
    _float32_for_half,
    _split_target,
    lrp_function,
    output_relevance,
)

__all__ = ["LayerRelevance", "LayerSum", "RelevanceSums", "layer_relevance", "relevance_sums"]


@dataclass(frozen=True)
class LayerRelevance:
    """One call of one layer: the relevance arriving at its output (``r_out``, shaped like the
    output) and leaving through each of its inputs (``r_in``, one array per input)."""

    path: str
    kind: str
    rule: Any
    r_out: np.ndarray
    r_in: tuple[np.ndarray, ...]


def layer_relevance(
    model: Any, x: Any, *, composite: Composite, layers: Any = None, target: Target = None,
    variables: Any = None, params: Any = None, model_kwargs: dict | None = None,
    output_relevance_mode: str = "logit", strict: bool = True,
) -> tuple[list[LayerRelevance], np.ndarray]:
    """``(rows, heatmap)``: relevance arrays at every layer (or those whose path matches one
    of the globs in ``layers``), one row per call in forward order, and the input heatmap
    (equal to :func:`lrpjax.relevance`'s). The layers are the rows of :func:`lrpjax.describe`.
    Checked like :func:`lrpjax.relevance`: a target out of range raises, half precision is
    computed in float32, and a relevance that overflows (not finite where x and f(x) are)
    raises ``ValueError`` naming the first layer, in backward order, where it happened.
    """
    x = _check_input(x)
    target_fn, target_arr = _split_target(target)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    x, dynamic = _float32_for_half(x, dynamic)
    _check_target(static, dynamic, x, target_arr)
    target = target_fn if target_fn is not None else target_arr
    globs = ("*",) if layers is None else ((layers,) if isinstance(layers, str) else tuple(layers))
    meta: list = []

    def run(dyn: Any, a: Any) -> tuple:
        _, plan = lrp_function(static, dyn, composite, a, strict=strict)
        paths = {s.path for s in plan.sites if any(fnmatch.fnmatchcase(s.path, g) for g in globs)}
        rules = {s.path: (s.kind, s.rule) for s in plan.sites}
        taps = engine.Taps(paths)
        leaves = jax.tree.leaves(dyn)
        jax.eval_shape(lambda b: engine.run(plan, [*leaves, b], taps), a)
        meta[:] = [(path, role, rules[path]) for path, role, _ in taps.shapes]
        zeros = [jnp.zeros(s.shape, s.dtype) for _, _, s in taps.shapes]

        def probed(b: Any, probes: list) -> Any:
            taps.values, taps.k = probes, 0
            return engine.run(plan, [*leaves, b], taps)[0]

        y, pull = jax.vjp(probed, a, zeros)
        r = output_relevance(y, target, output_relevance_mode)
        # every rule is linear in R: pull r 2^-k and scale back by 2^k (exact), as relevance()
        m = jnp.max(jnp.where(jnp.isfinite(r), jnp.abs(r), 0))
        k = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(m, 1))), 0, jnp.finfo(r.dtype).maxexp // 2)
        scale = jnp.ldexp(jnp.ones((), r.dtype), k.astype(jnp.int32))
        heat, probes = pull(r / scale)
        return heat * scale, [p * scale for p in probes], y

    heatmap, per_probe, y = jax.jit(run)(dynamic, x)
    _raise_on_overflow(meta, per_probe, heatmap, y)
    rows: list[LayerRelevance] = []
    pending: list[np.ndarray] = []
    for (path, role, (kind, rule)), r in zip(meta, per_probe, strict=True):
        if role == "in":
            pending.append(np.asarray(r))
        else:
            rows.append(LayerRelevance(path, kind, rule, np.asarray(r), tuple(pending)))
            pending = []
    return rows, np.asarray(heatmap)


def _raise_on_overflow(meta: list, per_probe: list, heatmap: Any, y: Any) -> None:
    """Raise where relevance is not finite although f(x) is (x was checked finite): name the
    layer nearest the output whose relevance overflowed, i.e. where the overflow began."""
    if not all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(y)):
        return  # f(x) itself is not finite: nothing to blame on the rules
    arrays = [heatmap, *per_probe]  # forward order: the heatmap, then each layer's in / out
    names = ["input heatmap"] + [f"{role}put of {path!r}" for path, role, _ in meta]
    bad = [i for i, r in enumerate(arrays) if not np.isfinite(np.asarray(r)).all()]
    if bad:
        raise ValueError(
            f"relevance at the {names[bad[-1]]} is not finite although x and f(x) are: a "
            f"value overflowed its dtype ({np.asarray(heatmap).dtype}); rescale the input or "
            "the model, choose a larger epsilon, or compute in float64 (jax_enable_x64)")


# ---------------------------------------------------------------- sums per layer
@dataclass(frozen=True)
class LayerSum:
    """Per-sample relevance sums at one layer: ``r_out`` arriving at its output(s), ``r_in``
    leaving through its input(s) (summed over inputs, e.g. both branches of a residual sum),
    totals over the layer's calls."""

    path: str
    kind: str
    rule: str
    r_out: np.ndarray
    r_in: np.ndarray


@dataclass(frozen=True)
class RelevanceSums:
    """``rows`` in forward order; ``output`` = sum of the initial relevance, ``input`` = sum of
    the heatmap, per sample; ``heatmap`` = the input relevance (as :func:`lrpjax.relevance`).
    ``print()`` shows the table: a conserving rule has ``r_in == r_out``."""

    rows: tuple[LayerSum, ...]
    output: np.ndarray
    input: np.ndarray
    heatmap: np.ndarray

    def __str__(self) -> str:
        lines = [(f"{'layer':<24} {'rule':<22} {'mean R_out':>12} {'mean R_in':>12} "
                  f"{'max |R_in|':>11}"),
                 f"{'(output)':<24} {'':<22} {self.output.mean():>12.5g}"]
        for r in self.rows:
            lines.append(f"{r.path:<24} {r.rule[:22]:<22} {r.r_out.mean():>12.5g} "
                         f"{r.r_in.mean():>12.5g} {np.abs(r.r_in).max():>11.3g}")
        lines.append(f"{'(input)':<24} {'':<22} {'':>12} {self.input.mean():>12.5g}")
        return "\n".join(lines)


def _per_sample(r: np.ndarray) -> np.ndarray:
    return r.reshape(r.shape[0], -1).sum(axis=1)


def relevance_sums(model: Any, x: Any, *, composite: Composite, target: Target = None,
                   variables: Any = None, params: Any = None, model_kwargs: dict | None = None,
                   output_relevance_mode: str = "logit", strict: bool = True) -> RelevanceSums:
    """Relevance sums per sample at every layer (:func:`layer_relevance`, summed per sample
    and over a layer's calls): the check that relevance neither vanishes nor explodes through
    a deep network. Same arguments as :func:`lrpjax.relevance`; works for every front-end.
    """
    calls, heatmap = layer_relevance(model, x, composite=composite, target=target,
                                     variables=variables, params=params,
                                     model_kwargs=model_kwargs,
                                     output_relevance_mode=output_relevance_mode, strict=strict)
    totals: dict[str, list] = {}
    for c in calls:
        r_in = sum(_per_sample(r) for r in c.r_in)
        t = totals.setdefault(c.path, [c, np.zeros_like(r_in), np.zeros_like(r_in)])
        t[1], t[2] = t[1] + _per_sample(c.r_out), t[2] + r_in
    rows = tuple(LayerSum(path, c.kind, type(c.rule).__name__ if c.rule is not None
                          else f"gradient ({c.kind})", r_out, r_in)
                 for path, (c, r_out, r_in) in totals.items())
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    y = jax.jit(lambda d, a: frontends.build(static, d)(a))(dynamic, _check_input(x))
    target_fn, target_arr = _split_target(target)
    out = output_relevance(y, target_fn if target_fn is not None else target_arr,
                           output_relevance_mode)
    return RelevanceSums(rows, _per_sample(np.asarray(out)), _per_sample(heatmap), heatmap)
