#!/usr/bin/env bash
# The README's second command (and CI's): install what is missing, then run
# the Rust tests and the Python tests. Any failure, or pytest collecting no
# test, exits non-zero.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
scripts/install.sh

echo "[test] cargo test (release, the profile the install already built)"
cargo test --release --locked --workspace --exclude unet-rt-py

echo "[test] pytest"
python -m pytest "$@"
