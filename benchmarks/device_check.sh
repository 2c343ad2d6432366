#!/usr/bin/env bash
# The one prepared GPU check of the LRP engine (issue 3), for a session lent a device:
#
#   1. here, once:  .venv/bin/python -m pip download -q --no-deps -d .device-wheels \
#                       zennit==0.5.1 flax==0.12.8 optax==0.2.8
#   2. device tool: run(command="bash benchmarks/device_check.sh", carry=[".device-wheels"],
#                       timeout_s=560)      # the stages share BUDGET (520 s) and end within it
#
# Uses the device image's python3 (JAX with CUDA, Flax, Optax, PyTorch with CUDA are there);
# Zennit comes from the carried wheel (pure Python, installed into /tmp, nothing downloaded).
# If lrpjax does not run on the image's Flax, the carried flax/optax wheels (the versions the
# CPU suite pins) are put in front and the smoke test is repeated; if it fails again the script
# stops (exit 1) instead of spending the lease. Each later stage is time-boxed against one
# deadline (its box leaves the later stages theirs) and writes to $OUT as it goes, so a stage that
# fails or runs long leaves the others' results; the exit status is 1 if any stage failed:
#   env.txt, smoke.txt       versions; one relevance call on the GPU
#   lrp_speed_gpu.{txt,json} benchmarks/lrp_speed.py --full: default (TF32) and 'highest'
#                            precision side by side, Zennit on CUDA
#   pytest_gpu_f32.txt       the reference/Zennit/API tests on the GPU as the suite runs them
#                            (conftest asks for true float32 products)
#   pytest_gpu_tf32.txt      the float64-reference and Zennit tests at JAX's default precision
#                            (TF32): how far the accelerator's default moves heatmaps
# Copy lrp_speed_gpu.txt to benchmarks/results/lrp_speed_<gpu>.txt.
# Local dry run of the plumbing (CPU):
#   OUT=/tmp/out PY=.venv/bin/python ZPY=.zennit-venv/bin/python LRP_ARGS="--only mlp --reps 3" \
#   TESTS_F32="tests/test_zennit.py" TESTS_TF32="tests/test_zennit.py" bash benchmarks/device_check.sh
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
PY=${PY:-python3}
ZPY=${ZPY:-$PY}
LRP_ARGS=${LRP_ARGS:---full --reps 20 --vgg-reps 10}
TESTS_F32=${TESTS_F32:-tests/test_lrp_reference.py tests/test_zennit.py \
tests/test_rules_precision.py tests/test_lrp_api.py tests/test_facts.py}
TESTS_TF32=${TESTS_TF32:-tests/test_lrp_reference.py tests/test_zennit.py}
WORKERS=${WORKERS:-8}
DEADLINE=$((SECONDS + ${BUDGET:-520}))
rc=0
# box WANT LATER: WANT seconds, or less so that LATER seconds stay for the stages after it
box() { local b=$((DEADLINE - SECONDS - $2)); ((b > $1)) && b=$1; ((b < 5)) && b=5; echo "$b"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

site=$(mktemp -d)
zennit=(--no-zennit)
wheel=$(ls .device-wheels/zennit-*.whl 2>/dev/null | head -1)
if [[ -n "$wheel" ]] && timeout 60 "$ZPY" -m pip install -q --no-deps --target "$site" "$wheel"; then
  export PYTHONPATH="$PYTHONPATH:$site"
  zennit=(--zennit-python "$(command -v "$ZPY")")
fi

{
  date -u
  echo "budget ${BUDGET:-520} s"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'optax', optax.__version__)"
  "$ZPY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

smoke() {
  timeout "$(box 90 330)" "$PY" - <<'EOF'
import jax, jax.numpy as jnp, flax
from flax import nnx
import lrpjax
from lrpjax.composites import EpsilonGammaBox
m = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0)), nnx.relu,
                   lambda x: x.reshape(x.shape[0], -1), nnx.Linear(784 * 4, 10, rngs=nnx.Rngs(1)))
x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
R = lrpjax.relevance(m, x, composite=EpsilonGammaBox(0.0, 1.0))
print("smoke ok: flax", flax.__version__, "backend", jax.default_backend(), R.devices(),
      "sum R", [float(v) for v in R.sum((1, 2, 3))], "max logit", [float(v) for v in m(x).max(-1)])
EOF
}
if ! smoke > "$OUT/smoke.txt" 2>&1; then
  cat "$OUT/smoke.txt"
  echo "== lrpjax failed on the image's flax: retrying with the carried flax/optax wheels" \
    | tee -a "$OUT/smoke.txt"
  pinned=$(mktemp -d)
  timeout 60 "$PY" -m pip install -q --no-deps --target "$pinned" .device-wheels/flax-*.whl \
    .device-wheels/optax-*.whl
  export PYTHONPATH="$pinned:$PYTHONPATH"
  if ! smoke >> "$OUT/smoke.txt" 2>&1; then
    cat "$OUT/smoke.txt"
    echo "== lrpjax does not run on this device: stopping" | tee -a "$OUT/smoke.txt"
    exit 1
  fi
fi
cat "$OUT/smoke.txt"

echo "== benchmark"
# shellcheck disable=SC2086  # LRP_ARGS is a list of flags
# (the JSON is written at the end: a benchmark cut off by its box leaves only the .txt)
timeout "$(box 300 190)" "$PY" benchmarks/lrp_speed.py $LRP_ARGS "${zennit[@]}" \
  --json "$OUT/lrp_speed_gpu.json" 2>&1 | tee "$OUT/lrp_speed_gpu.txt"
status=${PIPESTATUS[0]}
printf "\nexit %s\n" "$status" | tee -a "$OUT/lrp_speed_gpu.txt"
((status == 0)) || rc=1

# -v prints each test as it ends, so a stage cut off by its timeout still shows how far it got.
echo "== tests on the GPU, true float32 (as make test runs them)"
# shellcheck disable=SC2086
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$(box 130 70)" "$PY" -m pytest -p no:cacheprovider \
  -n "$WORKERS" -v --tb=line $TESTS_F32 > "$OUT/pytest_gpu_f32.txt" 2>&1
status=$?
printf "\nexit %s\n" "$status" >> "$OUT/pytest_gpu_f32.txt"
((status == 0)) || rc=1
tail -n 15 "$OUT/pytest_gpu_f32.txt"

echo "== the float64-reference tests at JAX's default precision (TF32 on this GPU)"
# shellcheck disable=SC2086
# (failures are expected here: they measure TF32; only a cut-off or crashed run counts as failed)
JAX_DEFAULT_MATMUL_PRECISION=default XLA_PYTHON_CLIENT_PREALLOCATE=false \
  timeout "$(box 70 0)" "$PY" -m pytest -p no:cacheprovider -n "$WORKERS" -q --tb=line -rf \
  $TESTS_TF32 > "$OUT/pytest_gpu_tf32.txt" 2>&1
status=$?
printf "\nexit %s\n" "$status" >> "$OUT/pytest_gpu_tf32.txt"
((status <= 1)) || rc=1
tail -n 40 "$OUT/pytest_gpu_tf32.txt"
echo "== done in $SECONDS s, exit $rc"
exit "$rc"
