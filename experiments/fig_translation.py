"""The translation trick (Montavon et al. 2018, Sec. 6): LRP heatmaps averaged over small shifts.

Explains f̄(x) = 1/|T| sum_τ f(τx) instead of f by R̄(x) = 1/|T| sum_τ τ^{-1} R(τx)
(``lrpjax.translation.translation_trick``, integer shifts with zero fill) for the avg-pool CNN, with
two LRP composites: EpsilonGammaBox(0, 1) (z^B with the pixel box [0, 1], gamma, epsilon) and
LRP-alpha2beta1 on every layer. Shift sets T: none (R itself), ±1 px (the 3 x 3 square of shifts,
9 copies) and ±2 px (5 x 5, 25 copies). The explained class is the true label, fixed per image (the
shifted copies are not re-predicted).

Writes ``<out>/fig_translation.png`` (8 digits x the six heatmaps, each scaled by its own max|R|)
and the "fig_translation" section of ``<out>/results.json``: per composite and shift set, pixel
flipping (4 x 4 patches set to black = 0, most relevant first, relevance computed once) of f on
``n_eval`` test digits - mean AUC (lower = more selective), AOPC, the paired AUC difference to
no trick and the share of digits where the trick wins - the conservation sum R̄ / f̄_T(x) against
the averaged model that the trick explains (and sum R̄ / f(x)), and a roughness score
TV(R) / sum|R| (total variation over neighbouring pixels; lower = smoother). Pixel flipping
scores f, the deployed model, not f̄ (scoring f̄ costs |T| forward passes per step).

    python experiments/fig_translation.py           # quick: 300 digits
    python experiments/fig_translation.py --full    # full-training CNN, 1,000 digits
    python experiments/fig_translation.py --smoke   # seconds: a tiny model, 8 digits
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lrpjax
from lrpjax.composites import AlphaBetaAll, Composite, EpsilonGammaBox
from lrpjax.evaluate import pixel_flipping
from lrpjax.files import update_results
from lrpjax.lab.data import load_mnist
from lrpjax.lab.plot import grid, save_figure
from lrpjax.lab.train import TrainConfig, load_or_train
from lrpjax.translation import shift_set, translate, translation_trick

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="full-training CNN, 1,000 digits")
parser.add_argument("--smoke", action="store_true", help="a tiny model in a temporary cache (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--source", default="auto", choices=["auto", "full", "mnist5k"])
parser.add_argument("--cache-dir", default=None,
                    help="checkpoint folder (default checkpoints/; --smoke: a temporary folder)")
parser.add_argument("--n-eval", type=int, default=None,
                    help="digits for pixel flipping (default 300 quick, 1000 full, 8 smoke)")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")

test = load_mnist("test", source=args.source)
smoke_cache = (tempfile.TemporaryDirectory(prefix="lrpjax-smoke-")
               if args.smoke and args.cache_dir is None else None)
cache_dir = smoke_cache.name if smoke_cache else (args.cache_dir or "checkpoints")
n_eval = min(args.n_eval or {"smoke": 8, "quick": 300, "full": 1000}[mode], len(test.labels))
x = test.images[:n_eval]
labels = test.labels[:n_eval].astype(np.int32)
shown = [int(np.flatnonzero(labels == c)[0]) for c in range(10) if (labels == c).any()]
shown = shown[:2] if args.smoke else shown[:8]
chunk = min(40, n_eval)  # images per translation_trick call: 25 x 40 = 1,000 LRP passes at once

config = None
if args.smoke:
    config = TrainConfig(model="cnn", source=test.source, epochs=1, batch_size=32, n_train=128,
                         n_test=64)
model, card = load_or_train("cnn", source=test.source, quick=not args.full, cache_dir=cache_dir,
                            config=config, verbose=not args.smoke)

COMPOSITES: dict[str, tuple[str, Composite]] = {
    "egb": ("LRP EGB(0,1)", EpsilonGammaBox(0.0, 1.0)),
    "a2b1": ("LRP-α2β1", AlphaBetaAll(2.0, 1.0)),
}
SHIFTS: dict[str, tuple[tuple[int, int], ...]] = {
    "none": ((0, 0),), "pm1": shift_set(1), "pm2": shift_set(2)}
if args.smoke:  # every code path, fewer compilations
    COMPOSITES = {"egb": COMPOSITES["egb"]}
    SHIFTS = {"none": SHIFTS["none"], "pm1": SHIFTS["pm1"]}
SHIFT_LABEL = {"none": "no trick", "pm1": "±1 px (9 shifts)", "pm2": "±2 px (25 shifts)"}
SHIFT_SHORT = {"none": "none", "pm1": "±1", "pm2": "±2"}


def f(a: jax.Array, t: jax.Array) -> jax.Array:
    """The explained score f_c(x): the logit of class t per image, (N,)."""
    return jnp.take_along_axis(model(a), t[:, None], axis=1)[:, 0]


def fbar(a: jax.Array, t: jax.Array, shifts: tuple[tuple[int, int], ...]) -> jax.Array:
    """The translation-averaged score f̄_c(x) = 1/|T| sum_{τ in T} f_c(τx), (N,)."""
    return jnp.mean(jnp.stack([f(translate(a, dx, dy), t) for dx, dy in shifts]), axis=0)


def roughness(R: np.ndarray) -> np.ndarray:
    """TV(R) / sum|R| per image: sum of |differences| between 4-neighbours over the L1 mass."""
    tv = np.abs(np.diff(R, axis=1)).sum((1, 2, 3)) + np.abs(np.diff(R, axis=2)).sum((1, 2, 3))
    return tv / np.maximum(np.abs(R).sum((1, 2, 3)), 1e-30)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean and standard error of a - b per image, and the share of images with a < b."""
    d = a - b
    return {"mean": float(d.mean()), "sem": float(d.std(ddof=1) / np.sqrt(len(d))),
            "share_lower": float((d < 0).mean())}


scores = np.asarray(f(x, labels))
scores_bar = {k: np.asarray(fbar(x, labels, v)) for k, v in SHIFTS.items()}
results: dict = {
    "mode": mode, "data_source": test.source, "model": "cnn (avg pool)", "n_eval": n_eval,
    "target": "true label (logit), fixed per image", "shifts": {k: len(v) for k, v in SHIFTS.items()},
    "pixel_flipping": "4x4 patches, black (0), MoRF, relevance computed once",
    "accuracy_eval_digits": float((np.asarray(model(x)).argmax(-1) == labels).mean()),
    "mean_f": float(scores.mean()),
    "mean_fbar": {k: float(v.mean()) for k, v in scores_bar.items()},
    "checkpoint": card.get("checkpoint"), "composites": {},
}
heatmaps: dict[tuple[str, str], np.ndarray] = {}
relevances: list[np.ndarray] = []
keys: list[tuple[str, str]] = []
for comp_key, (comp_label, composite) in COMPOSITES.items():
    print(f"--- {comp_label}")
    print(lrpjax.describe(model, x[:1], composite=composite))

    def explain(a: jax.Array, t: jax.Array, composite: Composite = composite) -> jax.Array:
        return lrpjax.relevance(model, a, composite=composite, target=t)

    for shift_key, shifts in SHIFTS.items():
        t0 = time.perf_counter()
        parts = []
        for i in range(0, n_eval, chunk):  # pad the last chunk: one compilation per shift set
            idx = np.minimum(np.arange(i, i + chunk), n_eval - 1)
            R = translation_trick(explain, x[idx], shifts, target=labels[idx])
            parts.append(np.asarray(R)[:min(chunk, n_eval - i)])
        R = np.concatenate(parts)
        keys.append((comp_key, shift_key))
        relevances.append(R)
        heatmaps[comp_key, shift_key] = R[shown]
        total = R.reshape(n_eval, -1).sum(1)
        entry = results["composites"].setdefault(comp_key, {"label": comp_label})
        entry[shift_key] = {
            "conservation_fbar": float(np.mean(total / scores_bar[shift_key])),
            "conservation_f": float(np.mean(total / scores)),
            "roughness": float(roughness(R).mean()),
            "time_s": round(time.perf_counter() - t0, 1),
        }
        print(f"  {shift_key:>4}: {len(shifts):2d} shifts, sum R / f̄ = "
              f"{entry[shift_key]['conservation_fbar']:.3f}, roughness "
              f"{entry[shift_key]['roughness']:.3f} ({entry[shift_key]['time_s']} s)")

# ---- pixel flipping of f, all heatmaps in one call, plus a random order (i.i.d. noise relevance)
relevances.append(np.random.default_rng(0).uniform(size=x.shape).astype(np.float32))
m = len(relevances)
tiled_x, tiled_t = np.tile(x, (m, 1, 1, 1)), np.tile(labels, m)
flips = pixel_flipping(f, tiled_x, relevance=np.concatenate(relevances), patch=4,
                       replacement="black", targets=tiled_t)
auc = np.asarray(flips.auc).reshape(m, n_eval)
aopc = np.asarray(flips.aopc).reshape(m, n_eval)
results["random_auc"] = float(auc[-1].mean())
results["random_aopc"] = float(aopc[-1].mean())
for k, (comp_key, shift_key) in enumerate(keys):
    e = results["composites"][comp_key][shift_key]
    none = keys.index((comp_key, "none"))
    e.update(auc=float(auc[k].mean()), auc_sem=float(auc[k].std(ddof=1) / np.sqrt(n_eval)),
             aopc=float(aopc[k].mean()),
             mean_curve=[round(float(v), 4) for v in np.asarray(flips.curves)[
                 k * n_eval:(k + 1) * n_eval].mean(0)])
    if shift_key != "none":
        e["auc_minus_none"] = paired(auc[k], auc[none])
    diff = e.get("auc_minus_none", {"mean": 0.0, "sem": 0.0})
    print(f"{comp_key:>4} {shift_key:>4}: AUC(f) {e['auc']:.3f} +- {e['auc_sem']:.3f} "
          f"(vs none {diff['mean']:+.3f} +- {diff['sem']:.3f}), AOPC {e['aopc']:.3f}")
print(f"random order: AUC(f) {results['random_auc']:.3f}, AOPC {results['random_aopc']:.3f}")

# ---- figure: rows = digits; columns: the digit, then composites x shift sets
columns = [(c, s) for c in COMPOSITES for s in SHIFTS]
rows = [[x[i]] + [heatmaps[c][j] for c in columns] for j, i in enumerate(shown)]
titles = ["digit"] + [f"{COMPOSITES[c][0]}\n{SHIFT_LABEL[s]}" for c, s in columns]
fig = grid(rows, titles=titles, row_labels=[f"label {labels[i]} (#{i})" for i in shown],
           kind=["image"] + ["heatmap"] * len(columns), cell_size=1.3)
summary = "; ".join(
    f"{COMPOSITES[c][0]} " + " / ".join(f"{results['composites'][c][s]['auc']:.3f}" for s in SHIFTS)
    for c in COMPOSITES)
fig.suptitle("Translation trick on the avg-pool CNN: heatmaps of 1/|T| Σ τ⁻¹R(τx), each scaled by "
             "its own max|R| (red > 0, blue < 0)\nEGB(0,1) = EpsilonGammaBox: z^B with box [0,1] on "
             "conv1, γ=0.25 on conv2, ε on dense; α2β1 on every layer\n"
             f"pixel-flipping AUC of f on {n_eval} digits, "
             f"{' / '.join(SHIFT_SHORT[s] for s in SHIFTS)} (lower = better; random order "
             f"{results['random_auc']:.2f}): {summary}", fontsize=8)
save_figure(fig, out / "fig_translation.png")

results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_translation", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote {out / 'fig_translation.png'} and the 'fig_translation' section of "
      f"{out / 'results.json'} ({results['runtime_s']} s)")
