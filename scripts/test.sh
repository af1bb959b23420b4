#!/usr/bin/env bash
# The README's second command (and CI's): install what is missing, then run
# the Rust tests and the Python tests. Any failure, or pytest collecting no
# test, exits non-zero. Arguments go to pytest; paths among them are taken
# from the folder the command was started in.
set -euo pipefail
here="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
args=()
for arg in "$@"; do
  file="${arg%%::*}"
  if [[ "$arg" != -* && "$here" != "$ROOT" && -e "$here/$file" ]]; then
    arg="$here/$arg"
  fi
  args+=("$arg")
done
scripts/install.sh

echo "[test] cargo test (release, the profile the install already built)"
cargo test --release --locked --workspace --exclude unet-rt-py

echo "[test] pytest"
python -m pytest ${args[@]+"${args[@]}"}
