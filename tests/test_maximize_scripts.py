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
    ("am_prototypes.py", "am", ["plain", "expert", "code", "code_weak_prior", "rbm", "gan",
                                 "train_digits_max_p_target"]),
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
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "checkpoints").exists()
