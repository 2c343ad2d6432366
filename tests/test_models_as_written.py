"""Models as their users write them (issue: one engine): Linen keywords, NNX training mode,
callable pytrees, partials that do not recompile, unfolded BatchNorm never passed silently."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import composites as C
from lrpjax import explain
from lrpjax import rules as R
from lrpjax.coverage import UnsupportedLayerError

LRP0 = C.Uniform(R.Epsilon(0.0))


class LinenDropoutNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.relu(nn.Dense(8)(x))
        h = nn.Dropout(0.5, deterministic=not train)(h)
        return nn.Dense(3)(h)


def test_linen_keywords_reach_call():
    model = LinenDropoutNet()
    x = jax.random.uniform(jax.random.key(0), (4, 5))
    variables = model.init(jax.random.key(1), x, train=False)
    R_ = lrpjax.relevance(model, x, composite=LRP0, variables=variables, target=1,
                          model_kwargs={"train": False})
    gxi = lrpjax.gradient_x_input(model, x, variables=variables, target=1,
                                  model_kwargs={"train": False})
    np.testing.assert_allclose(R_, gxi, rtol=1e-5, atol=1e-6)  # LRP-0 = grad x input (ReLU)
    cov = lrpjax.describe(model, x, composite=LRP0, variables=variables,
                          model_kwargs={"train": False})
    assert [r.kind for r in cov.rows if r.kind in ("dense", "conv")] == ["dense", "dense"]
    with pytest.raises(ValueError, match="train"):  # Dropout without its rng: say what to pass
        lrpjax.relevance(model, x, composite=LRP0, variables=variables,
                         model_kwargs={"train": True})


class NNXTrainable(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(5, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.dense(x)))))


def test_nnx_training_mode_asks_for_eval():
    model = NNXTrainable(nnx.Rngs(0))
    x = jnp.ones((2, 5))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        lrpjax.relevance(model, x, composite=LRP0)
    model.eval()
    with pytest.raises(UnsupportedLayerError, match="fold it"):  # BN still there, now eval
        lrpjax.relevance(model, x, composite=LRP0)
    folded = lrpjax.canonizers.fold_batchnorm(model, x)
    assert np.all(np.isfinite(lrpjax.relevance(folded, x, composite=LRP0)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PytreeMLP:
    """An Equinox-style model: a registered dataclass whose __call__ is the forward."""

    w1: jax.Array
    w2: jax.Array

    def __call__(self, x):
        return jax.nn.relu(x @ self.w1) @ self.w2


def test_callable_pytree_model():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    net = PytreeMLP(jax.random.normal(k1, (6, 7)), jax.random.normal(k2, (7, 3)))
    x = jax.random.normal(k3, (4, 6))
    R_ = lrpjax.relevance(net, x, composite=LRP0, target=2)
    np.testing.assert_allclose(R_, lrpjax.gradient_x_input(net, x, target=2), rtol=1e-5,
                               atol=1e-6)  # bias-free ReLU net: LRP-0 = gradient x input
    np.testing.assert_allclose(R_.sum(axis=1), net(x)[:, 2], rtol=1e-5)
    net2 = PytreeMLP(net.w1 * 2, net.w2)  # new weights, same structure: no new compile
    n = explain._relevance._cache_size()
    lrpjax.relevance(net2, x, composite=LRP0, target=2)
    assert explain._relevance._cache_size() == n


def mlp_fn(params, x):
    return jax.nn.relu(x @ params["w1"]) @ params["w2"]


def test_fresh_partial_per_call_reuses_the_compiled_program():
    p = {"w1": jnp.ones((6, 7)) / 7, "w2": jnp.ones((7, 3))}
    x = jnp.ones((2, 6))
    first = lrpjax.relevance(functools.partial(mlp_fn, p), x, composite=LRP0, target=0)
    n = explain._relevance._cache_size()
    for scale in (2.0, 3.0):
        q = jax.tree.map(lambda a, s=scale: a * s, p)
        R_ = lrpjax.relevance(functools.partial(mlp_fn, q), x, composite=LRP0, target=0)
        np.testing.assert_allclose(R_, first * scale**2, rtol=1e-5)
    assert explain._relevance._cache_size() == n
    m = explain._gradient._cache_size()
    lrpjax.gradient(functools.partial(mlp_fn, p), x, target=0)
    lrpjax.gradient(functools.partial(mlp_fn, p), x, target=0)
    assert explain._gradient._cache_size() == m + 1


def test_unfolded_batchnorm_is_never_passed_silently():
    """As a plain function, an inference BatchNorm is x * w + b after the layer: the engine
    sees an elementwise affine map with a shift and raises unless it is given a rule."""
    k1, k2 = jax.random.split(jax.random.key(3))
    w = jax.random.normal(k1, (5, 4))
    mean, var, scale, shift = 0.3, 2.0, 1.5, -0.2

    def fn(x):
        z = x @ w
        z = (z - mean) * jax.lax.rsqrt(var + 1e-5) * scale + shift
        return jax.nn.relu(z)

    x = jax.random.normal(k2, (3, 5))
    with pytest.raises(UnsupportedLayerError, match="affine"):
        lrpjax.relevance(fn, x, composite=LRP0, target=0)
    comp = C.Composite(C.by_type({"affine": R.Epsilon(0.0)}), LRP0.matchers[0])
    R_ = lrpjax.relevance(fn, x, composite=comp, target=0)
    rows = lrpjax.describe(fn, x, composite=comp).rows
    assert [r.kind for r in rows] == ["dense", "affine", "activation"]
    assert np.all(np.isfinite(R_))
    linen = nn.Sequential([nn.Dense(4), nn.BatchNorm(use_running_average=True)])
    variables = linen.init(jax.random.key(0), x)
    with pytest.raises(UnsupportedLayerError, match="fold it"):
        lrpjax.relevance(linen, x, composite=LRP0, variables=variables, target=0)


def test_gradient_methods_are_jitted():
    model = nnx.Sequential(nnx.Linear(5, 3, rngs=nnx.Rngs(0)))
    x = jnp.ones((2, 5))
    n = explain._gradient._cache_size()
    for _ in range(3):
        lrpjax.sensitivity(model, x, target=1)
    assert explain._gradient._cache_size() == n + 1


class LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3), strides=2)(x))
        h = nn.relu(h).reshape(x.shape[0], -1)
        return nn.Dense(3)(nn.relu(nn.BatchNorm(use_running_average=True)(nn.Dense(6)(h))))


def test_fold_batchnorm_for_linen():
    model = LinenBN()
    k = jax.random.split(jax.random.key(5), 4)
    x = jax.random.uniform(k[0], (3, 8, 8, 1))
    variables = model.init(k[1], x)
    stats = jax.tree.map(lambda a: a + jax.random.uniform(k[2], a.shape), variables["batch_stats"])
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(k[3], a.shape),
                          variables["params"])
    variables = {"params": params, "batch_stats": stats}
    with pytest.raises(UnsupportedLayerError, match="fold it"):
        lrpjax.relevance(model, x, composite=LRP0, variables=variables, target=1)
    folded, fvars = lrpjax.canonizers.fold_batchnorm(model, x, variables=variables)
    np.testing.assert_allclose(folded.apply(fvars, x), model.apply(variables, x), rtol=1e-5,
                               atol=1e-5)
    rows = lrpjax.describe(folded, x, composite=LRP0, variables=fvars).rows
    assert [r.kind for r in rows if r.kind in ("dense", "conv", "batchnorm")] == [
        "conv", "dense", "dense"]
    R_ = lrpjax.relevance(folded, x, composite=LRP0, variables=fvars, target=1)
    want = lrpjax.gradient_x_input(model, x, variables=variables, target=1)
    np.testing.assert_allclose(R_, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))
