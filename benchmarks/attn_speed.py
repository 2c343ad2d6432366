"""How fast is AttnLRP? A random-weight BERT-sized encoder, side by side with its gradient.

    .venv/bin/python benchmarks/attn_speed.py [--layers 6] [--dim 384] [--heads 12]
                                              [--seq 128] [--batch 1] [--reps 10] [--json PATH]

A MiniLM-L6-shaped stack (6 layers, hidden 384, 12 heads, GELU MLP 1536, LayerNorm, residuals)
with random weights, written with flax.nnx modules (nnx.MultiHeadAttention, nnx.LayerNorm,
nnx.Linear), explained at the embeddings. Every method is one jax.jit of a pure function of
(parameters, x); timed round-robin in one process (steady-state medians, first call apart),
with XLA's compiled peak memory (arguments + outputs + temporaries). Target (issue 18): AttnLRP
<= 1.5x the gradient's time at sequence length 128 on CPU. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

import lrpjax
from lrpjax import transformer


class Layer(nnx.Module):
    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.down = nnx.Linear(4 * dim, dim, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.down(nnx.gelu(self.up(x))))


class Encoder(nnx.Module):
    def __init__(self, layers: int, dim: int, heads: int, rngs: nnx.Rngs):
        self.layers = nnx.List([Layer(dim, heads, rngs) for _ in range(layers)])
        self.head = nnx.Linear(dim, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    model = Encoder(args.layers, args.dim, args.heads, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (args.batch, args.seq, args.dim))

    def jit(f):
        return jax.jit(lambda s, a: f(nnx.merge(graphdef, s), a))

    fns = {"forward": jit(lambda m, a: m(a)),
           "gradient": jit(lambda m, a: lrpjax.gradient(m, a, target=1)),
           "AttnLRP": jit(lambda m, a: lrpjax.relevance(
               m, a, composite=transformer.AttnLRP(), target=1)),
           "CPLRP": jit(lambda m, a: lrpjax.relevance(
               m, a, composite=transformer.CPLRP(), target=1))}
    first, times, mem = {}, {k: [] for k in fns}, {}
    for name, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(state, x))
        first[name] = time.perf_counter() - t0
        m = f.lower(state, x).compile().memory_analysis()
        mem[name] = sum(getattr(m, a, 0) or 0 for a in (
            "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")) / 2**20
    for _ in range(args.reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(state, x))
            times[name].append(1e3 * (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"device {jax.devices()}  jax {jax.__version__}  encoder {args.layers}x{args.dim} "
          f"({args.heads} heads), batch {args.batch}, sequence {args.seq}, {args.reps} reps")
    print(f"{'method':<10} {'median ms':>10} {'x grad':>7} {'1st call s':>10} {'peak MiB':>9} "
          f"{'x grad':>7}")
    for name in fns:
        print(f"{name:<10} {med[name]:>10.2f} {med[name] / med['gradient']:>7.2f} "
              f"{first[name]:>10.2f} {mem[name]:>9.1f} {mem[name] / mem['gradient']:>7.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "median_ms": med, "first_s": first,
                       "peak_mib": mem, "jax": jax.__version__,
                       "device": str(jax.devices()[0])}, fh, indent=1)


if __name__ == "__main__":
    main()
