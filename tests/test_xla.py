"""lrpjax.cpu_compiler_options: Eigen convolutions on XLA:CPU, same heatmaps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_nets import SpecNet, composite_for, random_net
from reference_lrp import lrp as np_lrp

import lrpjax
from lrpjax import xla

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
YNN = "xla_cpu_experimental_ynn_fusion_type"


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_options_switch_convolutions_from_ynnpack_to_eigen():
    opts = lrpjax.cpu_compiler_options()
    assert opts == {YNN: ""}
    x, w = jnp.ones((16, 14, 14, 32)), jnp.ones((5, 5, 32, 64))  # the MNIST CNN's conv2
    def hlo(**kw):
        return jax.jit(_conv, **kw).lower(x, w).compile().as_text()
    assert "__ynn_fusion" in hlo()  # jaxlib 0.10's default: YNNPACK (one thread on 2 cores)
    assert "__ynn_fusion" not in hlo(compiler_options=opts)
    np.testing.assert_allclose(jax.jit(_conv, compiler_options=opts)(x, w), _conv(x, w))


def test_no_options_where_the_user_or_jaxlib_decides(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{YNN}=individual_convolution")
    assert lrpjax.cpu_compiler_options() == {}
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(xla, "_YNN_FUSIONS", "xla_cpu_no_such_option")  # an older/newer jaxlib
    assert lrpjax.cpu_compiler_options() == {}
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert lrpjax.cpu_compiler_options() == {}


def test_heatmaps_with_the_options_match_the_float64_reference():
    rng = np.random.default_rng(3)
    net, shape = random_net(rng, "cnn", bias=True)
    x = rng.uniform(0, 1, size=(6, *shape))
    target = rng.integers(0, 5, size=6)
    specs = [("zbox", 0.0, 1.0), ("gamma", 0.25), ("zplus",), ("eps", 0.1)]
    model, comp = SpecNet(net), composite_for(specs)
    f = jax.jit(lambda a, t: lrpjax.relevance(model, a, composite=comp, target=t),
                compiler_options=lrpjax.cpu_compiler_options())
    R = np.asarray(f(jnp.asarray(x, jnp.float32), jnp.asarray(target)))
    ref = np_lrp(net, x, specs, target)
    assert np.abs(R - ref).max() / np.abs(ref).max() <= 1e-5
