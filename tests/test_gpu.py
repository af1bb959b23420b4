"""The CUDA path: run on a machine with a GPU (``pytest -m gpu``; the device
script ``benchmarks/gpu_check.sh`` runs them). Skipped where CUDA is not
available to unet_rt, as in CI."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import unet_rt
from training.tiny import export_tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not unet_rt.build_info()["cuda_available"], reason="CUDA is not available to unet_rt"),
]


@pytest.fixture(scope="module")
def wide_model_path(tmp_path_factory):
    """A random 3-level model with 16 base channels: kernels of realistic width."""
    return export_tiny(tmp_path_factory.mktemp("gpu") / "wide.pt", seed=3, base=16)


def image(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 4000).astype(np.uint16)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_agrees_with_the_cpu(wide_model_path, precision):
    x = image((700, 530))
    cpu = unet_rt.Model(wide_model_path, device="cpu", precision="fp32")
    gpu = unet_rt.Model(wide_model_path, device="cuda:0", precision=precision)
    assert gpu.device == "cuda:0" and gpu.precision == precision
    probs = gpu.segment(x, output="probabilities")
    want = cpu.segment(x, output="probabilities")
    tolerance = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 2e-2}[precision]  # fp32 convolutions may use TF32
    assert np.abs(probs - want).max() < tolerance
    assert agreement(gpu.segment(x), cpu.segment(x)) > (0.999 if precision == "fp32" else 0.99)


def test_auto_device_is_the_gpu_and_auto_precision_is_bf16(wide_model_path):
    model = unet_rt.Model(wide_model_path, precision="auto")
    assert model.device.startswith("cuda") and model.precision == "bf16"
    # The default is the same everywhere: fp32.
    assert unet_rt.Model(wide_model_path).precision == "fp32"


def test_tiles_batches_and_repeats_give_the_same_result(wide_model_path):
    model = unet_rt.Model(wide_model_path, device="cuda:0", precision="fp32")
    x = image((600, 900), seed=1)
    first = model.segment(x, output="probabilities")
    np.testing.assert_array_equal(model.segment(x, output="probabilities"), first)
    small = model.segment(x, output="probabilities", tile=140, batch_size=8)
    np.testing.assert_allclose(small, first, atol=2e-3)


def test_a_stack_and_out_on_the_gpu(wide_model_path):
    model = unet_rt.Model(wide_model_path, device="cuda:0", precision="fp32")
    stack = image((3, 256, 300), seed=2)
    out = np.zeros((3, 256, 300), np.uint8)
    assert model.segment(stack, axes="byx", out=out) is out
    for i in range(3):
        np.testing.assert_array_equal(out[i], model.segment(stack[i]))


def test_threads_share_one_gpu_model(wide_model_path):
    model = unet_rt.Model(wide_model_path, device="cuda:0", precision="bf16")
    images = [image((300, 300), seed=s) for s in range(6)]
    want = [model.segment(x) for x in images]
    got = [None] * len(images)

    def work(i):
        got[i] = model.segment(images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_the_bundled_model_on_the_gpu_matches_its_cpu_labels():
    import tifffile

    x = tifffile.imread(Path(__file__).resolve().parents[1] / "data" / "dsb2018-nuclei" / "image.tif")
    cpu = unet_rt.segment(x, device="cpu", precision="fp32")
    assert agreement(unet_rt.segment(x, device="cuda:0", precision="fp32"), cpu) > 0.9999
    assert agreement(unet_rt.segment(x, device="cuda:0", precision="bf16"), cpu) > 0.999


def test_a_missing_gpu_index_is_a_device_error(wide_model_path):
    with pytest.raises(unet_rt.DeviceError):
        unet_rt.Model(wide_model_path, device="cuda:99")


def test_windows_on_the_gpu_give_the_whole_images_result(wide_model_path):
    """Same tiles, batch sizes and input windows: cuDNN then picks the same
    algorithms, and the pieces equal the whole image bit for bit."""
    model = unet_rt.Model(wide_model_path, device="cuda:0", precision="bf16")
    x = image((900, 700), seed=5)
    whole = model.segment(x, output="raw", tile=220, batch_size=3)
    values = model.percentile_range(x)
    for start, shape in [((0, 0), (300, 700)), ((350, 130), (200, 333)), ((899, 699), (1, 1))]:
        region = unet_rt.Window(image=x.shape, start=start, shape=shape)
        (y0, x0), (y1, x1) = model.needed_input(region, tile=220, batch_size=3)
        got = model.segment(x[y0:y1, x0:x1], output="raw", tile=220, batch_size=3, window=region.at((y0, x0)),
                            input_range=values)
        np.testing.assert_array_equal(got, whole[:, start[0] : start[0] + shape[0], start[1] : start[1] + shape[1]])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dask_blocks_on_the_gpu_equal_the_whole_gpu_result(wide_model_path, precision):
    """The tiling is planned for the GPU (its memory budget, its precision)
    on the client; blocks run as windows of the whole image."""
    da = pytest.importorskip("dask.array")
    import unet_rt.dask as ud

    gpu = unet_rt.Model(wide_model_path, device="cuda:0", precision=precision)
    x = image((1500, 1300), 7)
    lazy = ud.segment(da.from_array(x, chunks=400), wide_model_path, device="cuda:0", precision=precision,
                      output="raw", tile=300)
    got = lazy.compute(scheduler="sync")
    assert (got == gpu.segment(x, output="raw", tile=300)).all()
    # The default tiling (a share of the GPU's free memory) as unet_rt.segment chooses it.
    default = ud.segment(da.from_array(x, chunks=400), gpu).compute(scheduler="sync")
    assert (default == gpu.segment(x)).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_non_finite_output_on_the_gpu_raises_and_names_the_tile(tmp_path, precision):
    import torch

    extra = {"unet_rt.json": ""}
    module = torch.jit.load(str(export_tiny(tmp_path / "ok.pt", seed=4)), map_location="cpu", _extra_files=extra)
    with torch.no_grad():
        next(iter(module.parameters())).fill_(float("inf"))
    torch.jit.save(module, str(tmp_path / "inf.pt"), _extra_files=extra)
    gpu = unet_rt.Model(tmp_path / "inf.pt", device="cuda:0", precision=precision)
    with pytest.raises(unet_rt.NonFiniteError, match="tile 0"):
        gpu.segment(image((300, 200)), output="probabilities")
    assert not np.isfinite(gpu.segment(image((300, 200)), output="raw", nonfinite="propagate")).all()


def test_every_gpu_at_once_gives_one_gpus_result(wide_model_path):
    """device="cuda:all": batches spread over the GPUs (one here, perhaps),
    stitched in order; the result is the first GPU's bit for bit."""
    many = unet_rt.Model(wide_model_path, device="cuda:all", precision="fp32")
    one = unet_rt.Model(wide_model_path, device="cuda:0", precision="fp32")
    assert many.devices == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    x = image((700, 900), seed=9)
    np.testing.assert_array_equal(many.segment(x, output="raw", tile=220, batch_size=2),
                                  one.segment(x, output="raw", tile=220, batch_size=2))
    assert pickle.loads(pickle.dumps(many)).devices == many.devices


FORK_AFTER_CUDA = """
import multiprocessing, sys, numpy as np, unet_rt

image = (np.random.default_rng(0).random((300, 300)) * 4000).astype(np.uint16)

def child(_):
    try:
        unet_rt.Model(sys.argv[1], device="cuda:0").segment(image)
        cuda = "ran"
    except unet_rt.DeviceError as e:
        cuda = "refused" if "spawn" in str(e) else f"DeviceError: {e}"
    except Exception as e:
        cuda = f"{type(e).__name__}: {e}"
    return cuda, unet_rt.Model(sys.argv[1], device="cpu").segment(image)

def spawned(_):
    return unet_rt.Model(sys.argv[1], device="cuda:0").segment(image)

if __name__ == "__main__":
    want = unet_rt.Model(sys.argv[1], device="cuda:0").segment(image)
    cpu = unet_rt.Model(sys.argv[1], device="cpu").segment(image)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        cuda, child_cpu = pool.map(child, [0])[0]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        spawned_labels = pool.map(spawned, [0])[0]
    print(cuda, bool((child_cpu == cpu).all()), float((spawned_labels == want).mean()), flush=True)
"""


def test_a_forked_child_of_a_cuda_process_is_told_to_spawn(tmp_path, wide_model_path):
    # CUDA cannot run in a child forked after the parent used it: the child
    # gets a DeviceError with advice (and the CPU), a spawned worker the GPU.
    import os
    import subprocess
    import sys

    script = tmp_path / "fork_cuda.py"
    script.write_text(FORK_AFTER_CUDA)
    done = subprocess.run([sys.executable, str(script), str(wide_model_path)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cuda, cpu_same, spawned = done.stdout.split()
    assert (cuda, cpu_same) == ("refused", "True") and float(spawned) > 0.9999, done.stdout


DAEMON_CUDA_AT_EXIT = """
import sys, threading, time, numpy as np, unet_rt
model = unet_rt.Model(sys.argv[1], device="cuda:0")
image = (np.random.default_rng(0).random((8000, 8000)) * 4000).astype(np.uint16)
threading.Thread(target=lambda: model.segment(image), daemon=True).start()
time.sleep(1.0)
print("exiting", flush=True)
"""


def test_interpreter_exit_with_a_daemon_thread_on_the_gpu_is_clean(tmp_path, wide_model_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "daemon_cuda.py"
    script.write_text(DAEMON_CUDA_AT_EXIT)
    done = subprocess.run([sys.executable, str(script), str(wide_model_path)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["exiting"], (done.returncode, done.stderr[-3000:])
    assert "panicked" not in done.stderr


ATTENTION_ON_THE_GPU = """
import sys, warnings, torch, unet_rt
from training.zoo import GlobalAttentionUNet
torch.manual_seed(0)
torch.jit.save(torch.jit.script(GlobalAttentionUNet(16, 2).eval()), sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = unet_rt.Model(sys.argv[1], device="cuda:0")
print([type(w.message).__name__ for w in caught], model.info["exact"], model.info["measured"]["probe_size"], flush=True)
"""


def test_probing_on_the_gpu_stops_before_the_device_runs_out(tmp_path):
    # Attention at the 1/4 level: two 16 GiB matrices at a 1024 px probe,
    # 256 GiB each at 2048. The device's out-of-memory error was read as a
    # network that fails at that size, and the load failed; the passes'
    # device memory (what the caching allocator holds after each) now
    # stops the probes at the last size that fits.
    import os
    import subprocess
    import sys

    script = tmp_path / "attention_cuda.py"
    script.write_text(ATTENTION_ON_THE_GPU)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "attention.pt")], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    warned, exact, probe_size = done.stdout.split("] ")[0] + "]", *done.stdout.split("] ")[1].split()
    assert (warned, exact) == ("['ApproximateTilingWarning']", "False"), done.stdout
    assert 256 <= int(probe_size) <= 1024, done.stdout
