"""Test-suite settings.

XLA's CPU backend spends most of a small test's time optimising code that then runs for
microseconds; optimisation level 0 compiles about 3x faster and changes no test outcome
(every assertion has a tolerance). Set before JAX initialises; an explicit XLA_FLAGS wins.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
