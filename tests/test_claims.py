"""The claims table: records computed from numbers, rendered into the README without drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lrpjax.lab import claims

ROOT = Path(__file__).resolve().parents[1]


def test_holds_must_be_a_computed_boolean():
    assert claims.claim("a", "§1", np.float64(1.0) < 2.0, "1 < 2")["holds"] is True
    assert claims.claim("a", "§1", np.array(False), "x")["holds"] is False
    for bad in ("yes", 1, None, np.array([True, False]), np.float64(1.0)):
        with pytest.raises(TypeError, match="holds must be"):
            claims.claim("a", "§1", bad, "x")
    with pytest.raises(ValueError, match="evidence must be a non-empty string"):
        claims.claim("a", "§1", True, " ")
    with pytest.raises(ValueError, match="no newline"):
        claims.claim("a\nb", "§1", True, "x")


def test_table_rows_escape_pipes_and_mark_failures(tmp_path):
    results = {"b_fig": {"claims": [claims.claim("x beats y", "§7", False, "|R| 0.3 vs 0.2")]},
               "a_fig": {"claims": [claims.claim("z", "Fig. 2", True, "1e-16")], "n": 3},
               "models": {"test_accuracy": 0.99}}
    table = claims.markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == claims.TABLE_BEGIN and lines[-1] == claims.TABLE_END
    assert lines[4] == "| `a_fig` | z | Fig. 2 | yes | 1e-16 |"
    assert lines[5] == "| `b_fig` | x beats y | §7 | **no** | \\|R\\| 0.3 vs 0.2 |"
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\n{claims.TABLE_BEGIN}\nold\n{claims.TABLE_END}\n\nafter\n")
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert claims.update_readme(readme, tmp_path / "r.json") is True
    assert readme.read_text() == f"# t\n\n{table}\n\nafter\n"
    assert claims.update_readme(readme, tmp_path / "r.json") is False


def test_a_results_file_with_a_typed_claim_is_refused():
    with pytest.raises(TypeError, match="holds must be"):
        claims.claims_of({"fig": {"claims": [{"claim": "c", "paper": "p", "holds": "true",
                                              "evidence": "e"}]}})


def test_readme_claims_table_is_generated_from_the_committed_results():
    """The README's table is the quick run's docs/figures/results.json, rendered (no drift)."""
    results = json.loads((ROOT / "docs" / "figures" / "results.json").read_text())
    assert results["reproduce"]["mode"] == "quick"
    text = (ROOT / "README.md").read_text()
    begin = text.index(claims.TABLE_BEGIN)
    end = text.index(claims.TABLE_END) + len(claims.TABLE_END)
    assert text[begin:end] == claims.markdown_table(results)
    sections = {section for section, _ in claims.claims_of(results)}
    assert {"fig_maxnet", "fig_heatmaps", "fig_flipping", "fig_translation", "fig_continuity",
            "am", "am_cartoon", "am_local", "photos", "fig_transformer"} <= sections
