"""OME-Zarr (NGFF): images read at level 0 with their axes, label images
written into or next to them, checked with the NGFF readers and
validators from PyPI (``ome-zarr``, ``ome-zarr-models``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import warnings

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr_models import open_ome_zarr

with warnings.catch_warnings():
    # ome-zarr's writer builds a deprecated default Scaler at import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_image

import unet_rt
import unet_rt.dask as ud
from training.tiny import export_tiny
from unet_rt.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    # Odd width: image pyramids round their level shapes.
    return (rng.random((181, 203)) * 4000).astype(np.uint16)


def _ome_image(path: Path, data: np.ndarray, axes: str, zarr_format: int = 3, levels: int = 3) -> zarr.Group:
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    fmt = {} if zarr_format == 3 else {"fmt": FormatV04()}
    write_image(data, root, axes=axes, scale_factors=tuple(2**k for k in range(1, levels)), **fmt)
    return root


def _validated(path: Path) -> str:
    """The ome-zarr-models class the group validates as (raises when none)."""
    model = open_ome_zarr(zarr.open_group(str(path), mode="r"))
    return f"{type(model).__module__.split('.')[-2]}.{type(model).__name__}"


def _segment(path, destination, model, **kwargs):
    return ud.segment_to_zarr(str(path), str(destination), model, client=False, device="cpu", progress=False,
                              block=64, **kwargs)


@pytest.mark.parametrize("zarr_format,version", [(3, "v05"), (2, "v04")])
def test_labels_into_an_ome_zarr_image_validate_and_read_back(tmp_path, image, tiny_model_path, zarr_format, version):
    src = tmp_path / "image.zarr"
    _ome_image(src, image[None, None], "tcyx", zarr_format)
    out = _segment(src, src, tiny_model_path)
    want = unet_rt.segment(image, tiny_model_path, device="cpu")
    # Level 0 keeps the image's axes but c, and equals the in-memory result.
    assert out.shape == (1,) + image.shape
    np.testing.assert_array_equal(out[0], want)
    # Validators: the image with its labels, the labels group, the label image.
    assert _validated(src) == f"{version}.Image"
    assert _validated(src / "labels") == f"{version}.Labels"
    assert _validated(src / "labels" / "labels") == f"{version}.ImageLabel"
    # A maintained reader finds the label image with its levels and classes.
    nodes = list(Reader(parse_url(str(src / "labels" / "labels")))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    image_shapes = [a.shape for a in (zarr.open_array(str(src / d["path"])) for d in _datasets(src))]
    assert [tuple(d.shape) for d in label.data] == [(s[0],) + tuple(s[2:]) for s in image_shapes]
    np.testing.assert_array_equal(np.asarray(label.data[0])[0], want)
    np.testing.assert_array_equal(np.asarray(label.data[2])[0], want[::4, ::4][: image_shapes[2][2], : image_shapes[2][3]])
    props = label.metadata.get("properties") or {}
    assert {p.get("class") for p in props.values()} >= {"background", "class_1"}
    attrs = dict(zarr.open_group(str(src / "labels" / "labels")).attrs)
    meta = attrs["ome"]["image-label"] if zarr_format == 3 else attrs["image-label"]
    assert meta["source"] == {"image": "../../"}
    assert [c["label-value"] for c in meta["colors"]] == [0, 1] and meta["colors"][0]["rgba"][3] == 0


def _datasets(group_path: Path):
    attrs = dict(zarr.open_group(str(group_path), mode="r").attrs)
    return (attrs.get("ome") or attrs)["multiscales"][0]["datasets"]


def test_instances_beside_labels_in_the_same_image(tmp_path, image, tiny_model_path):
    src = tmp_path / "image.zarr"
    _ome_image(src, image[None, None], "tcyx")
    _segment(src, src, tiny_model_path)
    out = _segment(src, src, tiny_model_path, output="instances", min_size=0)
    want = unet_rt.segment(image, tiny_model_path, device="cpu", output="instances", min_size=0)
    np.testing.assert_array_equal(out[0], want)
    assert dict(zarr.open_group(str(src / "labels")).attrs)["ome"]["labels"] == ["labels", "instances"]
    assert _validated(src) == "v05.Image"
    assert _validated(src / "labels" / "instances") == "v05.ImageLabel"


def test_plain_zarr_to_an_ome_zarr_label_image_with_levels(tmp_path, image, tiny_model_path):
    src = zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(64, 64))
    out = _segment(tmp_path / "in.zarr", tmp_path / "out.zarr", tiny_model_path, ome=True, levels=3)
    want = unet_rt.segment(image, tiny_model_path, device="cpu")
    np.testing.assert_array_equal(out[...], want)
    level = zarr.open_group(str(tmp_path / "out.zarr" / "labels" / "labels"))
    assert [level[str(k)].shape for k in range(3)] == [(181, 203), (91, 102), (46, 51)]
    np.testing.assert_array_equal(level["2"][...], want[::4, ::4])
    scales = [d["coordinateTransformations"][0]["scale"] for d in level.attrs["ome"]["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    assert [a["name"] for a in level.attrs["ome"]["multiscales"][0]["axes"]] == ["y", "x"]
    assert _validated(tmp_path / "out.zarr" / "labels" / "labels") == "v05.ImageLabel"
    assert src.shape == image.shape  # the source is untouched


def test_ome_zarr_stack_of_planes_with_length_one_time(tmp_path, tiny_model_path):
    stack = (np.random.default_rng(3).random((1, 1, 3, 90, 100)) * 255).astype(np.uint8)
    src = tmp_path / "stack.zarr"
    _ome_image(src, stack, "tczyx", levels=2)
    out = _segment(src, src, tiny_model_path)
    assert out.shape == (1, 3, 90, 100)
    np.testing.assert_array_equal(out[0], unet_rt.segment(stack[0, 0], tiny_model_path, device="cpu", axes="zyx"))
    assert _validated(src) == "v05.Image"


def test_resume_skips_finished_work_and_refuses_foreign_labels(tmp_path, image, tiny_model_path):
    src = tmp_path / "image.zarr"
    root = _ome_image(src, image[None, None], "tcyx")
    _segment(src, src, tiny_model_path)
    calls = []
    ud.segment_to_zarr(str(src), str(src), tiny_model_path, client=False, device="cpu", block=64,
                       progress=lambda done, total: calls.append((done, total)))
    assert all(done == total for done, total in calls)  # every block and level was already done
    # A label image another tool wrote (here "instances") is not
    # overwritten unless asked.
    foreign = root.require_group("labels").require_group("instances")
    foreign.create_array("0", shape=(1, 4, 4), dtype=np.uint8)
    with pytest.raises(InvalidArgumentError, match="did not write"):
        _segment(src, src, tiny_model_path, output="instances")
    _segment(src, src, tiny_model_path, output="instances", resume=False)
    assert zarr.open_array(str(src / "labels" / "instances" / "0")).shape == (1,) + image.shape
    assert dict(root["labels"].attrs)["ome"]["labels"] == ["labels", "instances"]


@pytest.mark.parametrize("kwargs,match", [
    ({"output": "probabilities"}, "invalid output"),
    ({"levels": 0}, "invalid levels"),
    ({"axes": "yx"}, "invalid axes"),
])
def test_ome_errors_name_the_argument(tmp_path, image, tiny_model_path, kwargs, match):
    src = tmp_path / "image.zarr"
    _ome_image(src, image[None, None], "tcyx", levels=1)
    with pytest.raises(InvalidArgumentError, match=match):
        _segment(src, tmp_path / "out.zarr", tiny_model_path, **kwargs)


def test_levels_need_ome_output_and_groups_need_multiscales(tmp_path, image, tiny_model_path):
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(64, 64))
    with pytest.raises(InvalidArgumentError, match="invalid levels"):
        _segment(tmp_path / "in.zarr", tmp_path / "out.zarr", tiny_model_path, levels=2)
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", data=image)
    with pytest.raises(InvalidArgumentError, match="without OME-Zarr multiscales"):
        _segment(tmp_path / "plain.zarr", tmp_path / "out2.zarr", tiny_model_path)


def test_levels_beyond_one_pixel_are_refused_naming_the_argument(tmp_path, tiny_model_path):
    # 100 x 60 pixels: levels of 100, 50, 25, 13, 7, 4, 2 and 1 pixels; a
    # ninth would repeat the last (ten identical-looking 1x1 levels before).
    small = np.zeros((100, 60), np.uint8)
    zarr.create_array(str(tmp_path / "in.zarr"), data=small, chunks=(64, 64))
    with pytest.raises(InvalidArgumentError, match=r"invalid levels: 9; an image of 100x60 pixels has 8 distinct"):
        _segment(tmp_path / "in.zarr", tmp_path / "out.zarr", tiny_model_path, ome=True, levels=9)
    assert not (tmp_path / "out.zarr").exists()
    _segment(tmp_path / "in.zarr", tmp_path / "out.zarr", tiny_model_path, ome=True, levels=8)
    assert zarr.open_array(str(tmp_path / "out.zarr" / "labels" / "labels" / "7")).shape == (1, 1)


def test_two_batch_axes_are_refused(tmp_path, tiny_model_path):
    src = tmp_path / "tz.zarr"
    _ome_image(src, np.zeros((2, 1, 3, 64, 64), np.uint8), "tczyx", levels=1)
    with pytest.raises(InvalidArgumentError, match="not both"):
        _segment(src, src, tiny_model_path)


def test_command_line_adds_labels_to_an_ome_zarr_image(tmp_path, image, tiny_model_path):
    import os
    import subprocess
    import sys

    src = tmp_path / "image.zarr"
    _ome_image(src, image[None, None], "tcyx", levels=2)
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "unet_rt.dask", str(src), str(src), "--model", str(tiny_model_path), "--device", "cpu",
         "--block", "64", "--output", "instances", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert run.returncode == 0, run.stderr
    assert "labels/instances/0: shape (1, 181, 203), uint32" in run.stdout
    assert _validated(src) == "v05.Image"


# --- the command line: unet-rt segment --format zarr --------------------------


def _unet_rt(cli, *args):
    import subprocess

    return subprocess.run([str(cli), "segment", *map(str, args), "--quiet"], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kind", ["instances", "labels"])
def test_cli_writes_the_image_and_its_labels_as_ome_zarr(cli, tmp_path, kind):
    import tifffile

    from unet_rt.data import nuclei

    image = nuclei()
    tifffile.imwrite(tmp_path / "cells.tif", image)
    run = _unet_rt(cli, tmp_path / "cells.tif", "-o", tmp_path / "out", "--format", "zarr", "--output-kind", kind,
                   "--device", "cpu")
    assert run.returncode == 0, run.stderr
    store = tmp_path / "out" / "cells.zarr"
    assert _validated(store) == "v05.Image"
    assert _validated(store / "labels") == "v05.Labels"
    assert _validated(store / f"labels/{kind}") == "v05.ImageLabel"
    np.testing.assert_array_equal(zarr.open_array(str(store / "0"))[0], image)
    got = zarr.open_array(str(store / f"labels/{kind}/0"))[...]
    np.testing.assert_array_equal(got, unet_rt.segment(image, device="cpu", output=kind))
    nodes = list(Reader(parse_url(str(store)))())
    assert any(isinstance(s, Label) for n in nodes for s in n.specs)
    if kind == "labels":
        meta = dict(zarr.open_group(str(store / "labels/labels")).attrs)["ome"]["image-label"]
        assert [p["class"] for p in meta["properties"]] == ["background", "nucleus", "boundary"]
    # A second run replaces the store whole.
    again = _unet_rt(cli, tmp_path / "cells.tif", "-o", tmp_path / "out", "--format", "zarr", "--output-kind", kind,
                     "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.zarr"]


def _cli_zarr(cli, tmp_path: Path, name: str, array: np.ndarray, model, axes: str) -> Path:
    """``array`` saved as NPY and segmented by the CLI into a validated OME-Zarr; its path."""
    np.save(tmp_path / f"{name}.npy", array)
    run = _unet_rt(cli, tmp_path / f"{name}.npy", "-o", tmp_path / "out", "--format", "zarr", "-m", model,
                   "--axes", axes, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    store = tmp_path / "out" / f"{name}.zarr"
    assert _validated(store) == "v05.Image"
    return store


def test_cli_zarr_stacks_and_edge_chunks(cli, tmp_path, tiny_model_path):
    """A stack of pages (2-D model) keeps its page axis as z; an image wider
    than a chunk (1024) gets padded edge chunks that read back exactly."""
    stack = (np.random.default_rng(5).random((2, 70, 1100)) * 255).astype(np.uint8)
    store = _cli_zarr(cli, tmp_path, "stack", stack, tiny_model_path, "zyx")
    labels = zarr.open_array(str(store / "labels/labels/0"))
    assert labels.shape == (2, 70, 1100) and labels.chunks == (2, 70, 1024)
    np.testing.assert_array_equal(labels[...], unet_rt.segment(stack, tiny_model_path, device="cpu", axes="zyx"))
    image = zarr.open_array(str(store / "0"))
    assert image.shape == (1, 2, 70, 1100)  # NGFF's order: c, z, y, x
    np.testing.assert_array_equal(image[0], stack)
    axes = dict(zarr.open_group(str(store)).attrs)["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"]


def test_cli_zarr_batch_of_volumes_is_time_not_a_second_z(cli, tmp_path):
    # A 3-D model's batch was named z beside the volumes' own z
    # ("czzyx"): a file unet_rt.dask then refused.
    model = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    batch = (np.random.default_rng(9).random((2, 9, 45, 31)) * 1000).astype(np.uint16)
    store = _cli_zarr(cli, tmp_path, "batch", batch, model, "bzyx")
    axes = dict(zarr.open_group(str(store)).attrs)["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["t", "c", "z", "y", "x"]
    want = unet_rt.segment(batch, model, device="cpu", axes="bzyx")
    np.testing.assert_array_equal(zarr.open_array(str(store / "labels/labels/0"))[...], want)
    again = ud.segment_to_zarr(str(store), str(tmp_path / "again.zarr"), model, client=False, device="cpu",
                               progress=False, ome=False)
    np.testing.assert_array_equal(again[...], want)


def test_cli_zarr_resolution_levels(cli, tmp_path, tiny_model_path):
    image = (np.random.default_rng(8).random((300, 203)) * 255).astype(np.uint8)
    np.save(tmp_path / "a.npy", image)
    run = _unet_rt(cli, tmp_path / "a.npy", "-o", tmp_path / "out", "--format", "zarr", "-m", tiny_model_path,
                   "--levels", "3", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    store = tmp_path / "out" / "a.zarr"
    assert _validated(store) == "v05.Image"  # image and labels have the same levels
    labels = unet_rt.segment(image, tiny_model_path, device="cpu")
    for level, step in enumerate((1, 2, 4)):
        np.testing.assert_array_equal(zarr.open_array(str(store / f"labels/labels/{level}"))[...], labels[::step, ::step])
        np.testing.assert_array_equal(zarr.open_array(str(store / str(level)))[0], image[::step, ::step])
    datasets = dict(zarr.open_group(str(store)).attrs)["ome"]["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[1, 1, 1], [1, 2, 2], [1, 4, 4]]
    usage = _unet_rt(cli, tmp_path / "a.npy", "-o", tmp_path / "out2", "--levels", "2")
    assert usage.returncode == 2 and "--levels applies to --format zarr" in usage.stderr


def test_cli_zarr_levels_beyond_one_pixel_fail_the_image_naming_the_flag(cli, tmp_path, tiny_model_path):
    np.save(tmp_path / "a.npy", np.zeros((100, 60), np.uint8))
    run = _unet_rt(cli, tmp_path / "a.npy", "-o", tmp_path / "out", "--format", "zarr", "-m", tiny_model_path,
                   "--levels", "9", "--device", "cpu")
    assert run.returncode == 1, run.stderr
    assert "--levels 9: an image of 100x60 pixels has 8 distinct resolution level(s)" in run.stderr
    assert not (tmp_path / "out" / "a.zarr").exists()
    run = _unet_rt(cli, tmp_path / "a.npy", "-o", tmp_path / "out", "--format", "zarr", "-m", tiny_model_path,
                   "--levels", "8", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert zarr.open_array(str(tmp_path / "out" / "a.zarr" / "labels" / "labels" / "7")).shape == (1, 1)


def test_cli_zarr_refuses_float_outputs(cli, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    run = _unet_rt(cli, tmp_path / "a.npy", "-o", tmp_path / "out", "--format", "zarr", "--output-kind", "probabilities")
    assert run.returncode == 2 and "--format zarr writes OME-Zarr label images" in run.stderr


def test_a_deleted_level_is_made_again_on_resume(tmp_path, image, tiny_model_path):
    # Its markers stayed: resuming recreated it all zeros, as complete.
    out = tmp_path / "out.zarr"
    _segment(_plain(tmp_path, image), out, tiny_model_path, ome=True, levels=3)
    level = out / "labels" / "labels" / "1"
    want = zarr.open_array(str(level))[...]
    assert want.any()
    shutil.rmtree(level)
    _segment(tmp_path / "in.zarr", out, tiny_model_path, ome=True, levels=3)
    assert np.array_equal(zarr.open_array(str(level))[...], want)


def _plain(tmp_path: Path, image: np.ndarray) -> Path:
    path = tmp_path / "in.zarr"
    zarr.create_array(path, data=image, chunks=(64, 64))
    return path


def test_every_class_has_a_colour_of_its_own_and_every_writer_gives_the_same(cli, tmp_path, image):
    # Class 13 took class 1's colour (12 colours, cycled), and the command line and unet_rt.dask
    # each kept a copy of the palette.
    from training.tiny import export_tiny

    model = export_tiny(tmp_path / "many.pt", classes=20)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(64, 64))
    _segment(tmp_path / "in.zarr", tmp_path / "dask.zarr", model, ome=True)
    store = _cli_zarr(cli, tmp_path, "cli", image, model, "yx")
    colours = []
    for group in (tmp_path / "dask.zarr" / "labels" / "labels", store / "labels" / "labels"):
        meta = dict(zarr.open_group(str(group), mode="r").attrs)["ome"]["image-label"]
        assert [c["label-value"] for c in meta["colors"]] == list(range(20))
        colours.append([tuple(c["rgba"]) for c in meta["colors"]])
    assert colours[0] == colours[1]
    assert colours[0][0] == (0, 0, 0, 0) and len(set(colours[0])) == 20, colours[0]
