"""GPU correctness and speed check (run by gpu_check.sh on the GPU machine).

Checks, on the bundled nuclei model and a paper-size U-Net:
- labels on CUDA agree with the CPU fp32 labels: >= 99.99% in fp32, >= 99.9%
  in bf16 and fp16;
- test-time augmentation on the GPU gives the CPU's averaged logits;
- throughput in megapixels/s (median of 3 runs after a warm-up run of the
  same size) for fp32, bf16 and fp16 on 4096^2, and bf16 on 16384^2, with
  cuDNN's autotuner (``torch.backends.cudnn.benchmark``, one switch for the
  whole process: unet_rt runs on torch's own libtorch) off and on;
- beside it, in the same run, the peers on the same tiles: a plain PyTorch
  loop as a careful user writes it (the image uploaded once, normalised and
  mirror-padded on the GPU, windows batched, bf16 channels-last, cuDNN
  autotuning, labels downloaded once) and MONAI's sliding_window_inference;
- peak GPU memory (libtorch's caching allocator, shared with torch here).
Prints a table; exits non-zero when an agreement goal is missed.

``--device cpu --models nuclei --sizes 640 --precisions fp32,bf16 --check-size 128`` runs the same
code on the CPU in a minute (a smoke test of this script, not a benchmark).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=DeprecationWarning)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import unet_rt  # noqa: E402

GOALS = {"fp32": 0.9999, "bf16": 0.999, "fp16": 0.999}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def nuclei_image(size: int) -> np.ndarray:
    import tifffile

    base = tifffile.imread(ROOT / "data" / "dsb2018-nuclei" / "image.tif")
    reps = (size // base.shape[0] + 1, size // base.shape[1] + 1)
    return np.ascontiguousarray(np.tile(base, reps)[:size, :size])


def models(tmp: Path, names: List[str]):
    if "nuclei" in names:
        yield "nuclei", unet_rt.bundled_model_path()
    if "paper" not in names:
        return
    try:
        from training.export import build_metadata, export_torchscript
        from training.unet import UNet

        torch.manual_seed(0)
        net = UNet(base=64, depth=5, dropout=0.0).eval()
        meta = build_metadata(net.config, name="paper", normalization={"kind": "percentile", "low": 1, "high": 99.8})
        yield "paper (base 64)", export_torchscript(net, tmp / "paper.pt", meta)
    except ImportError as err:  # training/ needs nothing beyond torch, but be safe
        print(f"paper-size model skipped: {err}")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str, repeats: int = 3) -> Tuple[float, object]:
    """One warm-up run (kernels, cuDNN plans), then the median of ``repeats``."""
    result = fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def metadata(path: Path) -> Dict:
    from training.export import read_metadata

    return read_metadata(path)


def to_device_pixels(image: np.ndarray, device: str) -> torch.Tensor:
    """The uint16 image on the device as float32 (uploaded as int16 bits)."""
    bits = torch.from_numpy(image.view(np.int16)).to(device)
    return (bits.to(torch.int32) & 0xFFFF).to(torch.float32)


def plain_loop(path: Path, image: np.ndarray, tile: int, batch: int, precision: str, device: str,
               value_range: Tuple[float, float]) -> Callable[[], np.ndarray]:
    """The careful user's loop on the same tiles (percentiles given, not timed)."""
    meta = metadata(path)
    halo, multiple = meta["halo"], meta["size_multiple"]
    dtype = DTYPES[precision]
    net = torch.jit.load(str(path), map_location=device).eval().to(dtype).to(memory_format=torch.channels_last)
    size = image.shape[0]
    step = (tile - 2 * halo) // multiple * multiple
    n = -(-size // step)
    extent = (n - 1) * step + tile
    low, high = value_range
    scale = 1.0 / (high - low if high - low > 1e-20 else 1.0)
    corners = [(i * step, j * step) for i in range(n) for j in range(n)]

    def run() -> np.ndarray:
        with torch.inference_mode():
            x = (to_device_pixels(image, device) - low) * scale
            xp = F.pad(x[None, None], (halo,) * 4, mode="reflect")
            # Beyond the mirrored halo only outputs outside the image are made.
            xp = F.pad(xp, (0, extent - size - 2 * halo) * 2)
            labels = torch.empty((size, size), dtype=torch.uint8, device=device)
            for k in range(0, len(corners), batch):
                part = corners[k:k + batch]
                windows = torch.cat([xp[..., y:y + tile, x0:x0 + tile] for y, x0 in part])
                windows = windows.to(dtype).contiguous(memory_format=torch.channels_last)
                out = net(windows).argmax(1).to(torch.uint8)
                for (y, x0), o in zip(part, out):
                    h, w = min(step, size - y), min(step, size - x0)
                    labels[y:y + h, x0:x0 + w] = o[:h, :w]
            return labels.cpu().numpy()

    return run


def monai_loop(path: Path, image: np.ndarray, tile: int, batch: int, precision: str, device: str,
               value_range: Tuple[float, float]) -> Optional[Callable[[], np.ndarray]]:
    """MONAI's sliding_window_inference on the same windows (matched: no
    overlap beyond the network's halo, the engine's batch)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    meta = metadata(path)
    halo = meta["halo"]
    dtype = DTYPES[precision]
    net = torch.jit.load(str(path), map_location=device).eval().to(dtype).to(memory_format=torch.channels_last)
    low, high = value_range
    scale = 1.0 / (high - low if high - low > 1e-20 else 1.0)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        padded = F.pad(window, (halo,) * 4, mode="reflect").to(dtype).contiguous(memory_format=torch.channels_last)
        return net(padded).float()

    def run() -> np.ndarray:
        with torch.inference_mode():
            x = ((to_device_pixels(image, device) - low) * scale)[None, None]
            out = sliding_window_inference(x, roi_size=(tile - 2 * halo,) * 2, sw_batch_size=batch, overlap=0.0,
                                           predictor=predictor)
            return out[0].argmax(0).to(torch.uint8).cpu().numpy()

    return run


def set_autotune(on: bool) -> None:
    torch.backends.cudnn.benchmark = on


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--sizes", default="4096,16384", help="image sides; the last one runs in bf16 only")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--check-size", type=int, default=1024)
    parser.add_argument("--models", default="nuclei,paper")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = args.device
    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = args.precisions.split(",")
    info = unet_rt.build_info()
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else device
    lines = [f"build: {info}", f"device: {name}, {time.strftime('%Y-%m-%d')}"]
    if device.startswith("cuda") and not info["cuda_available"]:
        print("\n".join(lines + ["CUDA is not available to unet_rt"]))
        return 1
    rows: List[List[object]] = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, path in models(Path(tmp), args.models.split(",")):
            check = nuclei_image(args.check_size)
            cpu = unet_rt.Model(path, device="cpu", precision="fp32").segment(check)
            for precision in precisions:
                model = unet_rt.Model(path, device=device, precision=precision)
                set_autotune(False)
                agree = float((model.segment(check) == cpu).mean())
                ok = agree >= GOALS[precision]
                failed |= not ok
                lines.append(f"{model_name} {precision}: labels agree with the CPU fp32 on {agree:.6f} "
                             f"of the pixels (goal {GOALS[precision]}) {'ok' if ok else 'MISSED'}")
                for size in sizes if precision == "bf16" else sizes[:1]:
                    big = nuclei_image(size)
                    layout = model.layout(big.shape)
                    tile, batch = layout["tile"][0], layout["batch_size"]
                    mpx = big.size / 1e6
                    found: Dict[str, float] = {}
                    labels_by: Dict[str, np.ndarray] = {}

                    def measure(method: str, settings: str, fn: Callable[[], np.ndarray]) -> None:
                        if device.startswith("cuda"):
                            torch.cuda.reset_peak_memory_stats()
                        seconds, labels = median_seconds(fn, device)
                        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
                        found[method] = mpx / seconds
                        labels_by[method] = labels
                        rows.append([size, model_name, precision, method, settings, seconds, mpx / seconds, peak])

                    for autotune in (False, True):
                        set_autotune(autotune)
                        measure(f"unet_rt{' autotuned' if autotune else ''}", f"tile {tile}, batch {batch}",
                                lambda: model.segment(big))
                    if not args.no_peers:
                        value_range = model.percentile_range(big)
                        set_autotune(True)
                        measure("plain PyTorch loop", f"tile {tile}, batch {batch}, autotuned",
                                plain_loop(path, big, tile, batch, precision, device, value_range))
                        run_monai = monai_loop(path, big, tile, batch, precision, device, value_range)
                        if run_monai is None:
                            lines.append("MONAI is not installed: its rows are missing")
                        else:
                            measure("MONAI sliding_window_inference", f"roi {tile - 2 * metadata(path)['halo']}, "
                                    f"overlap 0, batch {batch}, autotuned", run_monai)
                        ours = max(found["unet_rt"], found["unet_rt autotuned"])
                        for peer in ("plain PyTorch loop", "MONAI sliding_window_inference"):
                            if peer in found:
                                agree_peer = float((labels_by[peer] == labels_by["unet_rt"]).mean())
                                lines.append(f"{size}^2 {model_name} {precision}: unet_rt {ours / found[peer]:.2f}x "
                                             f"the {peer} (labels agree on {agree_peer:.6f})")
                    set_autotune(False)
        # Test-time augmentation on the GPU: the same averaged logits as on the CPU.
        path = unet_rt.bundled_model_path()
        check = nuclei_image(512)
        want = unet_rt.Model(path, device="cpu", precision="fp32").segment(check, output="raw", tta="d4")
        got = unet_rt.Model(path, device=device, precision="fp32").segment(check, output="raw", tta="d4")
        tta_diff = float(np.abs(got - want).max() / max(1e-12, float(np.abs(want).max())))
        failed |= tta_diff > 1e-4
        lines.append(f"tta=d4 fp32, 512x512: max |GPU - CPU| / max |CPU| = {tta_diff:.2e} (goal <= 1e-4)")
    header = "| size | model | precision | method | settings | seconds | MP/s | peak GPU MiB |"
    lines += ["", header, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r[0]}^2 | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.1f} | {r[7]:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
