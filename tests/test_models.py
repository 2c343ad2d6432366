"""Models: the paper's MaxNet, NNX == Linen twins, build() names, shapes, float64 builds.

NNX and Linen twins run the same arithmetic through two different traced programs, which XLA
may fuse or order differently, so they are compared with a tolerance, not bit for bit:
float32 rtol 1e-5 / atol 1e-6 (logits of order 1, a few thousand products per output),
float64 rtol 1e-12.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrpjax import layers
from lrpjax.lab.models import (
    CNN,
    MLP,
    MODEL_NAMES,
    STRIDE,
    CNNLinen,
    CNNStrided,
    CNNStridedLinen,
    MaxNet,
    MaxNetLinen,
    MLPLinen,
    build,
    build_linen,
    to_linen_variables,
)

F32 = {"rtol": 1e-5, "atol": 1e-6}  # NNX vs Linen in float32 (see the module docstring)


@pytest.fixture(scope="module")
def digits() -> jax.Array:
    return jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))


def test_maxnet_is_max_on_unit_square():
    g = jnp.linspace(0.0, 1.0, 21)
    x = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    f = MaxNet()(x)
    assert f.shape == (x.shape[0], 1)
    np.testing.assert_allclose(f[:, 0], x.max(axis=1), atol=1e-6)


def test_maxnet_weights_are_the_papers():
    m = MaxNet()
    np.testing.assert_array_equal(m.dense1.kernel[...], [[1, -1, 1], [-1, 1, 1]])
    np.testing.assert_array_equal(m.dense2.kernel[...], [[0.5], [0.5], [0.5]])
    assert not np.any(m.dense1.bias[...]) and not np.any(m.dense2.bias[...])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_nnx_equals_linen(name, digits):
    model = build(name, rngs=nnx.Rngs(1))
    linen = build_linen(name)
    variables = to_linen_variables(model)
    ref = linen.init(jax.random.key(0), digits)
    assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(linen.apply(variables, digits), model(digits), **F32)


def test_linen_classes_directly(digits):
    cnn = CNN("max", rngs=nnx.Rngs(2))
    np.testing.assert_allclose(CNNLinen(pool="max").apply(to_linen_variables(cnn), digits),
                               cnn(digits), **F32)
    strided = CNNStrided(rngs=nnx.Rngs(4))
    np.testing.assert_allclose(CNNStridedLinen().apply(to_linen_variables(strided), digits),
                               strided(digits), **F32)
    mlp = MLP(nnx.Rngs(3))
    np.testing.assert_allclose(MLPLinen().apply(to_linen_variables(mlp), digits), mlp(digits),
                               **F32)
    x = jnp.array([[0.2, 0.9], [0.7, 0.1]])
    np.testing.assert_allclose(MaxNetLinen().apply(to_linen_variables(MaxNet()), x),
                               MaxNet()(x), **F32)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_shapes(name, digits):
    assert build(name, rngs=nnx.Rngs(0))(digits).shape == (3, 10)


def test_build_variants_and_lrp_modules():
    cnn, cmax, nonpos = (build(n, rngs=nnx.Rngs(0)) for n in ("cnn", "cnn_max", "cnn_nonpos"))
    assert isinstance(cnn.pool1, layers.AvgPool) and not cnn.nonpositive_bias
    assert isinstance(cmax.pool1, layers.MaxPool) and isinstance(cmax.pool2, layers.MaxPool)
    assert isinstance(nonpos.pool2, layers.AvgPool) and nonpos.nonpositive_bias
    assert isinstance(build("mlp", rngs=nnx.Rngs(0)).flatten, layers.Flatten)
    assert isinstance(cnn.flatten, layers.Flatten)
    strided = build("cnn_strided", rngs=nnx.Rngs(0))
    assert isinstance(strided, CNNStrided) and isinstance(strided.pool2, layers.AvgPool)
    assert strided.conv1.strides == STRIDE
    assert strided.conv1(jnp.zeros((1, 28, 28, 1))).shape == (1, 28 // STRIDE, 28 // STRIDE, 16)
    assert cnn.conv1(jnp.zeros((1, 28, 28, 1))).shape == (1, 28, 28, 16)


def test_attributes_in_call_order():
    names = list(vars(build("cnn", rngs=nnx.Rngs(0))))
    order = ["conv1", "pool1", "conv2", "pool2", "flatten", "dense1", "dense2"]
    assert [n for n in names if n in order] == order
    names = list(vars(build("cnn_strided", rngs=nnx.Rngs(0))))
    order = ["conv1", "conv2", "pool2", "flatten", "dense1", "dense2"]
    assert [n for n in names if n in order] == order
    mlp_names = [n for n in vars(build("mlp", rngs=nnx.Rngs(0))) if not n.startswith("_")]
    assert [n for n in mlp_names if n in ("flatten", "dense1", "dense2", "dense3")] == [
        "flatten", "dense1", "dense2", "dense3"]


def test_build_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model name 'resnet'.*mlp, cnn, cnn_max"):
        build("resnet", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pool must be one of"):
        CNN("sum", rngs=nnx.Rngs(0))


def test_same_seed_same_parameters():
    a, b = build("cnn", rngs=nnx.Rngs(5)), build("cnn", rngs=nnx.Rngs(5))
    np.testing.assert_array_equal(a.conv1.kernel[...], b.conv1.kernel[...])


def test_float64_build(digits):  # the MLP's float64 build is covered in test_train.py
    name = "cnn"
    with jax.enable_x64(True):
        model = build(name, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        assert model.dense1.kernel[...].dtype == jnp.float64
        out = model(jnp.asarray(digits, jnp.float64))
        assert out.dtype == jnp.float64
        linen = build_linen(name, param_dtype=jnp.float64)
        np.testing.assert_allclose(linen.apply(to_linen_variables(model), digits), out,
                                   rtol=1e-12, atol=0)
        maxnet = MaxNet(param_dtype=jnp.float64)
        assert maxnet(jnp.array([[0.25, 0.5]], jnp.float64)).dtype == jnp.float64
