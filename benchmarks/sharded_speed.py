"""Throughput of lrpjax.sharded.explain_dataset with 1 and with 4 host devices.

LRP EpsilonGammaBox(0, 1) on the reference CNN (lrpjax.lab.models.CNN, random weights), random
28 x 28 images, heatmaps streamed to a temporary .npy. Each device count runs in its own
subprocess, because ``--xla_force_host_platform_device_count`` must be set before JAX starts.
Compilation (the first batch) is timed separately from the steady state (a second full pass).

Host "devices" are slices of the same CPU: on a machine with few cores, 4 host devices split
the same cores 4 ways, so expect no speed-up there; on 4 GPUs the same code runs 4 batches
slices at once. Run: ``python benchmarks/sharded_speed.py [--images 512] [--batch 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled


def worker(images: int, batch: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    import lrpjax
    from lrpjax import composites, sharded
    from lrpjax.lab import models

    model = models.CNN(rngs=nnx.Rngs(0))
    comp = composites.EpsilonGammaBox(0.0, 1.0)

    def explain(x):
        return lrpjax.relevance(model, x, composite=comp)

    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, size=(images, 28, 28, 1)).astype(np.float32)

    def batches():  # a stream: the loader hands out 100 images at a time
        for i in range(0, images, 100):
            yield data[i:i + 100]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sharded.explain_dataset(explain, [data[:batch]], Path(tmp) / "warm.npy",
                                batch_size=batch)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        sharded.explain_dataset(explain, batches(), Path(tmp) / "R.npy", batch_size=batch)
        seconds = time.perf_counter() - start
    return {"devices": jax.device_count(), "device": str(jax.devices()[0].device_kind),
            "platform": jax.default_backend(), "jax": jax.__version__, "images": images,
            "batch": batch, "first_batch_s": round(compile_s, 2), "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 1), "cpu_count": len(os.sched_getaffinity(0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="global batch (multiple of 4)")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.images, args.batch)))
        return
    rows = []
    for n in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, __file__, "--worker", "--images",
                               str(args.images), "--batch", str(args.batch)],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"worker with {n} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = rows[0]
    print(f"JAX {first['jax']} on {first['platform']} ({first['device']}, "
          f"{first['cpu_count']} CPU cores); LRP EpsilonGammaBox, reference CNN, "
          f"{args.images} images, global batch {args.batch}")
    print(f"{'host devices':>12} {'images/s':>10} {'steady s':>9} {'first batch s':>14}")
    for r in rows:
        print(f"{r['devices']:>12} {r['images_per_s']:>10} {r['seconds']:>9} "
              f"{r['first_batch_s']:>14}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
