#!/usr/bin/env bash
# The README's first command: install everything, then run the main job:
# segment the sample nuclei image with the bundled model and write labels,
# instances and an overlay to out/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
scripts/install.sh

sample=data/dsb2018-nuclei/image.tif
unet-rt segment "$sample" --output out/labels --quiet
unet-rt segment "$sample" --output out/instances --output-kind instances --overlay
echo "[setup] wrote $ROOT/out/labels/image.tif (classes),"
echo "[setup]   $ROOT/out/instances/image.tif (one id per nucleus)"
echo "[setup]   and $ROOT/out/instances/image_overlay.png (outlines over the image)"
echo "[setup] the command-line tool is $VIRTUAL_ENV/bin/unet-rt (source scripts/env.sh puts it on PATH)"
