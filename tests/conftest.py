"""Test-suite settings, set before JAX initialises (an explicit environment value wins).

XLA's CPU backend spends most of a small test's time optimising code that then runs for
microseconds; optimisation level 0 compiles about 3x faster and changes no test outcome
(every assertion has a tolerance).

On GPUs from Ampere on (and TPUs) JAX's default float32 dots and convolutions round their
inputs to TF32 (bf16), which moved float32 heatmaps by 2e-4 to 8e-3 on an H100; the float32
tolerances here (1e-5 against float64 references) are for true float32 arithmetic, so the suite
asks for it.
On CPU "highest" is what XLA does anyway. `JAX_DEFAULT_MATMUL_PRECISION=default make test`
shows the accelerator's default instead.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

# after XLA_FLAGS is set; the update also covers a plugin that imported jax first
import jax

jax.config.update("jax_default_matmul_precision", os.environ["JAX_DEFAULT_MATMUL_PRECISION"])
