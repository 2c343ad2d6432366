"""LRP rules as small frozen dataclasses (Montavon et al. 2018, Sec. 5; Montavon et al. 2019).

Each rule maps the relevance R of a layer's outputs z = W a + b onto its inputs a. Notation:
W+ = max(W, 0), W- = min(W, 0) (likewise a+, a-, b+, b-), "W^T s" is the transpose of the layer
applied to s (a VJP), and the stabilizer is stab(z) = z + eps * sign(z) with sign(0) := +1.
The semantics follow Zennit 1.x / 0.5 so numbers are comparable; the tests check them against a
float64 NumPy reference and against Zennit fixtures.

Implementation notes. z+ and alpha-beta need the products W+- a+-, each computed directly:
difference forms such as u = (W a + |W||a|)/2 lose all digits in float32 where u + b+ is nearly
0 and s = R / stab(.) is huge (measured: 6e-4 relative error against the float64 reference
instead of 3e-7). Where the sign analysis (:mod:`lrpjax.facts`) proves a layer's input >= 0,
a- = 0 and half of those products are skipped. Gamma's denominators contain z itself and stay
far from 0, so it uses the difference form: one extra product and two transposes, or one
transpose where the analysis also proves that no relevance reaches the layer's negative outputs.

Class attributes the analysis reads: ``scales_by_input`` (R_in = a * (finite), so a zero input
gets zero relevance), ``passes_relevance`` (R_in = R_out), ``uses_input_signs`` /
``uses_output_gate`` (the rule accepts ``nonneg=`` / ``gated=``, see :mod:`lrpjax.core`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .core import LayerFn, is_bias_path, map_params, vjp_input

__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "Norm",
    "Pass",
    "WSquare",
    "ZBox",
    "ZPlus",
    "stabilize",
]

Array = jax.Array
Inputs = tuple[Array, ...]


# ------------------------------------------------------------------ helpers
def stabilize(z: Array, epsilon: float | Array) -> Array:
    """stab(z) = z + epsilon * sign(z), with sign(0) := +1 (Zennit's convention)."""
    return z + epsilon * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _divide(R: Array, d: Array) -> Array:
    """s = R / d with s := 0 where d == 0 (dead neurons give zeros, never NaN)."""
    zero = d == 0
    return jnp.where(zero, jnp.zeros_like(R), R / jnp.where(zero, jnp.ones_like(d), d))


def _one(rule: Any, inputs: Inputs) -> Array:
    if len(inputs) != 1:
        raise ValueError(f"{type(rule).__name__} applies to layers with one input, got {len(inputs)}")
    return inputs[0]


def _zero_bias(params: Any) -> Any:
    return map_params(params, bias=jnp.zeros_like)


def _bias_out(fwd: LayerFn, params: Any, a: Array, z: Array) -> Array:
    """The bias as it appears in the output, b_out = fwd(params, 0)."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if is_bias_path(path) and hasattr(leaf, "shape")]
    if not leaves:
        return jnp.zeros_like(z)
    if len(leaves) == 1:
        try:
            return jnp.broadcast_to(leaves[0], z.shape).astype(z.dtype)
        except ValueError:
            pass
    return fwd(params, jnp.zeros_like(a))


def _pos_neg(params: Any, zero_bias: bool = True) -> tuple[Any, Any]:
    """Parameters with W+ (and b+ unless ``zero_bias``) and with W- (b-)."""
    bias_p = jnp.zeros_like if zero_bias else (lambda c: jnp.maximum(c, 0))
    bias_n = jnp.zeros_like if zero_bias else (lambda c: jnp.minimum(c, 0))
    return (map_params(params, weight=lambda w: jnp.maximum(w, 0), bias=bias_p),
            map_params(params, weight=lambda w: jnp.minimum(w, 0), bias=bias_n))


# ------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Epsilon:
    """LRP-epsilon: R_j = a_j sum_k w_jk R_k / stab(z_k), z_k = sum_j a_j w_jk + b_k.

    ``epsilon=0`` is LRP-0. With ``rms=True`` the stabilizer is epsilon * RMS(z) per sample
    (the LRP tutorial's middle layers; RMS over all output axes but the first).
    """

    epsilon: float = 1e-6
    zero_bias: bool = False
    rms: bool = False
    scales_by_input: ClassVar[bool] = True

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        p = _zero_bias(params) if self.zero_bias else params
        z_full, W_T = vjp_input(fwd, p, a)
        if self.zero_bias:
            z = z_full
        eps = self.epsilon
        if self.rms:
            axes = tuple(range(1, z.ndim))
            eps = eps * jnp.sqrt(jnp.mean(jnp.square(z), axis=axes, keepdims=True))
        return (a * W_T(_divide(R, stabilize(z, eps))),)


@dataclass(frozen=True)
class AlphaBeta:
    """LRP-alpha-beta (Bach et al. 2015 with this paper's convention alpha - beta = 1, beta >= 0).

    R_j = sum_k (alpha (a+w+ + a-w-)_jk / stab(u_k + b+_k) - beta (a+w- + a-w+)_jk / stab(v_k + b-_k)) R_k
    with u = W+ a+ + W- a-, v = W- a+ + W+ a-. alpha=1, beta=0 is z+ (deep Taylor for ReLU nets).
    """

    alpha: float = 2.0
    beta: float = 1.0
    epsilon: float = 1e-6
    zero_bias: bool = False
    uses_input_signs: ClassVar[bool] = True
    scales_by_input: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.beta < 0 or not np.isclose(self.alpha - self.beta, 1.0, rtol=0, atol=1e-12):
            raise ValueError(
                f"AlphaBeta needs alpha - beta = 1 and beta >= 0 (Montavon et al. 2018), "
                f"got alpha={self.alpha}, beta={self.beta} (alpha - beta = {self.alpha - self.beta})"
            )

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array, *,
                 nonneg: tuple[bool, ...] = (False,)) -> Inputs:
        a = _one(self, inputs)
        p = _zero_bias(params) if self.zero_bias else params
        w_pos, w_neg = _pos_neg(p)
        b = _bias_out(fwd, p, a, z)
        b_pos, b_neg = jnp.maximum(b, 0), jnp.minimum(b, 0)
        alpha, beta, eps = self.alpha, self.beta, self.epsilon

        if nonneg[0]:  # a >= 0 proven (lrpjax.facts): a- = 0, so u = W+ a, v = W- a
            u, T_pos = vjp_input(fwd, w_pos, a)
            r = alpha * a * T_pos(_divide(R, stabilize(u + b_pos, eps)))
            if beta:
                v, T_neg = vjp_input(fwd, w_neg, a)
                r = r - beta * a * T_neg(_divide(R, stabilize(v + b_neg, eps)))
            return (r,)

        a_pos, a_neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
        pp, T_pos = vjp_input(fwd, w_pos, a_pos)  # W+ a+ and the transpose of W+
        nn_, T_neg = vjp_input(fwd, w_neg, a_neg)  # W- a- and the transpose of W-
        s = _divide(R, stabilize(pp + nn_ + b_pos, eps))
        r = alpha * (a_pos * T_pos(s) + a_neg * T_neg(s))
        if beta:
            v = fwd(w_neg, a_pos) + fwd(w_pos, a_neg)
            s = _divide(R, stabilize(v + b_neg, eps))
            r = r - beta * (a_pos * T_neg(s) + a_neg * T_pos(s))
        return (r,)


@dataclass(frozen=True)
class ZPlus:
    """LRP-z+ (alpha1-beta0): R_j = sum_k (a+_j w+_jk + a-_j w-_jk) / stab(u_k + b+_k) R_k."""

    epsilon: float = 1e-6
    zero_bias: bool = False
    uses_input_signs: ClassVar[bool] = True
    scales_by_input: ClassVar[bool] = True

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array, *,
                 nonneg: tuple[bool, ...] = (False,)) -> Inputs:
        rule = AlphaBeta(1.0, 0.0, epsilon=self.epsilon, zero_bias=self.zero_bias)
        return rule(fwd, params, inputs, z, R, nonneg=nonneg)


@dataclass(frozen=True)
class Gamma:
    """LRP-gamma (Montavon et al. 2019): weights W + gamma W+ for positive, W + gamma W- for
    negative contributions, chosen by the sign of the output z_k (Zennit's four-term form).

    With P = W + gamma W+, M = W + gamma W-, b_P = b + gamma b+, b_M = b + gamma b-:
    s_p = [z > 0] R / stab(P a+ + M a- + b_P), s_n = [z < 0] R / stab(M a+ + P a- + b_M),
    R = a+ (P^T s_p + M^T s_n) + a- (M^T s_p + P^T s_n).

    Computed with one extra product and at most two transposes (instead of four and four):
    P a+ + M a- = W a + gamma u, M a+ + P a- = W a + gamma v with u, v = (W a +- |W| |a|) / 2,
    and R = (1 + gamma/2) a W^T (s_p + s_n) + gamma/2 |a| |W|^T (s_p - s_n). Where the sign
    analysis (:mod:`lrpjax.facts`) proves a >= 0, u = W+ a, v = W a - u and
    R = a (P^T s_p + M^T s_n); where it also proves that no relevance can arrive at z < 0 (the
    layer feeds a ReLU whose zero outputs get zero relevance), s_n = 0 and R = a P^T s_p: one
    extra product and one transpose, 1.5x the gradient's work for the layer instead of 2x.
    Unlike for z+ and alpha-beta the difference forms lose no digits: each denominator is at
    least gamma (|u| + |v|) / 2 in magnitude (z and gamma u share the sign of s_p's
    denominator), so the rounding error of the difference, eps (|u| + |v|), stays a few ulps.
    """

    gamma: float = 0.25
    epsilon: float = 1e-6
    zero_bias: bool = False
    uses_input_signs: ClassVar[bool] = True
    uses_output_gate: ClassVar[bool] = True
    scales_by_input: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"Gamma needs gamma >= 0, got {self.gamma}")

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array, *,
                 nonneg: tuple[bool, ...] = (False,), gated: bool = False) -> Inputs:
        a = _one(self, inputs)
        g = self.gamma
        p = _zero_bias(params) if self.zero_bias else params
        if self.zero_bias:
            z = fwd(p, a)
        b = _bias_out(fwd, p, a, z)
        if nonneg[0]:  # a >= 0 proven (lrpjax.facts): a- = 0
            w, (w_pos, _) = _zero_bias(p), _pos_neg(p)
            u = fwd(w_pos, a)  # W+ a
            s_p = self._quotient(z > 0, R, z + g * (u + jnp.maximum(b, 0)))
            _, P_T = vjp_input(fwd, map_params(w, weight=lambda k: k + g * jnp.maximum(k, 0)), a)
            if gated and not self.zero_bias:  # R = 0 where z < 0 (lrpjax.facts): s_n = 0
                return (a * P_T(s_p),)  # (proven for z = Wa + b, not for the zero-bias Wa)
            s_n = self._quotient(z < 0, R, z + g * (z - b - u + jnp.minimum(b, 0)))  # W- a = Wa - u
            _, M_T = vjp_input(fwd, map_params(w, weight=lambda k: k + g * jnp.minimum(k, 0)), a)
            return (a * (P_T(s_p) + M_T(s_n)),)

        wa = z - b
        _, W_T = vjp_input(fwd, _zero_bias(p), a)  # the forward product is dead code
        abs_a = jnp.abs(a)
        wa_abs, A_T = vjp_input(fwd, map_params(p, weight=jnp.abs, bias=jnp.zeros_like), abs_a)
        u = 0.5 * (wa + wa_abs) + jnp.maximum(b, 0)  # W+ a+ + W- a- + b+
        v = 0.5 * (wa - wa_abs) + jnp.minimum(b, 0)  # W- a+ + W+ a- + b-
        s_p = self._quotient(z > 0, R, z + g * u)
        s_n = self._quotient(z < 0, R, z + g * v)
        return ((1.0 + 0.5 * g) * a * W_T(s_p + s_n) + 0.5 * g * abs_a * A_T(s_p - s_n),)

    def _quotient(self, mask: Array, R: Array, d: Array) -> Array:
        """[mask] R / stab(d)."""
        return jnp.where(mask, _divide(R, stabilize(d, self.epsilon)), 0.0)


@dataclass(frozen=True, eq=False)
class ZBox:
    """z^B rule for inputs in a box low <= x <= high (Montavon et al. 2017, deep Taylor).

    R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / stab(z_j - (W+ l + b+)_j - (W- h + b-)_j) R_j.
    ``low``/``high`` are scalars or arrays that broadcast to the input. Scalar bounds compare
    and hash by value (equal composites share one compiled function); array bounds by identity.
    """

    low: float | Array | np.ndarray = 0.0
    high: float | Array | np.ndarray = 1.0
    epsilon: float = 1e-6
    zero_bias: bool = False

    def _key(self) -> tuple:
        scalar = all(isinstance(b, (int, float)) for b in (self.low, self.high))
        return (float(self.low), float(self.high)) if scalar else (id(self.low), id(self.high))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ZBox) and self._key() == other._key()
                and (self.epsilon, self.zero_bias) == (other.epsilon, other.zero_bias))

    def __hash__(self) -> int:
        return hash((ZBox, self._key(), self.epsilon, self.zero_bias))

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        try:
            low = jnp.broadcast_to(jnp.asarray(self.low, a.dtype), a.shape)
            high = jnp.broadcast_to(jnp.asarray(self.high, a.dtype), a.shape)
        except ValueError as err:
            raise ValueError(
                f"ZBox bounds of shapes {np.shape(self.low)} / {np.shape(self.high)} do not "
                f"broadcast to the layer input of shape {a.shape}"
            ) from err
        p = _zero_bias(params) if self.zero_bias else params
        z_p, W_T = vjp_input(fwd, p, a)
        z = z_p if self.zero_bias else z
        if all(np.ndim(bound) == 0 for bound in (self.low, self.high)):
            # Scalar bounds: l W+ + h W- is one kernel Q, so W+ l + W- h = Q 1 and
            # l W+^T s + h W-^T s = Q^T s -- one product and one transpose instead of two each
            # (the biases cancel in z - (W+ l + b+) - (W- h + b-)).
            lo, hi = self.low, self.high
            Q = map_params(p, weight=lambda w: lo * jnp.maximum(w, 0) + hi * jnp.minimum(w, 0),
                           bias=jnp.zeros_like)
            q, Q_T = vjp_input(fwd, Q, jnp.ones_like(a))
            s = _divide(R, stabilize(z - _bias_out(fwd, p, a, z) - q, self.epsilon))
            return (a * W_T(s) - Q_T(s),)
        pos, neg = _pos_neg(p, zero_bias=False)
        low_out, pos_T = vjp_input(fwd, pos, low)  # W+ l + b+
        high_out, neg_T = vjp_input(fwd, neg, high)  # W- h + b-
        s = _divide(R, stabilize(z - low_out - high_out, self.epsilon))
        return (a * W_T(s) - low * pos_T(s) - high * neg_T(s),)


def _uniform_input_rule(weight_fn, bias_fn, fwd: LayerFn, params: Any, a: Array, R: Array,
                        eps: float) -> Array:
    p = map_params(params, weight=weight_fn, bias=bias_fn)
    ones = jnp.ones_like(a)
    z, W_T = vjp_input(fwd, p, ones)
    return W_T(_divide(R, stabilize(z, eps)))


@dataclass(frozen=True)
class WSquare:
    """w^2 rule for unbounded real inputs: R_i = sum_j w_ij^2 / (sum_i w_ij^2 + b_j^2) R_j.

    As in Zennit the bias is squared too (``zero_bias=True`` drops it).
    """

    epsilon: float = 1e-6
    zero_bias: bool = False

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        bias = jnp.zeros_like if self.zero_bias else jnp.square
        return (_uniform_input_rule(jnp.square, bias, fwd, params, a, R, self.epsilon),)


@dataclass(frozen=True)
class Flat:
    """Flat rule: R_i = sum_j 1 / (#inputs in the receptive field of j) R_j (weights -> 1)."""

    epsilon: float = 1e-6

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        return (_uniform_input_rule(jnp.ones_like, jnp.zeros_like, fwd, params, a, R,
                                    self.epsilon),)


@dataclass(frozen=True)
class Norm:
    """Proportional split R_j = a_j (dz_k/da_j) R_k / stab(z_k) — sum/avg pooling, residual adds.

    For sum pooling z_k = sum_j a_j this is R_j = a_j / sum_j a_j R_k (Montavon et al. 2018,
    Sec. 5.3); for z = x + y it splits R in proportion x : y.
    """

    epsilon: float = 1e-6
    scales_by_input: ClassVar[bool] = True

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        _, pull = jax.vjp(lambda *xs: fwd(params, *xs), *inputs)
        grads = pull(_divide(R, stabilize(z, self.epsilon)))
        return tuple(x * g for x, g in zip(inputs, grads, strict=True))


@dataclass(frozen=True)
class Pass:
    """Relevance passes unchanged (activations, reshapes): R_in = R_out (reshaped to the input)."""

    passes_relevance: ClassVar[bool] = True

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        if a.size != R.size:
            raise ValueError(f"Pass needs as many inputs as outputs, got {a.shape} -> {R.shape}")
        return (R.reshape(a.shape),)


@dataclass(frozen=True)
class Gradient:
    """The plain gradient (for max pooling: winner-take-all, Montavon et al. 2018, Sec. 5.3)."""

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        _, pull = jax.vjp(lambda *xs: fwd(params, *xs), *inputs)
        return tuple(pull(R))
