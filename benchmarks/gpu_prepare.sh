#!/usr/bin/env bash
# Run HERE (the build machine) before a GPU check: builds the abi3 wheel and
# copies the CLI binary into .gpu/ (git-ignored), which the device run carries.
#   benchmarks/gpu_prepare.sh && (device tool) run --carry .gpu 'bash benchmarks/gpu_check.sh'
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
rm -rf .gpu && mkdir -p .gpu
maturin build --release --out .gpu --quiet
cargo build --release --locked --quiet -p unet-rt-cli
cp "$CARGO_TARGET_DIR/release/unet-rt" .gpu/
# Dask for the GPU test of unet_rt.dask, MONAI for the peer rows of
# gpu_check.py: the device's venv has torch and
# numpy only, and no internet. The versions installed here, as wheels for the
# device's Python 3.12 (PyYAML is compiled).
pins=$(python - <<'PY'
from importlib.metadata import version
names = ["monai", "dask", "toolz", "cloudpickle", "partd", "locket", "fsspec", "pyyaml", "packaging", "click", "zipp", "importlib_metadata"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
python -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels $pins
ls -la .gpu
