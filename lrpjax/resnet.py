"""A small ResNet for 28 x 28 MNIST, its training loop, and relevance sums layer by layer.

:class:`ResNet` follows He et al. (2016): a 3x3 stem conv-BN-ReLU (stride 2: 28 -> 14, a 4x
cheaper network on CPU than stride 1 at the same accuracy), one stage of BasicBlocks per entry of
``widths`` (conv-BN-ReLU-conv-BN plus the skip, a 1x1 conv-BN projection where the shape
changes; stages after the first halve the resolution), global average pooling and a dense head.
Everything LRP must see is a module: residual sums are :class:`lrpjax.layers.Add` (Norm rule:
proportional split between the branches), ReLUs are :class:`lrpjax.layers.ReLU` (Pass) and the
global pool is :class:`lrpjax.layers.AvgPool` over the whole final feature map (Norm).
Convolutions have no bias (BatchNorm supplies it); :func:`lrpjax.canonizers.fold_batchnorm`
folds each BN (Ioffe & Szegedy 2015) into its conv before explaining.

:func:`train_resnet` is a short AdamW loop with BatchNorm in training mode (batch statistics,
running averages updated each step); it leaves the model in ``eval()`` mode.

:func:`layer_relevance` reports the relevance sum arriving at (``r_out``) and leaving
(``r_in``) every layer, per sample: the check that relevance neither vanishes nor explodes
through a residual network. It adds a zero "probe" to each layer's inputs and outputs in the LRP
view; the cotangent of a probe is the relevance at that point (LRP is one VJP, see
:mod:`lrpjax.core`). ``python -m lrpjax.resnet`` trains, folds and explains end to end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import layers, layerwise
from .composites import Composite
from .explain import output_relevance as output_relevance_fn

__all__ = [
    "BasicBlock",
    "LayerRelevance",
    "RelevanceTrace",
    "ResNet",
    "layer_relevance",
    "train_resnet",
]

Dtype = Any


class BasicBlock(nnx.Module):
    """relu(bn2(conv2(relu(bn1(conv1(a))))) + shortcut(a)), shortcut = bn(conv1x1(a)) or a."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 rngs: nnx.Rngs, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32):
        conv = partial(nnx.Conv, use_bias=False, padding="SAME", rngs=rngs, dtype=dtype,
                       param_dtype=param_dtype)
        bn = partial(nnx.BatchNorm, momentum=0.9, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv1 = conv(in_channels, out_channels, (3, 3), strides=stride)
        self.bn1 = bn(out_channels)
        self.relu1 = layers.ReLU()
        self.conv2 = conv(out_channels, out_channels, (3, 3))
        self.bn2 = bn(out_channels)
        self.project = stride != 1 or in_channels != out_channels
        if self.project:
            self.proj = conv(in_channels, out_channels, (1, 1), strides=stride)
            self.proj_bn = bn(out_channels)
        self.add = layers.Add()
        self.relu2 = layers.ReLU()

    def __call__(self, a: jax.Array) -> jax.Array:
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(a)))))
        skip = self.proj_bn(self.proj(a)) if self.project else a
        return self.relu2(self.add(h, skip))


class ResNet(nnx.Module):
    """stem -> stages of ``blocks`` BasicBlocks (one stage per width) -> global avg pool -> dense.

    Input N x ``size`` x ``size`` x ``in_channels`` (28 x 28 x 1 for MNIST); output the
    ``num_classes`` logits. ``widths=(16, 32)``: 19.7k parameters, feature maps 14 x 14 and
    7 x 7 (``stem_stride=2``). BatchNorm momentum 0.9 (short training runs).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32), *,
                 rngs: nnx.Rngs, blocks: int = 1, in_channels: int = 1, size: int = 28,
                 stem_stride: int = 2, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32):
        if not widths or blocks < 1:
            raise ValueError(f"need at least one stage and one block, got widths={widths}, "
                             f"blocks={blocks}")
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.widths = tuple(int(w) for w in widths)
        self.stem = nnx.Conv(in_channels, widths[0], (3, 3), strides=stem_stride, padding="SAME",
                             use_bias=False, **kw)
        size = -(-size // stem_stride)  # SAME padding: ceil(size / stride)
        self.stem_bn = nnx.BatchNorm(widths[0], momentum=0.9, rngs=rngs, dtype=dtype,
                                     param_dtype=param_dtype)
        self.stem_relu = layers.ReLU()
        stages, c = [], widths[0]
        for i, w in enumerate(self.widths):
            stage = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                size = -(-size // stride)  # SAME padding: ceil(size / stride)
                stage.append(BasicBlock(c, w, stride, **kw))
                c = w
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        self.pool = layers.AvgPool(size)  # global average pooling over the final size x size
        self.flatten = layers.Flatten()
        self.head = nnx.Linear(c, num_classes, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.stem_relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            for block in stage:
                a = block(a)
        return self.head(self.flatten(self.pool(a)))


# ---------------------------------------------------------------- training
def train_resnet(model: nnx.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int = 4,
                 batch_size: int = 64, learning_rate: float = 1e-2, weight_decay: float = 1e-4,
                 seed: int = 0, time_limit: float | None = None) -> dict[str, Any]:
    """Train ``model`` in place with BatchNorm in training mode (cross-entropy, AdamW with
    linear warm-up over 10 % of the steps and cosine decay to 0); returns a record (steps,
    seconds, losses per epoch) and leaves the model in ``eval()`` mode.

    With ``time_limit`` (seconds, compilation included) the schedule is re-planned from the
    measured step time, so a slow machine trains fewer steps but still anneals to 0.
    """
    n = len(images)
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training images")
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay))
    opt_state = tx.init(params)

    def loss_fn(m: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, rest, opt_state, x, y, lr):
        m = nnx.merge(graphdef, params, rest)
        loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)  # updates m's running statistics
        updates, opt_state = tx.update(grads, opt_state, params)
        _, _, rest = nnx.split(m, nnx.Param, ...)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    def lr_at(k: int, total: int) -> float:
        warm = max(1, total // 10)
        return learning_rate * min((k + 1) / warm, 0.5 * (1 + np.cos(np.pi * min(k / total, 1))))

    images, labels = jnp.asarray(images), jnp.asarray(labels)
    rng, losses, done = np.random.default_rng(seed), [], 0
    total = planned = epochs * steps
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size)
        epoch = []
        for idx in order:
            params, rest, opt_state, loss = step(params, rest, opt_state, images[idx],
                                                 labels[idx], lr_at(done, total))
            epoch.append(float(loss))  # synchronous: the clock below measures real steps
            done += 1
            if done == 1:
                first = time.perf_counter()
            elif time_limit is not None and done % 10 == 0:
                now = time.perf_counter()
                left = time_limit - (now - start)
                total = min(planned, done + max(0, int(left / ((now - first) / (done - 1)))))
            if done >= total:
                break
        if epoch:
            losses.append(float(np.mean(epoch)))
        if done >= total:
            break
    nnx.update(model, params, rest)
    model.eval()
    return {"steps": done, "seconds": round(time.perf_counter() - start, 2), "losses": losses}


# ---------------------------------------------------------------- relevance layer by layer
@dataclass(frozen=True)
class LayerRelevance:
    """Per-sample relevance sums at one layer: ``r_out`` arriving at its output(s), ``r_in``
    leaving through its input(s) (summed over inputs, e.g. both branches of an ``Add``)."""

    path: str
    type_name: str
    rule: str
    r_out: np.ndarray
    r_in: np.ndarray


@dataclass(frozen=True)
class RelevanceTrace:
    """``rows`` in forward order; ``output`` = sum of the initial relevance, ``input`` = sum of
    the heatmap, per sample; ``heatmap`` = the input relevance (as :func:`lrpjax.relevance`)."""

    rows: tuple[LayerRelevance, ...]
    output: np.ndarray
    input: np.ndarray
    heatmap: np.ndarray

    def __str__(self) -> str:
        lines = [(f"{'layer':<24} {'rule':<22} {'mean R_out':>12} {'mean R_in':>12} "
                 f"{'max |R_in|':>11}"),
                 f"{'(output)':<24} {'':<22} {self.output.mean():>12.5g}"]
        for r in self.rows:
            lines.append(f"{r.path:<24} {r.rule[:22]:<22} {r.r_out.mean():>12.5g} "
                         f"{r.r_in.mean():>12.5g} {np.abs(r.r_in).max():>11.3g}")
        lines.append(f"{'(input)':<24} {'':<22} {'':>12} {self.input.mean():>12.5g}")
        return "\n".join(lines)


def _sum(r: np.ndarray) -> np.ndarray:
    return r.reshape(r.shape[0], -1).sum(axis=1)


def layer_relevance(model: nnx.Module, x: jax.Array, *, composite: Composite,
                    target: Any = None, output_relevance: str = "logit",
                    strict: bool = True) -> RelevanceTrace:
    """Relevance sums per sample at every layer of ``model`` (:func:`lrpjax.layerwise.
    layer_relevance`, summed). Same arguments as :func:`lrpjax.relevance`;
    ``print(layer_relevance(...))`` shows a table. The heatmap's sum is ``.input``; a layer
    whose rule conserves has ``r_in == r_out``. A module called several times reports the
    totals over its calls.
    """
    calls, heatmap = layerwise.layer_relevance(model, x, composite=composite, target=target,
                                               output_relevance_mode=output_relevance,
                                               strict=strict)
    totals: dict[str, list] = {}
    for c in calls:
        r_in = sum(_sum(r) for r in c.r_in)
        t = totals.setdefault(c.path, [c, np.zeros_like(r_in), np.zeros_like(r_in)])
        t[1], t[2] = t[1] + _sum(c.r_out), t[2] + r_in
    rows = tuple(LayerRelevance(path, c.kind, type(c.rule).__name__ if c.rule is not None
                                else f"gradient ({c.kind})", r_out, r_in)
                 for path, (c, r_out, r_in) in totals.items())
    y = np.asarray(nnx.merge(*nnx.split(model))(x))
    out = _sum(np.asarray(output_relevance_fn(jnp.asarray(y), target, output_relevance)))
    return RelevanceTrace(rows, out, _sum(heatmap), heatmap)


# ---------------------------------------------------------------- end to end
def main(epochs: int = 4, time_limit: float = 60.0, n_explain: int = 32) -> dict[str, Any]:
    """Train on mnist5k (<= ``time_limit`` s), fold BN, explain with three composites and print
    test accuracy, per-layer relevance sums and conservation (sum R_in / f_c(x))."""
    from . import composites as C
    from .canonizers import fold_batchnorm
    from .data import data_range, load_mnist
    from .train import accuracy

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
        trace = layer_relevance(folded, x, composite=comp)
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
    main()
