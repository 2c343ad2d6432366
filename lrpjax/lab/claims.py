"""The paper's qualitative claims, each tested by a figure script against its own numbers.

Every experiment writes, in its section of ``results.json``, a list ``"claims"`` of
:func:`claim` records: the claim in words, where the paper makes it, whether it holds on the
measured numbers, and those numbers. The README's claims table is generated from them
(:func:`markdown_table`; ``python -m lrpjax.lab.claims README.md docs/figures/results.json``
rewrites it), so a claim that stops holding shows up as "no" in the README, not as prose that
was typed once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text

__all__ = ["TABLE_BEGIN", "TABLE_END", "claim", "claims_of", "markdown_table", "update_readme"]

TABLE_BEGIN = ("<!-- claims table: generated from docs/figures/results.json by "
               "`python -m lrpjax.lab.claims`; do not edit -->")
TABLE_END = "<!-- end of claims table -->"


def claim(text: str, paper: str, holds: Any, evidence: str) -> dict[str, Any]:
    """One claim record. ``holds`` must be a boolean computed from the numbers (a NumPy or JAX
    boolean scalar is accepted); anything else raises, so a claim cannot be typed as a string."""
    if isinstance(holds, np.ndarray | np.bool_) or hasattr(holds, "dtype"):
        arr = np.asarray(holds)
        if arr.shape != () or arr.dtype != np.bool_:
            raise TypeError(f"holds must be a boolean scalar, got {arr.dtype} of shape {arr.shape}")
        holds = bool(arr)
    if not isinstance(holds, bool):
        raise TypeError(f"holds must be a bool computed from the numbers, got {holds!r}")
    for name, value in (("text", text), ("paper", paper), ("evidence", evidence)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"claim {name} must be a non-empty string, got {value!r}")
        if "\n" in value:
            raise ValueError(f"claim {name} must fit one table cell (no newline): {value!r}")
    return {"claim": text, "paper": paper, "holds": holds, "evidence": evidence}


def claims_of(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(section, claim)`` pairs in section order, each record checked by :func:`claim`."""
    out = []
    for section in sorted(results):
        values = results[section]
        for c in values.get("claims", []) if isinstance(values, dict) else []:
            out.append((section, claim(c["claim"], c["paper"], c["holds"], c["evidence"])))
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The README block: one row per claim (section, claim, paper, holds, evidence)."""
    rows = [TABLE_BEGIN, "", "| figure | the paper's claim | where | holds here | measured |",
            "|---|---|---|---|---|"]
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    for section, c in claims_of(results):
        rows.append(f"| `{section}` | {cell(c['claim'])} | {cell(c['paper'])} | "
                    f"{'yes' if c['holds'] else '**no**'} | {cell(c['evidence'])} |")
    return "\n".join([*rows, "", TABLE_END])


def update_readme(readme: str | Path, results_json: str | Path) -> bool:
    """Rewrite the block between the markers in ``readme``; returns whether it changed."""
    readme = Path(readme)
    text = readme.read_text()
    begin, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    table = markdown_table(json.loads(Path(results_json).read_text()))
    if text[begin:end] == table:
        return False
    atomic_write_text(readme, text[:begin] + table + text[end:])
    return True


if __name__ == "__main__":  # python -m lrpjax.lab.claims README.md docs/figures/results.json
    if len(sys.argv) != 3:
        sys.exit("usage: python -m lrpjax.lab.claims README.md RESULTS_JSON")
    changed = update_readme(sys.argv[1], sys.argv[2])
    print(f"{sys.argv[1]}: claims table {'updated' if changed else 'already current'}")
