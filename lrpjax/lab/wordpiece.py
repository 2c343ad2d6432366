"""BERT's WordPiece tokenizer, read from a Hugging Face ``tokenizer.json``.

Basic tokenisation as in BERT (Devlin et al., NAACL 2019): drop control characters, map
whitespace to spaces, put spaces around CJK ideographs, strip accents (NFD, drop nonspacing
marks) and lowercase, then split on whitespace and isolate every punctuation character. Each
word is then cut greedily into the longest pieces of the vocabulary, continuations prefixed
``##`` (WordPiece, Wu et al., "Google's neural machine translation system", 2016); a word
that cannot be cut, or is longer than ``max_chars``, becomes ``[UNK]``. Special tokens
written in the text (``[MASK]``) are kept whole. Sentences are wrapped as [CLS] ... [SEP].
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np

__all__ = ["WordPiece"]


def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf")


def _is_whitespace(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) == "Zs"


def _is_punctuation(c: str) -> bool:
    o = ord(c)
    return (33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126
            or unicodedata.category(c).startswith("P"))


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return any(a <= o <= b for a, b in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPiece:
    """``encode(text)`` -> token ids with [CLS] and [SEP]; :meth:`batch` pads sentences."""

    def __init__(self, vocab: dict[str, int], specials: list[str], lowercase: bool = True,
                 strip_accents: bool | None = None, max_chars: int = 100, prefix: str = "##",
                 unk: str = "[UNK]"):
        self.vocab, self.lowercase, self.max_chars, self.prefix = vocab, lowercase, max_chars, prefix
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.inverse = {i: t for t, i in vocab.items()}
        self.unk, self.cls, self.sep, self.pad = (vocab[t] for t in (unk, "[CLS]", "[SEP]",
                                                                     "[PAD]"))
        specials = sorted(specials, key=len, reverse=True)
        self.specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials \
            else None

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> WordPiece:
        """From a parsed ``tokenizer.json`` (a WordPiece model, a BERT normaliser)."""
        model, norm = spec["model"], spec.get("normalizer") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(f"not a WordPiece tokenizer: {model.get('type')!r}")
        specials = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        return cls(dict(model["vocab"]), specials, lowercase=norm.get("lowercase", True),
                   strip_accents=norm.get("strip_accents"),
                   max_chars=model.get("max_input_chars_per_word", 100),
                   prefix=model.get("continuing_subword_prefix", "##"),
                   unk=model.get("unk_token", "[UNK]"))

    def normalize(self, text: str) -> str:
        """Clean, space CJK characters, strip accents, lowercase."""
        out = []
        for c in text:
            if c in ("\0", "\ufffd") or _is_control(c):
                continue
            out.append(" " if _is_whitespace(c) else f" {c} " if _is_cjk(c) else c)
        text = "".join(out)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text)
                           if unicodedata.category(c) != "Mn")
        return text.lower() if self.lowercase else text

    def words(self, text: str) -> list[str]:
        """Whitespace-separated words with every punctuation character on its own."""
        out: list[str] = []
        for chunk in text.split():
            word = ""
            for c in chunk:
                if _is_punctuation(c):
                    out += [word, c] if word else [c]
                    word = ""
                else:
                    word += c
            if word:
                out.append(word)
        return out

    def pieces(self, word: str) -> list[int]:
        """The greedy longest-match-first pieces of one word ([UNK] if it cannot be cut)."""
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = (self.prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk]
        return ids

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; wrapped in [CLS] ... [SEP] unless ``special=False``."""
        ids: list[int] = []
        parts = self.specials.split(text) if self.specials else [text]
        for k, part in enumerate(parts):
            if k % 2:  # a special token written in the text
                ids.append(self.vocab[part])
                continue
            for word in self.words(self.normalize(part)):
                ids += self.pieces(word)
        return [self.cls, *ids, self.sep] if special else ids

    def tokens(self, ids: Any) -> list[str]:
        """The vocabulary's strings of token ids."""
        return [self.inverse[int(i)] for i in ids]

    def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) int32 arrays (batch, longest), padded on the right with [PAD]."""
        enc = [self.encode(t) for t in texts]
        n = max(len(e) for e in enc)
        ids = np.full((len(enc), n), self.pad, np.int32)
        mask = np.zeros((len(enc), n), np.int32)
        for i, e in enumerate(enc):
            ids[i, :len(e)], mask[i, :len(e)] = e, 1
        return ids, mask
