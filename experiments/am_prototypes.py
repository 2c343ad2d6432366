"""F-AM (Montavon et al. 2018, Sec. 3.1-3.3): class prototypes of the reference CNN, the paper's
progression from plain AM to AM with an expert to AM in a generator's code space.

* plain AM         x* = argmax_x log p(ω_c|x) − λ‖x‖², from a neutral start (x₀ = 0.01·ε, ε ~ N(0, I),
                   the MNIST background is 0), no clipping: x may leave [0, 1];
* AM with expert   x* = argmax_x log p(ω_c|x) − λ‖x‖² + β log p(x), p a Gaussian-Bernoulli RBM trained
                   on the train digits; same start, no clipping; β = 0 is plain AM;
* AM in code space z* = argmax_z log p(ω_c|g(z)) + λ_z r(z), x* = g(z*), g a self-conditioned DCGAN
                   (``lrpjax.maximize.gan``), r(z) = 2 log p(z) + const its Gaussian-mixture code prior
                   (= −‖z‖² for a standard normal prior); restarts: of 2,000 prior samples, those whose
                   images the classifier rates highest for the class;
* an extra row, *not* the paper's: plain AM started at the mean digit x̄ with −λ‖x − x̄‖², clipped to
  [0, 1] (what this script did before): the start and the box alone already make it digit-like.

Each family's weight is swept in one vmapped, jit-compiled optax run (the weight travels with the
target, ``weighted_terms``): pixel space over (class, λ, β) — plain AM for λ in ``LAMS`` and the
expert for β in ``BETAS`` at λ = ``--lam`` — and code space over (class, λ_z). Each family's row in
the figure is its *most regularised* setting that still gives p(ω_c|x*) >= ``--p-floor`` (0.9) for
every class: the same rule for all three. The trade-off curves (min p(ω_c|x*) against naturalness)
are in ``am_tradeoff.png``.

Naturalness is judged without the classifier, against the held-out *test* digits, which neither the
expert nor the generator saw (``lrpjax.maximize.density``): PPCA log-density, distance to the
nearest test digit, cosine similarity to the most similar test digit, and the W₁ distance between
pixel-value distributions. Each has a blind spot, measured on reference images (a black image,
the mean digit, noisy and pixel-shuffled digits) and reported as ``blind_spots``; the ranking of the
three prototype families is reported per score, whatever it is. The RBM's own log p(x) is listed
too, but it is the expert's objective, so it is no independent judge of the expert row.

Writes ``<out>/am_prototypes.png``, ``<out>/am_tradeoff.png`` and the "am" section of
``<out>/results.json``.

    python experiments/am_prototypes.py            # quick defaults (50-80 s on 2 shared CPU
                                                   # cores with the RBM and GAN cached; training
                                                   # them adds ~3.5 min the first time)
    python experiments/am_prototypes.py --full     # longer training and optimisation
    python experiments/am_prototypes.py --smoke    # seconds: tiny runs in a temporary cache
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from am_prototypes_plot import plot_prototypes, plot_tradeoff  # experiments/, next to this file
from flax import nnx

from lrpjax.files import update_results
from lrpjax.lab.claims import claim
from lrpjax.lab.data import load_mnist
from lrpjax.lab.models import build
from lrpjax.lab.train import load_or_train
from lrpjax.maximize import (
    SCORES,
    activation_maximization,
    class_log_prob,
    fit_judge,
    free_energy,
    generator,
    l2_regularizer,
    load_or_train_gan,
    load_or_train_rbm,
    naturalness,
    nearest_distance,
    nnx_logits,
    pixel_log_prob,
    prior_regularizer,
    random_starts,
    sample,
    sample_codes,
    weighted_terms,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="longer training and optimisation")
parser.add_argument("--smoke", action="store_true", help="tiny runs in a temporary cache (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNGs and results.json")
parser.add_argument("--cache-dir", default="checkpoints")
parser.add_argument("--lam", type=float, default=1e-3,
                    help="λ of −λ‖x‖² in the expert sweep and the clipped mean-start row")
parser.add_argument("--p-floor", type=float, default=0.9,
                    help="each family's row: its largest weight with min_c p(ω_c|x*) >= this")
args = parser.parse_args()
if not args.lam > 0:
    parser.error(f"--lam must be > 0 (λ = 0 leaves plain AM unbounded), got {args.lam}")
if not 0 < args.p_floor <= 1:
    parser.error(f"--p-floor must lie in (0, 1], got {args.p_floor}")
out = Path(args.out)
start = time.perf_counter()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-am-") if args.smoke else None
cache_dir = smoke_cache.name if smoke_cache else args.cache_dir
verbose = not args.smoke

# ---- settings per mode; weights ascending (= more regularised to the right)
steps = {"smoke": 4, "quick": 500, "full": 1000}[mode]
steps_z = {"smoke": 4, "quick": 250, "full": 1000}[mode]  # from good starts F levels off by ~150
restarts_x = {"smoke": 1, "quick": 1, "full": 2}[mode]   # pixel space: small-noise starts
restarts_z = {"smoke": 2, "quick": 3, "full": 16}[mode]  # code space, per class
LAMS = sorted({args.lam, *([1e-2] if args.smoke else [1e-3, 1e-2, 1e-1])})
BETAS = [1e-3, 1.0] if args.smoke else [1e-3, 3e-3, 1e-2, 1e-1, 1.0]
LAMS_Z = [1e-4, 1e-3] if args.smoke else [1e-4, 1e-3, 1e-2, 3e-2]
rbm_config = {"smoke": {"n_hidden": 16, "epochs": 1},
              "quick": {"n_hidden": 256, "epochs": 30},
              "full": {"n_hidden": 512, "epochs": 100}}[mode]
gan_config = {"smoke": {"steps": 20, "chunk": 10, "hidden": (8, 8), "n_clusters": 4},
              "quick": {"steps": 4500},
              "full": {"steps": 10000}}[mode]

# ---- data, the reference classifier
train = load_mnist("train", source="auto")
test = load_mnist("test", source=train.source)
if args.smoke:
    train = train._replace(images=train.images[:256], labels=train.labels[:256])
    test = test._replace(images=test.images[:200], labels=test.labels[:200])
    model, card = build("cnn", rngs=nnx.Rngs(0)), {}  # untrained: checks the plumbing only
else:
    model, card = load_or_train("cnn", source=train.source, quick=not args.full,
                                cache_dir=cache_dir)
logits_fn = nnx_logits(model)
predict = jax.jit(lambda x: jax.nn.softmax(logits_fn(x)))
x_bar = jnp.asarray(train.images.mean(0))
classes = jnp.arange(10)
results: dict = {"mode": mode, "data_source": train.source, "steps": steps,
                 "code_steps": steps_z, "lam": args.lam,
                 "p_floor": args.p_floor, "pixel_restarts": restarts_x,
                 "code_restarts_per_class": restarts_z, "lams": LAMS, "betas": BETAS,
                 "lams_z": LAMS_Z, "classifier_test_accuracy": card.get("test_accuracy")}

# ---- the expert: a GB-RBM on standardised train digits; held-out free energy vs shuffled pixels
rbm, std, rbm_info = load_or_train_rbm(train.images, cache_dir=cache_dir, verbose=verbose,
                                       **rbm_config)
log_px = pixel_log_prob(rbm, std)
flat = lambda x: jnp.asarray(x).reshape(len(x), -1)
shuffle = lambda x: np.stack([np.random.default_rng(i).permutation(row)
                              for i, row in enumerate(np.asarray(flat(x)))]).reshape(x.shape)
shuffled = shuffle(test.images)
F = lambda x: np.asarray(free_energy(rbm, (flat(x) - std.mean) / std.scale))
F_train, F_test, F_shuffled = F(train.images), F(test.images), F(shuffled)
results["rbm"] = {
    **rbm_config, "train_s": rbm_info["train_seconds"], "cached": rbm_info["cached"],
    "free_energy_train": float(F_train.mean()), "free_energy_test": float(F_test.mean()),
    "free_energy_test_shuffled": float(F_shuffled.mean()),
    "frac_test_below_shuffled": float(np.mean(F_test < F_shuffled)),
}
print(f"GB-RBM free energy: train {F_train.mean():.1f}, held-out test {F_test.mean():.1f}, "
      f"same digits with pixels shuffled {F_shuffled.mean():.1f} (lower = more probable)")

# ---- the generator: a GAN on the train digits; are its samples digits, of all classes?
gan, gan_info = load_or_train_gan(train.images, cache_dir=cache_dir, verbose=verbose,
                                  **gan_config)
samples = sample(gan, jax.random.PRNGKey(1), 1000)
p_samples = np.asarray(predict(samples))
fractions = np.bincount(p_samples.argmax(1), minlength=10) / len(p_samples)
n_ref = min(1000, len(test.images))
results["gan"] = {
    **{k: v for k, v in gan_info["config"].items() if k not in ("data", "model")},
    "model": gan_info["config"].get("model"), "train_s": gan_info["train_seconds"],
    "cached": gan_info["cached"], "samples_mean_max_prob": float(p_samples.max(1).mean()),
    "test_digits_mean_max_prob": float(np.asarray(predict(test.images)).max(1).mean()),
    "class_fractions": fractions.round(4).tolist(),
    "classes_with_5pct": int(np.sum(fractions >= 0.05)),
    # memorisation check: distance to the nearest *train* digit, samples vs held-out test digits
    "samples_nn_distance_train": float(nearest_distance(samples[:n_ref], train.images).mean()),
    "test_digits_nn_distance_train": float(
        nearest_distance(test.images[:n_ref], train.images).mean()),
}
print(f"GAN: 1000 samples, CNN mean max-prob {results['gan']['samples_mean_max_prob']:.3f} "
      f"(real test digits {results['gan']['test_digits_mean_max_prob']:.3f}); "
      f"{results['gan']['classes_with_5pct']} classes with >= 5 %: {fractions.round(3)}")


# ---- AM: one vmapped, jit-compiled optax run per space, the weights carried by the targets
def grid_targets(weights: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """(classes (S·10,), weights (S·10, K)): every setting (row of weights) × every class."""
    weights = np.asarray(weights, np.float32)
    return jnp.tile(classes, len(weights)), jnp.asarray(np.repeat(weights, 10, axis=0))


timings = {}
settings_x = [(lam, 0.0) for lam in LAMS] + [(args.lam, beta) for beta in BETAS]
t0 = time.perf_counter()
pixel = activation_maximization(
    weighted_terms(class_log_prob(logits_fn), l2_regularizer(1.0), log_px),
    random_starts(jax.random.PRNGKey(0), jnp.zeros_like(x_bar), restarts_x, scale=0.01),
    grid_targets(settings_x), steps=steps, progress=verbose,
    desc=f"AM in pixel space, {len(settings_x)} settings × 10 classes")
timings["pixel_sweep"] = time.perf_counter() - t0
x_pixel = pixel.best_x().reshape(len(settings_x), 10, *x_bar.shape)

t0 = time.perf_counter()
legacy = activation_maximization(
    class_log_prob(logits_fn), x_bar[None], classes, steps=steps,
    regularizer=l2_regularizer(args.lam, x_bar), clip=(0.0, 1.0), progress=verbose,
    desc="plain AM, mean start, clipped")
timings["plain_mean_start_clipped"] = time.perf_counter() - t0

z_pool, _ = sample_codes(gan.prior, jax.random.PRNGKey(2), 2000)
best_first = np.argsort(-np.asarray(predict(generator(gan.g, z_pool))), axis=0)  # (2000, 10)
z0 = z_pool[best_first[:restarts_z].T]                                            # (10, R, latent)
t0 = time.perf_counter()
code = activation_maximization(
    weighted_terms(class_log_prob(lambda z: logits_fn(generator(gan.g, z))),
                   prior_regularizer(gan, 1.0)),
    jnp.tile(z0, (len(LAMS_Z), 1, 1)), grid_targets(np.array(LAMS_Z)[:, None]), steps=steps_z,
    optimizer=optax.adam(0.1), per_target=True, progress=verbose,
    desc=f"AM in code space, {len(LAMS_Z)} λz × 10 classes")
timings["code_sweep"] = time.perf_counter() - t0
z_code = code.best_x().reshape(len(LAMS_Z), 10, -1)
x_code = generator(gan.g, z_code.reshape(-1, z_code.shape[-1])).reshape(len(LAMS_Z), 10,
                                                                       *x_bar.shape)
print("AM seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

# ---- numbers: class probability, naturalness (no classifier), the expert's own log p(x); every
# image (prototypes and references) goes through each function once, in one batch
judge = fit_judge(test.images, k=min(40, len(test.images) // 4))
rng = np.random.default_rng(0)
held_out = train.images[:1000]                 # real digits the judge (test split) never saw
references = {"real_digits": held_out, "black": np.zeros((1, *x_bar.shape), np.float32),
              "mean_digit": np.asarray(x_bar)[None],
              "noisy_digits": held_out[:200] + 0.2 * rng.normal(size=held_out[:200].shape),
              "shuffled_digits": shuffle(held_out[:200]), "gan_samples": np.asarray(samples[:200])}
batch = {"pixel": x_pixel.reshape(-1, *x_bar.shape), "code": x_code.reshape(-1, *x_bar.shape),
         "legacy": legacy.best_x(), **references}
everything = jnp.concatenate([jnp.asarray(v, jnp.float32) for v in batch.values()])
ends = np.cumsum([len(v) for v in batch.values()])
cut = lambda a: dict(zip(batch, np.split(np.asarray(a), ends[:-1]), strict=True))
p_all = cut(predict(everything))
scores_all = {s: cut(v) for s, v in naturalness(judge, everything).items()}
log_px_all = cut(jax.jit(jax.vmap(log_px))(everything))


def summary(part: str, row: int = 0) -> dict:
    """p(ω_c|x*) per class and the mean of every score, for the 10 prototypes (in class order)
    of setting ``row`` of ``part``."""
    sl = slice(10 * row, 10 * row + 10)
    p = p_all[part][sl][np.arange(10), np.arange(10)]
    x = np.asarray(batch[part][sl])
    return {"p_target": p.round(5).tolist(), "p_target_min": float(p.min()),
            "p_target_mean": float(p.mean()),
            **{s: float(v[part][sl].mean()) for s, v in scores_all.items()},
            "expert_log_px": float(log_px_all[part][sl].mean()),
            "pixel_range": [float(x.min()), float(x.max())]}


families = {
    "plain": {"weight": "lam", "values": LAMS, "x": x_pixel[:len(LAMS)], "part": "pixel",
              "first": 0},
    "expert": {"weight": "beta", "values": BETAS, "x": x_pixel[len(LAMS):], "part": "pixel",
               "first": len(LAMS)},
    "code": {"weight": "lam_z", "values": LAMS_Z, "x": x_code, "part": "code", "first": 0},
}
sweeps, prototypes = {}, {}
for name, fam in families.items():
    sweeps[name] = [{fam["weight"]: w, **summary(fam["part"], fam["first"] + i)}
                    for i, w in enumerate(fam["values"])]
    ok = [i for i, s in enumerate(sweeps[name]) if s["p_target_min"] >= args.p_floor]
    pick = max(ok) if ok else 0
    prototypes[name] = fam["x"][pick]
    results[name] = {**sweeps[name][pick], "weight_name": fam["weight"],
                     "floor_reached": bool(ok)}
prototypes["plain_mean_start_clipped"] = legacy.best_x()
results["plain_mean_start_clipped"] = {"lam": args.lam, **summary("legacy")}
plain_at_lam = x_pixel[LAMS.index(args.lam)]    # the expert sweep's β = 0 end
results["expert"]["change_vs_plain"] = float(
    jnp.linalg.norm(flat(prototypes["expert"] - plain_at_lam), axis=1).mean()
    / jnp.linalg.norm(flat(plain_at_lam), axis=1).mean())
results["code"]["z_distance_to_nearest_prior_mean"] = float(jnp.min(jnp.linalg.norm(
    z_code[LAMS_Z.index(results["code"]["lam_z"])][:, None] - gan.prior[0][None], axis=-1),
    axis=1).mean())
results["code"]["prior_sample_distance_typical"] = float(np.sqrt(gan.prior[0].shape[1]))
results["sweeps"] = sweeps
results["am_seconds"] = timings

# reference images: what each score says about real digits and about degenerate images
ref_scores = {k: {s: float(v[k].mean()) for s, v in scores_all.items()} for k in references}
results["references"] = ref_scores
better = lambda s, a, b: a > b if SCORES[s][0] else a < b  # a more natural than b under s
results["blind_spots"] = {
    s: [k for k in ("black", "mean_digit", "noisy_digits", "shuffled_digits")
        if not better(s, ref_scores["real_digits"][s], ref_scores[k][s])] for s in SCORES}

# the expert alone (largest β): the slides' cartoon (d), one mode for every class
x_top = x_pixel[-1]
spread = lambda x: float(jnp.mean(jnp.linalg.norm(flat(x)[:, None] - flat(x)[None], axis=-1)))
results["expert_largest_beta"] = {"beta": BETAS[-1], "p_target_mean":
                                  sweeps["expert"][-1]["p_target_mean"],
                                  "mean_pairwise_distance": spread(x_top),
                                  "plain_mean_pairwise_distance": spread(prototypes["plain"])}

# ---- claims: the paper's progression, per score, computed from the numbers
rows = ("plain", "expert", "code")
p_text = "; min p " + " / ".join(f"{results[r]['p_target_min']:.3f}" for r in rows)
claims = []
for s, (higher, desc) in SCORES.items():
    v = [results[r][s] for r in rows]
    order = " < ".join(sorted(rows, key=lambda r: results[r][s] if higher else -results[r][s]))
    claims.append(claim(
        f"Prototypes become more natural from plain AM to AM with an expert to AM in code "
        f"space ({desc}, {'higher' if higher else 'lower'} = more natural)", "§3.1–3.3",
        bool(better(s, v[1], v[0]) and better(s, v[2], v[1])),
        f"plain / expert / code {' / '.join(f'{a:.3g}' for a in v)} (real digits "
        f"{ref_scores['real_digits'][s]:.3g}){p_text}; ranking {order}; blind spots: "
        f"{', '.join(results['blind_spots'][s]) or 'none'}"))
top = results["expert_largest_beta"]
claims.append(claim(
    "Optimising the expert itself (β large) loses the class: every class gets the expert's mode",
    "§3.2, slides' cartoon (d)",
    bool(top["p_target_mean"] < 0.5
         and top["mean_pairwise_distance"] < 0.5 * top["plain_mean_pairwise_distance"]),
    f"β = {top['beta']:g}: mean p {top['p_target_mean']:.3f}, prototypes "
    f"{top['mean_pairwise_distance']:.2f} apart (plain AM's {top['plain_mean_pairwise_distance']:.2f})"))
results["claims"] = claims

for name in ("plain", "plain_mean_start_clipped", "expert", "code"):
    r = results[name]
    print(f"{name:>24}: p min {r['p_target_min']:.3f} mean {r['p_target_mean']:.3f}; "
          + "; ".join(f"{s} {r[s]:.3g}" for s in SCORES) + f"; RBM log p {r['expert_log_px']:.1f}")
for k, v in ref_scores.items():
    print(f"{k:>24}: " + "; ".join(f"{s} {v[s]:.3g}" for s in SCORES))
print("blind spots:", results["blind_spots"])
for c in claims:
    print(f"claim holds={c['holds']}: {c['claim']}\n    {c['evidence']}")

# ---- figures
plot_prototypes(out / "am_prototypes.png", prototypes, results)
plot_tradeoff(out / "am_tradeoff.png", families, results)
results["seconds"] = time.perf_counter() - start
update_results("am", results, path=out / "results.json")
print(f"wrote {out / 'am_prototypes.png'}, {out / 'am_tradeoff.png'} in "
      f"{results['seconds']:.1f} s")
