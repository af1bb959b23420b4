#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in a copy of the repository with .gpu/ carried (see
# gpu_prepare.sh). It uses the device's own torch 2.11 (+cu130) libraries, the
# wheel and binary built on the CPU machine, checks the GPU results against
# the CPU's and prints a short table (also written to $OUT/gpu_check.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VENV="${TORCH_VENV:-/opt/torch/.venv}"
PY="$TORCH_VENV/bin/python"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
"$PY" -m pip install -q --no-deps --no-index --target /tmp/unet_rt_site .gpu/unet_rt-*.whl
echo "== CLI"
.gpu/unet-rt --version
ldd .gpu/unet-rt | grep -E "torch_cuda|not found" || true
echo "== engine"
PYTHONPATH="/tmp/unet_rt_site:$PWD" "$PY" benchmarks/gpu_check.py ${OUT:+--out "$OUT/gpu_check.txt"} "$@"
