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
from .explain import Target, _check_input, _split_target, lrp_function, output_relevance

__all__ = ["LayerRelevance", "layer_relevance"]


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
    """
    x = _check_input(x)
    target_fn, target_arr = _split_target(target)
    target = target_fn if target_fn is not None else target_arr
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
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
        return pull(output_relevance(y, target, output_relevance_mode))

    heatmap, per_probe = jax.jit(run)(dynamic, x)
    rows: list[LayerRelevance] = []
    pending: list[np.ndarray] = []
    for (path, role, (kind, rule)), r in zip(meta, per_probe, strict=True):
        if role == "in":
            pending.append(np.asarray(r))
        else:
            rows.append(LayerRelevance(path, kind, rule, np.asarray(r), tuple(pending)))
            pending = []
    return rows, np.asarray(heatmap)
