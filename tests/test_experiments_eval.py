"""Smoke runs of the evaluation experiments (F-cont, F-flip): each script runs end to end in a
subprocess with tiny models and a handful of digits, writes its PNG and a results section with
finite numbers under the expected keys, and leaves the real checkpoint cache untouched."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONT_METHODS = {"sensitivity", "simple_taylor", "lrp_a1b0", "lrp_epsgammabox", "lrp_a2b1"}
FLIP_METHODS = {"deep_taylor", "simple_taylor", "sensitivity", "random"}  # smoke: these only


def _run_smoke(script: str, out: Path) -> dict:
    cache = ROOT / "checkpoints"
    before = sorted(cache.iterdir()) if cache.exists() else []
    # the environment (XLA_FLAGS from conftest.py included) is inherited
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--smoke",
                           "--out", str(out), "--source", "mnist5k"],
                          cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (sorted(cache.iterdir()) if cache.exists() else []) == before
    return json.loads((out / "results.json").read_text())


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_fig_continuity_smoke(tmp_path):
    results = _run_smoke("fig_continuity.py", tmp_path)["fig_continuity"]
    assert (tmp_path / "fig_continuity.png").read_bytes()[:4] == b"\x89PNG"
    assert results["mode"] == "smoke" and results["data_source"] == "mnist5k"
    assert set(results["methods"]) == CONT_METHODS
    assert sorted(results["ordering"]) == sorted(CONT_METHODS)
    n_shifts = len(results["shifts_px"])
    assert n_shifts >= 3 and 0.0 in results["shifts_px"]
    assert len(results["digits"]) >= 1
    for key, row in results["methods"].items():
        scores = [row["path_score"], row["continuity"], row["path_score_mean"],
                  row["continuity_mean"], row["step_growth_mean"], *row["step_check_mean"].values()]
        assert _finite(*scores) and min(scores) >= 0, key
        # all pairs include the consecutive ones: never below the path score
        assert row["continuity"] >= row["path_score"] * (1 - 1e-5), key
        first = row["per_digit"][0]
        assert len(first["quadrants"]) == n_shifts and len(first["ratios"]) == n_shifts - 1
        assert _finite(*(q for quad in first["quadrants"] for q in quad))
        assert len(row["per_digit"]) == len(results["digits"])
        # the coarsest step of the step check is the main path: same path score
        coarsest = max(first["step_check"], key=float)
        assert math.isclose(first["step_check"][coarsest], first["path_score"], rel_tol=1e-4)
    assert isinstance(results["interpretation"], str) and results["interpretation"]


def test_fig_flipping_smoke(tmp_path):
    results = _run_smoke("fig_flipping.py", tmp_path)["fig_flipping"]
    assert (tmp_path / "fig_flipping.png").read_bytes()[:4] == b"\x89PNG"
    assert results["mode"] == "smoke" and results["target"] == "true label"
    proto = results["protocols"]
    a, b, c = proto["a_paper"], proto["b_samek"], proto["c_previous"]
    assert a["patch"] == 4 and a["n_steps"] == 49 and b["window"] == 9 and b["n_seeds"] >= 5
    assert set(results["labels"]) == FLIP_METHODS
    n = results["n_digits"]
    tables = [(a["once"][s], n["once"]) for s in ("relu_logit", "probability")]
    tables += [(a["recomputed"][s], n["recomputed"]) for s in ("relu_logit", "probability")]
    tables += [(b[s], n["noise"]) for s in ("logit", "probability")]
    tables += [(c[m], n["once"]) for m in c if isinstance(c[m], dict)]
    for table, n_digits in tables:
        assert table["n"] == n_digits >= 1
        means = [table["methods"][k]["mean"] for k in table["ranking"]]
        assert _finite(*means)
        for k, row in table["methods"].items():  # the mean lies in its bootstrap interval
            assert row["low"] - 1e-9 <= row["mean"] <= row["high"] + 1e-9, k
        for pair in table["pairs"]:
            assert pair["differs"] == (pair["low"] > 0 or pair["high"] < 0)
    # bounded scores: AUC of p in [0, 1]; AUCs ranked lowest first, AOPC-random highest first
    for table, _ in tables[:4]:
        aucs = [table["methods"][k]["mean"] for k in table["ranking"]]
        assert aucs == sorted(aucs) and all(0.0 <= v for v in aucs)
    assert max(a["once"]["probability"]["methods"][k]["mean"] for k in FLIP_METHODS) <= 1.0
    gains = [b["logit"]["methods"][k]["mean"] for k in b["logit"]["ranking"]]
    assert gains == sorted(gains, reverse=True) and "random" not in b["logit"]["ranking"]
    # every curve starts at the same f(x) (nothing removed yet)
    starts = [row["mean_curve"][0] for row in a["once"]["logit"]["methods"].values()]
    assert max(starts) - min(starts) < 1e-4 and len(a["once"]["logit"]["methods"]["random"]
                                                   ["mean_curve"]) == 50
    assert results["claims"] and all(set(cl) == {"claim", "paper", "holds", "evidence"}
                                     and isinstance(cl["holds"], bool) for cl in results["claims"])
    assert isinstance(results["interpretation"], str) and results["interpretation"]
