"""Zennit's side of benchmarks/lrp_speed.py; runs in the torch venv (.zennit-venv), never in .venv.

    .zennit-venv/bin/python benchmarks/_zennit_speed.py IN.npz OUT_PREFIX --reps N [--threads 2]
                                                        [--device cpu|cuda]

IN.npz (written by lrp_speed.py) holds the net spec (JSON), n_classes, the parameters in
lrpjax layout (conv kernels HWIO, dense kernels (in, out), flatten in NHWC order) and, per batch
size n, the input ``x_<n>`` (NHWC or (n, features)) and the explained class ``t_<n>``. Writes
OUT_PREFIX.json (median ms and first-call s per batch and method) and OUT_PREFIX.npz (the
heatmaps, back in NHWC, so the caller can check that both libraries explained the same net).
With ``--device cuda`` the net and inputs live on the GPU and every timed call ends with
``torch.cuda.synchronize()`` (the counterpart of JAX's ``block_until_ready``). torch's
precision defaults are kept: TF32 convolutions (``cudnn.allow_tf32``), float32 matrix products.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
import types

import numpy as np
import torch


def _stub_torchvision() -> None:
    """zennit 0.5.1 imports torchvision.models.resnet at start-up; only its ResNet canonizers
    use it, so two empty classes are enough (the registry's torchvision fails on CPU torch)."""
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    tv = types.ModuleType("torchvision")
    tv.models = models
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.resnet": resnet})


_stub_torchvision()
from zennit import composites as zc
from zennit import rules as zr
from zennit.attribution import Gradient
from zennit.types import Linear as ZLinear


def build(spec: list, params: np.lib.npyio.NpzFile, in_shape: tuple) -> torch.nn.Sequential:
    """The torch twin of lrpjax's net: HWIO -> OIHW, and the dense layer after the flatten gets
    its rows permuted from NHWC to NCHW flatten order (so torch's plain Flatten is used)."""
    mods, shape, i = [], tuple(in_shape), 0  # shape tracked in NHWC (without batch)
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            k = params[f"kernel{i}"]
            conv = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], padding=k.shape[0] // 2)
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(params[f"bias{i}"])
            mods.append(conv)
            shape, i = (*shape[:2], k.shape[3]), i + 1
        elif kind == "dense":
            k = params[f"kernel{i}"]
            if len(shape) == 3:  # first dense after flatten: rows (h, w, c) -> (c, h, w)
                k = k.reshape(*shape, -1).transpose(2, 0, 1, 3).reshape(k.shape)
            dense = torch.nn.Linear(*k.shape)
            dense.weight.data = torch.from_numpy(np.ascontiguousarray(k.T))
            dense.bias.data = torch.from_numpy(params[f"bias{i}"])
            mods.append(dense)
            shape, i = (k.shape[1],), i + 1
        elif kind == "relu":
            mods.append(torch.nn.ReLU())
        elif kind in ("avgpool", "maxpool"):
            mods.append((torch.nn.AvgPool2d if kind == "avgpool" else torch.nn.MaxPool2d)(2))
            shape = (shape[0] // 2, shape[1] // 2, shape[2])
        elif kind == "flatten":
            mods.append(torch.nn.Flatten())  # keeps `shape` 3-d for the next dense layer
        else:
            raise ValueError(kind)
    return torch.nn.Sequential(*mods).eval()


COMPOSITES = {
    "LRP-eps": lambda: zc.LayerMapComposite(
        layer_map=zc.layer_map_base() + [(ZLinear, zr.Epsilon(epsilon=1e-6))]),
    "EpsilonPlusFlat": lambda: zc.EpsilonPlusFlat(),
    "EpsilonGammaBox": lambda: zc.EpsilonGammaBox(low=0.0, high=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out_prefix")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = np.load(args.inp)
    spec = json.loads(str(data["spec"]))
    in_shape = tuple(int(s) for s in data["in_shape"])
    model = build(spec, data, in_shape).to(device)
    for p in model.parameters():
        p.requires_grad_(False)

    # One model copy per composite, each registered once (no hook churn inside the timing).
    stack = contextlib.ExitStack()
    attributors = {"gradient": stack.enter_context(Gradient(model=model))}
    for name, make in COMPOSITES.items():
        attributors[name] = stack.enter_context(
            Gradient(model=copy.deepcopy(model), composite=make()))

    results, heatmaps = {}, {}
    batches = sorted(int(k[2:]) for k in data.files if k.startswith("x_"))
    for n in batches:
        x_np = data[f"x_{n}"]
        x = torch.from_numpy(np.ascontiguousarray(
            x_np.transpose(0, 3, 1, 2) if x_np.ndim == 4 else x_np)).to(device)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(data[f"t_{n}"]).long(),
                                             int(data["n_classes"])).to(device)

        def forward(x=x):
            with torch.no_grad():
                return model(x)

        calls = {"forward": forward}
        for name, attributor in attributors.items():
            scale = (lambda out, h=onehot: h.to(out)) if name == "gradient" else (
                lambda out, h=onehot: h.to(out) * out.detach())
            calls[name] = lambda a=attributor, s=scale, x=x: a(x, attr_output=s)[1]

        first, times = {}, {name: [] for name in calls}
        for name, fn in calls.items():
            t0 = time.perf_counter()
            out = fn()
            sync()
            first[name] = time.perf_counter() - t0
            if name != "forward":
                a = out.cpu().numpy()
                heatmaps[f"{name}_{n}"] = a.transpose(0, 2, 3, 1) if a.ndim == 4 else a
        for _ in range(args.reps):  # round-robin: every method sees the same machine load
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
        results[str(n)] = {name: {"first_call_s": first[name],
                                  "median_ms": 1e3 * float(np.median(times[name])),
                                  "times_ms": [1e3 * t for t in times[name]]} for name in calls}
    stack.close()
    from importlib.metadata import version
    meta = {"torch": torch.__version__, "zennit": version("zennit"),
            "threads": torch.get_num_threads(), "device": str(device), "results": results}
    with open(args.out_prefix + ".json", "w") as f:
        json.dump(meta, f)
    np.savez(args.out_prefix + ".npz", **heatmaps)


if __name__ == "__main__":
    main()
