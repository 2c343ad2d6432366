"""Issue 16: a bounded property-based fuzz of every preset and dtype on adversarial inputs.

Random small nets (a convolution, pooling and two dense layers; sometimes a dead hidden layer)
x adversarial input rows (zeros, +-huge, denormals, all-negative, mixed) x every preset and
the gradient methods x dtypes: each method on a float32 model (its inputs float32, float16 or
bfloat16: those are explained in float32, one compiled program) and on one of the float16 /
bfloat16 / float64 models in turn. Property: every heatmap row is finite where x and f(x)
are, or the call raises a ValueError that says why. Bounded: one compiled program per case
and three examples each (about 20 s on 2 CPU cores).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lrpjax
from lrpjax import composites as C

SHAPE = (4, 4, 1)
ROWS = 4
KINDS = ["zeros", "big", "-big", "denormal", "negative", "mixed", "unit"]
CLEAR = re.compile(r"is not finite although x and f\(x\) are: a value overflowed|outside the box"
                   r"|contains NaN or infinite values")


def _big(dtype: str) -> float:
    """The largest magnitude used: 1e30, or a 64th of the dtype's largest number."""
    return min(1e30, float(jnp.finfo(dtype).max) / 64)


def _methods(dtype: str) -> dict:
    b = 2 * _big(dtype)  # the z^B box holds every input (also half inputs rounded up)
    return {
        "EpsilonPlus": C.EpsilonPlus(), "EpsilonPlusFlat": C.EpsilonPlusFlat(),
        "EpsilonGammaBox": C.EpsilonGammaBox(-b, b), "EpsilonAlpha2Beta1": C.EpsilonAlpha2Beta1(),
        "EpsilonAlpha2Beta1Flat": C.EpsilonAlpha2Beta1Flat(), "Alpha1Beta0": C.Alpha1Beta0(),
        "DeepTaylor": C.DeepTaylor(-b, b), "LRPTutorial": C.LRPTutorial(-b, b),
        "sensitivity": lrpjax.sensitivity, "gradient_x_input": lrpjax.gradient_x_input,
    }


METHOD_NAMES = list(_methods("float32"))
OTHER = ["float16", "bfloat16", "float64"]
CASES = [(m, d) for i, m in enumerate(METHOD_NAMES) for d in ("float32", OTHER[i % 3])]


class Net(nnx.Module):
    """conv 3x3 (1 -> 2), ReLU, 2x2 average pooling, dense 8 -> 6, ReLU, dense 6 -> 3; the
    glue written as functions (jax.nn.relu, nnx.avg_pool, reshape). ``dead``: every hidden
    unit of the dense layer gets a bias of about -1e3."""

    def __init__(self, seed: int, dead: bool, dtype: str):
        rng = np.random.default_rng(seed)
        z = nnx.initializers.zeros  # no random initialisation to compile per dtype
        kw = {"rngs": nnx.Rngs(0), "dtype": dtype, "param_dtype": dtype, "kernel_init": z,
              "bias_init": z}
        self.conv = nnx.Conv(1, 2, (3, 3), padding="SAME", **kw)
        self.hidden, self.out = nnx.Linear(8, 6, **kw), nnx.Linear(6, 3, **kw)
        hidden_bias = (-1e3 if dead else 0.2) * np.abs(rng.normal(size=6))
        for layer, k, b in ((self.conv, rng.normal(size=(3, 3, 1, 2)) / 3, rng.normal(size=2)),
                            (self.hidden, rng.normal(size=(8, 6)) / 3, hidden_bias),
                            (self.out, rng.normal(size=(6, 3)) / 2.5, rng.normal(size=3) / 5)):
            layer.kernel[...] = jnp.asarray(k, dtype)
            layer.bias[...] = jnp.asarray(b, dtype)

    def __call__(self, x):
        h = nnx.avg_pool(jax.nn.relu(self.conv(x)), (2, 2), strides=(2, 2))
        return self.out(jax.nn.relu(self.hidden(h.reshape(h.shape[0], -1))))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def _row(kind: str, rng: np.random.Generator, dtype: str) -> np.ndarray:
    big, tiny = _big(dtype), float(jnp.finfo(dtype).smallest_subnormal)
    u = rng.uniform(0.0, 1.0, size=SHAPE)
    return {"zeros": np.zeros(SHAPE), "big": np.full(SHAPE, big), "-big": np.full(SHAPE, -big),
            "denormal": tiny * np.round(1 + 3 * u), "negative": -u - 0.1,
            "mixed": np.where(u > 0.5, big, tiny) * np.sign(u - 0.3), "unit": u}[kind]


@pytest.mark.parametrize("method,dtype", CASES)
@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), dead=st.booleans(),
       kinds=st.lists(st.sampled_from(KINDS), min_size=ROWS, max_size=ROWS),
       half_input=st.sampled_from([None, "float16", "bfloat16"]))
def test_heatmaps_are_finite_where_f_is_or_a_clear_error_says_why(method, dtype, seed, dead,
                                                                  kinds, half_input):
    rng = np.random.default_rng(seed)
    x_dtype = half_input if dtype == "float32" and half_input else dtype  # half x, f32 model
    x_np = np.stack([_row(k, rng, x_dtype) for k in kinds])
    with jax.enable_x64(dtype == "float64"):
        model = Net(seed, dead, dtype)
        x = jnp.asarray(x_np, x_dtype)
        fn = _methods(dtype)[method]
        f = _forward(*nnx.split(model), x.astype(dtype))  # Flax promotes half x likewise
        f_ok = np.all(np.isfinite(np.asarray(f, np.float64)), axis=1)
        x_ok = np.all(np.isfinite(np.asarray(x, np.float64)).reshape(ROWS, -1), axis=1)
        try:
            R = (lrpjax.relevance(model, x, composite=fn, target=1) if isinstance(fn, C.Composite)
                 else fn(model, x, target=1))
        except ValueError as err:
            assert CLEAR.search(str(err)), str(err)
            row = re.search(r"row (\d+)", str(err))
            if "overflowed" in str(err):  # the row it names has finite x and f(x)
                assert x_ok[int(row.group(1))] and f_ok[int(row.group(1))], str(err)
            return
    R = np.asarray(R, np.float64).reshape(ROWS, -1)
    if x.dtype in (jnp.float16, jnp.bfloat16):
        assert R.dtype == np.float64  # (cast above) the heatmap came back as float32
    bad = x_ok & f_ok & ~np.all(np.isfinite(R), axis=1)
    assert not bad.any(), (kinds, np.flatnonzero(bad))
