#!/usr/bin/env bash
# The PyTorch virtualenv for the Zennit columns of benchmarks/lrp_speed.py: .zennit-venv
# (git-ignored; ZENNIT_VENV=... for another place). `make bench` runs this first.
#
#   torch 2.13.0, CPU build, from a wheel on this disk ($TORCH_WHEEL, or found in pip's
#     find-links, /opt/wheels, .device-wheels, else anywhere on the disk): never plain
#     `pip install torch`, which takes a CUDA build of several GB;
#   zennit 0.5.1 with --no-deps, and its small dependencies (numpy, Pillow, click) pinned next
#     to that torch with a constraint, so nothing pulls another torch;
#   no torchvision: the registry's wheels fail beside CPU torch ("operator torchvision::nms does
#     not exist"); zennit imports torchvision.models.resnet at start-up, so the benchmark's Zennit
#     side (benchmarks/_zennit_speed.py) registers a stand-in module (BasicBlock, Bottleneck)
#     before `import zennit` (shared/DESIGN.md). The check below imports zennit that way.
#
# Never fails `make bench`: where the venv cannot be made it says why, leaves no half-made venv,
# and lrp_speed.py then skips the Zennit columns ("Zennit: not available (skipped)").
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${ZENNIT_VENV:-.zennit-venv}
TORCH_VERSION=2.13.0
ZENNIT_VERSION=0.5.1

skip() {
    echo "make_zennit_venv: Zennit columns skipped: $*" >&2
    exit 0
}

works() {  # torch and zennit at the right versions, zennit importable with the stand-in
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" "$ZENNIT_VERSION" <<'PY' \
        >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.path.insert(0, "benchmarks")
import torch  # noqa: E402
import _zennit_speed  # noqa: E402,F401  registers the torchvision stand-in, imports zennit
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert version("zennit") == sys.argv[2]
PY
}

if works; then
    echo "make_zennit_venv: $VENV ready (torch $TORCH_VERSION CPU, zennit $ZENNIT_VERSION)"
    exit 0
fi

# 1. the CPU wheel
wheel=${TORCH_WHEEL:-}
if [ -z "$wheel" ]; then
    for dir in ${PIP_FIND_LINKS:-} /opt/wheels "$HOME/wheels" .device-wheels; do
        for w in "$dir"/torch-"$TORCH_VERSION"+cpu-*.whl; do
            [ -f "$w" ] && { wheel=$w; break 2; }
        done
    done
fi
if [ -z "$wheel" ]; then
    echo "make_zennit_venv: looking for torch-$TORCH_VERSION+cpu-*.whl on the disk (up to 60 s)"
    wheel=$(timeout 60 find / -xdev -name "torch-$TORCH_VERSION+cpu-*.whl" -print -quit \
            2>/dev/null)
fi
[ -n "$wheel" ] && [ -f "$wheel" ] ||
    skip "no CPU wheel torch-$TORCH_VERSION+cpu-*.whl on this machine (set TORCH_WHEEL=PATH)"

# 2. an interpreter that matches the wheel's tag (cp311 -> python3.11)
tag=$(basename "$wheel" | sed -n 's/.*-cp\([0-9]\)\([0-9]*\)-cp.*/\1.\2/p')
[ -n "$tag" ] || skip "cannot read the Python version from $(basename "$wheel")"
py=""
for cand in "${ZENNIT_PYTHON:-}" "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$tag"*/bin/python"$tag" \
            "$(command -v python"$tag" 2>/dev/null)"; do
    if [ -n "$cand" ] && [ -x "$cand" ] &&
       [ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$tag" ]; then
        py=$cand
        break
    fi
done
[ -n "$py" ] || skip "the wheel $(basename "$wheel") needs Python $tag, which is not installed"

# 3. the venv
echo "make_zennit_venv: creating $VENV (Python $tag, $(basename "$wheel"), zennit $ZENNIT_VERSION)"
rm -rf "$VENV"
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
echo "torch==$TORCH_VERSION" >"$constraint"
if ! { "$py" -m venv "$VENV" &&
       "$VENV/bin/python" -m pip install -q "$wheel" &&
       "$VENV/bin/python" -m pip install -q --no-deps "zennit==$ZENNIT_VERSION" &&
       "$VENV/bin/python" -m pip install -q -c "$constraint" numpy Pillow click; }; then
    rm -rf "$VENV"
    skip "installing torch/zennit into $VENV failed (see pip's messages above)"
fi
if ! works; then
    rm -rf "$VENV"
    skip "zennit $ZENNIT_VERSION does not import beside torch $TORCH_VERSION in $VENV"
fi
echo "make_zennit_venv: $VENV ready (torch $TORCH_VERSION CPU, zennit $ZENNIT_VERSION)"
