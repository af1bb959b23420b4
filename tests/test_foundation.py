"""The first vertical slice: linking, build info, and the same numbers from
PyTorch, the Python extension and the command-line tool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import unet_rt
from training.export import read_metadata
from training.reference import reference_whole

EXTENSION = Path(unet_rt._unet_rt.__file__)


def run(cmd, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)


def test_build_info_reports_versions_devices_and_threads():
    info = unet_rt.build_info()
    assert info["version"] == unet_rt.__version__
    assert info["libtorch_version"].split("+")[0] == torch.__version__.split("+")[0] == "2.11.0"
    assert info["cuda_available"] == torch.cuda.is_available()
    assert info["cuda_device_count"] == torch.cuda.device_count()
    assert info["cpu_threads"] >= 1


def test_import_in_a_new_shell_loads_one_libtorch(clean_env):
    code = (
        "import unet_rt; unet_rt.build_info();"
        "maps = open('/proc/self/maps').read().split();"
        "print(len({p for p in maps if p.endswith('/libtorch_cpu.so')}))"
    )
    proc = run([sys.executable, "-c", code], env=clean_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_cli_version_in_a_new_shell(cli, clean_env):
    proc = run([cli, "--version"], env=clean_env)
    assert proc.returncode == 0, proc.stderr
    assert f"unet-rt {unet_rt.__version__}" in proc.stdout
    assert "libtorch 2.11.0" in proc.stdout
    assert "CUDA" in proc.stdout and "CPU threads" in proc.stdout


def test_the_build_environment_drops_other_environments_settings(clean_env):
    # Each of these broke a build or the result once: a cross target put the
    # CLI where the copy did not look, a PYTHONPATH or CONDA_PREFIX another
    # unet_rt or refused maturin, LD_LIBRARY_PATH another libtorch, CDPATH
    # a doubled folder name.
    foreign = {"CARGO_BUILD_TARGET": "aarch64-unknown-linux-gnu", "PYTHONPATH": "/elsewhere",
               "CONDA_PREFIX": "/opt/conda", "LD_LIBRARY_PATH": "/opt/other/lib", "CDPATH": "/tmp",
               "PYTHONHOME": "/opt/python"}
    names = " ".join(f"{name}=${{{name}-unset}}" for name in foreign)
    root = Path(__file__).resolve().parents[1]
    proc = run(["bash", "-c", f'source scripts/env.sh && echo "$ROOT" {names}'], env={**clean_env, **foreign},
               cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(root)] + [f"{name}=unset" for name in foreign]


@pytest.mark.parametrize("binary", ["cli", "extension"])
def test_libtorch_cuda_stays_linked(binary, cli):
    path = cli if binary == "cli" else EXTENSION
    dynamic = run(["readelf", "-d", path]).stdout
    assert "[libtorch_cuda.so]" in dynamic, f"{path} does not need libtorch_cuda.so"
    assert "not found" not in run(["ldd", path]).stdout


def test_python_forward_equals_pytorch(tiny_model_path):
    model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
    batch = np.random.default_rng(1).random((2, 1, 52, 44), dtype=np.float32)
    with torch.no_grad():
        want = torch.jit.load(str(tiny_model_path))(torch.from_numpy(batch)).numpy()
    got = model.forward(batch)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    # float64 and non-contiguous input are converted, with the same result.
    np.testing.assert_allclose(model.forward(batch.astype(np.float64)[::-1])[::-1], want, atol=1e-5)


def test_cli_raw_output_equals_the_pytorch_oracle(tiny_model_path, cli, tmp_path):
    image = (np.random.default_rng(2).random((61, 47)) * 4000).astype(np.float32)
    np.save(tmp_path / "img.npy", image)
    proc = run([cli, "segment", tmp_path / "img.npy", "-m", tiny_model_path, "-o", tmp_path / "out", "--output-kind", "raw", "--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out" / "img.npy")
    net = torch.jit.load(str(tiny_model_path))
    want = reference_whole(net, image, read_metadata(tiny_model_path))
    assert got.shape == (2, 61, 47)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_cli_reads_16bit_tiff_and_writes_label_tiff(tiny_model_path, cli, tmp_path):
    image = (np.random.default_rng(3).random((50, 70)) * 65535).astype(np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "cells.tif", image)
    proc = run([cli, "segment", tmp_path / "in" / "cells.tif", "-m", tiny_model_path, "-o", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    labels = tifffile.imread(tmp_path / "out" / "cells.tif")
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    net = torch.jit.load(str(tiny_model_path))
    want = reference_whole(net, image.astype(np.float32), read_metadata(tiny_model_path)).argmax(0)
    assert (labels == want).mean() > 0.999
    assert np.array_equal(tifffile.imread(tmp_path / "in" / "cells.tif"), image), "the input is untouched"
    assert not list(tmp_path.rglob(".*partial")), "no temporary files left"


def test_python_errors_say_what_is_wrong(tiny_model_path, tmp_path):
    model = unet_rt.Model(tiny_model_path)
    with pytest.raises(unet_rt.InvalidArgumentError, match="rank 4"):
        model.forward(np.zeros((44, 44), np.float32))
    with pytest.raises(ValueError, match="1 input channel"):
        model.forward(np.zeros((1, 3, 44, 44), np.float32))
    with pytest.raises(ValueError, match="not a valid input size"):
        model.forward(np.zeros((1, 1, 45, 44), np.float32))
    with pytest.raises(FileNotFoundError, match="not found"):
        unet_rt.Model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(Path(tiny_model_path).read_bytes()[:5000])
    with pytest.raises(unet_rt.ModelError) as info:
        unet_rt.Model(corrupt)
    assert "Exception raised from" not in str(info.value)
    with pytest.raises(unet_rt.InvalidArgumentError, match="device"):
        unet_rt.Model(tiny_model_path, device="tpu")


def test_cli_errors_have_exit_status_and_message(tiny_model_path, cli, tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((50, 50), np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((4, 50, 50), np.float32))
    out = tmp_path / "out"
    missing = run([cli, "segment", tmp_path / "img.npy", "-m", tmp_path / "nope.pt", "-o", out])
    assert missing.returncode == 2 and "model file not found" in missing.stderr
    (tmp_path / "bad.pt").write_text("not a model")
    bad = run([cli, "segment", tmp_path / "img.npy", "-m", tmp_path / "bad.pt", "-o", out])
    assert bad.returncode == 2 and "not a TorchScript archive" in bad.stderr
    usage = run([cli, "segment", tmp_path / "img.npy"])  # no --output (--model defaults to the bundled one)
    assert usage.returncode == 2 and "--output" in usage.stderr
    # One bad input fails (status 1) while the good one is still written.
    mixed = run([cli, "segment", tmp_path / "cube.npy", tmp_path / "img.npy", "-m", tiny_model_path, "-o", out])
    assert mixed.returncode == 1
    assert "cube.npy" in mixed.stderr and "2-D" in mixed.stderr
    assert (out / "img.tif").exists() and not (out / "cube.tif").exists()
    for proc in (missing, bad, usage, mixed):
        assert "panicked" not in proc.stderr and "RUST_BACKTRACE" not in proc.stderr
