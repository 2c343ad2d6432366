"""AM from global to local (Montavon et al. 2018, Sec. 3.3): x* → x₀ as η grows.

Classes are multimodal, so one global prototype cannot represent a class. The localised
objective adds a pull towards a given example x₀ of class c:

    x*(η) = argmax_x log p(ω_c|x) − λ‖x − x̄‖² − η‖x − x₀‖²,

which is global AM at η = 0 and x₀ itself as η → ∞ (for a fixed x, the last term dominates);
in between the prototype is a version of x₀ that the classifier finds more typical of ω_c. All
(digit, η) pairs run in one vmapped ``activation_maximization`` call: the targets are a pytree
{class, x₀, η}. Every run starts at x̄.

Writes ``<out>/am_local.png`` and the "am_local" section of ``<out>/results.json``:
‖x* − x₀‖ and p(ω_c|x*) for every η.

    python experiments/am_local.py            # ~1 min on 2 CPU cores (with a cached CNN)
    python experiments/am_local.py --smoke    # seconds: tiny runs in a temporary cache
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

from lrpjax.files import update_results
from lrpjax.lab.claims import claim
from lrpjax.lab.data import load_mnist
from lrpjax.lab.models import build
from lrpjax.lab.plot import image, save_figure
from lrpjax.lab.train import load_or_train
from lrpjax.maximize import (
    activation_maximization,
    class_log_prob,
    l2_regularizer,
    local_regularizer,
    nnx_logits,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="more steps, a finer η grid")
parser.add_argument("--smoke", action="store_true", help="tiny runs in a temporary cache (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--cache-dir", default="checkpoints")
parser.add_argument("--lam", type=float, default=1e-3, help="λ of the global term −λ‖x − x̄‖²")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()
mode = "smoke" if args.smoke else ("full" if args.full else "quick")
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-am-") if args.smoke else None
cache_dir = smoke_cache.name if smoke_cache else args.cache_dir

steps = {"smoke": 4, "quick": 400, "full": 1000}[mode]
etas = {"smoke": [0.0, 1.0],
        "quick": [0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        "full": [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}[mode]
digits = [3, 4, 8]  # which classes to localise on (the first test digit of each)

# ---- data and classifier
train = load_mnist("train", source="auto")
test = load_mnist("test", source=train.source)
if args.smoke:
    model, card = build("cnn", rngs=nnx.Rngs(0)), {}  # untrained: checks the plumbing only
else:
    model, card = load_or_train("cnn", source=train.source, quick=not args.full,
                                cache_dir=cache_dir)
logits_fn = nnx_logits(model)
x_bar = jnp.asarray(train.images.mean(0))
examples = jnp.asarray(np.stack([test.images[np.flatnonzero(test.labels == c)[0]]
                                 for c in digits]))

# ---- one call: targets are every (digit, η) pair
n_d, n_e = len(digits), len(etas)
targets = {
    "c": jnp.repeat(jnp.asarray(digits), n_e),
    "x0": jnp.repeat(examples, n_e, axis=0),
    "eta": jnp.tile(jnp.asarray(etas, jnp.float32), n_d),
}
log_p = class_log_prob(logits_fn)


def objective(x, t):
    """log p(ω_c|x) − η‖x − x₀‖² for this target's class c, example x₀ and weight η."""
    return log_p(x, t["c"]) + local_regularizer(t["eta"], t["x0"])(x)


result = activation_maximization(objective, x_bar[None], targets, steps=steps,
                                 regularizer=l2_regularizer(args.lam, x_bar), clip=(0.0, 1.0),
                                 progress=not args.smoke, desc="local AM")
x_star = result.x[:, 0]
dist = np.asarray(jnp.linalg.norm((x_star - targets["x0"]).reshape(n_d * n_e, -1), axis=-1))
probs = np.asarray(jax.nn.softmax(logits_fn(x_star)))[np.arange(n_d * n_e),
                                                     np.asarray(targets["c"])]
dist, probs = dist.reshape(n_d, n_e), probs.reshape(n_d, n_e)
p_x0 = np.asarray(jax.nn.softmax(logits_fn(examples)))[np.arange(n_d), digits]
results = {"mode": mode, "steps": steps, "lam": args.lam, "etas": etas, "digits": digits,
           "distance_to_x0": dist.round(4).tolist(), "p_target": probs.round(5).tolist(),
           "p_target_of_x0": p_x0.round(5).tolist(),
           "distance_decreasing": bool(np.all(np.diff(dist, axis=1) < 0)),
           "distance_x_bar_to_x0": np.asarray(jnp.linalg.norm(
               (examples - x_bar).reshape(n_d, -1), axis=-1)).round(4).tolist()}
for i, c in enumerate(digits):
    print(f"digit {c}: ‖x* − x₀‖ = {np.round(dist[i], 2)} for η = {etas}; "
          f"p(ω_c|x*) = {np.round(probs[i], 3)} (x₀ itself: {p_x0[i]:.3f})")

# ---- figure: per digit x₀ then x*(η); beside it ‖x* − x₀‖ against η
fig = Figure(figsize=(1.25 * (n_e + 1) + 3.6, 1.35 * n_d + 0.5), layout="constrained")
FigureCanvasAgg(fig)
grid = fig.add_gridspec(n_d, n_e + 2, width_ratios=[1] * (n_e + 1) + [3.0])
for i in range(n_d):
    image(fig.add_subplot(grid[i, 0]), np.asarray(examples[i]), title="x₀" if i == 0 else None)
    for j in range(n_e):
        ax = fig.add_subplot(grid[i, j + 1])
        image(ax, np.asarray(x_star[i * n_e + j]),
              title=(f"η={etas[j]:g}\n" if i == 0 else "") + f"p={probs[i, j]:.2f}")
ax = fig.add_subplot(grid[:, -1])
shown = [max(e, etas[1] / 3 if len(etas) > 1 else 1e-4) for e in etas]  # η = 0 on a log axis
for i, c in enumerate(digits):
    ax.plot(shown, dist[i], "o-", label=f"digit {c}")
ax.set_xscale("log")
ax.set_xlabel("η (leftmost point: η = 0, global AM)", fontsize=8)
ax.set_ylabel("‖x* − x₀‖₂", fontsize=8)
ax.legend(fontsize=7)
ax.tick_params(labelsize=7)
fig.suptitle("From global to local AM: argmax log p(ω_c|x) − λ‖x − x̄‖² − η‖x − x₀‖²",
             fontsize=9)
save_figure(fig, out / "am_local.png")

results["claims"] = [
    claim("adding −η‖x − x₀‖² moves the prototype from global to local: x* → x₀ as η grows",
          "from global to local AM", results["distance_decreasing"]
          and bool(np.all(dist[:, -1] < 0.1 * dist[:, 0])),
          f"‖x* − x₀‖ from {dist[:, 0].mean():.2f} (η = {etas[0]:g}) to {dist[:, -1].mean():.3f} "
          f"(η = {etas[-1]:g}), mean over {n_d} digits"),
]
results["seconds"] = time.perf_counter() - start
update_results("am_local", results, path=out / "results.json")
print(f"wrote {out / 'am_local.png'} in {results['seconds']:.1f} s")
