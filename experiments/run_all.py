"""Reproduce every figure: run each experiment script (``make reproduce``).

    python experiments/run_all.py            # quick defaults (<= 15 min on 2 CPU cores)
    python experiments/run_all.py --full     # longer training, more images
    python experiments/run_all.py --smoke    # seconds per script (plumbing only)
    python experiments/run_all.py --jobs 1   # one script at a time

``train_models.py`` runs first (the others load its cached models); then the figure scripts,
which are independent, run ``--jobs`` at a time (default: 2, or 1 on a one-core machine),
longest first: each script spends much of its time in Python, tracing and single-threaded XLA
compilation, so two at once use two cores better than one. A script's output goes to
``<out>/logs/<script>.log`` and is printed when it ends. Writes figures/*.png and
figures/results.json; the wall time of each script and of the whole run goes into the
"reproduce" section of results.json (scripts that ran side by side each count their own wall
time, so the per-script times add up to more than the total).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lrpjax.files import atomic_write_text, update_results
from lrpjax.lab.claims import markdown_table

HERE = Path(__file__).resolve().parent
FIRST = "train_models.py"  # reference classifiers (cached in checkpoints/)
SCRIPTS = [  # longest first, so the last one to start is a short one
    "am_prototypes.py",     # F-AM: plain / expert / code-space prototypes
    "fig_flipping.py",      # F-flip: pixel flipping, three protocols
    "fig_photos.py",        # EfficientNet-Lite0 on photographs (needs the pretrained extra)
    "fig_transformer.py",   # AttnLRP faithfulness on MiniLM (quick) / + SmolLM2 (--full)
    "fig_continuity.py",    # F-cont: a digit across the receptive field, quadrant relevance
    "fig_translation.py",   # the translation trick on a strided first layer
    "fig_heatmaps.py",      # F-heat: sensitivity / simple Taylor / LRP on digits
    "am_cartoon.py",        # F-cartoon: AM (a)-(d) on a 2D toy
    "am_local.py",          # AM from global to local
    "fig_maxnet.py",        # F-max: the paper's Fig. 6
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
mode = parser.add_mutually_exclusive_group()
mode.add_argument("--full", action="store_true", help="longer training, more images")
mode.add_argument("--smoke", action="store_true", help="seconds per script (plumbing only)")
parser.add_argument("--out", default="figures")
parser.add_argument("--only", nargs="*", help="run only these scripts (file names)")
parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="figure scripts run at once (default: 2, or 1 on one core)")
args = parser.parse_args()
if args.jobs < 1:
    parser.error(f"--jobs must be >= 1, got {args.jobs}")
unknown = sorted(set(args.only or []) - {FIRST, *SCRIPTS})
if unknown:
    parser.error(f"unknown scripts {unknown}; choose from {[FIRST, *SCRIPTS]}")
for script in (FIRST, *SCRIPTS):
    if not (HERE / script).exists():
        sys.exit(f"missing experiment script {HERE / script}")

out = Path(args.out)
logs = out / "logs"
logs.mkdir(parents=True, exist_ok=True)
flags = ["--out", args.out] + (["--full"] if args.full else []) + (["--smoke"] if args.smoke else [])


def run(script: str) -> tuple[str, float, int]:
    """Run one script, its output into logs/<script>.log; (script, seconds, exit code)."""
    t0 = time.perf_counter()
    log = logs / f"{Path(script).stem}.log"
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, str(HERE / script), *flags], stdout=fh,
                              stderr=subprocess.STDOUT, check=False)
    return script, round(time.perf_counter() - t0, 1), done.returncode


def report(script: str, seconds: float, code: int) -> None:
    text = (logs / f"{Path(script).stem}.log").read_text(errors="replace")
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]  # progress bars: last state
    print(f"\n=== {script} {' '.join(flags)}\n" + "\n".join(lines[-40:]), flush=True)
    print(f"=== {script}: {seconds:.1f} s" + (f" FAILED (exit code {code})" if code else ""),
          flush=True)


times: dict[str, float] = {}
start = time.perf_counter()
failed: list[str] = []
if not args.only or FIRST in args.only:
    script, seconds, code = run(FIRST)
    report(script, seconds, code)
    times[script] = seconds
    if code:
        sys.exit(f"{FIRST} failed with exit code {code}; see {logs / 'train_models.log'}")
todo = [s for s in SCRIPTS if not args.only or s in args.only]
print(f"\nrunning {len(todo)} scripts, {args.jobs} at a time", flush=True)
with ThreadPoolExecutor(max_workers=args.jobs) as pool:
    for future in as_completed([pool.submit(run, s) for s in todo]):
        script, seconds, code = future.result()
        report(script, seconds, code)
        times[script] = seconds
        if code:
            failed.append(script)

total = round(time.perf_counter() - start, 1)
results = update_results("reproduce", {
    "seconds": times, "total_s": total, "jobs": args.jobs, "cpu_count": os.cpu_count(),
    "mode": "full" if args.full else "smoke" if args.smoke else "quick"},
    path=out / "results.json")
atomic_write_text(out / "claims.md", markdown_table(results) + "\n")
if failed:
    sys.exit(f"failed: {', '.join(failed)} (logs in {logs}/)")
print(f"\nall experiments done in {total:.1f} s; figures in {out}/, the paper's claims as "
      f"measured in {out / 'claims.md'}")
