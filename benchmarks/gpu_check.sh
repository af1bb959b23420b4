#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in a copy of the repository with .gpu/ carried (see
# gpu_prepare.sh). It uses the device's own torch 2.11 (+cu130) libraries, the
# wheel and binary built on the CPU machine (and Dask's wheels): runs the gpu-marked tests, checks
# the CLI on CUDA against the CLI on the CPU, and prints the engine table (also
# written to $OUT/gpu_check.txt).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VENV="${TORCH_VENV:-/opt/torch/.venv}"
PY="$TORCH_VENV/bin/python"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
status=0
"$PY" -m pip install -q --no-deps --no-index --target /tmp/unet_rt_site .gpu/unet_rt-*.whl || exit 1
if ! "$PY" -c "import dask.array, monai" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index --target /tmp/unet_rt_site .gpu/wheels/*.whl || status=1
fi
export PYTHONPATH="/tmp/unet_rt_site:$PWD"
"$PY" -c "import dask.array, dask; print('dask', dask.__version__)" || { echo "dask missing: the Dask GPU test will be skipped"; status=1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== CLI"
.gpu/unet-rt --version
ldd .gpu/unet-rt | grep -E "torch_cuda|not found" || true
cli=$(mktemp -d)
.gpu/unet-rt segment data/dsb2018-nuclei/image.tif -o "$cli/cpu" --device cpu --format npy || status=1
.gpu/unet-rt segment data/dsb2018-nuclei/image.tif -o "$cli/cuda" --device cuda:0 --format npy || status=1
"$PY" - "$cli" "$OUT" <<'PY' || status=1
import sys, numpy as np, pathlib
d = pathlib.Path(sys.argv[1])
a, b = np.load(d / "cpu" / "image.npy"), np.load(d / "cuda" / "image.npy")
agree = float((a == b).mean())
line = f"CLI labels, cuda:0 vs cpu (fp32): agreement {agree:.6f}"
print(line)
(pathlib.Path(sys.argv[2]) / "cli.txt").write_text(line + "\n")
sys.exit(0 if agree > 0.9999 else 1)
PY
echo "== conversion: pixels normalised on the host or on the device (CLI bench, bundled model, uint16)"
for conversion in host device; do
    .gpu/unet-rt bench --device cuda:0 --precision bf16 --size 4096 --repeats 3 --conversion "$conversion" --json || status=1
done | tee "$OUT/conversion.txt"
echo "== gpu tests"
"$PY" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider -o addopts="-ra --strict-markers" 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
echo "== engine"
"$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.txt" "$@" || status=1
exit $status
