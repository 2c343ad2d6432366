"""The one recorder (lrpjax.frontends.calls): leaf-module calls in forward order, for NNX and
Linen. The references are the call structure the test models are written with (which module
is called when, on what), and the marks the engine's front-ends make of the same models."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from lrpjax import canonizers, frontends
from lrpjax.frontends import calls as C


# ---------------------------------------------------------------- NNX
class Block(nnx.Module):
    """Defines ``up`` before ``down`` but calls ``down`` first; calls ``up`` twice."""

    def __init__(self, rngs):
        self.up = nnx.Linear(4, 4, rngs=rngs)
        self.down = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
        h = self.down(x)
        return self.up(jax.nn.relu(h)) + self.up(h)


class Net(nnx.Module):
    """A non-leaf ``block``, then a leaf ``head`` whose ``kernel`` the forward reads directly."""

    def __init__(self, rngs):
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.block = Block(rngs)

    def __call__(self, x, *, scale=1.0):
        y = self.head(self.block(x)) * scale
        return y + 0.0 * jnp.sum(self.head.kernel[...])  # attribute access through the wrapper


def test_nnx_order_leaves_repeats_and_identity_of_values():
    net = Net(nnx.Rngs(0))
    x = jnp.ones((5, 3), jnp.float32)
    calls = C.nnx_leaf_calls(net, x, {"scale": 2.0})
    assert [c.path for c in calls] == ["block/down", "block/up", "block/up", "head"]
    # the modules as the recorder's view holds them: their type, the model's own Variables
    mods = [net.block.down, net.block.up, net.block.up, net.head]
    assert [type(c.module) for c in calls] == [nnx.Linear] * 4
    assert all(c.module.kernel is m.kernel and c.module.bias is m.bias
               for c, m in zip(calls, mods, strict=True))
    assert calls[1].module is calls[2].module  # one module, called twice
    assert [c.out.shape for c in calls] == [(5, 4), (5, 4), (5, 4), (5, 2)]
    assert all(c.out.dtype == jnp.float32 for c in calls)
    down, up1, up2, head = calls
    assert up1.args[0] is not down.out  # a relu in between: another value
    assert up2.args[0] is down.out  # the very output of ``down``
    assert head.args[0] is not up2.out  # the block's sum in between
    assert all(c.kwargs == {} for c in calls)
    with pytest.raises(dataclasses.FrozenInstanceError):
        calls[0].path = "x"
    # the model itself is untouched: still its own modules, same output as a plain call
    assert type(net.block.up) is nnx.Linear and type(net.head) is nnx.Linear
    W1, b1 = np.float64(net.block.down.kernel[...]), np.float64(net.block.down.bias[...])
    W2, b2 = np.float64(net.block.up.kernel[...]), np.float64(net.block.up.bias[...])
    W3, b3 = np.float64(net.head.kernel[...]), np.float64(net.head.bias[...])
    h = np.ones((5, 3)) @ W1 + b1
    ref = ((np.maximum(h, 0) @ W2 + b2) + (h @ W2 + b2)) @ W3 + b3
    np.testing.assert_allclose(np.asarray(net(x, scale=2.0)), 2.0 * ref, rtol=1e-5, atol=1e-5)


def test_nnx_root_leaf_and_keywords_recorded():
    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    (call,) = C.nnx_leaf_calls(lin, jax.ShapeDtypeStruct((7, 3), jnp.float32))
    assert call.path == "" and call.module.kernel is lin.kernel and call.out.shape == (7, 2)

    class Normed(nnx.Module):
        def __init__(self):
            self.norm = nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.norm(x, use_running_average=True)

    (call,) = C.nnx_leaf_calls(Normed(), jnp.zeros((2, 3)))
    assert call.path == "norm" and call.kwargs == {"use_running_average": True}


def test_nnx_recorder_agrees_with_the_engine_marks():
    net = Net(nnx.Rngs(0))
    static, dynamic = frontends.split(net)
    marks: list = []
    jax.eval_shape(lambda d, a: frontends.build(static, d, marks, "t")(a), dynamic,
                   jnp.ones((2, 3)))
    assert [m.path for m in marks] == [c.path for c in C.nnx_leaf_calls(net, jnp.ones((2, 3)))]


# ---------------------------------------------------------------- Linen
class LBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(4, name="shared")  # defined first, called second and third
        h = nn.Dense(4, name="first")(x)
        return shared(shared(h)) + shared(nn.relu(h))


class LNet(nn.Module):
    @nn.compact
    def __call__(self, x, scale=1.0):
        h = nn.Dense(3, name="mid")(LBlock(name="block")(x))
        h = nn.BatchNorm(use_running_average=True, name="bn")(h)
        return nn.Dense(2, name="head")(h) * scale


def _lnet():
    x = jnp.ones((5, 3), jnp.float32)
    return LNet(), LNet().init(jax.random.key(0), x), x


def test_linen_order_leaves_repeats_and_identity_of_values():
    model, variables, x = _lnet()
    calls = C.linen_leaf_calls(model, variables, x, {"scale": 3.0})
    assert [c.path for c in calls] == ["block/first", "block/shared", "block/shared",
                                       "block/shared", "mid", "bn", "head"]
    assert [type(c.module) for c in calls] == [nn.Dense] * 5 + [nn.BatchNorm, nn.Dense]
    assert [c.out.shape for c in calls] == [(5, 4)] * 4 + [(5, 3), (5, 3), (5, 2)]
    first, s1, s2, s3, mid, bn, head = calls
    assert s1.args[0] is first.out and s2.args[0] is s1.out  # a chain
    assert s3.args[0] is not first.out  # relu in between
    assert mid.args[0] is not s3.out  # the block's sum in between
    assert bn.args[0] is mid.out and head.args[0] is bn.out
    assert [c.module.name for c in calls] == ["first"] + ["shared"] * 3 + ["mid", "bn", "head"]
    assert all(c.kwargs == {} for c in calls)
    # the root counts as a leaf only when it calls no module
    dense = nn.Dense(2)
    (call,) = C.linen_leaf_calls(dense, dense.init(jax.random.key(0), x), x)
    assert call.path == "" and call.out.shape == (5, 2)
    # so a lone BatchNorm is refused by the canonizer, as in NNX (no layer to fold it into)
    bn = nn.BatchNorm(use_running_average=True)
    with pytest.raises(canonizers.CanonizerError, match="BatchNorm ''.*directly follow"):
        canonizers.fold_batchnorm(bn, x, variables=bn.init(jax.random.key(0), x))
    bn = nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(0))
    with pytest.raises(canonizers.CanonizerError, match="BatchNorm ''.*directly follow"):
        canonizers.fold_batchnorm(bn, x)


def test_linen_identity_paths_are_skipped_and_return_their_input():
    model, variables, x = _lnet()
    folded, new = canonizers.fold_batchnorm(model, x, variables=variables)
    calls = C.linen_leaf_calls(folded, new, x)
    assert [c.path for c in calls] == ["inner/block/first"] + ["inner/block/shared"] * 3 + [
        "inner/mid", "inner/head"]
    assert calls[-1].args[0] is calls[-2].out  # the folded BN returned its input
    with C.linen_as_identity(frozenset({"bn"})):
        assert C.LINEN_IDENTITY.get() == {"bn"}
        calls = C.linen_leaf_calls(model, variables, x)
    assert C.LINEN_IDENTITY.get() == frozenset()
    assert [c.path for c in calls][-2:] == ["mid", "head"]
    assert calls[-1].args[0] is calls[-2].out


def test_linen_recorder_agrees_with_the_engine_marks_and_refuses_linen_jit():
    model, variables, x = _lnet()
    static, dynamic = frontends.split(model, variables)
    marks: list = []
    jax.eval_shape(lambda d, a: frontends.build(static, d, marks, "t")(a), dynamic, x)
    assert [m.path for m in marks] == [c.path for c in C.linen_leaf_calls(model, variables, x)]

    class Jitted(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.jit(nn.Dense)(3)(x)

    v = Jitted().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="flax.linen.jit"):
        C.linen_leaf_calls(Jitted(), v, x)
    with pytest.raises(ValueError, match="flax.linen.jit"):
        canonizers.fold_batchnorm(Jitted(), x, variables=v)
