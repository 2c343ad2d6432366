"""F-AM (Montavon et al. 2018, Sec. 3): class prototypes of the reference CNN, three ways.

* plain AM         x* = argmax_x log p(ω_c|x) − λ‖x − x̄‖²,  x̄ the mean training digit;
* AM with expert   x* = argmax_x log p(ω_c|x) + β log p(x),  p a Gaussian-Bernoulli RBM;
* AM in code space z* = argmax_z log p(ω_c|g(z)) + λ_z r(z), x* = g(z*), g a GAN generator
  (a self-conditioned DCGAN, ``lrpjax.maximize.gan``) and r(z) = 2 log p(z) + const its
  Gaussian-mixture code prior (= −‖z‖² for a standard normal prior).

Pixel-space variants start at x̄ and stay in the data range [0, 1] (projection); each variant is
one ``activation_maximization`` call over the 10 classes. In code space every class gets its own
restarts: the codes among 2,000 prior samples whose images the classifier rates highest for that
class; the best restart per class (by the maximised objective) is the prototype.

λ_z: the mixture components lie far apart (‖μ_k − μ_j‖ ≈ 23, unit variance), so a tiny λ_z
(1e-5) lets z* drift between them, where the generator never got training codes, and g(z*)
becomes blotches the classifier likes (min p 0.987, PPCA log-density 109). The default 1e-4
keeps z* in the prior's typical set (‖z* − μ_k‖ ≈ √latent = 8, reported) at min p ≈ 0.97;
3e-4 and 1e-3 give more natural prototypes (PPCA 423, 496) at min p 0.969, 0.958. A fourth
row shows the other end of the trade-off: λ_z = 3e-5 (``--lam-z-weak``) with 16 restarts and
1,000 steps reaches p >= 0.99 for every class, at a PPCA log-density of about 100. For scale,
``train_digits_max_p_target`` reports the classifier's highest p(ω_c|x) over the real train
digits of each class (it was trained with label smoothing): 0.95–0.99. The
expert (GB-RBM) and the GAN are trained on the mnist5k *train* split (cached in checkpoints/);
the naturalness of the prototypes is judged on the *test* split, which neither saw: the mean
log-density under a PPCA model fitted there, and the distance to the nearest test digit.

Writes ``<out>/am_prototypes.png`` and the "am" section of ``<out>/results.json``.

    python experiments/am_prototypes.py            # quick defaults (~4.5 min on 2 CPU cores
                                                   # with nothing cached, ~2.5 min cached)
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
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrpjax.files import update_results
from lrpjax.lab.data import load_mnist
from lrpjax.lab.models import build
from lrpjax.lab.plot import image, save_figure
from lrpjax.lab.train import load_or_train
from lrpjax.maximize import (
    activation_maximization,
    class_log_prob,
    expert_regularizer,
    fit_ppca,
    free_energy,
    generator,
    l2_regularizer,
    load_or_train_gan,
    load_or_train_rbm,
    nearest_distance,
    nnx_logits,
    pixel_log_prob,
    ppca_log_prob,
    prior_regularizer,
    sample,
    sample_codes,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="longer training and optimisation")
parser.add_argument("--smoke", action="store_true", help="tiny runs in a temporary cache (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--cache-dir", default="checkpoints")
parser.add_argument("--lam", type=float, default=5e-4, help="plain AM: λ of −λ‖x − x̄‖²")
parser.add_argument("--beta", type=float, default=5e-5, help="expert AM: weight of log p(x)")
parser.add_argument("--lam-z", type=float, default=1e-4,
                    help="code space: λ_z of λ_z·r(z), r = 2 log p(z) (−‖z‖² for N(0, I))")
parser.add_argument("--lam-z-weak", type=float, default=3e-5,
                    help="code space, fourth row: a weaker prior term (the confident end)")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-am-") if args.smoke else None
cache_dir = smoke_cache.name if smoke_cache else args.cache_dir
verbose = not args.smoke

# ---- settings per mode
steps = {"smoke": 4, "quick": 500, "full": 1000}[mode]
restarts_z = {"smoke": 2, "quick": 8, "full": 16}[mode]  # per class
# the weak-prior row needs more restarts and steps to reach p >= 0.99 (measured: 8 restarts x 500
# steps at λz = 1e-4 give min p 0.973, 32 restarts 0.987; λz = 3e-5, 16 x 1000: 0.990)
restarts_weak, steps_weak = {"smoke": (2, 4), "quick": (16, 1000), "full": (32, 2000)}[mode]
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
                 "lam": args.lam, "beta": args.beta, "lam_z": args.lam_z,
                 "code_restarts_per_class": restarts_z,
                 "classifier_test_accuracy": card.get("test_accuracy")}

# ---- the expert: a GB-RBM on standardised train digits; held-out free energy vs shuffled pixels
rbm, std, rbm_info = load_or_train_rbm(train.images, cache_dir=cache_dir, verbose=verbose,
                                       **rbm_config)
flat = lambda x: jnp.asarray(x).reshape(len(x), -1)
shuffled = np.stack([np.random.default_rng(i).permutation(row)
                     for i, row in enumerate(np.asarray(flat(test.images)))])
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
      f"{results['gan']['classes_with_5pct']} classes with >= 5 %: {fractions.round(3)}; "
      f"nearest train digit {results['gan']['samples_nn_distance_train']:.2f} "
      f"(test digits {results['gan']['test_digits_nn_distance_train']:.2f})")

# ---- the three AM variants: one vmapped, jit-compiled optax loop each
objective = class_log_prob(logits_fn)
timings = {}
t0 = time.perf_counter()
plain = activation_maximization(
    objective, x_bar[None], classes, steps=steps, regularizer=l2_regularizer(args.lam, x_bar),
    clip=(0.0, 1.0), progress=verbose, desc="plain AM")
timings["plain"] = time.perf_counter() - t0

t0 = time.perf_counter()
expert = activation_maximization(
    objective, x_bar[None], classes, steps=steps,
    regularizer=expert_regularizer(pixel_log_prob(rbm, std), args.beta),
    clip=(0.0, 1.0), progress=verbose, desc="AM + expert")
timings["expert"] = time.perf_counter() - t0

prototypes = {"plain": plain.best_x(), "expert": expert.best_x()}

# restarts per class: the codes whose images the classifier already rates highest for the class
z_pool, _ = sample_codes(gan.prior, jax.random.PRNGKey(2), 2000)
best_first = np.argsort(-np.asarray(predict(generator(gan.g, z_pool))), axis=0)  # (2000, 10)
code_objective = class_log_prob(lambda z: logits_fn(generator(gan.g, z)))
code_runs = {"code": {"lam_z": args.lam_z, "restarts_per_class": restarts_z, "am_steps": steps},
             "code_weak_prior": {"lam_z": args.lam_z_weak, "restarts_per_class": restarts_weak,
                                 "am_steps": steps_weak}}
z_stars = {}
for name, run in code_runs.items():
    t0 = time.perf_counter()
    z0 = z_pool[best_first[:run["restarts_per_class"]].T]  # (10, restarts, latent)
    result = activation_maximization(
        code_objective, z0, classes, steps=run["am_steps"],
        regularizer=prior_regularizer(gan, run["lam_z"]), optimizer=optax.adam(0.1),
        per_target=True, progress=verbose, desc=f"AM in code space, λz={run['lam_z']:g}")
    timings[name] = time.perf_counter() - t0
    z_stars[name] = result.best_x()
    prototypes[name] = generator(gan.g, z_stars[name])


def z_offset(z: jax.Array) -> np.ndarray:
    """‖z − μ_k‖ to the nearest mixture mean; a prior sample lies at about √latent."""
    return np.asarray(jnp.min(jnp.linalg.norm(z[:, None] - gan.prior[0][None], axis=-1), axis=1))


# ---- numbers: target probability, naturalness under a density model of held-out digits
ppca = fit_ppca(test.images, k=min(40, len(test.images) // 4))
reference = {"train_digits": train.images[:1000], "train_digits_shuffled":
             np.asarray(shuffled).reshape(test.images.shape)}
for name, x in reference.items():
    results[f"ppca_log_density_{name}"] = float(ppca_log_prob(ppca, x).mean())
results["nn_distance_train_digits"] = float(nearest_distance(train.images[:1000],
                                                             test.images).mean())
# the classifier's ceiling on real digits: the highest p(ω_c|x) of any train digit of class c
p_train = np.asarray(predict(train.images))
best_real = np.array([p_train[train.labels == c, c].max(initial=0.0) for c in range(10)])
results["train_digits_max_p_target"] = best_real.round(5).tolist()
for name, x in prototypes.items():
    p = np.asarray(predict(x))[np.arange(10), np.arange(10)]
    results[name] = {
        "p_target": p.round(5).tolist(), "p_target_min": float(p.min()),
        "p_target_mean": float(p.mean()),
        "classes_above_every_real_digit": int(np.sum(p > best_real)),
        "ppca_log_density": float(ppca_log_prob(ppca, x).mean()),
        "nn_distance": float(nearest_distance(x, test.images).mean()),
        "expert_log_px": float(jax.vmap(pixel_log_prob(rbm, std))(x).mean()),
        "am_seconds": timings[name],
    }
    if name in z_stars:
        results[name].update(code_runs[name])
        results[name]["z_distance_to_nearest_prior_mean"] = z_offset(z_stars[name]).round(2).tolist()
        results[name]["prior_sample_distance_typical"] = float(np.sqrt(gan.prior[0].shape[1]))
    print(f"{name:>15}: p(target) min {p.min():.4f} mean {p.mean():.4f}; PPCA log-density "
          f"{results[name]['ppca_log_density']:.1f}; above every real train digit of the class: "
          f"{results[name]['classes_above_every_real_digit']}/10; nearest test digit "
          f"{results[name]['nn_distance']:.2f}; AM {timings[name]:.1f} s")
print(f"best real train digit per class: p {best_real.round(3)}")
print(f"reference: train digits PPCA log-density {results['ppca_log_density_train_digits']:.1f}, "
      f"shuffled {results['ppca_log_density_train_digits_shuffled']:.1f}; nearest test digit "
      f"{results['nn_distance_train_digits']:.2f}")

# ---- figure: 3 rows × 10 digits, p(target) above each, the row's scores on the right
labels = {"plain": f"plain AM\nλ={args.lam:g}", "expert": f"AM + GB-RBM\nβ={args.beta:g}",
          "code": f"code space (GAN)\nλz={args.lam_z:g}",
          "code_weak_prior": f"code space (GAN)\nλz={args.lam_z_weak:g}"}
fig = Figure(figsize=(13.5, 6.0), layout="constrained")
FigureCanvasAgg(fig)
axes = fig.subplots(len(prototypes), 11, gridspec_kw={"width_ratios": [1] * 10 + [2.2]})
for r, (name, x) in enumerate(prototypes.items()):
    for c in range(10):
        image(axes[r, c], np.asarray(x[c]), title=f"p={results[name]['p_target'][c]:.3f}")
    axes[r, 0].set_ylabel(labels[name], fontsize=8)
    res = results[name]
    axes[r, 10].set_axis_off()
    axes[r, 10].text(0.0, 0.5, f"min p(ω_c|x*) {res['p_target_min']:.3f}\n"
                     f"PPCA log p(x*) {res['ppca_log_density']:.0f}\n"
                     f"nearest test digit {res['nn_distance']:.2f}", fontsize=8, va="center")
fig.suptitle(f"Class prototypes of the CNN (PPCA on held-out test digits: real train digits "
             f"{results['ppca_log_density_train_digits']:.0f}, shuffled "
             f"{results['ppca_log_density_train_digits_shuffled']:.0f}; nearest-digit distance "
             f"of real digits {results['nn_distance_train_digits']:.2f}; the best real train digit "
             f"of each class has p {best_real.min():.2f}–{best_real.max():.2f})", fontsize=9)
save_figure(fig, out / "am_prototypes.png")

results["seconds"] = time.perf_counter() - start
update_results("am", results, path=out / "results.json")
print(f"wrote {out / 'am_prototypes.png'} in {results['seconds']:.1f} s")
