"""Engine benchmarks (issue 4): prints tables, asserts nothing.

    .venv/bin/python benchmarks/engine_bench.py            # everything (~15 min on 2 cores)
    .venv/bin/python benchmarks/engine_bench.py --only peers --size 2048

Sections:
  null        the host-side ceiling: the engine with a null model (two
              channels that are views of the input, metadata-declared, no
              compute; and an elementwise one that writes x and 1 - x) on 4096^2
              and 16384^2 uint8/uint16 images, labels and probabilities, in
              MP/s, beside NumPy baselines of the same bytes (a copy, a cast
              to float32): what gather, normalization, reduction and stitch
              cost when the network costs nothing (issue 15)
  throughput  megapixels/s on a SIZE x SIZE image: the bundled nuclei model and
              a paper-size U-Net (base 64, random weights), fp32 and bf16
  overhead    end-to-end time over the summed bare forward time of the same
              tiles (goal <= 1.05)
  tiles       the CPU tile choice against its neighbours: MP/s of each
              ladder tile (the planner's choice marked) for the bundled
              model (SIZE^2) and the paper-size U-Net (PAPER_SIZE^2), fp32
              and bf16, same run; the choice should be within ~5% of the
              fastest tile that fits the default budget (issue 15)
  memory      peak anonymous memory above input + output for a 16384^2 uint8
              image with the bundled model (goal <= 256 MiB)
  tta         test-time augmentation on the sample image with the bundled
              model: time against no augmentation, and the held-out scores
              (whole-image protocol of training.evaluate) each gives
  peers       on the same TorchScript model and device, in the same run:
              unet_rt, MONAI's sliding_window_inference (its defaults, and
              settings matched to ours) and a plain PyTorch tiling loop; speed
              and agreement with the whole-image forward (fp32 labels)

MONAI's sliding window expects outputs of the window's size; our models are
valid-padded (the output is smaller by the halo), so MONAI runs them through a
predictor that mirror-pads each window by the halo first: the usual way to
run such a network under MONAI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=DeprecationWarning)

import unet_rt  # noqa: E402
from training.export import build_metadata, export_torchscript  # noqa: E402
from training.unet import UNet  # noqa: E402

BUNDLED = ROOT / "python" / "unet_rt" / "models" / "nuclei.pt"


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}"


def paper_model(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = UNet(base=64, depth=5, dropout=0.0).eval()
    meta = build_metadata(net.config, name="paper-random", normalization={"kind": "percentile", "low": 1.0, "high": 99.8})
    return export_torchscript(net, tmp / "paper.pt", meta)


class NullNet(torch.nn.Module):
    """Two "classes" that are views of the one input channel: no arithmetic
    and no memory of its own, so what is measured is the engine alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 2, -1, -1)


class ElementwiseNet(torch.nn.Module):
    """Two classes from one channel, elementwise (``x`` and ``1 - x``): the
    cheapest network that writes its own output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1.0 - x], dim=1)


def null_model(tmp: Path, net: torch.nn.Module = None, name: str = "null") -> Path:
    """A network of no convolution (1 -> 2 channels) declared with metadata:
    the engine's whole pipeline runs, the network costs next to nothing."""
    net = (net or NullNet()).eval()
    meta = {"format": "unet_rt/1", "name": name, "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
            "output": "softmax", "padding": "same", "halo": 0, "size_multiple": 1, "size_offset": 0,
            "normalization": {"kind": "scale", "factor": 1.0 / 65535}}
    return export_torchscript(net, tmp / f"{name}.pt", meta)


def host_ceiling(tmp: Path, sizes: List[int]) -> None:
    models = {"null": unet_rt.Model(null_model(tmp), device="cpu", precision="fp32"),
              "elementwise": unet_rt.Model(null_model(tmp, ElementwiseNet(), "elementwise"), device="cpu",
                                           precision="fp32")}
    rows = []
    for side in sizes:
        for dtype in (np.uint8, np.uint16):
            image = (np.arange(side * side, dtype=np.uint32).reshape(side, side) * 2654435761 >> 7).astype(dtype)
            mp = side * side / 1e6
            copy, _ = timed(lambda: image.copy(), repeats=3)
            cast, _ = timed(lambda: image.astype(np.float32), repeats=3)
            rows.append([f"{side}^2", np.dtype(dtype).name, "numpy copy", "", "", copy, mp / copy])
            rows.append([f"{side}^2", np.dtype(dtype).name, "numpy astype(float32)", "", "", cast, mp / cast])
            for name, model in models.items():
                for output in ("labels", "probabilities"):
                    model.segment(image[:512, :512], output=output)  # warm-up
                    layout = model.layout(image.shape)
                    seconds, _ = timed(lambda: model.segment(image, output=output), repeats=3)
                    rows.append([f"{side}^2", np.dtype(dtype).name, f"unet_rt {output}", name,
                                 f"tile {layout['tile'][0]}, batch {layout['batch_size']}", seconds, mp / seconds])
            del image
    table("host-side ceiling: networks of no convolution, CPU fp32 (null: its output is a view of its input; "
          "elementwise: x and 1 - x, written)",
          ["image", "dtype", "what", "network", "settings", "seconds", "MP/s"], rows)


def test_image(size: int) -> np.ndarray:
    """Real nuclei tiled to SIZE x SIZE (uint16), so that labels mean something."""
    import tifffile

    base = tifffile.imread(ROOT / "data" / "dsb2018-nuclei" / "image.tif")
    reps = (size // base.shape[0] + 1, size // base.shape[1] + 1)
    return np.ascontiguousarray(np.tile(base, reps)[:size, :size])


def timed(fn: Callable[[], object], repeats: int = 1) -> Tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def table(title: str, header: List[str], rows: List[List[object]]) -> None:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    sys.stdout.flush()


def warm_cpu_models(models: Dict[str, Path], size: int,
                    paper_size: int) -> Iterator[Tuple[str, int, np.ndarray, str, "unet_rt.Model"]]:
    """Each model on its test image (PAPER_SIZE for the paper U-Net, SIZE
    for the others) in fp32 and bf16, loaded on the CPU and warmed up:
    ``(name, side, image, precision, model)``."""
    for name, path in models.items():
        side = paper_size if name.startswith("paper") else size
        image = test_image(side)
        for precision in ("fp32", "bf16"):
            model = unet_rt.Model(path, device="cpu", precision=precision)
            model.segment(image[:256, :256])  # warm-up
            yield name, side, image, precision, model


def throughput(models: Dict[str, Path], size: int, paper_size: int) -> None:
    rows = []
    for name, side, image, precision, model in warm_cpu_models(models, size, paper_size):
        layout = model.layout(image.shape)
        seconds, _ = timed(lambda: model.segment(image))
        rows.append([name, f"{side}x{side}", precision, layout["tile"][0], layout["tiles"], layout["batch_size"],
                     seconds, side * side / seconds / 1e6])
    table("throughput (CPU)", ["model", "image", "precision", "tile", "tiles", "batch", "seconds", "MP/s"], rows)


#: Tiles to try around the planner's choice, per model (ladder tiles: strides
#: 2^k and 3 * 2^k times the size multiple, plus the halo).
SWEEP_TILES = {"nuclei (bundled)": [284, 348, 476, 604], "paper U-Net (base 64)": [444, 572, 700, 828]}


def tile_sweep(models: Dict[str, Path], size: int, paper_size: int) -> None:
    rows = []
    for name, side, image, precision, model in warm_cpu_models(models, size, paper_size):
        chosen = model.layout(image.shape)["tile"][0]
        results = []
        for tile in sorted(set(SWEEP_TILES[name]) | {chosen}):
            tiles = model.layout(image.shape, tile=tile)["tiles"]
            seconds, _ = timed(lambda: model.segment(image, tile=tile))
            results.append((tile, tiles, seconds, side * side / seconds / 1e6))
        best = max(r[3] for r in results)
        for tile, tiles, seconds, mps in results:
            rows.append([name, f"{side}x{side}", precision, f"{tile}{' (chosen)' if tile == chosen else ''}", tiles,
                         seconds, mps, mps / best])
    table("CPU tile choice: each tile's throughput against the fastest (same run)",
          ["model", "image", "precision", "tile", "tiles", "seconds", "MP/s", "x fastest"], rows)


def overhead(models: Dict[str, Path], size: int) -> None:
    rows = []
    for name, path in models.items():
        image = test_image(size)
        for precision in ("fp32", "bf16"):
            model = unet_rt.Model(path, device="cpu", precision=precision)
            layout = model.layout(image.shape)
            tile, n, batch = layout["tile"], layout["tiles"], layout["batch_size"]
            model.segment(image)  # warm-up at this tile size
            end_to_end, _ = timed(lambda: model.segment(image), repeats=2)
            x = np.random.rand(batch, 1, *tile).astype(np.float32)
            model.forward(x)
            one, _ = timed(lambda: model.forward(x), repeats=3)
            bare = one * (n / batch)
            rows.append([name, precision, f"{tile[0]}x{tile[1]}", n, end_to_end, bare, end_to_end / bare])
    table(f"overhead on {size}x{size} (goal <= 1.05)", ["model", "precision", "tile", "tiles", "end-to-end s",
                                                        "bare forwards s", "ratio"], rows)


def augmentation() -> None:
    import tifffile

    from training.evaluate import score, scored_region

    data = ROOT / "data" / "dsb2018-nuclei"
    image, labels = tifffile.imread(data / "image.tif"), tifffile.imread(data / "labels.tif")
    region = scored_region(labels.shape)
    rows, base = [], None
    for precision in ("fp32", "bf16"):
        model = unet_rt.Model(BUNDLED, device="cpu", precision=precision)
        model.segment(image[:256, :256])  # warm-up
        for tta in ("none", "flips", "d4"):
            seconds, instances = timed(lambda: model.segment(image, output="instances", tta=tta), repeats=2)
            base = seconds if tta == "none" else base
            s = score(instances[region], labels[region])
            rows.append([precision, tta, seconds, seconds / base, s["iou"], s["ap"]["0.5"], s["ap"]["0.75"]])
    table("test-time augmentation, 512x512 sample (held-out rows scored)",
          ["precision", "tta", "seconds", "x none", "IoU", "AP@0.5", "AP@0.75"], rows)


MEMORY_SCRIPT = """
import sys, threading, time, numpy as np, unet_rt
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
side, path, precision = int(sys.argv[1]), sys.argv[2], sys.argv[3]
options = {"tile": int(sys.argv[4])} if len(sys.argv) > 4 else {}
image = np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8)
out = np.zeros((side, side), np.uint8); out[...] = 1
model = unet_rt.Model(path, device="cpu", precision=precision)
model.segment(image[:512, :512])
base = anon(); peak = [base]; stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.02)
t = threading.Thread(target=watch); t.start()
start = time.perf_counter(); model.segment(image, out=out, **options); seconds = time.perf_counter() - start
stop.set(); t.join()
print((peak[0] - base) / 2**20, seconds, model.layout(image.shape, **options)["tile"][0])
"""


def memory(path: Path, side: int) -> None:
    """The CPU default against the largest tile within the default 1 GiB
    budget (the GPU rule, and the CPU's before issue 15), same run."""
    rows = []
    for precision in ("fp32", "bf16"):
        model = unet_rt.Model(path, device="cpu", precision=precision)
        largest = model.layout((side, side), device="cuda", memory_budget=1 << 30)["tile"][0]
        for label, extra_args in (("default", []), ("largest in 1 GiB", [str(largest)])):
            proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(side), str(path), precision, *extra_args],
                                  capture_output=True, text=True, check=True)
            extra, seconds, tile = proc.stdout.split()
            rows.append([precision, f"{side}x{side} uint8", label, int(tile), float(seconds),
                         side * side / 1e6 / float(seconds), float(extra)])
    table("peak memory above input + output (goal <= 256 MiB), CPU", ["precision", "image", "tiles", "tile", "seconds",
                                                                      "MP/s", "extra MiB"], rows)


def whole_labels(path: Path, image: np.ndarray) -> np.ndarray:
    """Labels of one fp32 forward pass over the whole mirror-padded image."""
    from training.export import read_metadata
    from training.reference import reference_whole

    with torch.no_grad():
        return reference_whole(torch.jit.load(str(path)), image, read_metadata(path)).argmax(0)


def peers(path: Path, size: int) -> None:
    from monai.inferers import sliding_window_inference

    from training.export import read_metadata
    from training.reference import normalize

    meta = read_metadata(path)
    halo = meta["halo"]
    image = test_image(size)
    reference = whole_labels(path, image)
    rows = []

    def agreement(labels: np.ndarray) -> float:
        return float((labels == reference).mean())

    for precision in ("fp32", "bf16"):
        ours = unet_rt.Model(path, device="cpu", precision=precision)
        ours.segment(image[:512, :512])
        layout = ours.layout(image.shape)
        tile, batch = layout["tile"], layout["batch_size"]
        seconds, labels = timed(lambda: ours.segment(image))
        rows.append(["unet_rt", precision, f"tile {tile[0]}, batch {batch}", seconds, size * size / seconds / 1e6,
                     agreement(labels)])

        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        net = torch.jit.load(str(path)).eval()
        net = net.to(dtype)
        if precision == "bf16":
            net = net.to(memory_format=torch.channels_last)
        x = torch.from_numpy(normalize(image, meta["normalization"]))[None, None]

        def padded_predictor(window: torch.Tensor) -> torch.Tensor:
            padded = torch.nn.functional.pad(window, (halo,) * 4, mode="reflect").to(dtype)
            if precision == "bf16":
                padded = padded.contiguous(memory_format=torch.channels_last)
            return net(padded).float()

        out_tile = tile[0] - 2 * halo
        # MONAI has no default window; 256 is the usual choice, taken down to
        # the nearest size whose mirror-padded window the network accepts.
        roi = max(r for r in range(8, 257) if (r + 2 * halo - meta["size_offset"]) % meta["size_multiple"] == 0)
        settings = {
            f"MONAI defaults (roi {roi}, overlap 0.25, batch 1)": dict(roi_size=(roi, roi), sw_batch_size=1, overlap=0.25),
            f"MONAI matched (roi {out_tile}, overlap 0, batch {batch})": dict(roi_size=(out_tile, out_tile),
                                                                               sw_batch_size=batch, overlap=0.0),
        }
        for label, kw in settings.items():
            def run_monai() -> np.ndarray:
                with torch.no_grad():
                    return sliding_window_inference(x, predictor=padded_predictor, **kw)[0].argmax(0).numpy()

            seconds, labels = timed(run_monai)
            rows.append([label, precision, "", seconds, size * size / seconds / 1e6, agreement(labels)])

        def plain_loop() -> np.ndarray:
            # The obvious PyTorch loop: mirror-pad once, cut windows on a grid,
            # forward, paste the centres.
            step = (tile[0] - 2 * halo) // meta["size_multiple"] * meta["size_multiple"]
            n = -(-size // step)
            extent = (n - 1) * step + tile[0]
            xp = np.pad(normalize(image, meta["normalization"]), [(halo, extent - size - halo)] * 2, mode="reflect")
            labels = np.zeros((size, size), np.uint8)
            with torch.no_grad():
                for i in range(n):
                    for j in range(n):
                        w = torch.from_numpy(np.ascontiguousarray(xp[i * step:i * step + tile[0], j * step:j * step + tile[0]]))
                        w = w[None, None].to(dtype)
                        if precision == "bf16":
                            w = w.contiguous(memory_format=torch.channels_last)
                        y = net(w)[0].float().argmax(0).numpy()
                        h, v = min(step, size - i * step), min(step, size - j * step)
                        labels[i * step:i * step + h, j * step:j * step + v] = y[:h, :v]
            return labels

        seconds, labels = timed(plain_loop)
        rows.append(["plain PyTorch loop", precision, f"tile {tile[0]}", seconds, size * size / seconds / 1e6,
                     agreement(labels)])
    table(f"peers on {size}x{size} nuclei ({Path(path).name}, CPU); agreement = labels equal to the fp32 whole-image forward",
          ["method", "precision", "settings", "seconds", "MP/s", "agreement"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["null", "throughput", "tiles", "overhead", "memory", "tta", "peers"], action="append")
    parser.add_argument("--null", action="store_true", help="the host-side ceiling only (same as --only null)")
    parser.add_argument("--null-sizes", default="4096,16384", help="image sides for the null model (default %(default)s)")
    parser.add_argument("--size", type=int, default=4096, help="image side for throughput")
    parser.add_argument("--paper-size", type=int, default=2048, help="image side for the paper-size U-Net")
    parser.add_argument("--peer-size", type=int, default=2048, help="image side for the peer comparison")
    parser.add_argument("--memory-size", type=int, default=16384)
    args = parser.parse_args()
    sections = ["null"] if args.null else args.only or ["null", "throughput", "overhead", "memory", "tta", "peers"]
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# unet_rt engine benchmarks\n\nmachine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        if "null" in sections:
            host_ceiling(Path(tmp), [int(s) for s in args.null_sizes.split(",")])
        if sections == ["null"]:
            return
        models = {"nuclei (bundled)": BUNDLED, "paper U-Net (base 64)": paper_model(Path(tmp))}
        if "throughput" in sections:
            throughput(models, args.size, args.paper_size)
        if "tiles" in sections:
            tile_sweep(models, args.size, args.paper_size)
        if "overhead" in sections:
            overhead({"nuclei (bundled)": BUNDLED}, 2048)
        if "memory" in sections:
            memory(BUNDLED, args.memory_size)
        if "tta" in sections:
            augmentation()
        if "peers" in sections:
            peers(BUNDLED, args.peer_size)


if __name__ == "__main__":
    main()
