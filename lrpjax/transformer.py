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

    def __call__(self, fwd: Any, params: Any, inputs: tuple, z: Array, R: Array) -> tuple:
        _, pull = jax.vjp(lambda *xs: fwd(params, *xs), *inputs)
        grads = pull(_divide(R, stabilize(z, self.epsilon)))
        n = len(inputs)
        return tuple(x * g / n for x, g in zip(inputs, grads, strict=True))


@dataclass(frozen=True)
class SoftmaxTaylor:
    """AttnLRP's softmax rule: R_in = x (dz/dx)^T (R / z) = x (R - s sum_j R_j) for z = s =
    softmax(x); zero where x is not finite (masked scores, -inf)."""

    scales_by_input: ClassVar[bool] = True

    def __call__(self, fwd: Any, params: Any, inputs: tuple, z: Array, R: Array) -> tuple:
        (x,) = inputs
        _, pull = jax.vjp(lambda a: fwd(params, a), x)
        (g,) = pull(_divide(R, z))
        finite = jnp.isfinite(x)
        return (jnp.where(finite, jnp.where(finite, x, 0) * g, 0),)


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
