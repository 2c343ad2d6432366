"""LRP follows ``jax.default_matmul_precision``, in every product its rules add.

On Ampere and later GPUs JAX's default float32 products run in TF32; on an H100 that moved the
small reference nets' heatmaps by 2e-4 to 8e-3 (max-abs relative,
``benchmarks/results/gpu_tests_h100.txt``) and random VGG-16 gradients by 17 %
(``benchmarks/results/lrp_speed_h100.txt``). Users who want float32-exact heatmaps wrap
the call in ``jax.default_matmul_precision("highest")``, so no rule may pin its own precision and
the compiled ``relevance`` must not be reused across precisions. XLA:CPU computes float32
whatever the setting, so these tests read the lowered program rather than the numbers.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import SpecNet, composite_for, linen_model, random_net

import lrpjax
from lrpjax import explain

# the CNN's 4 linear layers, three times: every rule that adds products of its own (z^B's
# bounds as scalars and as arrays, gamma's and alpha-beta's W+ / W-, z+, w^2's and flat's
# denominators) and epsilon's transpose
BOX = (np.zeros((8, 8, 1)), np.linspace(0.5, 1.0, 64).reshape(8, 8, 1))
SPECS = {"box-gamma-ab": [("zbox", 0.0, 1.0), ("gamma", 0.25), ("ab", 2.0, 1.0), ("eps", 0.1)],
         "w2-flat-zplus": [("wsquare",), ("flat",), ("zplus",), ("eps", 0.0)],
         "arraybox": [("zbox", *BOX), ("gamma", 0.1), ("zplus",), ("eps", 0.1)]}
FRONT_ENDS = ("nnx", "linen", "jaxpr")


def _products(hlo: str) -> list[str]:
    """The precision of every dot_general and convolution in a StableHLO text ("" if none)."""
    out = []
    for line in hlo.splitlines():
        if re.search(r"stablehlo\.(dot_general|convolution)\b", line):
            m = re.search(r"precision(?:_config)? = \[([^\]]*)\]", line)
            out.append(re.sub(r"#stablehlo<precision (\w+)>", r"\1", m.group(1)) if m else "")
    return out


def _setup(specs: str = "box-gamma-ab", front_end: str = "nnx"):
    """(f(method, x), composite, x): method(model, x, **kw) on the net in one front-end."""
    rng = np.random.default_rng(0)
    net, shape = random_net(rng, "cnn", bias=True)
    comp = composite_for(SPECS[specs])
    x = jnp.asarray(rng.uniform(0, 1, size=(3, *shape)), jnp.float32)
    model = SpecNet(net)
    if front_end == "nnx":
        return (lambda method, a, **kw: method(model, a, **kw)), comp, x
    if front_end == "linen":
        linen, variables = linen_model(net)
        return (lambda method, a, **kw: method(linen, a, variables=variables, **kw)), comp, x
    graphdef, params = nnx.split(model)  # a plain function fn(params, x): the jaxpr front-end
    fn = lambda p, a: nnx.merge(graphdef, p)(a)
    return (lambda method, a, **kw: method(fn, a, params=params, **kw)), comp, x


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("specs", SPECS)
def test_every_rule_product_follows_the_default_precision(specs, front_end):
    call, comp, x = _setup(specs, front_end)
    f = jax.jit(lambda a: call(lrpjax.relevance, a, composite=comp, target=1))
    n_gradient = len(_products(jax.jit(lambda a: call(lrpjax.gradient, a, target=1))
                               .lower(x).as_text()))
    for setting, level in (("tensorfloat32", "HIGH"), ("highest", "HIGHEST")):
        with jax.default_matmul_precision(setting):
            products = _products(f.lower(x).as_text())
        # the forward products and transposes, and the rules' own (W+ a, bounds, denominators)
        assert len(products) > n_gradient, products
        assert all(p == f"{level}, {level}" for p in products), (setting, products)


def test_eager_relevance_compiles_again_for_another_precision():
    call, comp, x = _setup()
    fn = explain._relevance
    with jax.default_matmul_precision("highest"):
        R = call(lrpjax.relevance, x, composite=comp, target=1)
    n = fn._cache_size()
    with jax.default_matmul_precision("tensorfloat32"):
        R_tf32 = call(lrpjax.relevance, x, composite=comp, target=1)
    assert fn._cache_size() == n + 1  # a new executable, not the float32 one
    if jax.default_backend() == "cpu":
        # XLA:CPU computes float32 either way; the two executables may order sums differently
        np.testing.assert_allclose(R, R_tf32, rtol=1e-6, atol=1e-7 * np.abs(R).max())
    else:  # TF32 where the chip has it (an H100: ~4e-4 relative), float32 on older GPUs
        assert np.abs(R - R_tf32).max() <= 1e-2 * np.abs(R).max()
