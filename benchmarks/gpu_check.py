"""GPU correctness and speed check (run by gpu_check.sh on the GPU machine).

Checks, on the bundled nuclei model and a paper-size U-Net:
- labels on CUDA agree with the CPU fp32 labels: >= 99.99% in fp32, >= 99.9%
  in bf16 and fp16;
- throughput in megapixels/s for fp32, bf16 and fp16 on a 4096^2 image
  (median of 3 runs after a warm-up run of the same size);
- peak GPU memory (libtorch's caching allocator, shared with torch here).
Prints a table; exits non-zero when an agreement goal is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import unet_rt  # noqa: E402

GOALS = {"fp32": 0.9999, "bf16": 0.999, "fp16": 0.999}


def nuclei_image(size: int) -> np.ndarray:
    import tifffile

    base = tifffile.imread(ROOT / "data" / "dsb2018-nuclei" / "image.tif")
    reps = (size // base.shape[0] + 1, size // base.shape[1] + 1)
    return np.ascontiguousarray(np.tile(base, reps)[:size, :size])


def models(tmp: Path):
    yield "nuclei", unet_rt.bundled_model_path()
    try:
        from training.export import build_metadata, export_torchscript
        from training.unet import UNet

        torch.manual_seed(0)
        net = UNet(base=64, depth=5, dropout=0.0).eval()
        meta = build_metadata(net.config, name="paper", normalization={"kind": "percentile", "low": 1, "high": 99.8})
        yield "paper (base 64)", export_torchscript(net, tmp / "paper.pt", meta)
    except ImportError as err:  # training/ needs nothing beyond torch, but be safe
        print(f"paper-size model skipped: {err}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--check-size", type=int, default=1024)
    parser.add_argument("--out")
    args = parser.parse_args()
    info = unet_rt.build_info()
    lines = [f"build: {info}", f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"]
    if not info["cuda_available"]:
        print("\n".join(lines + ["CUDA is not available to unet_rt"]))
        return 1
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models(Path(tmp)):
            check = nuclei_image(args.check_size)
            cpu = unet_rt.Model(path, device="cpu", precision="fp32").segment(check)
            big = nuclei_image(args.size)
            for precision in ("fp32", "bf16", "fp16"):
                model = unet_rt.Model(path, device="cuda:0", precision=precision)
                agree = float((model.segment(check) == cpu).mean())
                model.segment(big)  # warm-up: cuDNN picks algorithms per tile shape on first use
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    model.segment(big)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                seconds = sorted(times)[1]
                layout = model.layout(big.shape)
                ok = agree >= GOALS[precision]
                failed |= not ok
                rows.append((name, precision, layout["tile"][0], layout["batch_size"], seconds,
                             big.size / seconds / 1e6, torch.cuda.max_memory_allocated() / 2**20, agree, ok))
        # Test-time augmentation on the GPU: the same averaged logits as on the CPU.
        path = unet_rt.bundled_model_path()
        check = nuclei_image(512)
        want = unet_rt.Model(path, device="cpu", precision="fp32").segment(check, output="raw", tta="d4")
        got = unet_rt.Model(path, device="cuda:0", precision="fp32").segment(check, output="raw", tta="d4")
        tta_diff = float(np.abs(got - want).max() / max(1e-12, float(np.abs(want).max())))
        failed |= tta_diff > 1e-4
        lines.append(f"tta=d4 fp32, 512x512: max |GPU - CPU| / max |CPU| = {tta_diff:.2e} (goal <= 1e-4)")
    header = "| model | precision | tile | batch | seconds | MP/s | peak GPU MiB | agreement with CPU fp32 | goal met |"
    lines += ["", header, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.1f} | {r[6]:.0f} | {r[7]:.6f} | {r[8]} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
