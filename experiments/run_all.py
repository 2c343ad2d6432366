"""Reproduce every figure: run each experiment script in turn (``make reproduce``).

    python experiments/run_all.py            # quick defaults (<= 15 min on 2 CPU cores)
    python experiments/run_all.py --full     # longer training, more images
    python experiments/run_all.py --smoke    # seconds per script (plumbing only)

Writes figures/*.png and figures/results.json; the wall time of each script goes into the
"reproduce" section of results.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from lrpjax.files import update_results

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "train_models.py",      # reference classifiers (cached in checkpoints/)
    "fig_maxnet.py",        # F-max: the paper's Fig. 6
    "fig_heatmaps.py",      # F-heat: sensitivity / simple Taylor / LRP on digits
    "fig_translation.py",   # the translation trick
    "fig_continuity.py",    # F-cont: shifted digit, quadrant relevance
    "fig_flipping.py",      # F-flip: pixel flipping, AUC
    "am_cartoon.py",        # F-cartoon: AM (a)-(d) on a 2D toy
    "am_prototypes.py",     # F-AM: plain / expert / code-space prototypes
    "am_local.py",          # AM from global to local
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
mode = parser.add_mutually_exclusive_group()
mode.add_argument("--full", action="store_true", help="longer training, more images")
mode.add_argument("--smoke", action="store_true", help="seconds per script (plumbing only)")
parser.add_argument("--out", default="figures")
parser.add_argument("--only", nargs="*", help="run only these scripts (file names)")
args = parser.parse_args()

flags = ["--out", args.out] + (["--full"] if args.full else []) + (["--smoke"] if args.smoke else [])
times: dict[str, float] = {}
start = time.perf_counter()
for script in SCRIPTS:
    if args.only and script not in args.only:
        continue
    path = HERE / script
    if not path.exists():
        sys.exit(f"missing experiment script {path}")
    print(f"\n=== {script} {' '.join(flags)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(path), *flags], check=False)
    times[script] = round(time.perf_counter() - t0, 1)
    if done.returncode != 0:
        sys.exit(f"{script} failed with exit code {done.returncode}")
    print(f"=== {script}: {times[script]:.1f} s", flush=True)

total = round(time.perf_counter() - start, 1)
update_results("reproduce", {"seconds": times, "total_s": total,
                             "mode": "full" if args.full else "smoke" if args.smoke else "quick"},
               path=Path(args.out) / "results.json")
print(f"\nall experiments done in {total:.1f} s; figures in {args.out}/")
