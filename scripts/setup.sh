#!/usr/bin/env bash
# The README's first command: install everything, then run the main job:
# segment the sample nuclei image and write the result to out/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
scripts/install.sh

model="python/unet_rt/models/nuclei.pt"
if [ ! -f "$model" ]; then
  # Until the trained nuclei model ships, a tiny random U-Net exercises the
  # whole path (its labels are meaningless).
  model="out/tiny.pt"
  [ -f "$model" ] || python -m training.tiny "$model" >/dev/null
fi
mkdir -p out
unet-rt segment data/dsb2018-nuclei/image.tif --model "$model" --output out/
echo "[setup] wrote out/image.tif (labels) with $model"
