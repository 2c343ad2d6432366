"""F-cartoon (Montavon et al. 2018, Fig. 3 / the slides' (a)-(d)): how the expert shapes AM, in 2D.

Two classes of 2D points (ω₀ a broad, frequent cluster; ω₁ a smaller one), a logistic-regression
classifier p(ω₁|x) = σ(wᵀx + b) trained on them, and two closed-form density experts: a single Gaussian fitted to all
points (coarse) and a Gaussian kernel density estimate (KDE, fitted). All four panels start at
the data mean x̄ and maximise, for class ω₁,

  (a) log p(ω₁|x) − λ‖x − x̄‖²          plain AM: the prototype leaves the data;
  (b) log p(ω₁|x) + log p_coarse(x)    favouring natural inputs: often sufficient;
  (c) log p(ω₁|x) + log p_kde(x)       desired: ≈ log p(x|ω₁) + const, the class-conditional mode;
  (d) log p_kde(x)                     the expert alone: a natural point of the wrong class —
                                       it hides what the classifier does (its failure modes).

The optimisation paths are recorded chunk by chunk through ``am_program``. Writes
``<out>/am_cartoon.png`` and the "am_cartoon" section of ``<out>/results.json``.

    python experiments/am_cartoon.py            # ~20 s
    python experiments/am_cartoon.py --smoke    # fewer steps, coarser contours (tests)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrpjax.files import update_results
from lrpjax.lab.claims import claim
from lrpjax.lab.plot import save_figure
from lrpjax.maximize import am_program, class_log_prob, l2_regularizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="fewer steps, coarse grid (tests)")
parser.add_argument("--full", action="store_true", help="finer contour grid")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()
steps, chunk = (20, 10) if args.smoke else (600, 20)
grid_n = {True: 60, False: 200}[args.smoke] if not args.full else 400

# ---- data: ω₀ (70 %) a broad cluster, ω₁ (30 %) a compact one up and to the right
rng = np.random.default_rng(0)
n0, n1 = 420, 180
x0 = rng.normal([-1.0, -0.3], [0.7, 0.9], (n0, 2))
x1 = rng.normal([1.3, 1.0], [0.45, 0.35], (n1, 2))
X = jnp.asarray(np.concatenate([x0, x1]), jnp.float32)
Y = jnp.asarray(np.r_[np.zeros(n0), np.ones(n1)], jnp.int32)
x_bar = X.mean(0)

# ---- the classifier: logistic regression, log p(ω₁|x) = −softplus(−(wᵀx + b)); logits (0, wᵀx + b)
def logits_fn(params, x):
    w, b = params
    return jnp.stack([jnp.zeros(x.shape[0]), x @ w + b], axis=-1)


def loss(params):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_fn(params, X)), Y[:, None], 1))


params = (jnp.zeros(2), jnp.zeros(()))
tx = optax.adam(0.05)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value


for _ in range(100 if args.smoke else 500):
    params, opt_state, value = train_step(params, opt_state)
accuracy = float(jnp.mean(logits_fn(params, X).argmax(-1) == Y))
classifier = lambda x: logits_fn(params, x)


# ---- the experts, closed form: one Gaussian (coarse) and a Gaussian KDE (fitted), bandwidth h
cov = jnp.cov(X.T)
cov_inv, logdet = jnp.linalg.inv(cov), jnp.linalg.slogdet(cov)[1]
h = 0.3


def log_p_coarse(x):
    """log N(x; x̄, Σ) with the sample mean and covariance of all points."""
    d = x - x_bar
    return -0.5 * (d @ cov_inv @ d + logdet + 2 * jnp.log(2 * jnp.pi))


def log_p_kde(x):
    """log (1/n) Σ_i N(x; x_i, h² I)."""
    sq = jnp.sum((x - X) ** 2, -1)
    return jax.nn.logsumexp(-0.5 * sq / h**2) - jnp.log(len(X)) - jnp.log(2 * jnp.pi * h**2)


log_p_class = class_log_prob(classifier)
lam = 1e-3
panels = {
    "a": ("(a) plain AM: log p(ω₁|x) − λ‖x − x̄‖²", log_p_class, l2_regularizer(lam, x_bar),
          lambda x: log_p_class(x, 1) - lam * jnp.sum((x - x_bar) ** 2)),
    "b": ("(b) + coarse expert (one Gaussian)", log_p_class, log_p_coarse,
          lambda x: log_p_class(x, 1) + log_p_coarse(x)),
    "c": ("(c) + fitted expert (KDE): desired", log_p_class, log_p_kde,
          lambda x: log_p_class(x, 1) + log_p_kde(x)),
    "d": ("(d) expert alone: log p(x)", lambda x, t: log_p_kde(x), None, log_p_kde),
}

# ---- run each panel's AM, recording the path every `chunk` steps
paths, results = {}, {"classifier_accuracy": accuracy, "steps": steps, "lambda": lam,
                      "kde_bandwidth": h, "start": np.asarray(x_bar).tolist()}
target = jnp.array([1])
for key, (title, objective, regularizer, _) in panels.items():
    program = am_program(objective, optimizer=optax.adam(0.05), regularizer=regularizer)
    state = program.init(x_bar[None], target)
    path = [np.asarray(state[0][0, 0])]
    for _ in range(steps // chunk):
        state, trace = program.run(state, target, chunk)
        path.append(np.asarray(state[0][0, 0]))
    paths[key] = np.stack(path)
    x_star = jnp.asarray(paths[key][-1])
    results[key] = {
        "x_star": paths[key][-1].tolist(),
        "p_class1": float(jax.nn.softmax(classifier(x_star[None]))[0, 1]),
        "log_p_kde": float(log_p_kde(x_star)),
        "dist_to_class1_mean": float(jnp.linalg.norm(x_star - X[Y == 1].mean(0))),
    }
    print(f"{title:<45} x* = {np.round(paths[key][-1], 2)}, p(ω₁|x*) = "
          f"{results[key]['p_class1']:.3f}, log p_kde(x*) = {results[key]['log_p_kde']:.2f}")

# ---- figure: contours of each panel's objective, the data, the path from x̄ to x*
lo, hi = X.min(0) - 1.5, X.max(0) + 1.5
lo, hi = np.minimum(lo, np.min([p.min(0) for p in paths.values()], 0) - 0.3), \
    np.maximum(hi, np.max([p.max(0) for p in paths.values()], 0) + 0.3)
g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], grid_n), np.linspace(lo[1], hi[1], grid_n))
points = jnp.asarray(np.stack([g1.ravel(), g2.ravel()], 1), jnp.float32)
fig = Figure(figsize=(13, 3.6), layout="constrained")
FigureCanvasAgg(fig)
axes = fig.subplots(1, 4)
for ax, (key, (title, _, _, surface)) in zip(axes, panels.items()):
    values = np.asarray(jax.jit(jax.vmap(surface))(points)).reshape(g1.shape)
    levels = np.quantile(values, np.linspace(0.02, 0.995, 14))
    ax.contourf(g1, g2, values, levels=np.unique(levels), cmap="viridis", extend="both")
    ax.scatter(*np.asarray(X[Y == 0]).T, s=3, c="white", alpha=0.6, label="ω₀")
    ax.scatter(*np.asarray(X[Y == 1]).T, s=3, c="tab:orange", alpha=0.7, label="ω₁")
    ax.plot(*paths[key].T, "-", c="crimson", lw=1.5)
    ax.plot(*paths[key][0], "o", c="crimson", ms=4)
    ax.plot(*paths[key][-1], "*", c="crimson", ms=13, mec="k")
    ax.set_title(f"{title}\np(ω₁|x*)={results[key]['p_class1']:.2f}, "
                 f"log p(x*)={results[key]['log_p_kde']:.1f}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
axes[0].legend(fontsize=7, loc="lower left", markerscale=3)
fig.suptitle("AM for class ω₁ from the data mean (●) to the prototype x* (★); contours: the "
             "maximised function (bright = high)", fontsize=9)
save_figure(fig, out / "am_cartoon.png")

a, b, c, d = (results[k] for k in "abcd")
results["claims"] = [
    claim("plain AM maximises p(ω|x) but its prototype is unlikely under the data: an expert "
          "p(x) makes it more natural", "AM with an expert; slides (a) vs (c)",
          c["log_p_kde"] > a["log_p_kde"] and c["p_class1"] > 0.9,
          f"log p_kde(x*): plain {a['log_p_kde']:.2f} vs fitted expert {c['log_p_kde']:.2f}; "
          f"p(ω₁|x*) {a['p_class1']:.3f} vs {c['p_class1']:.3f}"),
    claim("optimising the expert alone hides what the classifier does (slides (d))",
          "slides (d)", d["p_class1"] < c["p_class1"],
          f"p(ω₁|x*): expert alone {d['p_class1']:.3f} vs classifier + expert {c['p_class1']:.3f}"),
]
results["seconds"] = time.perf_counter() - start
update_results("am_cartoon", results, path=out / "results.json")
print(f"wrote {out / 'am_cartoon.png'} in {results['seconds']:.1f} s")
