"""Rules and composites for transformers: AttnLRP and CP-LRP.

AttnLRP (Achtibat et al., "AttnLRP: attention-aware layer-wise relevance propagation for
transformers", ICML 2024) extends LRP to the operations attention and normalisation are made
of. With the engine's kinds (:mod:`lrpjax.ops`):

* ``product`` -- a product of two relevance-carrying values (q k^T, A v, gate * up): the
  uniform rule, each factor gets half, R_i = 1/2 x_i (dz/dx_i)^T (R / z);
* ``softmax`` -- the Taylor decomposition at x with bias, R_in = x (R - s sum_j R_j), i.e.
  x times the softmax's VJP of R / s;
* ``normalizer`` -- LayerNorm's and RMSNorm's 1 / std held constant (the identity rule): the
  normalisation is then an elementwise scale and relevance passes;
* activations pass (GELU, SiLU, ...), linear layers get LRP-0 (gradient x input), residual
  sums and means the proportional split.

Per operation these are all "input times modified gradient" rules, so chained they equal the
modified-gradient-times-input of AttnLRP's own implementation (LXT's efficient mode).
CP-LRP (Ali et al., "XAI for transformers: better explanations through conservative
propagation", ICML 2022) holds the attention weights (and gates) constant: relevance flows
through the values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .composites import Composite, by_type
from .rules import Epsilon, Norm, _divide, stabilize

__all__ = ["CPLRP", "AttnLRP", "HeldConstant", "SoftmaxTaylor", "UniformProduct"]

Array = jax.Array


@dataclass(frozen=True)
class UniformProduct:
    """The uniform rule for a product z = f(a, b) of n relevance-carrying factors:
    R_i = 1/n x_i (dz/dx_i)^T (R / stab(z)). ``values_only`` (CP-LRP): factors that come out
    of a softmax or an activation are held constant by the engine, so the values get all."""

    epsilon: float = 0.0
    values_only: bool = False
    scales_by_input: ClassVar[bool] = True

    def keep(self, fwd: Any, params: Any, inputs: tuple, z: Array) -> tuple:
        """Keep the factors only: z (q k^T is T x T per head) is recomputed backward."""
        return params, inputs

    def restore(self, fwd: Any, kept: tuple, params: Any, inputs: tuple, z: Any) -> tuple:
        return (*kept, None)

    def __call__(self, fwd: Any, params: Any, inputs: tuple, z: Array | None,
                 R: Array) -> tuple:
        if z is None:  # recompute z: from factors tied to R, see _after
            inputs = _after(R, inputs)
        z_again, pull = jax.vjp(lambda *xs: fwd(params, *xs), *inputs)
        z = z_again if z is None else z
        grads = pull(_divide(R, stabilize(z, self.epsilon)))
        n = len(inputs)
        return tuple(x * g / n for x, g in zip(inputs, grads, strict=True))


@dataclass(frozen=True)
class SoftmaxTaylor:
    """AttnLRP's softmax rule: R_in = x (dz/dx)^T (R / z) = x (R - s sum_j R_j) for z = s =
    softmax(x); zero where x is not finite (masked scores, -inf).

    Memory: the backward pass keeps s (the gradient keeps it too) and c = x - log s, one
    number per softmax row, instead of the T x T scores x, and rebuilds x = log s + c; where
    s = 0 (a masked score, or exp underflowed) R_in = 0, as it is for x = -inf.
    """

    scales_by_input: ClassVar[bool] = True

    def keep(self, fwd: Any, params: Any, inputs: tuple, z: Array) -> tuple:
        """Keep s and c = x - log s (constant along the softmax's axes, so kept reduced)
        instead of the scores x: x = log s + c is rebuilt backward. Where the axes cannot be
        read off ``fwd``, x itself is kept."""
        (x,) = inputs
        axes = _softmax_axes(fwd, params, x)
        if axes is None:
            return params, x, z
        pos = z > 0
        c = jnp.max(jnp.where(pos, x - jnp.log(jnp.where(pos, z, 1)), -jnp.inf), axis=axes,
                    keepdims=True)
        return params, c, z

    def restore(self, fwd: Any, kept: tuple, params: Any, inputs: tuple, z: Any) -> tuple:
        p, a, z = kept
        if _softmax_axes(fwd, p, inputs[0]) is None:  # the same static choice as keep's
            return p, (a,), z
        pos = z > 0  # s = 0: x = -inf (a masked score) or an underflow; R_in = 0 there
        # 2, not keep's 1, where s = 0 (discarded): a different expression from keep's log s,
        # which XLA therefore cannot merge with this one (CSE) and keep alive from the forward
        return p, (jnp.where(pos, jnp.log(jnp.where(pos, z, 2)) + a, -jnp.inf),), z

    def __call__(self, fwd: Any, params: Any, inputs: tuple, z: Array, R: Array) -> tuple:
        (x,) = inputs
        _, pull = jax.vjp(lambda a: fwd(params, a), x)
        (g,) = pull(_divide(R, z))
        finite = jnp.isfinite(x)
        return (jnp.where(finite, jnp.where(finite, x, 0) * g, 0),)


def _after(R: Array, xs: tuple) -> tuple:
    """xs again, as values XLA can only compute once R is known: x + 0 * R[0].

    A rule that recomputes a large value backward (q k^T) from kept inputs would otherwise get
    it merged by XLA's common-subexpression elimination with the forward pass's copy, which
    then stays alive through the backward pass. :func:`lrpjax.core.apply_rule` also puts the
    kept values behind an optimization barrier with R (as ``jax.checkpoint`` does), but
    XLA:CPU drops barriers before CSE; the dependency here holds on every backend. Factors
    are small next to what they recompute (T x d against T x T), so the adds cost little.
    """
    if R.size == 0:
        return xs
    r = R.reshape(-1)[0]
    tie = 0 * jnp.where(jnp.isfinite(r), r, 0)  # 0 even where R is not finite
    return tuple(x + tie.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else x
                 for x in xs)


def _softmax_axes(fwd: Any, params: Any, x: Array) -> tuple[int, ...] | None:
    """The axes a softmax ``fwd(params, x)`` normalises over: those of its reductions of
    x-shaped values (``jax.nn.softmax``: max and sum over ``axis``); None unless all agree
    and the output has x's shape (then the rule keeps x itself)."""
    found: set[tuple[int, ...]] = set()

    def walk(jaxpr: Any) -> None:
        for e in jaxpr.eqns:
            if e.primitive.name in ("reduce_max", "reduce_sum", "argmax") \
                    and tuple(e.invars[0].aval.shape) == tuple(x.shape):
                found.add(tuple(sorted(int(a) for a in e.params["axes"])))
            for v in e.params.values():
                for sub in v if isinstance(v, tuple | list) else (v,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(lambda a: fwd(params, a))(x).jaxpr)
    out = jax.eval_shape(lambda a: fwd(params, a), x)
    same = tuple(out.shape) == tuple(x.shape)
    return found.pop() if len(found) == 1 and same and x.ndim else None


@dataclass(frozen=True)
class HeldConstant:
    """The identity rule for normalisers (kind ``"normalizer"``): LayerNorm's / RMSNorm's
    1 / std is held constant; the engine then treats the normalisation as a scale."""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        raise RuntimeError("HeldConstant marks normalisers for the engine; it is never applied")


def _transformer(name: str, epsilon: float, values_only: bool) -> Composite:
    linear = Epsilon(epsilon)
    return Composite(by_type({
        "dense": linear, "conv": linear, "affine": linear,
        "product": UniformProduct(epsilon, values_only=values_only),
        "softmax": SoftmaxTaylor(), "normalizer": HeldConstant(),
        "add": Norm(epsilon), "avgpool": Norm(epsilon),
    }), name=name)


def AttnLRP(epsilon: float = 0.0) -> Composite:
    """AttnLRP (Achtibat et al. 2024): LRP-0 (``epsilon`` as a stabiliser) on linear layers,
    the uniform rule on products, the Taylor rule on softmax, normalisers held constant."""
    return _transformer("AttnLRP", epsilon, values_only=False)


def CPLRP(epsilon: float = 0.0) -> Composite:
    """CP-LRP (Ali et al. 2022): as AttnLRP, but attention weights and gates held constant,
    so relevance flows through the values only."""
    return _transformer("CPLRP", epsilon, values_only=True)
