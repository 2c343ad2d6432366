"""The translation trick (Montavon et al. 2018, Sec. 6) on a strided first layer: the artefact and its removal.

Sec. 6 recommends the trick "when the first-layer filters are noisy or strided": explain
f̄(x) = 1/|T| sum_τ f(τx) by R̄(x) = 1/|T| sum_τ τ^{-1} R(τx) (``lrpjax.translation``, integer
shifts, zero fill). Here it is applied where it has something to remove: ``cnn_strided``, whose
first convolution (5 x 5) runs at stride 2, so relevance redistributed through it reaches
alternate pixels from 3 and 2 kernel positions per axis and the heatmap carries a pattern of
period 2. The stride-1 ``cnn`` (pooling after conv1) is the control. Both are trained alike
(``load_or_train``; accuracies in results.json).

The artefact is measured by ``stride_energy`` E_2: the share of the heatmap's variance (its 2-D
power spectrum without the mean) at the stride frequencies (0, 14), (14, 0), (14, 14) of a
28 x 28 image, i.e. explained by a pattern of period 2 (1 for a pure period-2 pattern, 0 for a
smooth image, 3/783 = 0.0038 on average for white noise). Shift sets T: none (R itself),
"period" = {0, 1}^2 (``stride_shifts(2)``: every pixel sees each stride phase once, so a
period-2 pattern cancels) and ±1 px (the 3 x 3 square, 9 shifts: phases weighted 1/3 and 2/3,
so the pattern is only damped). Composites: EpsilonGammaBox(0, 1) and LRP-α2β1 on every layer.
The explained class is the true label, fixed per image.

Selectivity: pixel flipping (``lrpjax.evaluate.pixel_flipping``) of the deployed f, not f̄:
4 x 4 patches set to black (0), most relevant first, relevance computed once, score
max(0, f_c(x)) (the paper's Sec. 7.2: bounded below, so areas cannot cancel). Mean AUC (lower =
more selective) with a 95 % percentile-bootstrap interval over the digits, and the paired AUC
difference to no trick with its interval. A 4 x 4 patch holds every stride phase equally often,
so the period-2 pattern cannot change a patch's total relevance: pixel flipping on 4 x 4
patches cannot see the artefact, only what else the averaging changes.

Writes ``<out>/fig_translation.png`` (heatmaps, mean power spectra, E_2 and AUC with intervals)
and the "fig_translation" section of ``<out>/results.json`` with the paper's claims.

    python experiments/fig_translation.py           # quick: 300 digits
    python experiments/fig_translation.py --full    # full-training models, 1,000 digits
    python experiments/fig_translation.py --smoke   # seconds: tiny models, 8 digits
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

import lrpjax
from lrpjax.composites import AlphaBetaAll, Composite, EpsilonGammaBox
from lrpjax.evaluate import pixel_flipping
from lrpjax.files import update_results
from lrpjax.lab.claims import claim
from lrpjax.lab.data import load_mnist
from lrpjax.lab.models import STRIDE
from lrpjax.lab.plot import heatmap, image, save_figure
from lrpjax.lab.train import TrainConfig, load_or_train
from lrpjax.translation import shift_set, stride_energy, stride_shifts, translate, translation_trick

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="full-training models, 1,000 digits")
parser.add_argument("--smoke", action="store_true", help="tiny models in a temporary cache (tests)")
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
if n_eval < 2:
    raise SystemExit(f"--n-eval must be >= 2 (confidence intervals), got {n_eval}")
x = test.images[:n_eval]
labels = test.labels[:n_eval].astype(np.int32)
shown = [int(np.flatnonzero(labels == c)[0]) for c in (7, 2, 0, 4, 1, 3) if (labels == c).any()]
shown = shown[:2] if args.smoke else shown[:4]
chunk = min(100, n_eval)  # digits per translation_trick call (|T| x chunk shifted copies)
BLOCK = chunk  # LRP passes per jitted call, whatever |T|: one compilation per model and rule
N_BOOT = 2000

MODELS = {"strided": ("cnn_strided", f"conv1 at stride {STRIDE}"),
          "control": ("cnn", "stride 1, avg pool after conv1")}
COMPOSITES: dict[str, tuple[str, Composite]] = {
    "egb": ("LRP EGB(0,1)", EpsilonGammaBox(0.0, 1.0)),
    "a2b1": ("LRP-α2β1", AlphaBetaAll(2.0, 1.0)),
}
SHIFTS: dict[str, tuple[tuple[int, int], ...]] = {
    "none": ((0, 0),), "period": stride_shifts(STRIDE), "pm1": shift_set(1)}
if args.smoke:  # every code path, fewer compilations
    COMPOSITES = {"egb": COMPOSITES["egb"]}
SHIFT_LABEL = {"none": "no trick", "period": f"{{0..{STRIDE - 1}}}² ({STRIDE ** 2} shifts)",
               "pm1": "±1 px (9 shifts)"}
NOISE_LEVEL = (STRIDE ** 2 - 1) / (x.shape[1] * x.shape[2] - 1)  # E_s of white noise (mean)


def boot(values: np.ndarray) -> dict[str, float]:
    """Mean over the digits and its 95 % percentile-bootstrap interval (N_BOOT resamples; the
    same resampled digits for every quantity, seed 0)."""
    v = np.asarray(values, np.float64)
    idx = np.random.default_rng(0).integers(0, len(v), size=(N_BOOT, len(v)))
    lo, hi = np.percentile(v[idx].mean(1), [2.5, 97.5])
    return {"mean": float(v.mean()), "ci": [float(lo), float(hi)]}


def roughness(R: np.ndarray) -> np.ndarray:
    """TV(R) / sum|R| per image: sum of |differences| between 4-neighbours over the L1 mass."""
    tv = np.abs(np.diff(R, axis=1)).sum((1, 2, 3)) + np.abs(np.diff(R, axis=2)).sum((1, 2, 3))
    return tv / np.maximum(np.abs(R).sum((1, 2, 3)), 1e-30)


def marginal_spectrum(R: np.ndarray) -> np.ndarray:
    """Mean over the images of the share of each heatmap's power (mean removed) at horizontal
    frequency |k| = 0..W/2 (summed over vertical frequencies, k and W - k folded together)."""
    r = R.reshape(R.shape[:3] + (-1,)).sum(-1).astype(np.float64)
    power = np.abs(np.fft.fft2(r - r.mean((1, 2), keepdims=True))) ** 2
    share = power.sum(1) / np.maximum(power.sum((1, 2)), 1e-300)[:, None]  # (N, W)
    w = share.shape[1]
    folded = share[:, : w // 2 + 1].copy()
    folded[:, 1:(w + 1) // 2] += share[:, w - 1: w // 2: -1]
    return folded.mean(0)


def fmt(entry: dict[str, float], digits: int = 3) -> str:
    lo, hi = entry["ci"]
    return f"{entry['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


results: dict = {
    "mode": mode, "data_source": test.source, "model": "cnn_strided", "control_model": "cnn",
    "stride": STRIDE, "n_eval": n_eval, "target": "true label, fixed per image",
    "shifts": {k: len(v) for k, v in SHIFTS.items()},
    "stride_energy": f"share of the heatmap's variance at the stride frequencies k*28/{STRIDE} "
                     "(translation.stride_energy); white noise "
                     f"{NOISE_LEVEL:.4f}", "stride_energy_noise_level": NOISE_LEVEL,
    "pixel_flipping": "4x4 patches, black (0), MoRF, relevance computed once, score "
                      "max(0, logit of the true class) of f (not f̄)",
    "intervals": f"95 % percentile bootstrap over the {n_eval} digits ({N_BOOT} resamples)",
}
heatmaps: dict[tuple[str, str, str], np.ndarray] = {}
spectra: dict[tuple[str, str, str], np.ndarray] = {}
per_digit: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
for model_key, (name, description) in MODELS.items():
    config = None
    if args.smoke:
        config = TrainConfig(model=name, source=test.source, epochs=1, batch_size=32, n_train=128,
                             n_test=64)
    model, card = load_or_train(name, source=test.source, quick=not args.full,
                                cache_dir=cache_dir, config=config, verbose=not args.smoke)
    forward = jax.jit(lambda a, model=model: model(a))
    graphdef, state = nnx.split(model)
    shifted = jax.jit(lambda a, dx, dy, forward=forward: forward(translate(a, dx, dy)))
    fbar: dict[str, np.ndarray] = {}

    def f(a: jax.Array, t: jax.Array, forward=forward) -> jax.Array:
        """The flipped score max(0, f_c(x)): the true-class logit, bounded below, (N,)."""
        return jnp.maximum(jnp.take_along_axis(forward(a), t[:, None], axis=1)[:, 0], 0.0)

    # the strided net's numbers at the top level of the section, the control's under "control"
    entry = results if model_key == "strided" else results.setdefault("control", {})
    entry.update({
        "name": name, "architecture": description, "test_accuracy": card["test_accuracy"],
        "n_test": card["n_test"], "train_time_s": card["train_time_s"],
        "accuracy_eval_digits": float((np.asarray(forward(x)).argmax(-1) == labels).mean()),
        "checkpoint": card.get("checkpoint"), "composites": {}})
    print(f"--- {name} ({description}): test accuracy {card['test_accuracy']:.4f}")
    relevances, keys = [], []
    for comp_key, (comp_label, composite) in COMPOSITES.items():
        lrp = jax.jit(lambda st, a, t, composite=composite, graphdef=graphdef: lrpjax.relevance(
            nnx.merge(graphdef, st), a, composite=composite, target=t))  # state as an argument:
        # closed over, the parameters would be constants for XLA to fold

        def explain(a: jax.Array, t: jax.Array, lrp=lrp, state=state) -> jax.Array:
            """R(a) for the |T| x chunk shifted copies, BLOCK at a time (last block padded)."""
            a, t = np.asarray(a), np.asarray(t)
            parts = []
            for i in range(0, len(a), BLOCK):
                idx = np.minimum(np.arange(i, i + BLOCK), len(a) - 1)
                parts.append(np.asarray(lrp(state, a[idx], t[idx]))[:min(BLOCK, len(a) - i)])
            return jnp.asarray(np.concatenate(parts))

        for shift_key, shifts in SHIFTS.items():
            t0 = time.perf_counter()
            parts = []
            for i in range(0, n_eval, chunk):  # pad the last chunk: one compilation per set
                idx = np.minimum(np.arange(i, i + chunk), n_eval - 1)
                R = translation_trick(explain, x[idx], shifts, target=labels[idx])
                parts.append(np.asarray(R)[:min(chunk, n_eval - i)])
            R = np.concatenate(parts)
            if shift_key not in fbar:  # f̄(x) = 1/|T| sum_τ f(τx), per image
                fbar[shift_key] = np.mean([np.asarray(shifted(x, dx, dy))[np.arange(n_eval), labels]
                                           for dx, dy in shifts], axis=0)
            keys.append((comp_key, shift_key))
            relevances.append(R)
            heatmaps[model_key, comp_key, shift_key] = R[shown]
            energy = stride_energy(R, STRIDE)
            spectra[model_key, comp_key, shift_key] = marginal_spectrum(R)
            per_digit[model_key, comp_key, shift_key] = {"energy": energy}
            e = entry["composites"].setdefault(comp_key, {"label": comp_label})
            e[shift_key] = {
                "stride_energy": boot(energy),
                "conservation_fbar": float(np.mean(R.reshape(n_eval, -1).sum(1)
                                                   / fbar[shift_key])),
                "roughness": float(roughness(R).mean()),
                "time_s": round(time.perf_counter() - t0, 1)}
            print(f"  {comp_key:>4} {shift_key:>6}: {len(shifts):2d} shifts, E_{STRIDE} "
                  f"{fmt(e[shift_key]['stride_energy'], 4)}, sum R / f̄ "
                  f"{e[shift_key]['conservation_fbar']:.3f} ({e[shift_key]['time_s']} s)")

    # pixel flipping of max(0, f): every heatmap of this model in one call, plus a random order
    relevances.append(np.random.default_rng(0).uniform(size=x.shape).astype(np.float32))
    m = len(relevances)
    flips = pixel_flipping(f, np.tile(x, (m, 1, 1, 1)), relevance=np.concatenate(relevances),
                           patch=4, replacement="black", targets=np.tile(labels, m))
    auc = np.asarray(flips.auc).reshape(m, n_eval)
    curves = np.asarray(flips.curves).reshape(m, n_eval, -1)
    entry["random_auc"] = boot(auc[-1])
    for k, (comp_key, shift_key) in enumerate(keys):
        e = entry["composites"][comp_key][shift_key]
        per_digit[model_key, comp_key, shift_key]["auc"] = auc[k]
        e["auc"] = boot(auc[k])
        e["mean_curve"] = [round(float(v), 4) for v in curves[k].mean(0)]
        if shift_key != "none":
            none = keys.index((comp_key, "none"))
            d = auc[k] - auc[none]
            e["auc_minus_none"] = {**boot(d), "share_lower": float((d < 0).mean())}
            e["stride_energy_ratio"] = (e["stride_energy"]["mean"]
                                        / max(entry["composites"][comp_key]["none"]
                                              ["stride_energy"]["mean"], 1e-30))
        diff = f" (vs none {fmt(e['auc_minus_none'])})" if shift_key != "none" else ""
        print(f"  {comp_key:>4} {shift_key:>6}: AUC {fmt(e['auc'])}{diff}")
    print(f"  random order: AUC {fmt(entry['random_auc'])}")

# ---- the paper's claims, from the numbers above
ENTRY = {"strided": results, "control": results["control"]}
strided = results["composites"]
E = {(mk, c, s): ENTRY[mk]["composites"][c][s]["stride_energy"]
     for mk in MODELS for c in COMPOSITES for s in SHIFTS}
artefact = all(E["strided", c, "none"]["ci"][0] > E["control", c, "none"]["ci"][1]
               for c in COMPOSITES)
# the artefact = what the stride adds: E_2 in excess of the stride-1 net's (same composite)
excess = {(c, s): E["strided", c, s]["mean"] - E["control", c, "none"]["mean"]
          for c in COMPOSITES for s in SHIFTS}
for c in COMPOSITES:
    for s in ("period", "pm1"):
        strided[c][s]["excess_removed"] = 1.0 - excess[c, s] / max(excess[c, "none"], 1e-30)
removed = all(E["strided", c, "period"]["ci"][1] < E["strided", c, "none"]["ci"][0]
              and strided[c]["period"]["excess_removed"] >= 0.9 for c in COMPOSITES)
not_worse = all(strided[c]["period"]["auc_minus_none"]["ci"][0] <= 0 for c in COMPOSITES)
results["claims"] = [
    claim("Heatmaps of a net with a strided first layer carry a stride-periodic pattern",
          "§6 (translation trick: noisy or strided first-layer filters)", artefact,
          f"E_{STRIDE} (variance share at the stride frequencies) without the trick, stride "
          f"{STRIDE} vs stride 1: " + "; ".join(
              f"{COMPOSITES[c][0]} {fmt(E['strided', c, 'none'], 4)} vs "
              f"{fmt(E['control', c, 'none'], 4)}" for c in COMPOSITES)
          + f" (white noise {NOISE_LEVEL:.4f})"),
    claim("Averaging the explanation over small translations (the translation trick) removes it",
          "§6", removed,
          f"E_{STRIDE} on the stride-{STRIDE} net, none → {STRIDE ** 2} shifts (one stride "
          "period) / ±1 px: " + "; ".join(
              f"{COMPOSITES[c][0]} {E['strided', c, 'none']['mean']:.4f} → "
              f"{E['strided', c, 'period']['mean']:.4f} / {E['strided', c, 'pm1']['mean']:.4f}"
              for c in COMPOSITES) + "; share of the excess over the stride-1 net removed: "
          + "; ".join(f"{COMPOSITES[c][0]} {100 * strided[c]['period']['excess_removed']:.0f} % / "
                      f"{100 * strided[c]['pm1']['excess_removed']:.0f} %" for c in COMPOSITES)
          + " (holds: ≥ 90 % with one stride period, intervals apart)"),
    claim("The translation-averaged explanation is no less selective (pixel-flipping AUC not "
          "significantly higher)", "§6, §7.2", not_worse,
          f"AUC of max(0, f), 4×4 black patches, {n_eval} digits, one stride period minus no "
          "trick: " + "; ".join(f"{COMPOSITES[c][0]} {fmt(strided[c]['period']['auc_minus_none'])}"
                                for c in COMPOSITES)),
]
for c in results["claims"]:
    print(f"claim: {c['claim']}: {'holds' if c['holds'] else 'does NOT hold'} ({c['evidence']})")

# ---- figure: heatmaps (top), mean power spectra, E_2 and AUC with intervals (bottom)
columns = [("strided", c, s) for c in COMPOSITES for s in SHIFTS] + [
    ("control", c, s) for c in list(COMPOSITES)[:1] for s in ("none", "period")]
fig = Figure(figsize=(2.0 + 1.45 * len(columns), 2.0 + 1.5 * len(shown) + 3.4),
             layout="constrained")
FigureCanvasAgg(fig)
top, bottom = fig.subfigures(2, 1, height_ratios=[1.5 * len(shown) + 0.9, 3.4])
axes = top.subplots(len(shown), 1 + len(columns), squeeze=False)
for r, i in enumerate(shown):
    image(axes[r, 0], x[i], title="digit" if r == 0 else None)
    axes[r, 0].set_ylabel(f"label {labels[i]} (#{i})", fontsize=8)
    for col, (mk, c, s) in enumerate(columns, start=1):
        e = per_digit[mk, c, s]["energy"][i]
        title = (f"{'stride ' + str(STRIDE) if mk == 'strided' else 'stride 1'}: "
                 f"{COMPOSITES[c][0]}\n{SHIFT_LABEL[s]}\n" if r == 0 else "")
        heatmap(axes[r, col], heatmaps[mk, c, s][r], title=f"{title}E_{STRIDE} = {e:.4f}")
for ax in axes.ravel():
    ax.title.set_fontsize(7)
top.suptitle(f"Translation trick on a CNN whose first convolution has stride {STRIDE} (test "
             f"accuracy {results['test_accuracy']:.3f}) and on the stride-1 CNN "
             f"({results['control']['test_accuracy']:.3f})\nheatmaps of 1/|T| Σ τ⁻¹R(τx), each "
             f"scaled by its own max|R| (red > 0, blue < 0); E_{STRIDE} = share of the heatmap's "
             "variance at the stride frequencies", fontsize=9)

panels = bottom.subplots(1, 4, width_ratios=[1.1, 1.1, 1.5, 1.5])
k_axis = np.arange(x.shape[2] // 2 + 1)
for ax, c in zip(panels[:2], list(COMPOSITES) + [None]):
    if c is None:  # smoke: one composite
        ax.set_visible(False)
        continue
    for (mk, s, color, ls) in (("strided", "none", "tab:red", "-"),
                               ("strided", "period", "tab:green", "-"),
                               ("strided", "pm1", "tab:olive", "-"),
                               ("control", "none", "0.3", "--")):
        ax.semilogy(k_axis, spectra[mk, c, s], color=color, ls=ls, marker=".", ms=3,
                    label=f"stride {STRIDE if mk == 'strided' else 1}, {SHIFT_LABEL[s]}")
    ax.axvline(x.shape[2] // STRIDE, color="0.6", lw=0.8, ls=":")
    ax.set_title(f"{COMPOSITES[c][0]}: share of heatmap power\nat horizontal frequency k "
                 f"(mean of {n_eval} digits)", fontsize=7)
    ax.set_xlabel(f"k (cycles / {x.shape[2]} px); dotted: stride frequency", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
panels[0].legend(fontsize=6)
labels_bar, e_mean, e_err, a_mean, a_err, colors = [], [], [], [], [], []
palette = {"none": "tab:red", "period": "tab:green", "pm1": "tab:olive"}
for mk in MODELS:
    for c in COMPOSITES:
        for s in SHIFTS:
            labels_bar.append(f"{'s' + str(STRIDE) if mk == 'strided' else 's1'} "
                              f"{COMPOSITES[c][0].replace('LRP ', '')} {s}")
            for store_m, store_e, key in ((e_mean, e_err, "stride_energy"), (a_mean, a_err, "auc")):
                v = ENTRY[mk]["composites"][c][s][key]
                store_m.append(v["mean"])
                store_e.append([v["mean"] - v["ci"][0], v["ci"][1] - v["mean"]])
            colors.append(palette[s])
ypos = np.arange(len(labels_bar))
ax = panels[2]
ax.barh(ypos, e_mean, xerr=np.asarray(e_err).T, color=colors, capsize=2)
ax.axvline(NOISE_LEVEL, color="0.4", ls=":", lw=1, label="white noise")
ax.set_xscale("log")
ax.set_yticks(ypos, labels_bar, fontsize=6)
ax.invert_yaxis()
ax.set_title(f"E_{STRIDE} (95 % bootstrap interval, {n_eval} digits)", fontsize=8)
ax.legend(fontsize=6)
ax.tick_params(axis="x", labelsize=6)
ax = panels[3]
ax.barh(ypos, a_mean, xerr=np.asarray(a_err).T, color=colors, capsize=2)
ax.set_yticks(ypos, labels_bar, fontsize=6)
ax.invert_yaxis()
ax.set_title("pixel-flipping AUC of max(0, f), 4×4 black patches\n(lower = more selective; "
             f"random order: {results['random_auc']['mean']:.2f} / "
             f"{results['control']['random_auc']['mean']:.2f})", fontsize=8)
ax.tick_params(axis="x", labelsize=6)
save_figure(fig, out / "fig_translation.png", dpi=100)

results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_translation", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote {out / 'fig_translation.png'} and the 'fig_translation' section of "
      f"{out / 'results.json'} ({results['runtime_s']} s)")
