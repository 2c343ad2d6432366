"""Objectives and regularizers for activation maximization.

An *objective* is ``f(x, target) -> scalar`` for one unbatched input x; the classifier it wraps
takes a batch (N, *shape) and returns (N, K) logits or activations. A *regularizer* is
``r(x) -> scalar``, added to the objective (so penalties are returned negated).

Objectives carry a ``validate(targets, x)`` attribute that :func:`activation_maximization`
calls before compiling: an out-of-range class or unit index is a ValueError, not a silently
wrapped or clamped index. Inside the compiled loop an invalid index yields NaN as a backstop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "channel",
    "class_log_prob",
    "class_logit",
    "expert_regularizer",
    "l2_regularizer",
    "local_regularizer",
    "nnx_features",
    "nnx_logits",
    "unit",
    "weighted_terms",
]

BatchFn = Callable[[jax.Array], jax.Array]


def _check_indices(targets: Any, n: int, what: str) -> None:
    """Raise ValueError unless every target is an integer index in 0..n-1."""
    t = np.asarray(jax.device_get(targets))
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"{what} indices must be integers, got dtype {t.dtype}")
    bad = t[(t < 0) | (t >= n)]
    if bad.size:
        raise ValueError(
            f"invalid {what} index {int(bad.flat[0])}: valid {what} indices are 0..{n - 1} "
            f"(the model has {n})"
        )


def _pick(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[index] for a flat vector; NaN when the index is out of range (no wrap, no clamp)."""
    return jnp.take(values, index, mode="fill", fill_value=jnp.nan)


def _with_class_check(fn: Callable, logits_fn: BatchFn) -> Callable:
    def validate(targets: Any, x: jax.Array) -> None:
        n = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1, *x.shape), x.dtype)).shape[-1]
        _check_indices(targets, n, "class")

    fn.validate = validate
    return fn


def class_log_prob(logits_fn: BatchFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x, c) = log p(ω_c|x) = z_c(x) − log Σ_k exp z_k(x)  (Montavon et al. 2018, Eq. 1)."""

    def f(x: jax.Array, c: jax.Array) -> jax.Array:
        return _pick(jax.nn.log_softmax(logits_fn(x[None])[0]), c)

    return _with_class_check(f, logits_fn)


def class_logit(logits_fn: BatchFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x, c) = z_c(x), the unnormalised class score (Simonyan et al. 2013)."""

    def f(x: jax.Array, c: jax.Array) -> jax.Array:
        return _pick(logits_fn(x[None])[0], c)

    return _with_class_check(f, logits_fn)


def unit(features_fn: BatchFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x, i) = a_i(x): one neuron of a layer, i a flat index into one sample's activations."""

    def f(x: jax.Array, i: jax.Array) -> jax.Array:
        return _pick(features_fn(x[None])[0].reshape(-1), i)

    def validate(targets: Any, x: jax.Array) -> None:
        shape = jax.eval_shape(features_fn, jax.ShapeDtypeStruct((1, *x.shape), x.dtype)).shape
        _check_indices(targets, int(np.prod(shape[1:])), "unit")

    f.validate = validate
    return f


def channel(features_fn: BatchFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x, c) = (1/HW) Σ_{h,w} a_{h,w,c}(x): the mean activation of channel c (NHWC layers)."""

    def f(x: jax.Array, c: jax.Array) -> jax.Array:
        a = features_fn(x[None])[0]
        return _pick(a.reshape(-1, a.shape[-1]).mean(axis=0), c)

    def validate(targets: Any, x: jax.Array) -> None:
        shape = jax.eval_shape(features_fn, jax.ShapeDtypeStruct((1, *x.shape), x.dtype)).shape
        _check_indices(targets, shape[-1], "channel")

    f.validate = validate
    return f


def nnx_logits(model: Any) -> BatchFn:
    """A pure ``x -> model(x)`` for a Flax NNX model, safe under jit/vmap (split once, merge inside)."""
    from flax import nnx

    graphdef, state = nnx.split(model)

    def logits_fn(x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x)

    return logits_fn


def nnx_features(model: Any, layer: str) -> BatchFn:
    """``x -> output of the submodule at path `layer` (e.g. "conv2", "layers.0")`` of an NNX model.

    Uses ``nnx.capture(..., method_outputs=nnx.Intermediate)``: the whole model runs, and the
    first output of the named submodule's ``__call__`` is returned. A bare activation function
    after the layer is not part of it: the value is the layer's own output (pre-activation).
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    path = tuple(int(p) if p.isdigit() else p for p in layer.split(".")) if layer else ()

    def features_fn(x: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state)
        _, captured = nnx.capture(m, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        node = captured
        try:
            for p in path:
                node = node[p]
            node = node["__call__"]
        except (KeyError, IndexError, TypeError) as err:
            names = sorted(".".join(map(str, k[:-1])) for k, _ in nnx.to_flat_state(captured))
            raise ValueError(f"no submodule {layer!r} in the model; known: {names}") from err
        return node.get_value()[0]

    return features_fn


def l2_regularizer(lam: float, center: Any = 0.0) -> Callable[[jax.Array], jax.Array]:
    """r(x) = −λ‖x − x̄‖², with x̄ the data mean (the paper's "origin"); λ‖z‖² in code space."""
    center = jnp.asarray(center)

    def r(x: jax.Array) -> jax.Array:
        return -lam * jnp.sum((x - center) ** 2)

    return r


def expert_regularizer(log_px: Callable[[jax.Array], jax.Array], beta: float = 1.0):
    """r(x) = β·log p(x) for a density model ("expert") of the data, e.g. a GB-RBM.

    With :func:`class_log_prob` this is AM with an expert: argmax log p(ω_c|x) + β log p(x).
    ``log_px`` takes one unbatched x and may be unnormalised (a constant does not move x*).
    """

    def r(x: jax.Array) -> jax.Array:
        return beta * log_px(x)

    return r


def local_regularizer(eta: float, x0: Any) -> Callable[[jax.Array], jax.Array]:
    """r(x) = −η‖x − x₀‖²: from global to local AM; x* → x₀ as η → ∞."""
    return l2_regularizer(eta, x0)


def weighted_terms(objective: Callable, *terms: Callable[[jax.Array], jax.Array]) -> Callable:
    """f(x, (t, w)) = objective(x, t) + Σ_k w_k · term_k(x): the weights travel with the target.

    A sweep over regularizer weights is then one vmapped run, e.g. for AM with an expert
    ``targets = (classes, betas[:, None])`` with ``terms = (log_px,)`` maximises
    log p(ω_c|x) + β log p(x) for every (c, β) pair at once, with one compile. ``w`` has shape
    (T, K) for K terms; the class check of ``objective`` (its ``validate``) still runs on t.
    """
    if not terms:
        raise ValueError("weighted_terms needs at least one term")

    def f(x: jax.Array, target: tuple[Any, jax.Array]) -> jax.Array:
        t, w = target
        return objective(x, t) + sum(w[k] * term(x) for k, term in enumerate(terms))

    def validate(targets: Any, x: jax.Array) -> None:
        if not (isinstance(targets, tuple | list) and len(targets) == 2):
            raise ValueError("weighted_terms needs targets = (targets of the objective, weights "
                             f"(T, {len(terms)}))")
        t, w = targets
        w = np.asarray(jax.device_get(w))
        if w.ndim != 2 or w.shape[1] != len(terms):
            raise ValueError(f"weights must have shape (T, {len(terms)}) for {len(terms)} "
                             f"term(s), got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite")
        inner = getattr(objective, "validate", None)
        if inner is not None:
            inner(t, x)

    f.validate = validate
    return f
