"""F-max (Montavon et al. 2018, Fig. 6): relevance vector fields of f(x) = max(x1, x2) on [0, 1]^2.

f is the paper's ReLU net f(x) = max(0, 1/2 max(0, x1 - x2) + 1/2 max(0, x2 - x1) + 1/2 max(0, x1 + x2))
(``lrpjax.lab.models.MaxNet``). Three explanations R(x) = (R1, R2), drawn as arrows over the contours of f:

* sensitivity R_i = (df/dx_i)^2            closed form (1, 0) if x1 > x2 else (0, 1);
* simple Taylor R_i = x_i df/dx_i          closed form (x1, 0) if x1 > x2 else (0, x2);
* deep Taylor = LRP-z+ on both layers      closed form ((2x1 - x2)/2, x2/2) if x1 > x2
                                                       else (x1/2, (2x2 - x1)/2).

Writes ``<out>/fig_maxnet.png`` and the "fig_maxnet" section of ``<out>/results.json``: the max
abs deviation of each field from its closed form (grid off the diagonal, float64), and each
method's jump across the diagonal, max_t ||R(t+δ, t) - R(t, t+δ)||_1, with the continuity ratio
jump / ||x - x'||_2 (Sec. 7.1): it stays bounded (sqrt 2) for deep Taylor and grows like 1/δ for
the other two.

    python experiments/fig_maxnet.py            # ~10 s
    python experiments/fig_maxnet.py --smoke    # coarser grids (tests)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import lrpjax
from lrpjax.composites import Uniform
from lrpjax.files import update_results
from lrpjax.lab.claims import claim
from lrpjax.lab.models import MaxNet
from lrpjax.lab.plot import save_figure
from lrpjax.rules import ZPlus

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="coarser grids, seconds (tests)")
parser.add_argument("--full", action="store_true", help="finer deviation grid")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--arrows", type=int, default=12, help="quiver grid size per axis")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()

Explain = Callable[[jax.Array], jax.Array]


def closed_forms(x: np.ndarray) -> dict[str, np.ndarray]:
    """The paper's closed forms of the three fields at points x (P, 2), x1 != x2."""
    x1, x2 = x[:, 0], x[:, 1]
    first = (x1 > x2)[:, None]
    zero = np.zeros_like(x1)
    return {
        "sensitivity": np.where(first, np.stack([zero + 1, zero], 1), np.stack([zero, zero + 1], 1)),
        "simple_taylor": np.where(first, np.stack([x1, zero], 1), np.stack([zero, x2], 1)),
        "deep_taylor": np.where(first, np.stack([(2 * x1 - x2) / 2, x2 / 2], 1),
                                np.stack([x1 / 2, (2 * x2 - x1) / 2], 1)),
    }


def mesh(n: int, lo: float = 0.0, hi: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An n x n grid on [lo, hi]^2: the axes and the points (n*n, 2), x1 along columns."""
    a = np.linspace(lo, hi, n)
    g1, g2 = np.meshgrid(a, a)
    return g1, g2, np.stack([g1.ravel(), g2.ravel()], 1)


TITLES = {
    "sensitivity": r"sensitivity $R_i = (\partial f/\partial x_i)^2$",
    "simple_taylor": r"simple Taylor $R_i = x_i\,\partial f/\partial x_i$",
    "deep_taylor": r"deep Taylor (LRP-$z^+$)",
}

with jax.enable_x64(True):  # float64: the closed forms are checked to ~1e-15
    model = MaxNet(dtype=jnp.float64, param_dtype=jnp.float64)
    zplus = Uniform(ZPlus(epsilon=0.0))  # z+ with no stabiliser: the exact deep Taylor field
    zplus_default = Uniform(ZPlus())  # lrpjax's default epsilon = 1e-6, for comparison
    print(lrpjax.describe(model, jnp.zeros((1, 2)), composite=zplus))
    methods: dict[str, Explain] = {
        "sensitivity": lambda x: lrpjax.sensitivity(model, x),
        "simple_taylor": lambda x: lrpjax.gradient_x_input(model, x),
        "deep_taylor": lambda x: lrpjax.relevance(model, x, composite=zplus),
    }

    def field(name: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(methods[name](jnp.asarray(x, jnp.float64)))

    def f(x: np.ndarray) -> np.ndarray:
        return np.asarray(model(jnp.asarray(x, jnp.float64)))[:, 0]

    # ---- deviation from the closed forms, off the diagonal
    n_dev = 41 if args.smoke else (401 if args.full else 201)
    _, _, pts = mesh(n_dev)
    pts = pts[np.abs(pts[:, 0] - pts[:, 1]) > 1e-3]
    ref = closed_forms(pts)
    results: dict = {"mode": "smoke" if args.smoke else ("full" if args.full else "quick"),
                     "dtype": "float64", "deviation_grid": f"{n_dev}x{n_dev} on [0,1]^2, "
                     f"|x1 - x2| > 1e-3 ({len(pts)} points)",
                     "max_abs_deviation": {}, "diagonal": {}}
    fx = f(pts)
    results["max_abs_f_minus_max"] = float(np.abs(fx - pts.max(1)).max())
    for name in methods:
        results["max_abs_deviation"][name] = float(np.abs(field(name, pts) - ref[name]).max())
    R_eps = np.asarray(lrpjax.relevance(model, jnp.asarray(pts), composite=zplus_default))
    results["max_abs_deviation"]["deep_taylor_eps1e-6"] = float(np.abs(R_eps - ref["deep_taylor"]).max())
    results["max_abs_conservation_error"] = {
        name: float(np.abs(field(name, pts).sum(1) - fx).max())
        for name in ("simple_taylor", "deep_taylor")}

    # ---- continuity across the diagonal: R(t + δ, t) vs R(t, t + δ)
    ts = np.linspace(0.05, 0.95, 19 if args.smoke else 91)
    for delta in (1e-2, 1e-3, 1e-4):
        below = np.stack([ts + delta, ts], 1)
        above = np.stack([ts, ts + delta], 1)
        dist = np.sqrt(2) * delta  # ||x - x'||_2
        entry = {}
        for name in methods:
            jump = np.abs(field(name, below) - field(name, above)).sum(1).max()
            entry[name] = {"max_jump_l1": float(jump), "continuity_ratio": float(jump / dist)}
        results["diagonal"][f"delta={delta:g}"] = entry

    # ---- the figure: contours of f with the three relevance fields
    n_c = 101
    g1, g2, gp = mesh(n_c)
    fgrid = f(gp).reshape(n_c, n_c)
    q1, q2, qp = mesh(args.arrows, 0.04, 0.96)
    spacing = (0.96 - 0.04) / (args.arrows - 1)
    fields = {name: field(name, qp) for name in methods}

fig = Figure(figsize=(12.5, 4.4), layout="constrained")
FigureCanvasAgg(fig)
axes = fig.subplots(1, 3)
for ax, (name, R) in zip(axes, fields.items()):
    cs = ax.contourf(g1, g2, fgrid, levels=np.linspace(0, 1, 11), cmap="Greys", alpha=0.45)
    ax.contour(g1, g2, fgrid, levels=np.linspace(0.1, 0.9, 9), colors="0.45", linewidths=0.6)
    ax.plot([0, 1], [0, 1], ls="--", color="tab:blue", lw=0.8)
    longest = max(float(np.linalg.norm(R, axis=1).max()), 1e-12)
    ax.quiver(qp[:, 0], qp[:, 1], R[:, 0], R[:, 1], color="tab:red", angles="xy",
              scale_units="xy", scale=longest / (0.9 * spacing), width=0.006, pivot="mid")
    jump = results["diagonal"]["delta=0.001"][name]["max_jump_l1"]
    ax.set_title(f"{TITLES[name]}\n"
                 rf"$\max_t\|R(t+\delta,t) - R(t,t+\delta)\|_1$ = {jump:.3g} ($\delta$=1e-3)",
                 fontsize=9)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
fig.colorbar(cs, ax=axes, shrink=0.8, label="f(x) = max(x1, x2)")
fig.suptitle("Fig. 6: relevance fields of f = max(x1, x2); arrow = (R1, R2) centred on its point, "
             "longest arrow per panel = one grid cell; dashed: the diagonal x1 = x2", fontsize=10)
save_figure(fig, out / "fig_maxnet.png")

jumps = {name: results["diagonal"]["delta=0.001"][name]["max_jump_l1"] for name in methods}
others = [n for n in methods if n != "deep_taylor"]
results["claims"] = [
    claim("deep Taylor's relevance field is continuous across x1 = x2, sensitivity's and "
          "simple Taylor's jump", "continuity, Fig. 6",
          jumps["deep_taylor"] < 0.01 and min(jumps[n] for n in others) > 0.5,
          "max L1 jump at δ = 1e-3: " + ", ".join(f"{n} {jumps[n]:.3g}" for n in methods)),
    claim("deep Taylor conserves relevance: Σ_i R_i = f(x)", "relevance conservation",
          results["max_abs_conservation_error"]["deep_taylor"] < 1e-9,
          f"max |Σ R - f| = {results['max_abs_conservation_error']['deep_taylor']:.1e} "
          f"(float64, {len(pts)} points)"),
]
results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_maxnet", results, path=out / "results.json")
for name in methods:
    d = results["diagonal"]["delta=0.001"][name]
    print(f"{name:>14}: max |R - closed form| = {results['max_abs_deviation'][name]:.2e}, "
          f"diagonal jump (δ=1e-3) = {d['max_jump_l1']:.4f}, ratio = {d['continuity_ratio']:.1f}")
print(f"deep Taylor with epsilon=1e-6: max |R - closed form| = "
      f"{results['max_abs_deviation']['deep_taylor_eps1e-6']:.2e}")
print(f"wrote {out / 'fig_maxnet.png'} and the 'fig_maxnet' section of {out / 'results.json'} "
      f"({results['runtime_s']} s)")
