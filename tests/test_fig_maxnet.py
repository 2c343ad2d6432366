"""F-max (paper Fig. 6): the relevance fields of MaxNet, f = max(x1, x2), against closed forms."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrpjax
from lrpjax.composites import Uniform
from lrpjax.lab.models import MaxNet
from lrpjax.rules import ZPlus

ROOT = Path(__file__).resolve().parents[1]


def fields(x: np.ndarray, epsilon: float = 0.0) -> dict[str, np.ndarray]:
    """Sensitivity, simple Taylor and LRP-z+ of MaxNet at points x (P, 2), in float64."""
    with jax.enable_x64(True):
        model = MaxNet(dtype=jnp.float64, param_dtype=jnp.float64)
        xj = jnp.asarray(x, jnp.float64)
        return {
            "sensitivity": np.asarray(lrpjax.sensitivity(model, xj)),
            "simple_taylor": np.asarray(lrpjax.gradient_x_input(model, xj)),
            "deep_taylor": np.asarray(lrpjax.relevance(
                model, xj, composite=Uniform(ZPlus(epsilon=epsilon)))),
        }


def closed_form(name: str, x: np.ndarray) -> np.ndarray:
    """PAPER.md: the closed forms for x1 > x2 and x1 < x2."""
    out = np.zeros_like(x)
    for p, (x1, x2) in enumerate(x):
        if name == "sensitivity":
            out[p] = (1, 0) if x1 > x2 else (0, 1)
        elif name == "simple_taylor":
            out[p] = (x1, 0) if x1 > x2 else (0, x2)
        else:
            out[p] = ((2 * x1 - x2) / 2, x2 / 2) if x1 > x2 else (x1 / 2, (2 * x2 - x1) / 2)
    return out


def off_diagonal_grid(n: int = 31, margin: float = 0.01) -> np.ndarray:
    a = np.linspace(0.0, 1.0, n)
    pts = np.stack(np.meshgrid(a, a), -1).reshape(-1, 2)
    return pts[np.abs(pts[:, 0] - pts[:, 1]) > margin]


def test_fields_match_closed_forms() -> None:
    x = off_diagonal_grid()
    got = fields(x)
    for name, R in got.items():
        np.testing.assert_allclose(R, closed_form(name, x), rtol=0, atol=1e-6, err_msg=name)
    # conservation for simple Taylor and deep Taylor: R1 + R2 = f(x) = max(x1, x2)
    for name in ("simple_taylor", "deep_taylor"):
        np.testing.assert_allclose(got[name].sum(1), x.max(1), rtol=0, atol=1e-12)


def test_default_epsilon_changes_zplus_only_at_epsilon_scale() -> None:
    x = off_diagonal_grid(11, 0.05)
    dev = np.abs(fields(x, epsilon=1e-6)["deep_taylor"] - closed_form("deep_taylor", x)).max()
    assert 0 < dev < 1e-5


@pytest.mark.parametrize("delta", [1e-2, 1e-4])
def test_only_deep_taylor_is_continuous_across_the_diagonal(delta: float) -> None:
    t = np.linspace(0.1, 0.9, 9)
    below, above = np.stack([t + delta, t], 1), np.stack([t, t + delta], 1)
    fb, fa = fields(below), fields(above)
    jump = {name: np.abs(fb[name] - fa[name]).sum(1) for name in fb}
    np.testing.assert_allclose(jump["deep_taylor"], 2 * delta, rtol=1e-9)  # -> 0 with delta
    np.testing.assert_allclose(jump["sensitivity"], 2.0, rtol=1e-12)  # (1, 0) vs (0, 1)
    np.testing.assert_allclose(jump["simple_taylor"], 2 * (t + delta), rtol=1e-9)  # (t+δ,0) vs (0,t+δ)


def test_script_smoke(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "fig_maxnet.py"), "--smoke",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fig_maxnet.png").stat().st_size > 10_000
    res = json.loads((tmp_path / "results.json").read_text())["fig_maxnet"]
    for name in ("sensitivity", "simple_taylor", "deep_taylor"):
        assert res["max_abs_deviation"][name] < 1e-6
    jumps = res["diagonal"]["delta=0.001"]
    assert jumps["deep_taylor"]["max_jump_l1"] < 0.01
    assert jumps["sensitivity"]["max_jump_l1"] > 1 and jumps["simple_taylor"]["max_jump_l1"] > 1
    assert math.isclose(jumps["deep_taylor"]["continuity_ratio"], math.sqrt(2), rel_tol=1e-6)
