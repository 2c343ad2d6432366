"""The README's example runs as written (with a one-epoch model instead of the cached one)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import lrpjax.lab.train

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_explain_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Explaining a prediction"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    real = lrpjax.lab.train.load_or_train

    def tiny(name, **kwargs):
        config = lrpjax.lab.train.TrainConfig(model=name, source="mnist5k", epochs=1, batch_size=32,
                                          n_train=128)
        return real(name, config=config, cache_dir=tmp_path, verbose=False)

    monkeypatch.setattr(lrpjax.lab.train, "load_or_train", tiny)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - runs the README example
    R, x = np.asarray(scope["R"]), np.asarray(scope["x"])
    assert R.shape == x.shape == (8, 28, 28, 1) and np.all(np.isfinite(R))
    out = capsys.readouterr().out
    assert "ZBox" in out and "Gamma" in out


def test_readme_operations_table_is_the_engines_own():
    """The README's supported-operations table is generated from lrpjax.ops (no drift)."""
    from lrpjax import ops

    text = README.read_text()
    begin, end = text.index(ops.TABLE_BEGIN), text.index(ops.TABLE_END) + len(ops.TABLE_END)
    assert text[begin:end] == ops.markdown_table()
    for prim in ("dot_general", "reduce_window_sum", "select_n", "stop_gradient"):
        assert f"`{prim}`" in text[begin:end]
