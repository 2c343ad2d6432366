"""Text prompts built offline from the Python standard library's docstrings.

No text corpus ships with the packages lrpjax can count on, but every Python installation
carries thousands of English sentences: the docstrings of its standard library. This module
collects them deterministically (modules in a fixed order, members sorted by name), keeps the
plain sentences (prose only: no doctest or indented code blocks, no brackets, underscores or
other code characters) and samples prompts from them with a seeded generator::

    texts = sentences()                       # [Sentence(source, text), ...]
    prompts = sample(texts, 100, seed=0)      # the same 100 on every run of this Python
    pairs = sample(sentence_pairs(), 100)     # (sentence, next sentence of the same docstring)

The docstrings differ slightly between Python versions, so the selection is deterministic for a
given Python (record ``platform.python_version()`` and :func:`digest` with your results).
``python -OO`` strips docstrings: then :func:`sentences` raises.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import itertools
import re
import sys
import warnings
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import numpy as np

__all__ = ["MODULES", "Sentence", "digest", "sample", "sentence_pairs", "sentences"]

MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "colorsys", "contextlib", "copy",
    "csv", "datetime", "decimal", "difflib", "email.message", "enum", "fnmatch", "fractions",
    "functools", "gettext", "glob", "gzip", "heapq", "hmac", "html", "http.client", "inspect",
    "ipaddress", "json", "logging", "mimetypes", "operator", "optparse", "os", "pathlib",
    "pickle", "pprint", "queue", "random", "sched", "secrets", "shlex", "shutil", "smtplib",
    "socket", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "typing", "unittest", "urllib.parse", "uuid", "warnings",
    "weakref", "zipfile",
)
"""The standard-library modules read, in this order (importing them has no side effects)."""

MIN_CHARS, MAX_CHARS, MIN_WORDS = 50, 200, 8
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")  # a sentence end followed by a capital
_CODE = re.compile(r"[^A-Za-z0-9 ,.;:'\-]")  # anything else marks code, markup or a formula

T = TypeVar("T")


class Sentence(NamedTuple):
    """One docstring sentence and where it comes from (``module`` or ``module.member``)."""

    source: str
    text: str


def _documented(module_name: str) -> list[tuple[str, object]]:
    """The module, then its public functions and classes defined in it (sorted by name), each
    class followed by its public methods (sorted)."""
    module = importlib.import_module(module_name)
    out: list[tuple[str, object]] = [(module_name, module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((f"{module_name}.{name}", obj))
        if inspect.isclass(obj):
            out += [(f"{module_name}.{name}.{m}", f) for m, f in sorted(vars(obj).items())
                    if not m.startswith("_") and inspect.isfunction(f)]
    return out


def _prose(doc: str) -> list[list[str]]:
    """The plain sentences of a docstring, grouped by paragraph; paragraphs with indented
    continuation lines (code, doctests, argument tables) are dropped."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.splitlines()
        if not lines or any(line.startswith((" ", "\t", ">>>")) for line in lines[1:]):
            continue
        text = " ".join(line.strip() for line in lines)
        paragraphs.append([s.strip() for s in _SPLIT.split(text) if _plain(s.strip())])
    return paragraphs


def _plain(s: str) -> bool:
    return (MIN_CHARS <= len(s) <= MAX_CHARS and s[0].isupper() and s.endswith(".")
            and not _CODE.search(s) and len(s.split()) >= MIN_WORDS)


@functools.cache
def _paragraphs(modules: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    with warnings.catch_warnings():  # e.g. typing.io's deprecation, on reading its docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name in modules:
            for source, obj in _documented(module_name):
                doc = obj.__doc__ if inspect.ismodule(obj) else inspect.getdoc(obj)
                if isinstance(doc, str):
                    out += [(source, tuple(para)) for para in _prose(doc) if para]
    return tuple(out)


def _read(modules: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(source, sentences) of every docstring paragraph of ``modules`` (read once)."""
    if sys.flags.optimize >= 2:
        raise RuntimeError("docstrings are stripped (python -OO): no prompts can be built")
    return _paragraphs(tuple(modules))


def sentences(modules: Sequence[str] = MODULES) -> list[Sentence]:
    """Every plain docstring sentence of ``modules`` (50-200 characters, >= 8 words, starting
    with a capital and ending with a full stop; letters, digits and ``,.;:'-`` only), each text
    once (its first occurrence), in a deterministic order."""
    seen, out = set(), []
    for source, para in _read(tuple(modules)):
        for text in para:
            if text not in seen:
                seen.add(text)
                out.append(Sentence(source, text))
    if not out:
        raise RuntimeError(f"no plain docstring sentences found in {list(modules)}")
    return out


def sentence_pairs(modules: Sequence[str] = MODULES) -> list[tuple[Sentence, Sentence]]:
    """Consecutive plain sentences of one docstring paragraph, (first, second): text pairs on
    one topic (e.g. a reference and a query for a sentence-similarity score). Pairs of equal
    texts are skipped; each pair once."""
    seen, out = set(), []
    for source, para in _read(tuple(modules)):
        for a, b in itertools.pairwise(para):
            if a != b and (a, b) not in seen:
                seen.add((a, b))
                out.append((Sentence(source, a), Sentence(source, b)))
    return out


def sample(items: Sequence[T], n: int, seed: int = 0) -> list[T]:
    """``n`` distinct items drawn without replacement by a seeded generator (NumPy's PCG64),
    in the drawn order; raises if there are fewer than ``n``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if n > len(items):
        raise ValueError(f"asked for {n} prompts, only {len(items)} available")
    pick = np.random.default_rng(seed).permutation(len(items))[:n]
    return [items[int(i)] for i in pick]


def digest(texts: Sequence[str]) -> str:
    """sha256 (hex) of the texts joined by newlines: one fingerprint of a prompt set."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
