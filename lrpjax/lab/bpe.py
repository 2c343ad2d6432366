"""A byte-level BPE tokenizer (GPT-2 style) built from a vocabulary and ranked merges.

Byte-pair encoding for subwords: Sennrich, Haddow & Birch, "Neural machine translation of rare
words with subword units", ACL 2016; the byte-level variant (every byte mapped to a printable
character, so any text encodes): Radford et al., "Language models are unsupervised multitask
learners" (GPT-2), 2019.

Encoding: special tokens are cut out first (exact matches); the rest is pre-tokenized -- every
digit on its own (``digits=True``, as SmolLM's and StarCoder's tokenizers do), then GPT-2's
pattern ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
(written out as a scanner over Unicode categories, so no ``regex`` package is needed) -- and each
piece's UTF-8 bytes are merged pairwise, lowest merge rank first.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["ByteBPE", "byte_to_unicode", "pretokenize"]

_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
_NEVER = 1 << 62  # the rank of a pair that no merge joins


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters: printable Latin-1 bytes map
    to themselves, the others to 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _space(ch: str) -> bool:  # Unicode White_Space (str.isspace also counts \x1c-\x1f)
    return ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


def _letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def _other(ch: str) -> bool:
    return not (_space(ch) or _letter(ch) or _number(ch))


def _gpt2_pieces(text: str) -> Iterable[str]:
    """GPT-2's pre-tokenizer pattern, matched left to right with the same alternation order."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "'":
            c = next((c for c in _CONTRACTIONS if text.startswith(c, i + 1)), None)
            if c is not None:
                yield text[i:i + 1 + len(c)]
                i += 1 + len(c)
                continue
        j = i + 1 if ch == " " and i + 1 < n and not _space(text[i + 1]) else i
        for cls in (_letter, _number, _other):  # " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+"
            if cls(text[j]):
                k = j + 1
                while k < n and cls(text[k]):
                    k += 1
                yield text[i:k]
                i = k
                break
        else:  # whitespace: "\s+(?!\S)" (leave the last one for the next word), else "\s+"
            k = i + 1
            while k < n and _space(text[k]):
                k += 1
            if k < n and k - i > 1:
                k -= 1
            yield text[i:k]
            i = k


def pretokenize(text: str, digits: bool = True) -> list[str]:
    """The pieces BPE merges within: with ``digits``, every number character is its own piece
    first; then GPT-2's pattern on the text between them."""
    if not digits:
        return list(_gpt2_pieces(text))
    out: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if _number(ch):
            out += _gpt2_pieces(text[start:i])
            out.append(ch)
            start = i + 1
    out += _gpt2_pieces(text[start:])
    return out


class ByteBPE:
    """A byte-level BPE tokenizer: ``tokens`` (id -> string in the byte-to-unicode alphabet),
    ``merges`` ("a b" lines, rank = position), ``special`` (token strings cut out verbatim)."""

    def __init__(self, tokens: Sequence[str], merges: Sequence[str],
                 special: Iterable[str] = (), digits: bool = True):
        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.special = sorted(set(special), key=len, reverse=True)  # longest match first
        self.digits = digits
        self._bytes = byte_to_unicode()
        self._unbytes = {c: b for b, c in self._bytes.items()}
        self._word = functools.lru_cache(maxsize=65536)(self._merge)

    def __len__(self) -> int:
        return len(self.tokens)

    def _merge(self, word: str) -> tuple[int, ...]:
        parts = list(word)
        while len(parts) > 1:
            pairs = set(itertools.pairwise(parts))
            pair = min(pairs, key=lambda p: self.ranks.get(p, _NEVER))
            if pair not in self.ranks:
                break
            merged, k = [], 0
            while k < len(parts):  # merge every occurrence of the pair, left to right
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == pair:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        try:
            return tuple(self.vocab[p] for p in parts)
        except KeyError as err:
            raise ValueError(f"BPE piece {err.args[0]!r} of {word!r} is not in the vocabulary"
                             ) from None

    def _split_special(self, text: str) -> list[tuple[str, bool]]:
        out, start, i = [], 0, 0
        while i < len(text):
            hit = next((s for s in self.special if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], False))
            out.append((hit, True))
            i = start = i + len(hit)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens in it become their ids; no BOS is added)."""
        ids: list[int] = []
        for part, special in self._split_special(text):
            if special:
                ids.append(self.vocab[part])
                continue
            for piece in pretokenize(part, self.digits):
                ids += self._word("".join(self._bytes[b] for b in piece.encode("utf-8")))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (special tokens verbatim; invalid UTF-8 replaced)."""
        out, buf = [], bytearray()
        for i in ids:
            tok = self.tokens[int(i)]
            if tok in self.special:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(tok)
            else:
                buf += bytes(self._unbytes[c] for c in tok)
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each id's text on its own (for heatmap labels)."""
        return [self.decode([i]) for i in ids]
