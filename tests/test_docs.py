"""The API reference builds with ``mkdocs build --strict``: a broken cross-reference, a docstring
the parser cannot read or a missing page is a warning, and every warning fails the build.
Skipped where mkdocs is not installed (``pip install -e ".[docs]"``; the dev extra has it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict_without_warnings(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
         str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not re.search(r"\bWARNING\b", log), log[-4000:]
    site = tmp_path / "site"
    # the API reference is rendered from the docstrings (Args: sections as parameter tables)
    explain = (site / "api" / "explain" / "index.html").read_text()
    assert 'id="lrpjax.explain.relevance"' in explain
    maximize = (site / "api" / "maximize" / "index.html").read_text()
    assert 'id="lrpjax.maximize.loop.activation_maximization"' in maximize
    assert "Parameters" in maximize
    # the operations page is the engine's own table
    from lrpjax import ops

    page = (site / "operations" / "index.html").read_text()
    for ops_cell, _ in ops.table_rows():
        for prim in re.findall(r"`(\w+)`", ops_cell):
            assert f"<code>{prim}</code>" in page, prim
    assert (site / "changelog" / "index.html").is_file()
