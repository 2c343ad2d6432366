"""make reproduce's driver: scripts side by side, logs, the reproduce section, claims.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run_all.py"), *args],
                          cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=600, check=False)


def test_run_all_runs_scripts_and_writes_the_claims(tmp_path):
    done = _run_all("--smoke", "--out", str(tmp_path), "--only", "fig_maxnet.py", "am_cartoon.py",
                    "--jobs", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rep = results["reproduce"]
    assert set(rep["seconds"]) == {"fig_maxnet.py", "am_cartoon.py"} and rep["jobs"] == 2
    assert rep["mode"] == "smoke" and rep["total_s"] > 0
    assert (tmp_path / "logs" / "fig_maxnet.log").read_text().strip()
    claims = (tmp_path / "claims.md").read_text()
    assert "| `fig_maxnet` | deep Taylor's relevance field is continuous" in claims
    assert "| `am_cartoon` |" in claims
    assert "=== fig_maxnet.py: " in done.stdout and "=== am_cartoon.py: " in done.stdout


def test_run_all_rejects_unknown_scripts_and_jobs(tmp_path):
    done = _run_all("--smoke", "--out", str(tmp_path), "--only", "fig_nothing.py")
    assert done.returncode == 2 and "unknown scripts ['fig_nothing.py']" in done.stderr
    done = _run_all("--smoke", "--out", str(tmp_path), "--jobs", "0")
    assert done.returncode == 2 and "--jobs must be >= 1" in done.stderr
