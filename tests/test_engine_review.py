"""Findings of a soundness review of the engine, each a regression test (silent wrong
heatmaps that the engine must now refuse or get right)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax import transformer as T
from lrpjax.coverage import UnsupportedLayerError

LRP0 = C.Composite(C.by_type({"dense": R.Epsilon(0.0), "add": R.Norm(0.0),
                              "avgpool": R.Norm(0.0)}))
W = jax.random.normal(jax.random.key(0), (4, 3))


def test_a_sum_times_a_relevance_carrying_scalar_is_no_average():
    x = jax.random.normal(jax.random.key(1), (2, 4))
    f = lambda a: ((a @ W).sum(axis=1) * jnp.max(a))[:, None]
    with pytest.raises(UnsupportedLayerError, match="product"):
        lrpjax.relevance(f, x, composite=LRP0, target=0)


def test_a_quotient_of_relevance_carrying_values_raises_even_under_attnlrp():
    x = jax.random.uniform(jax.random.key(2), (2, 4), minval=1, maxval=2)
    f = lambda a: (a @ W[:, :1]) / (a @ W[:, 1:2])
    with pytest.raises(UnsupportedLayerError, match="quotient"):
        lrpjax.relevance(f, x, composite=T.AttnLRP(), target=0)


class DenseTanh(nnx.Linear):
    def __call__(self, x):
        return jnp.tanh(super().__call__(x))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.l1, self.l2 = DenseTanh(4, 5, rngs=rngs), nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.l1(x))


def test_a_subclass_that_overrides_call_is_walked_not_taken_whole():
    model = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 4))
    graphdef, state = nnx.split(model)
    a = lrpjax.relevance(model, x, composite=LRP0, target=1)
    b = lrpjax.relevance(lambda s, z: nnx.merge(graphdef, s)(z), x, params=state,
                         composite=LRP0, target=1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    kinds = {r.path: r.kind for r in lrpjax.describe(model, x, composite=LRP0).rows}
    assert "l1" not in kinds and any(p.startswith("l1/") and k == "activation"
                                     for p, k in kinds.items())


class Proj(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 4)))

    def __call__(self, x):
        return jnp.sin(x @ self.w[...])


class Block(nnx.Module):
    def __init__(self, rngs):
        self.proj = Proj(rngs)

    def __call__(self, x):
        return self.proj(x)


class Outer(nnx.Module):
    def __init__(self, rngs):
        self.block = Block(rngs)

    def __call__(self, x):
        return self.block(x)


def test_operations_inside_a_nested_leaf_module_carry_its_full_path():
    with pytest.raises(UnsupportedLayerError, match="'block/proj/sin/"):
        lrpjax.relevance(Outer(nnx.Rngs(0)), jnp.ones((2, 4)), composite=LRP0, target=0)


def test_a_user_function_named_relu_is_not_taken_for_jax_nn_relu():
    @jax.jit
    def relu(h):  # a leaky ReLU under the name "relu"
        return jnp.where(h > 0, h, 0.1 * h)

    k = jax.random.split(jax.random.key(4), 3)
    W1, W2, W3 = (jax.random.normal(kk, s) for kk, s in zip(k, [(4, 6), (6, 6), (6, 3)],
                                                           strict=True))
    f = lambda a: relu(jax.nn.relu(a @ W1) @ W2) @ W3
    comp = C.Composite(C.by_type({"dense": R.Gamma(0.25)}))
    x = jax.random.normal(jax.random.key(5), (2, 4))
    rows = lrpjax.describe(f, x, composite=comp).rows
    assert not any("gated" in r.proven for r in rows)
    fast = lrpjax.relevance(f, x, composite=comp, target=0)
    with lrpjax.facts.disabled():
        general = lrpjax.relevance(f, x, composite=comp, target=0)
    np.testing.assert_allclose(fast, general, rtol=1e-6, atol=1e-7)


def test_cp_lrp_keeps_attention_weights_constant_through_a_constant_scale():
    k = jax.random.split(jax.random.key(6), 3)
    Wq, Wk, Wv = (jax.random.normal(kk, (4, 4)) for kk in k)

    def f(x, scale):
        q, kk, v = x @ Wq, x @ Wk, x @ Wv
        A = jax.nn.softmax(q @ kk.transpose(0, 2, 1), -1)
        if scale:
            A = A * jnp.ones((1, 3, 3))
        return (A @ v).sum((1, 2))[:, None]

    x = jax.random.normal(jax.random.key(7), (2, 3, 4))
    a = lrpjax.relevance(lambda z: f(z, False), x, composite=T.CPLRP(), target=0)
    b = lrpjax.relevance(lambda z: f(z, True), x, composite=T.CPLRP(), target=0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
