"""Smoke runs of the activation-maximization experiment scripts (plumbing, not results)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, section, keys", [
    ("am_cartoon.py", "am_cartoon", ["a", "b", "c", "d", "classifier_accuracy"]),
    ("am_local.py", "am_local", ["distance_to_x0", "p_target", "etas"]),
    ("am_prototypes.py", "am", ["plain", "expert", "code", "plain_mean_start_clipped", "sweeps",
                                 "references", "blind_spots", "claims", "rbm", "gan"]),
])
def test_script_smoke(tmp_path, script, section, keys):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--smoke",
                           "--out", str(tmp_path)], check=False, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    png = tmp_path / script.replace(".py", ".png")
    assert png.exists() and png.stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())[section]
    for key in keys:
        assert key in results
    if script == "am_prototypes.py":
        assert (tmp_path / "am_tradeoff.png").stat().st_size > 1000
        # one claim per naturalness score plus the expert-alone claim, each a computed boolean
        assert len(results["claims"]) == 5
        assert all(isinstance(c["holds"], bool) for c in results["claims"])
        assert [len(results["sweeps"][k]) for k in ("plain", "expert", "code")] == [
            len(results["lams"]), len(results["betas"]), len(results["lams_z"])]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "checkpoints").exists()
