"""Smoke runs of experiments/fig_heatmaps.py and experiments/fig_translation.py (tiny models)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One checkpoint folder for both scripts: the tiny CNN is trained once."""
    return tmp_path_factory.mktemp("smoke-cache")


def run_smoke(script: str, out: Path, cache: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--smoke",
                           "--out", str(out), "--cache-dir", str(cache)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def numbers(tree: Any) -> list[float]:
    """All int/float leaves of a JSON tree (bools excluded)."""
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in numbers(value)]
    if isinstance(tree, list):
        return [v for value in tree for v in numbers(value)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [float(tree)]
    return []


def test_fig_heatmaps_smoke(tmp_path: Path, smoke_cache: Path) -> None:
    res = run_smoke("fig_heatmaps.py", tmp_path, smoke_cache)["fig_heatmaps"]
    for name in ("methods", "alphabeta", "pooling"):
        assert (tmp_path / f"fig_heatmaps_{name}.png").stat().st_size > 5_000
    assert res["mode"] == "smoke" and len(res["shown_indices"]) == 2
    assert set(res["models"]) == {"cnn", "mlp", "cnn_max"}
    values = numbers(res)
    assert len(values) > 20 and all(math.isfinite(v) for v in values)
    for entry in res["models"].values():
        assert 0 <= entry["random_auc"] and entry["methods"]
        for method in entry["methods"].values():
            assert {"conservation_mean", "negative_share", "auc", "aopc"} <= set(method)
            assert 0 <= method["negative_share"] <= 1


def test_fig_translation_smoke(tmp_path: Path, smoke_cache: Path) -> None:
    res = run_smoke("fig_translation.py", tmp_path, smoke_cache)["fig_translation"]
    assert (tmp_path / "fig_translation.png").stat().st_size > 5_000
    assert res["mode"] == "smoke" and res["n_eval"] == 8
    values = numbers(res)
    assert len(values) > 10 and all(math.isfinite(v) for v in values)
    for composite in res["composites"].values():
        assert {"none", "pm1"} <= set(composite)
        assert "auc_minus_none" in composite["pm1"] and "auc" in composite["none"]
