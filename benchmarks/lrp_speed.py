"""How fast is LRP with lrpjax? Side by side with the gradient (and with Zennit) in one process.

    .venv/bin/python benchmarks/lrp_speed.py [--full] [--quick] [--only mlp,cnn,vgg]
                                             [--reps 10] [--vgg-reps 3] [--json PATH]
                                             [--zennit-python PATH | --no-zennit]
                                             [--zennit-device auto|cpu|cuda]
                                             [--xla auto|default|eigen|both]
                                             [--precision auto|default|highest|both]
                                             [--signs on|off|both]

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

Sign analysis (``--signs``): by default (on) the presets use the cheaper exact forms that
lrpjax.facts proves. ``--signs off`` times every preset with the analysis off
(rows "<preset>[signs off]"); ``--signs both`` adds "EpsilonPlusFlat[signs off]" and
"EpsilonGammaBox[signs off]" to the same round robin and prints, per net, batch and config, the
saving (off - on) / off of the heatmap time, the FLOPs of both compiled programs and the largest
difference of their heatmaps. ``relevance`` is jitted and the analysis runs at trace time, so
each off variant is its own ``jax.jit`` whose traced function runs inside
``lrpjax.facts.disabled()``, whose state ``relevance`` passes to its inner jit as a static
argument. The summary warns when an off variant's FLOPs equal its on twin's.

Every row also shows the compiled program's FLOPs (XLA's ``cost_analysis()``) and its peak
memory from XLA's ``memory_analysis()``: arguments + outputs + temporaries, in MiB and as a
ratio to the gradient's (same config); target: every preset <= 1.5x the gradient's. Both come
from ``jit(f).lower(...).compile()`` after the timed calls (served from the compilation cache),
"-" where the backend reports nothing.

Zennit (PyTorch) runs the same weights in a subprocess (benchmarks/_zennit_speed.py, in the torch
venv .zennit-venv, torch threads = CPU count), skipped when that venv is missing; on a GPU
(``--zennit-device auto`` follows JAX's backend) on CUDA, with torch's defaults (TF32
convolutions, float32 matrix products). benchmarks/device_check.sh runs this script on a lent
GPU. Timings are
printed and written (``--json``), never asserted. Targets: LRP-eps <= 1.1x the gradient,
EpsilonGammaBox <= 1.5x, lrpjax >= 3x faster than Zennit per heatmap.

What bounds the ratios (count the convolution-sized products per layer): the gradient costs a
layer's forward product and one transpose. LRP-eps reuses the forward output: forward + one
transpose, ~1x. z+ on a ReLU-fed layer (proven by lrpjax.facts): forward + W+ a + one transpose,
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
import lrpjax.facts  # disabled(), for --signs off / both
from lrpjax import layers
from lrpjax.composites import EpsilonGammaBox, EpsilonPlusFlat, Uniform
from lrpjax.rules import Epsilon

HERE = Path(__file__).resolve().parent
ZENNIT_PYTHON = HERE.parent / ".zennit-venv" / "bin" / "python"
TARGETS = {"LRP-eps": 1.1, "EpsilonGammaBox": 1.5}  # max ratio to the gradient
MEMORY_TARGET = 1.5  # max peak memory of a preset, as a ratio to the gradient's
ZENNIT_TARGET = 3.0  # min speed-up over Zennit per heatmap
COMPOSITES = {"LRP-eps": Uniform(Epsilon(1e-6)), "EpsilonPlusFlat": EpsilonPlusFlat(),
              "EpsilonGammaBox": EpsilonGammaBox(0.0, 1.0)}
SIGNS_COMPARED = ("EpsilonPlusFlat", "EpsilonGammaBox")  # also timed signs off with --signs both
OFF = "[signs off]"
# lrpjax.facts.disabled() is read by lrpjax.relevance and passed to its jit as a static
# argument, so the off variants (each its own jax.jit here) compile their own programs.


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


def methods(graphdef, options: dict | None = None, signs: str = "on") -> dict:
    """name -> jitted f(state, x, target); the model is rebuilt from its state inside.

    ``signs``: "on" (the presets as lrpjax runs them), "off" (every preset traced with the sign
    analysis off, named "<preset>[signs off]") or "both" (on, plus SIGNS_COMPARED off)."""
    def jit(f):
        return jax.jit(lambda state, x, t: f(nnx.merge(graphdef, state), x, t),
                       compiler_options=options or None)

    def signs_off(f):  # the analysis off at trace time
        def traced(m, x, t):
            with lrpjax.facts.disabled():
                return f(m, x, t)
        return traced

    fns = {"forward": jit(lambda m, x, t: m(x)),
           "gradient": jit(lambda m, x, t: lrpjax.gradient(m, x, target=t))}
    for name, comp in COMPOSITES.items():
        def rel(m, x, t, c=comp):
            return lrpjax.relevance(m, x, composite=c, target=t)
        if signs != "off":
            fns[name] = jit(rel)
        if signs == "off" or (signs == "both" and name in SIGNS_COMPARED):
            fns[name + OFF] = jit(signs_off(rel))
    return fns


def base_method(m: str) -> str:
    """The preset behind a row name ("EpsilonGammaBox[signs off]" -> "EpsilonGammaBox")."""
    return m.removesuffix(OFF)


def compiled_stats(f, prec: str | None, *args) -> dict:
    """FLOPs and peak memory (arguments + outputs + temporaries) of the compiled ``f(*args)``
    from XLA's cost and memory analyses; keys are left out where the backend reports nothing.
    Called after ``f(*args)`` ran (same precision), so lowering and compiling hit the caches."""
    try:
        compiled = in_precision(lambda: f.lower(*args).compile(), prec)()
    except Exception as e:  # noqa: BLE001 - statistics only
        print(f"  (no compiled statistics: {type(e).__name__}: {e})", file=sys.stderr)
        return {}
    out: dict = {}
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend has a cost analysis
        cost = None
    cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
    flops = cost.get("flops") if isinstance(cost, dict) else None
    if flops is not None and flops >= 0:
        out["flops"] = float(flops)
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - nor a memory analysis
        mem = None
    if mem is not None:
        sizes = {k: getattr(mem, f"{k}_size_in_bytes", None)
                 for k in ("argument", "output", "temp", "alias", "generated_code")}
        sizes = {k: int(v) for k, v in sizes.items() if v is not None}
        if all(k in sizes for k in ("argument", "output", "temp")):
            out["peak_bytes"] = sizes["argument"] + sizes["output"] + sizes["temp"]
        out["memory_bytes"] = sizes
    return out


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
    ap.add_argument("--signs", default="on", choices=("on", "off", "both"),
                    help="the sign analysis (lrpjax.facts) for the presets: on, off, or both "
                         f"({', '.join(SIGNS_COMPARED)} also timed with it off)")
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
              "signs": args.signs,
              "configs": {k: {"compiler_options": o, "matmul_precision": p or process_default}
                          for k, (o, p) in configs.items()}}
    print(f"device {header['device']}  jax {jax.__version__}  CPUs {os.cpu_count()}  "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"Zennit: {zennit or 'not available (skipped)'}")
    print("configs: " + "; ".join(f"{k} = compiler options {o}, matmul precision "
                                  f"{p or process_default}" for k, (o, p) in configs.items())
          + f"\nsign analysis: {args.signs}\n")

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
            "GFLOP", "peak MiB", "x grad", "Zennit ms", "min ms", "Zennit/lrpjax", "(min)",
            "rel.err", "vs f32")
    width = max(15, *(len(m) for m in methods(None, signs=args.signs)))
    fmt = ("{:<18} {:>5} {:<13} {:<WIDTH} {:>9} {:>8} {:>10} {:>6} {:>8} {:>8} {:>6} {:>9}"
           " {:>8} {:>13} {:>5} {:>7} {:>7}").replace("WIDTH", str(width))
    rows = []
    for name, spec, in_shape, batches, n_reps in nets:
        model = build(spec, in_shape)
        graphdef, state = nnx.split(model)
        fns = {(cfg, m): (f, prec) for cfg, (opts, prec) in configs.items()
               for m, f in methods(graphdef, opts, args.signs).items()}
        print(f"{name}: {n_params(model) / 1e6:.2f}M parameters, {n_reps} repetitions")
        print(fmt.format(*cols))
        inputs, results, stats = {}, {}, {}
        for n in batches:
            x = jax.random.uniform(jax.random.key(n), (n, *in_shape))
            t = jnp.argmax(model(x), axis=-1)  # explain the prediction (eager, not timed)
            inputs[n] = (x, t)
            calls = {key: in_precision(lambda f=f, s=state, x=x, t=t: f(s, x, t), prec)
                     for key, (f, prec) in fns.items()}
            results[n] = time_round_robin(calls, n_reps)
            stats[n] = {key: compiled_stats(f, prec, state, x, t) for key, (f, prec) in fns.items()}
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
                       "times_ms": times[key]} | stats[n][key]
                if "flops" in row:
                    row["gflop"] = row["flops"] / 1e9
                grad_peak = stats[n][(cfg, "gradient")].get("peak_bytes")
                if "peak_bytes" in row:
                    row["peak_mib"] = row["peak_bytes"] / 2**20
                    if grad_peak:
                        row["peak_ratio_to_gradient"] = row["peak_bytes"] / grad_peak
                zr = z["results"][str(n)].get(base_method(m)) if z else None
                if zr:
                    row |= {"zennit_median_ms": zr["median_ms"], "zennit_min_ms": min(zr["times_ms"]),
                            "zennit_first_call_s": zr["first_call_s"],
                            "zennit_over_lrpjax": zr["median_ms"] / med[key],
                            "zennit_over_lrpjax_min": min(zr["times_ms"]) / min(times[key]),
                            "zennit_times_ms": zr["times_ms"]}
                    if f"{base_method(m)}_{n}" in z["heatmaps"]:
                        row["rel_err_vs_zennit"] = rel_err(
                            outs[key], z["heatmaps"][f"{base_method(m)}_{n}"])
                twin = highest_twin.get(cfg)
                if twin is not None and m != "forward":
                    row["rel_err_vs_highest"] = rel_err(outs[key], np.asarray(outs[(twin, m)]))
                on_key = (cfg, base_method(m))
                if m.endswith(OFF) and on_key in fns:  # --signs both: the on twin was timed too
                    row["signs_on_median_ms"] = med[on_key]
                    row["signs_saving"] = (med[key] - med[on_key]) / med[key]
                    row["rel_err_signs_on_vs_off"] = rel_err(outs[on_key], np.asarray(outs[key]))
                    if "flops" in stats[n][on_key]:
                        row["signs_on_flops"] = stats[n][on_key]["flops"]
                rows.append(row)

                def f(key, spec=".2f", row=row):
                    return format(row[key], spec) if key in row else "-"
                print(fmt.format(name, n, cfg, m, f("median_ms"), f("min_ms"), f("first_call_s"),
                                 f("ratio_to_gradient"), f("gflop", ".3f"), f("peak_mib"),
                                 f("peak_ratio_to_gradient"), f("zennit_median_ms"),
                                 f("zennit_min_ms"), f("zennit_over_lrpjax", ".1f"),
                                 f("zennit_over_lrpjax_min", ".1f"), f("rel_err_vs_zennit", ".0e"),
                                 f("rel_err_vs_highest", ".0e")))
        if z:
            header["zennit"] = {k: z.get(k, "cpu") for k in ("torch", "zennit", "threads",
                                                               "device")}
            print("Zennit {zennit}, torch {torch}, {threads} threads, {device}".format(
                **header["zennit"]))
        print()

    mw = width + 1  # the method column of the summaries
    print("LRP / gradient and Zennit / lrpjax (steady-state medians) against the targets:")
    for r in rows:
        if base_method(r["method"]) in COMPOSITES:
            limit = TARGETS.get(base_method(r["method"]))
            ok = "" if limit is None else f" (target <= {limit}x): " + (
                "ok" if r["ratio_to_gradient"] <= limit else "MISSED")
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<{mw}} "
                  f"{r['ratio_to_gradient']:.2f}x gradient{ok}")
        if base_method(r["method"]) in COMPOSITES and "zennit_over_lrpjax" in r:
            ok = "ok" if r["zennit_over_lrpjax"] >= ZENNIT_TARGET else "MISSED"
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<{mw}} "
                  f"{r['zennit_over_lrpjax']:.1f}x faster than Zennit "
                  f"(target >= {ZENNIT_TARGET}x): {ok}")
    mem = [r for r in rows if base_method(r["method"]) in COMPOSITES
           and "peak_ratio_to_gradient" in r]
    if mem:
        print(f"\nPeak memory (XLA memory analysis: arguments + outputs + temporaries) against "
              f"the gradient's (target <= {MEMORY_TARGET}x):")
        for r in mem:
            ok = "ok" if r["peak_ratio_to_gradient"] <= MEMORY_TARGET else "MISSED"
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<{mw}} "
                  f"{r['peak_mib']:8.2f} MiB  {r['peak_ratio_to_gradient']:.2f}x gradient: {ok}")
    signs = [r for r in rows if "signs_saving" in r]
    if signs:
        print("\nSign analysis on vs off (steady-state medians; saving = (off - on) / off of the "
              "heatmap time):")
        sfmt = "  {:<19} {:<5} {:<13} {:<16} {:>8} {:>8} {:>7} {:>10} {:>10} {:>8}"
        print(sfmt.format("model", "batch", "config", "preset", "on ms", "off ms", "saving",
                          "GFLOP on", "GFLOP off", "R diff"))
        for r in signs:
            flops_on, flops_off = r.get("signs_on_flops"), r.get("flops")
            print(sfmt.format(
                r["model"], f"b{r['batch']}", r["config"], base_method(r["method"]),
                f"{r['signs_on_median_ms']:.2f}", f"{r['median_ms']:.2f}",
                f"{100 * r['signs_saving']:.1f}%",
                "-" if flops_on is None else f"{flops_on / 1e9:.3f}",
                "-" if flops_off is None else f"{flops_off / 1e9:.3f}",
                f"{r['rel_err_signs_on_vs_off']:.0e}"))
            if flops_on is not None and flops_on == flops_off:
                print("    WARNING: the same FLOPs with the analysis off: either no layer of this "
                      "preset has a cheaper form to use (e.g. no conv layers), or the off variant "
                      "compiled the signs-on program")
    errs = [r for r in rows if "rel_err_vs_highest" in r]
    if errs:
        tf32 = (" (TF32 on Ampere and later GPUs)" if jax.default_backend() == "gpu"
                and process_default == "backend default" else "")
        print(f"\nHeatmaps at matmul precision '{process_default}'{tf32} against 'highest' "
              "(true float32), ||dR|| / ||R||:")
        for r in errs:
            print(f"  {r['model']:<19} b{r['batch']:<3} {r['config']:<13} {r['method']:<{mw}} "
                  f"{r['rel_err_vs_highest']:.1e}")
    header["loadavg_at_end"] = os.getloadavg()
    print("\nload average at the end: {:.2f} {:.2f} {:.2f}".format(*header["loadavg_at_end"]))
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
