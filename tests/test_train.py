"""Training loop, checkpoints and the cache; tiny configurations only (no full training)."""

from __future__ import annotations

import dataclasses
import json
import runpy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrpjax.lab import checkpoints as CK
from lrpjax.lab import train as T
from lrpjax.lab.models import build

TINY = T.TrainConfig(model="mlp", source="mnist5k", epochs=1, batch_size=32, n_train=192,
                     n_test=100)
ROOT = Path(__file__).resolve().parents[1]


def _params(model: nnx.Module) -> dict[str, np.ndarray]:
    return CK.flat_arrays(model)


@pytest.fixture(scope="module")
def tiny_mlp():
    return T.train(TINY, verbose=False)


def test_training_steps_reduce_the_loss():
    from lrpjax.lab.data import load_mnist

    ds = load_mnist("train", source="mnist5k")
    images, labels = jnp.asarray(ds.images[:64]), jnp.asarray(ds.labels[:64])
    config = dataclasses.replace(TINY, shift=0, label_smoothing=0.0, learning_rate=1e-3)
    model = build("mlp", rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = T._optimizer(dataclasses.replace(config, warmup=0.0), 20)
    step = T._make_step(graphdef, rest, tx, config, nonpositive=False)
    opt_state, idx, shifts = tx.init(params), jnp.arange(64), jnp.zeros((64, 2), jnp.int32)
    losses = []
    for _ in range(10):
        params, opt_state, loss = step(params, opt_state, images, labels, idx, shifts)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0] and losses[-1] == min(losses)


def test_augment_shifts_with_zero_fill():
    x = jnp.zeros((2, 5, 5, 1)).at[:, 2, 2, 0].set(1.0)
    y = T.augment(x, jnp.array([[1, -2], [0, 0]]), 2)
    assert y[0, 3, 0, 0] == 1.0 and y[0].sum() == 1.0
    np.testing.assert_array_equal(y[1], x[1])
    assert T.augment(x, jnp.array([[2, 2], [0, 0]]), 2)[0, 4, 4, 0] == 1.0


def test_deterministic_from_seed(tiny_mlp):
    model, _card = tiny_mlp
    again, _ = T.train(TINY, verbose=False)
    a, b = _params(model), _params(again)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    other, _ = T.train(dataclasses.replace(TINY, seed=1), verbose=False)
    assert not np.array_equal(a["dense1/kernel"], _params(other)["dense1/kernel"])


def test_card_contents(tiny_mlp):
    _, card = tiny_mlp
    assert card["data_source"] == "mnist5k" and card["n_train"] == 192 and card["n_test"] == 100
    assert card["config"] == dataclasses.asdict(TINY) and card["seed"] == 0
    assert 0.0 <= card["test_accuracy"] <= 1.0 and card["train_time_s"] > 0
    assert set(card["versions"]) >= {"jax", "flax", "optax", "numpy"}
    assert card["architecture"]["parameters"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    json.dumps(card)


def test_nonpositive_biases_after_training():
    config = dataclasses.replace(TINY, model="cnn_nonpos", n_train=64, learning_rate=0.05)
    model, card = T.train(config, verbose=False)
    biases = [v for k, v in _params(model).items() if k.endswith("bias")]
    assert len(biases) == 4 and all(np.all(b <= 0) for b in biases)
    assert any(np.any(b < 0) for b in biases)
    assert card["bias_projection"]


def test_save_load_round_trip(tiny_mlp, tmp_path):
    model, card = tiny_mlp
    stem = CK.save(tmp_path / "mlp", model, card)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.json", "mlp.npz"]
    with np.load(stem.with_suffix(".npz")) as npz:
        assert "dense1/kernel" in npz.files
    fresh = build("mlp", rngs=nnx.Rngs(42))
    assert CK.load(tmp_path / "mlp.npz", fresh) == card
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    np.testing.assert_array_equal(fresh(x), model(x))
    with jax.enable_x64(True):  # a float32 checkpoint fills a float64 build
        wide = build("mlp", rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        CK.load(stem, wide)
        assert wide.dense1.kernel[...].dtype == jnp.float64
        np.testing.assert_allclose(wide(x), model(x), rtol=1e-5, atol=1e-5)


def test_load_mismatched_architecture_names_the_problem(tiny_mlp, tmp_path):
    model, card = tiny_mlp
    CK.save(tmp_path / "mlp", model, card)
    with pytest.raises(ValueError, match=r"missing key 'conv1/kernel'.*unexpected key 'dense3"):
        CK.load(tmp_path / "mlp", build("cnn", rngs=nnx.Rngs(0)))
    arrays = CK.flat_arrays(model)
    arrays["dense2/kernel"] = np.zeros((300, 50), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"shape mismatch for 'dense2/kernel'.*\(300, 50\)"):
        CK.load(tmp_path / "bad", build("mlp", rngs=nnx.Rngs(0)))


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    model, card = T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    stem = T.cache_path(TINY, tmp_path)
    assert stem.with_suffix(".npz").exists() and card["checkpoint"] == str(stem)

    def no_training(*args, **kwargs):
        raise AssertionError("trained although a checkpoint exists")

    real_train = T.train
    monkeypatch.setattr(T, "train", no_training)
    again, card2 = T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    assert card2 == card
    np.testing.assert_array_equal(_params(again)["dense3/bias"], _params(model)["dense3/bias"])

    changed = dataclasses.replace(TINY, learning_rate=TINY.learning_rate * 2)
    assert T.cache_path(changed, tmp_path) != stem
    with pytest.raises(AssertionError, match="trained although"):
        T.load_or_train("mlp", config=changed, cache_dir=tmp_path, verbose=False)
    monkeypatch.setattr(T, "train", real_train)
    with pytest.raises(ValueError, match="does not match"):
        T.load_or_train("cnn", config=TINY, cache_dir=tmp_path)


def test_default_configs_and_quick_budget():
    for name in ("mlp", "cnn", "cnn_max", "cnn_nonpos"):
        quick, full = T.default_config(name), T.default_config(name, quick=False)
        assert quick.model == name and full.epochs > quick.epochs
    assert T.default_config("cnn", source="full").epochs < T.default_config("cnn").epochs


def test_smoke_run_of_train_models_script(tmp_path, monkeypatch, capsys):
    script = ROOT / "experiments" / "train_models.py"
    real_cache = ROOT / "checkpoints"
    before = sorted(real_cache.iterdir()) if real_cache.exists() else []
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke", "--out", str(tmp_path),
                                      "--source", "mnist5k"])
    runpy.run_path(str(script), run_name="__main__")
    png = tmp_path / "test_digits.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "results.json").read_text())["models"]
    assert results["mode"] == "smoke" and results["data_source"] == "mnist5k"
    for name in ("mlp", "cnn", "cnn_max", "cnn_nonpos"):
        assert 0.0 <= results[name]["test_accuracy"] <= 1.0
    assert (sorted(real_cache.iterdir()) if real_cache.exists() else []) == before
