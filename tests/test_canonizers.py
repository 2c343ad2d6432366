"""BatchNorm folding: same function, original untouched, LRP of the folded model matches the
float64 NumPy reference on the folded weights, clear errors for BNs that cannot be folded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import LINEAR, _layer_nnx, composite_for, random_net
from reference_lrp import lrp as np_lrp

import lrpjax
from lrpjax import canonizers, layers
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax.coverage import UnsupportedLayerError


def _random_stats(rng, n, centred=False):
    """BN parameters (mean, var, scale, bias) as float32 values."""
    f32 = lambda a: np.asarray(a, np.float32)
    mean = np.zeros(n) if centred else rng.normal(0, 0.5, n)
    bias = np.zeros(n) if centred else rng.normal(0, 0.2, n)
    return f32(mean), f32(rng.uniform(0.5, 2.0, n)), f32(rng.uniform(0.5, 1.5, n)), f32(bias)


class BNNet(nnx.Module):
    """Modules called in sequence."""

    def __init__(self, mods):
        self.layers = nnx.List(mods)

    def __call__(self, x):
        for m in self.layers:
            x = m(x)
        return x


def bn_net(net, rng, dtype=jnp.float32, centred=False):
    """A ``random_net`` spec with an inference-mode BatchNorm after every dense/conv layer;
    returns the model and the BN statistics per linear layer."""
    mods, stats_list = [], []
    for spec in net:
        mods.append(_layer_nnx(spec, dtype))
        if spec[0] in LINEAR:
            stats = _random_stats(rng, spec[1].shape[-1], centred)
            bn = nnx.BatchNorm(len(stats[0]), use_running_average=True, dtype=dtype,
                               param_dtype=dtype, rngs=nnx.Rngs(0))
            bn.mean[...], bn.var[...] = stats[0], stats[1]
            bn.scale[...], bn.bias[...] = (jnp.asarray(s, dtype) for s in stats[2:])
            mods.append(bn)
            stats_list.append(stats)
    return BNNet(mods), stats_list


def _folded_spec(net, stats, eps=1e-5):
    """The folded network in NumPy float64, written from the equations (W' = W s, b' = (b -
    mu) s + beta with s = gamma / sqrt(var + eps)), independent of lrpjax.canonizers."""
    out, it = [], iter(stats)
    for spec in net:
        if spec[0] in LINEAR:
            mean, var, gamma, beta = (np.asarray(v, np.float64) for v in next(it))
            s = gamma / np.sqrt(var + eps)
            out.append((spec[0], spec[1] * s, (spec[2] - mean) * s + beta))
        else:
            out.append(spec)
    return out


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fold_keeps_outputs_and_original(kind):
    rng = np.random.default_rng(10)
    net, shape = random_net(rng, kind)
    model, stats = bn_net(net, rng)
    x = jnp.asarray(rng.uniform(0, 1, size=(6, *shape)), jnp.float32)
    kernel0 = np.asarray(model.layers[0].kernel[...]).copy()
    before = np.asarray(model(x))
    folded = canonizers.fold_batchnorm(model, x)
    np.testing.assert_allclose(np.asarray(folded(x)), before, rtol=0, atol=1e-5)
    # the original is untouched; the folded model has no BatchNorm left
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel[...]), kernel0)
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    assert sum(isinstance(m, nnx.BatchNorm) for m in model.layers) == len(stats)
    assert not any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(folded))
    pairs = canonizers.batchnorm_pairs(model, x)
    assert pairs[0] == ("layers/0", "layers/1") and len(pairs) == len(stats)
    rows = {r.path: r for r in lrpjax.describe(folded, x, composite=C.EpsilonPlus()).rows}
    assert rows["layers/1"].type_name == "Identity" and isinstance(rows["layers/1"].rule, R.Pass)
    with pytest.raises(UnsupportedLayerError, match="fold it"):
        lrpjax.relevance(model, x, composite=C.EpsilonPlus())


@pytest.mark.parametrize("specs", [[("zbox", 0.0, 1.0), ("gamma", 0.25), ("eps", 0.1), ("zplus",)],
                                   [("eps", 0.1), ("ab", 2.0, 1.0), ("flat",), ("eps", 0.0)]])
def test_folded_relevance_matches_numpy_reference(specs):
    rng = np.random.default_rng(11)
    net, shape = random_net(rng, "cnn")
    x = rng.uniform(0, 1, size=(3, *shape))
    with jax.enable_x64(True):
        model, stats = bn_net(net, rng, dtype=jnp.float64)
        folded = canonizers.fold_batchnorm(model, jnp.asarray(x))
        Rx = lrpjax.relevance(folded, jnp.asarray(x), composite=composite_for(specs), target=1)
    ref = np_lrp(_folded_spec(net, stats), x, specs, np.ones(3, int))
    assert np.all(np.isfinite(Rx))
    np.testing.assert_allclose(np.asarray(Rx), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_bias_free_fold_conserves():
    """Centred BN (mu = beta = 0) after bias-free layers folds to bias-free layers: LRP-0
    conserves, sum_i R_i = f_c(x) (float64)."""
    rng = np.random.default_rng(12)
    net, shape = random_net(rng, "mlp", bias=False, sizes=(12, 10, 8, 5))
    with jax.enable_x64(True):
        x = jnp.asarray(rng.uniform(-1, 1, size=(4, *shape)))
        folded = canonizers.fold_batchnorm(bn_net(net, rng, jnp.float64, centred=True)[0], x)
        y = np.asarray(folded(x))
        Rx = lrpjax.relevance(folded, x, composite=C.Uniform(R.Epsilon(0.0)), target=2)
    np.testing.assert_allclose(np.asarray(Rx).sum(axis=1), y[:, 2], rtol=1e-9)


class _After(nnx.Module):
    """BN placed after ``how``: a ReLU module, a bare op, first, or a shared dense layer."""

    def __init__(self, how):
        rngs = nnx.Rngs(0)
        self.how = how
        self.dense = nnx.Linear(4, 4, rngs=rngs)
        self.relu = layers.ReLU()
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.bn.mean[...], self.bn.var[...] = jnp.full(4, 0.5), jnp.full(4, 4.0)

    def __call__(self, x):
        if self.how == "first":
            return self.dense(self.bn(x))
        if self.how == "module":
            return self.bn(self.relu(self.dense(x)))
        if self.how == "op":
            return self.bn(2.0 * self.dense(x))
        if self.how == "shared":
            return self.bn(self.dense(self.dense(x)))
        if self.how == "reused":  # the dense output also feeds the sum: folding would change it
            h = self.dense(x)
            return self.bn(h) + h
        return self.bn(self.dense(x))


@pytest.mark.parametrize("how,match", [
    ("first", "does not directly follow"), ("module", "does not directly follow.*'relu'"),
    ("op", "input is not the output of 'dense'"), ("shared", "called 2 times"),
    ("reused", "changed the model output")])
def test_unfoldable_batchnorm_errors(how, match):
    x = jnp.ones((2, 4))
    with pytest.raises(canonizers.CanonizerError, match=match):
        canonizers.fold_batchnorm(_After(how), x)


def test_training_mode_error_and_no_batchnorm():
    model = _After("plain")
    model.train()
    with pytest.raises(canonizers.CanonizerError, match="training mode"):
        canonizers.fold_batchnorm(model, jnp.ones((2, 4)))
    model.eval()
    folded = canonizers.fold_batchnorm(model, jax.ShapeDtypeStruct((2, 4), jnp.float32))
    assert isinstance(folded.bn, canonizers.Identity) and folded.dense.bias is not None
    plain = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    copy = canonizers.fold_batchnorm(plain, jnp.ones((1, 3)))
    assert copy is not plain and np.array_equal(copy.kernel[...], plain.kernel[...])
