"""F-cont: continuity of explanations (Montavon et al. 2018, Sec. 7.1) on a horizontally shifted digit.

A test digit the CNN (average pooling) classifies confidently is moved across the field with a
bilinear sub-pixel shift (quick: -6..+6 px in 0.5 px steps). For each method the figure plots the
score f(x) of the digit's class and the relevance summed per image quadrant against the shift, and
shows heatmaps at a few shifts. Continuity scores per method (lower = more continuous):

* path score   max_s ||R(x_{s+1}) - R(x_s)||_1 / ||x_{s+1} - x_s||_2 along the path (shift_protocol);
* continuity   max over ALL pairs of the shifted copies of the same ratio (evaluate.continuity);
* step check   the path score as the step shrinks (0.5 -> 0.0625 px): bounded for a continuous
               explanation, growing like 1/step where the explanation jumps. The definition's
               max over x != x' is a supremum, so the finest step estimates it best: the
               "ordering" in results.json uses it (mean over the digits).

Normalisation (so that scores are comparable across methods): each method's relevance is divided
by ||R(x_0)||_1, its L1 mass on the unshifted digit; f is shown as f(x)/f(x_0). The explained class
is the digit's true label at every shift. Digit choice: for each class in CLASSES, the test digit
whose true-class logit margin (over the best other class) is largest in its worst shift; the
first (a '7') is plotted, all enter the score table.

    python experiments/fig_continuity.py            # quick (~1-2 min)
    python experiments/fig_continuity.py --full     # finer steps, more digits, longer-trained CNN
    python experiments/fig_continuity.py --smoke    # seconds: a tiny CNN, 2 digits (tests)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

import lrpjax
from lrpjax.composites import Alpha1Beta0, AlphaBetaAll, EpsilonGammaBox
from lrpjax.evaluate import continuity, shift_protocol, translations
from lrpjax.files import update_results
from lrpjax.lab.data import data_range, load_mnist
from lrpjax.lab.plot import heatmap, image, save_figure
from lrpjax.lab.train import TrainConfig, load_or_train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="finer steps, more digits, longer training")
parser.add_argument("--smoke", action="store_true", help="tiny CNN, 2 digits (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--source", default="auto", choices=["auto", "full", "mnist5k"])
parser.add_argument("--cache-dir", default="checkpoints")
args = parser.parse_args()
out = Path(args.out)
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
start = time.perf_counter()

LOW, HIGH = data_range()  # pixel box [0, 1] for z^B
if args.smoke:
    SHIFTS = np.arange(-1.0, 1.0 + 1e-9, 1.0)
    STEPS = [1.0, 0.5]  # step check: path score at these step sizes
    CLASSES = [7, 1]
    SHOWN = [-1.0, 0.0, 1.0]  # heatmap columns
else:
    SHIFTS = np.arange(-6.0, 6.0 + 1e-9, 0.5)
    STEPS = [0.5, 0.25, 0.125, 0.0625] + ([0.03125] if args.full else [])
    CLASSES = [7, 1, 0, 4] + ([2, 3, 5, 6, 8, 9] if args.full else [])
    SHOWN = [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
CHUNK = 4 if args.smoke else 32  # relevance is computed CHUNK shifted images at a time: one compilation per method

# ---- the CNN (smoke: one epoch on 128 digits in a throw-away cache) and the test digits
test = load_mnist("test", source=args.source)
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-smoke-") if args.smoke else None
config = (TrainConfig(model="cnn", source=test.source, epochs=1, batch_size=32, n_train=128)
          if args.smoke else None)
model, card = load_or_train("cnn", source=test.source, quick=not args.full,
                            cache_dir=smoke_cache.name if smoke_cache else args.cache_dir,
                            config=config, verbose=not args.smoke)
forward = jax.jit(lambda xb: model(xb))

# ---- pick the digits: per class, the largest worst-case margin over all shifts
digits = []
for c in CLASSES:
    idx = np.flatnonzero(test.labels == c)[: 8 if args.smoke else 100]
    xs = np.asarray(translations(test.images[idx], SHIFTS))  # (n, S, 28, 28, 1)
    logits = np.asarray(forward(xs.reshape(-1, 28, 28, 1))).reshape(len(idx), len(SHIFTS), 10)
    others = np.where(np.arange(10) == c, -np.inf, logits).max(-1)
    worst_margin = (logits[..., c] - others).min(1)
    best = int(np.argmax(worst_margin))
    digits.append({"index": int(idx[best]), "label": c,
                   "worst_margin": float(worst_margin[best]),
                   "correct_at_every_shift": bool(worst_margin[best] > 0)})
print("digits:", ", ".join(f"#{d['index']} ('{d['label']}', worst margin "
                           f"{d['worst_margin']:.2f})" for d in digits))

# ---- methods: key -> (label, relevance of (model, x, targets))
def lrp(composite):
    return lambda m, xb, t: lrpjax.relevance(m, xb, composite=composite, target=t)


METHODS = {
    "sensitivity": ("sensitivity (∂f/∂x)²", lambda m, xb, t: lrpjax.sensitivity(m, xb, target=t)),
    "simple_taylor": ("simple Taylor (x·∂f/∂x)",
                      lambda m, xb, t: lrpjax.gradient_x_input(m, xb, target=t)),
    "lrp_a1b0": ("LRP-α1β0 (z⁺, deep Taylor)", lrp(Alpha1Beta0())),
    "lrp_epsgammabox": ("LRP ε/γ/z^B (EpsilonGammaBox)", lrp(EpsilonGammaBox(LOW, HIGH))),
    "lrp_a2b1": ("LRP-α2β1", lrp(AlphaBetaAll(2.0, 1.0))),
}


GRAPHDEF, STATE = nnx.split(model)
JITTED = {key: jax.jit(lambda st, xb, tb, fn=fn: fn(nnx.merge(GRAPHDEF, st), xb, tb))
          for key, (_, fn) in METHODS.items()}  # parameters as an argument: closed over, they
# would be constants and XLA would spend minutes constant-folding the rules' convolutions


def chunked(key, target, scale=1.0):
    """explain(xs) = R_key(xs, target) / scale, CHUNK images at a time (last chunk padded)."""
    targets = jnp.full((CHUNK,), target, jnp.int32)

    def explain(xs):
        xs = np.asarray(xs)
        parts = []
        for s in range(0, len(xs), CHUNK):
            idx = np.minimum(np.arange(s, s + CHUNK), len(xs) - 1)
            parts.append(np.asarray(JITTED[key](STATE, xs[idx], targets))[: min(CHUNK, len(xs) - s)])
        return jnp.asarray(np.concatenate(parts) / scale)

    return explain


def path_ratios(res, scale):
    """ShiftResult of the raw relevance -> its (quadrants, ratios, path score) divided by scale."""
    return np.asarray(res.quadrants) / scale, np.asarray(res.ratios) / scale, res.continuity / scale


def subsampled_path_score(res, every, scale):
    """Path score of every ``every``-th shift of a fine ShiftResult (a coarser step), / scale."""
    xs = np.asarray(res.inputs, np.float64)[::every].reshape(-1, 28 * 28)
    rs = np.asarray(res.relevance, np.float64)[::every].reshape(-1, 28 * 28)
    num = np.abs(np.diff(rs, axis=0)).sum(1)
    den = np.linalg.norm(np.diff(xs, axis=0), axis=1)
    return float(np.max(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)) / scale)


zero = int(np.argmin(np.abs(SHIFTS)))
FINE = np.arange(SHIFTS[0], SHIFTS[-1] + 1e-9, STEPS[-1])  # the finest path; coarser = subsets
EVERY = {s: round(s / STEPS[-1]) for s in STEPS}
results: dict = {
    "mode": mode, "data_source": test.source, "model": "cnn (average pooling)",
    "shifts_px": SHIFTS, "shift": "horizontal, bilinear (evaluate.shift_image), zero fill",
    "target": "true label at every shift",
    "normalisation": "R / ||R(x_0)||_1 per method and digit (x_0 = unshifted digit); "
                     "f shown as f(x)/f(x_0)",
    "path_score": "max over consecutive shifts of ||dR||_1/||dx||_2 (shift_protocol)",
    "continuity": "max over all pairs of shifted copies of ||dR||_1/||dx||_2 (evaluate.continuity)",
    "step_check": f"path score over {SHIFTS[0]:g}..{SHIFTS[-1]:g} px with steps {STEPS} px "
                  "(shift_protocol on the finest grid, coarser steps subsampled from it)",
    "labels": {k: v[0] for k, v in METHODS.items()}, "digits": digits, "methods": {},
}
plot_data: dict = {}
for key in METHODS:
    t0 = time.perf_counter()
    per_digit = []
    for d_i, d in enumerate(digits):
        x0 = test.images[d["index"]]
        c = d["label"]
        f = (lambda xb, c=c: forward(xb)[:, c])
        raw = chunked(key, c)
        res = shift_protocol(f, raw, x0, SHIFTS)
        scale = float(np.abs(np.asarray(res.relevance[zero])).sum())
        scale = scale if scale > 0 else 1.0
        quads, ratios, path = path_ratios(res, scale)
        others = translations(x0, SHIFTS[SHIFTS != 0])  # (1, S-1, 28, 28, 1)
        cont = continuity(chunked(key, c, scale), x0[None], others, pairs="all").max
        fine = shift_protocol(f, raw, x0, FINE)
        steps = {str(s): subsampled_path_score(fine, EVERY[s], scale) for s in STEPS}
        per_digit.append({"index": d["index"], "label": c, "path_score": path, "continuity": cont,
                          "step_check": steps, "l1_at_shift0": scale,
                          "f_at_shift0": float(res.scores[zero]),
                          "quadrants": np.round(quads, 5), "ratios": np.round(ratios, 5)})
        if d_i == 0:  # the plotted digit: curves and heatmaps
            plot_data[key] = (np.asarray(res.scores), quads, np.asarray(res.relevance) / scale,
                              np.asarray(res.inputs))
    mean_steps = {str(s): float(np.mean([e["step_check"][str(s)] for e in per_digit]))
                  for s in STEPS}
    results["methods"][key] = {
        "path_score": per_digit[0]["path_score"], "continuity": per_digit[0]["continuity"],
        "path_score_mean": float(np.mean([e["path_score"] for e in per_digit])),
        "continuity_mean": float(np.mean([e["continuity"] for e in per_digit])),
        "step_check_mean": mean_steps,
        "step_growth_mean": mean_steps[str(STEPS[-1])] / mean_steps[str(STEPS[0])],
        "per_digit": per_digit}
    print(f"  {key}: {time.perf_counter() - t0:.1f} s", flush=True)

# ---- table and a one-line reading. The definition's max over x != x' is a supremum, so the
#      finest path (smallest |x - x'|) estimates it best; the 0.5 px scores are also reported.
table = results["methods"]
finest = str(STEPS[-1])
ordering = sorted(table, key=lambda k: table[k]["step_check_mean"][finest])
results["ordering"] = ordering
results["ordering_by"] = f"mean path score at the finest step ({STEPS[-1]:g} px)"
results["ordering_coarse"] = sorted(table, key=lambda k: table[k]["continuity_mean"])
print(f"\ncontinuity scores (lower = more continuous) of R / ||R(x_0)||_1: digit "
      f"#{digits[0]['index']} and mean over {len(digits)} digits at {SHIFTS[1] - SHIFTS[0]:g} px "
      f"steps; mean path score vs step size")
print(f"  {'method':<32}{'path':>8}{'all pairs':>11}{'path mean':>11}{'pairs mean':>12}  "
      + "".join(f"{s:>8g}px" for s in STEPS) + "  growth")
for key in ordering:
    row = table[key]
    print(f"  {results['labels'][key]:<32}{row['path_score']:>8.3f}{row['continuity']:>11.3f}"
          f"{row['path_score_mean']:>11.3f}{row['continuity_mean']:>12.3f}  "
          + "".join(f"{row['step_check_mean'][str(s)]:>10.3f}" for s in STEPS)
          + f"  x{row['step_growth_mean']:.2f}")
lrp_keys = [k for k in table if k.startswith("lrp")]
grad_keys = ["sensitivity", "simple_taylor"]
ratio = STEPS[0] / STEPS[-1]
results["interpretation"] = (
    f"Path score at the finest step ({STEPS[-1]:g} px, mean over {len(digits)} digits; lower = "
    f"more continuous): {' < '.join(ordering)}; refining the step x{ratio:g} multiplies it by "
    + ", ".join(f"{k} x{table[k]['step_growth_mean']:.2f}" for k in ordering)
    + f" (~1: continuous; growing towards x{ratio:g}: jumps). At {STEPS[0]:g} px, all pairs: "
    f"{' < '.join(results['ordering_coarse'])}. Paper's expectation (LRP/deep Taylor more "
    f"continuous than sensitivity/gradient) at the finest step: every LRP variant below both "
    f"gradient methods = "
    f"{max(table[k]['step_check_mean'][finest] for k in lrp_keys) < min(table[k]['step_check_mean'][finest] for k in grad_keys)}"
    f"; LRP-a1b0 below both = "
    f"{table['lrp_a1b0']['step_check_mean'][finest] < min(table[k]['step_check_mean'][finest] for k in grad_keys)}.")
print("\n" + results["interpretation"])

# ---- figure: left, f and quadrant relevance vs shift per method (+ step check);
#      right, the shifted digit and its heatmaps at a few shifts
fig = Figure(figsize=(17, 9.2), layout="constrained")
FigureCanvasAgg(fig)
left, right = fig.subfigures(1, 2, width_ratios=[1.15, 1])
axes = left.subplots(3, 2).ravel()
QUAD_STYLE = [("top-left", "tab:blue", "-"), ("top-right", "tab:red", "-"),
              ("bottom-left", "tab:blue", "--"), ("bottom-right", "tab:red", "--")]
for ax, key in zip(axes, METHODS):
    scores, quads, _, _ = plot_data[key]
    f0 = scores[zero] if abs(scores[zero]) > 1e-6 else 1.0
    ax.plot(SHIFTS, scores / f0, color="k", lw=2.2, label="f(x)/f(x₀)")
    for q, (name, color, ls) in enumerate(QUAD_STYLE):
        ax.plot(SHIFTS, quads[:, q], color=color, ls=ls, lw=1.5, marker=".", ms=4,
                label=f"R {name}")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(0, color="0.6", lw=0.6)
    row = table[key]
    ax.set_title(f"{results['labels'][key]}\npath {row['path_score']:.3f}, all pairs "
                 f"{row['continuity']:.3f} ({STEPS[0]:g} px); path at {STEPS[-1]:g} px (mean): "
                 f"{row['step_check_mean'][finest]:.3f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
axes[0].legend(fontsize=7, ncol=2, loc="best")
for ax in axes[-3:-1]:
    ax.set_xlabel("horizontal shift (px)", fontsize=9)
for ax in axes[::2]:
    ax.set_ylabel("relevance / ‖R(x₀)‖₁", fontsize=9)
ax = axes[-1]
colors = ["tab:blue", "tab:orange", "tab:red", "tab:brown", "tab:purple"]
for key, color in zip(METHODS, colors):
    ax.loglog(STEPS, [table[key]["step_check_mean"][str(s)] for s in STEPS], marker="o", color=color,
              label=results["labels"][key].split(" (")[0])
ref = table["sensitivity"]["step_check_mean"][str(STEPS[0])]
ax.loglog(STEPS, [ref * STEPS[0] / s for s in STEPS], color="0.6", ls=":", label="∝ 1/step (jumps)")
ax.set_xticks(STEPS, [f"{s:g}" for s in STEPS])
ax.xaxis.set_minor_locator(NullLocator())
values = [v for k in METHODS for v in table[k]["step_check_mean"].values()] + [ref * ratio]
ticks = [t for t in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20)
         if min(values) / 1.2 <= t <= max(values) * 1.2]
ax.yaxis.set_minor_locator(NullLocator())
ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
ax.set_xlabel("shift step (px)", fontsize=9)
ax.set_ylabel("path score", fontsize=9)
ax.set_title(f"step check: path score vs step (mean of {len(digits)} digits)", fontsize=9)
ax.legend(fontsize=7)
ax.grid(alpha=0.3, which="both")
ax.tick_params(labelsize=8)
left.suptitle(f"CNN (avg pool), test digit #{digits[0]['index']} (label {digits[0]['label']}) "
              "shifted horizontally: class score and relevance per quadrant", fontsize=10)

cols = [int(np.argmin(np.abs(SHIFTS - s))) for s in SHOWN]
grid_axes = right.subplots(1 + len(METHODS), len(cols), squeeze=False)
inputs = plot_data["sensitivity"][3]
for j, col in enumerate(cols):
    image(grid_axes[0, j], inputs[col], title=f"shift {SHIFTS[col]:+g} px")
    for i, key in enumerate(METHODS, start=1):
        heatmap(grid_axes[i, j], plot_data[key][2][col])
    for i in range(1 + len(METHODS)):
        grid_axes[i, j].axvline(13.5, color="0.5", lw=0.5, ls=":")
        grid_axes[i, j].axhline(13.5, color="0.5", lw=0.5, ls=":")
grid_axes[0, 0].set_ylabel("input", fontsize=8)
for i, key in enumerate(METHODS, start=1):
    grid_axes[i, 0].set_ylabel(results["labels"][key].split(" (")[0], fontsize=8)
right.suptitle("heatmaps (red > 0, blue < 0, each scaled by its own max|R|; dotted: quadrants)",
               fontsize=10)
save_figure(fig, out / "fig_continuity.png")

results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_continuity", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote {out / 'fig_continuity.png'} and the 'fig_continuity' section of "
      f"{out / 'results.json'} in {results['runtime_s']:.1f} s")
