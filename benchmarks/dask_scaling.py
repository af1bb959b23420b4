"""Scaling of unet_rt.dask: one process against Dask workers.

Segments one zarr image (uint16, 2-D) with a tiny random U-Net (or --model)
in several ways and prints a table: wall time, throughput, and the peak
resident memory of each process that did the work.

    .venv/bin/python benchmarks/dask_scaling.py                 # 4096 x 4096
    .venv/bin/python benchmarks/dask_scaling.py --size 8192 --workers 4 --device cuda

Rows:
  unet_rt.segment          the whole array in this process (reference)
  segment_to_zarr, local   blocks one after the other in this process
  N worker(s) x T thr.     segment_to_zarr on a LocalCluster of N worker
                           processes whose libtorch uses T threads each
  ..., no trim             the same without Dask's MALLOC_TRIM_THRESHOLD_

The "same bits" column compares each result with the whole array's.

Run it on a machine of its own: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def best_of(repeat: int, job: Callable[[], object]) -> float:
    """The shortest wall time of ``repeat`` runs (the machine may be shared)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        job()
        times.append(time.perf_counter() - started)
    return min(times)


def run_cluster(source: str, dest: str, model: str, workers: int, threads: int, device: str, block: int,
                repeat: int, trim: bool) -> Dict:
    import dask
    from distributed import Client, LocalCluster

    import unet_rt.dask as ud

    # Dask starts workers with OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1 (libtorch
    # takes its thread count from MKL's): give each worker `threads`.
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if not trim:
        # Dask also sets MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's mmap
        # threshold: every large array is then a fresh mmap (page faults).
        environ["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] = None
    with dask.config.set(environ), LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # /health on a free port, not 8787
    ) as cluster, Client(cluster) as client:
        # Start-up (torch import, model load) is not what is measured.
        spec = ud.ModelSpec.of(model, device, "fp32")
        client.run(ud.load_model, spec)
        outputs = []
        elapsed = best_of(repeat, lambda: outputs.append(ud.segment_to_zarr(
            source, dest, model, client=client, device=device, precision="fp32", block=block, resume=False,
            progress=False)))
        peaks = list(client.run(peak_rss).values())
    return {"seconds": elapsed, "peaks": peaks, "result": outputs[-1][...]}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="image side (default 4096)")
    parser.add_argument("--block", type=int, default=1024, help="block side per task (default 1024)")
    parser.add_argument("--workers", type=int, default=2, help="most worker processes to try (default 2)")
    parser.add_argument("--model", default=None, help="model file (default: a tiny random U-Net)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: one worker per GPU on GPU machines")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best is shown (default 3)")
    args = parser.parse_args(argv)

    import zarr

    import unet_rt
    import unet_rt.dask as ud
    from training.tiny import export_tiny

    work = Path(tempfile.mkdtemp(prefix="unet_rt_dask_bench_"))
    try:
        model_path = args.model or str(export_tiny(work / "tiny.pt", seed=0))
        rng = np.random.default_rng(0)
        image = (rng.random((args.size, args.size)) * 4000).astype(np.uint16)
        zarr.create_array(work / "in.zarr", data=image, chunks=(args.block, args.block))
        pixels = image.size
        cores = os.cpu_count()
        rows = []

        model = unet_rt.Model(model_path, device=args.device, precision="fp32")
        model.segment(image[:256, :256])  # warm-up
        want = model.segment(image)
        seconds = best_of(args.repeat, lambda: model.segment(image))
        rows.append(("unet_rt.segment (whole array)", seconds, [peak_rss()], True))
        seconds = best_of(args.repeat, lambda: ud.segment_to_zarr(
            work / "in.zarr", work / "local.zarr", model, client=False, block=args.block, resume=False, progress=False))
        local = zarr.open_group(work / "local.zarr")["labels"][...]
        rows.append(("segment_to_zarr, in this process", seconds, [peak_rss()], bool((local == want).all())))

        configs = [(n, max(1, (cores or 1) // n)) for n in range(1, args.workers + 1)]
        if args.device.startswith("cuda"):
            # Local workers would share the first GPU: one worker here; for
            # several GPUs use dask_cuda.LocalCUDACluster (docs/dask.md).
            configs = [(1, 1)]
        for trim in (True, False):
            for workers, threads in configs:
                result = run_cluster(str(work / "in.zarr"), str(work / f"out{workers}.zarr"), model_path, workers,
                                     threads, args.device, args.block, args.repeat, trim)
                name = f"{workers} worker(s) x {threads} thread(s){'' if trim else ', no trim'}"
                rows.append((name, result["seconds"], result["peaks"], bool((result["result"] == want).all())))

        print(f"\n{args.size} x {args.size} uint16 ({pixels / 1e6:.1f} Mpx), blocks {args.block}, device "
              f"{args.device}, {cores} cores, {unet_rt.build_info()['libtorch_version']}, best of {args.repeat}")
        print(f"{'how':44} {'seconds':>8} {'Mpx/s':>7} {'speed-up':>8} {'same bits':>9}  peak memory per process")
        reference = rows[0][1]
        for name, seconds, peaks, same in rows:
            memory = ", ".join(f"{p / 2**20:.0f} MiB" for p in peaks)
            print(f"{name:44} {seconds:8.2f} {pixels / seconds / 1e6:7.2f} {reference / seconds:8.2f} "
                  f"{'yes' if same else 'no':>9}  {memory}")
        print("same bits: labels identical to the whole array's in this process (CPU fp32 kernels split their sums by "
              "thread count, so workers with fewer threads than this process may differ in the last bits)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
