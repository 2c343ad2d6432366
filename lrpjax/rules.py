"""LRP rules as small frozen dataclasses (Montavon et al. 2018, Sec. 5; Montavon et al. 2019).

Each rule maps the relevance R of a layer's outputs z = W a + b onto its inputs a. Notation:
W+ = max(W, 0), W- = min(W, 0) (likewise a+, a-, b+, b-), "W^T s" is the transpose of the layer
applied to s (a VJP), and the stabilizer is stab(z) = z + eps * sign(z) with sign(0) := +1.
The semantics follow Zennit 1.x / 0.5 so numbers are comparable; the tests check them against a
float64 NumPy reference and against Zennit fixtures.

Implementation notes. z+ and alpha-beta compute each product W+- a+- directly (difference forms
lose all digits in float32 where u + b+ is nearly 0); where :mod:`lrpjax.facts` proves a >= 0,
the a- products are skipped. Gamma uses the difference form (its denominators contain z). Shares
and products are guarded (:mod:`lrpjax.rule_checks`): 0 * inf is never computed.

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

from . import rule_checks as checks
from .core import LayerFn, is_bias_path, map_params, vjp_input
from .rule_checks import divide as _divide
from .rule_checks import share as _share
from .rule_checks import stabilize
from .rule_checks import times as _times

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

    __post_init__ = checks.validator({"epsilon": 0.0}, ("zero_bias", "rms"))

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        p = _zero_bias(params) if self.zero_bias else params
        z_full, W_T = vjp_input(fwd, p, a)
        if self.zero_bias:
            z = z_full
        eps = self.epsilon
        if self.rms:  # RMS(z) = m RMS(z / m), m = max |z|: z^2 cannot overflow
            axes = tuple(range(1, z.ndim))
            m = jnp.max(jnp.abs(z), axis=axes, keepdims=True)
            eps = eps * m * jnp.sqrt(jnp.mean(jnp.square(_divide(z, m)), axis=axes, keepdims=True))
        return (_times(a, W_T(_divide(R, stabilize(z, eps)))),)


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
        checks.fields(self, {"alpha": None, "beta": None, "epsilon": 0.0}, ("zero_bias",))
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
            r = _times(alpha * a, T_pos(_share(R, u + b_pos, eps)))
            if beta:
                v, T_neg = vjp_input(fwd, w_neg, a)
                r = r - _times(beta * a, T_neg(_share(R, v + b_neg, eps)))
            return (r,)

        a_pos, a_neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
        pp, T_pos = vjp_input(fwd, w_pos, a_pos)  # W+ a+ and the transpose of W+
        nn_, T_neg = vjp_input(fwd, w_neg, a_neg)  # W- a- and the transpose of W-
        s = _share(R, pp + nn_ + b_pos, eps)
        r = alpha * (_times(a_pos, T_pos(s)) + _times(a_neg, T_neg(s)))
        if beta:
            v = fwd(w_neg, a_pos) + fwd(w_pos, a_neg)
            s = _share(R, v + b_neg, eps)
            r = r - beta * (_times(a_pos, T_neg(s)) + _times(a_neg, T_pos(s)))
        return (r,)


@dataclass(frozen=True)
class ZPlus:
    """LRP-z+ (alpha1-beta0): R_j = sum_k (a+_j w+_jk + a-_j w-_jk) / stab(u_k + b+_k) R_k."""

    epsilon: float = 1e-6
    zero_bias: bool = False
    uses_input_signs: ClassVar[bool] = True
    scales_by_input: ClassVar[bool] = True

    __post_init__ = checks.validator({"epsilon": 0.0}, ("zero_bias",))

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

    ``zero_bias=True`` sets b := 0 in both denominators; the branch of each output, [z > 0] or
    [z < 0], is still taken from the layer's real output z = W a + b (Zennit's ``zero_params``).
    """

    gamma: float = 0.25
    epsilon: float = 1e-6
    zero_bias: bool = False
    uses_input_signs: ClassVar[bool] = True
    uses_output_gate: ClassVar[bool] = True
    scales_by_input: ClassVar[bool] = True

    __post_init__ = checks.validator({"gamma": 0.0, "epsilon": 0.0}, ("zero_bias",))

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array, *,
                 nonneg: tuple[bool, ...] = (False,), gated: bool = False) -> Inputs:
        a = _one(self, inputs)
        g = self.gamma
        w = _zero_bias(params)  # the weights alone: W a
        if self.zero_bias:  # b := 0 in the rule; the branches keep the real z = W a + b
            wa = fwd(w, a)
            b, zb = jnp.zeros_like(z), wa
        else:
            b = _bias_out(fwd, params, a, z)
            wa, zb = z - b, z
        if nonneg[0]:  # a >= 0 proven (lrpjax.facts): a- = 0
            u = fwd(map_params(w, weight=lambda k: jnp.maximum(k, 0)), a)  # W+ a
            s_p = self._quotient(z > 0, R, zb + g * (u + jnp.maximum(b, 0)))
            _, P_T = vjp_input(fwd, map_params(w, weight=lambda k: k + g * jnp.maximum(k, 0)), a)
            if gated:  # R = 0 where z = W a + b < 0 (lrpjax.facts): s_n = 0, also for zero_bias
                return (_times(a, P_T(s_p)),)
            s_n = self._quotient(z < 0, R, zb + g * (wa - u + jnp.minimum(b, 0)))  # W- a = Wa - u
            _, M_T = vjp_input(fwd, map_params(w, weight=lambda k: k + g * jnp.minimum(k, 0)), a)
            return (_times(a, P_T(s_p) + M_T(s_n)),)

        _, W_T = vjp_input(fwd, w, a)  # the forward product is dead code
        abs_a = jnp.abs(a)
        wa_abs, A_T = vjp_input(fwd, map_params(w, weight=jnp.abs), abs_a)
        u = 0.5 * (wa + wa_abs) + jnp.maximum(b, 0)  # W+ a+ + W- a- + b+
        v = 0.5 * (wa - wa_abs) + jnp.minimum(b, 0)  # W- a+ + W+ a- + b-
        s_p = self._quotient(z > 0, R, zb + g * u)
        s_n = self._quotient(z < 0, R, zb + g * v)
        return (_times((1.0 + 0.5 * g) * a, W_T(s_p + s_n))
                + _times(0.5 * g * abs_a, A_T(s_p - s_n)),)

    def _quotient(self, mask: Array, R: Array, d: Array) -> Array:
        """[mask] R / stab(d)."""
        return jnp.where(mask, _divide(R, stabilize(d, self.epsilon)), 0.0)


@dataclass(frozen=True, eq=False)
class ZBox:
    """z^B rule for inputs in a box low <= x <= high (Montavon et al. 2017, deep Taylor).

    R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / stab(z_j - (W+ l + b+)_j - (W- h + b-)_j) R_j.
    ``low``/``high`` are finite scalars or arrays that broadcast to the input, low <= high.
    Array bounds are copied (read-only) when the rule is built; bounds compare and hash by
    value (equal composites share one compiled function). On the input layer (the first dense
    or conv layer, where the presets put z^B) :func:`lrpjax.relevance` raises for inputs
    outside the box when they are concrete (and in its checked mode); under ``jax.jit``
    without checks, and on other layers, the formula is computed as written.
    """

    low: float | Array | np.ndarray = 0.0
    high: float | Array | np.ndarray = 1.0
    epsilon: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            object.__setattr__(self, name, checks.bound("ZBox", name, getattr(self, name)))
        checks.check_box("ZBox", self.low, self.high)
        checks.fields(self, {"epsilon": 0.0}, ("zero_bias",))
        object.__setattr__(self, "_bounds", (checks.box_key(self.low), checks.box_key(self.high)))

    def _id(self) -> tuple:
        return (ZBox, self._bounds, self.epsilon, self.zero_bias)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZBox) and self._id() == other._id()

    def __hash__(self) -> int:
        return hash(self._id())

    def __repr__(self) -> str:
        lo, hi = (repr(b) if isinstance(b, float) else f"<array {np.shape(b)}>"
                  for b in (self.low, self.high))
        return f"ZBox(low={lo}, high={hi}, epsilon={self.epsilon!r}, zero_bias={self.zero_bias!r})"

    def check_inputs(self, inputs: Inputs) -> tuple[Array, str]:
        """The entries of the layer input outside the box (flat), and why that is wrong."""
        a = _one(self, inputs)
        low, high = checks.box_bounds(repr(self), self.low, self.high, a)
        return checks.outside_box(a, low, high), checks.OUTSIDE_BOX

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        low, high = checks.box_bounds(repr(self), self.low, self.high, a)
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
            return (_times(a, W_T(s)) - Q_T(s),)
        pos, neg = _pos_neg(p, zero_bias=False)
        low_out, pos_T = vjp_input(fwd, pos, low)  # W+ l + b+
        high_out, neg_T = vjp_input(fwd, neg, high)  # W- h + b-
        s = _divide(R, stabilize(z - low_out - high_out, self.epsilon))
        return (_times(a, W_T(s)) - _times(low, pos_T(s)) - _times(high, neg_T(s)),)


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

    __post_init__ = checks.validator({"epsilon": 0.0}, ("zero_bias",))

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        a = _one(self, inputs)
        bias = jnp.zeros_like if self.zero_bias else jnp.square
        return (_uniform_input_rule(jnp.square, bias, fwd, params, a, R, self.epsilon),)


@dataclass(frozen=True)
class Flat:
    """Flat rule: R_i = sum_j 1 / (#inputs in the receptive field of j) R_j (weights -> 1)."""

    epsilon: float = 1e-6

    __post_init__ = checks.validator({"epsilon": 0.0})

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

    __post_init__ = checks.validator({"epsilon": 0.0})

    def __call__(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array, R: Array) -> Inputs:
        _, pull = jax.vjp(lambda *xs: fwd(params, *xs), *inputs)
        grads = pull(_divide(R, stabilize(z, self.epsilon)))
        return tuple(_times(x, g) for x, g in zip(inputs, grads, strict=True))


@dataclass(frozen=True)
class Pass:
    """Relevance passes unchanged (activations, reshapes): R_in = R_out (reshaped to the input)."""

    passes_relevance: ClassVar[bool] = True

    def keep(self, fwd: LayerFn, params: Any, inputs: Inputs, z: Array) -> tuple:
        """Nothing: the backward pass needs the input's shape only."""
        return ()

    def restore(self, fwd: LayerFn, kept: tuple, params: Any, inputs: Inputs, z: Any) -> tuple:
        return params, inputs, z

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
