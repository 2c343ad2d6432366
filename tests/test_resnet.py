"""The small ResNet: BN folding, conservation through residual sums (float64), finite heatmaps
for the usual composites, per-layer relevance sums, and a smoke test of the training loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import canonizers
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax.lab import resnet
from lrpjax.lab.train import train_resnet
from lrpjax.layerwise import relevance_sums

SIZE = 12  # a tiny input: two stages 12x12 -> 6x6, global pool over 6x6


def tiny(dtype=jnp.float32, centred=False, seed=0):
    """An untrained ResNet(widths=(4, 8)) in eval mode with random BN statistics (``centred``:
    mean = beta = 0 and a zero head bias, so the folded net has no bias at all)."""
    model = resnet.ResNet(10, (4, 8), rngs=nnx.Rngs(seed), size=SIZE, dtype=dtype,
                          param_dtype=dtype)
    rng = np.random.default_rng(seed)
    for _, bn in nnx.iter_graph(model):
        if isinstance(bn, nnx.BatchNorm):
            n = bn.num_features
            bn.var[...] = rng.uniform(0.5, 2.0, n).astype(np.float32)
            bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), dtype)
            if not centred:
                bn.mean[...] = rng.normal(0, 0.3, n).astype(np.float32)
                bn.bias[...] = jnp.asarray(rng.normal(0, 0.2, n), dtype)
    if centred:
        model.head.bias[...] = jnp.zeros_like(model.head.bias[...])
    else:
        model.head.bias[...] = jnp.asarray(rng.normal(0, 0.2, 10), dtype)
    model.eval()
    return model


def _x(n=3, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, SIZE, SIZE, 1))


def test_structure_fold_and_coverage():
    model = tiny()
    x = jnp.asarray(_x(), jnp.float32)
    y = model(x)
    assert y.shape == (3, 10)
    folded = canonizers.fold_batchnorm(model, x)
    np.testing.assert_allclose(folded(x), y, rtol=0, atol=1e-5)
    pairs = dict(canonizers.batchnorm_pairs(model, x))
    assert pairs["stem"] == "stem_bn" and pairs["stages/1/0/proj"] == "stages/1/0/proj_bn"
    assert len(pairs) == 6  # stem + 2 per block + 1 projection
    cov = lrpjax.describe(folded, x, composite=C.EpsilonGammaBox(0.0, 1.0))
    rules = {r.path: r.rule for r in cov.rows}
    assert not cov.fallbacks
    assert isinstance(rules["stem"], R.ZBox) and isinstance(rules["stages/1/0/proj"], R.Gamma)
    assert isinstance(rules["stages/0/0/add"], R.Norm) and isinstance(rules["pool"], R.Norm)
    assert isinstance(rules["stages/0/0/bn1"], R.Pass)
    with pytest.raises(ValueError, match="at least one stage"):
        resnet.ResNet(widths=(), rngs=nnx.Rngs(0))


def test_bias_free_resnet_conserves_layer_by_layer():
    """LRP-0 with Norm(0) at the residual sums and the pool: sum_i R_i = f_c(x) (float64), and
    every layer passes on exactly the relevance it receives."""
    comp = C.Composite(C.by_type({"dense": R.Epsilon(0.0), "conv": R.Epsilon(0.0),
                                  "add": R.Norm(0.0), "avgpool": R.Norm(0.0)}))
    with jax.enable_x64(True):
        x = jnp.asarray(_x())
        folded = canonizers.fold_batchnorm(tiny(jnp.float64, centred=True), x)
        y = np.asarray(folded(x))
        target = jnp.asarray(np.argmax(y, axis=1))
        trace = relevance_sums(folded, x, composite=comp, target=target)
    f = y[np.arange(3), np.asarray(target)]
    np.testing.assert_allclose(trace.heatmap.reshape(3, -1).sum(1), f, rtol=1e-5)
    np.testing.assert_allclose(trace.input, f, rtol=1e-5)
    np.testing.assert_allclose(trace.output, f, rtol=1e-12)
    for row in trace.rows:
        np.testing.assert_allclose(row.r_in, row.r_out, rtol=1e-9, err_msg=row.path)
    adds = [r for r in trace.rows if r.path.endswith("add")]
    assert len(adds) == 2 and all(np.allclose(r.r_out, f, rtol=1e-9) for r in adds)
    assert "stages/0/0/add" in str(trace) and "(input)" in str(trace)


@pytest.mark.parametrize("name", ["EpsilonPlus", "EpsilonGammaBox", "Alpha1Beta0"])
def test_composites_give_finite_bounded_relevance(name):
    comp = {"EpsilonPlus": C.EpsilonPlus(), "EpsilonGammaBox": C.EpsilonGammaBox(0.0, 1.0),
            "Alpha1Beta0": C.Alpha1Beta0()}[name]
    x = jnp.asarray(_x(), jnp.float32)
    folded = canonizers.fold_batchnorm(tiny(), x)
    trace = relevance_sums(folded, x, composite=comp)
    assert trace.heatmap.shape == x.shape and np.all(np.isfinite(trace.heatmap))
    if name == "EpsilonGammaBox":  # the probes leave the heatmap as lrpjax.relevance gives it
        Rx = lrpjax.relevance(folded, x, composite=comp)
        np.testing.assert_allclose(trace.heatmap, Rx, rtol=1e-5, atol=1e-7)
    scale = np.abs(trace.output).max()
    for row in trace.rows:  # no blow-up anywhere (Zennit #148 saw 1e9)
        assert np.all(np.isfinite(row.r_in)) and np.abs(row.r_in).max() <= 10 * scale, row


def test_train_resnet_updates_weights_and_running_stats():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(64, SIZE, SIZE, 1)).astype(np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(np.int32)
    model = resnet.ResNet(2, (4,), rngs=nnx.Rngs(0), size=SIZE)
    kernel0 = np.asarray(model.stem.kernel[...]).copy()
    record = train_resnet(model, x, y, epochs=2, batch_size=32, learning_rate=1e-2)
    assert record["steps"] == 4 and np.all(np.isfinite(record["losses"]))
    assert model.stem_bn.use_running_average is True  # left in eval mode
    assert not np.allclose(np.asarray(model.stem_bn.mean[...]), 0.0)
    assert not np.array_equal(np.asarray(model.stem.kernel[...]), kernel0)
    with pytest.raises(ValueError, match="batch_size"):
        train_resnet(model, x[:8], y[:8], batch_size=32)
