"""Campaigns on model files: ``corrupt`` (damaged archives), ``metadata``
(hostile and lying ``unet_rt.json``), ``networks`` (scripted networks that
misbehave, poisoned weights), ``probing`` (the same networks without
metadata) and ``paths`` (FIFOs, directories, devices...).

A model that loads must answer ``info``/``layout`` fast, and segmenting a
small image with it must raise a ``UnetRtError`` or give a result that is
right-shaped, in range and, where the truth is known, equal to it.
"""

from __future__ import annotations

import errno
import io
import math
import os
import threading
import zipfile
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from hypothesis import strategies as st

from .common import OUTPUTS, Context, inspect_model, load, segment, segment_expect
from .contract import Expect
from .models import (NETWORKS, SAME_METADATA, MetadataEdit, corrupt as damage, corruptions, edited_text,
                     metadata_edits, metadata_text, network_bytes, poisoned_tiny, resave, tiny_bytes, tiny_metadata)

__all__ = ["corrupt", "metadata", "networks", "probing", "paths"]

IMAGE_SHAPE = (48, 52)


def _image(seed: int = 7, shape: Tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    """A reproducible random float32 image with values in [0, 100)."""
    return (np.random.default_rng(seed).random(shape) * 100).astype(np.float32)


def _exercise(ctx: Context, model: Any, desc: str, output: str, expect_extra: Optional[Dict[str, Any]] = None,
              image: Optional[np.ndarray] = None, kwargs: Optional[Dict[str, Any]] = None) -> Any:
    """Inspects a loaded model, then segments a small image with it."""
    if not inspect_model(ctx, model, desc):
        return None
    image = _image() if image is None else image
    kwargs = {"output": output, **(kwargs or {})}
    expect = segment_expect(model, image.shape, kwargs)
    for key, value in (expect_extra or {}).items():
        setattr(expect, key, value)
    return segment(ctx, model, desc, image, f"<image {image.shape} float32>", kwargs, expect,
                   check_consistency=True)


# --- corrupt ------------------------------------------------------------------------------


def corrupt(ctx: Context, data: st.DataObject) -> None:
    """The tiny model's archive damaged once or twice, loaded from bytes or a file."""
    archive = tiny_bytes()
    damages = data.draw(st.lists(corruptions(len(archive)), min_size=1, max_size=2), label="corruptions")
    for c in damages:
        archive = damage(archive, c)
    desc = " + ".join(map(repr, damages))
    # Everything is drawn before the load: whether a damaged model loads can
    # depend on the machine's load (probing's time), and draws that follow
    # it made hypothesis see one example draw differently twice
    # (FlakyStrategyDefinition, which ended a long campaign).
    via_path = data.draw(st.booleans(), label="via path")
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    model = load(ctx, archive, desc, via_path=via_path)
    if model is not None:
        lost = lost_storage(tiny_bytes(), archive)
        _exercise(ctx, model, "model", output, {"must_fail": lost} if lost else None)


def _storages(archive: bytes) -> Optional[Dict[str, int]]:
    """The byte sizes of the archive's tensor storages (``data/N`` entries),
    or ``None`` when it is no readable zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            return {i.filename.split("/", 1)[-1]: i.file_size for i in z.infolist() if "/data/" in "/" + i.filename
                    and i.filename.rsplit("/", 1)[-1].isdigit()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, NotImplementedError,
            zlib.error):
        return None


def lost_storage(original: bytes, damaged: bytes) -> Optional[str]:
    """Why a model rebuilt from ``damaged`` cannot hold the original's weights:
    a tensor storage that is missing or shorter (reading it would read past
    its end), or ``None``."""
    before, after = _storages(original), _storages(damaged)
    if not before or after is None:
        return None
    for name, size in before.items():
        if after.get(name, -1) < size:
            return f"tensor storage {name} has {after.get(name, 'no')} bytes instead of {size}"
    return None


# --- metadata -----------------------------------------------------------------------------

#: Fields whose edit cannot change what a correct runtime returns for the tiny network.
NEUTRAL = {"halo", "size_multiple", "size_offset", "padding", "spatial_dims", "in_channels", "out_channels",
           "class_names", "name", "architecture", "training", "unknown", "format", "description"}


def metadata(ctx: Context, data: st.DataObject) -> None:
    """The tiny network under one to three metadata edits: refused, or
    (for edits that cannot change the truth) the truthful model's result."""
    edits: List[MetadataEdit] = data.draw(st.lists(metadata_edits(), min_size=1, max_size=3), label="edits")
    text = edited_text(tiny_metadata(), edits)
    archive = resave(tiny_bytes(), text)
    desc = f"tiny with metadata edits {_clip(repr(edits), 1500)}"
    via_path = data.draw(st.booleans(), label="via path")  # drawn before the load: see corrupt
    output = data.draw(st.sampled_from(("probabilities", "probabilities", "raw", "labels", "instances")), label="output")
    model = load(ctx, archive, desc, via_path=via_path)
    if model is None:
        return
    result = _exercise(ctx, model, "model", output)
    if isinstance(result, np.ndarray) and all(e.path and e.path[0] in NEUTRAL for e in edits) and output in (
            "probabilities", "raw"):
        # The contract asks lying models for a correct-looking result only: a wrong one that looks right
        # (geometry lies the network's output sizes happen to agree with) is a note, not a violation.
        truth = ctx.model("tiny").segment(_image(), output=output)
        same = truth.shape == result.shape and np.allclose(truth, result, atol=1e-4)
        if not same:
            ctx.rec.note(f"{desc}: segment(output={output!r})",
                         "lying metadata gave a plausible result that differs from the truthful model's")


def _clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters for a log line."""
    return text if len(text) <= limit else f"{text[:limit]}...<{len(text)} chars>"


# --- networks -----------------------------------------------------------------------------

#: Networks computed pixel by pixel (1x1 convolution and pointwise maps): their
#: whole-image output is the truth for any tiling.
POINTWISE = {"good", "nan_everywhere", "nan_somewhere", "inf_somewhere", "neg_inf_everywhere", "huge_finite",
             "double_output", "half_output", "int_output", "bool_output", "no_weights", "nan_weights", "inf_weights",
             "five_channels", "one_channel", "many_channels", "tuple", "list", "dict", "softmax_output",
             "sigmoid_output", "masks_output"}
#: Networks that end in their own softmax or sigmoid, and the output kind probing finds.
RETURNS_PROBABILITIES = {"softmax_output": "probabilities", "sigmoid_output": "probabilities",
                         "masks_output": "masks"}
META_CHOICES = ("truthful", "truthful", "same", "sigmoid", "identity", "probabilities", "masks")


_MODULES: Dict[str, Any] = {}


def _eager_output(name: str, image: np.ndarray) -> Optional[np.ndarray]:
    """The network's output on the whole image (the first tensor of a tuple,
    list or dict), as float64 ``(C, H, W)``, or ``None`` when it has none."""
    if name not in _MODULES:
        _MODULES[name] = torch.jit.load(io.BytesIO(network_bytes(name)), map_location="cpu")
    try:
        with torch.no_grad():
            y = _MODULES[name](torch.from_numpy(image)[None, None])
    except Exception:  # noqa: BLE001 (the networks that raise have no truth)
        return None
    if isinstance(y, (tuple, list)) and y:
        y = y[0]
    if isinstance(y, dict) and len(y) == 1:
        y = next(iter(y.values()))
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.is_complex() or y.shape[0] != 1 or y.numel() > 10**8:
        return None
    return y[0].to(torch.float64).numpy()


def _truth(raw: np.ndarray, output: str, kind: str) -> Optional[np.ndarray]:
    """What ``output`` must be for network output ``raw`` of ``kind``."""
    if output == "raw":
        return raw.astype(np.float32).astype(np.float64)
    if output == "probabilities" and kind == "softmax":
        with np.errstate(all="ignore"):
            e = np.exp(raw - raw.max(0))
            return e / e.sum(0)
    if output == "probabilities" and kind == "sigmoid":
        with np.errstate(all="ignore"):
            return 1 / (1 + np.exp(-raw))
    if output == "probabilities" and kind in ("probabilities", "masks"):
        return raw.astype(np.float32).astype(np.float64)
    return None


def _network_metadata(choice: str, channels: Optional[int]) -> Optional[Dict[str, Any]]:
    """The metadata of a scripted network for one ``choice``, or ``None`` (probe)."""
    if choice == "probe":
        return None
    meta = dict(SAME_METADATA)
    if choice != "same" and channels:
        meta["out_channels"] = channels
    if choice in ("sigmoid", "identity", "probabilities", "masks"):
        meta["output"] = choice
    return meta


def networks(ctx: Context, data: st.DataObject) -> None:
    """A misbehaving scripted network (or the tiny U-Net with poisoned
    weights) with truthful or lying metadata."""
    if data.draw(st.integers(0, 4), label="poisoned?") == 0:
        return _poisoned(ctx, data)
    _network(ctx, data, data.draw(st.sampled_from(META_CHOICES), label="metadata"))


def probing(ctx: Context, data: st.DataObject) -> None:
    """A misbehaving scripted network without metadata: the runtime probes
    its geometry by running it (a separate campaign: a failed probe can take
    many seconds)."""
    _network(ctx, data, "probe")


def _network(ctx: Context, data: st.DataObject, choice: str) -> None:
    """One scripted network under metadata ``choice``, loaded and used."""
    name = data.draw(st.sampled_from(sorted(NETWORKS)), label="network")
    spec = NETWORKS[name]
    shape = data.draw(st.tuples(st.integers(8, 60), st.integers(8, 60)), label="size")
    image = _image(shape[0] * 61 + shape[1], shape) / 100
    raw = _eager_output(name, image)
    meta = _network_metadata(choice, None if raw is None else raw.shape[0])
    archive = network_bytes(name) if meta is None else resave(network_bytes(name), metadata_text(meta))
    # Drawn before the load: see corrupt.
    via_path = data.draw(st.booleans(), label="via path")
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    propagate = ctx.has_nonfinite and data.draw(st.booleans(), label="propagate?")
    kwargs: Dict[str, Any] = {"nonfinite": "propagate"} if propagate else {}
    kwargs.update(data.draw(st.sampled_from(({}, {"tile": 16}, {"tile": 24, "batch_size": 3}, {"batch_size": 1})),
                            label="options"))
    model = load(ctx, archive, f"network {name!r} with metadata {choice} {meta}", via_path)
    if model is None:
        return
    extra = _network_expect(name, spec, choice, meta, raw, output, propagate, model)
    _exercise(ctx, model, f"network_{name}", output, extra, image, kwargs)


def _network_expect(name: str, spec: Any, choice: str, meta: Optional[Dict[str, Any]], raw: Optional[np.ndarray],
                    output: str, propagate: bool, model: Any) -> Dict[str, Any]:
    """What segmenting with this network must give (``Expect`` fields)."""
    wrong = spec.probed_wrong if meta is None else spec.wrong
    if meta is not None and choice == "same" and raw is not None and raw.shape[0] != 2 and not wrong:
        wrong = f"the network returns {raw.shape[0]} channels, the metadata says 2"
    if wrong:
        return {"must_fail": wrong}
    if spec.nonfinite and not propagate:
        return {"must_fail": "the network's output is non-finite (NonFiniteError expected)"}
    extra: Dict[str, Any] = {"nonfinite_ok": propagate}
    kind = "softmax" if meta is None and (raw is None or raw.shape[0] > 1) else "sigmoid"
    kind = RETURNS_PROBABILITIES.get(name, kind) if meta is None else kind
    kind = meta["output"] if meta is not None else kind
    if name in POINTWISE and raw is not None and int(model.info["out_channels"]) == raw.shape[0]:
        truth = _truth(raw, output, kind)
        if truth is not None:
            extra.update(reference=truth, atol=1e-5)
    return extra


def _poisoned(ctx: Context, data: st.DataObject) -> None:
    """The tiny U-Net with some weights NaN, Inf or huge."""
    parameter = data.draw(st.integers(0, 25), label="parameter")
    value = data.draw(st.sampled_from((math.nan, math.inf, -math.inf, 1e38, -1e38, 3e38)), label="value")
    fraction = data.draw(st.sampled_from((0.0, 0.01, 0.5, 1.0)), label="fraction")
    archive = poisoned_tiny(parameter, value, fraction)
    # Drawn before the load: see corrupt.
    via_path = data.draw(st.booleans(), label="via path")
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    propagate = ctx.has_nonfinite and data.draw(st.booleans(), label="propagate?")
    model = load(ctx, archive, f"poisoned_tiny(parameter={parameter}, value={value!r}, fraction={fraction})",
                 via_path)
    if model is None:
        return
    extra: Dict[str, Any] = {"nonfinite_ok": propagate}
    if math.isnan(value) and not propagate:  # NaN spreads through every layer (Inf need not: ReLU(-inf) = 0)
        extra["must_fail"] = "NaN weights make the network output NaN (NonFiniteError expected)"
    _exercise(ctx, model, "poisoned", output, extra, kwargs={"nonfinite": "propagate"} if propagate else None)


# --- paths ---------------------------------------------------------------------------------


def _unblocking(call: Callable[[], Any], unblock: Callable[[], None], limit: float) -> Callable[[], Any]:
    """``call`` run on a thread; when it is still running after ``limit``
    seconds, ``unblock()`` is called, and the call then raises TimeoutError
    (a violation: the path made loading hang)."""

    def run() -> Any:
        """Runs the call on a thread; unblocks it when it hangs."""
        box: Dict[str, Any] = {}

        def target() -> None:
            """The thread: keeps the result or the exception."""
            try:
                box["result"] = call()
            except BaseException as exc:  # noqa: BLE001
                box["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(limit)
        if thread.is_alive():
            unblock()
            thread.join(limit)
            raise TimeoutError(f"still blocked after {limit:g} s (unblocked by opening the FIFO for writing)")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    return run


def _open_writer(path: str) -> None:
    """Opens the FIFO at ``path`` for writing and closes it: a reader blocked
    in ``open`` wakes up and reads end-of-file."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # no reader any more: nothing to unblock
            raise


def _path_cases(ctx: Context) -> List[Tuple[str, Any, Optional[Callable[[], None]]]]:
    """``(description, path, unblock)`` of every odd path."""
    fifo = ctx.path("model.fifo")
    os.mkfifo(fifo)
    empty = ctx.path("empty.pt")
    open(empty, "wb").close()
    sparse = ctx.path("sparse.pt")
    with open(sparse, "wb") as f:
        f.truncate(10 << 30)
    garbage = ctx.path("garbage.pt")
    with open(garbage, "wb") as f:
        f.write(np.random.default_rng(0).bytes(100000))
    loop = ctx.path("loop.pt")
    os.symlink(loop, loop)
    unicode_dir = ctx.path("modèle ☃")
    os.mkdir(unicode_dir)
    with open(os.path.join(unicode_dir, "tiny.pt"), "wb") as f:
        f.write(tiny_bytes())
    return [
        ("a FIFO", fifo, lambda: _open_writer(fifo)),
        ("a directory", ctx.tmp, None),
        ("/dev/null", "/dev/null", None),
        ("an empty file", empty, None),
        ("a 10 GiB sparse file of zeros", sparse, None),
        ("100 kB of random bytes", garbage, None),
        ("a symlink loop", loop, None),
        ("a missing file", ctx.path("missing.pt"), None),
        ("a file in a missing folder", ctx.path("missing/x.pt"), None),
        ("a path with a NUL byte", ctx.path("a\x00b.pt"), None),
        ("a path of 5000 characters", ctx.path("x" * 5000), None),
        ("an empty path", "", None),
        ("a path in bytes", os.fsencode(os.path.join(unicode_dir, "tiny.pt")), None),
        ("a unicode path", os.path.join(unicode_dir, "tiny.pt"), None),
        ("the int 5", 5, None),
        ("a float", 1.5, None),
        ("a list", [ctx.tmp], None),
        ("an object", object(), None),
        ("/proc/self/status", "/proc/self/status", None),
        ("/dev/zero (last: it may hang for good)", "/dev/zero", None),
    ]


def paths(ctx: Context, data: st.DataObject) -> None:
    """Every odd path as a model path, through ``Model`` and ``unet_rt.segment``
    (the campaign's cases are fixed: hypothesis only runs it once)."""
    import unet_rt

    if not ctx.once("paths"):
        return
    image = _image()
    for desc, path, unblock in _path_cases(ctx):
        loaders = (("unet_rt.Model", lambda p=path: unet_rt.Model(p, device="cpu", precision="fp32")),
                   ("unet_rt.segment", lambda p=path: unet_rt.segment(image, p, device="cpu", precision="fp32")))
        for entry, call in loaders:
            limit = ctx.limits.plan
            runner = _unblocking(call, unblock, limit) if unblock else call
            works = desc in ("a unicode path", "a path in bytes")
            expect = Expect() if works else Expect(must_fail=f"{desc} is not a model")
            ctx.rec.run(f"{entry}({desc}: {path!r:.80})", runner, expect, ("path", "model"), limit)
