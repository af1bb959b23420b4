"""Training reads files as the runtime reads them, and labels are checked
for being instance labels (from an audit of training on a user's own
folders: each case here trained quietly on other values than the runtime
later showed the model, or on labels that were no instance labels)."""

from __future__ import annotations

import struct
import subprocess
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

import unet_rt
from tests.fuzz.cli import png_chunk
from training.data import find_pairs, load_folder
from training.files import read_image, read_labels
from training.instance_labels import as_instances


def _png(path, rows: np.ndarray, depth: int, colour: int) -> None:
    """A PNG written by hand (Pillow writes no 16-bit colour)."""
    height, width = rows.shape[:2]
    raw = b"".join(b"\0" + row.astype(">u2" if depth == 16 else np.uint8).tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw))
                     + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_a_min_is_white_image_is_read_as_displayed_and_its_labels_as_stored(tmp_path, dtype):
    stored = (np.random.default_rng(0).random((40, 44)) * (0.9 if dtype == np.float32 else 200)).astype(dtype)
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, stored, photometric="miniswhite")
    top = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    assert np.array_equal(read_image(path), (dtype(top) - stored).astype(dtype))
    assert np.array_equal(read_labels(path), stored)


def test_the_command_line_segments_what_training_read(tiny_model_path, cli, tmp_path):
    # A model trained on MinIsWhite files (read as stored) found nothing in
    # them on the command line (read as displayed): IoU 0.005 against 0.915.
    stored = (np.random.default_rng(1).random((60, 64)) * 250).astype(np.uint8)
    stored[20:40, 20:40] = 10
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, stored, photometric="miniswhite")
    proc = subprocess.run([str(cli), "segment", str(path), "-m", str(tiny_model_path), "-o", str(tmp_path / "out"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from_cli = tifffile.imread(tmp_path / "out" / "white.tif")
    model = unet_rt.Model(tiny_model_path, device="cpu")
    assert np.array_equal(from_cli, model.segment(read_image(path)))
    assert not np.array_equal(from_cli, model.segment(stored))


def test_pngs_read_as_the_runtime_reads_them(tmp_path):
    values = np.arange(0, 60000, 50, dtype=np.uint16).reshape(30, 40)
    grey16 = tmp_path / "grey16.png"
    _png(grey16, values, 16, 0)
    assert np.array_equal(read_image(grey16), values)
    # 16-bit colour: Pillow keeps 8 of its bits (1564 grey levels trained as 8).
    rgb16 = tmp_path / "rgb16.png"
    _png(rgb16, np.stack([values] * 3, axis=-1), 16, 2)
    with pytest.raises(ValueError, match=r"rgb16\.png: a 16-bit RGB PNG, which Pillow .* save it as TIFF"):
        read_image(rgb16)
    with pytest.raises(ValueError, match="16-bit RGB PNG"):
        read_labels(rgb16)
    # A palette image is its colours (Pillow gave the indices); a palette
    # label file keeps its indices (a class mask saved with a palette).
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([255, 255, 255, 128, 128, 128, 0, 0, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png")[..., 0].tolist() == [[255, 128], [0, 128]]
    assert read_labels(tmp_path / "palette.png").tolist() == indices.tolist()
    # 1-bit: white is 255, as libpng (and the runtime) expand it.
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bits.png")
    assert read_image(tmp_path / "bits.png").tolist() == [[255, 0]]


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.tif: cannot be read as TIFF"):
        read_image(tmp_path / "empty.tif")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(ValueError, match=r"cut\.png: cannot be read as PNG"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"text\.png: not a PNG file"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ValueError, match=r"gone\.tif: no such file"):
        read_image(tmp_path / "gone.tif")


def test_macos_resource_forks_beside_the_images_are_not_images(tmp_path):
    imgs, labs = tmp_path / "imgs", tmp_path / "labs"
    imgs.mkdir()
    labs.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(labs / "a.png")
    (imgs / "._a.png").write_bytes(b"\0\5\26\7resource fork")
    assert [i.name for i, _ in find_pairs(imgs, labs)] == ["a.png"]


def test_a_binary_mask_becomes_its_objects_with_a_note(tmp_path, capsys):
    imgs, labs = tmp_path / "imgs", tmp_path / "labs"
    imgs.mkdir()
    labs.mkdir()
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10] = mask[20:30, 5:15] = mask[25:35, 25:35] = 255
    Image.fromarray(mask).save(labs / "cells.png")
    Image.fromarray(mask // 2).save(imgs / "cells.png")
    (sample,) = load_folder(imgs, labs)
    assert sample.labels.max() == 3 and np.array_equal(sample.labels, ndimage.label(mask)[0])
    assert "1 label file(s) hold one value over several objects (binary masks: cells.png)" in capsys.readouterr().err
    # As class masks they stay what they are.
    (sample,) = load_folder(imgs, labs, instances=False)
    assert sample.labels.max() == 255


def test_labels_that_are_no_instance_labels_are_refused():
    image = (np.random.default_rng(2).random((64, 64)) * 255).astype(np.int32)
    with pytest.raises(ValueError, match=r"labels img\.tif: \d+ of its \d+ ids each lie in several separate pieces"):
        as_instances(image, "img.tif")
    classes = np.zeros((30, 30), np.int32)
    classes[2:8, 2:8] = classes[20:28, 20:28] = 1
    classes[2:8, 20:28] = classes[20:28, 2:8] = 2
    with pytest.raises(ValueError, match="--class-masks"):
        as_instances(classes, "classes.png")
    # Instance labels with a stray pixel of one object (annotation noise) are taken.
    objects = np.zeros((30, 30), np.int32)
    objects[2:8, 2:8], objects[20:28, 20:28], objects[2:8, 20:28] = 1, 2, 3
    objects[29, 0] = 1
    labels, binary = as_instances(objects, "objects.png")
    assert labels is objects and not binary


def test_image_files_of_other_types_are_said_to_be_left_out(tmp_path, capsys):
    imgs, labs = tmp_path / "imgs", tmp_path / "labs"
    imgs.mkdir()
    labs.mkdir()
    for folder in (imgs, labs):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "b.jpg")
    assert [i.name for i, _ in find_pairs(imgs, labs)] == ["a.png"]
    assert "1 image file(s) of other types than .tif, .tiff, .png are left out (b.jpg)" in capsys.readouterr().err


def test_a_data_error_is_one_line_without_the_usage(tmp_path, capsys):
    from training.train import main

    imgs, labs = tmp_path / "imgs", tmp_path / "labs"
    imgs.mkdir()
    labs.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(labs / "a.png")
    with pytest.raises(SystemExit) as stop:
        main(["--image-dir", str(imgs), "--label-dir", str(labs), "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "usage:" not in err and "differ in size" in err, err
