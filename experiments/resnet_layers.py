"""A ResNet explained end to end: train it (mnist5k, time-limited), fold its BatchNorms, and
print per-layer relevance sums and conservation for three composites.

    python experiments/resnet_layers.py [--epochs 4] [--time-limit 60]
"""

from __future__ import annotations

import argparse
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpjax import composites as C
from lrpjax.canonizers import fold_batchnorm
from lrpjax.lab.data import data_range, load_mnist
from lrpjax.lab.resnet import ResNet
from lrpjax.lab.train import accuracy, train_resnet
from lrpjax.layerwise import relevance_sums


def main(epochs: int = 4, time_limit: float = 60.0, n_explain: int = 32) -> dict[str, Any]:
    """Train on mnist5k (<= ``time_limit`` s), fold BN, explain with three composites and print
    test accuracy, per-layer relevance sums and conservation (sum R_in / f_c(x))."""
    train, test = load_mnist("train", source="mnist5k"), load_mnist("test", source="mnist5k")
    model = ResNet(10, (16, 32), rngs=nnx.Rngs(0))
    record = train_resnet(model, train.images, train.labels, epochs=epochs,
                          time_limit=time_limit)
    acc = accuracy(model, test.images, test.labels)
    print(f"ResNet{model.widths}: {record['steps']} steps in {record['seconds']} s, "
          f"test accuracy {acc:.4f} on {len(test.labels)} mnist5k digits")
    x = jnp.asarray(test.images[:n_explain])
    folded = fold_batchnorm(model, x)
    f = np.asarray(folded(x)).max(axis=1)
    out: dict[str, Any] = {"accuracy": acc, "train": record, "composites": {}}
    for name, comp in (("EpsilonPlus", C.EpsilonPlus()),
                       ("EpsilonGammaBox", C.EpsilonGammaBox(*data_range())),
                       ("Alpha1Beta0", C.Alpha1Beta0())):
        trace = relevance_sums(folded, x, composite=comp)
        heat = trace.heatmap
        ratio = trace.input / f
        worst = max(float(np.abs(r.r_in).max()) for r in trace.rows)
        print(f"\n{name}: finite {bool(np.isfinite(heat).all())}, sum R_in / f_c(x) median "
              f"{np.median(ratio):.4f} [{ratio.min():.4f}, {ratio.max():.4f}], largest "
              f"|per-layer sum| {worst:.4g} (max f_c(x) {f.max():.4g})\n{trace}")
        out["composites"][name] = {"ratio_median": float(np.median(ratio)), "max_layer": worst,
                                   "finite": bool(np.isfinite(heat).all())}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=60.0)
    args = parser.parse_args()
    main(epochs=args.epochs, time_limit=args.time_limit)
