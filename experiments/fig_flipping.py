"""F-flip: pixel flipping, three protocols side by side (Montavon et al. 2018, Sec. 7.2).

(a) the paper's box (Sec. 7.2): 4x4 patches, most relevant first, set to black; the score is
    bounded below: max(0, z_c) and p(omega_c | x); relevance computed once on x AND recomputed
    on the current x after every removal. Network: the CNN with biases <= 0 (``cnn_nonpos``,
    Sec. 6), where "LRP" as the paper uses it is deep Taylor (z^B at the pixels, z+ above).
(b) Samek et al. 2017: 9x9 windows around the most relevant locations replaced by uniform noise
    U[0, 1], averaged over 5 noise seeds, AOPC relative to a random order (same network).
(c) the curve this script used to draw, kept and labelled as such: 4x4 black patches, the raw
    logit, relevance once; on the same network, on the MLP and (--full) on the plain CNN. The
    logit is unbounded below, so curves go negative and areas cancel.

Every ranking comes with 95 % percentile-bootstrap intervals over the digits; two methods differ
significantly when the bootstrap interval of their paired difference excludes 0. Explained
class: the true label, fixed along each curve.

    python experiments/fig_flipping.py            # quick (~1-3 min on 2 cores)
    python experiments/fig_flipping.py --full     # every test digit, the longer-trained models
    python experiments/fig_flipping.py --smoke    # seconds: tiny nets, 8 digits (tests)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.tree_util import Partial
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import lrpjax
from lrpjax.composites import (
    Alpha1Beta0,
    DeepTaylor,
    EpsilonGammaBox,
)
from lrpjax.evaluate import (
    bootstrap_ci,
    class_score,
    curve_auc,
    pairwise_differences,
    pixel_flipping,
    region_perturbation,
    relative_aopc,
)
from lrpjax.files import update_results
from lrpjax.lab.data import data_range, load_mnist
from lrpjax.lab.plot import save_figure
from lrpjax.lab.train import TrainConfig, load_or_train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="all test digits, longer-trained models")
parser.add_argument("--smoke", action="store_true", help="tiny nets, 8 digits (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--source", default="auto", choices=["auto", "full", "mnist5k"])
parser.add_argument("--cache-dir", default="checkpoints")
parser.add_argument("--n", type=int, default=None, help="number of test digits (overrides mode)")
args = parser.parse_args()
out = Path(args.out)
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
start = time.perf_counter()

PATCH, WINDOW, WINDOW_STEPS, N_SEEDS = 4, 9, 20, 5
BATCH = 500  # images per jitted relevance / flipping call
N_BOOT, LEVEL = 2000, 0.95
LOW, HIGH = data_range()  # pixel box [0, 1]: z^B bounds, "black" and the noise range
SCORES = ("logit", "relu_logit", "probability")  # recorded together on the same inputs

test = load_mnist("test", source=args.source)
n = args.n or (8 if args.smoke else len(test.labels) if args.full else min(1000, len(test.labels)))
# recomputing the explanation at each of the 49 steps costs ~5x a plain run: fewer digits
n_rec = min(n, 8 if args.smoke else (n if args.full else 100))
n_noise = min(n, 8 if args.smoke else (n if args.full else 300))
x, labels = test.images[:n], test.labels[:n].astype(np.int32)
print(f"{n} {test.source} test digits ({n_rec} recomputed, {n_noise} with noise), {mode} mode")

# ---- models: (a), (b) on the net with biases <= 0; (c) on today's CNN and MLP
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-smoke-") if args.smoke else None
cache_dir = smoke_cache.name if smoke_cache else args.cache_dir
# (c) on the same net as (a) and (b) (its curves are (a)'s, scored on the raw logit), on the
# MLP, and with --full on the plain CNN the previous figure used; smoke: one tiny net
TODAY = {"smoke": ("cnn_nonpos",), "quick": ("cnn_nonpos", "mlp"),
         "full": ("cnn_nonpos", "cnn", "mlp")}[mode]
models = {}
for name in dict.fromkeys(("cnn_nonpos", *TODAY)):
    config = (TrainConfig(model=name, source=test.source, epochs=1, batch_size=32, n_train=128)
              if args.smoke else None)
    models[name], _ = load_or_train(name, source=test.source, quick=not args.full,
                                    cache_dir=cache_dir, config=config, verbose=not args.smoke)


def lrp(composite):
    return lambda model, xb, t: lrpjax.relevance(model, xb, composite=composite, target=t)


METHODS = {
    "deep_taylor": ("LRP = deep Taylor (z^B + z⁺)", lrp(DeepTaylor(LOW, HIGH)), "tab:red"),
    "lrp_a1b0": ("LRP-α1β0 (z⁺ everywhere)", lrp(Alpha1Beta0()), "tab:pink"),
    "lrp_epsgammabox": ("EpsilonGammaBox", lrp(EpsilonGammaBox(LOW, HIGH)), "tab:brown"),
    "simple_taylor": ("simple Taylor (x·∂f/∂x)",
                      lambda model, xb, t: lrpjax.gradient_x_input(model, xb, target=t),
                      "tab:orange"),
    "sensitivity": ("sensitivity (∂f/∂x)²",
                    lambda model, xb, t: lrpjax.sensitivity(model, xb, target=t), "tab:blue"),
}
if args.smoke:  # plumbing only: compilation dominates
    METHODS = {k: METHODS[k] for k in ("deep_taylor", "simple_taylor", "sensitivity")}
LABELS = {k: v[0] for k, v in METHODS.items()} | {"random": "random order"}
COLORS = {k: v[2] for k, v in METHODS.items()} | {"random": "0.5"}
SHORT = {k: v.split(" (")[0].removeprefix("LRP = ").removeprefix("LRP-") for k, v in LABELS.items()}
PAPER = ("deep_taylor", "simple_taylor", "sensitivity")  # the paper's ordering, most selective 1st


def with_params(fn, model):
    """fn(model, x, t) as a Partial over the model's arrays: traced, not compiled in."""
    graphdef, state = nnx.split(model)
    return Partial(lambda st, xb, tb: fn(nnx.merge(graphdef, st), xb, tb), state)


@jax.jit
def _apply(fn, xb, tb):
    return fn(xb, tb)


def relevance_of(fn, model, xs, ts):
    """fn applied BATCH images at a time (one compilation per method and model)."""
    explain, bs, chunks = with_params(fn, model), min(BATCH, len(xs)), []
    for s in range(0, len(xs), bs):
        idx = np.minimum(np.arange(s, s + bs), len(xs) - 1)
        chunks.append(np.asarray(_apply(explain, xs[idx], ts[idx]))[: min(bs, len(xs) - s)])
    return np.concatenate(chunks)


def scores_of(model):
    graphdef, state = nnx.split(model)
    return class_score(Partial(lambda st, xb: nnx.merge(graphdef, st)(xb), state), SCORES)


def table(per_digit, *, higher_is_better=False):
    """Means, bootstrap intervals, the ranking and the pairwise tests of {method: (N,)}."""
    keys = list(per_digit)
    ci = bootstrap_ci(np.stack([per_digit[k] for k in keys], 1), level=LEVEL, n_boot=N_BOOT)
    rows = {k: {"mean": float(m), "low": float(lo), "high": float(hi)}
            for k, m, lo, hi in zip(keys, ci.mean, ci.low, ci.high)}
    ranking = sorted(keys, key=lambda k: -rows[k]["mean"] if higher_is_better else rows[k]["mean"])
    pairs = pairwise_differences({k: per_digit[k] for k in ranking}, level=LEVEL, n_boot=N_BOOT)
    tests = [{"a": a, "b": b, "diff": round(d.diff, 5), "low": round(d.low, 5),
              "high": round(d.high, 5), "differs": d.differs} for (a, b), d in pairs.items()]
    return {"n": len(next(iter(per_digit.values()))), "ranking": ranking, "methods": rows,
            "pairs": tests, "not_significant": [[t["a"], t["b"]] for t in tests
                                                if not t["differs"]]}


def flip(f, xs, R=None, **kw):
    return pixel_flipping(f, xs, R, targets=labels[:len(xs)], patch=PATCH, replacement="black",
                          data_min=LOW, data_max=HIGH, n_scores=len(SCORES), batch_size=BATCH,
                          **kw)


def curves_table(curves, score):
    """{method: (N, L+1) curves of one score} -> AUC table (lower = more selective)."""
    s = SCORES.index(score)
    t = table({k: curve_auc(np.asarray(c, np.float64)[:, s]) for k, c in curves.items()})
    for k, c in curves.items():
        t["methods"][k]["mean_curve"] = np.round(np.asarray(c)[:, s].mean(0), 5)
    return t


# ---- relevance once, on x: (a) and (b) share cnn_nonpos's, (c) has its own per model
results: dict = {"mode": mode, "data_source": test.source, "target": "true label",
                 "labels": LABELS, "bootstrap": {"level": LEVEL, "n_boot": N_BOOT, "seed": 0,
                                                 "kind": "percentile, over digits, paired"},
                 "scores": {"logit": "z_c", "relu_logit": "max(0, z_c)",
                            "probability": "p(omega_c | x) = softmax(z)_c"}}
curves: dict = {}
for name, model in models.items():
    f = scores_of(model)
    logits = np.concatenate([np.asarray(model(x[i:i + BATCH])) for i in range(0, n, BATCH)])
    results.setdefault("accuracy_on_these_digits", {})[name] = float(
        (logits.argmax(1) == labels).mean())
    rel = {}
    for key in METHODS:
        t0 = time.perf_counter()
        rel[key] = relevance_of(METHODS[key][1], model, x, labels)
        curves[name, "once", key] = np.asarray(flip(f, x, rel[key]).curves)
        print(f"  {name}/{key}: once {time.perf_counter() - t0:.1f} s", flush=True)
    curves[name, "once", "random"] = np.asarray(
        flip(f, x, order="random", key=jax.random.key(0)).curves)
    if name != "cnn_nonpos":
        continue
    for key in METHODS:  # (a) recomputed on the current x after every removal
        t0 = time.perf_counter()
        res = flip(f, x[:n_rec], explain=with_params(METHODS[key][1], model), recompute=True)
        curves[name, "recomputed", key] = np.asarray(res.curves)
        print(f"  {name}/{key}: recomputed {time.perf_counter() - t0:.1f} s", flush=True)
    curves[name, "recomputed", "random"] = curves[name, "once", "random"][:n_rec]
    for key in [*METHODS, "random"]:  # (b) Samek et al. 2017: 9x9 windows, uniform noise
        t0 = time.perf_counter()
        res = region_perturbation(f, x[:n_noise], None if key == "random" else rel[key][:n_noise],
                                  key=jax.random.key(1), size=WINDOW, steps=WINDOW_STEPS,
                                  n_seeds=N_SEEDS, order="random" if key == "random" else
                                  "relevance", data_min=LOW, data_max=HIGH,
                                  targets=labels[:n_noise], n_scores=len(SCORES),
                                  batch_size=BATCH)
        curves[name, "noise", key] = np.asarray(res.curves)
        print(f"  {name}/{key}: noise {time.perf_counter() - t0:.1f} s", flush=True)


def of(model, kind, subset=None):
    keys = [*METHODS, "random"]
    return {k: curves[model, kind, k][:subset] for k in keys}


# ---- (a) the paper's protocol: bounded scores, relevance once and recomputed
a = {"model": "cnn_nonpos (biases <= 0)", "patch": PATCH, "replacement": f"black ({LOW})",
     "n_steps": (28 // PATCH) ** 2, "n_digits_once": n, "n_digits_recomputed": n_rec,
     "once": {s: curves_table(of("cnn_nonpos", "once"), s) for s in SCORES},
     "recomputed": {s: curves_table(of("cnn_nonpos", "recomputed"), s) for s in SCORES},
     "once_same_digits": {s: curves_table(of("cnn_nonpos", "once", n_rec), s) for s in SCORES}}
p = SCORES.index("probability")
a["recomputed_minus_once_probability_auc"] = {
    k: dict(zip(("mean", "low", "high"), map(float, bootstrap_ci(
        curve_auc(curves["cnn_nonpos", "recomputed", k][:, p])
        - curve_auc(curves["cnn_nonpos", "once", k][:n_rec, p]), level=LEVEL, n_boot=N_BOOT))))
    for k in METHODS}

# ---- (b) Samek et al. 2017: AOPC relative to random (higher = more selective), mean over seeds
b = {"model": "cnn_nonpos (biases <= 0)", "window": WINDOW, "n_steps": WINDOW_STEPS,
     "n_seeds": N_SEEDS, "n_digits": n_noise, "replacement": f"uniform noise U[{LOW}, {HIGH}]",
     "order": "windows by summed relevance, one centred on every pixel, available while its "
              "centre is intact; relevance once"}
for s in ("logit", "probability"):
    i = SCORES.index(s)
    rand = curves["cnn_nonpos", "noise", "random"][:, i]
    b[s] = table({k: relative_aopc(curves["cnn_nonpos", "noise", k][:, i], rand)
                  for k in METHODS}, higher_is_better=True)
    for k in [*METHODS, "random"]:
        row = b[s]["methods"].setdefault(k, {"mean": 0.0, "low": 0.0, "high": 0.0})
        row["mean_curve"] = np.round(curves["cnn_nonpos", "noise", k][:, i].mean(0), 5)

# ---- (c) the previous black/logit curve (kept, labelled): unbounded score, relevance once
c = {"label": "previous protocol: 4x4 black patches, raw logit, relevance once",
     "patch": PATCH, "n_digits": n}
for name in TODAY:
    c[name] = curves_table(of(name, "once"), "logit")
    for k, cur in of(name, "once").items():  # AUC = area above 0 + area below 0 (<= 0)
        row = c[name]["methods"][k]
        row["area_above_0"] = float(curve_auc(np.asarray(cur[:, SCORES.index("relu_logit")],
                                                         np.float64)).mean())
        row["area_below_0"] = row["mean"] - row["area_above_0"]
results["protocols"] = {"a_paper": a, "b_samek": b, "c_previous": c}


# ---- the paper's claims, evaluated on each protocol
def pair(t, first, second):
    """PairedDifference of first - second in a table (stored in ranking order)."""
    for row in t["pairs"]:
        if (row["a"], row["b"]) == (first, second):
            return row["diff"], row["low"], row["high"]
        if (row["a"], row["b"]) == (second, first):
            return -row["diff"], -row["high"], -row["low"]
    raise KeyError((first, second))


def more_selective(t, first, second, higher_is_better=False):
    """first significantly more selective than second, and the evidence string."""
    d, lo, hi = pair(t, first, second)
    ok = lo > 0 if higher_is_better else hi < 0
    return ok, f"{first} - {second} = {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


PROTOCOLS = {  # name -> (table, higher is better, what)
    "a_once_probability": (a["once"]["probability"], False, "(a) p(ω_c|x), relevance once"),
    "a_once_relu_logit": (a["once"]["relu_logit"], False, "(a) max(0, z_c), relevance once"),
    "a_recomputed_probability": (a["recomputed"]["probability"], False,
                                 "(a) p(ω_c|x), recomputed"),
    "a_recomputed_relu_logit": (a["recomputed"]["relu_logit"], False,
                                "(a) max(0, z_c), recomputed"),
    "b_noise_logit": (b["logit"], True, "(b) noise, AOPC-random (logit)"),
    "b_noise_probability": (b["probability"], True, "(b) noise, AOPC-random (p)"),
    **{f"c_previous_{m}": (c[m], False, f"(c) previous, {m.upper()} logit") for m in TODAY},
}
claims, reproduces = [], {}
ORDERING_CLAIMS = ("a_once_probability", "a_once_relu_logit", "a_recomputed_probability",
                   "a_recomputed_relu_logit", "b_noise_logit", f"c_previous_{TODAY[0]}")
for pname, (t, hib, what) in PROTOCOLS.items():
    ok1, ev1 = more_selective(t, PAPER[0], PAPER[1], hib)
    ok2, ev2 = more_selective(t, PAPER[1], PAPER[2], hib)
    reproduces[pname] = bool(ok1 and ok2)
    if pname in ORDERING_CLAIMS:
        claims.append({
            "claim": "selectivity ordering: LRP (deep Taylor) more selective than simple Taylor, "
                     "simple Taylor more selective than sensitivity",
            "paper": f"§7.2, pixel-flipping figure; protocol {what}", "holds": reproduces[pname],
            "evidence": f"{ev1}; {ev2} ({t['n']} digits, {LEVEL:.0%} paired bootstrap)"})
for pname in ("a_once_probability", "a_recomputed_probability", "b_noise_logit"):
    t, hib, what = PROTOCOLS[pname]
    ok, ev = more_selective(t, PAPER[0], PAPER[2], hib)
    claims.append({"claim": "LRP (deep Taylor) is more selective than sensitivity analysis",
                   "paper": f"§7.2; protocol {what}", "holds": bool(ok),
                   "evidence": f"{ev} ({t['n']} digits, {LEVEL:.0%} paired bootstrap)"})
results["claims"] = claims
results["reproduces_paper_ordering"] = reproduces
results["n_digits"] = {"once": n, "recomputed": n_rec, "noise": n_noise}
results["interpretation"] = (
    "Paper's ordering (deep Taylor < simple Taylor < sensitivity, each step significant) "
    f"reproduced under: {', '.join(k for k, v in reproduces.items() if v) or 'none'}; not under: "
    f"{', '.join(k for k, v in reproduces.items() if not v) or 'none'}. Rankings (most selective "
    "first): " + "; ".join(f"{k}: {' > '.join(t['ranking'])}" for k, (t, _, _) in
                            PROTOCOLS.items()) + ".")
for pname, (t, hib, what) in PROTOCOLS.items():
    print(f"\n{what} ({t['n']} digits; {'AOPC - random, higher' if hib else 'AUC, lower'} = more "
          "selective)")
    for k in t["ranking"]:
        r = t["methods"][k]
        print(f"  {LABELS[k]:<34}{r['mean']:>9.3f}  [{r['low']:.3f}, {r['high']:.3f}]")
    print("  not significantly different:", t["not_significant"] or "none")
print("\n" + results["interpretation"])

# ---- figure: curves (top) and rankings with bootstrap intervals (bottom) per protocol
PANELS = [("a_once_probability", ("cnn_nonpos", "once"), "probability",
           f"(a) paper §7.2, relevance once\n4×4 black, cnn_nonpos, {n} digits"),
          ("a_recomputed_probability", ("cnn_nonpos", "recomputed"), "probability",
           f"(a) paper §7.2, relevance recomputed\n4×4 black, cnn_nonpos, {n_rec} digits"),
          ("b_noise_logit", ("cnn_nonpos", "noise"), "logit",
           f"(b) Samek et al. 2017: 9×9 noise, {N_SEEDS} seeds\ncnn_nonpos, {n_noise} digits"),
          (f"c_previous_{TODAY[0]}", (TODAY[0], "once"), "logit",
           f"(c) previous: 4×4 black, raw logit\n{TODAY[0]}, {n} digits")]
fig = Figure(figsize=(17, 8.2), layout="constrained")
FigureCanvasAgg(fig)
axes = fig.subplots(2, len(PANELS), height_ratios=[1.15, 1])
for col, (pname, (mname, kind), score, title) in enumerate(PANELS):
    t, hib, _ = PROTOCOLS[pname]
    ax = axes[0, col]
    s = SCORES.index(score)
    for k in [*t["ranking"], "random"] if hib else t["ranking"]:
        mc = curves[mname, kind, k][:, s].mean(0)
        ax.plot(np.arange(len(mc)), mc, color=COLORS[k], lw=2.2 if k in PAPER else 1.2,
                ls="--" if k == "random" else "-", label=LABELS[k])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{'9×9 windows' if kind == 'noise' else '4×4 patches'} removed", fontsize=9)
    ax.set_ylabel({"probability": "mean p(ω_c | x)", "logit": "mean logit z_c"}[score], fontsize=9)
    ax.grid(alpha=0.3)
    if col == 0:
        ax.legend(fontsize=7.5, loc="upper right")
    ax = axes[1, col]
    keys = [k for k in t["ranking"] if k != "random"][::-1]
    for i, k in enumerate(keys):
        r = t["methods"][k]
        ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]],
                    fmt="o", color=COLORS[k], capsize=3)
    ax.set_yticks(range(len(keys)), [SHORT[k] for k in keys], fontsize=8)
    rand = "" if hib else f"\n(random order: {t['methods']['random']['mean']:.3g})"
    ax.set_xlabel(("AOPC − AOPC(random), higher" if hib else f"AUC of {score}, lower")
                  + f" = more selective{rand}", fontsize=8.5)
    ns = [f"{SHORT[a]} ~ {SHORT[b]}" for a, b in t["not_significant"] if "random" not in (a, b)]
    ns = ["; ".join(ns[i:i + 2]) for i in range(0, len(ns), 2)] or ["none (all pairs differ)"]
    ax.set_title(f"paper's ordering reproduced: {'yes' if reproduces[pname] else 'no'}\n"
                 "not significantly different: " + "\n".join(ns), fontsize=8.5)
    ax.grid(alpha=0.3, axis="x")
fig.suptitle("Pixel flipping, three protocols: most relevant region removed first, target = true "
             f"label; bottom: means with {LEVEL:.0%} percentile-bootstrap intervals over digits",
             fontsize=12)
save_figure(fig, out / "fig_flipping.png")

results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("fig_flipping", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote {out / 'fig_flipping.png'} and the 'fig_flipping' section of "
      f"{out / 'results.json'} in {results['runtime_s']:.1f} s")
