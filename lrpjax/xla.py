"""XLA compiler options that make convolutions faster on CPU (opt-in).

XLA:CPU in jaxlib 0.10 hands each convolution to YNNPACK. A convolution that XLA could not fuse
with a producer (a reduction such as pooling) ran on **one thread** on a 2-core machine: the
MNIST CNN's 14x14x32 -> 64 convolution took 3.4 ms alone and 1.7 ms fused with the pooling
that feeds it; Eigen's convolution took 2.0 ms. LRP meets this more often than the gradient,
because every layer input is kept for the backward rule, so the pooling is computed apart
from the convolution. With YNNPACK fusions switched off XLA uses Eigen for every convolution:

    f = jax.jit(explain, compiler_options=lrpjax.cpu_compiler_options())

Measured (2-core CPU, jax 0.10.2, ``benchmarks/lrp_speed.py``): the MNIST CNN's
EpsilonGammaBox heatmaps 14-15 ms -> 10-11 ms at batch 16 and the gradient 7.7-8.3 ->
6.6-7.0 ms, VGG-16 within 5 %. Not always faster: Eigen is slower for convolutions with 1-3 channels on
one side (the input layer's forward, the transpose to an RGB input: 5 -> 17 ms on VGG-16's
first layer alone), so measure on your model. The heatmaps agree to float32 rounding (tested).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

__all__ = ["cpu_compiler_options"]

_YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def _accepted(name: str, value: str) -> bool:
    """Whether this jaxlib's CPU compiler knows the option (it is experimental)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.float32(0)).compile()
    except Exception:  # noqa: BLE001 -- an unknown option raises a backend-specific error
        return False
    return True


def cpu_compiler_options() -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` that use Eigen instead of YNNPACK on XLA:CPU.

    Returns ``{}`` (no change) when JAX's default backend is not the CPU, when the
    ``XLA_FLAGS`` environment variable names the YNNPACK option (yours wins; XLA reads it once,
    when the backend starts, and a ``--flagfile`` is not looked into), or when this jaxlib does
    not know the option.
    """
    if jax.default_backend() != "cpu" or _YNN_FUSIONS in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {_YNN_FUSIONS: ""} if _accepted(_YNN_FUSIONS, "") else {}
