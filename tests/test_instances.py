"""Instances users can trust: the model's read-out (seeds grown over a
boundary class, small objects removed, holes filled) is one rule, applied
the same by ``unet_rt.segment``, the CLI and ``unet_rt.dask``; and
``object_size`` segments other magnifications at the training scale."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

import unet_rt
import unet_rt.dask as ud
from unet_rt import _unet_rt
from unet_rt.dask._array import instances as dask_instances
from training.evaluate import error_breakdown

DATA = Path(__file__).resolve().parents[1] / "data" / "dsb2018-nuclei"
HELD_OUT = slice(384, 512)


@pytest.fixture(scope="module")
def model() -> unet_rt.Model:
    return unet_rt.Model(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def sample():
    return tifffile.imread(DATA / "image.tif"), tifffile.imread(DATA / "labels.tif")


def read_out(labels: np.ndarray, rule: dict) -> np.ndarray:
    return _unet_rt.read_out_instances(np.ascontiguousarray(labels), json.dumps(rule))


def test_the_bundled_model_grows_interiors_over_its_boundary_class(model):
    rule = model.read_out()
    assert rule["seed_classes"] == [1] and rule["grow_classes"] == [2] and rule["grow"] >= 1
    assert rule["fill_holes"] and rule["min_size"] > 1
    assert model.info["instances"] == rule
    assert model.info["object_size"] == pytest.approx(23.6, abs=0.5)
    assert model.metadata["class_names"] == ["background", "nucleus", "boundary"]


def test_instances_are_the_read_out_of_the_labels(model, sample):
    image = sample[0][:256, :256]
    labels = model.segment(image)
    assert (model.segment(image, output="instances") == read_out(labels, model.read_out())).all()
    for options in (dict(min_size=0), dict(fill_holes=False), dict(min_size=300, fill_holes=True)):
        got = model.segment(image, output="instances", **options)
        assert (got == read_out(labels, model.read_out(**options))).all(), options
    assert model.segment(image, output="instances", min_size=10**9).max() == 0
    assert unet_rt.segment(image, device="cpu", output="instances", min_size=0).max() >= \
        model.segment(image, output="instances").max()


def test_touching_nuclei_merge_less_than_as_plain_components(model, sample):
    image, truth = sample
    labels = model.segment(image)[HELD_OUT]
    grown = error_breakdown(read_out(labels, model.read_out()), truth[HELD_OUT])
    components = error_breakdown(read_out(labels, {"min_size": model.read_out()["min_size"]}), truth[HELD_OUT])
    assert grown["merged"] < components["merged"], (grown, components)


def test_read_out_arguments_are_checked(model):
    image = np.zeros((64, 64), np.uint8)
    for options, error, needle in [
        (dict(min_size=1.5), TypeError, "min_size must be an int"),
        (dict(min_size="3"), TypeError, "min_size must be an int"),
        (dict(min_size=-1), unet_rt.InvalidArgumentError, "min_size"),
        (dict(fill_holes=1), TypeError, "fill_holes must be a bool"),
        (dict(fill_holes="yes"), TypeError, "fill_holes must be a bool"),
        (dict(object_size="20"), TypeError, "object_size must be a number"),
        (dict(object_size=True), TypeError, "object_size must be a number"),
        # NumPy's bool (type "bool" in NumPy 2) and timedelta convert to floats, and were taken for sizes.
        (dict(object_size=np.bool_(True)), TypeError, "object_size must be a number, got bool"),
        (dict(object_size=np.timedelta64(20)), TypeError, "object_size must be a number, got timedelta64"),
        (dict(object_size=np.array(True)), TypeError, "object_size must be a number"),
    ]:
        with pytest.raises(error, match=needle):
            model.segment(image, output="instances", **options)
    assert model.read_out(fill_holes=np.bool_(False))["fill_holes"] is False
    # Other outputs have no instances: the options were ignored without a word.
    for output in ("labels", "probabilities", "raw"):
        for options in (dict(min_size=3), dict(fill_holes=False), dict(min_size=0, fill_holes=True)):
            argument = next(iter(options))
            with pytest.raises(unet_rt.InvalidArgumentError, match=f"invalid {argument}: it shapes instances, "
                                                                    f"and the output is {output}"):
                model.segment(image, output=output, **options)
    model.segment(image, output="labels", min_size=None, fill_holes=None)
    for text, needle in [("{", "read_out"), ('{"grow": 2, "grow_classes": [2]}', "seed_classes is empty"),
                         ('{"seed_classes": [1], "grow": 100, "grow_classes": [2]}', "grow"),
                         ('{"colour": 1}', "colour")]:
        with pytest.raises(unet_rt.InvalidArgumentError, match=needle):
            _unet_rt.read_out_instances(image, text)
    with pytest.raises(unet_rt.InvalidArgumentError, match="labels"):
        _unet_rt.read_out_instances(image.astype(np.float32), "{}")


def test_instances_of_objects_far_larger_than_the_training_scale(model, sample):
    """The model's growth steps scale with ``object_size``: from about 300
    px they passed the bound a block-wise read-out has (64 steps), and the
    call failed with "invalid read_out: instances.grow is 85", naming an
    argument nobody passed. Objects of any valid size now read out whole."""
    image = sample[0][:96, :96]
    for size in (np.float32(400), 2048):
        labels = model.segment(image, object_size=size)
        found = model.segment(image, output="instances", object_size=size)
        assert found.shape == image.shape and found.dtype == np.uint32
        assert not (found[labels == 0] > 0).any()  # objects lie on the labels' foreground


def test_object_size_resamples_to_the_training_scale_and_back(model, sample, tiny_model_path):
    image = sample[0][:200, :180]
    trained = model.info["object_size"]
    # At the training scale nothing is resampled.
    assert (model.segment(image, object_size=trained) == model.segment(image)).all()
    # Nuclei twice as large: the result is on the image's grid, and read at
    # the model's scale it is the 1x result.
    big = ndimage.zoom(image.astype(np.float32), 2, order=1, mode="mirror", grid_mode=True)
    labels = model.segment(big, object_size=2 * trained)
    assert labels.shape == big.shape and labels.dtype == np.uint8
    at_1x = model.segment(image)
    assert ((labels[::2, ::2] > 0) == (at_1x > 0)).mean() > 0.97  # foreground
    assert (labels[::2, ::2] == at_1x).mean() > 0.93  # classes: the thin boundary band moves most
    found = model.segment(big, output="instances", object_size=2 * trained).max()
    want = model.segment(image, output="instances").max()
    assert abs(int(found) - int(want)) <= max(2, want // 10), (found, want)
    probabilities = model.segment(big, output="probabilities", object_size=2 * trained)
    assert probabilities.shape == (3,) + big.shape and np.allclose(probabilities.sum(0), 1, atol=1e-5)
    # Errors name the argument.
    for bad in (0, -3, float("nan"), float("inf"), 1e9):
        with pytest.raises(unet_rt.InvalidArgumentError, match="object_size"):
            model.segment(image, object_size=bad)
    with pytest.raises(unet_rt.InvalidArgumentError, match="object_size.*window"):
        model.segment(image, object_size=30, window=unet_rt.Window(image=image.shape, start=(0, 0), shape=(50, 50)))
    # Read out over the window alone, an object cut by its edge was its piece (min_size removed it, growth
    # and hole filling differed) and ids were the window's own: not the whole image's result there.
    with pytest.raises(unet_rt.InvalidArgumentError, match="window: instances are read out over the whole image"):
        model.segment(image, output="instances", window=unet_rt.Window(image=image.shape, start=(0, 0), shape=(50, 50)))
    tiny = unet_rt.Model(tiny_model_path, device="cpu")
    with pytest.raises(unet_rt.InvalidArgumentError, match="records no object size"):
        tiny.segment(np.zeros((60, 60), np.float32), object_size=12)


RULES = [
    {},
    {"seed_classes": [1], "grow_classes": [2], "grow": 2},
    {"seed_classes": [1], "grow_classes": [2], "grow": 3, "fill_holes": True, "min_size": 5},
    {"fill_holes": True, "min_size": 3},
    {"seed_classes": [2], "grow_classes": [1], "grow": 1, "fill_holes": True},
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: json.dumps(r, sort_keys=True))
def test_dask_read_out_equals_the_whole_array_on_random_maps(rule):
    rng = np.random.default_rng(len(json.dumps(rule)))
    text = json.dumps(rule)
    for shape, chunks in [((2, 61, 57), (1, 13, 20)), ((1, 40, 40), (1, 7, 40)), ((1, 9, 10, 11), (1, 4, 5, 6))]:
        smooth = ndimage.gaussian_filter(rng.random(shape), (0,) + (1.5,) * (len(shape) - 1))
        for labels in (np.digitize(smooth, [0.47, 0.53]).astype(np.uint8), rng.integers(0, 4, shape).astype(np.uint16)):
            want = np.stack([read_out(image, rule) for image in labels])
            got = dask_instances(da.from_array(labels, chunks=chunks), text).compute(scheduler="sync")
            np.testing.assert_array_equal(got, want)


def test_dask_and_zarr_instances_equal_segment(model, sample, tmp_path):
    image = sample[0][:300, :280]
    x = da.from_array(image, chunks=(70, 90))
    for options in ({}, dict(min_size=0, fill_holes=False)):
        want = model.segment(image, output="instances", **options)
        assert want.max() > 20
        got = ud.segment(x, model, output="instances", **options).compute(scheduler="sync")
        np.testing.assert_array_equal(got, want)
    src = zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(64, 64))
    out = ud.segment_to_zarr(src, tmp_path / "out.zarr", model, output="instances", block=64, progress=False)
    np.testing.assert_array_equal(out[...], model.segment(image, output="instances"))
    # The read-out is part of the job: resuming with another one is refused.
    with pytest.raises(unet_rt.InvalidArgumentError, match="read_out"):
        ud.segment_to_zarr(src, tmp_path / "out.zarr", model, output="instances", block=64, progress=False, min_size=3)
    with pytest.raises(unet_rt.InvalidArgumentError, match="object_size"):
        ud.segment(x, model, output="instances", object_size=30)
    # As in segment: with labels the read-out options would be ignored.
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid min_size: it shapes instances"):
        ud.segment(x, model, output="labels", min_size=3)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid fill_holes: it shapes instances"):
        ud.segment_to_zarr(src, tmp_path / "labels.zarr", model, output="labels", fill_holes=True, progress=False)
    assert not (tmp_path / "labels.zarr").exists()


def test_cli_reads_out_like_the_python_api(model, sample, cli, tmp_path):
    image = sample[0][:160, :150]
    tifffile.imwrite(tmp_path / "img.tif", image)
    common = ["-m", unet_rt.bundled_model_path(), "--device", "cpu", "--precision", "fp32", "-k", "instances",
              "--format", "npy"]

    def segment(*flags: str) -> np.ndarray:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        proc = subprocess.run([str(c) for c in [cli, "segment", tmp_path / "img.tif", "-o", out, *common, *flags]],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return np.load(out / "img.npy")

    assert (segment() == model.segment(image, output="instances")).all()
    assert (segment("--min-size", "0", "--fill-holes", "no") ==
            model.segment(image, output="instances", min_size=0, fill_holes=False)).all()
    size = str(model.info["object_size"] * 1.5)
    assert (segment("--object-size", size) == model.segment(image, output="instances", object_size=float(size))).all()
    bad = subprocess.run([str(cli), "segment", str(tmp_path / "img.tif"), "-o", str(tmp_path / "bad"), "--object-size",
                          "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid --object-size" in bad.stderr
    info = subprocess.run([str(cli), "info"], capture_output=True, text=True, timeout=120)
    assert "grown up to" in info.stdout and "object size" in info.stdout


def test_read_out_and_object_size_in_metadata_are_checked_at_load(tiny_model_path, tmp_path):
    import torch

    extra = {"unet_rt.json": ""}
    module = torch.jit.load(str(tiny_model_path), _extra_files=extra)
    meta = json.loads(extra["unet_rt.json"])
    for field, value, needle in [
        ("instances", {"seed_classes": [5]}, "names class 5"),
        ("instances", {"seed_classes": [1], "grow_classes": [1]}, "both a seed class and a grow class"),
        # An empty seed list makes every class but 0 a seed: said so, not
        # "both a seed class and a grow class" of a class never named a seed.
        ("instances", {"seed_classes": [], "grow_classes": [1]}, "seed_classes is empty, which makes every class"),
        # Seeds of the background made one object of all of it.
        ("instances", {"seed_classes": [0]}, "class 0, the background"),
        ("instances", {"seed_classes": [1], "grow_classes": [0], "grow": 65}, "instances.grow is 65"),
        ("instances", {"colour": 1}, "unknown field `colour`"),
        ("object_size", 0.1, "object_size is 0.1"),
        ("object_size", "x", "expected f64"),
    ]:
        path = tmp_path / f"{field}.pt"
        torch.jit.save(module, str(path), _extra_files={"unet_rt.json": json.dumps({**meta, field: value})})
        with pytest.raises(unet_rt.MetadataError, match=needle):
            unet_rt.Model(path, device="cpu")


def _class_of_the_pixel_model(path: Path, read_out: dict, object_size: float) -> Path:
    """A same-padded network whose label is the pixel's value rounded (0, 1
    or 2), with a read-out and a training object size."""
    import torch

    class Nearest(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -((x - torch.arange(3, dtype=x.dtype).view(1, 3, 1, 1)) ** 2)

    meta = {"format": "unet_rt/1", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "output": "softmax",
            "class_names": ["background", "interior", "boundary"], "padding": "same", "halo": 0,
            "size_multiple": 1, "size_offset": 0, "normalization": {"kind": "none"},
            "instances": read_out, "object_size": object_size}
    torch.jit.save(torch.jit.script(Nearest().eval()), str(path), _extra_files={"unet_rt.json": json.dumps(meta)})
    return path


def test_the_models_min_size_is_scaled_up_and_a_given_one_counts_the_images_pixels(tmp_path):
    """``object_size=5`` on a model trained at 10 segments the image at twice
    its size: the model's ``min_size`` 5 is 1.25 image pixels, so a 1-pixel
    object (4 at the model's scale, under 5) goes and a 2-pixel one (8)
    stays. Rounded to the nearest pixel, the threshold was 1 and kept the
    1-pixel object. A ``min_size`` given counts the image's pixels."""
    model = unet_rt.Model(_class_of_the_pixel_model(
        tmp_path / "nearest.pt", {"seed_classes": [1], "grow_classes": [], "grow": 0, "fill_holes": False,
                                  "min_size": 5}, 10.0), device="cpu")
    image = np.zeros((32, 32), np.float32)
    image[8, 8] = 1            # one pixel
    image[20, 10:12] = 1       # two
    image[4, 20:23] = 1        # three
    labels = model.segment(image, object_size=5)
    assert (labels == image).all(), "the labels come back to the image's grid unchanged"
    found = model.segment(image, output="instances", object_size=5)
    sizes = sorted(np.bincount(found.ravel())[1:].tolist())
    assert sizes == [2, 3], sizes
    # Given, min_size is in the image's pixels: 3 keeps the three-pixel object only.
    found = model.segment(image, output="instances", object_size=5, min_size=3)
    assert sorted(np.bincount(found.ravel())[1:].tolist()) == [3]
    assert model.segment(image, output="instances", object_size=5, min_size=0).max() == 3
