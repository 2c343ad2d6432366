"""Activation maximization: the optax loop, objectives, targets and failure modes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lrpjax.maximize import (
    activation_maximization,
    am_program,
    channel,
    class_log_prob,
    class_logit,
    expert_regularizer,
    l2_regularizer,
    local_regularizer,
    nnx_features,
    nnx_logits,
    random_starts,
    unit,
)


class TinyCNN(nnx.Module):
    """A stand-in classifier: 8×8×1 → conv 3×3×4 → dense 10."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(8 * 8 * 4, 10, rngs=rngs)

    def __call__(self, x):
        a = jnp.tanh(self.conv(x))
        return self.dense(a.reshape(a.shape[0], -1))


@pytest.fixture(scope="module")
def tiny():
    return TinyCNN(nnx.Rngs(0))


def test_concave_toy_reaches_known_maximiser():
    """f(x) = wᵀx − λ‖x‖² has x* = w / 2λ."""
    w = jnp.array([1.0, -2.0, 0.5, 3.0])
    lam = 0.5
    result = activation_maximization(
        lambda x, t: jnp.dot(w, x), jnp.zeros((2, 4)), jnp.zeros(1, jnp.int32), steps=60,
        optimizer=optax.sgd(0.5), regularizer=l2_regularizer(lam), chunk=25)
    np.testing.assert_allclose(result.x[0], np.stack([w / (2 * lam)] * 2), atol=1e-3)
    assert result.trace.shape == (1, 2, 60)  # chunks of 25, 25, 10
    # F(x*) = wᵀw / 4λ is the maximum; the trace increases towards it
    np.testing.assert_allclose(result.total, jnp.dot(w, w) / (4 * lam), atol=1e-4)
    assert np.all(np.diff(np.asarray(result.trace[0, 0])) >= -1e-6)


def test_adam_reaches_known_maximiser_with_center():
    w, lam, c = jnp.array([0.3, -0.6]), 2.0, jnp.array([1.0, 1.0])
    result = activation_maximization(
        lambda x, t: jnp.dot(w, x), c[None], jnp.zeros(1, jnp.int32), steps=400,
        optimizer=optax.adam(optax.exponential_decay(0.05, 100, 0.3)),
        regularizer=l2_regularizer(lam, c), chunk=400, unroll=1)
    np.testing.assert_allclose(result.x[0, 0], c + w / (2 * lam), atol=1e-3)


def test_vmap_over_classes_matches_per_class_runs(tiny):
    objective = class_log_prob(nnx_logits(tiny))
    x0 = random_starts(jax.random.PRNGKey(0), jnp.full((8, 8, 1), 0.5), 2, 0.1)
    kw = {"regularizer": l2_regularizer(0.01, 0.5), "clip": (0.0, 1.0), "unroll": 1}
    batched = activation_maximization(objective, x0, jnp.arange(10), steps=30, chunk=15, **kw)
    program = am_program(objective, **kw)  # one compile for all single-class runs
    for c in range(10):
        target = jnp.array([c])
        state, _ = program.run(program.init(x0, target), target, 30)
        single_objective, single_total = program.finish(state[0], target)
        # objective values, never pixels: batched vs unbatched float order differs
        np.testing.assert_allclose(batched.objective[c], single_objective[0], atol=1e-4)
        np.testing.assert_allclose(batched.total[c], single_total[0], atol=1e-4)
    assert batched.x.shape == (10, 2, 8, 8, 1)
    assert batched.best_x().shape == (10, 8, 8, 1)
    # maximising log p(ω_c|x) made class c the most probable one
    probs = jax.nn.softmax(tiny(batched.best_x()))
    assert np.all(np.asarray(probs.argmax(-1)) == np.arange(10))


def test_per_target_starts_match_separate_runs(tiny):
    """x0 (T, R, ...) with per_target=True: target t runs from its own restarts x0[t]."""
    objective = class_log_prob(nnx_logits(tiny))
    x0 = jax.random.uniform(jax.random.PRNGKey(3), (3, 2, 8, 8, 1))
    kw = {"regularizer": l2_regularizer(0.01, 0.5), "clip": (0.0, 1.0), "unroll": 1,
          "steps": 20, "chunk": 20}
    targets = jnp.array([2, 5, 7])
    batched = activation_maximization(objective, x0, targets, per_target=True, **kw)
    for i, c in enumerate([2, 5, 7]):
        single = activation_maximization(objective, x0[i], jnp.array([c]), **kw)
        np.testing.assert_allclose(batched.objective[i], single.objective[0], atol=1e-4)
    # the starts differ per target, so the same class from another target's starts differs
    other = activation_maximization(objective, x0[0], jnp.array([5]), **kw)
    assert np.max(np.abs(np.asarray(other.total[0] - batched.total[1]))) > 1e-3
    with pytest.raises(ValueError, match="per_target=True needs x0 of shape"):
        activation_maximization(objective, x0[:2], targets, per_target=True, **kw)


def test_objectives_and_regularizers(tiny):
    logits_fn = nnx_logits(tiny)
    x = jnp.full((8, 8, 1), 0.3)
    z = tiny(x[None])[0]
    np.testing.assert_allclose(class_logit(logits_fn)(x, 3), z[3], rtol=1e-5)
    np.testing.assert_allclose(class_log_prob(logits_fn)(x, 3), jax.nn.log_softmax(z)[3],
                               rtol=1e-5)
    center = jnp.full_like(x, 0.1)
    np.testing.assert_allclose(l2_regularizer(2.0, center)(x), -2.0 * 64 * 0.04, rtol=1e-5)
    np.testing.assert_allclose(local_regularizer(3.0, center)(x), -3.0 * 64 * 0.04, rtol=1e-5)
    np.testing.assert_allclose(expert_regularizer(lambda v: v.sum(), 0.5)(x), 0.5 * 64 * 0.3,
                               rtol=1e-5)


def test_inner_units_and_channels_via_nnx_features(tiny):
    features = nnx_features(tiny, "conv")
    x = jnp.full((8, 8, 1), 0.3)
    a = tiny.conv(x[None])[0]
    np.testing.assert_allclose(unit(features)(x, 5), a.reshape(-1)[5], rtol=1e-5)
    np.testing.assert_allclose(channel(features)(x, 2), a[..., 2].mean(), rtol=1e-5)
    result = activation_maximization(channel(features), x[None], jnp.arange(4), steps=20,
                                     regularizer=l2_regularizer(0.1, 0.3))
    assert np.all(np.asarray(result.trace[:, 0, -1] > result.trace[:, 0, 0]))
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        nnx_features(tiny, "nope")(x[None])


@pytest.mark.parametrize("bad", [10, -1])
def test_invalid_class_index_is_a_clear_error(tiny, bad):
    objective = class_log_prob(nnx_logits(tiny))
    with pytest.raises(ValueError, match=f"invalid class index {bad}.*0..9"):
        activation_maximization(objective, jnp.zeros((1, 8, 8, 1)), jnp.array([0, bad]), steps=2)


def test_invalid_unit_and_channel_index(tiny):
    features = nnx_features(tiny, "conv")
    x0 = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="invalid channel index 4"):
        activation_maximization(channel(features), x0, jnp.array([4]), steps=2)
    with pytest.raises(ValueError, match="invalid unit index 256"):
        activation_maximization(unit(features), x0, jnp.array([256]), steps=2)
    # without the up-front check an invalid index gives NaN, never a wrapped index
    assert np.isnan(class_logit(nnx_logits(tiny))(x0[0], 12))


def test_diverging_run_is_a_clear_error():
    with pytest.raises(FloatingPointError, match=r"diverged.*step \d+ \(target #0, restart #0\)"):
        activation_maximization(lambda x, t: jnp.sum(x**2), jnp.ones((1, 3)),
                                jnp.zeros(1, jnp.int32), steps=200, optimizer=optax.sgd(1.0),
                                chunk=50, unroll=1)


def test_clipping_keeps_x_in_range():
    w = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    result = activation_maximization(lambda x, t: jnp.sum(w * x) * (t + 1),
                                     jnp.full((2, 3, 4), 0.5), jnp.arange(2), steps=50,
                                     optimizer=optax.sgd(0.3), clip=(0.0, 1.0))
    x = np.asarray(result.x)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x[0, 0], (np.asarray(w) > 0).astype(np.float32)
                                  + 0.5 * (np.asarray(w) == 0))
    with pytest.raises(ValueError, match="lo <= hi"):
        activation_maximization(lambda x, t: x.sum(), jnp.zeros((1, 2)), jnp.zeros(1), steps=1,
                                clip=(1.0, 0.0))


def test_pytree_targets_sweep_eta_of_local_am():
    """Targets can be any pytree: here a sweep of η in −η‖x − x₀‖² (x* = x₀ + w/2(λ+η))."""
    w, x_ref = jnp.array([1.0, -1.0]), jnp.array([0.2, 0.4])
    etas = jnp.array([0.1, 1.0, 10.0])

    def objective(x, t):
        return jnp.dot(w, x) - t["eta"] * jnp.sum((x - x_ref) ** 2)

    result = activation_maximization(objective, x_ref[None], {"eta": etas}, steps=300,
                                     optimizer=optax.sgd(0.09), regularizer=l2_regularizer(0.5),
                                     chunk=300, unroll=1)
    expected = (w + 2 * etas[:, None] * x_ref) / (2 * (0.5 + etas[:, None]))
    np.testing.assert_allclose(result.x[:, 0], expected, atol=1e-3)
    dist = np.linalg.norm(np.asarray(result.x[:, 0]) - np.asarray(x_ref), axis=-1)
    assert np.all(np.diff(dist) < 0)


def test_program_reuse_and_input_checks():
    program = am_program(lambda x, t: -jnp.sum((x - t) ** 2), optimizer=optax.sgd(0.25))
    targets = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    state = program.init(jnp.zeros((1, 2)), targets)
    state, trace = program.run(state, targets, 20)
    assert trace.shape == (2, 1, 20)
    np.testing.assert_allclose(state[0][:, 0], targets, atol=1e-3)
    with pytest.raises(ValueError, match="leading axis"):
        activation_maximization(lambda x, t: x.sum(), jnp.zeros((1, 2)), jnp.array(0), steps=1)
    with pytest.raises(ValueError, match="steps"):
        activation_maximization(lambda x, t: x.sum(), jnp.zeros((1, 2)), jnp.zeros(1), steps=0)
