"""Campaign ``cli``: the ``unet-rt`` command line on hostile files and
arguments.

Each example writes a few damaged or lying input files (NPY headers that
declare other shapes, dtypes or orders than their data; TIFFs and PNGs with
flipped bits, cut ends or overwritten sizes; random bytes; empty files)
beside one valid control image, and runs ``unet-rt segment`` on all of
them, sometimes with hostile option values. The command must end within
its time limit with status 0 (every input segmented), 1 (some input
refused) or 2 (a usage error, only for hostile options); print only
one-line ``unet-rt:`` messages on stderr, naming each refused file, and no
panic, abort or backtrace; and still segment the control image unless the
options were refused.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from hypothesis import strategies as st

from .common import Context

__all__ = ["cli"]

#: What a panic, an abort or a backtrace prints; none may appear.
FORBIDDEN = ("panicked", "capacity overflow", "frame #", "RUST_BACKTRACE", "internal error", "memory allocation",
             "Traceback", "core dumped")
#: Wall-clock seconds one run may take (a handful of tiny images).
RUN_LIMIT_S = 60.0
#: Hostile values: sizes that overflow, are negative, huge or zero.
HOSTILE_INTS = (0, 1, 2, 3, 7, 255, 65535, 65536, 200000, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                2**64 - 1, 2**64, 10**30, -1, -(2**31))

File = Tuple[str, bytes, str]  # name, content, description


def cli_path() -> str:
    """The ``unet-rt`` binary: ``UNET_RT_CLI``, the one beside this Python,
    or the one on ``PATH``."""
    override = os.environ.get("UNET_RT_CLI")
    if override:
        return override
    beside = Path(sys.executable).parent / "unet-rt"
    return str(beside) if beside.exists() else (shutil.which("unet-rt") or "unet-rt")


# --- files -------------------------------------------------------------------------------


def _npy_bytes(descr: str, shape: str, fortran: str, body: bytes, version: int = 1) -> bytes:
    """An .npy file with exactly this header text and body."""
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    size_field = 2 if version == 1 else 4
    pad = -(10 + (size_field - 2) + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin1")
    length = struct.pack("<H" if version == 1 else "<I", len(text) & (0xFFFF if version == 1 else 0xFFFFFFFF))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text + body


@st.composite
def npy_files(draw: st.DrawFn) -> File:
    """An .npy whose header may lie about its shape, dtype or order."""
    dtype = draw(st.sampled_from(["<f4", ">f4", "<u2", ">u2", "|u1", "<i2", "<f8", "<f2", "|b1", "<c8", "<i8",
                                  "<u4", "|O", "<U3", "<V4"]), label="npy dtype")
    dims = draw(st.lists(st.integers(0, 70), min_size=0, max_size=5), label="npy shape")
    while int(np.prod(dims or [1])) > 60000:  # a real body stays small: the lies are in the header
        dims.pop(0)
    itemsize = max(np.dtype(dtype).itemsize, 1) if dtype != "|O" else 8
    body = bytes(np.random.default_rng(len(dims)).integers(0, 256, int(np.prod(dims or [1])) * itemsize,
                                                           dtype=np.uint8))
    shape = "(" + "".join(f"{d}, " for d in dims) + ")"
    fortran = "False"
    lie = draw(st.sampled_from(["none", "shape", "descr", "fortran", "cut", "grow", "version", "text"]), label="lie")
    if lie == "shape":
        values = draw(st.lists(st.sampled_from(HOSTILE_INTS), min_size=0, max_size=6), label="declared shape")
        shape = "(" + "".join(f"{v}, " for v in values) + ")"
    elif lie == "descr":
        dtype = draw(st.sampled_from(["'<f4", "'<f99'", "'>x'", "[('a', '<f4')]", "'<M8[s]'", "''", "5"]), label="d")
    elif lie == "fortran":
        fortran = draw(st.sampled_from(["True", "1", "'yes'", "None"]), label="fortran")
    elif lie == "cut":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)), label="kept bytes")]
    elif lie == "grow":
        body += b"\x00" * draw(st.integers(1, 4096), label="extra bytes")
    elif lie == "text":
        shape = draw(st.sampled_from(["(3, 4", "[3, 4]", "(3.5, 4)", "('a',)", "(1e9, 1e9)", "(True, 4)", "{}",
                                      "(" + "9" * 400 + ",)"]), label="shape text")
    descr = dtype if dtype.startswith(("'", "[")) or dtype.isdigit() else f"'{dtype}'"
    version = draw(st.sampled_from([1, 1, 1, 2, 3, 9]), label="npy version") if lie == "version" else 1
    content = _npy_bytes(descr, shape, fortran, body, version)
    return "npy", content, f"npy descr={descr} shape={shape[:60]} fortran={fortran} lie={lie} body={len(body)}"


@st.composite
def tiff_files(draw: st.DrawFn) -> File:
    """A small TIFF, then damaged: bits flipped, the end cut, or four bytes
    overwritten with a hostile value (sizes, offsets, counts)."""
    import tifffile

    dtype = draw(st.sampled_from(["uint8", "uint16", "float32", "int16", "float64", "int32"]), label="tiff dtype")
    shape = draw(st.sampled_from([(40, 44), (2, 40, 44), (40, 44, 3), (1, 1), (3, 40, 44)]), label="tiff shape")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ones(shape, dtype), bigtiff=draw(st.booleans(), label="bigtiff"))
    content = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["flip", "cut", "overwrite", "overwrite", "none"]), label="tiff damage")
    where = draw(st.integers(0, len(content) - 1), label="offset")
    if damage == "flip":
        content[where] ^= 1 << draw(st.integers(0, 7), label="bit")
    elif damage == "cut":
        del content[where:]
    elif damage == "overwrite":
        value = draw(st.sampled_from(HOSTILE_INTS), label="value") & 0xFFFFFFFF
        # In the first 512 bytes: the header and the first directory, where sizes live.
        where = min(where, 512, len(content) - 4)
        content[where:where + 4] = struct.pack("<I", value)
    return "tif", bytes(content), f"tiff {dtype} {shape} {damage}@{where}"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, kind, body and CRC (the tests' PNG writer)."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


@st.composite
def png_files(draw: st.DrawFn) -> File:
    """A PNG whose header may declare another size, depth or colour type
    than its data, or whose bytes are damaged."""
    width = draw(st.sampled_from([44, 1, 0, 200000, 2**31 - 1, 2**32 - 1]), label="png width")
    height = draw(st.sampled_from([40, 1, 0, 200000, 2**31 - 1, 2**32 - 1]), label="png height")
    depth = draw(st.sampled_from([8, 16, 1, 3, 255]), label="bit depth")
    color = draw(st.sampled_from([0, 2, 4, 6, 3, 7]), label="colour type")
    rows = b"".join(b"\x00" + bytes(44) for _ in range(40))
    idat = zlib.compress(rows)
    content = bytearray(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth,
                                                                                color, 0, 0, 0))
                        + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    damage = draw(st.sampled_from(["none", "flip", "cut"]), label="png damage")
    where = draw(st.integers(0, len(content) - 1), label="offset")
    if damage == "flip":
        content[where] ^= 1 << draw(st.integers(0, 7), label="bit")
    elif damage == "cut":
        del content[where:]
    return "png", bytes(content), f"png {width}x{height} depth={depth} colour={color} {damage}@{where}"


@st.composite
def junk_files(draw: st.DrawFn) -> File:
    """Random or empty bytes under a supported extension."""
    ext = draw(st.sampled_from(["npy", "tif", "tiff", "png"]), label="extension")
    content = draw(st.binary(min_size=0, max_size=300), label="bytes")
    prefix = draw(st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"II*\x00", b"MM\x00*", b"II+\x00",
                                   b"\x89PNG\r\n\x1a\n"]), label="magic")
    return ext, prefix + content, f"{len(prefix + content)} bytes of junk as .{ext}, magic {prefix!r}"


HOSTILE_FILES = st.one_of(npy_files(), tiff_files(), png_files(), junk_files())


# --- options -----------------------------------------------------------------------------


def _option_value(kind: str) -> st.SearchStrategy[str]:
    ints = st.sampled_from([str(v) for v in HOSTILE_INTS] + ["", "1.5", "x", "4x", "44x44x44x44", "44x-1", "1e9",
                                                            "0x10", " 44", "44 ", "\u0664\u0664"])
    choices = {
        "--tile": ints,
        "--batch-size": ints,
        "--threads": ints,
        "--axes": st.sampled_from(["yx", "cyx", "yxc", "zyx", "xy", "yy", "", "bcyx", "yxcz", "q", "YX"]),
        "--output-kind": st.sampled_from(["labels", "instances", "raw", "probabilities", "LABELS", "", "x"]),
        "--format": st.sampled_from(["tif", "npy", "png", "jpg", ""]),
        "--precision": st.sampled_from(["fp32", "bf16", "fp16", "auto", "fp64", ""]),
        "--device": st.sampled_from(["cpu", "cuda:99", "tpu", "", "cuda:-1", "cpu:0"]),
        "--min-size": ints,
        "--fill-holes": st.sampled_from(["yes", "no", "true", "0", "", "maybe"]),
        "--object-size": st.sampled_from(["20", "0", "-1", "nan", "inf", "1e300", "0.4", "x", ""]),
    }
    return choices[kind]


@st.composite
def hostile_options(draw: st.DrawFn) -> List[str]:
    """Zero to three options with hostile values, or flags."""
    options: List[str] = []
    for kind in draw(st.lists(st.sampled_from(["--tile", "--batch-size", "--threads", "--axes", "--output-kind",
                                               "--format", "--precision", "--device", "--min-size",
                                               "--fill-holes", "--object-size", "--overlay", "--json",
                                               "--skip-existing", "--bogus"]), max_size=3), label="options"):
        if kind.startswith("--") and kind in ("--overlay", "--json", "--skip-existing", "--bogus"):
            options.append(kind)
        else:
            options += [kind, draw(_option_value(kind), label=kind)]
    return options


# --- the campaign ------------------------------------------------------------------------


def _tiny_model(ctx: Context) -> str:
    """The tiny model, exported once into the scratch folder."""
    path = ctx.path("tiny_cli.pt")
    if not os.path.exists(path):
        from training.tiny import export_tiny

        export_tiny(path, seed=0)
    return path


def run_problems(proc: Optional[subprocess.CompletedProcess], inputs: Sequence[Path], control: Path, out: Path,
                 options: Sequence[str]) -> List[str]:
    """What is wrong with one run of ``unet-rt segment``; ``proc`` is
    ``None`` when the run did not end in time."""
    if proc is None:
        return [f"hung: no exit within {RUN_LIMIT_S:g} s"]
    problems = []
    code, stderr = proc.returncode, proc.stderr
    if code not in (0, 1, 2):
        problems.append(f"crashed: exit status {code}" + (" (a signal)" if code < 0 else ""))
    for word in FORBIDDEN:
        if word in stderr:
            problems.append(f"stderr holds {word!r}")
    lines = stderr.splitlines()
    if any(not line.startswith("unet-rt:") for line in lines):
        problems.append("stderr has lines that are not one-line unet-rt: messages")
    if code == 2:
        if not options:
            problems.append("usage error (status 2) without hostile options")
        return problems
    if code not in (0, 1):
        return problems
    written = {p.name.split(".")[0] for p in out.iterdir()} if out.exists() else set()
    # Hostile options may make the control fail too (a tile the model
    # refuses, PNG for probabilities...); without them it must work.
    if control.stem not in written and not options:
        problems.append("the valid control image was not segmented")
    refused = [p for p in inputs if p.stem not in written]
    if code == 0 and refused:
        problems.append(f"status 0 but no result for {refused[0].name}")
    for path in refused:
        if path.name not in stderr:
            problems.append(f"{path.name} was refused without a message naming it")
            break
    if code == 1 and not lines:
        problems.append("status 1 without a message")
    return problems


def cli(ctx: Context, data: st.DataObject) -> None:
    """One ``unet-rt segment`` run on hostile files beside a valid one."""
    files = data.draw(st.lists(HOSTILE_FILES, min_size=1, max_size=5), label="files")
    options = data.draw(st.one_of(st.just([]), st.just([]), hostile_options()), label="options")
    folder = Path(ctx.path(f"cli_{ctx.rec.cases + 1}"))
    folder.mkdir()
    inputs = []
    for i, (ext, content, _) in enumerate(files):
        path = folder / f"in{i}.{ext}"
        path.write_bytes(content)
        inputs.append(path)
    control = folder / "control.npy"
    np.save(control, (np.random.default_rng(1).random((40, 44)) * 100).astype(np.float32))
    out = folder / "out"
    command = [cli_path(), "segment", *map(str, inputs), str(control), "-o", str(out), "-m", _tiny_model(ctx),
               "--device", "cpu", "-q", *options]
    case = f"unet-rt segment {' | '.join(desc for _, _, desc in files)} + control, options {options}"
    limit = RUN_LIMIT_S * ctx.limits.load / 10.0

    def run() -> Optional[subprocess.CompletedProcess]:
        try:
            return subprocess.run(command, capture_output=True, text=True, errors="backslashreplace", timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    proc = ctx.rec.run(case, run, limit_s=limit)
    for problem in run_problems(proc, inputs, control, out, options):
        detail = "" if proc is None else f" [exit {proc.returncode}; stderr: {proc.stderr.strip()[:300]!r}]"
        ctx.rec.check(case, problem + detail)
    shutil.rmtree(folder, ignore_errors=True)
