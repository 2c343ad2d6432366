"""Smoke run of experiments/fig_transformer.py (AttnLRP's faithfulness protocol): tiny random
SmolLM2- and MiniLM-shaped models, 4 docstring prompts; the PNG, the results section and its
claims (computed from the bootstrap intervals, never typed) are checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"attnlrp", "cplrp", "gxi", "ig", "random"}


def test_fig_transformer_smoke(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "fig_transformer.py"),
                           "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "fig_transformer.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((tmp_path / "results.json").read_text())["fig_transformer"]
    assert res["mode"] == "smoke" and set(res["models"]) == {"smollm2", "minilm"}
    for name, model in res["models"].items():
        assert model["n_prompts"] == 4 and set(model["methods"]) == METHODS, name
        starts, ends = set(), set()
        for key, row in model["methods"].items():
            low, high = row["abc_ci95"]
            assert all(math.isfinite(v) for v in (row["abc"], low, high)), (name, key)
            assert low <= row["abc"] <= high
            # ABC = AUC(LeRF) - AUC(MoRF), averaged over prompts
            assert math.isclose(row["abc"], row["auc_lerf"] - row["auc_morf"], abs_tol=1e-9)
            assert len(row["mean_morf"]) == len(row["mean_lerf"]) == 4  # steps 0..3
            starts |= {row["mean_morf"][0], row["mean_lerf"][0]}
            ends |= {row["mean_morf"][-1], row["mean_lerf"][-1]}
        assert len(starts) == 1 and len(ends) == 1  # shared: nothing / everything removed
        assert model["ig_completeness_error_median"] >= 0
    # CP-LRP on the tiny SmolLM2 is conservative: relevance sums to the logit
    assert math.isclose(res["models"]["smollm2"]["cplrp_sum_over_f_median"], 1.0, rel_tol=1e-3)
    # MiniLM's first LayerNorm is scale-invariant: (x + position + type) . grad = 0
    assert res["models"]["minilm"]["gxi_layernorm_input_dot_grad_rel"] < 1e-4
    claims = res["claims"]
    assert len(claims) == 8
    for c in claims:
        assert set(c) == {"claim", "paper", "holds", "evidence"} and isinstance(c["holds"], bool)
        model = "smollm2" if "(smollm2:" in c["claim"] else "minilm"
        other = next(k for k, v in res["labels"].items() if v.split(" (")[0] in c["claim"]
                     and k != "attnlrp")
        low = res["models"][model]["attnlrp_minus"][other]["ci95"][0]
        assert c["holds"] == (low > 0), c
