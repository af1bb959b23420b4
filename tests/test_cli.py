"""The ``unet-rt`` command-line tool, run as a real program: results equal the
PyTorch whole-image oracle, every input format round-trips, errors give the
documented exit status and leave no stray files, and an interrupted run
leaves only complete results."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

import unet_rt

from training.export import read_metadata
from training.reference import reference_whole

ROOT = Path(__file__).resolve().parents[1]
TILE = "64"  # a valid tile of the tiny model (44 + 4k): several tiles per image


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def no_debris(folder: Path) -> None:
    """No temporaries and no backtraces: what every run must leave behind."""
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left in {folder}: {leftovers}"


def no_panic(proc: subprocess.CompletedProcess) -> None:
    assert "panicked" not in proc.stderr and "RUST_BACKTRACE" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def objects_model(tmp_path_factory) -> Path:
    """A tiny random U-Net whose foreground is a few percent of a noisy
    image, in hundreds of separate pieces (seed 0's covers almost all)."""
    from training.tiny import export_tiny

    return export_tiny(tmp_path_factory.mktemp("objects") / "tiny3.pt", seed=3)


@pytest.fixture(scope="module")
def oracle(tiny_model_path):
    """Probabilities ``(2, *shape)`` of one forward pass over the whole image."""
    net = torch.jit.load(str(tiny_model_path))
    meta = read_metadata(tiny_model_path)

    def probabilities(image: np.ndarray) -> np.ndarray:
        raw = torch.from_numpy(reference_whole(net, image.astype(np.float32), meta))
        return torch.softmax(raw, 0).numpy()

    return probabilities


def assert_labels_match(labels: np.ndarray, probs: np.ndarray) -> None:
    """Labels equal the oracle's argmax wherever the two classes are not tied
    within float rounding."""
    assert labels.shape == probs.shape[1:]
    decided = np.abs(probs[1] - probs[0]) > 1e-4
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(labels[decided], probs.argmax(0)[decided])


def random_image(shape, dtype, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth blobs plus noise: the random network then finds objects of
    # several sizes rather than salt and pepper alone.
    base = ndimage.gaussian_filter(rng.random(shape), 3)
    base = (base - base.min()) / (np.ptp(base) + 1e-9) + 0.2 * rng.random(shape)
    if np.issubdtype(dtype, np.integer):
        return (base / base.max() * np.iinfo(dtype).max).astype(dtype)
    return (base * 1000).astype(dtype)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One folder with an image of each supported kind, and the arrays."""
    folder = tmp_path_factory.mktemp("inputs")
    images = {
        "u8.tif": random_image((70, 90), np.uint8, 1),
        "u16.tif": random_image((61, 47), np.uint16, 2),
        "f32.tif": random_image((50, 66), np.float32, 3),
        "big.tif": random_image((52, 48), np.uint16, 4),
        "gray8.png": random_image((45, 80), np.uint8, 5),
        "gray16.png": random_image((64, 50), np.uint16, 6),
        "array.npy": random_image((58, 44), np.float64, 7),
        # Refused by the reader once, though the Python API takes float16.
        "half.npy": random_image((54, 62), np.float16, 8),
    }
    for name, image in images.items():
        if name == "big.tif":
            tifffile.imwrite(folder / name, image, bigtiff=True)
        elif name.endswith(".tif"):
            tifffile.imwrite(folder / name, image)
        elif name.endswith(".png"):
            Image.fromarray(image).save(folder / name)
        else:
            np.save(folder / name, image)
    with tifffile.TiffFile(folder / "big.tif") as tif:
        assert tif.is_bigtiff
    return folder, images


def test_every_format_gives_the_reference_labels(tiny_model_path, cli, inputs, oracle, tmp_path):
    folder, images = inputs
    out = tmp_path / "labels"
    proc = run([cli, "segment", folder, "-m", tiny_model_path, "-o", out, "--tile", TILE, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    no_panic(proc)
    for name, image in images.items():
        labels = tifffile.imread(out / (Path(name).stem + ".tif"))
        assert labels.dtype == np.uint8, name
        assert_labels_match(labels, oracle(image))
    no_debris(out)


def test_probabilities_equal_the_reference_as_npy_and_float_tiff(tiny_model_path, cli, inputs, oracle, tmp_path):
    folder, images = inputs
    names = ["u16.tif", "gray8.png", "array.npy", "half.npy"]
    for fmt in ("npy", "tif"):
        out = tmp_path / fmt
        cmd = [cli, "segment", *[folder / n for n in names], "-m", tiny_model_path, "-o", out]
        proc = run(cmd + ["--output-kind", "probabilities", "--format", fmt, "--tile", "52x60", "--device", "cpu"])
        assert proc.returncode == 0, proc.stderr
        for name in names:
            path = out / f"{Path(name).stem}.{fmt}"
            got = np.load(path) if fmt == "npy" else tifffile.imread(path)
            want = oracle(images[name])
            assert got.dtype == np.float32 and got.shape == want.shape, (name, got.shape)
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_tta_gives_the_python_apis_augmented_result(tiny_model_path, cli, tmp_path):
    image = random_image((60, 70), np.float32, 21)
    np.save(tmp_path / "img.npy", image)
    model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
    for tta in ("flips", "d4"):
        out = tmp_path / tta
        proc = run([cli, "segment", tmp_path / "img.npy", "-m", tiny_model_path, "-o", out, "-k", "raw", "--format", "npy",
                    "--tile", TILE, "--device", "cpu", "--tta", tta])
        assert proc.returncode == 0, proc.stderr
        want = model.segment(image, output="raw", tile=int(TILE), tta=tta)
        np.testing.assert_array_equal(np.load(out / "img.npy"), want)
    proc = run([cli, "segment", tmp_path / "img.npy", "-m", tiny_model_path, "-o", tmp_path / "bad", "--tta", "rot"])
    assert proc.returncode == 2 and "--tta" in proc.stderr and "d4" in proc.stderr


def test_multipage_tiff_is_a_stack_of_2d_images(tiny_model_path, cli, oracle, tmp_path):
    stack = np.stack([random_image((60, 50), np.uint16, s) for s in (10, 11, 12)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    for kind in ("labels", "probabilities"):
        proc = run([cli, "segment", tmp_path / "stack.tif", "-m", tiny_model_path, "-o", out / kind, "-k", kind, "--tile", TILE])
        assert proc.returncode == 0, proc.stderr
    labels = tifffile.imread(out / "labels" / "stack.tif")
    probs = tifffile.imread(out / "probabilities" / "stack.tif").reshape(3, 2, 60, 50)
    assert labels.shape == (3, 60, 50)
    for page, image in enumerate(stack):
        want = oracle(image)  # each page normalised on its own
        assert_labels_match(labels[page], want)
        np.testing.assert_allclose(probs[page], want, atol=1e-4)


def test_npy_axes(tiny_model_path, cli, oracle, tmp_path):
    image = random_image((48, 56), np.float32, 20)
    np.save(tmp_path / "chw.npy", image[None])
    np.save(tmp_path / "hwc.npy", image[:, :, None])
    out = tmp_path / "out"
    first = run([cli, "segment", tmp_path / "chw.npy", "-m", tiny_model_path, "-o", out, "--format", "npy"])
    second = run([cli, "segment", tmp_path / "hwc.npy", "-m", tiny_model_path, "-o", out, "--format", "npy", "--axes", "yxc"])
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    want = oracle(image)
    assert_labels_match(np.load(out / "chw.npy"), want)
    assert_labels_match(np.load(out / "hwc.npy"), want)


def test_instances_are_scipy_label_of_the_labels(objects_model, cli, tmp_path):
    image = random_image((120, 100), np.uint16, 30)
    stack = np.stack([image, random_image((120, 100), np.uint16, 31)])
    tifffile.imwrite(tmp_path / "one.tif", image)
    tifffile.imwrite(tmp_path / "two.tif", stack, photometric="minisblack")
    inputs = [tmp_path / "one.tif", tmp_path / "two.tif"]
    common = ["-m", objects_model, "--tile", TILE]
    labels_run = run([cli, "segment", *inputs, "-o", tmp_path / "labels", *common])
    inst_run = run([cli, "segment", *inputs, "-o", tmp_path / "inst", "-k", "instances", "--json", *common])
    assert labels_run.returncode == 0 and inst_run.returncode == 0, labels_run.stderr + inst_run.stderr
    reports = [json.loads(line) for line in inst_run.stdout.splitlines()]
    for name, report in zip(["one", "two"], reports):
        labels = tifffile.imread(tmp_path / "labels" / f"{name}.tif")
        got = tifffile.imread(tmp_path / "inst" / f"{name}.tif")
        assert got.dtype == np.uint16
        pages = labels[None] if labels.ndim == 2 else labels
        got_pages = got[None] if got.ndim == 2 else got
        total = 0
        for lab, inst in zip(pages, got_pages):
            want, n = ndimage.label(lab > 0)  # the default structure: face connectivity
            np.testing.assert_array_equal(inst, want)  # bit-identical numbering
            total += n
        assert report["objects"] == total > 1


def test_overlay_and_png_output(objects_model, cli, tmp_path):
    image = random_image((64, 72), np.uint8, 40)
    Image.fromarray(image).save(tmp_path / "cells.png")
    out = tmp_path / "out"
    proc = run([cli, "segment", tmp_path / "cells.png", "-m", objects_model, "-o", out, "--format", "png", "--overlay", "-k", "instances"])
    assert proc.returncode == 0, proc.stderr
    instances = np.asarray(Image.open(out / "cells.png"))
    assert instances.shape == (64, 72) and instances.max() >= 1
    overlay = np.asarray(Image.open(out / "cells_overlay.png"))
    assert overlay.shape == (64, 72, 3) and overlay.dtype == np.uint8
    coloured = (overlay[..., 0] != overlay[..., 1]) | (overlay[..., 1] != overlay[..., 2])
    borders = (instances > 0) & (ndimage.grey_erosion(instances, size=(3, 3)) != instances)
    assert coloured.any() and coloured[instances == 0].sum() == 0 and borders[coloured].all()
    no_debris(out)


def test_runtime_errors_name_the_file_and_spare_the_others(tiny_model_path, cli, tmp_path):
    good = random_image((50, 50), np.uint16, 50)
    tifffile.imwrite(tmp_path / "good.tif", good)
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(200))
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "rgb.png")  # 3 channels, model takes 1
    np.save(tmp_path / "cube.npy", np.zeros((4, 50, 50), np.float32))  # ambiguous without --axes
    out = tmp_path / "out"
    names = ["missing.tif", "corrupt.tif", "rgb.png", "cube.npy", "good.tif"]
    proc = run([cli, "segment", *[tmp_path / n for n in names], "-m", tiny_model_path, "-o", out, "--json"])
    assert proc.returncode == 1, proc.stderr
    no_panic(proc)
    reports = {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(reports) == set(names)
    for name in names[:-1]:
        assert reports[name]["status"] == "failed" and reports[name]["error"], reports[name]
        assert f"{name}:" in proc.stderr, proc.stderr
        assert not (out / (Path(name).stem + ".tif")).exists()
    assert "no such file" in reports["missing.tif"]["error"]
    assert "TIFF" in reports["corrupt.tif"]["error"]
    assert "1 input channel" in reports["rgb.png"]["error"]
    assert "--axes" in reports["cube.npy"]["error"]
    assert reports["good.tif"]["status"] == "ok" and reports["good.tif"]["shape"] == [50, 50]
    assert tifffile.imread(out / "good.tif").shape == (50, 50)
    assert sorted(p.name for p in out.iterdir()) == ["good.tif"]


def test_usage_errors_exit_2_before_writing_anything(tiny_model_path, cli, tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((50, 50), np.uint8))
    (tmp_path / "a_file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    img, model = tmp_path / "img.tif", tiny_model_path
    cases = {
        "output folder": [img, "-m", model, "-o", tmp_path / "a_file" / "out"],
        "device": [img, "-m", model, "-o", tmp_path / "o1", "--device", "tpu"],
        "precision": [img, "-m", model, "-o", tmp_path / "o2", "--precision", "int4"],
        "tile": [img, "-m", model, "-o", tmp_path / "o3", "--tile", "45"],
        "PNG cannot hold": [img, "-m", model, "-o", tmp_path / "o4", "-k", "probabilities", "--format", "png"],
        "model file not found": [img, "-m", tmp_path / "nope.pt", "-o", tmp_path / "o5"],
        "--output-kind": [img, "-m", model, "-o", tmp_path / "o6", "--output-kind", "blobs"],
        # Said "cannot create the output folder ...: File exists".
        "is a file: -o names the folder": [img, "-m", model, "-o", tmp_path / "a_file"],
        # Said "cannot create the output folder dangling: File exists" too.
        "is a symbolic link to": [img, "-m", model, "-o", tmp_path / "dangling"],
    }
    for needle, args in cases.items():
        proc = run([cli, "segment", *args])
        assert proc.returncode == 2, (needle, proc.stderr)
        assert needle in proc.stderr, (needle, proc.stderr)
        no_panic(proc)
    assert "a_file" in run([cli, "segment", *cases["output folder"]]).stderr
    assert not any((tmp_path / f"o{i}").exists() and any((tmp_path / f"o{i}").iterdir()) for i in range(1, 7))


def test_skip_existing_resumes_a_folder(tiny_model_path, cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"img{i}.tif", random_image((50, 50), np.uint8, 60 + i))
    out = tmp_path / "out"
    first = run([cli, "segment", src, "-m", tiny_model_path, "-o", out, "--json"])
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["status"] for line in first.stdout.splitlines()] == ["ok"] * 3
    (out / "img1.tif").unlink()
    before = (out / "img0.tif").stat().st_mtime_ns
    again = run([cli, "segment", src, "-m", tiny_model_path, "-o", out, "--json", "--skip-existing"])
    assert again.returncode == 0, again.stderr
    statuses = {Path(r["input"]).name: r["status"] for r in map(json.loads, again.stdout.splitlines())}
    assert statuses == {"img0.tif": "skipped", "img1.tif": "ok", "img2.tif": "skipped"}
    assert (out / "img0.tif").stat().st_mtime_ns == before
    assert (out / "img1.tif").exists()
    # An overlay asked for now is part of the result: the earlier run wrote
    # none, and resuming skipped every input all the same.
    again = run([cli, "segment", src, "-m", tiny_model_path, "-o", out, "--json", "--skip-existing", "--overlay"])
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in map(json.loads, again.stdout.splitlines())} == {"ok"}
    again = run([cli, "segment", src, "-m", tiny_model_path, "-o", out, "--json", "--skip-existing", "--overlay"])
    assert {r["status"] for r in map(json.loads, again.stdout.splitlines())} == {"skipped"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"img{i}{s}" for i in range(3) for s in (".tif", "_overlay.png"))
    # A result cut short (a copy, a full disk) is redone: it was taken as done by its header, left
    # unreadable. A stack's TIFF loses its last page.
    tifffile.imwrite(src / "stack.tif", random_image((3, 50, 50), np.uint8, 70), photometric="minisblack")
    for fmt, name in (("npy", "img0"), ("png", "img0"), ("tif", "stack")):
        first = run([cli, "segment", src / f"{name}.tif", "-m", tiny_model_path, "-o", tmp_path / fmt, "-f", fmt,
                     "-q"])
        assert first.returncode == 0, first.stderr
        result = tmp_path / fmt / f"{name}.{fmt}"
        whole = result.read_bytes()
        for cut in (100, 20):
            result.write_bytes(whole[:-cut])
            again = run([cli, "segment", src / f"{name}.tif", "-m", tiny_model_path, "-o", tmp_path / fmt, "-f",
                         fmt, "--json", "--skip-existing"])
            assert json.loads(again.stdout)["status"] == "ok" and result.read_bytes() == whole, (fmt, cut, again.stdout)


def test_a_run_over_several_inputs_closes_with_its_totals(tiny_model_path, cli, tmp_path):
    # Dozens of lines were to be counted to know how a folder went (from an audit).
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"img{i}.tif", random_image((50, 50), np.uint8, 60 + i))
    (src / "broken.tif").write_bytes(b"II*\x00")
    out = tmp_path / "out"
    first = run([cli, "segment", src, "-m", tiny_model_path, "-o", out])
    assert first.returncode == 1 and first.stdout.splitlines()[-1] == "3 inputs: 2 written, 1 failed (errors above)"
    again = run([cli, "segment", src, "-m", tiny_model_path, "-o", out, "--skip-existing"])
    assert again.stdout.splitlines()[-1] == "3 inputs: 0 written, 2 skipped, 1 failed (errors above)", again.stdout
    one = run([cli, "segment", src / "img0.tif", "-m", tiny_model_path, "-o", out])
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 1 and "inputs:" not in one.stdout
    for flag in ("--json", "-q"):
        proc = run([cli, "segment", src, "-m", tiny_model_path, "-o", out, flag])
        assert "inputs:" not in proc.stdout, (flag, proc.stdout)


@pytest.mark.parametrize("fmt", ["tif", "png", "zarr"])
def test_skip_existing_does_not_take_another_inputs_result_for_done(tiny_model_path, cli, tmp_path, fmt):
    """From an audit: `a.tif` segmented alone, then its folder resumed, and
    `a.npy` (the first of the names that share the result `a.tif`) was
    skipped: its result held `a.tif`'s labels. Results record their input's
    name (TIFF DocumentName, a PNG text chunk, the store's mark)."""
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", random_image((50, 50), np.uint8, 61))
    np.save(src / "a.npy", random_image((50, 50), np.uint8, 62))
    tifffile.imwrite(src / "é b%.tif", random_image((50, 50), np.uint8, 63))
    out = tmp_path / "out"

    def segment(*inputs) -> dict:
        proc = run([cli, "segment", *inputs, "-m", tiny_model_path, "-o", out, "--json", "--skip-existing",
                    "--format", fmt])
        return {Path(r["input"]).name: r["status"] for r in map(json.loads, proc.stdout.splitlines())}

    assert segment(src / "a.tif", src / "é b%.tif") == {"a.tif": "ok", "é b%.tif": "ok"}
    assert segment(src / "a.tif", src / "é b%.tif") == {"a.tif": "skipped", "é b%.tif": "skipped"}
    # The folder: a.npy comes first and is segmented over a.tif's result; a.tif is refused (the clash).
    assert segment(src) == {"a.npy": "ok", "a.tif": "failed", "é b%.tif": "skipped"}
    want = unet_rt.segment(np.load(src / "a.npy"), tiny_model_path, device="cpu")
    if fmt == "zarr":
        import zarr

        got = zarr.open_group(out / "a.zarr", mode="r")["labels/labels/0"][:]
    elif fmt == "png":
        got = np.asarray(Image.open(out / "a.png"))
    else:
        got = tifffile.imread(out / "a.tif")
    np.testing.assert_array_equal(got, want)
    assert segment(src / "a.npy") == {"a.npy": "skipped"}
    if fmt == "tif":
        with tifffile.TiffFile(out / "a.tif") as tif:
            assert tif.pages[0].tags["DocumentName"].value == "a.npy"
        with tifffile.TiffFile(out / "é b%.tif") as tif:  # TIFF text is ASCII: percent-encoded
            assert tif.pages[0].tags["DocumentName"].value == "%C3%A9 b%25.tif"
    elif fmt == "png":
        with Image.open(out / "a.png") as png:
            assert png.text["unet-rt input"] == "a.npy"


@pytest.mark.parametrize("fmt", ["tif", "npy", "png"])
def test_skip_existing_does_not_take_another_output_kind_for_done(tiny_model_path, cli, tmp_path, fmt):
    """A result's name depends on the input and the format only: instances
    written before counted as this run's labels, and were kept."""
    tifffile.imwrite(tmp_path / "img.tif", random_image((50, 50), np.uint8, 61))
    out = tmp_path / "out"

    def segment(kind: str) -> str:
        proc = run([cli, "segment", tmp_path / "img.tif", "-m", tiny_model_path, "-o", out, "--json",
                    "--skip-existing", "-k", kind, "--format", fmt])
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["status"]

    def stored() -> str:
        path = out / f"img.{fmt}"
        if fmt == "png":
            with Image.open(path) as png:
                return {"I;16": "uint16", "L": "uint8"}.get(png.mode, png.mode)
        return str((np.load(path) if fmt == "npy" else tifffile.imread(path)).dtype)

    assert segment("instances") == "ok" and stored() == "uint16"
    assert segment("instances") == "skipped"
    assert segment("labels") == "ok" and stored() == "uint8"
    assert segment("labels") == "skipped"
    if fmt != "png":  # PNG holds no float output
        assert segment("probabilities") == "ok" and stored() == "float32"
        assert segment("raw") == "skipped"  # the same element and layout: not told apart


def test_glob_patterns_expand_without_a_shell(tiny_model_path, cli, tmp_path):
    for name in ("a.tif", "b.tif", "c.png"):
        (tmp_path / name).write_bytes(b"")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((44, 44), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((44, 44), np.uint8))
    proc = run([cli, "segment", str(tmp_path / "*.tif"), "-m", tiny_model_path, "-o", tmp_path / "out", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert [Path(json.loads(line)["input"]).name for line in proc.stdout.splitlines()] == ["a.tif", "b.tif"]


@pytest.mark.slow
def test_interrupt_leaves_only_complete_results(tiny_model_path, cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        tifffile.imwrite(src / f"img{i}.tif", random_image((400, 400), np.uint16, 70 + i))
    out = tmp_path / "out"
    # The smallest tile makes each image take a while: 2,500 tiles, about a
    # second, so the signal comes while the second image is processed.
    cmd = [cli, "segment", src, "-m", tiny_model_path, "-o", out, "--tile", "48", "--batch-size", "4", "--threads", "1",
           "--json"]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and any(p.suffix == ".tif" for p in out.iterdir())):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "panicked" not in stderr
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < 6, done
    # Every input has its --json line, those never started too (they had none).
    statuses = [json.loads(line)["status"] for line in stdout.splitlines()]
    assert statuses == ["ok"] * len(done) + ["cancelled"] * (6 - len(done)), statuses
    for name in done:
        assert name.endswith(".tif"), f"stray file {name}"
        assert tifffile.imread(out / name).shape == (400, 400)
    no_debris(out)


def test_a_run_clears_what_a_killed_run_left(tiny_model_path, cli, tmp_path):
    """A run killed outright (SIGKILL, the kernel's out-of-memory killer)
    left its temporaries, a whole `.zarr` store of chunks at times, in the
    output folder for good; the next run there removes them (their process
    is gone and their lock is free), and puts back a previous result that
    was moved aside, with a note on stderr."""
    tifffile.imwrite(tmp_path / "a.tif", random_image((64, 64), np.uint8, 5))
    out = tmp_path / "out"
    out.mkdir()
    killed = subprocess.Popen(["sleep", "60"])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    pid = killed.pid
    (out / f".a.tif.{pid}.partial").write_bytes(b"half a tiff")
    for store in (f".b.zarr.{pid}.partial", f".c.zarr.{pid}.old"):
        (out / store / "0").mkdir(parents=True)
        (out / store / "zarr.json").write_text("{}")
        (out / store / "0" / "c").write_bytes(b"chunk")
    live = out / f".d.tif.{os.getpid()}.partial"  # this test's own process is running
    live.write_bytes(b"")
    proc = run([cli, "segment", tmp_path / "a.tif", "-m", tiny_model_path, "-o", out, "--tile", TILE])
    assert proc.returncode == 0, proc.stderr
    assert f"removed 2 unfinished file(s) that runs killed before they ended left in {out}: " \
        f".a.tif.{pid}.partial, .b.zarr.{pid}.partial" in proc.stderr, proc.stderr
    assert f"put back 1 previous result(s) in {out} that a killed run had moved aside: c.zarr" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.tif", "c.zarr", live.name])
    assert (out / "c.zarr" / "0" / "c").read_bytes() == b"chunk"
    live.unlink()
    no_debris(out)
    quiet = run([cli, "segment", tmp_path / "a.tif", "-m", tiny_model_path, "-o", out, "--tile", TILE, "-q"])
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_info_describes_the_model(tiny_model_path, cli):
    text = run([cli, "info", tiny_model_path])
    assert text.returncode == 0, text.stderr
    for needle in ("tiny-random", "44 + 4k", "20 px per side", "percentiles 1", "from the model's metadata", "seed: 0"):
        assert needle in text.stdout, (needle, text.stdout)
    data = json.loads(run([cli, "info", tiny_model_path, "--json"]).stdout)
    assert (data["halo"], data["size_offset"], data["size_multiple"], data["smallest_size"]) == (20, 0, 4, 44)
    assert data["smallest_tile"] == 44 and "in tiles (--tile) from 44 up" in text.stdout
    assert data["normalization"] == {"kind": "percentile", "low": 1.0, "high": 99.8}
    assert data["probed"] is False and data["training"]["trained"] is False


def test_info_json_and_the_python_model_info_agree(tiny_model_path, cli, tmp_path):
    """One description, two doors: the command line's `smallest_input` was
    the Python API's `smallest_size`, and a model without class names had
    none on one side and their indices on the other."""
    plain = tmp_path / "plain.pt"
    torch.jit.script(torch.nn.Conv2d(1, 2, 3, padding=1).eval()).save(str(plain))
    for path in (tiny_model_path, plain):
        model = unet_rt.Model(path, device="cpu")
        proc = run([cli, "info", path, "--json"])
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert {k: data[k] for k in model.info} == model.info
        assert data["class_names"] == model.classes
    assert data["class_names"] == ["0", "1"] and data["probed"] is True
    # The text leaves out the indices-for-names row.
    assert "\nclasses" not in run([cli, "info", plain]).stdout


def test_another_libtorch_on_ld_library_path_does_not_replace_the_built_one(cli, clean_env, tmp_path):
    """A user's LD_LIBRARY_PATH naming another libtorch (here: empty files
    of its names) came before the CLI's run path, and it failed to start
    with a loader error; its own libtorch is now looked up first."""
    for name in ("libtorch_cpu.so", "libtorch.so", "libc10.so"):
        (tmp_path / name).write_bytes(b"")
    proc = run([cli, "--version"], env=dict(clean_env, LD_LIBRARY_PATH=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("unet-rt ")


def test_info_without_a_model_describes_the_bundled_one(cli):
    bundled = "bundled model: yes" in run([cli, "--version"]).stdout
    proc = run([cli, "info"])
    no_panic(proc)
    if bundled:
        assert proc.returncode == 0 and "bundled:nuclei.pt" in proc.stdout
        # Sizes from 92 were listed, and --tile 92 refused "from 100 up": the smallest tile is said too.
        data = json.loads(run([cli, "info", "--json"]).stdout)
        assert (data["smallest_size"], data["smallest_tile"]) == (92, 100)
        assert "in tiles (--tile) from 100 up" in proc.stdout
    else:
        assert proc.returncode == 2 and "no bundled model" in proc.stderr and "--model" in proc.stderr


def test_bench_prints_a_table_and_json(tiny_model_path, cli):
    table = run([cli, "bench", "-m", tiny_model_path, "--size", "128", "--repeats", "2", "--device", "cpu"])
    assert table.returncode == 0, table.stderr
    assert "Mpx/s" in table.stdout and "median" in table.stdout and "128x128" in table.stdout
    data = json.loads(run([cli, "bench", "-m", tiny_model_path, "--size", "96x128", "--repeats", "1", "--tile", TILE, "--json"]).stdout)
    assert data["size"] == [96, 128] and data["tile"] == [64, 64] and len(data["seconds"]) == 1
    assert data["tiles"] >= 4 and data["megapixels_per_second"] > 0 and data["conversion"] == "auto"
    device = run([cli, "bench", "-m", tiny_model_path, "--size", "96", "--repeats", "1", "--conversion", "device",
                  "--json"])
    assert device.returncode == 0, device.stderr
    assert json.loads(device.stdout)["conversion"] == "device"
    assert run([cli, "bench", "-m", tiny_model_path, "--conversion", "gpu"]).returncode == 2


def test_help_has_examples(cli):
    proc = run([cli, "segment", "--help"])
    assert proc.returncode == 0 and "Examples:" in proc.stdout and "--skip-existing" in proc.stdout
    assert "stack of 2-D images" in proc.stdout  # what a multi-page TIFF is for a 2-D model
    assert run([cli, "segment", "--no-such-flag"]).returncode == 2


def test_a_transparent_colour_is_not_a_channel(tiny_model_path, cli, tmp_path):
    """A gray (or RGB) PNG with a tRNS chunk was refused as an image of 2
    channels: the decoder made an alpha channel of its transparent colour.
    PIL and imageio read its values."""
    image = (np.random.default_rng(5).random((40, 44)) * 255).astype(np.uint8)
    for mode, values in [("L", image), ("I;16", image.astype(np.uint16) * 200)]:
        path = tmp_path / f"trns_{mode[0]}.png"
        Image.fromarray(values).save(path, transparency=int(values[0, 0]))
        with Image.open(path) as written:
            assert "transparency" in written.info
        proc = run([cli, "segment", path, "-o", tmp_path / "out", "-m", tiny_model_path, "--device", "cpu", "-q",
                    "-f", "npy", "-k", "raw"])
        assert proc.returncode == 0, proc.stderr
        want = unet_rt.segment(values, tiny_model_path, device="cpu", output="raw")
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{path.stem}.npy"), want)


def test_min_is_white_tiffs_are_read_as_displayed(tiny_model_path, cli, tmp_path):
    # What the help says: inverted, as a viewer shows them (tifffile.imread
    # returns the stored values).
    stored = random_image((60, 70), np.uint8, 31)
    tifffile.imwrite(tmp_path / "white.tif", stored, photometric="miniswhite")
    tifffile.imwrite(tmp_path / "black.tif", 255 - stored, photometric="minisblack")
    out = tmp_path / "out"
    proc = run([cli, "segment", tmp_path / "white.tif", tmp_path / "black.tif", "-m", tiny_model_path, "-o", out,
                "-k", "probabilities", "-f", "npy", "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out / "white.npy"), np.load(out / "black.npy"))


def test_a_single_plane_is_a_volume_of_one_plane_for_a_3d_model(cli, tmp_path):
    # A one-page TIFF read as yx was refused by a 3-D model, whose advice
    # (zyx) --axes then refused too: "names 3 axes, the image has 2".
    from training.tiny import export_tiny

    model = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    plane = (np.random.default_rng(7).random((40, 52)) * 255).astype(np.uint8)
    want = unet_rt.segment(plane[None], model, device="cpu", axes="zyx")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "plane.tif", plane)
    np.save(tmp_path / "in" / "plane.npy", plane)
    proc = run([cli, "segment", tmp_path / "in" / "plane.tif", "-o", tmp_path / "out", "-m", model, "--device", "cpu",
                "-f", "npy", "-q"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "plane.npy"), want)
    # An NPY names no axes: refused with the advice, which then works.
    proc = run([cli, "segment", tmp_path / "in" / "plane.npy", "-o", tmp_path / "out2", "-m", model, "--device", "cpu",
                "-f", "npy", "-q"])
    assert proc.returncode == 1 and "--axes zyx on the command line reads a plane so" in proc.stderr, proc.stderr
    proc = run([cli, "segment", tmp_path / "in" / "plane.npy", "-o", tmp_path / "out2", "-m", model, "--device", "cpu",
                "-f", "npy", "-q", "--axes", "zyx"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out2" / "plane.npy"), want)
    # Python is told how (image[None]).
    with pytest.raises(unet_rt.InvalidArgumentError, match=r"image\[None\] in Python"):
        unet_rt.segment(plane, model, device="cpu")
    # tifffile's shape of a one-plane volume, (1, y, x), is read as it.
    tifffile.imwrite(tmp_path / "in" / "volume.tif", plane[None])
    proc = run([cli, "segment", tmp_path / "in" / "volume.tif", "-o", tmp_path / "out3", "-m", model, "--device",
                "cpu", "-f", "npy", "-q"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out3" / "volume.npy"), want)


def test_imagej_and_ome_time_series_are_a_batch_of_volumes_for_a_3d_model(cli, tmp_path):
    # ImageJ's and OME's frames were read as slices: two time points of four slices reached a
    # 3-D model as one volume of eight (the convolutions mixed them), and a series of 2-D frames
    # as a volume, where tifffile's own TYX was refused.
    from training.tiny import export_tiny

    model = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    series = (np.random.default_rng(11).random((2, 4, 24, 30)) * 255).astype(np.uint8)
    want = unet_rt.segment(series, model, device="cpu", axes="bzyx", output="raw")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "plain.tif", series, photometric="minisblack", metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "in" / "imagej.tif", series, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "in" / "ome.tif", series, ome=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "in" / "zt.ome.tif", np.swapaxes(series, 0, 1), ome=True, metadata={"axes": "ZTYX"})
    out = tmp_path / "out"
    proc = run([cli, "segment", *sorted((tmp_path / "in").iterdir()), "-o", out, "-m", model, "--device", "cpu",
                "-f", "npy", "-q", "-k", "raw"])
    assert proc.returncode == 0, proc.stderr
    for name in ("plain", "imagej", "ome", "zt.ome"):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), want, err_msg=name)
    # Frames of 2-D images are no volume: refused naming the file's axes and the way out.
    frames = tmp_path / "frames"
    frames.mkdir()
    tifffile.imwrite(frames / "tyx.tif", series[:, 0], imagej=True, metadata={"axes": "TYX"})
    proc = run([cli, "segment", frames / "tyx.tif", "-o", tmp_path / "out2", "-m", model, "--device", "cpu", "-q"])
    assert proc.returncode == 1 and "time points of 2-D images (axes TYX)" in proc.stderr, proc.stderr
    assert "--axes zyx" in proc.stderr, proc.stderr


def test_results_carry_the_physical_pixel_size_of_a_tiff(cli, tmp_path):
    # Results said 1 pixel per unit and OME-Zarr scales of 1: measured in pixels, and an
    # anisotropic volume's labels showed squashed beside the image at its true scale.
    import zarr
    from ome_zarr_models import open_ome_zarr
    from training.tiny import export_tiny

    model = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    volume = (np.random.default_rng(5).random((6, 40, 48)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "imagej.tif", volume, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    tifffile.imwrite(tmp_path / "in" / "ome.tif", volume, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 2.0})
    tifffile.imwrite(tmp_path / "in" / "plain.tif", volume, photometric="minisblack", metadata={"axes": "ZYX"})
    for fmt in ("zarr", "tif"):
        levels = ["--levels", "2"] if fmt == "zarr" else []
        proc = run([cli, "segment", tmp_path / "in", "-o", tmp_path / fmt, "-m", model, "--device", "cpu", "-q",
                    "-f", fmt, *levels])
        assert proc.returncode == 0, proc.stderr
    for name in ("imagej", "ome"):
        group = zarr.open_group(str(tmp_path / "zarr" / f"{name}.zarr"), mode="r")
        for node, unit_axes in ((group, ["c", "z", "y", "x"]), (group["labels/labels"], ["z", "y", "x"])):
            multiscales = node.attrs["ome"]["multiscales"][0]
            assert [a["name"] for a in multiscales["axes"]] == unit_axes
            assert [a.get("unit") for a in multiscales["axes"] if a["name"] != "c"] == ["micrometer"] * 3
            scales = [d["coordinateTransformations"][0]["scale"][-3:] for d in multiscales["datasets"]]
            assert scales == [[2.0, 0.25, 0.25], [4.0, 0.5, 0.5]], (name, scales)  # a 3-D model halves z too
        open_ome_zarr(group)  # validates
        with tifffile.TiffFile(tmp_path / "tif" / f"{name}.tif") as tif:
            page = tif.pages[0]
            assert page.tags["ResolutionUnit"].value == 3 and page.resolution == (40000.0, 40000.0), page.resolution
    # A file that says nothing gives results that say nothing.
    plain = zarr.open_group(str(tmp_path / "zarr" / "plain.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert plain["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0, 1.0]
    assert all("unit" not in a for a in plain["axes"])


def test_png_results_and_overlays_carry_the_pixel_size(cli, tmp_path):
    # PNG results (and overlays) said nothing of the pixel size, and a PNG's pHYs was not read: its
    # TIFF and OME-Zarr results were measured in pixels.
    rng = np.random.default_rng(8)
    image = (rng.random((64, 80)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png", dpi=(25.4 / 0.0005, 25.4 / 0.0005))  # 0.5 um pixels
    tifffile.imwrite(tmp_path / "in" / "b.tif", image, resolution=(20000.0, 40000.0), resolutionunit=3)
    Image.fromarray(image).save(tmp_path / "in" / "c.png")
    for fmt in ("png", "tif"):
        proc = run([cli, "segment", tmp_path / "in", "-o", tmp_path / fmt, "-f", fmt, "--device", "cpu", "-q",
                    "--overlay"])
        assert proc.returncode == 0, proc.stderr
    per_metre = {"a": (2_000_000, 2_000_000), "b": (2_000_000, 4_000_000)}
    for stem, (x, y) in per_metre.items():
        for path in (tmp_path / "png" / f"{stem}.png", tmp_path / "png" / f"{stem}_overlay.png"):
            with Image.open(path) as png:
                png.load()
                assert png.info.get("dpi") is not None, path
                assert np.allclose(png.info["dpi"], (x * 0.0254, y * 0.0254)), (path, png.info["dpi"])
    with tifffile.TiffFile(tmp_path / "tif" / "a.tif") as tif:
        page = tif.pages[0]
        assert page.tags["ResolutionUnit"].value == 3 and page.resolution == (20000.0, 20000.0), page.resolution
    # A file that says nothing gives results that say nothing.
    with Image.open(tmp_path / "png" / "c.png") as png:
        png.load()
        assert "dpi" not in png.info


def test_results_of_ome_tiffs_are_ome_tiffs(cli, tmp_path):
    # x.ome.tif's result is named x.ome.tif: it held no OME-XML, which readers that go by the name
    # (Bio-Formats) expect, and a stack's pages were flat. Now its axes, classes (as channels) and
    # pixel size are there, and tifffile reads it as an OME series.
    import xml.etree.ElementTree as ET

    rng = np.random.default_rng(12)
    image = (rng.random((64, 80)) * 255).astype(np.uint8)
    stack = (rng.random((3, 64, 80)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.ome.tif", image, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    tifffile.imwrite(tmp_path / "in" / "s.ome.tif", stack, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})
    tifffile.imwrite(tmp_path / "in" / "plain.tif", image)
    classes = ["background", "nucleus", "boundary"]
    cases = [("labels", "a", "YX", image), ("labels", "s", "ZYX", stack), ("probabilities", "a", "CYX", image),
             ("probabilities", "s", "ZCYX", stack)]
    for kind in ("labels", "probabilities"):
        proc = run([cli, "segment", tmp_path / "in", "-o", tmp_path / kind, "-k", kind, "--device", "cpu", "-q"])
        assert proc.returncode == 0, proc.stderr
        with tifffile.TiffFile(tmp_path / kind / "plain.tif") as tif:
            assert not tif.is_ome
    for kind, name, axes, source in cases:
        with tifffile.TiffFile(tmp_path / kind / f"{name}.ome.tif") as tif:
            assert tif.is_ome and tif.series[0].axes == axes, (kind, name, tif.series[0].axes)
            got = tif.series[0].asarray()
            ET.fromstring(tif.ome_metadata)  # well-formed
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        want = unet_rt.segment(source, device="cpu", output=kind, axes="zyx" if source.ndim == 3 else "yx")
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} {name}")
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeY"]) == (0.5, 0.5)
        assert pixels.get("PhysicalSizeZ") == (2.0 if name == "s" else None)
        channels = pixels["Channel"] if isinstance(pixels["Channel"], list) else [pixels["Channel"]]
        assert [c.get("Name") for c in channels] == (classes if kind == "probabilities" else [None])


def test_tiff_results_read_back_in_their_shape_and_axes(cli, tiny_model_path, tmp_path):
    # A volume's probabilities were classes x z flat pages: tifffile.imread
    # gave a 3-D array, the classes mixed in with the planes.
    from training.tiny import export_tiny

    model = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    volume = (np.random.default_rng(9).random((6, 40, 44)) * 255).astype(np.uint8)
    stack = (np.random.default_rng(10).random((3, 50, 60)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "volume.tif", volume, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "in" / "stack.tif", stack, photometric="minisblack", metadata={"axes": "ZYX"})
    cases = [  # (input, model, kind, result's axes, the same result from Python)
        ("volume", model, "probabilities", "CZYX",
         unet_rt.segment(volume, model, device="cpu", axes="zyx", output="probabilities")),
        ("volume", model, "labels", "ZYX", unet_rt.segment(volume, model, device="cpu", axes="zyx")),
        ("stack", tiny_model_path, "raw", "ZCYX",
         unet_rt.segment(stack, tiny_model_path, device="cpu", axes="zyx", output="raw")),
    ]
    for name, net, kind, axes, want in cases:
        out = tmp_path / f"out_{name}_{kind}"
        proc = run([cli, "segment", tmp_path / "in" / f"{name}.tif", "-o", out, "-m", net, "--device", "cpu", "-q",
                    "-k", kind])
        assert proc.returncode == 0, proc.stderr
        with tifffile.TiffFile(out / f"{name}.tif") as tif:
            assert tif.series[0].axes == axes and tif.series[0].shape == want.shape, (kind, tif.series[0])
            np.testing.assert_array_equal(tif.asarray(), want)
    # The command line reads its own result in that shape: a volume's
    # classes as channels (one model's probabilities into another's input).
    two = export_tiny(tmp_path / "vol2.pt", seed=4, depth=2, base=2, dims=3, in_channels=2)
    again = tmp_path / "again"
    proc = run([cli, "segment", tmp_path / "out_volume_probabilities" / "volume.tif", "-o", again, "-m", two,
                "--device", "cpu", "-q", "-f", "npy"])
    assert proc.returncode == 0, proc.stderr
    want = unet_rt.segment(cases[0][4], two, device="cpu", axes="czyx")
    np.testing.assert_array_equal(np.load(again / "volume.npy"), want)


def test_a_stack_tifffile_names_is_read_by_its_axes(cli, tmp_path):
    # A ZCYX stack written by tifffile (not ImageJ) was a plain stack of
    # 18 pages, its channels mixed in with its planes.
    from training.tiny import export_tiny

    model = export_tiny(tmp_path / "vol2.pt", seed=3, depth=2, base=2, dims=3, in_channels=2)
    stack = (np.random.default_rng(8).random((9, 2, 45, 31)) * 1000).astype(np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "zcyx.tif", stack, metadata={"axes": "ZCYX"})
    proc = run([cli, "segment", tmp_path / "in", "-o", tmp_path / "out", "-m", model, "--device", "cpu", "-f", "npy",
                "-q", "-k", "raw"])
    assert proc.returncode == 0, proc.stderr
    want = unet_rt.segment(stack, model, device="cpu", axes="zcyx", output="raw")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "zcyx.npy"), want)


def test_every_command_line_option_is_documented_and_every_documented_one_exists(cli):
    # A docs audit found options no page named (--fill-holes, --quiet,
    # --test-image, the Dask command's flags); the README's table and
    # docs/dask.md name them now, and a flag renamed in the code fails here.
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", docs))
    helps = {}
    for command in ("segment", "info", "bench", "export-bioimageio"):
        helps[command] = subprocess.run([str(cli), command, "--help"], capture_output=True, text=True,
                                        check=True).stdout
    helps["dask"] = subprocess.run([sys.executable, "-m", "unet_rt.dask", "--help"], capture_output=True,
                                   text=True, check=True, cwd=ROOT).stdout
    helps["train"] = subprocess.run([sys.executable, "-m", "training.train", "--help"], capture_output=True,
                                    text=True, check=True, cwd=ROOT).stdout
    offered = {command: set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text)) - {"--help"}
               for command, text in helps.items()}
    for command in ("segment", "info", "bench", "export-bioimageio", "dask"):
        assert offered[command] - named == set(), (command, sorted(offered[command] - named))
    # Flags of other tools the docs quote (pip, cargo, pytest, maturin, python -m unet_rt.export, ...).
    others = subprocess.run([sys.executable, "-m", "unet_rt.export", "--help"], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout
    known = set().union(*offered.values(), re.findall(r"--[a-z][a-z0-9-]+", others))
    # Other tools' flags the docs quote: cargo's, the linker's, Slurm's and
    # dask-worker's, the benchmark's and training.evaluate's; --version is
    # unet-rt's own (not a subcommand's).
    quoted = {"--example", "--release", "--no-as-needed", "--mem", "--nthreads", "--nworkers", "--null",
              "--only", "--write", "--version", "--flag"}
    assert named - known - quoted == set(), sorted(named - known - quoted)
