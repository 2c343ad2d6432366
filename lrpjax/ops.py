"""What each JAX operation does to relevance: the engine's rule table, in one place.

:mod:`lrpjax.engine` walks a model's jaxpr and asks this table about every equation whose
result depends on the input x and carries relevance (a floating-point value computed from x).
The answer is one of the *handlings* below. Anything the table does not name raises (or, with
``on_unsupported="warn"``, warns once and uses the plain gradient): the engine never guesses
what an unknown operation does to relevance.

Handlings (Montavon et al. 2018, Sec. 5; Zennit and Captum pass relevance through
activations):

* ``linear`` -- linear in x with constant parameters (``dot_general``, every convolution incl.
  strided / SAME / grouped / depthwise / transposed, fused with the bias add that follows):
  the composite's rule for the layer (kinds "dense" / "conv");
* ``affine`` -- a chain of elementwise ``mul`` / ``div`` / ``neg`` by constants ("scale":
  relevance passes) and ``add`` / ``sub`` of constants ("affine": the composite must give it
  a rule -- an unfolded BatchNorm looks like this);
* ``sum`` -- sums over axes or windows (sum / average pooling, means): proportional split,
  ``Norm`` (kind "avgpool");
* ``add`` -- ``add`` / ``sub`` of two relevance-carrying values (residuals): proportional
  split, ``Norm`` (kind "add");
* ``select`` -- max / min pooling and every data-dependent choice of elements (``max`` of two
  values, ``select_n``, sorting): winner-take-all, the plain gradient (kind "maxpool");
* ``activation`` -- elementwise nonlinearities (``tanh``, ``logistic``, ``max(x, c)``,
  ``clamp``, and every call of the ``jax.nn`` activations in :data:`ACTIVATIONS`, inlined or
  not): relevance passes unchanged (kind "activation");
* ``structural`` -- data movement and casts: relevance is carried exactly (the gradient of a
  pure data movement moves relevance without changing it);
* ``call`` -- jit / custom_jvp / custom_vjp / checkpoint calls: the engine walks their body
  (a checkpoint's under ``jax.checkpoint`` again);
* ``stop`` -- ``stop_gradient``: the result is a constant, no relevance flows back.
"""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "CALLS", "HANDLING", "UNSUPPORTED_EXAMPLES", "handling",
           "markdown_table", "table_rows"]

LINEAR = {"dot_general": "dense", "conv_general_dilated": "conv"}
SUMS = ("reduce_sum", "reduce_window_sum")
ADDS = ("add", "sub", "add_any")
AFFINE = ("mul", "div", "neg", "add", "sub")
ELEMENTWISE_ACTIVATIONS = ("tanh", "logistic")
BOUNDS = ("max", "min", "clamp")  # with constant bounds: an activation (ReLU, ReLU6, ...)
SELECT = ("max", "min", "reduce_max", "reduce_min", "reduce_window_max", "reduce_window_min",
          "select_n", "sort", "top_k", "argsort", "cummax", "cummin")
STRUCTURAL = ("reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "slice",
              "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "rev", "gather",
              "scatter", "convert_element_type", "reduce_precision", "copy", "copy_p", "split",
              "real", "optimization_barrier")
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr",
         "remat2": "jaxpr"}
REMAT = ("checkpoint", "remat", "remat2")
"""``jax.checkpoint`` calls: the engine runs their body under ``jax.checkpoint`` again, so the
rules' residuals are recomputed in the backward pass as the gradient's are."""
STOP = ("stop_gradient",)

ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "swish", "sigmoid",
    "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "softplus", "soft_sign",
    "log_sigmoid", "mish", "squareplus", "sparse_plus", "sparse_sigmoid", "tanh",
})
"""``jax.nn`` (= ``flax.nnx`` / ``flax.linen``) activations recognised by name, whether JAX
traces them as a named call or inlines their equations."""

HANDLING: dict[str, str] = {
    **{p: "linear" for p in LINEAR}, **{p: "sum" for p in SUMS},
    **{p: "structural" for p in STRUCTURAL},
    **{p: "checkpoint" if p in REMAT else "call" for p in CALLS},
    **{p: "stop" for p in STOP}, **{p: "activation" for p in ELEMENTWISE_ACTIVATIONS},
    "clamp": "activation", "neg": "affine", "mul": "affine", "div": "affine",
    "add": "affine or add", "sub": "affine or add", "add_any": "add",
    **{p: "select" for p in SELECT if p not in ("max", "min")},
    "max": "activation or select", "min": "activation or select",
}

UNSUPPORTED_EXAMPLES = (
    "exp, log, sin, sqrt, pow and other nonlinear maps outside an activation",
    "a hand-written softmax (exp(x) / sum): use jax.nn.softmax",
    "scan, while, fori_loop and cond over x", "scatter-add and cumulative sums over x")

COMPOSITE_CHOICES = (
    (("a product of two relevance-carrying values (`mul`, `div`, `dot_general`: x * x, "
      "q k^T, A v, gate * up)"),
     ("kind product: raises unless the composite has a rule "
      "(`transformer.AttnLRP()`: uniform split; `CPLRP()`: the values only)")),
    ("`jax.nn.softmax`",
     "kind softmax: raises unless the composite has a rule (AttnLRP: R = x (R - s sum R))"),
    ("a normaliser, 1 / std of x (LayerNorm, RMSNorm)",
     ("kind normalizer: with the composite's rule held constant (AttnLRP's identity rule), "
      "else the product raises")),
)


def handling(primitive: str) -> str | None:
    """The table's handling of ``primitive`` (None: unsupported)."""
    return HANDLING.get(primitive)


_WHAT = {
    "linear": "the composite's rule (kinds dense / conv)",
    "sum": "proportional split, Norm (kind avgpool)",
    "add": "proportional split, Norm (kind add)",
    "affine or add": "constant operand: elementwise affine (kind scale passes; with a shift, "
                     "kind affine needs a rule); two relevance-carrying operands: Norm (kind add)",
    "affine": "by a constant: elementwise scale, relevance passes (kind scale)",
    "activation": "relevance passes unchanged (kind activation)",
    "activation or select": "with a constant bound: activation, relevance passes; between two "
                            "relevance-carrying values: winner-take-all",
    "select": "winner-take-all, the plain gradient (kind maxpool)",
    "structural": "carried exactly",
    "call": "the engine walks the body",
    "checkpoint": "the engine walks the body under `jax.checkpoint` again (same policy): the "
                  "rules' residuals are recomputed in the backward pass, as the gradient's are",
    "stop": "constant: no relevance flows back",
}


def table_rows() -> list[tuple[str, str]]:
    """(operations, what happens to relevance) rows for the docs, grouped by handling."""
    groups: dict[str, list[str]] = {}
    for prim, how in HANDLING.items():
        groups.setdefault(how, []).append(prim)
    rows = [(", ".join(f"`{p}`" for p in sorted(prims)), _WHAT[how])
            for how, prims in groups.items()]
    rows.append(("calls of `jax.nn." + "`, `".join(sorted(ACTIVATIONS)) + "`",
                 "relevance passes unchanged (kind activation)"))
    rows += list(COMPOSITE_CHOICES)
    rows += [(what, "unsupported: raises (or warns with on_unsupported='warn')")
             for what in UNSUPPORTED_EXAMPLES]
    return rows


TABLE_BEGIN = "<!-- operations table: generated by `python -m lrpjax.ops`; do not edit -->"
TABLE_END = "<!-- end of operations table -->"


def markdown_table() -> str:
    """The table of :func:`table_rows` in Markdown, between the README's markers."""
    lines = [TABLE_BEGIN, "", "| operations | relevance |", "|---|---|"]
    lines += [f"| {ops} | {what} |" for ops, what in table_rows()]
    return "\n".join([*lines, "", TABLE_END])


if __name__ == "__main__":
    print(markdown_table())
