"""Figures of ``am_prototypes.py``: the prototypes per family, and the weight sweeps' trade-off
between the class probability p(ω_c|x*) and naturalness (no classifier in the scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrpjax.lab.plot import image, save_figure
from lrpjax.maximize import SCORES

WEIGHT_LABEL = {"lam": "λ", "beta": "β", "lam_z": "λz"}
FAMILY_LABEL = {"plain": "plain AM (zero start, −λ‖x‖², no clipping)",
                "plain_mean_start_clipped": "plain AM, mean-digit start, clipped (not the paper's)",
                "expert": "AM + GB-RBM expert (−λ‖x‖² + β log p(x))",
                "code": "AM in a GAN's code space"}
ROW_LABEL = {"plain": "plain AM\nzero start, no clip", "plain_mean_start_clipped":
             "plain AM, x̄ start,\nclipped to [0, 1]\n(not the paper's)",
             "expert": "AM + GB-RBM\nexpert", "code": "AM in a GAN's\ncode space"}
COLOURS = {"plain": "tab:red", "expert": "tab:blue", "code": "tab:green"}
SHORT = {"ppca_log_density": "PPCA log p", "nn_distance": "nearest digit ℓ2",
         "nn_cosine": "nearest digit cos", "intensity_w1": "pixel-value W₁"}


def _grey_range(arrays: list[Any]) -> tuple[float, float]:
    """One grey scale for every image: [min(0, x), max(1, x)] over all of them."""
    lo = min(0.0, *(float(np.min(a)) for a in arrays))
    hi = max(1.0, *(float(np.max(a)) for a in arrays))
    return lo, hi


def plot_prototypes(path: Path, prototypes: dict[str, Any], results: dict[str, Any]) -> None:
    """One row of 10 prototypes per family, p(ω_c|x*) above each, the row's scores beside it."""
    order = [k for k in ("plain", "plain_mean_start_clipped", "expert", "code") if k in prototypes]
    lo, hi = _grey_range([prototypes[k] for k in order])
    fig = Figure(figsize=(14.5, 1.6 * len(order) + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(order), 11, gridspec_kw={"width_ratios": [1] * 10 + [2.6]})
    for r, name in enumerate(order):
        res = results[name]
        for c in range(10):
            image(axes[r, c], np.asarray(prototypes[name][c]), title=f"p={res['p_target'][c]:.3f}",
                  vmin=lo, vmax=hi)
        weight = res.get("weight_name", "lam")
        axes[r, 0].set_ylabel(f"{ROW_LABEL[name]}\n{WEIGHT_LABEL[weight]}={res[weight]:g}",
                              fontsize=7)
        axes[r, 10].set_axis_off()
        axes[r, 10].text(0.0, 0.5, f"min p(ω_c|x*) {res['p_target_min']:.3f}\n" + "\n".join(
            f"{SHORT[s]} {res[s]:.3g}" for s in SCORES)
            + f"\npixels in [{res['pixel_range'][0]:.2f}, {res['pixel_range'][1]:.2f}]",
            fontsize=7, va="center")
    real = results["references"]["real_digits"]
    fig.suptitle(
        f"Class prototypes of the CNN, each family at its largest weight with min p(ω_c|x*) >= "
        f"{results['p_floor']:g}; grey scale [{lo:.2f}, {hi:.2f}], 0 = background.\nNaturalness "
        f"against held-out test digits, no classifier; real train digits: "
        + ", ".join(f"{SHORT[s]} {real[s]:.3g}" for s in SCORES), fontsize=8)
    save_figure(fig, path)


def _curve(ax: Any, name: str, sweep: list[dict], weight: str, score: str,
           picked: float, start: dict | None = None) -> None:
    pts = ([start] if start else []) + sweep
    xs, ys = [p[score] for p in pts], [p["p_target_min"] for p in pts]
    ax.plot(xs, ys, "o-", color=COLOURS[name], ms=3, lw=1, label=FAMILY_LABEL[name])
    for p in sweep:
        ax.annotate(f"{p[weight]:g}", (p[score], p["p_target_min"]), fontsize=5,
                    xytext=(2, 2), textcoords="offset points", color=COLOURS[name])
        if p[weight] == picked:
            ax.plot(p[score], p["p_target_min"], "o", ms=8, mfc="none", mec=COLOURS[name])


def _montage(ax: Any, x: np.ndarray, p: list[list[float]], lo: float, hi: float) -> list[float]:
    """Settings × classes images (S, 10, H, W, 1) as one picture (fast to draw), p above each;
    returns the rows' centres (y)."""
    s, c, h, w = x.shape[:4]
    gap_h, gap_w = h // 4, w // 8
    canvas = np.full((s * (h + gap_h), c * (w + gap_w)), np.nan)
    for i in range(s):
        for j in range(c):
            y0, x0 = i * (h + gap_h) + gap_h, j * (w + gap_w)
            canvas[y0:y0 + h, x0:x0 + w] = x[i, j, ..., 0]
            ax.text(x0 + w / 2, y0 - 0.5, f"{p[i][j]:.2f}", fontsize=5, ha="center", va="bottom")
    ax.imshow(canvas, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    return [i * (h + gap_h) + gap_h + h / 2 for i in range(s)]


def plot_tradeoff(path: Path, families: dict[str, dict], results: dict[str, Any]) -> None:
    """Top: min_c p(ω_c|x*) against each naturalness score along every family's weight sweep
    (the expert's curve starts at plain AM, β = 0); bottom: the swept prototypes."""
    fig = Figure(figsize=(16, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 0.8])
    axes = top.subplots(1, len(SCORES))
    sweeps = results["sweeps"]
    plain_start = next(p for p in sweeps["plain"] if p["lam"] == results["lam"])
    for ax, (score, (higher, desc)) in zip(axes, SCORES.items(), strict=True):
        for name, fam in families.items():
            _curve(ax, name, sweeps[name], fam["weight"], score, results[name][fam["weight"]],
                   plain_start if name == "expert" else None)
        legacy = results["plain_mean_start_clipped"]
        ax.plot(legacy[score], legacy["p_target_min"], "kx", ms=6,
                label="plain AM, mean start, clipped")
        ax.axvline(results["references"]["real_digits"][score], color="0.4", ls="--", lw=0.8,
                   label="real (held-out) digits")
        ax.axhline(results["p_floor"], color="0.6", ls=":", lw=0.8)
        ax.set_xlabel(f"{desc}\n({'→ more natural' if higher else '← more natural'}; blind "
                      f"to: {', '.join(results['blind_spots'][score]) or 'none'})", fontsize=7)
        ax.set_ylabel("min over classes of p(ω_c|x*)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6, loc="lower left")
    top.suptitle("Trade-off along each weight sweep (numbers: the weight; ring: the figure's row)",
                 fontsize=9)
    lo, hi = _grey_range([fam["x"] for fam in families.values()])
    for ax, (name, fam) in zip(bottom.subplots(1, len(families)), families.items(), strict=True):
        rows = _montage(ax, np.asarray(fam["x"]), [p["p_target"] for p in sweeps[name]], lo, hi)
        ax.set_yticks(rows,
                      [f"{WEIGHT_LABEL[fam['weight']]}={w:g}" for w in fam["values"]],
                      fontsize=7)
        ax.set_title(FAMILY_LABEL[name] + f"\np(ω_c|x*) above each; grey [{lo:.2f}, {hi:.2f}]",
                     fontsize=8)
    save_figure(fig, path, dpi=90)
