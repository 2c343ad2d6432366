"""How fast is LRP with lrpjax? Side by side with the gradient (and with Zennit) in one process.

    .venv/bin/python benchmarks/lrp_speed.py [--full] [--quick] [--only mlp,cnn,vgg]
                                             [--reps 10] [--vgg-reps 3] [--json PATH]
                                             [--zennit-python PATH | --no-zennit]
                                             [--zennit-device auto|cpu|cuda]
                                             [--xla auto|default|eigen|both]
                                             [--precision auto|default|highest|both]

Every method is one ``jax.jit`` of a pure function of (parameters, x, target) (the functional
NNX form: the weights are arguments, not baked-in constants). Reported apart: the first call
(trace + compile + one run, seconds) and the steady state (median ms of ``--reps`` calls after
it, each ``block_until_ready``). The methods are timed round-robin, so load on a shared machine
hits them alike and the LRP / gradient ratios stay meaningful.

Nets (random weights, inputs uniform in [0, 1)): the MLP 784-300-100-10 (batch 16); a ~1M
parameter CNN on 28x28x1 (conv5x5x32 relu pool2, conv5x5x64 relu pool2, dense 300 relu, dense
10) with 2x2 average and with max pooling (batch 16, 64); VGG-16 on 224x224x3 (batch 1; batch 8
with ``--full``); ``--quick`` skips VGG. VGG uses ``--vgg-reps`` (3) repetitions.

On CPU every method is also compiled with ``lrpjax.cpu_compiler_options()`` (rows "eigen":
Eigen's multi-threaded convolutions instead of YNNPACK's, which ran unfused convolutions on one
thread on 2 cores; see lrpjax/xla.py) and timed in the same round robin as the defaults.
On a GPU every method is also run under ``jax.default_matmul_precision("highest")`` (rows
"highest": true float32 products instead of the default TF32 on Ampere and later GPUs;
``--precision both`` on CPU gives "highest" and "eigen+highest" rows), and the last column of
each default-precision row is then its heatmap's relative error against its "highest" twin
(same compiler options), ||R_default - R_highest|| / ||R_highest||.

Zennit (PyTorch) runs the same weights in a subprocess (benchmarks/_zennit_speed.py, in the torch
venv .zennit-venv, torch threads = CPU count), skipped when that venv is missing; on a GPU
(``--zennit-device auto`` follows JAX's backend) on CUDA, with torch's defaults (TF32
convolutions, float32 matrix products). benchmarks/device_check.sh runs this script on a lent
GPU. Timings are
printed and written (``--json``), never asserted. Targets: LRP-eps <= 1.1x the gradient,
EpsilonGammaBox <= 1.5x, lrpjax >= 3x faster than Zennit per heatmap.

What bounds the ratios (count the convolution-sized products per layer): the gradient costs a
layer's forward product and one transpose. LRP-eps reuses the forward output: forward + one
transpose, ~1x. z+ on a ReLU-fed layer (proven by lrpjax.signs): forward + W+ a + one transpose,
~1.5x. Gamma on a ReLU-fed layer whose output feeds a ReLU (both proven by lrpjax.signs: a >= 0,
and no relevance reaches z < 0): denominators z + gamma (W+ a + b+) -- one extra product --
and R = a (W + gamma W+)^T s_p, one transpose: ~1.5x. Without those proofs Gamma needs both
s_p and s_n, two transposes: twice the gradient's FLOPs for that layer. ZBox on the input layer
adds a transpose to the (1- or 3-channel) input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lrpjax
from lrpjax import layers
from lrpjax.composites import EpsilonGammaBox, EpsilonPlusFlat, Uniform
from lrpjax.rules import Epsilon

HERE = Path(__file__).resolve().parent
ZENNIT_PYTHON = HERE.parent / ".zennit-venv" / "bin" / "python"
TARGETS = {"LRP-eps": 1.1, "EpsilonGammaBox": 1.5}  # max ratio to the gradient
ZENNIT_TARGET = 3.0  # min speed-up over Zennit per heatmap
COMPOSITES = {"LRP-eps": Uniform(Epsilon(1e-6)), "EpsilonPlusFlat": EpsilonPlusFlat(),
              "EpsilonGammaBox": EpsilonGammaBox(0.0, 1.0)}


# ---------------------------------------------------------------- nets as layer specs
def mlp_spec() -> list:
    return [("dense", 300), ("relu",), ("dense", 100), ("relu",), ("dense", 10)]


def cnn_spec(pool: str) -> list:
    return [("conv", 5, 32), ("relu",), (pool,), ("conv", 5, 64), ("relu",), (pool,),
            ("flatten",), ("dense", 300), ("relu",), ("dense", 10)]


def vgg16_spec() -> list:
    spec: list = []
    for n_convs, width in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]:
        spec += [("conv", 3, width), ("relu",)] * n_convs + [("maxpool",)]
    return spec + [("flatten",), ("dense", 4096), ("relu",), ("dense", 4096), ("relu",),
                   ("dense", 1000)]


def build(spec: list, in_shape: tuple, seed: int = 0) -> nnx.Sequential:
    """An NNX net of nnx.Conv / nnx.Linear and lrpjax.layers modules (default Flax init)."""
    rngs, mods, shape = nnx.Rngs(seed), [], tuple(in_shape)
    for kind, *args in spec:
        if kind == "conv":
            mods.append(nnx.Conv(shape[-1], args[1], (args[0], args[0]), padding="SAME",
                                 rngs=rngs))
            shape = (*shape[:2], args[1])
        elif kind == "dense":
            mods.append(nnx.Linear(shape[-1], args[0], rngs=rngs))
            shape = (args[0],)
        elif kind in ("avgpool", "maxpool"):
            mods.append((layers.AvgPool if kind == "avgpool" else layers.MaxPool)(2))
            shape = (shape[0] // 2, shape[1] // 2, shape[2])
        elif kind == "flatten":
            mods.append(layers.Flatten())
            shape = (int(np.prod(shape)),)
        else:
            mods.append(layers.ReLU())
    return nnx.Sequential(*mods)


def n_params(model: nnx.Module) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------- lrpjax timing
def in_precision(fn, precision: str | None):
    """fn() under jax.default_matmul_precision(precision); jit caches each precision apart."""
    if precision is None:
        return fn

    def call():
        with jax.default_matmul_precision(precision):
            return fn()
    return call


def methods(graphdef, options: dict | None = None) -> dict:
    """name -> jitted f(state, x, target); the model is rebuilt from its state inside."""
    def jit(f):
        return jax.jit(lambda state, x, t: f(nnx.merge(graphdef, state), x, t),
                       compiler_options=options or None)

    fns = {"forward": jit(lambda m, x, t: m(x)),
           "gradient": jit(lambda m, x, t: lrpjax.gradient(m, x, target=t))}
    for name, comp in COMPOSITES.items():
        fns[name] = jit(lambda m, x, t, c=comp: lrpjax.relevance(m, x, composite=c, target=t))
    return fns


def time_round_robin(calls: dict, reps: int) -> tuple[dict, dict, dict]:
    """(first-call s, all times ms, outputs) per name; timed calls alternate between names."""
    first, outs, times = {}, {}, {name: [] for name in calls}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        outs[name] = jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    for _ in range(reps):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(1e3 * (time.perf_counter() - t0))
    return first, times, outs


# ---------------------------------------------------------------- Zennit (subprocess)
def run_zennit(python: Path, model, spec, in_shape, inputs: dict, reps: int, tmp: str,
               device: str = "cpu"):
    """Zennit's medians and heatmaps for the same weights and inputs, or None on failure."""
    params, i = {}, 0
    for m in model.layers:
        if isinstance(m, nnx.Conv | nnx.Linear):  # lrpjax layout; the helper converts
            params[f"kernel{i}"] = np.asarray(m.kernel[...])
            params[f"bias{i}"] = np.asarray(m.bias[...])
            i += 1
    data = {f"x_{n}": np.asarray(x) for n, (x, _) in inputs.items()}
    data |= {f"t_{n}": np.asarray(t) for n, (_, t) in inputs.items()}
    path, prefix = os.path.join(tmp, "net.npz"), os.path.join(tmp, "zennit")
    np.savez(path, spec=json.dumps(spec), in_shape=np.asarray(in_shape),
             n_classes=spec[-1][1], **params, **data)
    cmd = [str(python), str(HERE / "_zennit_speed.py"), path, prefix, "--reps", str(reps),
           "--threads", str(os.cpu_count()), "--device", device]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    os.remove(path)
    if proc.returncode != 0:
        print(f"  Zennit failed (skipped):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    with open(prefix + ".json") as f:
        meta = json.load(f)
    with np.load(prefix + ".npz") as z:
        meta["heatmaps"] = dict(z)
    return meta


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also VGG-16 at batch 8 (slow)")
    ap.add_argument("--quick", action="store_true", help="skip VGG-16 (a 1-2 minute check)")
    ap.add_argument("--only", default="mlp,cnn,vgg", help="comma list of mlp, cnn, vgg")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--vgg-reps", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    ap.add_argument("--zennit-python", type=Path, default=ZENNIT_PYTHON)
    ap.add_argument("--no-zennit", action="store_true")
    ap.add_argument("--zennit-device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--xla", default="auto", choices=("auto", "default", "eigen", "both"),
                    help="XLA:CPU convolutions: YNNPACK (default), Eigen "
                         "(lrpjax.cpu_compiler_options()) or both side by side; auto = both on "
                         "CPU, default elsewhere")
    ap.add_argument("--precision", default="auto", choices=("auto", "default", "highest", "both"),
                    help="float32 products: the backend's default (TF32 on recent GPUs), "
                         "'highest' (true float32) or both side by side; auto = both on GPU, "
                         "default elsewhere")
    args = ap.parse_args()
    reps = args.reps
    only = set(args.only.split(","))
    if args.quick:
        only.discard("vgg")
    found = shutil.which(str(args.zennit_python))  # a path, or a name on PATH ("python3")
    zennit = None if args.no_zennit or found is None else Path(found)
    zennit_device = args.zennit_device
    if zennit_device == "auto":
        zennit_device = "cuda" if jax.default_backend() == "gpu" else "cpu"

    xla_options = {"default": {}, "eigen": lrpjax.cpu_compiler_options()}
    if args.xla == "auto":
        args.xla = "both" if xla_options["eigen"] else "default"
    if args.precision == "auto":
        args.precision = "both" if jax.default_backend() == "gpu" else "default"
    precisions = {"default": [None], "highest": ["highest"], "both": [None, "highest"]}
    # config name -> (compiler options, matmul precision; None = the process default)
    configs, highest_twin = {}, {}
    for xla_name, opts in xla_options.items():
        if args.xla not in (xla_name, "both"):
            continue
        for prec in precisions[args.precision]:
            name = xla_name if prec is None else (
                "highest" if xla_name == "default" else f"{xla_name}+highest")
            configs[name] = (opts, prec)
            if prec is not None and args.precision == "both":
                highest_twin[xla_name] = name
    process_default = jax.config.jax_default_matmul_precision or "backend default"
    load = os.getloadavg()
    header = {"device": str(jax.devices()), "jax": jax.__version__, "cpu_count": os.cpu_count(),
              "loadavg_1_5_15": load, "reps": reps, "vgg_reps": args.vgg_reps,
              "configs": {k: {"compiler_options": o, "matmul_precision": p or process_default}
                          for k, (o, p) in configs.items()}}
    print(f"device {header['device']}  jax {jax.__version__}  CPUs {os.cpu_count()}  "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"Zennit: {zennit or 'not available (skipped)'}")
    print("configs: " + "; ".join(f"{k} = compiler options {o}, matmul precision "
                                  f"{p or process_default}" for k, (o, p) in configs.items())
          + "\n")

    nets = []  # (name, spec, input shape, batches, repetitions)
    if "mlp" in only:
        nets.append(("MLP 784-300-100-10", mlp_spec(), (784,), [16], reps))
    if "cnn" in only:
        for pool in ("avgpool", "maxpool"):
            nets.append((f"CNN {pool}", cnn_spec(pool), (28, 28, 1), [16, 64], reps))
    if "vgg" in only:
        nets.append(("VGG-16", vgg16_spec(), (224, 224, 3), [1, 8] if args.full else [1],
                        args.vgg_reps))

    cols = ("model", "batch", "config", "method", "median ms", "min ms", "1st call s", "x grad",
            "Zennit ms", "min ms", "Zennit/lrpjax", "(min)", "rel.err", "vs f32")
    fmt = ("{:<18} {:>5} {:<13} {:<15} {:>9} {:>8} {:>10} {:>6} {:>9} {:>8} {:>13} {:>5} {:>7}"
           " {:>7}")
    rows = []
    for name, spec, in_shape, batches, n_reps in nets:
        model = build(spec, in_shape)
        graphdef, state = nnx.split(model)
        fns = {(cfg, m): (f, prec) for cfg, (opts, prec) in configs.items()
               for m, f in methods(graphdef, opts).items()}
        print(f"{name}: {n_params(model) / 1e6:.2f}M parameters, {n_reps} repetitions")
        print(fmt.format(*cols))
        inputs, results = {}, {}
        for n in batches:
            x = jax.random.uniform(jax.random.key(n), (n, *in_shape))
            t = jnp.argmax(model(x), axis=-1)  # explain the prediction (eager, not timed)
            inputs[n] = (x, t)
            calls = {key: in_precision(lambda f=f, s=state, x=x, t=t: f(s, x, t), prec)
                     for key, (f, prec) in fns.items()}
            results[n] = time_round_robin(calls, n_reps)
        z = None
        if zennit is not None:
            with tempfile.TemporaryDirectory() as tmp:
                z = run_zennit(zennit, model, spec, in_shape, inputs, n_reps, tmp, zennit_device)
        for n in batches:
            first, times, outs = results[n]
            med = {key: float(np.median(v)) for key, v in times.items()}
            for key in fns:
                cfg, m = key
                row = {"model": name, "batch": n, "config": cfg, "method": m, "median_ms": med[key],
                       "min_ms": min(times[key]), "first_call_s": first[key],
                       "ratio_to_gradient": med[key] / med[(cfg, "gradient")],
                       "times_ms": times[key]}
                zr = z["results"][str(n)].get(m) if z else None
                if zr:
                    row |= {"zennit_median_ms": zr["median_ms"], "zennit_min_ms": min(zr["times_ms"]),
                            "zennit_first_call_s": zr["first_call_s"],
                            "zennit_over_lrpjax": zr["median_ms"] / med[key],
                            "zennit_over_lrpjax_min": min(zr["times_ms"]) / min(times[key]),
                            "zennit_times_ms": zr["times_ms"]}
                    if f"{m}_{n}" in z["heatmaps"]:
                        row["rel_err_vs_zennit"] = rel_err(outs[key], z["heatmaps"][f"{m}_{n}"])
                twin = highest_twin.get(cfg)
                if twin is not None and m != "forward":
                    row["rel_err_vs_highest"] = rel_err(outs[key], np.asarray(outs[(twin, m)]))
                rows.append(row)

                def f(key, spec=".2f", row=row):
                    return format(row[key], spec) if key in row else "-"
                print(fmt.format(name, n, cfg, m, f("median_ms"), f("min_ms"), f("first_call_s"),
                                 f("ratio_to_gradient"), f("zennit_median_ms"),
                                 f("zennit_min_ms"), f("zennit_over_lrpjax", ".1f"),
                                 f("zennit_over_lrpjax_min", ".1f"), f("rel_err_vs_zennit", ".0e"),
                                 f("rel_err_vs_highest", ".0e")))
        if z:
            header["zennit"] = {k: z.get(k, "cpu") for k in ("torch", "zennit", "threads",
                                                               "device")}
            print("Zennit {zennit}, torch {torch}, {threads} threads, {device}".format(
                **header["zennit"]))
        print()

    print("LRP / gradient and Zennit / lrpjax (steady-state medians) against the targets:")
    for r in rows:
        if r["method"] in COMPOSITES:
            limit = TARGETS.get(r["method"])
            ok = "" if limit is None else f" (target <= {limit}x): " + (
                "ok" if r["ratio_to_gradient"] <= limit else "MISSED")
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<16} "
                  f"{r['ratio_to_gradient']:.2f}x gradient{ok}")
        if r["method"] in COMPOSITES and "zennit_over_lrpjax" in r:
            ok = "ok" if r["zennit_over_lrpjax"] >= ZENNIT_TARGET else "MISSED"
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<16} "
                  f"{r['zennit_over_lrpjax']:.1f}x faster than Zennit "
                  f"(target >= {ZENNIT_TARGET}x): {ok}")
    errs = [r for r in rows if "rel_err_vs_highest" in r]
    if errs:
        tf32 = (" (TF32 on Ampere and later GPUs)" if jax.default_backend() == "gpu"
                and process_default == "backend default" else "")
        print(f"\nHeatmaps at matmul precision '{process_default}'{tf32} against 'highest' "
              "(true float32), ||dR|| / ||R||:")
        for r in errs:
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<16} "
                  f"{r['rel_err_vs_highest']:.1e}")
    header["loadavg_at_end"] = os.getloadavg()
    print("\nload average at the end: {:.2f} {:.2f} {:.2f}".format(*header["loadavg_at_end"]))
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
