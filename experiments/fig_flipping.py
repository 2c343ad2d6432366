"""F-flip: pixel flipping (selectivity, Montavon et al. 2018 Sec. 7.2) on MNIST test digits.

For every test digit, the 4x4 patches are removed in order of decreasing patch relevance (computed
once, on the intact digit) and the score of the explained class is recorded after each removal;
the mean curves are plotted and their area (AUC, lower = more selective) and AOPC (higher = more
selective) are tabulated per method, for the average-pooling CNN and the MLP.

Choices made here (the paper leaves them open):
* explained class = the TRUE label (fixed along the whole curve); score f = its logit;
* removed patches are set to "black" (the data minimum 0) - the paper's setting - and, in a
  second table, to the per-pixel mean of the training digits ("mean");
* relevance is computed once (no recomputation after each flip);
* the random baseline uses one fixed permutation per digit (jax.random.key(0)).

    python experiments/fig_flipping.py            # quick: all (up to 1,000) test digits, ~2 min
    python experiments/fig_flipping.py --full     # every test digit, the longer-trained models
    python experiments/fig_flipping.py --smoke    # seconds: a tiny CNN, 8 digits (tests)
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
from lrpjax.composites import Alpha1Beta0, AlphaBetaAll, DeepTaylor, EpsilonGammaBox, Uniform
from lrpjax.evaluate import pixel_flipping
from lrpjax.files import update_results
from lrpjax.lab.data import data_range, load_mnist, mean_image
from lrpjax.lab.plot import image, save_figure
from lrpjax.lab.train import TrainConfig, load_or_train
from lrpjax.rules import Epsilon

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="all test digits, longer-trained models")
parser.add_argument("--smoke", action="store_true", help="tiny CNN, 8 digits (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--source", default="auto", choices=["auto", "full", "mnist5k"])
parser.add_argument("--cache-dir", default="checkpoints")
parser.add_argument("--n", type=int, default=None, help="number of test digits (overrides mode)")
args = parser.parse_args()
out = Path(args.out)
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
start = time.perf_counter()

PATCH = 4
BATCH = 250  # images per jitted relevance / flipping call
LOW, HIGH = data_range()  # pixel box [0, 1]: z^B bounds and the "black" value

# ---- data: the first n test digits; the mean training image for the "mean" replacement
test = load_mnist("test", source=args.source)
train_images = load_mnist("train", source=test.source).images
n = args.n or (8 if args.smoke else (len(test.labels) if args.full else min(1000, len(test.labels))))
x = test.images[:n]
labels = test.labels[:n].astype(np.int32)
data_mean = mean_image(train_images)  # (28, 28, 1)
print(f"{n} {test.source} test digits, {mode} mode; target = true label, score = its logit")

# ---- models (smoke: one epoch on 128 digits in a throw-away cache)
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-smoke-") if args.smoke else None
cache_dir = smoke_cache.name if smoke_cache else args.cache_dir
models = {}
# smoke: the CNN alone with black patches (plumbing only; compilation dominates its run time)
MODEL_NAMES = ("cnn",) if args.smoke else ("cnn", "mlp")
REPLACEMENTS = ("black",) if args.smoke else ("black", "mean")
for name in MODEL_NAMES:
    config = (TrainConfig(model=name, source=test.source, epochs=1, batch_size=32, n_train=128)
              if args.smoke else None)
    models[name], _ = load_or_train(name, source=test.source, quick=not args.full,
                                    cache_dir=cache_dir, config=config, verbose=not args.smoke)

# ---- the methods: key -> (label, relevance function of (model, x, targets))
def lrp(composite):
    return lambda model, xb, t: lrpjax.relevance(model, xb, composite=composite, target=t)


METHODS = {
    "sensitivity": ("sensitivity (∂f/∂x)²",
                    lambda model, xb, t: lrpjax.sensitivity(model, xb, target=t)),
    "simple_taylor": ("simple Taylor (x·∂f/∂x)",
                      lambda model, xb, t: lrpjax.gradient_x_input(model, xb, target=t)),
    "lrp_a1b0": ("LRP-α1β0 (z⁺)", lrp(Alpha1Beta0())),
    "lrp_a2b1": ("LRP-α2β1", lrp(AlphaBetaAll(2.0, 1.0))),
    "lrp_eps": ("LRP-ε (ε=0.25)", lrp(Uniform(Epsilon(0.25)))),
    "lrp_epsgammabox": ("LRP ε/γ/z^B (EpsilonGammaBox)", lrp(EpsilonGammaBox(LOW, HIGH))),
    "deep_taylor_box": ("deep Taylor z^B + z⁺", lrp(DeepTaylor(LOW, HIGH))),
}
RANDOM_LABEL = "random order"
# EpsilonGammaBox puts z^B / gamma on convolutions only: on the MLP it is epsilon everywhere, so
# the MLP gets deep Taylor (z^B at the input, z+ above) as its box-rule method instead.
MODEL_METHODS = {"cnn": list(METHODS), "mlp": [m for m in METHODS if m != "lrp_epsgammabox"]}
COLORS = {"sensitivity": "tab:blue", "simple_taylor": "tab:orange", "lrp_a1b0": "tab:red",
          "lrp_a2b1": "tab:purple", "lrp_eps": "tab:green", "lrp_epsgammabox": "tab:brown",
          "deep_taylor_box": "tab:pink", "random": "0.5"}


def batched_relevance(fn, model, xs, ts):
    """fn jitted once per model, applied BATCH images at a time (last chunk padded).

    The parameters enter the jitted function as an argument: closed over, they would be
    constants and XLA would spend minutes constant-folding the rules' convolutions."""
    graphdef, state = nnx.split(model)
    jfn = jax.jit(lambda st, xb, tb: fn(nnx.merge(graphdef, st), xb, tb))
    bs = min(BATCH, len(xs))
    chunks = []
    for s in range(0, len(xs), bs):
        idx = np.minimum(np.arange(s, s + bs), len(xs) - 1)
        chunks.append(np.asarray(jfn(state, xs[idx], ts[idx]))[: min(bs, len(xs) - s)])
    return np.concatenate(chunks)


def summary(res):
    auc, aopc = np.asarray(res.auc), np.asarray(res.aopc)
    return {"auc": float(auc.mean()), "auc_sem": float(auc.std(ddof=1) / np.sqrt(len(auc))),
            "aopc": float(aopc.mean()), "aopc_sem": float(aopc.std(ddof=1) / np.sqrt(len(aopc))),
            "mean_curve": np.round(np.asarray(res.mean_curve, np.float64), 5)}


# ---- flip: one relevance computation per (model, method), reused for both replacements
results: dict = {"mode": mode, "data_source": test.source, "n_digits": n, "patch": PATCH,
                 "n_steps": (28 // PATCH) ** 2, "target": "true label",
                 "score": "logit of the true class", "relevance": "computed once (no recompute)",
                 "replacements": {"black": f"data minimum {LOW}",
                                  "mean": "per-pixel mean of the training digits"},
                 "random_key": 0, "labels": {k: v[0] for k, v in METHODS.items()}}
results["labels"]["random"] = RANDOM_LABEL
curves_for_plot: dict = {}
orders: dict = {}
for name, model in models.items():
    def f(xb, tb, model=model):  # logit of each image's target class
        return jnp.take_along_axis(model(xb), tb[:, None].astype(jnp.int32), axis=1)[:, 0]

    logits = np.concatenate([np.asarray(model(x[i:i + BATCH])) for i in range(0, n, BATCH)])
    results[name] = {"accuracy_on_these_digits": float((logits.argmax(1) == labels).mean())}
    for repl in REPLACEMENTS:
        results[name][repl] = {}
    for key in MODEL_METHODS[name] + ["random"]:
        t0 = time.perf_counter()
        R = None if key == "random" else batched_relevance(METHODS[key][1], model, x, labels)
        for repl in REPLACEMENTS:
            kw = {"targets": labels, "patch": PATCH, "replacement": repl, "data_min": LOW,
                  "data_max": HIGH, "data_mean": data_mean, "batch_size": BATCH}
            if key == "random":
                res = pixel_flipping(f, x, order="random", key=jax.random.key(0), **kw)
            else:
                res = pixel_flipping(f, x, R, **kw)
            results[name][repl][key] = summary(res)
            curves_for_plot[name, repl, key] = np.asarray(res.mean_curve)
            if name == "cnn" and repl == "black":
                orders[key] = np.asarray(res.order)
        print(f"  {name}/{key}: {time.perf_counter() - t0:.1f} s", flush=True)

# ---- tables (printed) and a one-line reading of the CNN/black ordering
for name in models:
    for repl in REPLACEMENTS:
        table = results[name][repl]
        print(f"\n{name.upper()}, patches -> {repl}: {n} digits, score = true-class logit "
              f"(f(x) mean {table['random']['mean_curve'][0]:.2f})")
        print(f"  {'method':<32}{'AUC (lower better)':>22}{'AOPC (higher better)':>24}")
        for key in sorted(table, key=lambda k: table[k]["auc"]):
            row = table[key]
            print(f"  {results['labels'][key]:<32}{row['auc']:>14.3f} ± {row['auc_sem']:.3f}"
                  f"{row['aopc']:>16.3f} ± {row['aopc_sem']:.3f}")
        results[name][repl + "_ordering"] = sorted(table, key=lambda k: table[k]["auc"])

ordering = results["cnn"]["black_ordering"]
lrp_keys = [k for k in ordering if k.startswith(("lrp", "deep"))]
best, worst = ordering[0], ordering[-1]
results["ordering"] = ordering
results["interpretation"] = (
    f"CNN, black patches, by AUC (lower = more selective): {' < '.join(ordering)}. "
    f"Most selective: {best}; least: {worst}. Paper's expectation (LRP lowest, then simple "
    f"Taylor, sensitivity highest): LRP lowest = {best in lrp_keys}; "
    f"sensitivity above simple Taylor = "
    f"{ordering.index('sensitivity') > ordering.index('simple_taylor')}; "
    f"sensitivity highest among explanations (random excluded) = "
    f"{[k for k in ordering if k != 'random'][-1] == 'sensitivity'}."
    + "".join(f" {m.upper()}/{r}: {' < '.join(results[m][r + '_ordering'])}."
              for m in models for r in REPLACEMENTS if (m, r) != ("cnn", "black")))
print("\n" + results["interpretation"])

# ---- figure: mean curves per model x replacement, plus one digit flipped by two methods
fig = Figure(figsize=(13, 3.2 + 3.8 * len(models)),
             layout="constrained")
FigureCanvasAgg(fig)
top, bottom = fig.subfigures(2, 1, height_ratios=[3.8 * len(models), 3.2])
axes = top.subplots(len(models), len(REPLACEMENTS), sharex=True, squeeze=False)
steps = np.arange(results["n_steps"] + 1)
for r, name in enumerate(models):
    for c, repl in enumerate(REPLACEMENTS):
        ax = axes[r, c]
        table = results[name][repl]
        for key in results[name][repl + "_ordering"]:
            lab = f"{results['labels'][key]}: AUC {table[key]['auc']:.2f}"
            ax.plot(steps, curves_for_plot[name, repl, key], color=COLORS[key], label=lab,
                    lw=2.2 if key in ("lrp_a1b0", "sensitivity") else 1.4,
                    ls="--" if key == "random" else "-")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{name.upper()} (accuracy {results[name]['accuracy_on_these_digits']:.3f}),"
                     f" patches set to {repl}", fontsize=10)
        ax.set_ylabel("mean logit of the true class", fontsize=9)
        ax.legend(fontsize=7.5, title="by AUC, lowest first", title_fontsize=7.5, loc="upper right")
        ax.grid(alpha=0.3)
        if r == len(models) - 1:
            ax.set_xlabel(f"4×4 patches removed (of {results['n_steps']})", fontsize=9)
top.suptitle(f"Pixel flipping on {n} {test.source} test digits: most relevant 4×4 patch removed "
             "first (relevance computed once, target = true label)\n"
             "lower curve / AUC = more selective", fontsize=11)

# one digit: the inputs after k flips, in the LRP-α1β0 order and in the sensitivity order (CNN)
shown = [0, 2, 4, 6, 8, 12, 16]
example = 0
strip = bottom.subplots(2, len(shown))
for r, key in enumerate(("lrp_a1b0", "sensitivity")):
    order = orders[key][example]
    for c, k in enumerate(shown):
        xk = x[example].copy()
        removed = np.zeros(xk.shape[:2], bool)
        for p in order[:k]:
            i, j = divmod(int(p), 28 // PATCH)
            removed[i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH] = True
        xk[removed] = LOW
        score = float(models["cnn"](xk[None])[0, labels[example]])
        rgb = np.repeat(xk, 3, axis=-1)
        rgb[removed] = (0.42, 0.1, 0.1)  # removed (black) patches drawn dark red
        image(strip[r, c], rgb, title=f"{k} removed: f={score:.1f}")
        if c == 0:
            strip[r, c].set_ylabel(results["labels"][key].split(" (")[0], fontsize=8)
bottom.suptitle(f"CNN, test digit {example} (label {labels[example]}), patches set to black "
                "(drawn dark red): LRP-α1β0 order (top) vs sensitivity order (bottom)",
                fontsize=10)
save_figure(fig, out / "fig_flipping.png")

results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_flipping", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote {out / 'fig_flipping.png'} and the 'fig_flipping' section of "
      f"{out / 'results.json'} in {results['runtime_s']:.1f} s")
