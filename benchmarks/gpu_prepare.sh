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
ls -la .gpu
