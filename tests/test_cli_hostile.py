"""The ``unet-rt`` command line against hostile input: files that declare far
more data than they hold, sizes whose products overflow, truncated and empty
files, and special files (FIFOs, sockets, devices) given as inputs or models.

Each must be refused with a one-line ``unet-rt: ...`` message that names the
file and an exit status of 1 (some input failed) or 2 (usage): never a panic,
an abort, a signal, a hang or an attempt to allocate what the file declares.
The other inputs of the run are still segmented."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.fuzz.cli import png_chunk

TIMEOUT = 60

# What a panic, an abort or a backtrace prints; none may appear.
FORBIDDEN = ("panicked", "capacity overflow", "frame #", "RUST_BACKTRACE", "internal error", "memory allocation")


def run(cli: Path, *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def segment(cli: Path, *inputs, out: Path, extra=()) -> subprocess.CompletedProcess:
    # The bundled model is built into the binary: no --model needed.
    return run(cli, "segment", *inputs, "-o", out, "--device", "cpu", *extra)


def assert_refused(proc: subprocess.CompletedProcess, *names: str, status=(1,)) -> None:
    """Failed as documented: a listed exit status, and every line on stderr
    one ``unet-rt:`` message (no progress bars: stderr is not a terminal)."""
    assert proc.returncode in status, (proc.returncode, proc.stderr)
    for word in FORBIDDEN:
        assert word not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines, "no message"
    for line in lines:
        assert line.startswith("unet-rt:"), proc.stderr
    for name in names:
        assert name in proc.stderr, (name, proc.stderr)


def refused_alone(cli: Path, path: Path, tmp_path: Path) -> str:
    """Segments `path` alone; it must be refused. Returns stderr."""
    out = tmp_path / "out"
    proc = segment(cli, path, out=out)
    assert_refused(proc, path.name)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return proc.stderr


def good_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((64, 64)) * 255).astype(np.uint8))
    return path


# --- NPY -------------------------------------------------------------------


def npy(descr="'<f8'", shape="(200000, 200000)", fortran="False", data=b"", version=1, header_len=None) -> bytes:
    """An .npy file with the header fields as written (Python literals)."""
    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    prefix = 10 if version == 1 else 12
    text += " " * (-(prefix + len(text) + 1) % 64) + "\n"
    length = len(text) if header_len is None else header_len
    size = struct.pack("<H", length) if version == 1 else struct.pack("<I", length)
    return b"\x93NUMPY" + bytes([version, 0]) + size + text.encode("latin-1") + data


HOSTILE_NPY = {
    # 320 GB declared, 16 bytes held.
    "huge_shape": npy(shape="(200000, 200000)", data=b"\0" * 16),
    "huge_shape_v2": npy(shape="(200000, 200000)", data=b"\0" * 16, version=2),
    # 2**96 elements: the product overflows 64 bits.
    "overflowing_shape": npy(shape="(4294967296, 4294967296, 4294967296)", data=b"\0" * 8),
    # 2**63 elements fit, their 2**66 bytes do not.
    "overflowing_bytes": npy(shape="(2305843009213693952, 4)", data=b"\0" * 8),
    "shape_beyond_u64": npy(shape="(36893488147419103232,)", data=b"\0" * 8),
    "negative_shape": npy(shape="(-1, 64)", data=b"\0" * 8),
    "shape_not_a_tuple": npy(shape="'big'", data=b"\0" * 8),
    # A header length of 4 GiB in a file of a hundred bytes.
    "header_longer_than_file": npy(version=2, header_len=0xFFFFFFF0),
    # Nesting deep enough to exhaust a recursive parser's stack.
    "deep_nesting": npy(shape="(" * 3000 + ")" * 3000),
    "fortran_order_not_bool": npy(fortran="'yes'", shape="(8, 8)", data=b"\0" * 512),
    "complex": npy(descr="'<c8'", shape="(8, 8)", data=b"\0" * 512),
    "float128": npy(descr="'<f16'", shape="(8, 8)", data=b"\0" * 1024),
    "structured": npy(descr="[('a', '<i4'), ('b', '<f8')]", shape="(8, 8)", data=b"\0" * 768),
    "object": npy(descr="'|O'", shape="(8, 8)", data=b"\0" * 512),
    "unicode": npy(descr="'<U4'", shape="(8, 8)", data=b"\0" * 1024),
    "bool_not_0_or_1": npy(descr="'|b1'", shape="(64, 64)", data=b"\x02" * 4096),
    "extra_bytes": npy(descr="'|u1'", shape="(64, 64)", data=b"\0" * 5000),
    "empty_shape": npy(descr="'|u1'", shape="(0, 64)"),
    "scalar": npy(descr="'<f8'", shape="()", data=b"\0" * 8),
    "bad_magic": b"\x93NUMPX\x01\x00" + b"\0" * 100,
    "header_cut": npy(shape="(8, 8)")[:30],
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NPY))
def test_hostile_npy_is_refused(cli, tmp_path, name):
    path = tmp_path / f"{name}.npy"
    path.write_bytes(HOSTILE_NPY[name])
    stderr = refused_alone(cli, path, tmp_path)
    if name.startswith("huge_shape"):
        # Says what the file declares and what it holds.
        assert "320000000000" in stderr and "declares" in stderr, stderr
    if name == "scalar":
        # It was told to name its axes.
        assert "a single value (shape []), not an image" in stderr and "--axes" not in stderr, stderr
    if name == "complex":
        # float16 was listed among the types not read, which it is.
        assert "float16/32/64" in stderr and "complex" in stderr and "float16," not in stderr, stderr


def test_a_one_axis_npy_is_refused_as_not_an_image(cli, tmp_path):
    path = tmp_path / "line.npy"
    np.save(path, np.arange(64, dtype=np.uint8))
    assert "one axis (shape [64]), not an image" in refused_alone(cli, path, tmp_path)


def test_truncated_npy_is_refused(cli, tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.ones((64, 64), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    stderr = refused_alone(cli, path, tmp_path)
    assert "16384" in stderr, stderr  # the bytes the header declares


@pytest.mark.parametrize("dtype", ["bool", "u1", "i1", "<u2", ">u2", "<i2", ">i4", "<u4", "<i8", "<u8", "<f2", ">f2", "<f4", ">f8"])
def test_every_supported_npy_type_reads_as_its_values(cli, tmp_path, dtype):
    """The NPY reader reads each type, either byte order and Fortran order
    into the same values: the same labels as the reference uint8 image."""
    rng = np.random.default_rng(1)
    image = (rng.random((64, 72)) > 0.5) if dtype == "bool" else (rng.random((64, 72)) * 100).astype(np.uint8)
    np.save(tmp_path / "ref.npy", image.astype(np.uint8) if dtype == "bool" else image)
    np.save(tmp_path / "c.npy", image.astype(dtype))
    np.save(tmp_path / "f.npy", np.asfortranarray(image.astype(dtype)))
    out = tmp_path / "out"
    proc = segment(cli, tmp_path / "ref.npy", tmp_path / "c.npy", tmp_path / "f.npy", out=out, extra=["-k", "probabilities", "-f", "npy"])
    assert proc.returncode == 0, proc.stderr
    ref = np.load(out / "ref.npy")
    # Types read as float64 are normalized in float64, the reference in float32.
    np.testing.assert_allclose(np.load(out / "c.npy"), ref, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "f.npy"), ref, atol=1e-5)


@pytest.mark.parametrize("dtype,offset", [("<u8", 2**60), ("<i8", -(2**60)), (">i8", 2**53 + 1)])
def test_64_bit_integers_beyond_float64_are_refused(cli, tmp_path, dtype, offset):
    # Read as float64, an image offset by 2^60 lost its contrast: its nuclei vanished without a word.
    image = (np.random.default_rng(1).random((64, 72)) * 100).astype(np.int64) + offset
    np.save(tmp_path / "wide.npy", image.astype(dtype))
    stderr = refused_alone(cli, tmp_path / "wide.npy", tmp_path)
    assert "beyond 2^53 in magnitude" in stderr and str(int(image.flat[0])) in stderr, stderr


# --- TIFF ------------------------------------------------------------------

SHORT, LONG = 3, 4


def tiff(*pages: dict) -> bytes:
    """A little-endian classic TIFF built by hand, so that its tags may lie.

    A page: width, height; optional bits (8), samples (1), compression (1),
    photometric (1), sample_format (1), data (b""), rows_per_strip (height),
    strip_offset (where data lies), strip_bytes (len(data)), tiles ((w, l):
    one tile instead of strips), counts ({tag: count} for tags whose count
    lies; their values then point at the start of the file)."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    next_pointer = 4
    for page in pages:
        data = page.get("data", b"")
        data_at = len(out)
        out += data + b"\0" * ((len(out) + len(data)) % 2)
        tags = {
            256: (LONG, page["width"]),
            257: (LONG, page["height"]),
            258: (SHORT, page.get("bits", 8)),
            259: (SHORT, page.get("compression", 1)),
            262: (SHORT, page.get("photometric", 1)),
            277: (SHORT, page.get("samples", 1)),
            339: (SHORT, page.get("sample_format", 1)),
        }
        chunk_offset = page.get("strip_offset", data_at)
        chunk_bytes = page.get("strip_bytes", len(data))
        if "tiles" in page:
            tags.update({322: (LONG, page["tiles"][0]), 323: (LONG, page["tiles"][1]), 324: (LONG, chunk_offset), 325: (LONG, chunk_bytes)})
        else:
            tags.update({273: (LONG, chunk_offset), 278: (LONG, page.get("rows_per_strip", page["height"])), 279: (LONG, chunk_bytes)})
        counts = page.get("counts", {})
        ifd_at = len(out)
        struct.pack_into("<I", out, next_pointer, ifd_at)
        out += struct.pack("<H", len(tags))
        for tag, (kind, value) in sorted(tags.items()):
            count = counts.get(tag, 1)
            if count > 1:
                out += struct.pack("<HHII", tag, kind, count, 8)
            elif kind == SHORT:
                out += struct.pack("<HHIHH", tag, kind, 1, value, 0)
            else:
                out += struct.pack("<HHII", tag, kind, 1, value)
        next_pointer = len(out)
        out += b"\0\0\0\0"
    return bytes(out)


def deflated_zeros(nbytes: int) -> bytes:
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(nbytes // len(chunk))]
    return b"".join(parts) + packer.flush()


SMALL = {"width": 16, "height": 16, "data": bytes(range(256))}
MAX = 0xFFFFFFFF


def hostile_tiffs() -> dict:
    return {
        # 40 GB of pixels declared, 16 bytes held, in one strip.
        "declares_200000_squared": tiff({"width": 200000, "height": 200000, "data": b"\0" * 16}),
        # 18 EB: the one that panicked with "capacity overflow".
        "declares_ffffffff_squared": tiff({"width": MAX, "height": MAX, "data": b"\0" * 16}),
        # Three 16-bit samples of 0xFFFFFFFF**2 pixels overflow 64 bits.
        "declares_ffffffff_squared_rgb16": tiff({"width": MAX, "height": MAX, "bits": 16, "samples": 3, "photometric": 2, "data": b"\0" * 16}),
        # Compressed: the file size says nothing, the memory check refuses it.
        "deflate_declares_2g_squared": tiff({"width": 2**31 - 1, "height": 2**31 - 1, "compression": 8, "data": zlib.compress(b"\0" * 4096)}),
        "strip_beyond_the_file": tiff({**SMALL, "strip_offset": 2**31}),
        "strip_longer_than_the_file": tiff({**SMALL, "strip_bytes": 2**31}),
        "strip_shorter_than_the_image": tiff({**SMALL, "strip_bytes": 100}),
        "tile_of_ffffff00_squared": tiff({**SMALL, "tiles": (0xFFFFFF00, 0xFFFFFF00)}),
        "samples_of_128_bits": tiff({**SMALL, "bits": 128}),
        # Later pages lie: about their strips, their size, or the length of
        # their strip lists (2**30 offsets: 4 GiB, in a file of a few hundred bytes).
        "page2_strip_beyond_the_file": tiff(SMALL, {**SMALL, "strip_offset": 2**31}),
        "page2_declares_200000_squared": tiff(SMALL, {"width": 200000, "height": 200000, "data": b"\0" * 16}),
        "page2_declares_ffffffff_squared": tiff(SMALL, {"width": MAX, "height": MAX, "data": b"\0" * 16}),
        "page2_strip_list_of_2g": tiff(SMALL, {**SMALL, "height": 2**30, "rows_per_strip": 1, "counts": {273: 2**30, 279: 2**30}}),
        "garbage": b"II*\x00" + bytes(range(256)) * 2,
        "truncated_header": b"II*\x00\x08\x00",
        "big_endian_garbage": b"MM\x00*" + b"\xff" * 64,
        # "failed to fill whole buffer".
        "no_pages": b"II*\x00\x00\x00\x00\x00",
        "bigtiff_no_pages": b"II+\x00\x08\x00\x00\x00" + b"\x00" * 8,
    }


@pytest.mark.parametrize("name", sorted(hostile_tiffs()))
def test_hostile_tiff_is_refused(cli, tmp_path, name):
    path = tmp_path / f"{name}.tif"
    path.write_bytes(hostile_tiffs()[name])
    stderr = refused_alone(cli, path, tmp_path)
    if name == "declares_200000_squared":
        assert "40000000000" in stderr, stderr
    if name.endswith("no_pages"):
        assert "a TIFF file without pages" in stderr, stderr


def test_a_stack_whose_pages_add_up_to_more_than_memory_is_refused_before_decoding(cli, tmp_path):
    """4096 pages share one deflated strip of 256 MiB of zeros: each page is
    plausible, their 1 TiB total is not. Refused before any page is decoded."""
    side = 16384
    strip = deflated_zeros(side * side)
    page = {"width": side, "height": side, "compression": 8, "strip_offset": 8, "strip_bytes": len(strip)}
    # The first page's data is the strip, right after the header at byte 8.
    data = tiff({**page, "data": strip}, *[page] * 4095)
    path = tmp_path / "bomb.tif"
    path.write_bytes(data)
    with tifffile.TiffFile(path) as tif:  # the file is well formed
        assert len(tif.pages) == 4096
    stderr = refused_alone(cli, path, tmp_path)
    # Refused within a few pages now: they need more compressed data than
    # the file holds (the memory check refused it at the page crossing it).
    assert "decode to more than their compression can make of the file's" in stderr, stderr


def test_pages_that_decode_to_more_than_their_file_can_hold_are_refused_before_decoding(cli, tmp_path):
    """Eight pages share one deflated strip of 256 MiB of zeros: 2 GiB
    declared in a file of 260 KB, within the memory check, was decoded
    (an 800 KB file of one page whose 100,000 strips shared one stream
    took 20 GB). Deflate makes at most 1032 bytes of one."""
    side = 16384
    strip = deflated_zeros(side * side)
    page = {"width": side, "height": side, "compression": 8, "strip_offset": 8, "strip_bytes": len(strip)}
    path = tmp_path / "shared.tif"
    path.write_bytes(tiff({**page, "data": strip}, *[page] * 7))
    with tifffile.TiffFile(path) as tif:  # the file is well formed
        assert len(tif.pages) == 8
    stderr = refused_alone(cli, path, tmp_path)
    assert "decode to more than their compression can make of the file's" in stderr, stderr
    # One page of its own strip, as compressible as deflate makes it, reads.
    tifffile.imwrite(tmp_path / "zeros.tif", np.zeros((1500, 1500), np.uint8), compression="zlib",
                     compressionargs={"level": 9}, rowsperstrip=1500)
    proc = segment(cli, tmp_path / "zeros.tif", out=tmp_path / "out", extra=["-f", "npy"])
    assert proc.returncode == 0, proc.stderr


def test_files_whose_description_declares_other_pages_are_refused(cli, tmp_path):
    """A stack kept in one page (tifffile's truncate=True, ImageJ's stacks
    over 4 GB) gave plane 1 alone; several series, one stack of them all;
    a (y, x, 2) array tifffile stores as y pages of x by 2, a stack of
    slivers. Each was read without a word."""
    stack = (np.random.default_rng(3).random((3, 48, 40)) * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "truncated.tif", stack, truncate=True, photometric="minisblack")
    with tifffile.TiffWriter(tmp_path / "series.ome.tif", ome=True) as tif:
        tif.write(stack[0])
        tif.write(stack, photometric="minisblack", metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(stack[:2], 0, -1))
    # Series of unlike pages said "only stacks of equal pages are read" (from an audit).
    with tifffile.TiffWriter(tmp_path / "unlike.tif") as tif:
        tif.write(stack[:2], photometric="minisblack")
        tif.write(stack[0, :30], photometric="minisblack")
    for name, said in [("unlike", "covers the first 2 page(s), and page 3 is unlike them: the file holds several "
                                  "images (series), which are not read as one"),
                       ("imagej", "declares 3 planes, but the file holds 1 page(s)"),
                       ("truncated", "declares 3 planes, but the file holds 1 page(s)"),
                       ("series.ome", "holds 2 images (series)"),
                       ("yxc", "cannot tell the axes of an array of shape [48, 40, 2]")]:
        stderr = refused_alone(cli, tmp_path / f"{name}.tif", tmp_path)
        assert said in stderr, (name, stderr)


def test_a_real_multipage_tiff_still_reads(cli, tmp_path):
    rng = np.random.default_rng(2)
    stack = (rng.random((3, 48, 40)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "tiled.tif", stack[0], tile=(16, 16), compression="zlib")
    proc = segment(cli, tmp_path / "stack.tif", tmp_path / "tiled.tif", out=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert tifffile.imread(tmp_path / "out" / "stack.tif").shape == (3, 48, 40)
    assert tifffile.imread(tmp_path / "out" / "tiled.tif").shape == (48, 40)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64", "uint64", "int64"])
def test_every_tiff_sample_type_reads_as_its_values(cli, tmp_path, dtype):
    """Pages of each sample type, alone and as a stack, read as the values
    they hold (widened where the engine needs it): the reference's results."""
    rng = np.random.default_rng(3)
    stack = (rng.random((2, 48, 56)) * 100).astype(np.uint8)
    np.save(tmp_path / "ref.npy", stack[0])
    tifffile.imwrite(tmp_path / "one.tif", stack[0].astype(dtype))
    tifffile.imwrite(tmp_path / "two.tif", stack.astype(dtype), photometric="minisblack")
    out = tmp_path / "out"
    proc = segment(cli, tmp_path / "ref.npy", tmp_path / "one.tif", tmp_path / "two.tif", out=out, extra=["-k", "probabilities", "-f", "npy"])
    assert proc.returncode == 0, proc.stderr
    ref = np.load(out / "ref.npy")
    np.testing.assert_allclose(np.load(out / "one.npy"), ref, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "two.npy")[0], ref, atol=1e-6)


# --- PNG -------------------------------------------------------------------


def png_with_size(width: int, height: int, bit_depth=8, color_type=0) -> bytes:
    """A valid 1x1 PNG whose IHDR then claims another size (its CRC fixed)."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, bit_depth, color_type, 0, 0, 0)
    row = b"\0" + b"\0" * (bit_depth // 8 * {0: 1, 2: 3, 4: 2, 6: 4}[color_type])
    good = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(row))
            + png_chunk(b"IEND", b""))
    claimed = struct.pack(">II", width, height) + ihdr[8:]
    return good.replace(png_chunk(b"IHDR", ihdr), png_chunk(b"IHDR", claimed))


HOSTILE_PNG = {
    "claims_2g_squared": lambda: png_with_size(2**31 - 1, 2**31 - 1),
    "claims_2g_squared_rgba16": lambda: png_with_size(2**31 - 1, 2**31 - 1, 16, 6),
    "claims_200000_squared": lambda: png_with_size(200000, 200000),
    "claims_zero_width": lambda: png_with_size(0, 10),
    "truncated": lambda: png_with_size(1, 1)[:40],
    "garbage": lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PNG))
def test_hostile_png_is_refused(cli, tmp_path, name):
    path = tmp_path / f"{name}.png"
    path.write_bytes(HOSTILE_PNG[name]())
    refused_alone(cli, path, tmp_path)


def test_the_png_builder_makes_valid_pngs(tmp_path):
    from PIL import Image

    path = tmp_path / "one.png"
    path.write_bytes(png_with_size(1, 1))
    with Image.open(path) as image:
        assert image.size == (1, 1)


# --- Empty files, folders and special files --------------------------------


@pytest.mark.parametrize("ext", ["tif", "tiff", "png", "npy", "TIF"])
def test_zero_byte_files_are_refused(cli, tmp_path, ext):
    path = tmp_path / f"empty.{ext}"
    path.write_bytes(b"")
    refused_alone(cli, path, tmp_path)


def test_a_folder_named_like_an_image_is_refused(cli, tmp_path):
    folder = tmp_path / "x.tif"
    folder.mkdir()
    refused_alone(cli, folder, tmp_path)


def test_a_fifo_input_is_refused_without_blocking(cli, tmp_path):
    fifo = tmp_path / "in.tif"
    os.mkfifo(fifo)
    stderr = refused_alone(cli, fifo, tmp_path)
    assert "FIFO" in stderr, stderr


def test_a_device_behind_an_image_name_is_refused(cli, tmp_path):
    for name, target in [("z.npy", "/dev/zero"), ("u.tif", "/dev/urandom"), ("n.png", "/dev/null")]:
        link = tmp_path / name
        link.symlink_to(target)
        stderr = refused_alone(cli, link, tmp_path)
        assert "device" in stderr, stderr


def test_a_socket_input_is_refused(cli, tmp_path):
    path = tmp_path / "s.tif"
    if len(str(path)) > 100:
        pytest.skip("the path is too long for a Unix socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        stderr = refused_alone(cli, path, tmp_path)
    assert "socket" in stderr, stderr


def test_special_files_in_a_folder_or_pattern_are_skipped(cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good_image(folder / "good.npy")
    os.mkfifo(folder / "fifo.tif")
    (folder / "zero.npy").symlink_to("/dev/zero")
    for inputs in ([folder], [folder / "*.*"]):
        out = tmp_path / f"out{len(inputs)}{inputs[0].name}"
        proc = segment(cli, *inputs, out=out)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["good.tif"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_file_as_model_is_a_usage_error(cli, tmp_path, kind):
    model = tmp_path / "model.pt"
    if kind == "fifo":
        os.mkfifo(model)
    else:
        model.symlink_to("/dev/zero")
    image = good_image(tmp_path / "good.npy")
    proc = segment(cli, image, out=tmp_path / "out", extra=["--model", model])
    assert_refused(proc, "model.pt", status=(2,))
    assert not (tmp_path / "out" / "good.tif").exists()
    assert_refused(run(cli, "info", model), "model.pt", status=(2,))
    assert_refused(run(cli, "bench", "--model", model, "--size", "64"), "model.pt", status=(2,))


# --- Hostile and good inputs together ---------------------------------------


def test_good_inputs_are_segmented_next_to_hostile_ones(cli, tmp_path):
    good = good_image(tmp_path / "good.npy")
    huge = tmp_path / "huge.npy"
    huge.write_bytes(HOSTILE_NPY["huge_shape"])
    bomb = tmp_path / "bomb.tif"
    bomb.write_bytes(hostile_tiffs()["declares_ffffffff_squared"])
    fifo = tmp_path / "fifo.tif"
    os.mkfifo(fifo)
    zero = tmp_path / "z.npy"
    zero.symlink_to("/dev/zero")
    out = tmp_path / "out"
    proc = segment(cli, huge, bomb, good, fifo, zero, out=out, extra=["--json"])
    assert_refused(proc, "huge.npy", "bomb.tif", "fifo.tif", "z.npy")
    assert len(proc.stderr.splitlines()) == 4, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.tif"]
    reports = {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert reports["good.npy"]["status"] == "ok"
    assert all(reports[n]["status"] == "failed" for n in ("huge.npy", "bomb.tif", "fifo.tif", "z.npy"))


# --- Flags that ask for absurd sizes -----------------------------------------


@pytest.mark.parametrize("size", ["4294967296x4294967296", "1000000x1000000"])
def test_bench_refuses_sizes_beyond_memory(cli, size):
    proc = run(cli, "bench", "--size", size, "--device", "cpu", "-r", "1")
    assert_refused(proc, status=(2,))


def test_bench_counts_its_result_and_stops_at_ctrl_c_while_it_makes_its_image(cli):
    # Only the image was counted: an image of 60% of the memory available was admitted, and its
    # labels then filled the machine. Making a 20000^2 image took half a minute, deaf to Ctrl-C
    # (SIGTERM alike; at 100000^2 the process grew to 20 GB after it).
    available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    side = int((0.6 * available / 2) ** 0.5)  # uint16 image: 60%; with uint16 labels: 120%
    proc = run(cli, "bench", "--size", str(side), "--device", "cpu", "-r", "1")
    assert_refused(proc, status=(2,))
    assert "image and its result" in proc.stderr, proc.stderr
    job = subprocess.Popen([str(cli), "bench", "--size", "20000", "--device", "cpu", "-r", "1", "-j", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    job.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        _, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 130 and time.monotonic() - start < 5, (job.returncode, time.monotonic() - start, stderr)


@pytest.mark.parametrize(
    "args,named",
    [
        (["segment", "x.npy", "-o", "out", "--bogus"], "--bogus"),
        (["segment", "x.npy", "-o", "out", "--threads", "0"], "--threads"),
        (["segment", "x.npy", "-o", "out", "--axes", "qcyx"], "qcyx"),
        (["segment", "x.npy", "-o", "out", "--output-kind", "LABELS"], "--output-kind"),
        (["segment", "x.npy"], "--output"),
        (["frobnicate"], "frobnicate"),
        # The engine's argument, named as the flag (it said object_size).
        (["segment", "x.npy", "-o", "out", "--object-size", "nan"], "invalid --object-size: is NaN"),
        (["segment", "x.npy", "-o", "out", "--object-size", "1e-320"], "is 1e-320;"),
        (["segment", "x.npy", "-o", "out", "--tile", "45"], "invalid --tile: 45"),
        # Was "is not a size", where --batch-size and Python say too large.
        (["segment", "x.npy", "-o", "out", "--tile", "99999999999999999999"], "is too large (at most"),
        # Ignored without a word with labels.
        (["segment", "x.npy", "-o", "out", "--min-size", "5"], "invalid --min-size: it shapes instances"),
        (["segment", "x.npy", "-o", "out", "--fill-holes", "no", "--output-kind", "probabilities", "--format", "npy"],
         "invalid --fill-holes: it shapes instances, and the output is probabilities"),
        # Was "value was not a boolean", of a flag whose values read yes|no.
        (["segment", "x.npy", "-o", "out", "--fill-holes", "maybe"], "'maybe' for '--fill-holes <yes|no>': expected yes or no"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(cli, tmp_path, args, named):
    # clap's own report spans several lines (tips, usage); like every other
    # failure, a usage error is one `unet-rt: error:` line.
    proc = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert_refused(proc, named, status=(2,))
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


# --- Results that would destroy data ---------------------------------------


def test_a_result_never_replaces_its_own_input(cli, tmp_path):
    # `segment dir/a.tif -o dir` replaced the image by its labels (exit 0),
    # and --skip-existing then took every input for done.
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    before = image.read_bytes()
    for extra in ([], ["--skip-existing"]):
        proc = segment(cli, image, out=tmp_path, extra=extra)
        assert_refused(proc, "would replace the input itself")
        assert image.read_bytes() == before


def test_overlays_never_replace_inputs_or_other_results(cli, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    good_image(images / "a_overlay.npy")  # its result a_overlay.png is a.tif's overlay
    out = tmp_path / "out"
    proc = segment(cli, images, out=out, extra=["--overlay", "--format", "png", "--json"])
    assert_refused(proc, "would replace that of")
    reports = {Path(r["input"]).name: r["status"] for r in map(json.loads, proc.stdout.splitlines())}
    assert sorted(reports.values()) == ["failed", "ok"], reports
    # An input named like an overlay is never written over.
    shutil_copy = (images / "a_overlay.npy").read_bytes()
    proc = segment(cli, images / "a.tif", images / "a_overlay.npy", out=images, extra=["--overlay", "--format", "npy"])
    assert_refused(proc, "would replace")
    assert (images / "a_overlay.npy").read_bytes() == shutil_copy


def test_a_failed_input_leaves_its_result_name_to_the_next(cli, tmp_path):
    # From an audit: a truncated a.png (first by name) failed, and a.tif was then refused as
    # "would replace that of a.png", a result never written.
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    good_image(images / "b.npy")
    tifffile.imwrite(images / "a.tif", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    proc = segment(cli, images, out=tmp_path / "out", extra=["--json"])
    reports = {Path(r["input"]).name: r["status"] for r in map(json.loads, proc.stdout.splitlines())}
    assert reports == {"a.png": "failed", "a.tif": "ok", "b.npy": "ok"}, proc.stderr
    assert "would replace" not in proc.stderr


def test_a_failed_overlay_leaves_the_previous_result_in_place(cli, tmp_path):
    # The result was renamed into place before the overlay failed, and
    # --skip-existing then skipped the input for good.
    out = tmp_path / "out"
    (out / "good_overlay.png").mkdir(parents=True)
    (out / "good.tif").write_text("old")
    proc = segment(cli, good_image(tmp_path / "good.npy"), out=out, extra=["--overlay"])
    assert_refused(proc, "good_overlay.png")
    assert (out / "good.tif").read_text() == "old"


def test_one_file_under_several_names_is_segmented_once(cli, tmp_path, monkeypatch):
    good_image(tmp_path / "good.npy")
    monkeypatch.chdir(tmp_path)
    proc = segment(cli, "good.npy", "./good.npy", tmp_path / "good.npy", ".", out=tmp_path / "out", extra=["--json"])
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["status"] for line in proc.stdout.splitlines()] == ["ok"]


def test_a_file_and_a_link_to_it_are_segmented_once_under_the_files_own_name(cli, tmp_path):
    # alias.tif sorts first: the result was alias.tif, and no line said a word of img.tif.
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "img.tif", np.zeros((40, 44), np.uint8))
    (folder / "alias.tif").symlink_to("img.tif")
    for inputs in ([folder], [folder / "alias.tif", folder / "img.tif"]):
        out = tmp_path / f"out{len(inputs)}"
        proc = segment(cli, *inputs, out=out, extra=["--json"])
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line)["input"] for line in proc.stdout.splitlines()] == [str(folder / "img.tif")]
        assert sorted(p.name for p in out.iterdir()) == ["img.tif"]


def test_a_stack_cut_inside_a_page_says_so(cli, tmp_path):
    # It said "cannot read TIFF page 2: failed to fill whole buffer".
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.ones((3, 64, 64), np.uint8), photometric="minisblack")
    cut = tmp_path / "cut.tif"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    stderr = refused_alone(cli, cut, tmp_path)
    assert "the file ends inside it (truncated?)" in stderr and "fill whole buffer" not in stderr, stderr


def test_names_that_are_not_utf8_are_read_and_kept(cli, tmp_path):
    # A pattern matching such a name panicked inside the glob crate (no
    # input segmented); a folder skipped the file without a word.
    folder = tmp_path / "in"
    folder.mkdir()
    good_image(folder / "ok.npy")
    odd = os.fsencode(folder) + b"/\xff.npy"
    with open(odd, "wb") as f:
        np.save(f, (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8))
    for source in (folder, str(folder / "*.npy")):
        out = tmp_path / f"out{len(str(source))}"
        proc = segment(cli, source, out=out, extra=["--json"])
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(os.fsencode(out))) == [b"ok.tif", b"\xff.tif"]


def test_names_are_escaped_in_errors_and_every_unreadable_entry_is_reported(cli, tmp_path):
    # Error lines printed names raw: a name's terminal escapes cleared the screen, a byte that is not
    # UTF-8 became U+FFFD. A literal backslash-n and a newline read alike in --json. A folder's
    # broken links were left out without a word (exit 0), and each unreadable name was "no such
    # file" (a link loop), or a pattern error for a missing name with "[".
    folder = tmp_path / "in"
    folder.mkdir()
    good_image(folder / "good.npy")
    hostile = os.fsencode(folder) + b"/bad\x1b[2J\x1b[31m\n\xff.tif"
    with open(hostile, "wb") as f:
        f.write(b"not a tiff")
    for name in ("slash\\nl.npy", "slash\nl.npy"):
        good_image(folder / name)
    (folder / "dangling.tif").symlink_to(folder / "missing.tif")
    (folder / "loop1.tif").symlink_to(folder / "loop2.tif")
    (folder / "loop2.tif").symlink_to(folder / "loop1.tif")
    proc = segment(cli, folder, out=tmp_path / "out", extra=["--json"])
    assert proc.returncode == 1, proc.stderr
    assert "\x1b" not in proc.stderr and "\ufffd" not in proc.stderr, proc.stderr
    assert "bad\\u{1b}[2J\\u{1b}[31m\\n\\xff.tif: not a readable TIFF file" in proc.stderr, proc.stderr
    reports = {r["input"].rsplit("/", 1)[-1]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert reports["slash\\\\nl.npy"]["status"] == reports["slash\\nl.npy"]["status"] == "ok", reports.keys()
    assert reports["dangling.tif"]["status"] == "failed"
    assert "a symbolic link to a file that does not exist" in reports["dangling.tif"]["error"]
    assert "Too many levels of symbolic links" in reports["loop1.tif"]["error"]
    # Named on their own.
    for name, said in (("loop1.tif", "cannot be read: Too many levels"), ("[gone.tif", "no such file")):
        proc = segment(cli, folder / name, out=tmp_path / "out2")
        assert_refused(proc, name)
        assert said in proc.stderr and "not a valid pattern" not in proc.stderr, proc.stderr


def test_packed_one_bit_tiffs_are_refused_not_misread(cli, tmp_path):
    # 1-bit pages came back packed eight to a byte and were segmented as
    # bytes ("ok", with nonsense objects).
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, mask)
    stderr = refused_alone(cli, path, tmp_path)
    assert "save packed 1-, 2- or 4-bit images as 8-bit" in stderr


def test_half_float_tiffs_are_refused_with_advice_for_them(cli, tmp_path):
    # They were told to save packed 1-bit images as 8-bit.
    path = tmp_path / "half.tif"
    tifffile.imwrite(path, np.ones((40, 44), np.float16))
    stderr = refused_alone(cli, path, tmp_path)
    assert "16-bit floats are not read from TIFF: save it as float32" in stderr and "packed" not in stderr, stderr


def test_tiff_colour_layouts_the_reader_does_not_decode_are_refused_with_advice(cli, tmp_path):
    # They were refused in the decoder's words: "The Decoder does not support the image format
    # `BlackIsZero with [8, 8] bits per sample is unsupported`".
    image = (np.random.default_rng(0).random((40, 44)) * 255).astype(np.uint8)
    # Grey and alpha is read (two channels, as tifffile reads it): the grey bundled model refuses
    # its two channels with advice for alpha.
    grey_alpha = tmp_path / "grey_alpha.tif"
    tifffile.imwrite(grey_alpha, np.stack([image, image], -1), photometric="minisblack", extrasamples=["unassalpha"])
    stderr = refused_alone(cli, grey_alpha, tmp_path)
    assert "the 2nd is likely alpha" in stderr and "convert('L')" in stderr, stderr
    # Several MinIsWhite samples: the decoder inverts grey alone.
    white = tmp_path / "white_bands.tif"
    tifffile.imwrite(white, np.stack([image, image], -1), photometric="miniswhite", planarconfig="contig")
    stderr = refused_alone(cli, white, tmp_path)
    assert "2 samples of 8 bits per pixel stored MinIsWhite" in stderr and "moveaxis" in stderr, stderr
    # RGB with an extra sample not named alpha: the decoder leaves it out (a (y, x, 4) image read
    # as (y, x, 3)).
    extra = tmp_path / "rgb_extra.tif"
    tifffile.imwrite(extra, np.stack([image] * 4, -1), photometric="rgb", extrasamples=["unspecified"])
    stderr = refused_alone(cli, extra, tmp_path)
    assert "4 samples per pixel, 3 of them its RGB(A) colour and 1 extra" in stderr, stderr
    assert "photometric='minisblack'" in stderr, stderr
    palette = tmp_path / "palette.tif"
    tifffile.imwrite(palette, image, photometric="palette", colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    stderr = refused_alone(cli, palette, tmp_path)
    assert "palette (indexed-colour) image" in stderr and "convert" in stderr, stderr
    for text in (grey_alpha, white, extra, palette):
        assert "Decoder" not in refused_alone(cli, text, tmp_path)


def test_a_min_is_white_value_beyond_float64_is_said_to_be_inverted(cli, tmp_path):
    # The refusal quoted 18446744073709551610 for a file holding 5: MinIsWhite is read as displayed.
    path = tmp_path / "white.tif"
    tifffile.imwrite(path, np.full((40, 44), 5, np.uint64), photometric="miniswhite")
    stderr = refused_alone(cli, path, tmp_path)
    assert "beyond 2^53" in stderr and "stored MinIsWhite (0 is white) and read inverted" in stderr, stderr


def test_colour_pngs_for_the_grey_bundled_model_are_refused_with_advice(cli, tmp_path):
    # A palette PNG (read as its colours, as PIL's convert('RGB') does) and an RGB one said only
    # "the model takes 1 input channel(s), ... has 3", nothing on what to do.
    from PIL import Image

    image = (np.random.default_rng(0).random((40, 44)) * 255).astype(np.uint8)
    palette = tmp_path / "palette.png"
    Image.fromarray(image).convert("P").save(palette)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.stack([image] * 3, -1)).save(rgb)
    for path in (palette, rgb):
        stderr = refused_alone(cli, path, tmp_path)
        assert "has 3" in stderr and "colour image" in stderr and "convert('L')" in stderr, stderr


@pytest.mark.parametrize("keep", [4, 7, 12])
def test_a_tiff_cut_inside_its_header_says_so(cli, tmp_path, keep):
    # It said "failed to fill whole buffer".
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.ones((40, 44), np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:keep])
    stderr = refused_alone(cli, cut, tmp_path)
    assert f"it ends ({keep} bytes) before its header and first directory do (truncated?)" in stderr, stderr


def test_time_points_and_slices_of_a_tifffile_stack_are_pages_for_a_2d_model(cli, tmp_path):
    # tifffile's TZYX was refused quoting "bzyx", letters the user never typed; the same stack
    # as an ImageJ hyperstack was read as its 10 planes. Both read alike now, in the file's order.
    stack = (np.random.default_rng(0).random((2, 5, 48, 52)) * 255).astype(np.uint8)
    out = tmp_path / "out"
    tifffile.imwrite(tmp_path / "tz.tif", stack, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "zt.tif", stack, metadata={"axes": "ZTYX"})
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "planes.tif", stack.reshape(10, 48, 52))
    proc = segment(cli, *(tmp_path / f"{n}.tif" for n in ("tz", "zt", "imagej", "planes")), out=out,
                   extra=["--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    want = np.load(out / "planes.npy")
    assert want.shape == (10, 48, 52) and len(np.unique(want)) > 1
    # Their results keep the file's two page axes, in its order.
    for name in ("tz", "zt", "imagej"):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), want.reshape(2, 5, 48, 52), err_msg=name)


def test_a_hyperstacks_results_keep_its_time_points_and_slices_apart(cli, tmp_path):
    # From an audit: an ImageJ TZYX hyperstack segmented by a 2-D model gave a TIFF result of 6
    # planes labelled ZYX, and an OME-Zarr result of one 6-slice volume at the slices' spacing (12 um
    # deep where the file holds two volumes of 6 um). The pixels were right; the geometry was not.
    import json

    import zarr

    import unet_rt

    stack = (np.random.default_rng(1).random((2, 3, 40, 44)) * 255).astype(np.uint8)
    path = tmp_path / "tz.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZYX", "spacing": 2.0, "unit": "um", "finterval": 60})
    out = tmp_path / "out"
    for extra in ([], ["-k", "probabilities", "-f", "npy"], ["-f", "zarr"], ["--json"]):
        proc = segment(cli, path, out=out, extra=extra)
        assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(out / "tz.tif") as labels:
        assert (labels.series[0].shape, labels.series[0].axes) == ((2, 3, 40, 44), "TZYX")
        written = labels.asarray()
    planes = unet_rt.segment(stack.reshape(6, 40, 44), axes="zyx", device="cpu")
    np.testing.assert_array_equal(written, planes.reshape(2, 3, 40, 44))
    assert np.load(out / "tz.npy").shape == (2, 3, 3, 40, 44)
    group = zarr.open_group(out / "tz.zarr", mode="r")
    image = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in image["axes"]] == ["t", "c", "z", "y", "x"]
    assert image["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 2.0, 0.25, 0.25]
    np.testing.assert_array_equal(group["0"][:, 0], stack)
    label = group["labels/labels"].attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in label["axes"]] == ["t", "z", "y", "x"]
    np.testing.assert_array_equal(group["labels/labels/0"][:], planes.reshape(2, 3, 40, 44))
    # The report gives the file's shape, not the pages'.
    assert json.loads(proc.stdout.splitlines()[0])["shape"] == [2, 3, 40, 44], proc.stdout


def test_a_full_stdout_fails_the_command(cli, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(cli), "segment", str(good_image(tmp_path / "g.npy")), "-o", str(tmp_path / "o"),
                               "--device", "cpu", "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr
    assert "cannot write to stdout" in proc.stderr
    # Said when an input failed too: the --json log, which a resume reads, is lost all the same.
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(cli), "segment", str(good_image(tmp_path / "g.npy")), str(tmp_path / "missing.npy"),
                               "-o", str(tmp_path / "o"), "--device", "cpu", "--json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1 and "cannot write to stdout" in proc.stderr, proc.stderr
    # A closed pipe is not a failure (`unet-rt info | head -1`).
    proc = subprocess.run(f"'{cli}' info --json | head -c 1 > /dev/null; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr


def test_a_tile_beyond_the_image_is_cut_to_it(cli, tmp_path):
    # --tile 100x100004 on a 64-pixel image took 98 s and 4.8 GiB.
    proc = segment(cli, good_image(tmp_path / "g.npy"), out=tmp_path / "o", extra=["--tile", "100x100004"])
    assert proc.returncode == 0, proc.stderr


def test_thousands_of_openmp_threads_in_the_environment_do_not_abort(cli, tmp_path):
    # OMP_NUM_THREADS=32768 overflowed the forward thread's stack (abort,
    # exit 134), with --threads 2 too.
    env = {**os.environ, "OMP_NUM_THREADS": "32768"}
    for extra in ([], ["--threads", "2"]):
        proc = subprocess.run([str(cli), "segment", str(good_image(tmp_path / "g.npy")), "-o", str(tmp_path / "o"),
                               "--device", "cpu", *extra], capture_output=True, text=True, timeout=TIMEOUT, env=env)
        assert proc.returncode == 0, proc.stderr


def test_export_refuses_a_special_or_unreadable_test_image(cli, tmp_path):
    fifo = tmp_path / "fifo.tif"
    os.mkfifo(fifo)
    proc = run(cli, "export-bioimageio", "-o", tmp_path / "e.zip", "--test-image", fifo)
    assert proc.returncode == 2 and "is a FIFO" in proc.stderr, proc.stderr
    text = tmp_path / "text.tif"
    text.write_text("not a tiff")
    proc = run(cli, "export-bioimageio", "-o", tmp_path / "e.zip", "--test-image", text)
    assert proc.returncode == 2, proc.stderr
    assert "invalid --test-image" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_folder_that_is_not_a_zarr_store_is_never_replaced(cli, tmp_path):
    out = tmp_path / "out"
    (out / "good.zarr").mkdir(parents=True)
    (out / "good.zarr" / "notes.txt").write_text("mine")
    proc = segment(cli, good_image(tmp_path / "good.npy"), out=out, extra=["--format", "zarr"])
    assert_refused(proc, "is not a zarr store")
    assert (out / "good.zarr" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["good.zarr"]
    # A previous result is replaced as before.
    proc = segment(cli, good_image(tmp_path / "good.npy"), out=tmp_path / "o2", extra=["--format", "zarr"])
    assert proc.returncode == 0, proc.stderr
    proc = segment(cli, good_image(tmp_path / "good.npy"), out=tmp_path / "o2", extra=["--format", "zarr"])
    assert proc.returncode == 0, proc.stderr


def test_a_zarr_store_unet_rt_did_not_write_is_never_replaced(cli, tmp_path):
    # A store of the user's of a result's name (their raw data) was deleted, chunks and all,
    # as a previous result; and --skip-existing took any store for this run's result.
    image = good_image(tmp_path / "a.npy")
    out = tmp_path / "out"
    (out / "a.zarr" / "raw").mkdir(parents=True)
    (out / "a.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (out / "a.zarr" / "raw" / "c").write_bytes(b"chunk")
    proc = segment(cli, image, out=out, extra=["--format", "zarr", "--json"])
    assert_refused(proc, "a.zarr is a zarr store unet-rt did not write: it is not replaced")
    assert json.loads(proc.stdout)["shape"] is None  # refused before the image was read
    assert (out / "a.zarr" / "raw" / "c").read_bytes() == b"chunk"
    # Its own results are replaced, and skipped only when they hold this run's kind and levels.
    mine = tmp_path / "mine"
    assert segment(cli, image, out=mine, extra=["--format", "zarr"]).returncode == 0
    status = lambda *extra: json.loads(segment(cli, image, out=mine, extra=["--format", "zarr", "--skip-existing",
                                                                            "--json", *extra]).stdout)["status"]
    assert status() == "skipped"
    assert status("-k", "instances") == "ok" and (mine / "a.zarr" / "labels" / "instances").is_dir()
    assert status("-k", "instances") == "skipped"
    assert status("-k", "instances", "--levels", "2") == "ok"
    assert status("-k", "instances", "--levels", "2") == "skipped"


def test_a_result_name_taken_by_a_folder_or_a_protected_file_is_refused_before_segmenting(cli, tmp_path):
    # Both were found after the image was segmented; the protected file was replaced (a rename
    # ignores its mode).
    image = good_image(tmp_path / "a.npy")
    folder, protected = tmp_path / "folder", tmp_path / "protected"
    (folder / "a.tif").mkdir(parents=True)
    protected.mkdir()
    (protected / "a.tif").write_bytes(b"precious")
    (protected / "a.tif").chmod(0o444)
    for out, says in ((folder, "a.tif is a folder: it is not replaced"), (protected, "a.tif is write-protected")):
        proc = segment(cli, image, out=out, extra=["--json"])
        assert_refused(proc, says)
        assert json.loads(proc.stdout)["shape"] is None  # before the image was read
    assert (protected / "a.tif").read_bytes() == b"precious"


def test_an_input_reached_through_a_link_is_never_replaced_by_its_result(cli, tmp_path):
    # data/a.npy leads to raw/a.npy; results into raw/ replaced the image with its labels.
    (tmp_path / "raw").mkdir()
    (tmp_path / "data").mkdir()
    image = good_image(tmp_path / "raw" / "a.npy")
    original = image.read_bytes()
    (tmp_path / "data" / "a.npy").symlink_to(image)
    proc = segment(cli, tmp_path / "data" / "a.npy", out=tmp_path / "raw", extra=["--format", "npy"])
    assert_refused(proc, "would replace the input itself")
    assert image.read_bytes() == original


def test_a_file_size_limit_fails_one_result_not_the_batch(cli, tmp_path):
    # SIGXFSZ killed the command mid-batch: no message, status 153, the rest never read and the
    # temporary left behind.
    small, large = tmp_path / "a.npy", tmp_path / "b.npy"
    good_image(small)
    np.save(large, np.zeros((400, 400), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(f"ulimit -f 100; exec '{cli}' segment '{large}' '{small}' -o '{out}' --device cpu",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=TIMEOUT)
    assert_refused(proc, "b.npy", "File too large")
    assert sorted(p.name for p in out.iterdir()) == ["a.tif"]
    # The overlay, written first, went on beside no result (from an audit).
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    proc = subprocess.run(f"ulimit -f 100; exec '{cli}' segment '{large}' '{small}' -o '{overlays}' --device cpu "
                          "--overlay", shell=True, executable="/bin/bash", capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert_refused(proc, "b.npy", "b.tif: File too large")
    assert sorted(p.name for p in overlays.iterdir()) == ["a.tif", "a_overlay.png"]


def test_inputs_after_the_output_folder_is_removed_fail_before_they_are_segmented(cli, tmp_path):
    # Each was segmented in full, then failed: "cannot create a file in out".
    import shutil

    inputs = []
    for i in range(4):
        inputs.append(tmp_path / f"{i}.npy")
        np.save(inputs[-1], (np.random.default_rng(i).random((400, 400)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    with subprocess.Popen([str(cli), "segment", *map(str, inputs), "-o", str(out), "--device", "cpu", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        lines = [proc.stdout.readline()]
        shutil.rmtree(out)
        lines += proc.stdout.read().splitlines()
        proc.wait(timeout=TIMEOUT)
    reports = [json.loads(line) for line in lines]
    assert reports[0]["status"] == "ok" and proc.returncode == 1
    last = reports[-1]
    assert last["status"] == "failed" and last["shape"] is None, last
    assert f"the output folder {out} is gone (removed or renamed during the run)" in last["error"]


def test_a_stack_for_png_is_refused_before_it_is_segmented(cli, tmp_path):
    # It was segmented, then refused, and its overlay was left behind.
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 64, 64), np.uint8))
    out = tmp_path / "out"
    proc = segment(cli, stack, out=out, extra=["--format", "png", "--overlay", "--json"])
    assert_refused(proc, "PNG holds one 2-D image, the result has shape [5, 64, 64]")
    assert not out.exists() or not any(out.iterdir())


def test_imagej_hyperstacks_keep_their_channels_apart(cli, tmp_path):
    # The channels of each plane are consecutive pages: read as a stack
    # they were segmented as planes of their own (six "planes" here).
    stack = (np.random.default_rng(0).random((3, 2, 64, 64)) * 255).astype(np.uint8)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "out"
    # The bundled model takes one channel: two are refused, naming them.
    proc = segment(cli, path, out=out)
    assert_refused(proc, "hyper.tif", "channel")
    # One channel of it, as an ImageJ file, reads as three planes.
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, stack[:, :1], imagej=True, metadata={"axes": "ZCYX"})
    proc = segment(cli, single, out=out, extra=["--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    assert np.load(out / "one.npy").shape == (3, 64, 64)


def test_slices_and_channels_named_by_imagej_or_ome_are_read_as_named(cli, tmp_path):
    """Only ImageJ's channels= was read: a z-stack of as many slices as a
    model has channels was segmented as one image's channels, and an OME
    file's channels as separate images."""
    import unet_rt
    from training.tiny import export_tiny

    two = export_tiny(tmp_path / "two.pt", in_channels=2)
    rng = np.random.default_rng(1)
    slices = (rng.random((2, 64, 64)) * 255).astype(np.uint8)
    out = tmp_path / "results"
    # Unnamed pages, as many as the model's channels: one image's channels (as before).
    tifffile.imwrite(tmp_path / "plain.tif", slices)
    proc = segment(cli, tmp_path / "plain.tif", out=out, extra=["-m", str(two), "--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    assert np.load(out / "plain.npy").shape == (64, 64)
    # Two slices by ImageJ's or OME's word: one channel each, which this model does not take.
    tifffile.imwrite(tmp_path / "ij.tif", slices, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ome.tif", slices, ome=True, metadata={"axes": "ZYX"})
    for name in ("ij.tif", "ome.tif"):
        proc = segment(cli, tmp_path / name, out=out, extra=["-m", str(two)])
        assert_refused(proc, name, "channel")
    # OME channels for a one-channel model: refused, naming them (were segmented one by one).
    tifffile.imwrite(tmp_path / "cyx.ome.tif", slices, ome=True, metadata={"axes": "CYX"})
    assert "channel" in refused_alone(cli, tmp_path / "cyx.ome.tif", tmp_path)
    # OME channels stored as runs of slices (XYZCT): three planes of two channels.
    planes = (rng.random((2, 3, 64, 64)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "czyx.ome.tif", planes, ome=True, metadata={"axes": "CZYX"})
    with tifffile.TiffFile(tmp_path / "czyx.ome.tif") as tif:
        assert 'DimensionOrder="XYZCT"' in tif.pages[0].description
    proc = segment(cli, tmp_path / "czyx.ome.tif", out=out, extra=["-m", str(two), "--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    want = unet_rt.segment(planes, unet_rt.Model(two, device="cpu"), axes="czyx")
    assert np.array_equal(np.load(out / "czyx.ome.npy"), want)


def test_a_stack_tifffile_stored_as_separate_planes_keeps_the_axes_its_description_names(cli, tmp_path):
    # tifffile stores any (3, y, x) or (4, y, x) array as one page of separate planes (planar RGB),
    # whatever it holds, and writes the axes it was given in its description. Read interleaved as
    # (y, x, c), three slices named "ZYX" went to a 3-channel model as one colour image, and to a
    # 1-channel model as an image of 3 channels; `--axes zyx` then named the wrong axes of it.
    import warnings

    import unet_rt
    from training.tiny import export_tiny

    rng = np.random.default_rng(3)
    one = export_tiny(tmp_path / "one.pt")
    three = export_tiny(tmp_path / "three.pt", in_channels=3)
    stack = (rng.random((3, 50, 60)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tifffile: such data will be pages one day
        tifffile.imwrite(tmp_path / "in" / "slices.tif", stack, metadata={"axes": "ZYX"})
        tifffile.imwrite(tmp_path / "in" / "plain.tif", stack)
        tifffile.imwrite(tmp_path / "in" / "volumes.tif", np.stack([stack, stack[::-1]]), metadata={"axes": "ZCYX"})
    with tifffile.TiffFile(tmp_path / "in" / "slices.tif") as tif:
        assert len(tif.pages) == 1 and tif.pages[0].planarconfig == 2 and tif.series[0].axes == "ZYX"
    per_slice = np.stack([unet_rt.segment(s, unet_rt.Model(one, device="cpu")) for s in stack])
    out = tmp_path / "out"
    proc = segment(cli, tmp_path / "in" / "slices.tif", out=out, extra=["-m", str(one), "--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out / "slices.npy"), per_slice)
    # A 3-channel model is told the file holds slices, not channels.
    proc = segment(cli, tmp_path / "in" / "slices.tif", out=out, extra=["-m", str(three)])
    assert proc.returncode == 1 and '"zyx"' in proc.stderr, proc.stderr
    # Without axes (scikit-image's and imageio's z-stacks are such files) the model decides, as for an
    # NPY of the same array: a 3-channel model's channels, a grey model's slices; --axes names them as
    # tifffile.imread gives them.
    proc = segment(cli, tmp_path / "in" / "plain.tif", out=out, extra=["-m", str(three), "--format", "npy", "-k", "raw"])
    assert proc.returncode == 0, proc.stderr
    want = unet_rt.segment(stack, unet_rt.Model(three, device="cpu"), output="raw", axes="cyx")
    np.testing.assert_array_equal(np.load(out / "plain.npy"), want)
    for axes in ([], ["--axes", "zyx"]):
        proc = segment(cli, tmp_path / "in" / "plain.tif", out=out, extra=["-m", str(one), "--format", "npy", *axes])
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(np.load(out / "plain.npy"), per_slice)
    # Without any description (GDAL's INTERLEAVE=BAND), separate planes are channels in tifffile's order.
    tifffile.imwrite(tmp_path / "bands.tif", stack, photometric="rgb", planarconfig="separate", metadata=None)
    proc = segment(cli, tmp_path / "bands.tif", out=out, extra=["-m", str(one), "--format", "npy", "--axes", "zyx"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out / "bands.npy"), per_slice)
    # ZCYX: pages of separate planes, each a volume's channels.
    proc = segment(cli, tmp_path / "in" / "volumes.tif", out=out, extra=["-m", str(three), "--format", "npy", "-k", "raw"])
    assert proc.returncode == 0, proc.stderr
    want = unet_rt.segment(np.stack([stack, stack[::-1]]), unet_rt.Model(three, device="cpu"), output="raw",
                           axes="bcyx")
    np.testing.assert_array_equal(np.load(out / "volumes.npy"), want)


def test_files_of_other_writers_are_refused_with_advice_that_works(cli, tmp_path):
    # From an audit of files written by PIL, GDAL and OpenCV. A CMYK JPEG page was read with every ink
    # inverted (the decoder took Adobe's convention, PIL's stream has none); a YCbCr page was told to
    # re-save tifffile.imread's samples as RGB, which labels YCbCr values RGB; a float page with the
    # horizontal predictor (GDAL's and OpenCV's PREDICTOR=2) got the decoder's bare words.
    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "in" / "cmyk.tif", compression="jpeg")
    Image.fromarray(rgb).convert("YCbCr").save(tmp_path / "in" / "ycbcr.tif", compression="tiff_lzw")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "in" / "rgba.tif", compression="jpeg")
    path = tmp_path / "in" / "predicted.tif"
    tifffile.imwrite(path, rng.random((20, 30)).astype(np.float32), compression="zlib", predictor=3)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Predictor"]
        at, byteorder = tag.valueoffset, tif.byteorder
    data = bytearray(path.read_bytes())
    data[at:at + 2] = (2).to_bytes(2, "little" if byteorder == "<" else "big")  # horizontal, on floats
    path.write_bytes(bytes(data))
    proc = segment(cli, tmp_path / "in", out=tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    lines = {line.split(":")[2].strip(): line for line in proc.stderr.splitlines() if line.startswith("unet-rt: error:")}
    assert "CMYK inks compressed with JPEG" in lines[str(tmp_path / "in" / "cmyk.tif")]
    assert "convert('RGB')" in lines[str(tmp_path / "in" / "ycbcr.tif")]
    assert "RGBA compressed with JPEG" in lines[str(tmp_path / "in" / "rgba.tif")]
    assert "horizontal predictor on" in lines[str(path)] and "re-save it" in lines[str(path)]


def test_reduced_resolution_pages_are_left_out_as_tifffile_leaves_them(cli, tmp_path):
    # GDAL's overviews (and masks) are pages marked by NewSubfileType: refused as "page 2 is 40x32 ...
    # only stacks of equal pages are read", where tifffile.imread reads the full resolution alone.
    import unet_rt

    image = (np.random.default_rng(6).random((64, 80)) * 255).astype(np.uint8)
    path = tmp_path / "overviews.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image)
        tif.write(image[::2, ::2], subfiletype=1)
        tif.write(image[::4, ::4], subfiletype=1)
    assert tifffile.imread(path).shape == image.shape
    proc = segment(cli, path, out=tmp_path / "out", extra=["--format", "npy"])
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "overviews.npy"), unet_rt.segment(image))


def test_channels_stored_as_separate_planes_are_read_as_tifffile_reads_them(cli, tmp_path):
    # Planar configuration 2 (tifffile's default for a (3, y, x) array, GDAL's INTERLEAVE=BAND) was
    # refused: the decoder reads only the first plane. Strips, tiles cut at the page's edge, a
    # predictor, big-endian samples and a stack of such pages are read exactly.
    import unet_rt
    from training.tiny import export_tiny

    rgb_model = export_tiny(tmp_path / "rgb.pt", in_channels=3)
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    cases = {
        "strips": ((rng.random((3, 45, 70)) * 255).astype(np.uint8), {"rowsperstrip": 7}),
        "tiles": ((rng.random((3, 45, 70)) * 60000).astype(np.uint16), {"tile": (16, 32), "compression": "zlib"}),
        "predicted": (rng.random((3, 45, 70)).astype(np.float32), {"compression": "lzw", "predictor": True}),
        "stack": ((rng.random((2, 3, 40, 50)) * 60000).astype(np.uint16), {"byteorder": ">"}),
    }
    for name, (image, options) in cases.items():
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", image, photometric="rgb", planarconfig="separate",
                         **options)
        with tifffile.TiffFile(tmp_path / "in" / f"{name}.tif") as tif:
            assert tif.pages[0].planarconfig == 2
    out = tmp_path / "out"
    proc = segment(cli, tmp_path / "in", out=out, extra=["-m", str(rgb_model), "--format", "npy", "-k", "raw"])
    assert proc.returncode == 0, proc.stderr
    model = unet_rt.Model(rgb_model, device="cpu")
    for name, (image, _) in cases.items():
        want = model.segment(image, output="raw", axes="bcyx" if image.ndim == 4 else "cyx")
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), want, err_msg=name)
    # JPEG planes are not decoded: refused by name.
    path = tmp_path / "jpeg" / "jpeg.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, (rng.random((3, 64, 64)) * 255).astype(np.uint8), photometric="rgb",
                     planarconfig="separate", compression="jpeg")
    assert "separate JPEG planes (planar configuration 2)" in refused_alone(cli, path, path.parent)


def test_grey_pages_of_several_bands_are_read_as_tifffile_reads_them(cli, tmp_path):
    # MinIsBlack pages of 2 or more samples per pixel (GDAL's multi-band rasters, tifffile's
    # minisblack (y, x, c) arrays, grey with extra samples) were refused: "page 1 holds 2 samples
    # of 8 bits per pixel (grey and 1 extra ...), which the TIFF reader does not decode". Each is
    # the image tifffile.imread gives, its channels moved first: labels and raw output equal the
    # Python API's on it, for strips, tiles, compression, predictors, separate planes and stacks.
    import unet_rt
    from training.tiny import export_tiny

    rng = np.random.default_rng(5)
    contig = {"photometric": "minisblack", "planarconfig": "contig"}
    cases = {}
    for bands in (2, 4):
        cases[f"u8_{bands}"] = ((rng.random((45, 70, bands)) * 255).astype(np.uint8), contig)
        cases[f"u16_tiles_{bands}"] = ((rng.random((45, 70, bands)) * 60000).astype(np.uint16),
                                       {**contig, "tile": (16, 32), "compression": "zlib"})
        cases[f"f32_lzw_{bands}"] = (rng.random((45, 70, bands)).astype(np.float32),
                                     {**contig, "compression": "lzw", "predictor": True, "rowsperstrip": 7})
        cases[f"i16_extra_{bands}"] = ((rng.random((45, 70, bands)) * 2000 - 1000).astype(np.int16),
                                       {**contig, "extrasamples": ["unspecified"] * (bands - 1), "byteorder": ">"})
        cases[f"u16_planes_{bands}"] = ((rng.random((bands, 45, 70)) * 60000).astype(np.uint16),
                                        {"photometric": "minisblack", "planarconfig": "separate"})
        cases[f"stack_{bands}"] = ((rng.random((2, 40, 50, bands)) * 255).astype(np.uint8), contig)
    for bands in (2, 4):
        model_path = export_tiny(tmp_path / f"m{bands}.pt", in_channels=bands)
        model = unet_rt.Model(model_path, device="cpu")
        names = [name for name in cases if name.endswith(f"_{bands}")]
        folder = tmp_path / f"in{bands}"
        folder.mkdir()
        for name in names:
            image, options = cases[name]
            tifffile.imwrite(folder / f"{name}.tif", image, **options)
            assert tifffile.imread(folder / f"{name}.tif").shape == image.shape, name
        for kind in ("raw", "labels"):
            out = tmp_path / f"out{bands}_{kind}"
            proc = segment(cli, folder, out=out, extra=["-m", str(model_path), "--format", "npy", "-k", kind])
            assert proc.returncode == 0, proc.stderr
            for name in names:
                image = tifffile.imread(folder / f"{name}.tif")
                planes = cases[name][1].get("planarconfig") == "separate"
                first = image if planes else np.moveaxis(image, -1, -3)
                want = model.segment(np.ascontiguousarray(first), output=kind, axes="bcyx" if first.ndim == 4 else "cyx")
                np.testing.assert_array_equal(np.load(out / f"{name}.npy"), want, err_msg=f"{name} {kind}")
    # Grey channels in JPEG are not decoded: refused by name.
    path = tmp_path / "jpeg" / "jpeg.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, (rng.random((64, 64, 2)) * 255).astype(np.uint8), compression="jpeg", **contig)
    assert "2 grey channels compressed with JPEG" in refused_alone(cli, path, path.parent)


def test_bits_stored_in_reverse_order_are_refused_by_name(cli, tmp_path):
    # FillOrder 2 (least significant bit first): the bytes were read as they are, 8-bit pixels
    # up to 225 off without a word. tifffile does not write the tag: a private one is renamed.
    path = tmp_path / "fill.tif"
    tifffile.imwrite(path, np.arange(40 * 44, dtype=np.uint8).reshape(40, 44), extratags=[(65000, "H", 1, 2, True)])
    data = bytearray(path.read_bytes())
    at = data.index(struct.pack("<HHI", 65000, 3, 1))
    data[at : at + 2] = struct.pack("<H", 266)
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].fillorder == 2
    assert "stores the bits of each byte in reverse (FillOrder 2)" in refused_alone(cli, path, tmp_path)


def test_colour_read_as_tifffile_and_pil_read_it(cli, tmp_path):
    # tifffile's RGB JPEG is YCbCr, which was refused ("unsupported TIFF colour type YCbCr(8)");
    # a palette PNG with transparency was read as RGBA, four channels, which an RGB model refused.
    from PIL import Image
    from scipy import ndimage

    import unet_rt
    from training.tiny import export_tiny

    rgb_model = export_tiny(tmp_path / "rgb.pt", in_channels=3)
    rng = np.random.default_rng(3)
    smooth = (ndimage.gaussian_filter(rng.random((64, 80, 3)), (3, 3, 0)) * 400).clip(0, 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "ycbcr.tif", smooth, photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(tmp_path / "in" / "ycbcr.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR
        decoded = tif.asarray()
    indices = rng.integers(0, 16, (40, 48), dtype=np.uint8)
    entries = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    palette = Image.new("P", (48, 40))
    palette.putdata(indices.ravel().tolist())
    palette.putpalette(entries.ravel().tolist())
    palette.save(tmp_path / "in" / "palette.png", transparency=bytes(rng.integers(0, 256, 256).astype(np.uint8)))
    assert np.array_equal(np.asarray(palette), indices)
    colours = entries[indices]
    out = tmp_path / "out"
    proc = segment(cli, tmp_path / "in" / "ycbcr.tif", tmp_path / "in" / "palette.png", out=out,
                   extra=["-m", str(rgb_model), "--format", "npy", "-k", "raw"])
    assert proc.returncode == 0, proc.stderr
    model = unet_rt.Model(rgb_model, device="cpu")
    np.testing.assert_array_equal(np.load(out / "palette.npy"), model.segment(colours, output="raw"))
    # JPEG decoders round apart by a level or so; the colours are the same.
    got, want = np.load(out / "ycbcr.npy"), model.segment(decoded, output="raw")
    assert np.abs(got - want).max() < 0.05 * np.ptp(want), np.abs(got - want).max()


@pytest.mark.parametrize("flag", ["--object-size", "--min-size", "--batch-size", "--tile", "--threads", "--levels"])
def test_a_negative_number_is_refused_naming_its_flag(cli, tmp_path, flag):
    # "-1" after a flag read as an unknown option: "unexpected argument '-1' found".
    proc = segment(cli, good_image(tmp_path / "a.npy"), out=tmp_path / "out", extra=[flag, "-1"])
    assert proc.returncode == 2, proc.stderr
    assert flag in proc.stderr and "unexpected argument" not in proc.stderr, proc.stderr
    if flag not in ("--object-size", "--tile"):
        # Was clap's "invalid digit found in string".
        assert '"-1" is not a whole number from' in proc.stderr, proc.stderr


def test_non_finite_pixels_are_refused_with_advice_the_command_line_can_follow(cli, tmp_path):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    image[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", image)
    # The advice was the Python API's (nonfinite="propagate"), which no flag took.
    stderr = refused_alone(cli, tmp_path / "nan.npy", tmp_path)
    assert "--nonfinite propagate" in stderr and 'nonfinite="' not in stderr, stderr
    out = tmp_path / "kept"
    proc = segment(cli, tmp_path / "nan.npy", out=out, extra=["--nonfinite", "propagate", "-f", "npy", "-k", "probabilities"])
    assert proc.returncode == 0, proc.stderr
    probabilities = np.load(out / "nan.npy")
    assert np.isnan(probabilities).any() and np.isfinite(probabilities).any()


def test_a_long_but_legal_result_name_is_written(cli, tmp_path):
    """The temporary name adds the pid and ".partial": a 244-byte input name
    failed with "File name too long", blamed on the (legal) result."""
    name = "n" * 240 + ".npy"
    good_image(tmp_path / name)
    out = tmp_path / "out"
    proc = segment(cli, tmp_path / name, out=out, extra=["--format", "npy", "--overlay"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "n" * 240 + "_overlay.png"])


def test_a_model_that_cannot_be_read_is_a_usage_error_naming_the_model(cli, tmp_path):
    """A symlink loop (or a file without read permission) exited 1, "some
    input failed", with the bare OS error."""
    (tmp_path / "loop1.pt").symlink_to(tmp_path / "loop2.pt")
    (tmp_path / "loop2.pt").symlink_to(tmp_path / "loop1.pt")
    proc = segment(cli, good_image(tmp_path / "g.npy"), out=tmp_path / "o", extra=["-m", tmp_path / "loop1.pt"])
    assert_refused(proc, "cannot load model", "loop1.pt", status=(2,))


@pytest.mark.parametrize("code,name", [(50000, "Zstandard (zstd)"), (34925, "LZMA"), (33003, "JPEG 2000"), (60000, "a codec")])
def test_a_compression_the_reader_lacks_is_named_with_a_way_out(cli, tmp_path, code, name):
    # Was the decoder's "Compression method Unknown(50000) is unsupported".
    import tifffile

    path = tmp_path / "packed.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset, byteorder = tag.valueoffset, tif.byteorder
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(byteorder + "H", code))
    stderr = refused_alone(cli, path, tmp_path)
    assert f"compressed with {name} (TIFF compression {code})" in stderr, stderr
    assert "compression='zlib'" in stderr and "Unknown(" not in stderr, stderr
