"""Start-up cost of the command-line tool against the equivalent Python script.

Both segment one 512x512 image on the CPU with the same model and write the
labels as a TIFF file: ``unet-rt segment`` on one side; on the other a fresh
Python process that imports torch, loads the TorchScript model, normalises the
image as the model's metadata says, mirror-pads it to a valid size, runs one
forward pass, takes the argmax and writes the result with tifffile. Each is
run a few times in a new process; the table gives the median wall time.

    python benchmarks/cli_startup.py                 # the bundled model if built, else a tiny one
    python benchmarks/cli_startup.py --model my.pt --repeats 7

A script that prints a table, not a test. The goal: the CLI takes at most half
the wall time of the Python script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "python" / "unet_rt" / "models" / "nuclei.pt"

# What a user would write without unet_rt: one forward pass over the whole
# mirror-padded image (the model's metadata gives the geometry).
PYTHON_SCRIPT = r"""
import json, sys
import numpy as np, tifffile, torch
model_path, image_path, out_path = sys.argv[1:4]
extra = {"unet_rt.json": ""}
net = torch.jit.load(model_path, map_location="cpu", _extra_files=extra).eval()
meta = json.loads(extra["unet_rt.json"])
image = tifffile.imread(image_path).astype(np.float32)
lo, hi = np.percentile(image, [meta["normalization"]["low"], meta["normalization"]["high"]])
x = ((image - lo) / max(hi - lo, 1e-20)).astype(np.float32)
halo = meta["halo"] if meta["padding"] == "valid" else 0
pads = []
for size in x.shape:
    total = size + 2 * halo
    while (total - meta["size_offset"]) % meta["size_multiple"]:
        total += 1
    pads.append((halo, total - size - halo))
x = np.pad(x, pads, mode="reflect")
with torch.inference_mode():
    y = net(torch.from_numpy(np.ascontiguousarray(x))[None, None])[0]
labels = y[:, : image.shape[0], : image.shape[1]].argmax(0).numpy().astype(np.uint8)
tifffile.imwrite(out_path, labels)
"""


def wall(cmd, env=None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="TorchScript model with unet_rt metadata (default: bundled, else tiny)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cli", type=Path, default=Path(sys.executable).parent / "unet-rt")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="unet_rt_startup_"))
    try:
        if args.model:
            model, which = args.model, str(args.model)
        elif BUNDLED.exists():
            model, which = BUNDLED, f"bundled nuclei model ({BUNDLED.relative_to(ROOT)})"
        else:
            sys.path.insert(0, str(ROOT))
            from training.tiny import export_tiny

            model, which = export_tiny(work / "tiny.pt"), "tiny random U-Net (python -m training.tiny)"
        rng = np.random.default_rng(0)
        image = (rng.random((args.size, args.size)) * 4000).astype(np.uint16)
        tifffile.imwrite(work / "image.tif", image)
        script = work / "segment.py"
        script.write_text(PYTHON_SCRIPT)

        cli_cmd = [args.cli, "segment", work / "image.tif", "-m", model, "-o", work / "cli", "--device", "cpu", "-q"]
        py_cmd = [sys.executable, script, model, work / "image.tif", work / "python.tif"]
        # One untimed run of each fills the page cache with libtorch.
        wall(cli_cmd)
        wall(py_cmd)
        cli_times, py_times = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both
            cli_times.append(wall(cli_cmd))
            py_times.append(wall(py_cmd))
        agree = (tifffile.imread(work / "cli" / "image.tif") == tifffile.imread(work / "python.tif")).mean()

        cli_med, py_med = statistics.median(cli_times), statistics.median(py_times)
        print(f"model: {which}")
        print(f"image: {args.size}x{args.size} uint16, CPU, {os.cpu_count()} cores, {args.repeats} runs each (median)")
        print(f"labels agree on {agree:.4%} of pixels")
        print()
        print(f"{'':28} {'median s':>9} {'min s':>7} {'max s':>7}")
        print(f"{'unet-rt segment':28} {cli_med:9.3f} {min(cli_times):7.3f} {max(cli_times):7.3f}")
        print(f"{'python + torch.jit.load':28} {py_med:9.3f} {min(py_times):7.3f} {max(py_times):7.3f}")
        print(f"{'ratio (CLI / Python)':28} {cli_med / py_med:9.2f}   goal <= 0.50")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
