"""F-heat: heatmaps of MNIST test digits by sensitivity, simple Taylor and LRP (Montavon et al. 2018).

Explains the score f_c(x) of the true class c (a logit, fixed per image) with

* sensitivity R_i = (df_c/dx_i)^2 and simple Taylor R_i = x_i df_c/dx_i (gradient x input);
* LRP "EpsilonGammaBox(0, 1)": z^B with the pixel box l = 0, h = 1 on the first convolution, gamma
  on the other convolutions, epsilon on dense layers (on the MLP, which has no convolution, this is
  LRP-epsilon everywhere);
* LRP-alpha-beta on every layer (AlphaBetaAll, alpha - beta = 1): alpha1beta0 (= z+, the paper's
  default), alpha2beta1, alpha3beta2;
* the LRP tutorial composite on the MLP, LRPTutorial(low=0, high=1): z^B at the input with the box
  [0, 1] because our inputs are in [0, 1] (the tutorial's data are in [-1, 1]), epsilon = 0.1 RMS(z)
  in the middle, LRP-0 on top;
* the avg-pool CNN ("cnn") against the max-pool CNN ("cnn_max", winner-take-all LRP at the pools).

Figures (rows: digits, one per class; columns: methods; each heatmap scaled by its own max|R|, red
> 0, blue < 0): ``fig_heatmaps_methods.png``, ``fig_heatmaps_alphabeta.png``,
``fig_heatmaps_pooling.png``. Numbers in the "fig_heatmaps" section of ``results.json``, per model
and method over the first ``n_eval`` test digits: the conservation ratio sum_i R_i / f_c(x) (mean
and median; sensitivity is not meant to conserve), the share of negative relevance
sum|R-| / sum|R|, the share of |R| on black pixels (x_i = 0), and pixel flipping (4x4 patches
set to black = 0, MoRF, relevance computed once): mean AUC (lower = more selective) and AOPC,
with a random-order baseline per model. Black flipping cannot remove relevance that sits on
pixels that are already black, and x_i df/dx_i is its first-order prediction, which favours
simple Taylor.

    python experiments/fig_heatmaps.py            # quick: 300 evaluation digits
    python experiments/fig_heatmaps.py --full     # full-training models, 1,000 digits
    python experiments/fig_heatmaps.py --smoke    # seconds: tiny models in a temporary cache
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lrpjax
from lrpjax.composites import Alpha1Beta0, AlphaBetaAll, Composite, EpsilonGammaBox, LRPTutorial
from lrpjax.evaluate import pixel_flipping
from lrpjax.files import update_results
from lrpjax.lab.claims import claim
from lrpjax.lab.data import load_mnist
from lrpjax.lab.plot import grid, save_figure
from lrpjax.lab.train import TrainConfig, load_or_train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="full-training models, 1,000 digits")
parser.add_argument("--smoke", action="store_true", help="tiny models in a temporary cache (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNGs and results.json")
parser.add_argument("--source", default="auto", choices=["auto", "full", "mnist5k"])
parser.add_argument("--cache-dir", default=None,
                    help="checkpoint folder (default checkpoints/; --smoke: a temporary folder)")
parser.add_argument("--n-eval", type=int, default=None,
                    help="digits for the numbers (default 300 quick, 1000 full, 8 smoke)")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")

test = load_mnist("test", source=args.source)
smoke_cache = (tempfile.TemporaryDirectory(prefix="lrpjax-smoke-")
               if args.smoke and args.cache_dir is None else None)
cache_dir = smoke_cache.name if smoke_cache else (args.cache_dir or "checkpoints")
n_eval = args.n_eval or {"smoke": 8, "quick": 300, "full": 1000}[mode]
n_eval = min(n_eval, len(test.labels))
x = test.images[:n_eval]
labels = test.labels[:n_eval].astype(np.int32)
# shown digits: the first of each class among the evaluation digits (2 in smoke mode)
shown = [int(np.flatnonzero(labels == c)[0]) for c in range(10) if (labels == c).any()]
shown = shown[:2] if args.smoke else shown

Explain = Callable[[jax.Array, jax.Array], jax.Array]
LRP: dict[str, tuple[str, Composite]] = {  # key: (column label, composite)
    "lrp_egb": ("LRP EGB(0,1)", EpsilonGammaBox(0.0, 1.0)),
    "lrp_a1b0": (r"LRP $\alpha_1\beta_0$", Alpha1Beta0()),
    "lrp_a2b1": (r"LRP $\alpha_2\beta_1$", AlphaBetaAll(2.0, 1.0)),
    "lrp_a3b2": (r"LRP $\alpha_3\beta_2$", AlphaBetaAll(3.0, 2.0)),
    "lrp_tutorial": ("LRP tutorial (zB[0,1])", LRPTutorial(low=0.0, high=1.0)),
}
LABELS = {"sensitivity": "sensitivity", "simple_taylor": "simple Taylor",
          **{k: v[0] for k, v in LRP.items()}}
METHODS = {
    "cnn": ["sensitivity", "simple_taylor", "lrp_egb", "lrp_a1b0", "lrp_a2b1", "lrp_a3b2"],
    "mlp": ["sensitivity", "simple_taylor", "lrp_egb", "lrp_a1b0", "lrp_a2b1", "lrp_a3b2",
            "lrp_tutorial"],
    "cnn_max": ["sensitivity", "simple_taylor", "lrp_egb", "lrp_a1b0"],
}
if args.smoke:  # a subset that still runs every code path: fewer compilations
    METHODS = {"cnn": ["sensitivity", "simple_taylor", "lrp_egb", "lrp_a2b1"],
               "mlp": ["lrp_a1b0", "lrp_tutorial"], "cnn_max": ["lrp_a1b0"]}
MODEL_LABEL = {"cnn": "CNN (avg pool)", "mlp": "MLP", "cnn_max": "CNN (max pool)"}


def explainer(model, method: str) -> Explain:
    """``(x, target) -> R`` for a method key."""
    if method == "sensitivity":
        return lambda a, t: lrpjax.sensitivity(model, a, target=t)
    if method == "simple_taylor":
        return lambda a, t: lrpjax.gradient_x_input(model, a, target=t)
    composite = LRP[method][1]
    return lambda a, t: lrpjax.relevance(model, a, composite=composite, target=t)


def class_score(model) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x, t) = the logit of class t per image, (N,)."""
    return lambda a, t: jnp.take_along_axis(model(a), t[:, None], axis=1)[:, 0]


results: dict = {"mode": mode, "data_source": test.source, "n_eval": n_eval,
                 "shown_indices": shown, "target": "true label (logit of that class)",
                 "pixel_flipping": "4x4 patches, black (0), MoRF, relevance computed once",
                 "note": "EpsilonGammaBox on the MLP = LRP-epsilon on every layer (no convolution)",
                 "models": {}}
heatmaps: dict[tuple[str, str], np.ndarray] = {}
for name, methods in METHODS.items():
    config = None
    if args.smoke:  # one epoch on 128 digits: checks the plumbing, not the accuracy
        config = TrainConfig(model=name, source=test.source, epochs=1, batch_size=32, n_train=128,
                             n_test=64)
    model, card = load_or_train(name, source=test.source, quick=not args.full,
                                cache_dir=cache_dir, config=config, verbose=not args.smoke)
    f = class_score(model)
    scores = np.asarray(f(x, labels))
    entry: dict = {"accuracy_eval_digits": float((np.asarray(model(x)).argmax(-1) == labels).mean()),
                   "mean_score": float(scores.mean()), "methods": {}}
    relevances = []
    for method in methods:
        if method in LRP:
            print(f"--- {name}, {method}")
            print(lrpjax.describe(model, x[:1], composite=LRP[method][1]))
        R = np.asarray(explainer(model, method)(x, labels))
        relevances.append(R)
        heatmaps[name, method] = R[shown]
        total = R.reshape(n_eval, -1).sum(1)
        absolute = np.abs(R).reshape(n_eval, -1).sum(1)
        negative = np.minimum(R, 0).reshape(n_eval, -1).sum(1)
        background = np.where(x == 0, np.abs(R), 0).reshape(n_eval, -1).sum(1)
        ratio = total / scores
        entry["methods"][method] = {
            "conservation_mean": float(ratio.mean()),
            "conservation_median": float(np.median(ratio)),
            "negative_share": float(np.mean(-negative / np.maximum(absolute, 1e-30))),
            "background_share": float(np.mean(background / np.maximum(absolute, 1e-30))),
        }
    # pixel flipping for all methods of this model at once (one compilation); the last block is
    # the random baseline: i.i.d. uniform "relevance" gives a uniformly random patch order
    relevances.append(np.random.default_rng(0).uniform(size=x.shape).astype(np.float32))
    m = len(relevances)
    flips = pixel_flipping(f, np.tile(x, (m, 1, 1, 1)), relevance=np.concatenate(relevances),
                           patch=4, replacement="black", targets=np.tile(labels, m))
    auc = np.asarray(flips.auc).reshape(m, n_eval)
    aopc = np.asarray(flips.aopc).reshape(m, n_eval)
    for k, method in enumerate(methods):
        entry["methods"][method]["auc"] = float(auc[k].mean())
        entry["methods"][method]["auc_sem"] = float(auc[k].std(ddof=1) / np.sqrt(n_eval))
        entry["methods"][method]["aopc"] = float(aopc[k].mean())
    entry["random_auc"] = float(auc[-1].mean())
    entry["random_aopc"] = float(aopc[-1].mean())
    entry["checkpoint"] = card.get("checkpoint")
    results["models"][name] = entry
    print(f"{name}: accuracy {entry['accuracy_eval_digits']:.3f} on {n_eval} digits, "
          f"random-order AUC {entry['random_auc']:.3f}")
    for method, v in entry["methods"].items():
        print(f"  {method:>14}: sum R / f = {v['conservation_mean']:8.3f} (median "
              f"{v['conservation_median']:.3f}), negative share {v['negative_share']:.3f}, "
              f"on black pixels {v['background_share']:.3f}, "
              f"AUC {v['auc']:.3f} +- {v['auc_sem']:.3f}, AOPC {v['aopc']:.3f}")


# ---- figures: rows = digits, first column the digit, then one heatmap per (model, method)
def figure(columns: list[tuple[str, str]], path: Path, title: str) -> None:
    columns = [c for c in columns if c in heatmaps]  # --smoke computes a subset
    rows = [[x[i]] + [heatmaps[c][j] for c in columns] for j, i in enumerate(shown)]
    titles = ["digit"] + [f"{MODEL_LABEL[mo]}\n{LABELS[me]}" for mo, me in columns]
    labels_ = [f"label {labels[i]} (#{i})" for i in shown]
    fig = grid(rows, titles=titles, row_labels=labels_,
               kind=["image"] + ["heatmap"] * len(columns), cell_size=1.25)
    width = int(13 * 1.25 * (len(columns) + 1))  # characters that fit the figure's width
    fig.suptitle("\n".join(textwrap.fill(p, width) for p in title.split("\n")), fontsize=9)
    save_figure(fig, path)


SCALE = "each heatmap scaled by its own max|R|; red: R > 0, blue: R < 0; target: the true class"
figure([("cnn", m) for m in METHODS["cnn"][:4]] + [("mlp", m) for m in METHODS["mlp"][:4]],
       out / "fig_heatmaps_methods.png",
       f"Sensitivity, simple Taylor and LRP on test digits ({SCALE}).\n"
       "EGB(0,1) = EpsilonGammaBox: z^B with the pixel box [0, 1] on the first convolution, "
       "gamma = 0.25 on other convolutions, epsilon on dense layers; on the MLP (no convolution) "
       "it is LRP-epsilon on every layer, i.e. simple Taylor.")
figure([("cnn", m) for m in ("lrp_a1b0", "lrp_a2b1", "lrp_a3b2")]
       + [("mlp", m) for m in ("lrp_a1b0", "lrp_a2b1", "lrp_a3b2", "lrp_tutorial")],
       out / "fig_heatmaps_alphabeta.png",
       rf"LRP-$\alpha\beta$ on every layer ($\alpha-\beta=1$) and the LRP tutorial composite on "
       f"the MLP ({SCALE}).\nTutorial: z^B with the box [0, 1] (inputs in [0, 1]), "
       "epsilon = 0.1 RMS(z) in the middle, LRP-0 on top; its z^B puts "
       f"{results['models']['mlp']['methods']['lrp_tutorial']['background_share']:.0%} of |R| on "
       "black pixels (x = 0).")
figure([(mo, me) for me in ("simple_taylor", "lrp_a1b0", "lrp_egb") for mo in ("cnn", "cnn_max")],
       out / "fig_heatmaps_pooling.png",
       f"Average pooling (proportional LRP) vs max pooling (winner-take-all) ({SCALE}).\n"
       "EGB(0,1) = EpsilonGammaBox: z^B with the pixel box [0, 1] on conv1, gamma = 0.25 on conv2, "
       "epsilon on dense layers.")

# ---- the paper's claims on these numbers (only what this mode computed)
results["claims"] = []
for name in ("cnn", "mlp"):
    ms = results["models"][name]["methods"]
    ab = [m for m in ("lrp_a1b0", "lrp_a2b1", "lrp_a3b2") if m in ms]
    if "lrp_a1b0" in ms:
        ratio = ms["lrp_a1b0"]["conservation_mean"]
        results["claims"].append(claim(
            f"LRP-α1β0 conserves relevance up to what the biases absorb ({MODEL_LABEL[name]})",
            "αβ rule, conservation", abs(ratio - 1) < 0.1,
            f"mean Σ R / f = {ratio:.3f} over {n_eval} digits"))
    if len(ab) == 3:
        neg = [ms[m]["negative_share"] for m in ab]
        results["claims"].append(claim(
            f"a larger β in LRP-αβ puts more relevance on negative evidence ({MODEL_LABEL[name]})",
            "αβ rule (slides: counter-relevance)", bool(neg[0] < neg[1] < neg[2]),
            "negative share of |R|: " + ", ".join(f"{m[4:]} {v:.3f}" for m, v in zip(ab, neg))))
results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_heatmaps", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote fig_heatmaps_{{methods,alphabeta,pooling}}.png and the 'fig_heatmaps' section of "
      f"{out / 'results.json'} ({results['runtime_s']} s)")
