"""Train (or load from checkpoints/) the MNIST models explained by the other experiments.

Writes ``<out>/test_digits.png`` (test digits with the CNN's predictions, mistakes framed in red) and
the "models" section of ``<out>/results.json`` (test accuracies, training times, data source).

    python experiments/train_models.py            # quick defaults (~1-2 min on 2 CPU cores)
    python experiments/train_models.py --full     # longer training
    python experiments/train_models.py --smoke    # seconds: tiny runs in a temporary cache
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lrpjax.files import update_results
from lrpjax.lab.data import load_mnist
from lrpjax.lab.plot import grid, save_figure
from lrpjax.lab.train import TrainConfig, accuracy, load_or_train, logits

NAMES = ["mlp", "cnn", "cnn_max", "cnn_nonpos", "cnn_strided"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="longer training (not the quick default)")
parser.add_argument("--smoke", action="store_true", help="tiny runs in a temporary cache (tests)")
parser.add_argument("--out", default="figures", help="folder for the PNG and results.json")
parser.add_argument("--source", default="auto", choices=["auto", "full", "mnist5k"])
parser.add_argument("--cache-dir", default="checkpoints")
args = parser.parse_args()
out = Path(args.out)
start = time.perf_counter()

test = load_mnist("test", source=args.source)
smoke_cache = tempfile.TemporaryDirectory(prefix="lrpjax-smoke-") if args.smoke else None
cache_dir = smoke_cache.name if smoke_cache else args.cache_dir

# ---- train or load every model, then evaluate it on the whole test split
results: dict = {"data_source": test.source, "n_test": len(test.labels),
                 "mode": "smoke" if args.smoke else ("full" if args.full else "quick")}
models = {}
for name in NAMES:
    config = None
    if args.smoke:  # one epoch on 128 digits: checks the plumbing, not the accuracy
        config = TrainConfig(model=name, source=test.source, epochs=1, batch_size=32, n_train=128)
    model, card = load_or_train(name, source=test.source, quick=not args.full,
                                cache_dir=cache_dir, config=config, verbose=not args.smoke)
    models[name] = model
    results[name] = {
        "test_accuracy": accuracy(model, test.images, test.labels),
        "train_time_s": card["train_time_s"],
        "epochs": card["config"]["epochs"],
        "parameters": card["architecture"]["parameters"],
        "checkpoint": card.get("checkpoint"),
    }
    print(f"{name:>10}: test accuracy {results[name]['test_accuracy']:.4f} "
          f"({len(test.labels)} {test.source} digits), trained in {card['train_time_s']:.1f} s")

# ---- figure: 12 test digits and the first 4 the CNN gets wrong, with its predictions
predicted = logits(models["cnn"], test.images).argmax(-1)
wrong = np.flatnonzero(predicted != test.labels)
shown = list(range(12)) + [int(i) for i in wrong[:4] if i >= 12]
shown += [i for i in range(12, 16) if len(shown) < 16 and i not in shown]
shown = shown[:16]
cells = [test.images[i] for i in shown]
titles = [f"pred {predicted[i]}, true {test.labels[i]}" for i in shown]
fig = grid([cells[:8], cells[8:]], titles=[titles[:8], titles[8:]], kind="image", cell_size=1.3)
for ax, i in zip(fig.axes, shown):
    if predicted[i] != test.labels[i]:
        ax.title.set_color("red")
        for spine in ax.spines.values():
            spine.set_color("red")
            spine.set_linewidth(2)
fig.suptitle(f"CNN on {test.source} test digits (accuracy {results['cnn']['test_accuracy']:.3f})",
             fontsize=9)
save_figure(fig, out / "test_digits.png")

results["runtime_s"] = round(time.perf_counter() - start, 1)
update_results("models", results, path=out / "results.json")
if smoke_cache:
    smoke_cache.cleanup()
print(f"wrote {out / 'test_digits.png'} and the 'models' section of {out / 'results.json'}")
