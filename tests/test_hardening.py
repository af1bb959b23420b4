"""Hostile input through the Python API: every bad argument is a TypeError or
an InvalidArgumentError that names it, never OverflowError, AttributeError or
PanicException; absurd sizes and metadata answer at once; NaN and infinity
never come back silently; a long forward pass does not delay Ctrl-C.

The randomized campaign over the same contract is tests/test_fuzz.py."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

import unet_rt
from unet_rt import errors

ROOT = Path(__file__).resolve().parents[1]
IMAGE = np.random.default_rng(0).random((64, 72)).astype(np.float32)


@pytest.fixture(scope="module")
def model(tiny_model_path) -> unet_rt.Model:
    return unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")


def BUNDLED() -> unet_rt.Model:
    """The bundled model on the CPU (from the cache: loaded once)."""
    return unet_rt.model.cached_model(None, "cpu", "fp32")


def with_metadata(source: Path, target: Path, **changes) -> Path:
    """A copy of the archive ``source`` whose metadata has ``changes``
    (``None`` removes a field)."""
    extra = {"unet_rt.json": ""}
    module = torch.jit.load(str(source), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["unet_rt.json"])
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    torch.jit.save(module, str(target), _extra_files={"unet_rt.json": json.dumps(meta)})
    return target


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(axes=5), TypeError, "axes must be a str"),
        (dict(axes=b"yx"), TypeError, "axes must be a str"),
        (dict(tile=-1), unet_rt.InvalidArgumentError, "invalid tile: -1 is negative"),
        (dict(tile=2**64), unet_rt.InvalidArgumentError, "invalid tile: .* too large"),
        (dict(tile=10**30), unet_rt.InvalidArgumentError, "invalid tile: .* too large"),
        (dict(tile="ab"), unet_rt.InvalidArgumentError, r"invalid tile: \"ab\" is not a tile: give sizes, or \"whole\""),
        (dict(tile=(52, "x")), TypeError, "tile must be an int"),
        (dict(tile=52.0), TypeError, "tile must be an int"),
        (dict(tile=True), TypeError, "tile must be an int"),
        (dict(tile=0), unet_rt.InvalidArgumentError, "invalid tile"),
        (dict(batch_size=-1), unet_rt.InvalidArgumentError, "invalid batch_size: -1 is negative"),
        (dict(batch_size=0), unet_rt.InvalidArgumentError, "invalid batch_size: 0 is too small"),
        (dict(batch_size=1.5), TypeError, "batch_size must be an int, got float"),
        (dict(batch_size=2**64), unet_rt.InvalidArgumentError, "invalid batch_size: .* too large"),
        (dict(memory_budget=-5), unet_rt.InvalidArgumentError, "invalid memory_budget"),
        (dict(memory_budget=2**70), unet_rt.InvalidArgumentError, "invalid memory_budget"),
        (dict(memory_budget="1GB"), TypeError, "memory_budget must be an int"),
        (dict(tile=b"44"), TypeError, "tile must be an int or a sequence of ints, got bytes"),
        (dict(tile=bytearray(b"44")), TypeError, "tile must be an int or a sequence of ints, got bytearray"),
        (dict(memory_budget=0), unet_rt.InvalidArgumentError, "invalid memory_budget: must be at least 1 byte"),
        (dict(blend=5), TypeError, "blend must be a str"),
        (dict(blend=None), TypeError, "blend must be a str, got NoneType"),
        (dict(blend="smooth"), unet_rt.InvalidArgumentError, "invalid blend"),
        (dict(output=3), TypeError, "output must be a str"),
        (dict(nonfinite="ignore"), unet_rt.InvalidArgumentError, "invalid nonfinite"),
        (dict(nonfinite=1), TypeError, "nonfinite must be a str"),
        (dict(progress=5), TypeError, "progress must be"),
        (dict(out=[0, 1]), TypeError, "out must be a numpy array"),
        (dict(output="instances", out=[0, 1]), TypeError, "out must be a numpy array"),
        (dict(output="instances", out=np.zeros((64, 72), np.uint8)), unet_rt.InvalidArgumentError, "uint32"),
        (dict(output="instances", out=np.zeros((64, 72), np.uint16)), unet_rt.InvalidArgumentError, "wrap"),
        (dict(output="instances", out=np.zeros((64, 72), bool)), unet_rt.InvalidArgumentError, "uint32"),
        (dict(input_range=(1.0, 0.0)), unet_rt.InvalidArgumentError, "low <= high"),
        # Byte-swapped: "has dtype >u2; labels are written as uint8 or uint16" read as if uint16 were refused.
        (dict(out=np.zeros((64, 72), ">u2")), unet_rt.InvalidArgumentError,
         "invalid out: has dtype >u2, in the other byte order .*newbyteorder"),
        # An int beyond float64 was "object_size must be a number, got int".
        (dict(object_size=10**400), unet_rt.InvalidArgumentError, "invalid object_size: is an integer too large"),
        (dict(window=unet_rt.Window(image=(2**64, 72), start=(0, 0), shape=(64, 72))), unet_rt.InvalidArgumentError,
         "invalid window"),
    ],
)
def test_bad_arguments_raise_type_or_value_errors_that_name_them(model, kwargs, error, message):
    start = time.perf_counter()
    with pytest.raises(error, match=message):
        model.segment(IMAGE, **kwargs)
    assert time.perf_counter() - start < 2.0


def test_huge_tiles_of_a_volume_model_are_refused_not_a_panic(tmp_path):
    from training.tiny import export_tiny

    path = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    volume = unet_rt.Model(path, device="cpu", precision="fp32")
    # 2^60 pixels per tile used to overflow the batch planner (division by
    # zero). Only an image that large gets such tiles: a tile beyond the
    # image is cut to it.
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid tile"):
        volume.layout((1 << 20, 1 << 20, 1 << 20), tile=1 << 20)
    # Tile pixels times a huge batch exceeds u128: the memory check saturates.
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid (tile|batch_size)"):
        volume.layout((2**20, 2**20, 2**20), tile=1 << 20, batch_size=2**63)


def test_read_only_out_is_refused_for_every_output(model):
    for output, dtype in (("labels", np.uint8), ("instances", np.uint32), ("probabilities", np.float32)):
        shape = (2, 64, 72) if output == "probabilities" else (64, 72)
        out = np.zeros(shape, dtype)
        out.setflags(write=False)
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid out"):
            model.segment(IMAGE, output=output, out=out)


def _record_field(image: np.ndarray, tag: str = "u1") -> np.ndarray:
    """``image`` as one field of a record array: strides that are not
    multiples of its item size (3 bytes for uint16, 5 for float32)."""
    records = np.zeros(image.shape, dtype=[("pixels", image.dtype), ("tag", tag)])
    records["pixels"] = image
    return records["pixels"]


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float16, np.float32, np.float64])
def test_images_laid_out_unlike_their_item_size_are_read_as_numpy_reads_them(model, dtype):
    """rust-numpy's views divide byte strides by the item size: one field
    of a record array was read at other pixels (8% of the labels differed,
    with no word) or refused as holding NaN, and so were percentiles and
    forward batches; data not aligned to its type was undefined behaviour."""
    from numpy.lib.stride_tricks import as_strided

    plain = (np.random.default_rng(3).random((2, 64, 72)) * 1000).astype(dtype)
    buffer = np.zeros(plain.nbytes + plain.itemsize, np.uint8)
    misaligned = np.frombuffer(buffer.data, dtype=dtype, count=plain.size, offset=1).reshape(plain.shape)
    misaligned[...] = plain
    odd = as_strided(_record_field(plain), plain.shape, _record_field(plain).strides, writeable=False)
    for view in (_record_field(plain), misaligned, odd):
        assert np.array_equal(view, plain)
        for output in ("labels", "probabilities"):
            assert np.array_equal(model.segment(view, axes="byx", output=output),
                                  model.segment(plain, axes="byx", output=output)), (view.strides, output)
        assert model.percentile_range(view[0]) == model.percentile_range(plain[0])
    batch = np.ascontiguousarray(plain[:, None, :44, :44], dtype=np.float32)
    assert np.array_equal(model.forward(_record_field(batch)), model.forward(batch))


def test_an_out_laid_out_unlike_its_item_size_is_refused_by_name(model):
    """``out=`` as one field of a record array was written at other
    addresses than NumPy's: the result was garbage and the array's other
    field overwritten, with no error."""
    records = np.zeros((2, 64, 72), dtype=[("p", "f4"), ("tag", "u1")])
    records["tag"] = 7
    with pytest.raises(errors.InvalidArgumentError, match=r"invalid out: its strides .* not multiples of its item "
                                                          r"size \(4 bytes\).*array of its own"):
        model.segment(IMAGE, output="probabilities", out=records["p"])
    assert (records["tag"] == 7).all() and (records["p"] == 0).all()
    from unet_rt import _unet_rt

    with pytest.raises(errors.InvalidArgumentError, match="invalid labels: its strides"):
        _unet_rt.connected_components(_record_field(np.ones((8, 8), np.uint16)))


def test_instances_accept_wide_integer_outputs(model):
    want = model.segment(IMAGE, output="instances")
    for dtype in (np.uint32, np.uint64, np.int64):
        out = np.zeros(IMAGE.shape, dtype)
        assert model.segment(IMAGE, output="instances", out=out) is out
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda m: m.layout((10**14, 10**14)), unet_rt.InvalidArgumentError, "more tiles than this machine can count"),
        (lambda m: m.layout((2**64, 5)), unet_rt.InvalidArgumentError, "invalid shape"),
        (lambda m: m.layout((-1, 5)), unet_rt.InvalidArgumentError, "invalid shape: -1 is negative"),
        (lambda m: m.layout((100,)), unet_rt.InvalidArgumentError, "the model is 2-D"),
        (lambda m: m.layout((100000, 100000), memory_budget=2**62, device="cuda", batch_size=2**40),
         unet_rt.InvalidArgumentError, "invalid batch_size: .*need about"),
        (lambda m: m.layout("ab"), TypeError, "shape must be"),
        (lambda m: m.needed_input(unet_rt.Window(image=(10**13, 10**13), start=(5, 5), shape=(10, 10))),
         unet_rt.InvalidArgumentError, "invalid image shape"),
        (lambda m: unet_rt.Window(image=(1.5, 7), start=(0, 0), shape=(1, 1)), TypeError, "sequence of ints"),
        (lambda m: m.segment(np.broadcast_to(np.float32(1), (300000, 300000))), unet_rt.InvalidArgumentError,
         "needs 83.8 GiB of memory"),
        # Each image's result fits; the batch's 58 TiB do not (this ran for ever, image after image).
        (lambda m: m.segment(np.broadcast_to(np.float32(1), (10**6, 64, 10**6)), axes="byx"),
         unet_rt.InvalidArgumentError, r"result of shape \[1000000, 64, 1000000\] needs 58.2 TiB"),
        (lambda m: m.segment(np.broadcast_to(np.float32(1), (10**6, 64, 10**6)), axes="byx", output="instances"),
         unet_rt.InvalidArgumentError, "needs 232.8 TiB"),  # uint32 ids
        (lambda m: unet_rt.Model(5), TypeError, "path must be a str"),
        (lambda m: unet_rt.Model("/tmp/a\x00b.pt"), unet_rt.InvalidArgumentError, "invalid path: .* NUL"),
        (lambda m: unet_rt.Model(device=5), TypeError, "device must be a str, got int"),
        (lambda m: unet_rt.Model(precision=None), TypeError, "precision must be a str, got NoneType"),
        (lambda m: unet_rt.Model.from_bytes(10**12), TypeError, "data must be bytes"),
        (lambda m: unet_rt.Model.from_bytes("PK.."), TypeError, "data must be bytes"),
        (lambda m: unet_rt.Model.from_bytes(b"PK..", name=5), TypeError, "name must be a str"),
        (lambda m: unet_rt.segment(IMAGE, 5), TypeError, "model must be a unet_rt.Model, a path or None, got int"),
        (lambda m: unet_rt.segment(IMAGE, "/tmp/a\x00b.pt"), unet_rt.InvalidArgumentError, "NUL"),
        (lambda m: unet_rt.Window(image=(10, 10), start=None, shape=(1, 1)), TypeError, "window start must be"),
        (lambda m: unet_rt.Window(image=(True, 10), start=(0, 0), shape=(1, 1)), TypeError, "window image must be"),
        (lambda m: unet_rt.Window(image=b"44", start=(0, 0), shape=(1, 1)), TypeError, "window image must be"),
        (lambda m: unet_rt.Window(image=(10, 10), start=(0, 0), shape=(1, 1), origin=()),
         unet_rt.InvalidArgumentError, "one value per spatial axis"),
        (lambda m: unet_rt.Window(image=(), start=(), shape=()), unet_rt.InvalidArgumentError, "no axes"),
        # The native copy of a big-endian array was attempted (numpy MemoryError, or an overcommitted kill).
        (lambda m: m.segment(np.broadcast_to(np.array(1, ">f4"), (300000, 300000))), unet_rt.InvalidArgumentError,
         "byte order is not native, and the copy the engine reads needs 335.3 GiB"),
        (lambda m: m.forward(np.full((1, 1, 64, 64), 1e300)), unet_rt.InvalidArgumentError, "beyond the float32"),
        # A broadcast batch: its copy aborted the process (40 GB) after minutes of checking its values.
        (lambda m: m.forward(np.broadcast_to(np.float32(0), (1, 1, 100000, 100000))), unet_rt.InvalidArgumentError,
         "invalid batch: the forward pass of this batch needs .* more than (this machine's|the .* this process's cgroup)"),
        # Upsampling allocated and filled its first axis (12 GB, 80 s) before the second failed.
        (lambda m: BUNDLED().segment(np.broadcast_to(np.float32(1), (8192, 8192)), object_size=0.5),
         unet_rt.InvalidArgumentError, "invalid object_size: the resampled image needs .* more than (this machine's|the .* this process's cgroup)"),
        (lambda m: m.segment(IMAGE, window=unet_rt.Window(image=(200, 180), start=(2**63, 0), shape=(2**63, 10))),
         unet_rt.InvalidArgumentError, "invalid window: its region .* reaches beyond the image"),
        (lambda m: m.segment(IMAGE, window=unet_rt.Window(image=(1, 200, 180), start=(0, 0, 0), shape=(1, 10, 10))),
         unet_rt.InvalidArgumentError, "invalid window: it has 3 spatial axes"),
    ],
)
def test_absurd_sizes_answer_at_once_with_a_clear_error(model, call, error, message):
    start = time.perf_counter()
    with pytest.raises(error, match=message):
        call(model)
    assert time.perf_counter() - start < 2.0


def test_finite_float64_of_any_magnitude_gives_finite_probabilities(model):
    rng = np.random.default_rng(1)
    for image in (rng.random((64, 72)) * 1e300, np.where(rng.random((64, 72)) > 0.5, 1e300, -1e308),
                  np.full((64, 72), np.finfo(np.float64).max), rng.random((64, 72)) * 1e-300):
        probabilities = model.segment(image, output="probabilities")
        assert np.isfinite(probabilities).all()
        assert (probabilities >= 0).all() and (probabilities <= 1).all()


def test_finite_float32_near_its_extremes_normalises_as_float64_does(model):
    """A flat percentile range at -3e38 made x - low overflow float32: the
    finite image was refused as holding NaN or infinite values."""
    image = np.full((64, 72), -3e38, np.float32)
    image[10, 20] = 3e38
    # This tiny network's output overflows at the saturated pixel, as it does for the float64 image.
    with pytest.raises(unet_rt.NonFiniteError, match="network's output"):
        model.segment(image)
    got = model.segment(image, output="raw", nonfinite="propagate")
    np.testing.assert_array_equal(got, model.segment(image.astype(np.float64), output="raw", nonfinite="propagate"))
    assert np.isfinite(got).mean() > 0.5


def test_nan_or_infinite_input_raises_unless_propagated(model):
    # float64 too: an infinite pixel was saturated to 3.4e38, reached the network and came out as
    # NaN output blamed on the model's weights (NonFiniteError).
    for bad, dtype in itertools.product((np.nan, np.inf, -np.inf), (np.float32, np.float64)):
        image = IMAGE.astype(dtype)
        image[10, 20] = bad
        with pytest.raises(unet_rt.InvalidArgumentError, match="NaN or infinite"):
            model.segment(image)
    image = IMAGE.copy()
    image[10, 20] = np.nan
    raw = model.segment(image, output="raw", nonfinite="propagate")
    assert np.isnan(raw).any() and np.isfinite(raw).any()


def test_nan_weights_raise_non_finite_error_naming_the_tile(tmp_path):
    from training.tiny import tiny_unet
    from training.export import build_metadata, export_torchscript

    net = tiny_unet(0)
    meta = build_metadata(net.config, name="nan", normalization={"kind": "none"})
    path = export_torchscript(net, tmp_path / "ok.pt", meta)
    module = torch.jit.load(str(path))
    with torch.no_grad():
        next(iter(module.parameters())).fill_(float("nan"))
    torch.jit.save(module, str(tmp_path / "nan.pt"), _extra_files={"unet_rt.json": json.dumps(meta)})
    model = unet_rt.Model(tmp_path / "nan.pt", device="cpu", precision="fp32")
    for output in ("labels", "probabilities", "raw", "instances"):
        with pytest.raises(unet_rt.NonFiniteError, match="tile 0 .*nonfinite=\"propagate\""):
            model.segment(IMAGE, output=output)
    assert issubclass(unet_rt.NonFiniteError, unet_rt.InferenceError)
    assert np.isnan(model.segment(IMAGE, output="raw", nonfinite="propagate")).all()
    with pytest.raises(unet_rt.NonFiniteError):
        model.forward(np.zeros((1, 1, 64, 64), np.float32))


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(halo=2**40), "halo is 1099511627776"),
        (dict(size_multiple=2**63), "size_multiple is"),
        (dict(size_offset=10**18), "size_offset is"),
        (dict(in_channels=10**9), "in_channels is"),
        (dict(out_channels=0), "at least 1"),
        (dict(halo=-1), "invalid value"),
        (dict(halo="20"), "invalid type"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(normalization={"kind": "scale", "factor": 1e300}), "scale normalization"),
        (dict(normalization={"kind": "zscore", "mean": 0, "std": -1}), "std > 0"),
        (dict(normalization={"kind": "percentile", "low": 99, "high": 1}), "low < high"),
        (dict(format="unet_rt/9"), "format"),
        # Loaded, then planning said "sizes are 0 + k * 4 from 18446744073709551615 up".
        (dict(fixed_size=7), "fixed_size is 7, which is not an input size of its own rule"),
        # Same-padded, no output inside the halo: loaded, then every call said "tile: size 18446744073709551615".
        (dict(padding="same", size_offset=0, size_multiple=8, fixed_size=40), r"fixed_size 40 leaves no output: a tile needs its overlap of 24 per side \(the halo 20, rounded up"),
        # The same with the halo inside the tile but its overlap, rounded up to the multiple, not: loaded, and
        # every call said "tile: size 18446744073709551615".
        (dict(padding="same", size_offset=0, size_multiple=8, halo=3, fixed_size=8), "fixed_size 8 leaves no output: a tile needs its overlap of 8"),
        # A softmax over one channel is 1 everywhere: loaded, and every pixel was background.
        (dict(out_channels=1, class_names=None), "softmax.* with one output channel, which is 1 everywhere"),
        # Metadata the network contradicts loaded, and failed at the first image.
        (dict(in_channels=3), r"declares 3 input channel\(s\).* the network fails: .*expected input\[1, 3, 64, 64\] to have 1 channels"),
        (dict(spatial_dims=3), r"1 input channel\(s\), 3 spatial dimensions .* the network fails: .*conv2d"),
        (dict(size_multiple=1), r"input sizes 0 \+ k \* 1, an output of \[1, 2, 24, 25\] for an input of 64x65 .* returns \[1, 2, 24, 24\]"),
        (dict(out_channels=3, class_names=None), r"declares 3 output channel\(s\)"),
        (dict(halo=22), r"halo 22 and input sizes 0 \+ k \* 4, an output of \[1, 2, 20, 20\] .* the network returns \[1, 2, 24, 24\]"),
        (dict(padding="same"), "Same padding, halo 20.* the network returns"),
        # Read whole without a bound: a megabyte file that unpacks to gigabytes was held in memory.
        (dict(description=" " * (17 << 20)), "beyond the 16777216 metadata may have"),
    ],
)
def test_absurd_metadata_is_refused_at_load(tiny_model_path, tmp_path, changes, message):
    path = with_metadata(tiny_model_path, tmp_path / "bad.pt", **changes)
    start = time.perf_counter()
    with pytest.raises(unet_rt.MetadataError, match=message):
        unet_rt.Model(path, device="cpu")
    assert time.perf_counter() - start < 5.0


def test_large_but_valid_geometry_plans_in_closed_form(tiny_model_path, tmp_path):
    # The largest accepted halo and multiple: info and planning answer at once,
    # and segmenting says how much memory the smallest tile would need.
    path = with_metadata(tiny_model_path, tmp_path / "big.pt", halo=65536, size_multiple=65536, size_offset=4)
    model = unet_rt.Model(path, device="cpu", precision="fp32")
    start = time.perf_counter()
    assert model.info["smallest_size"] == 4 + 2 * 65536
    with pytest.raises(unet_rt.InvalidArgumentError, match="the smallest this model takes"):
        model.segment(IMAGE)
    with pytest.raises(unet_rt.InvalidArgumentError):
        model.layout((10**12, 10**12))
    assert time.perf_counter() - start < 2.0


def test_a_weight_of_a_type_torch_names_is_named_as_torch_does(tiny_model_path, tmp_path):
    # A damaged archive made a bias complex (a 3000-example fuzz run): the refusal quoted libtorch's
    # "bias type (c10::complex<float>)", at load (probing's message) as at segment.
    extra = {"unet_rt.json": ""}
    module = torch.jit.load(str(tiny_model_path), _extra_files=extra)
    name = next(n for n, _ in module.named_parameters() if n.endswith("bias"))
    owner, attribute = name.rsplit(".", 1)
    layer = dict(module.named_modules())[owner]
    setattr(layer, attribute, torch.nn.Parameter(getattr(layer, attribute).detach().to(torch.complex64),
                                                 requires_grad=False))
    torch.jit.save(module, str(tmp_path / "meta.pt"), _extra_files=extra)
    torch.jit.save(module, str(tmp_path / "bare.pt"))
    for path in (tmp_path / "meta.pt", tmp_path / "bare.pt"):
        with pytest.raises(unet_rt.UnetRtError) as info:
            unet_rt.Model(path, device="cpu")
        assert "c10::" not in str(info.value) and "complex64" in str(info.value), info.value


def test_corrupt_archives_are_model_errors_without_cpp_frames(tiny_model_path, tmp_path):
    data = Path(tiny_model_path).read_bytes()
    for i, cut in enumerate((len(data) // 2, len(data) - 30, 100)):
        path = tmp_path / f"cut{i}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(unet_rt.ModelError) as info:
            unet_rt.Model(path, device="cpu")
        text = str(info.value)
        assert "frame #" not in text and "c10::" not in text and "Exception raised from" not in text, text
        with pytest.raises(unet_rt.ModelError):
            unet_rt.Model.from_bytes(data[:cut], device="cpu")


def test_torch_save_files_are_named_for_what_they_are(tmp_path):
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.save(net, tmp_path / "module.pt")
    # libtorch said "failed locating file constants.pkl ... your checkpoint file is corrupted".
    for name in ("weights.pt", "module.pt"):
        with pytest.raises(unet_rt.ModelError, match="it is a torch.save file .* not a TorchScript archive; export"):
            unet_rt.Model(tmp_path / name, device="cpu")
    with pytest.raises(unet_rt.ModelError, match="it is a torch.save file"):
        unet_rt.Model.from_bytes((tmp_path / "weights.pt").read_bytes(), device="cpu")


def test_files_that_are_not_zip_archives_say_what_they_are(tmp_path, cli):
    """"invalid Zip archive: Could not find EOCD" was all a user learned of
    a Git LFS pointer, a saved login page or a legacy torch.save file."""
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    torch.save(net.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4242\n")
    (tmp_path / "page.pt").write_text("<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    cases = {"legacy.pth": "a pickle .* torch.save", "lfs.pt": "Git LFS pointer.*git lfs pull",
             "page.pt": "an HTML page", "empty.pt": "an empty file"}
    for name, message in cases.items():
        with pytest.raises(unet_rt.ModelError, match=message):
            unet_rt.Model(tmp_path / name, device="cpu")
        with pytest.raises(unet_rt.ModelError, match=message):
            unet_rt.Model.from_bytes((tmp_path / name).read_bytes(), device="cpu")
    proc = subprocess.run([cli, "info", str(tmp_path / "lfs.pt")], capture_output=True, text=True)
    assert proc.returncode == 2 and "git lfs pull" in proc.stderr, proc.stderr


def _rewrite_archive(source: str, change) -> bytes:
    """The archive at ``source`` with every entry's bytes passed through ``change(name, body)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w") as dst:
        for entry in src.infolist():
            dst.writestr(entry.filename, change(entry.filename, src.read(entry.filename)))
    return out.getvalue()


@pytest.mark.parametrize("record", ["data/0", "data/10", "data/25"])
@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_short_tensor_records_are_refused_before_libtorch_reads_them(tiny_model_path, record, fraction):
    # libtorch takes a storage's size from data.pkl and reads the record
    # without comparing: an emptied record segfaulted, a cut one computed
    # from whatever memory followed it.
    kept = []

    def cut(name: str, body: bytes) -> bytes:
        if not name.endswith("/" + record):
            return body
        kept.append(int(len(body) * fraction))
        return body[: kept[-1]]

    damaged = _rewrite_archive(tiny_model_path, cut)
    with pytest.raises(unet_rt.ModelError, match=rf"tensor record \S*{record} holds {kept[0]} bytes .* truncated or damaged"):
        unet_rt.Model.from_bytes(damaged, device="cpu")


def test_tensors_reaching_past_their_storage_are_refused(tiny_model_path):
    # The first convolution's weight is a (4, 1, 3, 3) view of 36 floats;
    # a size of 9 in the last axis would reach element 42.
    old, new = b"(K\x04K\x01K\x03K\x03t", b"(K\x04K\x01K\x03K\x09t"
    damaged = _rewrite_archive(
        tiny_model_path, lambda name, body: body.replace(old, new, 1) if name.endswith("/data.pkl") else body
    )
    assert damaged != Path(tiny_model_path).read_bytes()
    with pytest.raises(unet_rt.ModelError, match=r"reaches element 42 but its storage has 36 elements"):
        unet_rt.Model.from_bytes(damaged, device="cpu")


def test_a_pickle_length_past_its_end_is_refused_before_libtorch_allocates_it(tiny_model_path):
    # One flipped bit made a NEWFALSE (0x89) a BINUNICODE8 (0x8d) whose next
    # 8 bytes read as a length of 5.8 GB: libtorch allocated it before finding
    # the pickle too short (3.5 s here, 11 s on a busy machine, and an abort
    # where that much memory is not there).
    def flip(name: str, body: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return body
        at = body.index(b"\x89h\x02NX")
        return body[:at] + b"\x8d" + body[at + 1:]

    damaged = _rewrite_archive(tiny_model_path, flip)
    start = time.perf_counter()
    with pytest.raises(unet_rt.ModelError, match=r"data.pkl is damaged: it ends before its pickle does \(\d+ bytes wanted"):
        unet_rt.Model.from_bytes(damaged, device="cpu")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("key", [2**28, 2**31 - 1, 2**32 - 1])
def test_a_memo_key_beyond_any_picklers_count_is_refused(tiny_model_path, key):
    # libtorch sized its memo table to the key: 2^28 filled 4 GiB (2.5 s,
    # and the model loaded), 2^31 and above raised "std::bad_alloc".
    def put(name: str, body: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return body
        at = body.index(b"q\x00") + 2
        return body[:at] + b"r" + key.to_bytes(4, "little") + body[at:]

    with pytest.raises(unet_rt.ModelError, match=rf"data.pkl is damaged: its memo key {key} is beyond"):
        unet_rt.Model.from_bytes(_rewrite_archive(tiny_model_path, put), device="cpu")


class _TwiceTheBatch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).repeat(2, 1, 1, 1)


def test_a_network_returning_another_batch_is_refused_at_once(tmp_path):
    # Its second copy read as a change reaching every pixel: probing went on
    # to 2048 px and took 15 s (with metadata too, to say what it finds).
    path = tmp_path / "twice.pt"
    torch.jit.save(torch.jit.script(_TwiceTheBatch().eval()), str(path))
    start = time.perf_counter()
    with pytest.raises(unet_rt.ModelError, match=r"it returns a batch of 2 for an input batch of 1"):
        unet_rt.Model(path, device="cpu")
    assert time.perf_counter() - start < 3.0


UNPACKED_BEYOND_MEMORY = """
import resource, sys, unet_rt
# Room for 256 MiB more than the process holds after its imports.
used = next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmData:"))
resource.setrlimit(resource.RLIMIT_DATA, (used + (256 << 20), resource.RLIM_INFINITY))
try:
    unet_rt.Model(sys.argv[1], device="cpu")
    print("loaded", flush=True)
except unet_rt.ModelError as e:
    print(e, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc are Linux's")
def test_records_unpacking_beyond_the_memory_available_are_refused(tiny_model_path, tmp_path):
    # libtorch allocates each record at its unpacked size: a compressed record
    # of zeros (4 MiB in the file, 4 GiB unpacked) filled 8.7 GiB before it
    # loaded, and a few more megabytes of file would have had the process killed.
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(tiny_model_path) as src, zipfile.ZipFile(path, "w") as dst:
        for entry in src.infolist():
            body = src.read(entry.filename)
            if not entry.filename.endswith("/data/0"):
                dst.writestr(entry.filename, body)
                continue
            info = zipfile.ZipInfo(entry.filename)
            info.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(info, "w", force_zip64=True) as out:
                out.write(body)
                zeros = bytes(16 << 20)
                for _ in range(32):  # 512 MiB
                    out.write(zeros)
    assert path.stat().st_size < 4 << 20
    proc = subprocess.run([sys.executable, "-c", UNPACKED_BEYOND_MEMORY, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"its records unpack to 512\.\d MiB from \S+ \w+ in the file, more than the \d+\.\d MiB of "
                     r"memory available now", proc.stdout), proc.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_special_files_are_not_models(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_load_error(fifo)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, "loading a FIFO blocked"
    assert isinstance(result[0], unet_rt.ModelError) and "a FIFO" in str(result[0])
    assert isinstance(_load_error(tmp_path), unet_rt.ModelError)
    assert "a character device" in str(_load_error(Path("/dev/null")))


def _load_error(path: Path) -> BaseException:
    try:
        unet_rt.Model(path, device="cpu")
    except BaseException as err:  # noqa: BLE001  (the test classifies it)
        return err
    raise AssertionError(f"{path} loaded")


def test_every_error_class_the_binding_raises_exists():
    names = unet_rt._unet_rt.error_class_names()
    assert len(names) == len(set(names)) == 10
    for name in names:
        cls = getattr(errors, name)
        assert issubclass(cls, unet_rt.UnetRtError) and name in errors.__all__ and name in unet_rt.__all__


class _Doubling(torch.nn.Module):
    """A same-padded convolution of twice the input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x * 2.0)


class _DoublingInPlace(_Doubling):
    """The same, doubling its input in place (as networks that start with
    ``x.div_(255)`` do)."""

    def forward(self, x):
        x.mul_(2.0)
        return self.conv(x)


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_a_network_that_changes_its_input_in_place_gets_the_same_augmented_result(tmp_path, tta):
    meta = dict(format="unet_rt/1", spatial_dims=2, in_channels=1, out_channels=2, output="softmax",
                padding="same", halo=1, size_multiple=1, size_offset=0)
    models = {}
    for in_place, net in ((False, _Doubling()), (True, _DoublingInPlace())):
        path = tmp_path / f"in_place_{in_place}.pt"
        torch.jit.save(torch.jit.script(net.eval()), str(path), _extra_files={"unet_rt.json": json.dumps(meta)})
        models[in_place] = unet_rt.Model(path, device="cpu", precision="fp32")
    image = np.random.default_rng(3).random((40, 44)).astype(np.float32)
    want = models[False].segment(image, output="raw", tta=tta)
    # The later flips were cut from the batch the first pass had doubled.
    np.testing.assert_array_equal(models[True].segment(image, output="raw", tta=tta), want)



def test_a_network_that_changes_its_input_in_place_is_probed_and_measured_as_any_other(tmp_path):
    """Probing cut tiles from a probe image the network had doubled: the
    in-place network got the fallback geometry (halo 512, multiple 64) and,
    with metadata, a warning that its halo does not hold."""
    found = {}
    for in_place, net in ((False, _Doubling()), (True, _DoublingInPlace())):
        path = tmp_path / f"plain_{in_place}.pt"
        torch.jit.save(torch.jit.script(net.eval()), str(path))
        info = unet_rt.Model(path, device="cpu").info
        found[in_place] = (info["halo"], info["size_multiple"], info["exact"], info["output"])
    assert found[True] == found[False] == (1, 1, True, "softmax")


SLOW_FORWARD = """
import json, sys, time, numpy as np, torch, unet_rt

class Slow(torch.nn.Module):
    # Same-padded 3x3 convolutions, 64 wide: a forward pass of many seconds.
    def __init__(self):
        super().__init__()
        layers = [torch.nn.Conv2d(1, 64, 3, padding=1)]
        layers += [torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(8)]
        layers += [torch.nn.Conv2d(64, 2, 3, padding=1)]
        self.layers = torch.nn.Sequential(*layers)
    def forward(self, x):
        return self.layers(x)

meta = dict(format="unet_rt/1", spatial_dims=2, in_channels=1, out_channels=2, output="softmax",
            padding="same", halo=10, size_multiple=1, size_offset=0)
torch.jit.save(torch.jit.script(Slow().eval()), sys.argv[1], _extra_files={"unet_rt.json": json.dumps(meta)})
model = unet_rt.Model(sys.argv[1], device="cpu", precision="fp32")
t0 = time.perf_counter()
model.forward(np.zeros((1, 1, 128, 128), np.float32))
per_pixel = (time.perf_counter() - t0) / 128**2
# One tile whose single forward pass takes about 6 s on this machine.
side = int(min(4096, max(256, (6.0 / per_pixel) ** 0.5)))
image = np.random.rand(side - 20, side - 20).astype(np.float32)
print("start", round(per_pixel * side**2, 2), flush=True)
try:
    model.segment(image, tile=side, batch_size=1)
    print("finished", time.perf_counter(), flush=True)
except KeyboardInterrupt:
    print("interrupted", time.perf_counter(), flush=True)
"""


def _interrupted(args, env, delay):
    """Runs ``args``, reads its first line, sends SIGINT ``delay`` seconds
    later and reads the next: (first line's words, when the signal was sent,
    next line's words)."""
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        try:
            first = proc.stdout.readline().split()
            time.sleep(delay)
            sent = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            return first, sent, proc.stdout.readline().split()
        finally:
            proc.kill()
            proc.wait(timeout=30)


def test_ctrl_c_stops_a_single_long_forward_pass_within_a_second(tmp_path, clean_env):
    script = tmp_path / "slow_forward.py"  # torch.jit.script reads the module's source
    script.write_text(SLOW_FORWARD)
    # Signalled well inside the one forward pass.
    first, sent, line = _interrupted([sys.executable, str(script), str(tmp_path / "slow.pt")], clean_env, 1.0)
    assert first and first[0] == "start", first
    estimate = float(first[1])
    assert estimate > 2.0, f"the forward pass ({estimate} s) must outlast the signal for the test to tell"
    assert line and line[0] == "interrupted", line
    assert float(line[1]) - sent < 1.0


SLOW_READ_OUT = """
import json, sys, time
import numpy as np
import unet_rt
from unet_rt import _unet_rt

read_out = json.dumps(unet_rt.Model(device="cpu").read_out())
rng = np.random.default_rng(0)
small = rng.integers(0, 3, (1024, 1024), dtype=np.uint8)
t0 = time.perf_counter()
_unet_rt.read_out_instances(small, read_out)
per_pixel = (time.perf_counter() - t0) / small.size
# A read-out of about 8 s on this machine.
side = int(min(16384, max(2048, (8.0 / per_pixel) ** 0.5)))
labels = rng.integers(0, 3, (side, side), dtype=np.uint8)
print("start", round(per_pixel * side**2, 2), flush=True)
try:
    _unet_rt.read_out_instances(labels, read_out)
    print("finished", time.perf_counter(), flush=True)
except KeyboardInterrupt:
    print("interrupted", time.perf_counter(), flush=True)
"""


def test_ctrl_c_stops_an_instance_read_out_within_a_second(tmp_path, clean_env):
    # The read-out looked at Ctrl-C only before it began: half a second per 10 megapixels
    # of waiting, what output="instances" runs after the network.
    script = tmp_path / "slow_read_out.py"
    script.write_text(SLOW_READ_OUT)
    first, sent, line = _interrupted([sys.executable, str(script)], clean_env, 1.5)
    assert first and first[0] == "start", first
    assert float(first[1]) > 3.0, f"the read-out ({first[1]} s) must outlast the signal for the test to tell"
    assert line and line[0] == "interrupted", line
    assert float(line[1]) - sent < 1.0


SLOW_PROBE = """
import sys, time, torch, unet_rt

class SlowProbe(torch.nn.Module):
    # No metadata: probing runs it, and from 256 pixels a pass takes minutes.
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    def forward(self, x):
        n = 0
        if x.shape[-1] >= 256:
            for i in range(500000000):
                n += 1
        return self.conv(x) + float(n) * 0.0

torch.jit.save(torch.jit.script(SlowProbe().eval()), sys.argv[1])
print("start", flush=True)
try:
    unet_rt.Model(sys.argv[1], device="cpu")
    print("loaded", time.perf_counter(), flush=True)
except KeyboardInterrupt:
    print("interrupted", time.perf_counter(), flush=True)
"""


def test_ctrl_c_stops_a_model_load_whose_probing_runs_a_long_pass(tmp_path, clean_env, cli):
    script = tmp_path / "slow_probe.py"
    script.write_text(SLOW_PROBE)
    model = tmp_path / "slow_probe.pt"
    # Ctrl-C waited for the probe's pass to end (a minute and more); the
    # signal comes in the first long pass.
    first, sent, line = _interrupted([sys.executable, str(script), str(model)], clean_env, 3.0)
    assert first == ["start"]
    assert line and line[0] == "interrupted", line
    assert float(line[1]) - sent < 2.0
    # The command line alike: exit 130 at once, not after the pass.
    with subprocess.Popen([str(cli), "info", str(model)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        time.sleep(3.0)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode == 130 and time.perf_counter() - sent < 5.0, proc.stderr.read()


class _DictOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        # Two tensors, neither under "out": no entry can be chosen.
        return {"a": self.conv(x), "b": self.conv(x)}


class _Flat(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten()


@pytest.mark.parametrize(
    "module,message",
    [(_DictOut, r"returns a dict with keys \"a\", \"b\" and none is \"out\": set output_key"), (_Flat, r"returns shape \[2\]: a segmentation network")],
)
def test_probing_stops_at_once_on_outputs_no_size_can_fix(module, message):
    # These scanned every size up to 640 (seconds each load, gigabytes of
    # cached executor plans) before saying "no size rule".
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module()), buffer)
    start = time.perf_counter()
    with pytest.raises(unet_rt.ModelError, match=message):
        unet_rt.Model.from_bytes(buffer.getvalue(), device="cpu", precision="fp32")
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("kind,message", [("complex", "returns ComplexFloat values"),
                                          ("sparse", "returns a sparse"), ("mkldnn", "returns a mkldnn")])
def test_complex_or_non_dense_network_output_is_an_inference_error(kind, message):
    """Complex values would lose their imaginary part in the conversion to
    float32; sparse and oneDNN tensors have no strides to read."""
    class Exotic(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)
            self.kind = kind

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if self.kind == "complex":
                return torch.complex(y, y)
            if self.kind == "sparse":
                return y.to_sparse()
            return y.contiguous().to_mkldnn()

    meta = {"format": "unet_rt/1", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "output": "softmax",
            "padding": "same", "halo": 4, "size_multiple": 1, "size_offset": 0, "normalization": {"kind": "none"}}
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Exotic(kind)), buffer, _extra_files={"unet_rt.json": json.dumps(meta)})
    model = unet_rt.Model.from_bytes(buffer.getvalue(), device="cpu", precision="fp32")
    for output in ("raw", "probabilities", "labels", "instances"):
        with pytest.raises(unet_rt.InferenceError, match=message):
            model.segment(IMAGE, output=output)


@pytest.mark.parametrize(
    "image",
    [
        np.full((10, 10), -np.inf, np.float32),
        np.full((10, 10), np.nan, np.float64),
        np.where(np.arange(100) % 2 == 0, np.inf, np.nan).astype(np.float16).reshape(10, 10),
    ],
)
def test_percentile_range_refuses_images_without_a_finite_value(tmp_path, tiny_model_path, image):
    percentile = with_metadata(Path(tiny_model_path), tmp_path / "p.pt",
                               normalization={"kind": "percentile", "low": 1.0, "high": 99.8})
    model = unet_rt.Model(percentile, device="cpu", precision="fp32")
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid image: it holds no finite value"):
        model.percentile_range(image)
    # Others are ranged by their finite values, as numpy.nanpercentile does (an infinite pixel
    # among 5.0s was refused; NaN made the range NaN).
    some = np.where(np.arange(100) == 0, np.inf, np.arange(100) % 7).astype(np.float16).reshape(10, 10)
    finite = some[np.isfinite(some)].astype(np.float64)
    assert model.percentile_range(some) == pytest.approx(tuple(np.percentile(finite, [1.0, 99.8])))



def _blockwise_ranges(image: np.ndarray, block: int, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Percentile values of ``image`` (``(C, y, x)``) from the binding's
    block statistics, combined in two groups as a Dask tree would."""
    native = unet_rt._unet_rt
    parts = []
    for y in range(0, image.shape[1], block):
        for x in range(0, image.shape[2], block):
            piece = image[None, :, y : y + block, x : x + block]
            parts.append(native.percentile_stats(piece, (0, 0, y, x), image.shape))
    half = len(parts) // 2
    groups = [native.combine_percentile_stats(parts[:half]), native.combine_percentile_stats(parts[half:])]
    return native.percentile_ranges(groups, 1, low, high)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float16, np.float32, np.float64])
def test_block_statistics_give_the_whole_images_percentiles(tmp_path, tiny_model_path, dtype):
    percentile = with_metadata(Path(tiny_model_path), tmp_path / "p.pt",
                               normalization={"kind": "percentile", "low": 1.0, "high": 99.8})
    model = unet_rt.Model(percentile, device="cpu", precision="fp32")
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    values = rng.integers(info.min, info.max, (2, 50, 70), endpoint=True) if info else rng.normal(3, 40, (2, 50, 70))
    image = values.astype(dtype)
    ranges = _blockwise_ranges(image[:1], 16)
    assert ranges.shape == (1, 2) and ranges.dtype == np.float64
    assert tuple(ranges[0].tolist()) == model.percentile_range(image[:1], axes="cyx")  # exactly the engine's
    # Channels are one image's values together.
    both = _blockwise_ranges(image, 16)[0]
    np.testing.assert_allclose(both, np.percentile(image.astype(np.float64), [1.0, 99.8]), rtol=1e-12, atol=1e-9)


def test_block_statistics_refuse_hostile_arguments_by_name():
    native = unet_rt._unet_rt
    image = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid origin: a part of shape .* does not lie inside"):
        native.percentile_stats(image[None], (0, 0, 5, 0), image.shape)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid origin: a block of shape"):
        native.percentile_stats(image, (0, 0), image.shape)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid origin: -1 is negative"):
        native.percentile_stats(image[None], (0, -1, 0, 0), image.shape)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid image: dtype complex64"):
        native.percentile_stats(image[None].astype(np.complex64), (0, 0, 0, 0), image.shape)
    floats = native.percentile_stats(image[None], (0, 0, 0, 0), image.shape)
    counts = native.percentile_stats(image[None].astype(np.uint8), (0, 0, 0, 0), image.shape)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid stats: statistics of different pixel types"):
        native.combine_percentile_stats([floats, counts])
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid parts: hold statistics of image 0, beyond the 0"):
        native.percentile_ranges([floats], 0, 1.0, 99.8)
    for bad, message in [(5, "got no sequence"), ([5], "an item is no dict"), ([{0: [None, 1]}], "a value is no tuple"),
                         ([{0: (None,)}], "a tuple has 1 items"), ([{0: (None, np.zeros(3, np.float32))}], "float64"),
                         ([{0: (0.0, np.zeros(3, np.int64))}], "uint64"), ([{0: ("a", np.zeros(3, np.uint64))}], "float")]:
        with pytest.raises(TypeError, match=message):
            native.combine_percentile_stats(bad)
    for low, high, named in [(float("nan"), 99.0, "low"), (1.0, 101.0, "high"), (-1.0, 99.0, "low")]:
        with pytest.raises(unet_rt.InvalidArgumentError, match=f"invalid {named}: .* is not a percentile"):
            native.percentile_ranges([floats], 1, low, high)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid images: .* more than (this machine.s|the .* this process.s cgroup)"):
        native.percentile_ranges([], 10**15, 1.0, 99.8)
    # NaN in the image: the range of its finite values (it was refused), never NaN passed on;
    # nothing finite, refused.
    nan = image.copy()
    nan[0, 0, :] = np.nan
    got = native.percentile_ranges([native.percentile_stats(nan[None], (0, 0, 0, 0), nan.shape)], 1, 1.0, 99.8)
    assert np.isfinite(np.asarray(got, dtype=float)).all(), got
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid image: it holds no finite value"):
        empty = np.full_like(image, np.nan)
        native.percentile_ranges([native.percentile_stats(empty[None], (0, 0, 0, 0), empty.shape)], 1, 1.0, 99.8)
    # Statistics that crossed a network may be misaligned or strided: read all the same.
    buffer = np.zeros(floats[0][1].size * 8 + 1, np.uint8)
    misaligned = buffer[1:].view(np.float64)
    misaligned[:] = floats[0][1]
    strided = np.repeat(floats[0][1], 2)[::2]
    want = native.percentile_ranges([floats], 1, 1.0, 99.8)
    assert np.array_equal(native.percentile_ranges([{0: (None, misaligned)}], 1, 1.0, 99.8), want)
    assert np.array_equal(native.percentile_ranges([{0: (None, strided)}], 1, 1.0, 99.8), want)
    # An image without statistics (no pixels) gets (0, 0).
    assert native.percentile_ranges([floats], 2, 1.0, 99.8)[1].tolist() == [0.0, 0.0]


def test_probing_a_network_too_wide_to_probe_is_an_error_not_gigabytes(tmp_path):
    # 4096 output channels: a 256 px probe output would hold 268 M values.
    path = tmp_path / "wide.pt"
    torch.jit.script(torch.nn.Conv2d(1, 4096, 1).eval()).save(str(path))
    start = time.perf_counter()
    with pytest.raises(unet_rt.ModelError, match="more than can be probed in memory .* export it with metadata"):
        unet_rt.Model(path, device="cpu")
    assert time.perf_counter() - start < 10


def test_lying_metadata_on_a_whole_tile_network_loads_quickly_and_warns(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.InstanceNorm2d(2)).eval()
    metadata = {"format": "unet_rt/1", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "output": "softmax",
                "padding": "same", "halo": 60000, "size_multiple": 65536}
    path = tmp_path / "lying.pt"
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"unet_rt.json": json.dumps(metadata)})
    start = time.perf_counter()
    with pytest.warns(unet_rt.ApproximateTilingWarning, match="instance_norm"):
        model = unet_rt.Model(path, device="cpu")
    assert time.perf_counter() - start < 10
    # The probe it would need is too large to measure: found in the code only.
    assert model.info["measured"] is None and not model.info["exact"]


def test_a_network_with_nan_output_is_probed_without_a_crash(tmp_path):
    class Nan(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * float("nan")

    path = tmp_path / "nan.pt"
    torch.jit.script(Nan().eval()).save(str(path))
    with pytest.raises(unet_rt.ModelError, match="NaN or infinite values for a random input"):
        unet_rt.Model(path, device="cpu")


def test_forward_refuses_a_complex_batch_instead_of_dropping_its_imaginary_part(model):
    batch = np.zeros((1, 1, 44, 44), np.complex128)
    for array in (batch, batch.astype(np.complex64), np.zeros((1, 1, 44, 44), bool), np.zeros((1, 1, 44, 44), "U1")):
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid batch: dtype"):
            model.forward(array)
    assert model.forward(np.zeros((1, 1, 44, 44), np.int16)).shape == (1, 2, 4, 4)


def test_array_subclasses_are_read_as_plain_arrays(model):
    # np.matrix indexes and transposes by its own rules: the layout code's
    # views of it corrupted the heap (an abort at garbage collection).
    import gc

    want = model.segment(IMAGE)
    with pytest.warns(PendingDeprecationWarning):
        matrix = np.matrix(IMAGE)
    assert np.array_equal(model.segment(matrix), want)
    assert np.array_equal(model.segment(np.ma.masked_array(IMAGE)), want)  # nothing masked
    assert model.percentile_range(matrix) == model.percentile_range(IMAGE)
    gc.collect()


@pytest.mark.parametrize(
    "image,message",
    [
        ([[1.0, 2.0], [3.0]], "invalid image: cannot be read as one array"),
        (torch.rand(64, 72, requires_grad=True), "invalid image: cannot be read as one array"),
        (np.ma.masked_array(IMAGE, mask=IMAGE > 0.5), r"invalid image: a masked array .*filled"),
        # No axes make a value or a row an image: axes= was blamed, with examples that could not fit.
        (np.array(1.0, np.float32), r"invalid image: holds a single value \(shape \[\]\), not an image"),
        (np.float32(1), r"invalid image: holds a single value"),
        (np.ones(5, np.float32), r"invalid image: holds one axis \(shape \[5\]\), not an image"),
        # NumPy has no bfloat16.
        (torch.ones(64, 72, dtype=torch.bfloat16), r"invalid image: cannot be read .*; pass image.float\(\)"),
    ],
)
def test_inputs_numpy_cannot_read_are_invalid_arguments_naming_the_image(model, image, message):
    with pytest.raises(unet_rt.InvalidArgumentError, match=message):
        model.segment(image)


def test_arguments_that_are_not_arrays_or_numbers_are_named(model):
    # None and a dict were "dtype object is not supported"; 10**400 in
    # input_range was Python's "int too large to convert to float", naming
    # nothing; a fully masked out= was filled and came back all masked.
    for image in (None, {"a": 1}):
        with pytest.raises(TypeError, match=r"image must be an array .* got (NoneType|dict)"):
            model.segment(image)
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid input_range: expected \(low, high\)"):
        model.segment(IMAGE, input_range=(0, 10**400))
    out = np.ma.masked_array(np.zeros(IMAGE.shape, np.uint8), mask=True)
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid out: a masked array .* out.data"):
        model.segment(IMAGE, out=out)


def test_out_whose_elements_share_memory_is_refused(model):
    aliased = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=IMAGE.shape, strides=(0, 0))
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid out: its elements overlap"):
        model.segment(IMAGE, out=aliased)
    rows = np.lib.stride_tricks.as_strided(np.zeros(200, np.uint8), shape=IMAGE.shape, strides=(1, 1))
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid out: its elements overlap"):
        model.segment(IMAGE, out=rows)
    # Views with gaps, reversed or transposed, are fine.
    big = np.zeros((IMAGE.shape[1], IMAGE.shape[0] * 2), np.uint8)
    view = big[:, ::-2].T
    model.segment(IMAGE, out=view)
    assert np.array_equal(view, model.segment(IMAGE))


def test_float16_result_beyond_its_range_is_non_finite(tmp_path):
    from training.tiny import export_tiny

    scaled = unet_rt.Model(export_tiny(tmp_path / "scaled.pt", seed=0, normalization={"kind": "scale", "factor": 1e6}),
                           device="cpu", precision="fp32")
    raw = scaled.segment(IMAGE, output="raw")
    assert np.isfinite(raw).all() and np.abs(raw).max() > 65504
    with pytest.raises(unet_rt.NonFiniteError, match="beyond the range of float16"):
        scaled.segment(IMAGE, output="raw", out=np.zeros(raw.shape, np.float16))
    kept = np.zeros(raw.shape, np.float16)
    scaled.segment(IMAGE, output="raw", out=kept, nonfinite="propagate")
    assert np.isinf(kept).any()
    # Probabilities always fit.
    scaled.segment(IMAGE, output="probabilities", out=np.zeros(raw.shape, np.float16))
    with pytest.raises(unet_rt.InvalidArgumentError, match=r'invalid input_range: .*\{"kind":"scale"'):
        scaled.segment(IMAGE, input_range=(0, 1))


@pytest.mark.parametrize("factor", [1e-21, 1e-30, 1e20, 1e-44, 1e-300])
def test_percentile_normalisation_does_not_depend_on_the_images_scale(model, factor):
    # A range under 1e-20 counted as flat: 98% of the labels changed. Then one under 2.9e-39
    # (beyond float32's map, mapped in float64 now): every label background.
    want = model.segment(IMAGE.astype(np.float64), output="probabilities")
    got = model.segment(IMAGE.astype(np.float64) * factor, output="probabilities")
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("dtype,offset,span", [(np.float32, 1e6, 10.0), (np.float32, 1e4, 1.0), (np.uint16, 30000, 100)])
def test_images_far_from_zero_are_normalised_as_their_float64_copies(model, dtype, offset, span):
    # The float32 map x * scale + shift cancelled two large terms: pixels near 1e6 of a range
    # of 10 reached the network 0.6% of the range off, and labels flipped.
    pixels = (IMAGE * span + offset).astype(dtype)
    want = model.segment(pixels.astype(np.float64), output="probabilities")
    got = model.segment(pixels, output="probabilities")
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_a_steep_input_range_saturates_16_bit_pixels_as_float64_ones(model):
    # The map of (0, 1e-35) sends uint16's 60000 beyond float32: the image was refused as
    # "holding NaN or infinite values". Its pixels saturate now, as float64 pixels do.
    for dtype in (np.uint16, np.int16):
        pixels = (IMAGE * 30000).astype(dtype)
        want = model.segment(pixels.astype(np.float64), input_range=(0, 1e-35), output="raw", nonfinite="propagate")
        got = model.segment(pixels, input_range=(0, 1e-35), output="raw", nonfinite="propagate")
        np.testing.assert_array_equal(got, want)


def test_choices_are_read_alike_everywhere(model):
    want = model.segment(IMAGE)
    for output, blend, tta in [("Labels", "CROP", "None"), (" labels ", "Crop ", " NONE")]:
        assert np.array_equal(model.segment(IMAGE, output=output, blend=blend, tta=tta), want)
    assert np.array_equal(model.segment(IMAGE, progress=np.False_), want)
    # A NumPy array of sizes is a sequence ("tile must be an int, got ndarray").
    assert np.array_equal(model.segment(IMAGE, tile=np.array([64, 64])), model.segment(IMAGE, tile=(64, 64)))
    assert np.array_equal(model.segment(IMAGE, tile=np.int64(64)), model.segment(IMAGE, tile=64))
    # "WHOLE" was "not a tile" in Python (the CLI took it).
    whole = model.segment(IMAGE, tile="whole")
    for word in ("WHOLE", " Whole "):
        assert np.array_equal(model.segment(IMAGE, tile=word), whole)
    with pytest.raises(TypeError, match="tta must be a str, got NoneType"):
        model.segment(IMAGE, tta=None)


def test_a_loaded_model_refuses_another_device_or_precision(model):
    want = model.segment(IMAGE)
    for device, precision in [("cpu", "fp32"), ("CPU ", "float32"), ("auto", None), (None, "FP32")]:
        assert np.array_equal(unet_rt.segment(IMAGE, model, device=device, precision=precision), want)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid device: 'cuda:99', but the model was loaded"):
        unet_rt.segment(IMAGE, model, device="cuda:99")
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid precision: 'bf16', but the model was loaded"):
        unet_rt.segment(IMAGE, model, precision="bf16")
    for device in ("gpu", "cuda:all", " CUDA:00"):  # the same device as the core reads it, never "cpu"
        with pytest.raises(unet_rt.InvalidArgumentError, match=f"invalid device: '{device}', but the model"):
            unet_rt.segment(IMAGE, model, device=device)
    with pytest.raises(unet_rt.InvalidArgumentError, match="unknown device"):
        unet_rt.segment(IMAGE, model, device="tpu")


def test_device_names_are_read_as_the_core_reads_them():
    from unet_rt import _unet_rt

    # The Python side had its own rule ("cuda" only): "GPU" or "cuda:00"
    # were refused for a model on cuda:0.
    for name in ("cuda", " GPU", "cuda:00", "CUDA:0"):
        assert _unet_rt.canonical_devices(name) == ["cuda:0"]
    assert _unet_rt.canonical_devices("Cpu") == ["cpu"]
    assert _unet_rt.canonical_devices("AUTO") == ["auto"]
    count = unet_rt.build_info()["cuda_device_count"]
    assert _unet_rt.canonical_devices("cuda:all") == [f"cuda:{i}" for i in range(count)]


def test_a_tile_beyond_the_image_is_cut_to_the_whole_image_tile(model):
    # tile=1 << 20 on a 64x72 image asked for gigabytes of mirrored border
    # (refused for memory); 100004 on one axis took minutes.
    whole = model.layout(IMAGE.shape, tile="whole")["tile"]
    assert model.layout(IMAGE.shape, tile=1 << 20)["tile"] == whole
    assert model.layout(IMAGE.shape, tile=(100, 100004))["tile"][1] == whole[1]
    np.testing.assert_array_equal(model.segment(IMAGE, tile=1 << 20), model.segment(IMAGE, tile="whole"))


def test_a_batch_too_large_for_memory_is_blamed_on_batch_size(model):
    image = np.broadcast_to(np.float32(0.5), (20000, 20000))
    # A tile that fits alone, in batches that do not, named the tile.
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid batch_size: tiles of \[1004, 1004\] in batches"):
        model.segment(image, tile=1004, batch_size=10**6)


FORKED_WORKERS = """
import multiprocessing, sys, numpy as np, unet_rt

images = [np.random.default_rng(i).random((150 + 20 * i, 170), np.float32) for i in range(3)]

def work(i):
    # A model loaded in the child and the parent's bundled one.
    own = unet_rt.Model(sys.argv[1], device="cpu")
    return unet_rt.segment(images[i]), own.segment(images[i], output="raw")

if __name__ == "__main__":
    own = unet_rt.Model(sys.argv[1], device="cpu")
    # The parent's forward thread (and its OpenMP team) exists before the fork.
    want = [(unet_rt.segment(im), own.segment(im, output="raw")) for im in images]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(work, range(len(images)))
    for (a, b), (c, d) in zip(want, got):
        assert (a == c).all() and (b == d).all()
    # The parent goes on as before.
    assert (unet_rt.segment(images[0]) == want[0][0]).all()
    print("ok", flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the default start method on Linux")
def test_forked_worker_processes_segment_like_their_parent(tmp_path, tiny_model_path, clean_env):
    # A child of fork has none of its parent's threads: a call there waited
    # for ever on the parent's forward thread (and its OpenMP team).
    script = tmp_path / "forked.py"
    script.write_text(FORKED_WORKERS)
    try:
        done = subprocess.run([sys.executable, str(script), str(tiny_model_path)], capture_output=True, text=True,
                              env=clean_env, cwd=ROOT, timeout=180)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"forked workers hung: {e.stdout!r} {e.stderr!r}")
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr[-2000:]


DAEMON_AT_EXIT = """
import sys, threading, time, numpy as np, unet_rt

image = np.random.default_rng(0).random((2000, 2000), np.float32)
model = unet_rt.Model(unet_rt.bundled_model_path()) if sys.argv[1] == "segment" else None

def work():
    # A load (its check passes run the network), or a call of many batches.
    (model or unet_rt.Model(unet_rt.bundled_model_path())).segment(image)

threading.Thread(target=work, daemon=True).start()
time.sleep(float(sys.argv[2]))
print("exiting", flush=True)
"""


@pytest.mark.parametrize("call,delay", [("segment", 0.5), ("segment", 1.5), ("load", 0.05), ("load", 0.3)])
def test_interpreter_exit_with_a_daemon_thread_inside_a_call_is_clean(tmp_path, clean_env, call, delay):
    # Finalizing under the call freed what it read and tore libtorch down
    # under its forward pass (segmentation fault), or attached a thread to a
    # finalized interpreter (a panic, then abort).
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON_AT_EXIT)
    done = subprocess.run([sys.executable, str(script), call, str(delay)], capture_output=True, text=True,
                          env=clean_env, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["exiting"], (done.returncode, done.stderr[-3000:])
    assert "panicked" not in done.stderr and "Fatal" not in done.stderr
    # The thread's call ends as cancelled, if it was still running (its
    # report may be cut short: finalization stops daemon threads).
    assert not done.stderr or done.stderr.startswith("Exception in thread"), done.stderr[-3000:]


CALL_AFTER_EXIT_HANDLER = """
import atexit, sys

def late():
    # Registered before unet_rt's own exit handler, so it runs after it.
    import numpy as np, unet_rt
    for what, call in [("segment", lambda: unet_rt.segment(np.zeros((64, 64), np.float32), sys.argv[1], device="cpu")),
                       ("load", lambda: unet_rt.Model(sys.argv[1], device="cpu"))]:
        try:
            call()
            print(what, "ran")
        except unet_rt.errors.CancelledError as e:
            print(what, "refused:", e)

atexit.register(late)
import unet_rt
"""


def test_a_call_after_the_exit_handler_says_the_interpreter_is_exiting(tmp_path, clean_env, tiny_model_path):
    # It said only "cancelled", leaving the user looking for who cancelled.
    script = tmp_path / "late.py"
    script.write_text(CALL_AFTER_EXIT_HANDLER)
    done = subprocess.run([sys.executable, str(script), str(tiny_model_path)], capture_output=True, text=True,
                          env=clean_env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["segment refused", "load refused"], done.stdout
    assert all("the interpreter is exiting (unet_rt's exit handler ran)" in line for line in lines), done.stdout


class _SlowOnASentinel(torch.nn.Module):
    """A 1x1 convolution whose forward pass takes tens of seconds when a
    pixel is beyond 1e8 (never on the load's probes), with little memory:
    a pass that outlasts every wait of these tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if bool(x.max() > 1e8):
            for _ in range(3_000_000):
                y = y * 1.0
        return y


@pytest.fixture(scope="module")
def slow_model_path(tmp_path_factory) -> Path:
    metadata = {"format": "unet_rt/1", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "output": "softmax",
                "padding": "same", "halo": 0, "size_multiple": 1, "normalization": {"kind": "none"}}
    path = tmp_path_factory.mktemp("slow") / "slow.pt"
    torch.jit.save(torch.jit.script(_SlowOnASentinel().eval()), str(path),
                   _extra_files={"unet_rt.json": json.dumps(metadata)})
    return path


SLOW_AT_EXIT = """
import signal, sys, threading, time, numpy as np, unet_rt

model = unet_rt.Model(sys.argv[1], device="cpu")
image = np.zeros((64, 64), np.float32)
image[0, 0] = 1e9  # the slow pass

def interrupt(after):
    time.sleep(after)
    signal.raise_signal(signal.SIGINT)

def busy(done, total):
    end = time.monotonic() + 60
    while time.monotonic() < end:
        pass

if sys.argv[2] == "second-ctrl-c":
    # Ctrl-C ends the call (its pass runs on, abandoned); a second one ends
    # the wait for it at exit.
    threading.Thread(target=interrupt, args=(1.0,), daemon=True).start()
    threading.Thread(target=interrupt, args=(2.5,), daemon=True).start()
    try:
        model.segment(image)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
else:
    # A daemon thread's progress callback runs Python code past the wait.
    small = np.zeros((64, 64), np.float32)
    threading.Thread(target=lambda: model.segment(small, progress=busy), daemon=True).start()
    time.sleep(1.0)
    print("exiting", flush=True)
"""


@pytest.mark.parametrize("case,code,said", [("second-ctrl-c", 130, "interrupted while waiting for its work to stop"),
                                            ("busy-callback", 1, "its work did not stop within 10 s")])
def test_work_still_running_when_the_exit_wait_ends_ends_the_process_cleanly(tmp_path, clean_env, slow_model_path,
                                                                              case, code, said):
    # Finalizing under it crashed: SIGSEGV when the abandoned pass ended (7
    # runs in 9 after a second Ctrl-C), SIGABRT ("PyGILState_Release ...
    # finalizing") when the callback's thread took the GIL again.
    script = tmp_path / "slow_exit.py"
    script.write_text(SLOW_AT_EXIT)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script), str(slow_model_path), case], capture_output=True, text=True,
                          env=clean_env, cwd=ROOT, timeout=120)
    took = time.monotonic() - started
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert done.stdout.split() == ["interrupted" if code == 130 else "exiting"], done.stdout
    assert f"unet_rt: {said} at interpreter exit" in done.stderr, done.stderr[-3000:]
    assert "Fatal" not in done.stderr and "panicked" not in done.stderr, done.stderr[-3000:]
    assert took < 60, took  # not the pass's (nor the callback's) whole time


def test_ctrl_c_interrupts_model_forward_at_once(tmp_path, clean_env, slow_model_path):
    # The forward pass was waited for whole (9.5 s for a batch of five).
    script = tmp_path / "forward.py"
    script.write_text(
        "import signal, sys, threading, time, numpy as np, unet_rt\n"
        "model = unet_rt.Model(sys.argv[1], device='cpu')\n"
        "batch = np.zeros((1, 1, 32, 32), np.float32)\n"
        "batch[0, 0, 0, 0] = 1e9\n"
        "threading.Timer(1.0, signal.raise_signal, (signal.SIGINT,)).start()\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    model.forward(batch)\n"
        "except KeyboardInterrupt:\n"
        "    print(f'interrupted {time.monotonic() - started:.1f}', flush=True)\n"
    )
    done = subprocess.run([sys.executable, str(script), str(slow_model_path)], capture_output=True, text=True,
                          env=clean_env, cwd=ROOT, timeout=120)
    words = done.stdout.split()
    assert words[:1] == ["interrupted"] and float(words[1]) < 5, (done.stdout, done.stderr[-3000:])


def test_a_progress_callable_of_another_signature_is_refused_before_anything_runs(tiny_model_path):
    # progress=len failed after the first batch ("len() takes exactly one
    # argument"), naming no argument, with out= partly written.
    model = unet_rt.Model(tiny_model_path, device="cpu")
    image = np.random.default_rng(0).random((300, 300), np.float32)
    out = np.full((300, 300), 7, np.uint8)
    for progress, shown in ((len, "len takes (obj, /)"), (lambda: None, "<lambda> takes ()")):
        with pytest.raises(TypeError, match=re.escape(f"progress must be callable as progress(done, total): {shown}")):
            model.segment(image, out=out, tile=64, progress=progress)
        assert (out == 7).all()
    model.segment(image, out=out, tile=64, progress=lambda *counts: None)


def test_the_progress_callback_is_not_called_after_it_raised(tiny_model_path):
    model = unet_rt.Model(tiny_model_path, device="cpu")
    image = np.random.default_rng(0).random((600, 600), np.float32)
    for _ in range(5):
        calls = []

        def progress(done, total):
            calls.append(done)
            if len(calls) == 2:
                raise ValueError("stop here")

        with pytest.raises(ValueError, match="stop here"):
            model.segment(image, tile=64, batch_size=1, progress=progress)
        assert len(calls) == 2, calls


def test_ctrl_c_during_a_forward_pass_ends_the_command_line_with_130(tmp_path, cli):
    # The abandoned pass kept running while the process exited: libtorch was
    # torn down under it, and two runs in three died of SIGSEGV. SIGTERM (a
    # scheduler's time limit) ended it with Ctrl-C's 130: 128 + the signal's
    # number, as shells report it.
    image = tmp_path / "big.npy"
    np.save(image, (np.random.default_rng(0).random((3000, 3000)) * 60000).astype(np.uint16))
    for attempt, (sent, status) in enumerate([(signal.SIGINT, 130)] * 3 + [(signal.SIGTERM, 143)]):
        with subprocess.Popen([str(cli), "segment", str(image), "-o", str(tmp_path / f"out{attempt}"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            time.sleep(1.5 + 0.3 * attempt)
            proc.send_signal(sent)
            try:
                _, stderr = proc.communicate(timeout=60)
            finally:
                proc.kill()
        assert proc.returncode == status, (attempt, proc.returncode, stderr)


def _memory_cgroup(tmp_name: str, limit: int):
    """A new memory cgroup under this process's with a limit of ``limit``
    bytes (v1 or v2), or ``None`` where none can be made (not root, no
    memory controller delegated)."""
    lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    v1 = [path for _, controllers, path in lines if "memory" in controllers.split(",")]
    if v1 and Path("/sys/fs/cgroup/memory").is_dir():
        base, limit_file = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/"), "memory.limit_in_bytes"
    else:
        v2 = [path for hierarchy, _, path in lines if hierarchy == "0"]
        if not v2:
            return None
        base, limit_file = Path("/sys/fs/cgroup") / v2[0].lstrip("/"), "memory.max"
    group = base / tmp_name
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit))
    except OSError:
        if group.is_dir():
            group.rmdir()
        return None
    return group


CGROUP_LIMITED = """
import sys, numpy as np, unet_rt
small = unet_rt.segment(np.zeros((300, 300), np.uint8))
try:
    unet_rt.segment(np.zeros((16000, 16000), np.uint8), output="probabilities")  # 2.9 GiB of result
    print("granted", flush=True)
except unet_rt.InvalidArgumentError as e:
    print("refused", "cgroup" in str(e), flush=True)
"""


GLOBAL_ATTENTION = """
import resource
# 8 GiB of data for the whole process (it holds under 1 GiB after its
# imports): beyond it an allocation fails, where the kernel would otherwise
# kill the process, as it did on a 24 GiB machine at the 2048 px probe.
resource.setrlimit(resource.RLIMIT_DATA, (8 << 30, resource.RLIM_INFINITY))
import sys, warnings, numpy as np, torch, unet_rt
from training.zoo import GlobalAttentionUNet

torch.manual_seed(0)
torch.jit.save(torch.jit.script(GlobalAttentionUNet(16, 3).eval()), sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = unet_rt.Model(sys.argv[1], device="cpu")
print([type(w.message).__name__ for w in caught], model.info["exact"], model.info["square_memory"] > 0, flush=True)
image = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
# One 2048 px pass: refused, naming the limit, not attempted.
try:
    model.segment(image, tile="whole")
    print("whole: ran", flush=True)
except unet_rt.InvalidArgumentError as e:
    print("whole:", "ulimit" in str(e) and 'tile="whole"' in str(e), flush=True)
# The planner's tiles stay within the default budget's memory.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    labels = model.segment(image)
print("tiled:", labels.shape, model.layout(image.shape)["tile"], flush=True)
"""


OUT_OF_MEMORY_BEYOND_PROBING = """import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, (6 << 30, resource.RLIM_INFINITY))
import warnings, numpy as np, torch, unet_rt
from torch import nn

class Grows(nn.Module):
    # A network that cannot allocate its pass beyond 2100 pixels (beyond probing's images).
    def __init__(self, whole: bool):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.whole = whole
    def forward(self, x):
        if x.shape[-1] > 2100:
            x = x + torch.zeros([1 << 40]).sum()
        y = self.conv(x)
        if self.whole:
            y = y - y.mean()
        return y

image = np.random.default_rng(0).random((256, 2200), dtype=np.float32)
for whole in (False, True):
    torch.manual_seed(0)
    path = f"{sys.argv[1]}/grows{int(whole)}.pt"
    torch.jit.script(Grows(whole).eval()).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = unet_rt.Model(path, device="cpu")
    try:
        got = model.segment(image, tile="whole", output="probabilities")
        print(whole, model.info["exact"], "ran", np.abs(got - model.segment(image, tile=1024, output="probabilities")).max())
    except unet_rt.UnetRtError as e:
        print(whole, model.info["exact"], type(e).__name__, "approximate" in str(e), str(e)[-200:])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    print("default ran", model.layout(image.shape)["tile"], model.segment(image).shape)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA bounds allocations on Linux")
def test_a_pass_out_of_memory_shrinks_tiles_only_where_they_are_exact(tmp_path, clean_env):
    # A pass that ran out of memory was run again in smaller tiles, "the
    # tiling is exact": for an approximate model (a global mean here) that
    # changed the result without a word, and tile="whole" came back tiled.
    script = tmp_path / "grows.py"
    script.write_text(OUT_OF_MEMORY_BEYOND_PROBING)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env=clean_env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    exact, approximate, _ = done.stdout.splitlines()
    assert exact.startswith("False True ran") and float(exact.split()[-1]) < 1e-5, exact
    assert approximate.startswith("True False InferenceError True"), approximate
    assert "tiles smaller than those asked for were not tried in their place: give a smaller tile" in approximate
    # Its default tiles follow the memory at hand anyway: they shrink as before.
    assert "default ran" in done.stdout.splitlines()[-1], done.stdout


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_probing_a_network_whose_memory_grows_with_the_square_stops_before_it_runs_out(tmp_path, clean_env):
    # Probing doubled its images up to 2048 px while changes reached their
    # edge; with global attention that pass wanted over 30 GiB and the kernel
    # killed the process (or, under a limit, the failed allocation was
    # reported as a network that fails at that size). Passes are measured
    # and a larger one runs only where it fits: it stops at 1024 px and
    # loads as approximate. A whole-image pass was then planned as linear
    # (2 GiB) and killed the process the same way.
    script = tmp_path / "attention.py"
    script.write_text(GLOBAL_ATTENTION)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "attention.pt")], capture_output=True,
                          text=True, env={**clean_env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[0] == "['ApproximateTilingWarning'] False True", done.stdout
    # A tile counts the memory that grows with its square, as probing
    # measured it: the whole 2048 px pass (over 30 GiB) is refused up front.
    assert lines[1] == "whole: True", done.stdout
    assert lines[2].startswith("tiled: (2048, 2048)"), done.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="cgroups are Linux's")
def test_a_cgroup_memory_limit_is_the_limit(tmp_path, clean_env):
    # A container or a Slurm job limits memory through its cgroup; the
    # checks read only the machine's memory, granted a 2.9 GiB result in a
    # 2 GiB job, and the kernel killed the process (SIGKILL).
    group = _memory_cgroup(f"unet_rt_test_{os.getpid()}", 2 << 30)
    if group is None:
        pytest.skip("no memory cgroup can be made here (needs root and a memory controller)")
    script = tmp_path / "limited.py"
    script.write_text(CGROUP_LIMITED)
    try:
        done = subprocess.run(["bash", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$0" "$1"',
                               sys.executable, str(script)], capture_output=True, text=True, env=clean_env,
                              cwd=ROOT, timeout=300)
    finally:
        group.rmdir()
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["refused", "True"], done.stdout


def test_a_sparse_memory_map_beyond_the_free_disk_space_is_refused(model, tmp_path, monkeypatch):
    # Each page of a sparse file gets disk space when first written; a page
    # that gets none killed the process with SIGBUS in the middle of the call.
    image = np.random.default_rng(5).random((300, 300)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint8, shape=(300, 300))
    monkeypatch.setattr(unet_rt.model, "_free_bytes", lambda path: 1000)
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid out: the memory-mapped file .* free; .*SIGBUS"):
        model.segment(image, out=out)
    # Plain views of the map, and a raw mmap's buffer, skipped the check.
    import mmap

    with open(tmp_path / "raw.bin", "w+b") as f:
        f.truncate(300 * 300)
        raw = mmap.mmap(f.fileno(), 300 * 300)
    views = [np.asarray(out), out.view(np.ndarray), out[10:], np.frombuffer(raw, np.uint8).reshape(300, 300)]
    for view in views:
        with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid out: the memory-mapped file .*SIGBUS"):
            model.segment(image, out=view)
    # Copy-on-write maps never write the file.
    private = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="c")
    assert model.segment(image, out=private) is private
    del views, view, private
    raw.close()
    monkeypatch.undo()
    assert model.segment(image, out=out) is out
    assert (out == model.segment(image)).all()


def test_out_of_another_dtype_is_told_the_rule_of_the_output_asked_for(model):
    """A float64 out= for probabilities listed every output's dtypes, the
    labels' first."""
    for output, rule in (("probabilities", "probabilities output is written as float32 or float16"),
                         ("raw", "raw output is written as float32 or float16"),
                         ("labels", "labels are written as uint8 or uint16"),
                         ("instances", "instance ids are written as uint32, uint64 or int64")):
        shape = model.result_shape(IMAGE.shape, output=output)
        with pytest.raises(unet_rt.InvalidArgumentError, match=f"invalid out: has dtype float64; {rule}"):
            model.segment(IMAGE, output=output, out=np.zeros(shape, np.float64))


def test_an_image_another_call_writes_into_is_refused_saying_so(model):
    """rust-numpy's "The given array is already borrowed" named neither the
    out= nor the other call."""
    image = np.random.default_rng(0).random((600, 600)).astype(np.float32)
    buf = np.zeros(image.shape, np.uint8)
    started, release, outcome = threading.Event(), threading.Event(), []

    def progress(done, total):
        started.set()
        release.wait(30)

    writer = threading.Thread(target=lambda: model.segment(image, tile=64, out=buf, progress=progress))
    writer.start()
    try:
        assert started.wait(30)
        with pytest.raises(unet_rt.InvalidArgumentError,
                           match="invalid image: cannot be read while another call writes into it .*out="):
            model.segment(buf)
        # The same through another base (np.frombuffer): the engine's check
        # follows base chains only, and such an alias was read as written.
        alias = np.frombuffer(buf.data, np.uint8).reshape(buf.shape)
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid image: cannot be read while another call"):
            model.segment(alias)
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid out: another call is writing into it"):
            model.segment(image, out=alias)
        # An out= over the bytes of the image another call reads.
        over_image = np.frombuffer(image.data, np.uint8)[:buf.size].reshape(buf.shape)
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid out: another call is reading it"):
            model.segment(np.zeros_like(image), out=over_image)
    finally:
        release.set()
        writer.join(60)


def _load_in_subprocess(path: Path, *, cli: bool = False, cli_path: Path | None = None) -> subprocess.CompletedProcess:
    """Loads ``path`` in a child process: a regression here is a crash
    (a stack overflow, an abort), which must fail one test, not the run."""
    if cli:
        command = [str(cli_path), "info", str(path)]
    else:
        command = [sys.executable, "-c",
                   "import sys, unet_rt\n"
                   "try:\n    unet_rt.Model(sys.argv[1], device='cpu')\n"
                   "except unet_rt.ModelError as e:\n    print('ModelError:', e)\n",
                   str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("case", ["parentheses", "sum"])
def test_code_nested_beyond_any_networks_is_refused_not_a_stack_overflow(tiny_model_path, tmp_path, cli, case):
    """1,500 nested parentheses (or 20,000 terms of one sum) in a code file
    overflowed the load thread's 2 MiB stack inside libtorch's compiler:
    SIGSEGV in Python, "fatal runtime error: stack overflow" in the CLI."""
    line = "(" * 1500 + "1" + ")" * 1500 if case == "parentheses" else "+".join(["1"] * 20_000)

    def nest(name: str, body: bytes) -> bytes:
        if "/code/" not in name or not name.endswith(".py"):
            return body
        anchor = b"    skips = annotate(List[Tensor], [])\n"
        return body.replace(anchor, anchor + b"    _deep = " + line.encode() + b"\n", 1)

    path = tmp_path / "deep.pt"
    path.write_bytes(_rewrite_archive(tiny_model_path, nest))
    want = "brackets nested 1500 deep" if case == "parentheses" else "a chain of 20000 operators on one line"
    for done in (_load_in_subprocess(path), _load_in_subprocess(path, cli=True, cli_path=cli)):
        assert want in done.stdout + done.stderr, (done.returncode, done.stdout, done.stderr[-2000:])
        assert done.returncode in (0, 2), (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("case", ["nested tuples", "copied string"])
def test_pickles_that_exhausted_the_scanner_are_refused(tiny_model_path, tmp_path, cli, case):
    """60,000 nested tuples overflowed the stack dropping them (SIGSEGV),
    and DUP of a 32 MiB string deep-copied it each time (a 106 KB file
    asked for 12.8 GB and aborted)."""
    if case == "nested tuples":
        pickle, which, want = b"\x80\x02)" + b"\x85" * 60_000 + b".", "/constants.pkl", "nests tuples deeper"
    else:
        pickle = b"\x80\x02X" + (8 << 20).to_bytes(4, "little") + b"a" * (8 << 20) + b"2" * 2000 + b"."
        which, want = "/data.pkl", None

    def replace(name: str, body: bytes) -> bytes:
        return pickle if name.endswith(which) else body

    path = tmp_path / "pickle.pt"
    path.write_bytes(_rewrite_archive(tiny_model_path, replace))
    python, command = _load_in_subprocess(path), _load_in_subprocess(path, cli=True, cli_path=cli)
    # Refused (2000 copies of 8 MiB would be 16 GB: refused by libtorch,
    # whose file this is not, within memory).
    assert python.returncode == 0 and "ModelError" in python.stdout, (python.returncode, python.stderr[-2000:])
    assert command.returncode == 2, (command.returncode, command.stderr[-2000:])
    if want:
        assert want in python.stdout and want in command.stderr, (python.stdout, command.stderr)


def test_a_weight_record_changed_after_saving_is_refused(tiny_model_path):
    """libtorch does not check the zip's CRC-32: four bytes of a weight
    changed loaded and changed 327 labels of the sample image silently."""
    def change(name: str, body: bytes) -> bytes:
        return (b"\x00\x00\x80\x3f" + body[4:]) if name.endswith("/data/0") else body

    damaged = bytearray(_rewrite_archive(tiny_model_path, lambda name, body: body))
    changed = _rewrite_archive(tiny_model_path, change)
    # Same layout, other bytes: put the changed record's bytes under the
    # original entry's CRC-32.
    with zipfile.ZipFile(io.BytesIO(bytes(damaged))) as good, zipfile.ZipFile(io.BytesIO(changed)) as bad:
        entry = next(e for e in good.infolist() if e.filename.endswith("/data/0"))
        start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)
        new = bad.read(entry.filename)
    assert len(new) == entry.file_size
    damaged[start:start + len(new)] = new
    with pytest.raises(unet_rt.ModelError, match=r"its entry \S*data/0 does not match its CRC-32"):
        unet_rt.Model.from_bytes(bytes(damaged), device="cpu")


def test_a_module_whose_buffers_cannot_be_converted_is_refused_not_a_panic(tmp_path):
    """A float64 weight (converted to float32 at load) beside a quantized
    buffer: tch's CModule::to panicked, an InternalError with a Rust
    backtrace."""

    class Quantized(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1).double()
            self.register_buffer("q", torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.double()).float()

    path = tmp_path / "quantized.pt"
    torch.jit.save(torch.jit.script(Quantized().eval()), str(path))
    with pytest.raises(unet_rt.ModelError, match="its tensors cannot be converted to float32: .*quantized") as info:
        unet_rt.Model(path, device="cpu")
    assert "frame #" not in str(info.value) and "Exception raised from" not in str(info.value), info.value


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_a_network_returning_a_compressed_sparse_tensor_is_refused_not_a_panic(tmp_path):
    """A CSR output passed the sparse (COO) check and panicked reading its
    strides: InternalError."""

    class Sparse(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).to_sparse_csr()

    path = tmp_path / "sparse.pt"
    # Probing refuses it in libtorch's words; declared geometry reached the
    # engine.
    meta = {"format": "unet_rt/1", "name": "sparse", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
            "output": "softmax", "padding": "same", "halo": 1, "size_multiple": 1, "size_offset": 0}
    torch.jit.save(torch.jit.script(Sparse().eval()), str(path), _extra_files={"unet_rt.json": json.dumps(meta)})
    with pytest.raises((unet_rt.ModelError, unet_rt.InferenceError), match="non-strided tensor"):
        unet_rt.Model(path, device="cpu").segment(np.zeros((40, 50), np.float32))
    with pytest.raises(unet_rt.ModelError, match="probing it failed in libtorch: .*unsupported tensor layout"):
        torch.jit.save(torch.jit.script(Sparse().eval()), str(path))
        unet_rt.Model(path, device="cpu")


def test_percentiles_between_the_extremes_of_float64_are_finite(model):
    """(b - a) * frac overflowed: a low percentile of +inf, refused by
    percentile_range and used by segment without a word."""
    image = np.full((10, 10), 1.7e308)
    image[0, 0] = -1.7e308
    low, high = model.percentile_range(image)
    assert np.isfinite(low) and np.isfinite(high) and low <= high, (low, high)


def test_ctrl_c_stops_the_percentile_statistics_of_a_huge_image(model):
    """The histogram of a 10^10-pixel view ignored Ctrl-C for 28 s (50
    minutes at 2^20 x 2^20)."""
    import _thread

    image = np.broadcast_to(np.uint16(7), (60_000, 60_000))
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    started = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.percentile_range(image)
    finally:
        timer.cancel()
    # Not a timing test of the statistics: a count that stops at the signal
    # ends well before the whole one (about 10 s here).
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("alias", ["frombuffer", "as_strided", "torch", "memmap"])
def test_an_out_aliasing_the_image_through_another_base_is_refused(model, tmp_path, alias):
    """Only the same base chain was refused: an out= reaching the image's
    memory another way was written while it was read, labels wrong on a
    third of the image without a word."""
    if alias == "memmap":
        image = np.lib.format.open_memmap(tmp_path / "image.npy", mode="w+", dtype=np.uint8, shape=(256, 256))
        image[:] = np.random.default_rng(0).integers(0, 255, image.shape, dtype=np.uint8)
        image.flush()
        out = np.lib.format.open_memmap(tmp_path / "image.npy", mode="r+")
        match = "invalid out: it and the image are memory maps of one file"
    else:
        image = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
        out = {"frombuffer": lambda: np.frombuffer(image.data, np.uint8).reshape(image.shape),
               "as_strided": lambda: np.lib.stride_tricks.as_strided(image, image.shape, image.strides),
               "torch": lambda: torch.from_numpy(image).numpy()}[alias]()
        match = "invalid out: it shares memory with the image"
    before = np.array(image)
    with pytest.raises(unet_rt.InvalidArgumentError, match=match):
        model.segment(image, out=out)
    assert (np.asarray(image) == before).all()
