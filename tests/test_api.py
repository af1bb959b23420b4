"""The Python API: unet_rt.segment and unet_rt.Model (docs/design.md section 7)."""

from __future__ import annotations

import ast
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import unet_rt
from training.export import read_metadata
from training.reference import reference_whole
from training.tiny import export_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tiny_model_path) -> unet_rt.Model:
    return unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> unet_rt.Model:
    path = export_tiny(tmp_path_factory.mktemp("rgb") / "rgb.pt", seed=4, in_channels=3, classes=3)
    return unet_rt.Model(path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory) -> unet_rt.Model:
    path = export_tiny(tmp_path_factory.mktemp("vol") / "vol.pt", seed=3, depth=2, base=2, dims=3)
    return unet_rt.Model(path, device="cpu", precision="fp32")


def softmax(raw: np.ndarray) -> np.ndarray:
    e = np.exp(raw - raw.max(0))
    return e / e.sum(0)


def oracle(model: unet_rt.Model, image: np.ndarray) -> np.ndarray:
    net = torch.jit.load(model.path)
    return softmax(reference_whole(net, image.astype(np.float32), read_metadata(model.path)))


# --- results -----------------------------------------------------------------


def test_probabilities_equal_the_whole_image_oracle(model):
    image = np.random.default_rng(0).random((157, 211)) * 1000
    got = model.segment(image, output="probabilities", tile=64)
    assert got.shape == (2, 157, 211) and got.dtype == np.float32
    np.testing.assert_allclose(got, oracle(model, image), atol=1e-5)


def test_labels_raw_and_instances(model):
    image = np.random.default_rng(1).random((120, 90)).astype(np.float32)
    probs = model.segment(image, output="probabilities")
    labels = model.segment(image)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    decided = np.abs(probs[1] - probs[0]) > 1e-5
    assert (labels == probs.argmax(0))[decided].all()
    raw = model.segment(image, output="raw")
    np.testing.assert_allclose(softmax(raw), probs, atol=1e-5)
    instances = model.segment(image, output="instances")
    want, _ = ndimage.label(labels > 0)
    assert instances.dtype == np.uint32 and (instances == want).all()


def test_module_function_uses_a_cached_model(tiny_model_path):
    image = np.random.default_rng(2).random((60, 70))
    a = unet_rt.segment(image, tiny_model_path, device="cpu", precision="fp32")
    b = unet_rt.segment(image, str(tiny_model_path), device="cpu", precision="fp32", output="labels")
    assert (a == b).all()
    from unet_rt import _cache

    tiny = str(Path(tiny_model_path).resolve())
    # Other spellings of the same device and precision are the same entry
    # (each was a load of its own, with its own copy of the weights).
    entries = len([k for k in _cache._CACHE if k[0] == tiny])
    for device, precision in (("CPU", "FP32"), (" cpu ", "fp32")):
        unet_rt.segment(image, tiny_model_path, device=device, precision=precision)
    assert len([k for k in _cache._CACHE if k[0] == tiny]) == entries
    assert len([k for k in _cache._CACHE if k[0] == tiny and k[2:] == (("cpu",), "fp32")]) == 1


def test_a_model_file_replaced_with_its_size_and_modification_time_is_loaded_again(tmp_path):
    """cp -p, rsync -a and tar x give a replaced file the old modification
    time, and models of one architecture have one size: the cache, keyed on
    those two, served the old model."""
    from training.tiny import export_tiny

    first, second = export_tiny(tmp_path / "a.pt", seed=0), export_tiny(tmp_path / "b.pt", seed=1)
    assert first.stat().st_size == second.stat().st_size
    path = tmp_path / "current.pt"
    shutil.copy2(first, path)
    image = np.random.default_rng(2).random((60, 70)).astype(np.float32)
    before = unet_rt.segment(image, path, device="cpu", precision="fp32", output="probabilities")
    old = path.stat()
    shutil.copy2(second, path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    after = unet_rt.segment(image, path, device="cpu", precision="fp32", output="probabilities")
    want = unet_rt.Model(second, device="cpu", precision="fp32").segment(image, output="probabilities")
    assert np.array_equal(after, want) and not np.array_equal(after, before)


# --- axes --------------------------------------------------------------------


def test_axes_are_inferred_when_unambiguous(model, rgb_model, volume_model):
    rng = np.random.default_rng(3)
    assert model.segment(rng.random((50, 60))).shape == (50, 60)
    cyx = rng.random((3, 50, 60)).astype(np.float32)
    yxc = np.ascontiguousarray(np.moveaxis(cyx, 0, -1))
    a = rgb_model.segment(cyx, output="probabilities")
    b = rgb_model.segment(yxc, output="probabilities")
    assert a.shape == (3, 50, 60)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert volume_model.segment(rng.random((9, 20, 21))).shape == (9, 20, 21)
    assert volume_model.segment(rng.random((1, 9, 20, 21)), axes="czyx").shape == (9, 20, 21)


def test_batch_axis_gives_one_result_per_image(model, rgb_model):
    rng = np.random.default_rng(4)
    stack = rng.random((3, 40, 50))
    out = model.segment(stack, axes="byx")
    assert out.shape == (3, 40, 50)
    for i in range(3):
        assert (out[i] == model.segment(stack[i])).all()
    probs = rgb_model.segment(rng.random((2, 40, 50, 3)), axes="byxc", output="probabilities")
    assert probs.shape == (2, 3, 40, 50)


def test_result_shape_and_dtype_say_what_out_needs(model):
    stack = np.random.default_rng(8).random((2, 40, 50))
    for output in ("labels", "probabilities", "raw", "instances"):
        got = model.segment(stack, axes="byx", output=output)
        assert model.result_shape(stack.shape, output, axes="byx") == got.shape
        assert model.result_dtype(output) == got.dtype
    assert model.result_shape((40, 50), window=unet_rt.Window(image=(40, 50), start=(3, 4), shape=(10, 12))) == (10, 12)
    for shape in ("abc", None):  # None was "'NoneType' object is not iterable"
        with pytest.raises(TypeError, match="shape must be an int or a sequence"):
            model.result_shape(shape)
    # segment() refuses an empty image: so does the shape of its result.
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid shape: \(0, 5\) is an empty image"):
        model.result_shape((0, 5))
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid shape: -1 is negative"):
        model.result_shape((-1, 5))
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid output"):
        model.result_dtype("probs")


def test_batch_axes_may_stand_anywhere_and_z_is_a_batch_of_a_2d_model(model):
    stack = np.random.default_rng(7).random((3, 40, 50))
    want = model.segment(stack, axes="byx")
    assert (model.segment(np.moveaxis(stack, 0, -1), axes="yxb") == want).all()
    assert (model.segment(stack, axes="zyx") == want).all()  # the pages of a stack, as on the command line


@pytest.mark.parametrize(
    "shape,axes,message",
    [
        ((3, 50, 60), None, "axes="),
        ((50, 60), "yxc", "does not describe"),
        ((2, 1, 50, 60), "bzyx", "does not describe"),
        ((2, 50, 60), "bzx", "has no y and x axes"),
        ((2, 50, 60, 3), "byxc", "model takes 1 input channel"),
        ((50, 60), "yy", "appears twice"),
    ],
)
def test_ambiguous_or_wrong_axes_name_the_argument(model, shape, axes, message):
    with pytest.raises(unet_rt.InvalidArgumentError, match=message):
        model.segment(np.zeros(shape, np.float32), axes=axes)


# --- zero-copy I/O -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float16, np.float32, np.float64])
def test_every_supported_dtype_gives_the_float_result(model, dtype):
    image = (np.random.default_rng(5).random((70, 80)) * 200).astype(dtype)
    want = model.segment(image.astype(np.float64), output="probabilities")
    np.testing.assert_allclose(model.segment(image, output="probabilities"), want, atol=1e-5)


def test_strided_fortran_big_endian_and_memmap_inputs(model, tmp_path):
    base = (np.random.default_rng(6).random((90, 120)) * 1000).astype(np.float32)
    want = model.segment(base[::-1, ::2].copy(), output="probabilities")
    for variant in (base[::-1, ::2], np.asfortranarray(base)[::-1, ::2], base[::-1, ::2].astype(">f4")):
        np.testing.assert_allclose(model.segment(variant, output="probabilities"), want, atol=1e-6)
    mm = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=np.float32, shape=base.shape)
    mm[...] = base
    mm.flush()
    ro = np.load(tmp_path / "img.npy", mmap_mode="r")
    np.testing.assert_allclose(model.segment(ro[::-1, ::2], output="probabilities"), want, atol=1e-6)


def test_out_receives_the_result_in_place(model, tmp_path):
    image = np.random.default_rng(7).random((64, 72))
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.uint8, shape=(64, 72))
    assert model.segment(image, out=out) is out
    assert (out == model.segment(image)).all()
    half = np.zeros((2, 64, 72), np.float16)
    model.segment(image, output="probabilities", out=half)
    np.testing.assert_allclose(half, model.segment(image, output="probabilities"), atol=1e-3)
    strided = np.zeros((64, 144), np.uint8)[:, ::2]
    model.segment(image, out=strided)
    assert (strided == out).all()


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(out=np.zeros((3, 3), np.uint8)), ValueError, "shape"),
        (dict(out=np.zeros((64, 72), np.float32)), ValueError, "uint8 or uint16"),
        (dict(output="probabilities", out=np.zeros((2, 64, 72), np.uint8)), ValueError, "float32 or float16"),
        (dict(out=np.zeros((64, 72), np.int32)), ValueError, "dtype int32"),
        (dict(tile=45), unet_rt.InvalidArgumentError, "45 is not a usable tile"),
        (dict(tile=(60, 60, 60)), ValueError, "3 sizes"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(output="masks"), ValueError, "invalid output"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        model.segment(np.zeros((64, 72), np.float32), **kwargs)


def test_read_only_out_is_refused(model):
    out = np.zeros((64, 72), np.uint8)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        model.segment(np.zeros((64, 72), np.float32), out=out)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((10, 10), bool), "boolean"),
        (np.zeros((10, 10), np.complex64), r"complex64 is not supported; .*image.astype\(np.float32\)"),
        (np.zeros((10, 10), np.longdouble), r"float128 is not supported"),
        # float64 rounds integers beyond 2^53: 64-bit ones there are refused, not rounded.
        (np.full((10, 10), 2**60, np.int64), r"invalid image: a pixel holds 1152921504606846976, beyond 2\^53"),
        (np.full((10, 10), 2**64 - 1, np.uint64), r"a pixel holds 18446744073709551615, beyond 2\^53"),
        (np.zeros((0, 10), np.float32), "empty"),
        (np.zeros((2, 3, 4, 5, 6), np.float32), "axes"),
        ("not an image", "not supported"),
    ],
)
def test_unusable_images_raise_value_errors(model, image, message):
    with pytest.raises(unet_rt.InvalidArgumentError, match=message):
        model.segment(image)


def test_model_errors(tmp_path, tiny_model_path):
    with pytest.raises(FileNotFoundError):
        unet_rt.Model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(unet_rt.ModelError, match="not a TorchScript archive"):
        unet_rt.Model(tmp_path / "junk.pt")
    with pytest.raises(unet_rt.InvalidArgumentError, match="precision"):
        unet_rt.Model(tiny_model_path, precision="int4")
    with pytest.raises(ValueError, match="fp16 is supported on CUDA"):
        unet_rt.Model(tiny_model_path, device="cpu", precision="fp16")
    if not torch.cuda.is_available():
        for device in ("cuda:0", "cuda:all"):
            with pytest.raises(unet_rt.DeviceError, match="CUDA device"):
                unet_rt.Model(tiny_model_path, device=device)
    with pytest.raises(unet_rt.InvalidArgumentError, match="cuda:all"):
        unet_rt.Model(tiny_model_path, device="cuda:every")
    assert issubclass(unet_rt.CancelledError, unet_rt.UnetRtError)


def test_a_model_names_its_devices(tiny_model_path):
    model = unet_rt.Model(tiny_model_path, device="cpu")
    assert model.device == "cpu" and model.devices == ["cpu"]
    # A plan for every GPU is the first GPU's plan, with or without one here.
    assert model.layout((2000, 2000), device="cuda:all", precision="bf16") == model.layout(
        (2000, 2000), device="cuda:0", precision="bf16")


# --- threads, progress, interruption -----------------------------------------


def test_eight_threads_sharing_one_model_reproduce_serial_results(model):
    rng = np.random.default_rng(8)
    images = [rng.random((50 + 7 * i, 61 + 3 * i)).astype(np.float32) for i in range(8)]
    serial = [model.segment(im, output="probabilities", tile=52) for im in images]
    results = [None] * 8

    def work(i):
        results[i] = model.segment(images[i], output="probabilities", tile=52)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)


def test_the_gil_is_released_during_a_long_call(model):
    image = np.random.default_rng(9).random((600, 600)).astype(np.float32)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    t = threading.Thread(target=ticker)
    t.start()
    start = time.perf_counter()
    model.segment(image, tile=56)
    end = time.perf_counter()
    stop.set()
    t.join()
    during = [x for x in ticks if start < x < end]
    assert end - start > 0.2, "the call must be long enough to tell"
    assert len(during) >= 0.3 * (end - start) / 0.005, f"{len(during)} ticks in {end - start:.2f}s"


def test_progress_callable_and_bar(model, capsys):
    image = np.random.default_rng(10).random((150, 150))
    seen = []
    model.segment(image, tile=60, progress=lambda done, total: seen.append((done, total)))
    total = model.layout((150, 150), tile=60)["tiles"]
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    model.segment(np.stack([image, image]), axes="byx", tile=60, progress=True)
    assert f"{2 * total}/{2 * total}" in capsys.readouterr().err


def test_layout_plans_for_a_device_and_precision_this_machine_need_not_have(model):
    shape = (6000, 5000)
    here = model.layout(shape)
    assert model.layout(shape, device="cpu", precision="fp32") == here
    gpu16 = model.layout(shape, device="cuda:3", precision="fp16")
    gpu32 = model.layout(shape, device="cuda", precision="fp32")
    # GPUs get the largest tiles in their budget (half the bytes per value
    # fit larger tiles or batches); the CPU the fastest by the planner's
    # model, which a larger budget does not change.
    assert gpu32["tile"][0] > here["tile"][0]
    assert gpu16["tile"][0] * gpu16["batch_size"] >= gpu32["tile"][0] * gpu32["batch_size"]
    assert model.layout(shape, memory_budget=1 << 40) == here
    small = model.layout(shape, memory_budget=1 << 20)
    assert small["tile"][0] < here["tile"][0]
    with pytest.raises(unet_rt.InvalidArgumentError, match="device"):
        model.layout(shape, device="tpu")
    with pytest.raises(unet_rt.InvalidArgumentError, match="fp16"):
        model.layout(shape, device="cpu", precision="fp16")
    with pytest.raises(unet_rt.InvalidArgumentError, match="precision"):
        model.layout(shape, precision="fp8")
    with pytest.raises(TypeError, match="device"):
        model.layout(shape, device=0)
    with pytest.raises(TypeError, match="precision"):
        unet_rt.plan(shape, model, precision=16)


def test_plan_is_the_tiling_segment_would_use_without_running_anything(model, tiny_model_path):
    shape = (6000, 5000)
    # A Model plans where it is loaded unless told otherwise.
    assert unet_rt.plan(shape, model) == model.layout(shape)
    assert unet_rt.plan(shape, model, device="cuda", precision="fp16") == model.layout(
        shape, device="cuda", precision="fp16")
    # A path is read once on the CPU; the plan is the device's.
    got = unet_rt.plan(shape, tiny_model_path, device="cuda:1", precision="bf16", tile=204)
    assert got == model.layout(shape, device="cuda:1", precision="bf16", tile=204)
    assert got["tile"] == [204, 204]
    with pytest.raises(TypeError, match="model"):
        unet_rt.plan(shape, 5)
    with pytest.raises(TypeError, match="tiles"):
        unet_rt.plan(shape, model, tiles=3)


def test_needed_inputs_equal_needed_input_window_by_window(model):
    windows = [unet_rt.Window(image=image, start=start, shape=shape)
               for image, start, shape in [((500, 300), (0, 0), (44, 300)), ((500, 300), (88, 40), (100, 70)),
                                           ((90, 1000), (10, 900), (80, 100)), ((500, 300), (456, 0), (44, 300))]]
    want = [model.needed_input(w, tile=84, batch_size=2) for w in windows]
    assert model.needed_inputs(windows, tile=84, batch_size=2) == want
    assert model.needed_inputs([]) == []
    with pytest.raises(unet_rt.InvalidArgumentError, match="windows"):
        model.needed_inputs(windows[0])
    with pytest.raises(unet_rt.InvalidArgumentError, match="windows"):
        model.needed_inputs([windows[0], (1, 2)])
    with pytest.raises(unet_rt.InvalidArgumentError, match="windows"):
        model.needed_inputs(5)
    # Any iterable, a generator too (checked without being used up).
    assert model.needed_inputs((w for w in windows[:2]), tile=84, batch_size=2) == want[:2]


def test_an_exception_in_the_progress_callback_stops_the_call(model):
    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        model.segment(np.random.rand(300, 300), tile=52, progress=boom)


def test_ctrl_c_stops_a_long_call_within_a_second(tiny_model_path, clean_env):
    script = f"""
import time, numpy as np, unet_rt
m = unet_rt.Model({str(tiny_model_path)!r}, device="cpu", precision="fp32")
image = np.random.rand(3000, 3000).astype(np.float32)
print("start", flush=True)
try:
    m.segment(image, tile=48, batch_size=1)
    print("finished")
except KeyboardInterrupt:
    print("interrupted", time.perf_counter(), flush=True)
"""
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=clean_env, cwd=ROOT) as proc:
        assert proc.stdout.readline().strip() == "start"
        time.sleep(1.0)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        proc.wait(timeout=30)
    assert line and line[0] == "interrupted", line
    assert float(line[1]) - sent < 1.0


# --- pickling and typing -----------------------------------------------------


def test_models_pickle_to_their_source_not_their_weights(model, tiny_model_path):
    data = pickle.dumps(model)
    assert len(data) < 1000, "a path, not weights"
    clone = pickle.loads(data)
    image = np.random.default_rng(11).random((40, 50))
    assert (clone.segment(image) == model.segment(image)).all()
    from_bytes = unet_rt.Model.from_bytes(Path(tiny_model_path).read_bytes(), device="cpu", precision="fp32",
                                          name="embedded tiny")
    clone = pickle.loads(pickle.dumps(from_bytes))
    assert (clone.segment(image) == model.segment(image)).all()
    assert clone.path == "embedded tiny"  # it came back as "<bytes>"


def test_copies_of_a_model_whose_file_changed_since_it_loaded_are_refused(tmp_path):
    """A copy (pickle, copy, multiprocessing, Dask) loads the model again
    from its path: it got the weights of a file replaced since, with no word."""
    import copy

    import unet_rt.dask
    from training.tiny import export_tiny

    path = export_tiny(tmp_path / "model.pt", seed=0)
    model = unet_rt.Model(path, device="cpu", precision="fp32")
    assert np.array_equal(copy.copy(model).segment(np.ones((50, 50))), model.segment(np.ones((50, 50))))
    # chmod, touch and a copy of the same bytes change its stamp, not the model (they were refused).
    os.chmod(path, 0o600)
    os.utime(path)
    shutil.copy(path, tmp_path / "same.pt")
    os.replace(tmp_path / "same.pt", path)
    assert np.array_equal(pickle.loads(pickle.dumps(model)).segment(np.ones((50, 50))), model.segment(np.ones((50, 50))))
    export_tiny(path, seed=1)  # retrained in place
    for make_copy in (copy.copy, copy.deepcopy, pickle.dumps, lambda m: unet_rt.dask.segment(np.ones((50, 50)), m)):
        with pytest.raises(unet_rt.ModelError, match=r"model.pt has changed since this model was loaded: .*load the model again"):
            make_copy(model)
    path.unlink()
    with pytest.raises(unet_rt.ModelError, match=r"model.pt is gone since this model was loaded"):
        pickle.dumps(model)
    # The model itself still holds the weights it loaded.
    assert model.segment(np.ones((50, 50))).shape == (50, 50)


def test_a_model_at_a_path_that_is_not_utf8_loads(model, tiny_model_path, tmp_path, cli):
    # libtorch takes its path as a string: a Latin-1 file name was a ModelError.
    path = os.fsdecode(bytes(tmp_path) + b"/mod\xe9le.pt")
    shutil.copyfile(tiny_model_path, path)
    loaded = unet_rt.Model(path, device="cpu", precision="fp32")
    image = np.random.default_rng(12).random((40, 50))
    assert (loaded.segment(image) == model.segment(image)).all()
    assert loaded.path == path
    info = subprocess.run([os.fsencode(cli), b"info", os.fsencode(path)], capture_output=True)
    assert info.returncode == 0 and b"tiny-random" in info.stdout, info.stderr


def test_properties_and_typing_files(model):
    assert model.halo == 20 and model.classes == ["background", "class_1"]
    assert model.metadata["format"] == "unet_rt/1"
    assert model.device == "cpu" and model.precision == "fp32"
    assert model.info["smallest_size"] == 44 and not model.info["probed"]
    # The smallest tile= the planner takes (the smallest input is not one).
    smallest = model.info["smallest_tile"]
    model.segment(np.zeros((120, 120), np.float32), tile=smallest)
    with pytest.raises(unet_rt.InvalidArgumentError, match=f"from {smallest} up"):
        model.segment(np.zeros((120, 120), np.float32), tile=smallest - model.info["size_multiple"])
    package = Path(unet_rt.__file__).parent
    assert (package / "py.typed").exists() and (package / "_unet_rt.pyi").exists()
    assert set(unet_rt.__all__) >= {"segment", "Model", "UnetRtError", "build_info"}


def _stub_type(annotation: ast.expr, names: dict) -> Any:
    """The runtime type a stub's return annotation names (its outer type)."""
    if isinstance(annotation, ast.Subscript):
        outer = ast.unparse(annotation.value).split(".")[-1]
        if outer == "Optional":
            return (_stub_type(annotation.slice, names), type(None))
        return {"List": list, "list": list, "Dict": dict, "dict": dict, "Tuple": tuple}[outer]
    return names[ast.unparse(annotation)]


def test_the_extension_stub_names_what_the_extension_has_and_returns(model):
    # The stub said Model.path was a str where the extension returns a
    # pathlib.Path: typed code was told the wrong type without a word.
    import pathlib

    from unet_rt import _unet_rt

    tree = ast.parse((Path(_unet_rt.__file__).parent / "_unet_rt.pyi").read_text())
    stub = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    public = {name for name in dir(_unet_rt) if not name.startswith("_") and callable(getattr(_unet_rt, name))}
    assert public - set(stub) == set() and set(stub) - public == set()
    methods = {n.name: n for n in stub["Model"].body if isinstance(n, ast.FunctionDef)}
    runtime = {name for name in dir(_unet_rt.Model) if not name.startswith("_")}
    assert runtime == set(methods) - {"__init__"}
    names = {"str": str, "int": int, "bool": bool, "float": float, "pathlib.Path": pathlib.Path}
    inner = model._inner
    for name, node in methods.items():
        if any(ast.unparse(d) == "property" for d in node.decorator_list):
            value = getattr(inner, name)
            assert isinstance(value, _stub_type(node.returns, names)), (name, type(value), ast.unparse(node.returns))


# --- memory ------------------------------------------------------------------


@pytest.mark.slow
def test_a_memmap_larger_than_memory_budget_is_segmented_with_bounded_memory(tmp_path, clean_env):
    """A 2 GiB uint8 memmap into a 2 GiB out= memmap: the process's anonymous
    memory (not the file pages it maps) stays far below the image size. The
    model is the smallest U-Net (2 levels, 2 channels) so the test is about
    memory, not compute."""
    model_path = export_tiny(tmp_path / "smallest.pt", seed=0, depth=2, base=2)
    side = 46341  # 46341^2 bytes = 2.0 GiB
    script = f"""
import threading, time, numpy as np, unet_rt
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
peak = [anon()]
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.05)
img = np.lib.format.open_memmap({str(tmp_path / 'big.npy')!r}, mode="w+", dtype=np.uint8, shape=({side}, {side}))
for r in range(0, {side}, 4096):
    img[r:r + 4096] = (np.arange(r, min(r + 4096, {side}))[:, None] * 7 + np.arange({side})[None, :]) % 251
img.flush()
out = np.lib.format.open_memmap({str(tmp_path / 'out.npy')!r}, mode="w+", dtype=np.uint8, shape=({side}, {side}))
m = unet_rt.Model({str(model_path)!r}, device="cpu", precision="fp32")
base = anon()
t = threading.Thread(target=watch); t.start()
start = time.perf_counter()
m.segment(img, out=out, memory_budget=64 << 20)
stop.set(); t.join()
print((peak[0] - base) >> 20, time.perf_counter() - start, int(out[::4096, ::4096].max()) >= 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stderr
    extra_mib = int(proc.stdout.split()[0])
    print(f"2 GiB uint8 memmap: {extra_mib} MiB of anonymous memory above the baseline")
    assert extra_mib < 512, f"{extra_mib} MiB of anonymous memory above the baseline for a 2 GiB image"


def test_same_padded_models_blend_or_crop(tmp_path):
    path = export_tiny(tmp_path / "same.pt", seed=2, padding="same", depth=3, base=4)
    model = unet_rt.Model(path, device="cpu", precision="fp32")
    image = np.random.default_rng(12).random((90, 130)).astype(np.float32)
    want = oracle(model, image)
    for blend in ("crop", "gaussian", "constant"):
        got = model.segment(image, output="probabilities", tile=96, blend=blend)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=blend)
    with pytest.raises(unet_rt.InvalidArgumentError, match="blend"):
        model.segment(image, blend="median")


def test_progress_totals_follow_the_memory_budget(model):
    image = np.random.default_rng(13).random((300, 300))
    seen = []
    model.segment(image, memory_budget=1 << 20, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 1


def test_one_default_precision_for_python_cli_and_rust(tiny_model_path, cli, tmp_path):
    # unet-rt segment and unet_rt.segment gave different labels by default
    # (fp32 against bf16); both now take the core's default.
    assert unet_rt.DEFAULT_PRECISION == "fp32"
    assert unet_rt.Model(tiny_model_path, device="cpu").precision == unet_rt.DEFAULT_PRECISION
    image = (np.random.default_rng(3).random((90, 110)) * 255).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    proc = subprocess.run([str(cli), "segment", str(tmp_path / "image.npy"), "-o", str(tmp_path / "out"), "-m",
                           str(tiny_model_path), "--device", "cpu", "--format", "npy", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from_cli = np.load(tmp_path / "out" / "image.npy")
    assert np.array_equal(from_cli, unet_rt.segment(image, tiny_model_path, device="cpu"))
    help_text = subprocess.run([str(cli), "segment", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert f"[default: {unet_rt.DEFAULT_PRECISION}]" in help_text


def test_integer_types_the_engine_does_not_read_are_widened_as_the_cli_widens_them(tiny_model_path, cli, tmp_path):
    # Python refused int8 and 32/64-bit integers (the command line read them
    # widened): one rule now, the core's table.
    assert dict(unet_rt._unet_rt.WIDENED_DTYPES) == {"int8": "int16", "uint32": "float64", "int32": "float64",
                                                     "uint64": "float64", "int64": "float64"}
    image = (np.random.default_rng(5).random((90, 110)) * 120).astype(np.uint8)
    want = unet_rt.segment(image, tiny_model_path, device="cpu")
    for dtype in ("<i1", "<i4", ">i4", "<u4", "<i8", ">u8"):
        stored = image.astype(dtype)
        assert np.array_equal(unet_rt.segment(stored, tiny_model_path, device="cpu"), want), dtype
        np.save(tmp_path / f"{dtype[1:]}.npy", stored)
    proc = subprocess.run([str(cli), "segment", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tiny_model_path),
                           "--device", "cpu", "--format", "npy", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for dtype in ("i1", "i4", "u4", "i8", "u8"):
        assert np.array_equal(np.load(tmp_path / "out" / f"{dtype}.npy"), want), dtype
    # Exactly 2^53 is still a float64; one beyond it is not.
    edge = image.astype(np.int64)
    edge[0, 0] = -(2**53)
    unet_rt.segment(edge, tiny_model_path, device="cpu")
    edge[0, 0] = 2**53 + 1
    with pytest.raises(unet_rt.InvalidArgumentError, match="9007199254740993, beyond 2\\^53"):
        unet_rt.segment(edge, tiny_model_path, device="cpu")


def test_python_and_the_cli_read_an_unnamed_leading_axis_alike(tiny_model_path, cli, tmp_path):
    # One rule in the core (unet_rt::axes::infer_axes): a leading axis of
    # the model's channel count is channels, in Python as on the command line.
    image = (np.random.default_rng(4).random((1, 70, 90)) * 255).astype(np.uint8)
    model = unet_rt.Model(tiny_model_path, device="cpu")
    got = model.segment(image)
    assert np.array_equal(got, model.segment(image[0]))
    np.save(tmp_path / "lead.npy", image)
    proc = subprocess.run([str(cli), "segment", str(tmp_path / "lead.npy"), "-o", str(tmp_path / "out"), "-m",
                           str(tiny_model_path), "--device", "cpu", "--format", "npy", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "out" / "lead.npy"), got)
    # An ambiguous shape is refused the same way by both.
    square = np.zeros((1, 70, 1), np.uint8)
    with pytest.raises(unet_rt.InvalidArgumentError, match="cannot tell the axes .* name them"):
        model.segment(square)
    np.save(tmp_path / "square.npy", square)
    proc = subprocess.run([str(cli), "segment", str(tmp_path / "square.npy"), "-o", str(tmp_path / "out"), "-m",
                           str(tiny_model_path), "--device", "cpu", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "cannot tell the axes" in proc.stderr, proc.stderr


def test_the_installed_exporter_writes_metadata_for_any_torchscript(tmp_path):
    # Every message about a network without metadata advised
    # "training/export.py", which an installed package does not have.
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, padding=1))
    plain = tmp_path / "plain.pt"
    torch.jit.script(net.eval()).save(str(plain))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "unet_rt.export"]
    # From a folder without the repository's training package.
    run = subprocess.run([*command, str(plain), "-o", str(tmp_path / "with.pt"), "--class-names", "background,cell"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "halo 2" in run.stdout
    # Each step is said before it runs (a large network's take minutes;
    # one ran over ten without a word).
    steps = run.stderr.splitlines()
    assert [s.split("] ", 1)[1].split(" ")[0] for s in steps] == ["probing", "loading", "one", "comparing"], steps
    assert all(re.match(r"\[ *\d+ s\] ", s) for s in steps), steps
    meta = read_metadata(tmp_path / "with.pt")
    assert (meta["padding"], meta["halo"], meta["class_names"]) == ("same", 2, ["background", "cell"])
    assert not unet_rt.Model(tmp_path / "with.pt", device="cpu").info["probed"]
    # A declared geometry the network contradicts, a file that is not
    # TorchScript, one that is missing: one line each, exit status 1.
    for args, said in [([str(plain), "--padding", "same", "--halo", "0", "--size-multiple", "1"], "does not fit"),
                       ([str(tmp_path / "with.pt") + ".json"], "no such file")]:
        run = subprocess.run([*command, *args, "-o", str(tmp_path / "bad.pt")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        *steps, failed = run.stderr.splitlines()
        assert run.returncode == 1 and said in failed and failed.startswith("export failed"), run.stderr
        assert all(s.startswith("[") for s in steps), run.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    run = subprocess.run([*command, str(tmp_path / "junk.pt"), "-o", str(tmp_path / "bad.pt")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "not a TorchScript archive" in run.stderr, run.stderr
    assert not (tmp_path / "bad.pt").exists()
    # The runtime's advice names it.
    class TwoOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor):
            return self.conv(x), self.conv(x) * 2

    torch.jit.script(TwoOutputs().eval()).save(str(tmp_path / "two.pt"))
    with pytest.raises(unet_rt.ModelError, match=r"python -m unet_rt\.export --output-key"):
        unet_rt.Model(tmp_path / "two.pt", device="cpu")


def test_documented_errors_of_the_helpers_are_the_packages_own(tmp_path, tiny_model_path):
    # From an audit of the docs against the behaviour: is_package "never raises" raised TypeError;
    # read_metadata let torch's ValueError / RuntimeError through; the export's errors were plain
    # ValueError / RuntimeError where the README says every error derives from UnetRtError; a
    # ModelSpec made by its constructor (no digest) was refused as "not the model file the task
    # graph was built with".
    import unet_rt.bioimageio
    import unet_rt.dask
    import unet_rt.export

    for value in (None, 123, b"/tmp"):
        assert unet_rt.bioimageio.is_package(value) is False
    with pytest.raises(unet_rt.ModelNotFoundError):
        unet_rt.export.read_metadata(tmp_path / "missing.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(tiny_model_path).read_bytes()[:1000])
    with pytest.raises(unet_rt.ModelError, match="cannot load model"):
        unet_rt.export.read_metadata(cut)
    assert issubclass(unet_rt.export.ExportGeometryError, (unet_rt.MetadataError, ValueError))
    assert issubclass(unet_rt.export.ExportMismatchError, unet_rt.UnetRtError)
    assert issubclass(unet_rt.export.ExportMismatchError, RuntimeError)
    spec = unet_rt.dask.ModelSpec(str(tiny_model_path), device="cpu")
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"ModelSpec.of\(path\)"):
        unet_rt.dask.load_model(spec)
    model = unet_rt.Model(device="cpu")
    assert model.usable_tile(10**9) == model.usable_tile(2**20 + 3) == 1048572
    assert {"instances", "object_size"} <= set(model.info)
