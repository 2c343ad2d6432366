"""AM speed: 10 classes × 500 Adam steps, one jit(vmap(scan)) against a Python loop over classes.

Both variants use the same compiled building block (``lrpjax.maximize.am_program``): the batched
run compiles it for 10 targets, the loop compiles it once for 1 target and calls it per class.
Compile time (the first call) is reported separately from the steady state (the median of
``--repeats`` further runs). Also printed: the per-step cost against the number of targets
(how close to compute bound the batched convolutions are), the rolled-scan cost on CPU
(XLA:CPU runs convolutions inside while loops slowly, jax-ml/jax#12868), and with ``--threads``
the same measurement in child processes pinned to 1 and 2 cores (taskset).

    python benchmarks/am_speed.py                 # reference CNN (trained/cached in checkpoints/)
    python benchmarks/am_speed.py --model mlp     # the MLP instead
    python benchmarks/am_speed.py --threads       # also pinned to 1 vs 2 cores
    python benchmarks/am_speed.py --quick         # 100 steps, 1 repeat, untrained model
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
parser.add_argument("--steps", type=int, default=500)
parser.add_argument("--chunk", type=int, default=10)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", action="store_true", help="also compare 1 vs 2 CPU cores")
parser.add_argument("--quick", action="store_true", help="100 steps, 1 repeat, untrained model")
parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
args = parser.parse_args()
if args.quick:
    args.steps, args.repeats = 100, 1

import jax
import jax.numpy as jnp
from flax import nnx

from lrpjax.lab.models import build
from lrpjax.maximize import am_program, class_log_prob, l2_regularizer, nnx_logits

if args.quick:
    model = build(args.model, rngs=nnx.Rngs(0))
else:
    from lrpjax.lab.train import load_or_train

    model, _ = load_or_train(args.model, verbose=False)
logits_fn = nnx_logits(model)
x_bar = jnp.full((1, 28, 28, 1), 0.13)
objective = class_log_prob(logits_fn)
kw = {"regularizer": l2_regularizer(1e-3, 0.13), "clip": (0.0, 1.0)}


def run(program, targets, steps: int, chunk: int):
    """All steps for these targets; returns the final objective values (blocks until done)."""
    state = program.init(x_bar, targets)
    for _ in range(steps // chunk):
        state, _ = program.run(state, targets, chunk)
    return program.finish(state[0], targets)[0].block_until_ready()


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call seconds, median of the next `repeats` calls, last value)."""
    t0 = time.perf_counter()
    value = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), value


classes = jnp.arange(10)
batched = am_program(objective, **kw)
single = am_program(objective, **kw)
first_b, steady_b, obj_b = timed(lambda: run(batched, classes, args.steps, args.chunk),
                                 args.repeats)


def loop():
    return jnp.concatenate([run(single, classes[c:c + 1], args.steps, args.chunk)
                            for c in range(10)])


first_l, steady_l, obj_l = timed(loop, args.repeats)

if args.child:  # one line for the parent: steady batched and loop seconds
    print(f"RESULT {steady_b:.4f} {steady_l:.4f}")
    sys.exit(0)

flags = os.environ.get("XLA_FLAGS", "")
print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
      f"{os.cpu_count()} CPU cores visible; JAX {jax.__version__}, Python "
      f"{platform.python_version()}; XLA_FLAGS={flags!r}")
print(f"model: {args.model}; 10 classes × {args.steps} Adam steps, chunks of {args.chunk} "
      f"(scan unroll: {'full' if jax.default_backend() == 'cpu' else 1}), "
      f"median of {args.repeats} runs after the first")
print(f"  jit(vmap(scan)) all classes : compile+first {first_b:7.2f} s, steady {steady_b:7.2f} s")
print(f"  Python loop over classes    : compile+first {first_l:7.2f} s, steady {steady_l:7.2f} s")
print(f"  ratio loop / vmap (steady)  : {steady_l / steady_b:.2f}x")
print(f"  max |objective difference|  : {float(jnp.max(jnp.abs(obj_b - obj_l))):.2e}")

# ---- per-step cost against the number of targets: flat = overhead bound, linear = compute bound
print("per-step cost vs targets T (one chunk, steady):")
per_target = {}
for t in (1, 2, 5, 10, 20):
    targets = jnp.arange(t) % 10
    program = am_program(objective, **kw)
    state = program.init(x_bar, targets)
    jax.block_until_ready(program.run(state, targets, args.chunk))
    t0 = time.perf_counter()
    jax.block_until_ready(program.run(state, targets, args.chunk))
    ms = (time.perf_counter() - t0) / args.chunk * 1e3
    per_target[t] = ms
    print(f"  T={t:2d}: {ms:7.3f} ms/step = {ms / t:6.3f} ms per target-step")
print(f"  batching 10 targets costs {per_target[10] / per_target[1]:.1f}x one target "
      "(10x would mean no gain from batching)")

if jax.default_backend() == "cpu":
    program = am_program(objective, unroll=1, **kw)
    state = program.init(x_bar, classes)
    n = 10
    jax.block_until_ready(program.run(state, classes, n))
    t0 = time.perf_counter()
    jax.block_until_ready(program.run(state, classes, n))
    rolled = (time.perf_counter() - t0) / n * 1e3
    print(f"rolled lax.scan (unroll=1), T=10: {rolled:.2f} ms/step vs unrolled "
          f"{per_target[10]:.2f} ms/step (XLA:CPU convolutions inside while loops)")

if args.threads and jax.default_backend() == "cpu":
    import shutil

    print("cores (child processes pinned with taskset, steady state):")
    for cores in ("0", "0,1"):
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--steps",
               str(args.steps), "--chunk", str(args.chunk), "--repeats", str(args.repeats)]
        if args.quick:
            cmd.append("--quick")
        if shutil.which("taskset") is None:
            print("  taskset not found: skipped")
            break
        out = subprocess.run(["taskset", "-c", cores, *cmd], capture_output=True, text=True,
                             check=True).stdout
        b, lp = (float(v) for v in out.split("RESULT")[1].split())
        print(f"  cores {cores}: vmap {b:6.2f} s, loop {lp:6.2f} s, ratio {lp / b:.2f}x")
