"""Execute the Colab notebooks in notebooks/ in fast mode and check their key outputs.

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient) on *this* interpreter, with
``LRPJAX_NOTEBOOK_FAST=1`` in the environment: tiny smoke models (cached in a temporary folder),
few digits and few optimisation steps. Every test starts its own kernel, so the tests are
independent and pytest-xdist may run them in parallel. A last test checks that the committed
notebooks are saved without outputs and start with the Colab install cell.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_explain_a_prediction.ipynb", "02_activation_maximization.ipynb",
         "03_evaluating_explanations.ipynb")
CELL_TIMEOUT = 600  # seconds per cell: generous, for a loaded machine


def _kernelspec(root: Path) -> Path:
    """A "python3" kernelspec that launches ipykernel with this interpreter (sys.executable)."""
    spec = root / "share" / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lrpjax tests)", "language": "python",
    }))
    return root / "share" / "jupyter"


def execute(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run notebook ``name`` in fast mode; return (executed notebook, all text output)."""
    monkeypatch.setenv("LRPJAX_NOTEBOOK_FAST", "1")  # the kernel inherits the environment
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path)))  # searched first
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # First cell: stop at once unless the kernel runs this interpreter (else the install cell
    # of a foreign Python could try to pip-install lrpjax).
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            if out.get("name") == "stdout":  # stream chunks keep their own newlines
                text.append(out["text"])
            data = out.get("data", {})
            images += "image/png" in data
            if "text/plain" in data and "image/png" not in data:
                text.append(data["text/plain"] + "\n")
    return nb, "".join(text), images


def number(pattern: str, text: str) -> float:
    """The float captured by ``pattern`` in ``text`` (fails the test if absent)."""
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in the notebook's output:\n{text[-3000:]}"
    return float(match.group(1))


def test_01_explain_a_prediction(monkeypatch, tmp_path):
    _, text, images = execute(NAMES[0], monkeypatch, tmp_path)
    assert images >= 3  # methods x digits (CNN), the MLP grid, the ten class heatmaps
    assert "FAST=True" in text
    assert "ZBox(low=0.0, high=1.0" in text and "default" in text  # describe
    # conservation table: z+ redistributes f_c(x) up to what the biases absorb
    ratio = number(r"Σ R  LRP-α1β0 \(z⁺, deep Taylor\) .*?(-?\d+\.\d+)\n", text)
    assert 0.5 < ratio < 1.5
    assert number(r"max \|LRP-0 − grad × input\| on the MLP: (\S+)", text) < 1e-4
    assert number(r"max \|vmap − batched call\|: (\S+)", text) < 1e-4


def test_02_activation_maximization(monkeypatch, tmp_path):
    _, text, images = execute(NAMES[1], monkeypatch, tmp_path)
    assert images >= 4  # plain prototypes, their traces, GAN samples, all prototypes
    assert "plain AM: 10 classes" in text
    for name in ("plain AM", "AM + RBM expert", "AM in code space (GAN)"):
        p = number(re.escape(name) + r"\s+p\(target\): min (\S+),", text)
        assert 0.0 < p <= 1.0


def test_03_evaluating_explanations(monkeypatch, tmp_path):
    _, text, images = execute(NAMES[2], monkeypatch, tmp_path)
    assert images >= 5  # flipping curves, flipped digits, Fig. 6 field, shift heatmaps, quadrants
    table = text[text.index("AUC (lower = better)"):]
    auc = {m: number(r"\n" + re.escape(m) + r"\s+(-?\d+\.\d+)\s", table)
           for m in ("sensitivity", "simple Taylor", "LRP-α1β0 (z⁺)", "random")}
    assert all(abs(v) < 1e3 for v in auc.values()), auc  # finite AUCs, random baseline included
    shift = text[text.index("path continuity   relative"):]
    for m in ("sensitivity", "simple Taylor", "LRP-α1β0 (z⁺)"):
        assert number(r"\n" + re.escape(m) + r"\s+(\d+\.\d+)\s", shift) >= 0.0


@pytest.mark.parametrize("name", NAMES)
def test_notebook_saved_clean(name):
    """Committed without outputs, valid nbformat 4, Colab install cell first, FAST flag read."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "clear the outputs"
    install, setup = code[0].source, code[1].source
    assert "import lrpjax" in install and "except ImportError" in install
    assert "%pip install" in install and "LRPJAX_REPO" in install
    assert 'os.environ.get("LRPJAX_NOTEBOOK_FAST") == "1"' in setup
