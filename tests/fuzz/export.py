"""Campaign ``export``: ``python -m unet_rt.export`` (its ``main``, in
process) on small networks, some misbehaving, with hostile flag values and
output paths.

Each example scripts one network (plain, pooling, valid, dilated, noisy, a
dict output, NaN or an error above some size), draws values for the
exporter's flags (sizes that are negative, zero, huge or mistyped; class
names empty, repeated or undecodable; output keys and kinds that do not
fit; output paths that are folders, end in a slash, lie inside a file or
are the input) and runs ``main``. It must end within its limit with status
0 or 1, or argparse's 2 for a value it cannot parse; print no traceback,
and when it fails one ``export failed:`` line last; leave no temporary
file, and no output when it fails; and a model it writes must load, and
where the runtime calls it exact, its tiles must reproduce one whole-image
pass to 1e-4 of the output's range.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from hypothesis import strategies as st

from .common import Context

__all__ = ["export"]

#: Wall-clock seconds one export may take (probing a tiny network takes a
#: few; a noisy one, whose probes never agree, about ten).
EXPORT_LIMIT_S = 60.0
#: Sizes that overflow, are negative, zero, odd or huge.
HOSTILE_SIZES = ("0", "1", "2", "3", "7", "16", "65536", "65537", "4294967296", str(10**30), "-1", "-7", "1.5",
                 "nan", "", "0x10", "1e3")


class _Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class _Pooled(_Plain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.max_pool2d(torch.relu(self.a(x)), 2)
        return self.b(torch.nn.functional.interpolate(y, scale_factor=2.0))


class _Valid(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


class _Dilated(_Plain):
    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(4, 4, 3, padding=4, dilation=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.c(torch.relu(self.a(x)))))


class _Noisy(_Plain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        return y + torch.rand_like(y)


class _DictOut(_Plain):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        y = self.b(self.a(x))
        return {"out": y, "aux": y * 2.0}


class _NaNAbove(_Plain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        if x.shape[-1] > 40:
            y = y * float("nan")
        return y


class _FailsAbove(_Plain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 64:
            raise RuntimeError("this network takes at most 64 pixels")
        return self.b(self.a(x))


NETWORKS = {"plain": _Plain, "pooled": _Pooled, "valid": _Valid, "dilated": _Dilated, "noisy": _Noisy,
            "dict": _DictOut, "nan_above_40": _NaNAbove, "fails_above_64": _FailsAbove}


def _network(ctx: Context, name: str) -> str:
    """The scripted network ``name``, saved once into the scratch folder."""
    path = ctx.path(f"export_{name}.pt")
    if not os.path.exists(path):
        torch.manual_seed(0)
        torch.jit.script(NETWORKS[name]().eval()).save(path)
    return path


@st.composite
def _flags(draw: st.DrawFn) -> List[str]:
    """Hostile values for some of the exporter's flags."""
    flags: List[str] = []
    for flag in draw(st.lists(st.sampled_from(["--padding", "--halo", "--size-multiple", "--size-offset",
                                                "--fixed-size", "--class-names", "--output-key", "--output-kind",
                                                "--name"]), max_size=4, unique=True), label="flags"):
        if flag == "--padding":
            value = draw(st.sampled_from(["same", "valid", "full"]), label=flag)
        elif flag == "--class-names":
            value = draw(st.sampled_from(["", ",", "a,a", "bg,cell", "a", "bg,cell,edge", " , x", "\udcff,x"]),
                         label=flag)
        elif flag == "--output-key":
            value = draw(st.sampled_from(["out", "aux", "0", "1", "7", "missing", ""]), label=flag)
        elif flag == "--output-kind":
            value = draw(st.sampled_from(["softmax", "sigmoid", "identity", "probabilities", "masks", "tanh"]),
                         label=flag)
        elif flag == "--name":
            value = draw(st.sampled_from(["n", "", "line\nbreak", "\udcff", "x" * 5000]), label=flag)
        else:
            value = draw(st.sampled_from(HOSTILE_SIZES), label=flag)
        flags += [flag, value]
    return flags


#: Kinds of ``-o`` value (see :func:`_output`), a plain file most often.
OUTPUTS = ("file", "file", "file", "nested", "folder", "slash", "inside_file", "input")


def _output(kind: str, folder: Path, source: str) -> Tuple[str, bool]:
    """The ``-o`` value of ``kind`` and whether it may be written at all."""
    if kind == "file":
        return str(folder / "out.pt"), True
    if kind == "nested":
        return str(folder / "a" / "b" / "out.pt"), True
    if kind == "folder":
        return str(folder), False
    if kind == "slash":
        return str(folder / "new") + os.sep, False
    if kind == "inside_file":
        blocker = folder / "blocker"
        blocker.write_bytes(b"a file")
        return str(blocker / "out.pt"), False
    return source, False


def _run(argv: List[str]) -> Tuple[int, str, str]:
    """``main(argv)``: its status (argparse's exit as 2), stdout, stderr."""
    from unet_rt.export import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 2
    return status, out.getvalue(), err.getvalue()


def _written_problem(path: str) -> Optional[str]:
    """What is wrong with a model the exporter wrote, if anything."""
    import unet_rt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = unet_rt.Model(path, device="cpu", precision="fp32")
        except unet_rt.UnetRtError as e:
            return f"the written model does not load: {e}"
        if not model.info["exact"]:
            return None
        image = np.random.default_rng(0).random((1, 70, 66), dtype=np.float32)
        if model.info["in_channels"] != 1 or model.info["fixed_size"]:
            return None
        whole = model.segment(image[0], output="raw", tile="whole")
        tiled = model.segment(image[0], output="raw", memory_budget=1)
    scale = float(np.abs(whole).max()) or 1.0
    difference = float(np.abs(tiled - whole).max()) / scale
    return None if difference <= 1e-4 else f"written exact, but its tiles differ by {difference:.2g} of the range"


def export(ctx: Context, data: st.DataObject) -> None:
    """One export of a small network with hostile flags and output."""
    name = data.draw(st.sampled_from(sorted(NETWORKS)), label="network")
    source = _network(ctx, name)
    output_kind = data.draw(st.sampled_from(OUTPUTS), label="output")
    flags = data.draw(_flags(), label="flags")
    folder = Path(ctx.path(f"export_{ctx.rec.cases + 1}"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    output, writable = _output(output_kind, folder, source)
    argv = [source, "-o", output, *flags]
    case = f"python -m unet_rt.export {name} -o {output!r} {flags}"
    limit = EXPORT_LIMIT_S * ctx.limits.load / 10.0
    outcome = ctx.rec.run(case, lambda: _run(argv), limit_s=limit)
    if outcome is None:
        shutil.rmtree(folder, ignore_errors=True)
        return  # raised (a violation the recorder reported), or skipped
    status, stdout, stderr = outcome
    problems = []
    if status not in (0, 1, 2):
        problems.append(f"exit status {status}")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    lines = stderr.strip().splitlines()
    if status == 1 and not (lines and lines[-1].startswith("export failed: ")):
        problems.append("status 1 without an `export failed:` line last")
    if status == 2 and not any("--" in f for f in flags):
        problems.append("a usage error without a flag to blame")
    left = [p for p in Path(output).parent.glob(".*.tmp")] if Path(output).parent.is_dir() else []
    if left:
        problems.append(f"temporary left: {left[0].name}")
    if status == 0:
        if not writable:
            problems.append(f"status 0 for an output that cannot be written as given ({output!r})")
        elif not stdout.startswith("wrote "):
            problems.append("status 0 without a `wrote` line")
        else:
            problems.append(_written_problem(output) or "")
    elif writable and os.path.exists(output):
        problems.append("failed, but the output exists")
    elif (folder / "a").exists():
        problems.append("failed, but the folders made for its output are left")
    for problem in filter(None, problems):
        ctx.rec.check(case, f"{problem} [status {status}; stderr: {stderr.strip()[-300:]!r}]")
    shutil.rmtree(folder, ignore_errors=True)
