"""A small ResNet for 28 x 28 MNIST (trained by :func:`lrpjax.lab.train.train_resnet`).

:class:`ResNet` follows He et al. (2016): a 3x3 stem conv-BN-ReLU (stride 2: 28 -> 14, a 4x
cheaper network on CPU than stride 1 at the same accuracy), one stage of BasicBlocks per entry of
``widths`` (conv-BN-ReLU-conv-BN plus the skip, a 1x1 conv-BN projection where the shape
changes; stages after the first halve the resolution), global average pooling and a dense head.
Everything LRP must see is a module: residual sums are :class:`lrpjax.layers.Add` (Norm rule:
proportional split between the branches), ReLUs are :class:`lrpjax.layers.ReLU` (Pass) and the
global pool is :class:`lrpjax.layers.AvgPool` over the whole final feature map (Norm).
Convolutions have no bias (BatchNorm supplies it); :func:`lrpjax.canonizers.fold_batchnorm`
folds each BN (Ioffe & Szegedy 2015) into its conv before explaining.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lrpjax import layers

__all__ = ["BasicBlock", "ResNet"]

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
