"""LXT 2.1's AttnLRP on SmolLM2-135M-Instruct (PyTorch, CPU), the column beside
``benchmarks/lm_speed.py`` (issue 18, item 5). Runs in the torch venv of the LXT fixtures, never
in lrpjax's::

    /work/lxt-venv/bin/python benchmarks/lxt_speed.py [--seq 128] [--reps 7] [--threads 2]

Each mode in its own process (LXT patches transformers' classes once per process): "gradient"
(the plain model: backward of the predicted next-token logit to the input embeddings) and
"attnlrp" / "cplrp" (LXT's efficient patches; backward with the output gradient set to the
logit, LXT's recipe). Only the last position's logits are computed (``logits_to_keep=1``), as
lrpjax's SmolLM2 does. Forward + backward per call, steady-state median of ``--reps`` calls.
Compare the "x grad" columns with ``benchmarks/lm_speed.py``'s, run on the same quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "lxt"))


def one_mode(mode: str, seq: int, reps: int, threads: int) -> dict:
    from make_smollm2_fixtures import FILE, gguf_dir, without_torchvision

    without_torchvision()
    import torch
    from transformers import LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    torch.set_num_threads(threads)
    if mode != "gradient":
        from lxt.efficient import monkey_patch
        from lxt.efficient.models.llama import attnLRP, cp_LRP

        monkey_patch(modeling_llama, attnLRP if mode == "attnlrp" else cp_LRP)
    model = LlamaForCausalLM.from_pretrained(gguf_dir(), gguf_file=FILE, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    ids = torch.arange(1000, 1000 + seq)[None]

    def call() -> None:
        x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1]
        y = logits[int(logits.argmax())]
        y.backward(y if mode != "gradient" else torch.ones_like(y))
        _ = (x * x.grad).sum(-1)

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    return {"mode": mode, "median_ms": times[len(times) // 2], "first_s": first,
            "torch": torch.__version__, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.seq, args.reps, args.threads)))
        return
    rows = {}
    for mode in ("gradient", "attnlrp", "cplrp"):
        done = subprocess.run([sys.executable, __file__, "--mode", mode, "--seq", str(args.seq),
                               "--reps", str(args.reps), "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    g = rows["gradient"]["median_ms"]
    print(f"LXT 2.1 / torch {rows['gradient']['torch']} CPU ({args.threads} threads), "
          f"SmolLM2-135M-Instruct, batch 1, sequence {args.seq}, {args.reps} reps")
    print(f"{'method':<10} {'median ms':>10} {'x grad':>7} {'1st call s':>10}")
    for mode, r in rows.items():
        print(f"{mode:<10} {r['median_ms']:>10.1f} {r['median_ms'] / g:>7.2f} {r['first_s']:>10.2f}")


if __name__ == "__main__":
    main()
