"""Generate Zennit reference fixtures for lrpjax (tests/fixtures/zennit_*.npz).

lrpjax never imports torch; this script is run by hand, in a separate virtualenv,
to produce reference attributions with Zennit 0.5.1 (the PyTorch LRP reference library).

Setup (once; ``.zennit-venv/`` is git-ignored)::

    python3 -m venv .zennit-venv
    .zennit-venv/bin/pip install torch==2.13.0          # CPU wheel (never plain `torch`: CUDA build)
    echo "torch==2.13.0" > /tmp/zennit-constraints.txt
    .zennit-venv/bin/pip install --no-deps zennit==0.5.1
    .zennit-venv/bin/pip install -c /tmp/zennit-constraints.txt numpy Pillow

torchvision is deliberately NOT installed (the registry build does not work with CPU torch);
zennit 0.5.1 imports ``torchvision.models.resnet`` at start-up, so a tiny stand-in module is
registered in ``sys.modules`` before ``import zennit`` (only zennit.torchvision's ResNet
canonizers use it; none are used here).

Run (from the repo root)::

    .zennit-venv/bin/python tests/zennit/make_fixtures.py
    .zennit-venv/bin/python tests/zennit/check_fixtures.py   # independent re-derivation

Files: zennit_mlp, zennit_mlp_nobias, zennit_cnn, zennit_cnn_nobias, zennit_cnn_maxpool, plus
zennit_mlp_signed (biased MLP, x uniform in [-1, 1): the only fixture whose layer inputs can be
negative, i.e. that exercises the a^- terms of ZPlus / AlphaBeta / Gamma). The biased fixtures
(mlp, mlp_signed, cnn, cnn_maxpool) also hold the zero_params='bias' variant of every rule that
has one (``R__<rule>_zero_bias``, ZERO_BIAS_RULESETS). See SEMANTICS.md.

Layout of every .npz (all float arrays float64):

* ``x``: input, (N, 12) for the MLP, NHWC (N, 8, 8, 1) for the CNNs (torch runs NCHW).
* ``target``: int64 (N,), ``arange(N) % 5``.
* ``logits``: (N, 5) model output.
* ``attr_output``: (N, 5) the output relevance A = one_hot(target, 5) * logits ("logit" mode).
* ``conv{i}_kernel`` HWIO (torch OIHW transposed (2, 3, 1, 0)), ``conv{i}_bias`` (O,),
  ``dense{i}_kernel`` (in, out) (torch weight transposed), ``dense{i}_bias`` (out,); indices in
  call order per layer type.
* ``R__<ruleset>``: input relevance, same shape/layout as ``x`` (Zennit's ``Gradient`` attribution
  with ``attr_output=A``; it already is R_in, it is NOT multiplied by x afterwards).
* ``meta``: JSON string (architecture, rule sets with parameters and per-layer rule assignment as
  read back from the hooks Zennit registered, default stabilizers, versions, attr_output).

The CNN flattens in NHWC order (``x.permute(0, 2, 3, 1).flatten(1)``) so that the dense kernel
is identical to the one lrpjax uses after flattening an NHWC tensor.
"""

from __future__ import annotations

import inspect
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch


def _install_torchvision_stub() -> None:
    """Register a minimal fake ``torchvision`` so that ``import zennit`` works without it."""
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock(torch.nn.Module):  # stand-in, never instantiated
        pass

    class Bottleneck(torch.nn.Module):  # stand-in, never instantiated
        pass

    resnet.BasicBlock = BasicBlock
    resnet.Bottleneck = Bottleneck
    models.resnet = resnet
    tv.models = models
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.models"] = models
    sys.modules["torchvision.models.resnet"] = resnet


_install_torchvision_stub()

import zennit
from zennit import rules as zr
from zennit.attribution import Gradient
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.types import Linear as ZLinear  # Conv1-3d, ConvTranspose1-3d and nn.Linear

OUT_DIR = Path(__file__).resolve().parents[1] / "fixtures"
SEED = 20240601
N_CLASSES = 5
torch.set_default_dtype(torch.float64)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
class NHWCFlatten(torch.nn.Module):
    """Flatten (N, C, H, W) in NHWC order, i.e. like lrpjax's ``x.reshape(N, -1)`` on NHWC."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


def _rand_bias(rng, n, with_bias):
    if not with_bias:
        return np.zeros(n)
    mag = rng.uniform(0.1, 0.3, size=n)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)  # guaranteed both signs
    return mag * rng.permutation(sign)


def make_mlp(rng, with_bias):
    """Dense(12->10) ReLU Dense(10->8) ReLU Dense(8->5); returns (torch model, params, arch)."""
    dims = [12, 10, 8, 5]
    params, layers, arch = {}, [], []
    for i, (fi, fo) in enumerate(itertools.pairwise(dims)):
        kernel = rng.normal(size=(fi, fo)) / np.sqrt(fi)
        bias = _rand_bias(rng, fo, with_bias)
        params[f"dense{i}_kernel"], params[f"dense{i}_bias"] = kernel, bias
        lin = torch.nn.Linear(fi, fo)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(kernel.T))
            lin.bias.copy_(torch.from_numpy(bias))
        layers.append(lin)
        arch.append({"type": "Dense", "name": f"dense{i}", "in": fi, "out": fo})
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
            arch.append({"type": "ReLU"})
    return torch.nn.Sequential(*layers).double().eval(), params, arch


def make_cnn(rng, with_bias, pool):
    """Conv3x3(1->4,p1) ReLU Pool2 Conv3x3(4->6,p1) ReLU Pool2 FlattenNHWC Dense(24->10) ReLU
    Dense(10->5)."""
    pool_cls = {"avg": torch.nn.AvgPool2d, "max": torch.nn.MaxPool2d}[pool]
    pool_name = {"avg": "AvgPool2d", "max": "MaxPool2d"}[pool]
    params, layers, arch = {}, [], []
    for i, (ci, co) in enumerate([(1, 4), (4, 6)]):
        kernel = rng.normal(size=(3, 3, ci, co)) / np.sqrt(9 * ci)  # HWIO
        bias = _rand_bias(rng, co, with_bias)
        params[f"conv{i}_kernel"], params[f"conv{i}_bias"] = kernel, bias
        conv = torch.nn.Conv2d(ci, co, kernel_size=3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))  # HWIO -> OIHW
            conv.bias.copy_(torch.from_numpy(bias))
        layers += [conv, torch.nn.ReLU(), pool_cls(2)]
        arch += [
            {"type": "Conv", "name": f"conv{i}", "in_ch": ci, "out_ch": co, "kernel": [3, 3],
             "stride": [1, 1], "padding": "1 (torch padding=1 == flax 'SAME' for 3x3 stride 1)"},
            {"type": "ReLU"},
            {"type": pool_name, "window": [2, 2], "stride": [2, 2], "padding": "VALID"},
        ]
    layers.append(NHWCFlatten())
    arch.append({"type": "Flatten", "order": "NHWC", "out": 24})
    for i, (fi, fo) in enumerate([(24, 10), (10, 5)]):
        kernel = rng.normal(size=(fi, fo)) / np.sqrt(fi)
        bias = _rand_bias(rng, fo, with_bias)
        params[f"dense{i}_kernel"], params[f"dense{i}_bias"] = kernel, bias
        lin = torch.nn.Linear(fi, fo)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(kernel.T))
            lin.bias.copy_(torch.from_numpy(bias))
        layers.append(lin)
        arch.append({"type": "Dense", "name": f"dense{i}", "in": fi, "out": fo})
        if i == 0:
            layers.append(torch.nn.ReLU())
            arch.append({"type": "ReLU"})
    return torch.nn.Sequential(*layers).double().eval(), params, arch


# --------------------------------------------------------------------------------------------
# rule sets
# --------------------------------------------------------------------------------------------
def _uniform(rule_factory):
    """Zennit's base map (ReLU->Pass, AvgPool->Norm(1e-6), ...) + one rule on every Conv/Linear."""
    return lambda: LayerMapComposite(layer_map=layer_map_base() + [(ZLinear, rule_factory())])


RULESETS = {
    "epsilon": {
        "make": _uniform(lambda: zr.Epsilon(epsilon=0.25)),
        "desc": "LayerMapComposite: Epsilon(epsilon=0.25) on every Conv/Dense",
        "params": {"Epsilon": {"epsilon": 0.25}},
    },
    "epsilon_small": {
        "make": _uniform(lambda: zr.Epsilon(epsilon=1e-6)),
        "desc": "LayerMapComposite: Epsilon(epsilon=1e-6) on every Conv/Dense",
        "params": {"Epsilon": {"epsilon": 1e-6}},
    },
    "zplus": {
        "make": _uniform(lambda: zr.ZPlus()),
        "desc": "LayerMapComposite: ZPlus() on every Conv/Dense",
        "params": {"ZPlus": {"stabilizer": 1e-6}},
    },
    "alpha2beta1": {
        "make": _uniform(lambda: zr.AlphaBeta(alpha=2.0, beta=1.0)),
        "desc": "LayerMapComposite: AlphaBeta(alpha=2, beta=1) on every Conv/Dense",
        "params": {"AlphaBeta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6}},
    },
    "alpha1beta0": {
        "make": _uniform(lambda: zr.AlphaBeta(alpha=1.0, beta=0.0)),
        "desc": "LayerMapComposite: AlphaBeta(alpha=1, beta=0) on every Conv/Dense",
        "params": {"AlphaBeta": {"alpha": 1.0, "beta": 0.0, "stabilizer": 1e-6}},
    },
    "gamma": {
        "make": _uniform(lambda: zr.Gamma(gamma=0.25)),
        "desc": "LayerMapComposite: Gamma(gamma=0.25) on every Conv/Dense",
        "params": {"Gamma": {"gamma": 0.25, "stabilizer": 1e-6}},
    },
    "flat": {
        "make": _uniform(lambda: zr.Flat()),
        "desc": "LayerMapComposite: Flat() on every Conv/Dense",
        "params": {"Flat": {"stabilizer": 1e-6}},
    },
    "wsquare": {
        "make": _uniform(lambda: zr.WSquare()),
        "desc": "LayerMapComposite: WSquare() on every Conv/Dense",
        "params": {"WSquare": {"stabilizer": 1e-6}},
    },
    "zbox_first": {
        "make": lambda: SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [(ZLinear, zr.Epsilon(epsilon=1e-6))],
            first_map=[(ZLinear, zr.ZBox(low=0.0, high=1.0))],
        ),
        "desc": "SpecialFirstLayerMapComposite: ZBox(low=0, high=1) on the first Conv/Dense, "
        "Epsilon(1e-6) on all other Conv/Dense",
        "params": {"ZBox": {"low": 0.0, "high": 1.0, "stabilizer": 1e-6},
                "Epsilon": {"epsilon": 1e-6}},
    },
    "epsilon_plus": {
        "make": lambda: EpsilonPlus(),
        "desc": "zennit.composites.EpsilonPlus() (defaults): ZPlus on Conv, Epsilon on nn.Linear",
        "params": {"ZPlus": {"stabilizer": 1e-6}, "Epsilon": {"epsilon": 1e-6}},
    },
    "epsilon_plus_flat": {
        "make": lambda: EpsilonPlusFlat(),
        "desc": "zennit.composites.EpsilonPlusFlat() (defaults): Flat on the first Conv-or-Dense, "
        "then ZPlus on Conv, Epsilon on nn.Linear",
        "params": {"Flat": {"stabilizer": 1e-6}, "ZPlus": {"stabilizer": 1e-6},
                "Epsilon": {"epsilon": 1e-6}},
    },
    "epsilon_alpha2beta1": {
        "make": lambda: EpsilonAlpha2Beta1(),
        "desc": "zennit.composites.EpsilonAlpha2Beta1() (defaults): AlphaBeta(2,1) on Conv, "
        "Epsilon on nn.Linear",
        "params": {"AlphaBeta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6},
                "Epsilon": {"epsilon": 1e-6}},
    },
    "epsilon_alpha2beta1_flat": {
        "make": lambda: EpsilonAlpha2Beta1Flat(),
        "desc": "zennit.composites.EpsilonAlpha2Beta1Flat() (defaults): Flat on the first "
        "Conv-or-Dense, then AlphaBeta(2,1) on Conv, Epsilon on nn.Linear",
        "params": {"Flat": {"stabilizer": 1e-6},
                "AlphaBeta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6},
                "Epsilon": {"epsilon": 1e-6}},
    },
    "epsilon_gamma_box": {
        "make": lambda: EpsilonGammaBox(low=0.0, high=1.0),
        "desc": "zennit.composites.EpsilonGammaBox(low=0., high=1.) (other args default): ZBox on "
        "the first Conv (only Conv qualifies), Gamma(0.25) on other Conv, Epsilon on nn.Linear",
        "params": {"ZBox": {"low": 0.0, "high": 1.0, "stabilizer": 1e-6},
                "Gamma": {"gamma": 0.25, "stabilizer": 1e-6},
                "Epsilon": {"epsilon": 1e-6}},
    },
}
BASE_PARAMS = {"Norm": {"stabilizer": 1e-6}, "Pass": {}}

ZERO_BIAS_RULESET = {
    "make": _uniform(lambda: zr.Epsilon(epsilon=0.25, zero_params="bias")),
    "desc": "LayerMapComposite: Epsilon(epsilon=0.25, zero_params='bias') on every Conv/Dense "
    "(bias set to 0 inside the rule only; logits/forward keep the bias)",
    "params": {"Epsilon": {"epsilon": 0.25, "zero_params": "bias"}},
}

# The zero_params='bias' variant of every rule that has one (Flat always drops the bias). Only on
# the biased fixtures. Gamma's is the interesting one: its branch mask [z > 0] / [z < 0] comes
# from the real output z = W a + b (the unmodified fifth forward), the denominators drop b.
ZERO_BIAS_RULESETS = {
    "epsilon_zero_bias": ZERO_BIAS_RULESET,
    "zplus_zero_bias": {
        "make": _uniform(lambda: zr.ZPlus(zero_params="bias")),
        "desc": "LayerMapComposite: ZPlus(zero_params='bias') on every Conv/Dense",
        "params": {"ZPlus": {"stabilizer": 1e-6, "zero_params": "bias"}},
    },
    "alpha2beta1_zero_bias": {
        "make": _uniform(lambda: zr.AlphaBeta(alpha=2.0, beta=1.0, zero_params="bias")),
        "desc": "LayerMapComposite: AlphaBeta(alpha=2, beta=1, zero_params='bias') on every "
        "Conv/Dense",
        "params": {"AlphaBeta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6,
                                 "zero_params": "bias"}},
    },
    "gamma_zero_bias": {
        "make": _uniform(lambda: zr.Gamma(gamma=0.25, zero_params="bias")),
        "desc": "LayerMapComposite: Gamma(gamma=0.25, zero_params='bias') on every Conv/Dense "
        "(the z > 0 / z < 0 mask still uses the real output, bias included)",
        "params": {"Gamma": {"gamma": 0.25, "stabilizer": 1e-6, "zero_params": "bias"}},
    },
    "wsquare_zero_bias": {
        "make": _uniform(lambda: zr.WSquare(zero_params="bias")),
        "desc": "LayerMapComposite: WSquare(zero_params='bias') on every Conv/Dense",
        "params": {"WSquare": {"stabilizer": 1e-6, "zero_params": "bias"}},
    },
    "zbox_first_zero_bias": {
        "make": lambda: SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [(ZLinear, zr.Epsilon(epsilon=1e-6))],
            first_map=[(ZLinear, zr.ZBox(low=0.0, high=1.0, zero_params="bias"))],
        ),
        "desc": "SpecialFirstLayerMapComposite: ZBox(low=0, high=1, zero_params='bias') on the "
        "first Conv/Dense, Epsilon(1e-6) on all other Conv/Dense",
        "params": {"ZBox": {"low": 0.0, "high": 1.0, "stabilizer": 1e-6, "zero_params": "bias"},
                   "Epsilon": {"epsilon": 1e-6}},
    },
}


def _default_args():
    """Default arguments of every rule __init__, read from the installed zennit source."""
    out = {}
    for name in ["Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare", "Norm"]:
        sig = inspect.signature(getattr(zr, name).__init__)
        out[name] = {
            k: (v.default if v.default is not inspect.Parameter.empty else "<required>")
            for k, v in sig.parameters.items()
            if k != "self"
        }
    out["Stabilizer"] = {
        "formula": "stab(z) = z + eps * s(z), s(z) = sign(z) + (z == 0) (i.e. +1 at 0)",
        "defaults": {"epsilon": 1e-6, "clip": False, "norm_scale": False},
    }
    out["composites"] = {"epsilon": 1e-6, "stabilizer": 1e-6, "gamma (EpsilonGammaBox)": 0.25,
                         "layer_map_base Norm stabilizer": 1e-6}
    return out


def _layer_names(model):
    """lrpjax-style names for each child of the Sequential, in call order."""
    names, counts = {}, {}
    for idx, mod in model.named_children():
        kind = {
            torch.nn.Linear: "dense", torch.nn.Conv2d: "conv", torch.nn.ReLU: "relu",
            torch.nn.AvgPool2d: "avgpool", torch.nn.MaxPool2d: "maxpool", NHWCFlatten: "flatten",
        }[type(mod)]
        names[idx] = f"{kind}{counts.get(kind, 0)}"
        counts[kind] = counts.get(kind, 0) + 1
    return names


def _assignment(model, composite, spec):
    """Register ``composite`` and read back which hook class landed on which layer."""
    names = _layer_names(model)
    composite.register(model)
    try:
        out = []
        for idx, mod in model.named_children():
            hooks = {
                type(h.__self__).__name__
                for h in mod._forward_pre_hooks.values()
                if isinstance(getattr(h, "__self__", None), zennit.core.Hook)
            }
            assert len(hooks) <= 1, hooks
            rule = hooks.pop() if hooks else None
            params = None
            if rule is not None:
                params = {**BASE_PARAMS, **spec["params"]}[rule]
            out.append({
                "layer": names[idx],
                "torch_module": type(mod).__name__,
                "rule": rule if rule else "none (plain autograd gradient)",
                "params": params,
            })
        return out
    finally:
        composite.remove()


def attribute(model, composite, x_t, target):
    def attr_output(out):
        return torch.nn.functional.one_hot(target, N_CLASSES).to(out) * out.detach()

    x_in = x_t.clone().requires_grad_(True)
    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(x_in, attr_output=attr_output)
    return out.detach(), rel.detach()


def to_nhwc(t):
    a = t.numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


# --------------------------------------------------------------------------------------------
def build(name, model, params, arch, x_np, extra_rulesets=None, dist="uniform[0, 1)"):
    n = x_np.shape[0]
    target = np.arange(n) % N_CLASSES
    x_t = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy() if x_np.ndim == 4 else x_np.copy())
    target_t = torch.from_numpy(target)
    with torch.no_grad():
        logits = model(x_t).numpy()
    attr_out = np.eye(N_CLASSES)[target] * logits

    data = {"x": x_np, "target": target.astype(np.int64), "logits": logits,
            "attr_output": attr_out, **params}
    rulesets = dict(RULESETS)
    rulesets.update(extra_rulesets or {})
    meta_rs = {}
    for rs_name, spec in rulesets.items():
        assignment = _assignment(model, spec["make"](), spec)
        out, rel = attribute(model, spec["make"](), x_t, target_t)
        np.testing.assert_allclose(out.numpy(), logits, rtol=0, atol=1e-12)
        R = to_nhwc(rel)
        assert R.shape == x_np.shape and np.all(np.isfinite(R)), rs_name
        data[f"R__{rs_name}"] = R
        meta_rs[rs_name] = {"description": spec["desc"], "per_layer": assignment}

    meta = {
        "fixture": name,
        "architecture": arch,
        "input": {"shape": list(x_np.shape), "layout": "NHWC" if x_np.ndim == 4 else "NF",
                  "distribution": dist},
        "target": "arange(N) % 5",
        "attr_output": "A = one_hot(target, 5) * logits  (logit mode; passed to "
                       "zennit.attribution.Gradient(model, composite)(x, attr_output=fn) as a "
                       "function of the model output; relevance R_in is the returned attribution "
                       "itself, not multiplied by x)",
        "rulesets": meta_rs,
        "default_args": _default_args(),
        "notes": [
            ("ReLU gets Pass: relevance passes through ReLU unchanged (identity, NOT masked by "
            "the ReLU derivative)."),
            ("AvgPool2d gets Norm(stabilizer=1e-6); MaxPool2d gets no rule: plain gradient "
            "(winner-take-all routing of relevance to the argmax)."),
            "NHWCFlatten is a custom torch module without rule: plain gradient (a permutation).",
            "Bias-free fixtures keep zero-valued bias parameters (not bias=None).",
        ],
        "dtype": "float64",
        "seed": SEED,
        "versions": {"torch": torch.__version__, "zennit": zennit_version(),
                     "numpy": np.__version__, "torchvision": "stub (not installed)"},
    }
    data["meta"] = np.array(json.dumps(meta, indent=1))
    path = OUT_DIR / f"zennit_{name}.npz"
    np.savez_compressed(path, **data)
    return path, data


def zennit_version():
    from importlib.metadata import version

    return version("zennit")


def sanity(name, data, bias_free, model=None):
    logits, target = data["logits"], data["target"]
    tlogit = logits[np.arange(len(target)), target]
    for k, v in data.items():
        if k.startswith("R__"):
            assert np.all(np.isfinite(v)), (name, k)
    sums = data["R__epsilon_small"].reshape(len(target), -1).sum(1)
    err = np.max(np.abs(sums - tlogit))
    msg = f"  {name}: epsilon_small (eps=1e-6) max|sum R - logit_t| = {err:.2e}"
    if bias_free:
        # eps=1e-6 absorbs ~eps * sum_j R_j / z_j per layer (observed ~1e-6); the stored
        # fixture is checked loosely, and exact conservation is checked with eps=1e-12
        # (also for the AvgPool Norm stabilizer, which otherwise absorbs ~1e-7 too).
        assert err < 1e-4 * np.max(np.abs(tlogit)), (name, err)
        x = data["x"]
        x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x.copy())
        tiny = LayerMapComposite(
            layer_map=layer_map_base(1e-12) + [(ZLinear, zr.Epsilon(epsilon=1e-12))])
        _, rel = attribute(model, tiny, x_t, torch.from_numpy(target))
        err12 = np.max(np.abs(rel.numpy().reshape(len(target), -1).sum(1) - tlogit))
        msg += f"; eps=Norm stabilizer=1e-12 (not stored): {err12:.2e}"
        assert err12 < 1e-8, (name, err12)
    print(msg)


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, zennit {zennit_version()}")
    outputs = []
    for with_bias, suffix in [(True, ""), (False, "_nobias")]:
        rng = np.random.default_rng(SEED)
        model, params, arch = make_mlp(rng, with_bias)
        x = np.random.default_rng(SEED + 1).uniform(0.0, 1.0, size=(6, 12))
        extra = ZERO_BIAS_RULESETS if with_bias else None
        path, data = build(f"mlp{suffix}", model, params, arch, x, extra)
        outputs.append((f"mlp{suffix}", not with_bias, model, path, data))
    # Extra (beyond the brief): signed inputs in [-1, 1) so that the a^- branches of
    # ZPlus / AlphaBeta / Gamma are exercised in the first layer (all other fixtures only ever
    # feed non-negative activations into every layer). ZBox(0, 1) is then outside its box but
    # still well defined.
    rng = np.random.default_rng(SEED)
    model, params, arch = make_mlp(rng, True)
    x = np.random.default_rng(SEED + 2).uniform(-1.0, 1.0, size=(6, 12))
    path, data = build("mlp_signed", model, params, arch, x, ZERO_BIAS_RULESETS,
                       dist="uniform[-1, 1)")
    outputs.append(("mlp_signed", False, model, path, data))
    for pool, with_bias, suffix in [("avg", True, ""), ("avg", False, "_nobias"),
                                    ("max", True, "_maxpool")]:
        rng = np.random.default_rng(SEED + 10)
        model, params, arch = make_cnn(rng, with_bias, pool)
        x = np.random.default_rng(SEED + 11).uniform(0.0, 1.0, size=(4, 8, 8, 1))
        path, data = build(f"cnn{suffix}", model, params, arch, x,
                           ZERO_BIAS_RULESETS if with_bias else None)
        outputs.append((f"cnn{suffix}", not with_bias, model, path, data))
    for name, bias_free, model, path, data in outputs:
        sanity(name, data, bias_free, model)
        print(f"  wrote {path.relative_to(OUT_DIR.parents[1])} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
