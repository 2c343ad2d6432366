#!/usr/bin/env bash
# The one prepared GPU check of the LRP speed targets (issue 3), for a session lent a device:
#
#   1. here, once:  .venv/bin/python -m pip download -q --no-deps -d .device-wheels zennit==0.5.1
#   2. device tool: run(command="bash benchmarks/device_check.sh", carry=[".device-wheels"],
#                       timeout_s=560)      # about 4-6 minutes on an H100
#
# Uses the device image's python3 (JAX with CUDA, Flax, Optax, PyTorch with CUDA are there);
# Zennit comes from the carried wheel (pure Python, installed into /tmp, nothing downloaded).
# Without the wheel the Zennit columns are skipped. Writes $OUT/env.txt and
# $OUT/lrp_speed_gpu.{txt,json}; copy the .txt to benchmarks/results/lrp_speed_<gpu>.txt.
# Local dry run of the plumbing (CPU, MLP only):
#   OUT=/tmp/out PY=.venv/bin/python ZPY=.zennit-venv/bin/python \
#   LRP_ARGS="--only mlp --reps 3" bash benchmarks/device_check.sh
set -euo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
PY=${PY:-python3}
ZPY=${ZPY:-$PY}
LRP_ARGS=${LRP_ARGS:---full --reps 20 --vgg-reps 10}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

zennit=(--no-zennit)
wheels=(.device-wheels/zennit-*.whl)
if [[ -f "${wheels[0]}" ]]; then
  site=$(mktemp -d)
  "$ZPY" -m pip install -q --no-deps --target "$site" "${wheels[0]}"
  export PYTHONPATH="$PYTHONPATH:$site"
  zennit=(--zennit-python "$(command -v "$ZPY")")
fi

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'optax', optax.__version__)"
  "$ZPY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 || true
} > "$OUT/env.txt"
cat "$OUT/env.txt"

# shellcheck disable=SC2086  # LRP_ARGS is a list of flags
"$PY" benchmarks/lrp_speed.py $LRP_ARGS "${zennit[@]}" --json "$OUT/lrp_speed_gpu.json" \
  | tee "$OUT/lrp_speed_gpu.txt"
