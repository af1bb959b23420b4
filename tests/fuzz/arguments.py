"""Campaigns on arguments: ``arguments`` (hostile keyword values for
``segment``, the constructors and ``unet_rt.segment``) and ``planning``
(``layout``, ``Window``, ``needed_input`` and windowed segmentation, which
must all be closed-form fast whatever the sizes)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
from hypothesis import strategies as st

from .common import Context, layout_problem, segment, segment_expect
from .contract import Expect
from .models import tiny_bytes
from .values import INTS, POOL, acceptable, describe, draw_kwargs, hostile, is_int, kwargs_repr

__all__ = ["arguments", "planning"]

SEGMENT_ARGUMENTS = ("tile", "batch_size", "memory_budget", "axes", "output", "blend", "out", "progress", "window",
                     "input_range", "min_size", "fill_holes", "object_size")


# --- arguments -----------------------------------------------------------------------


def arguments(ctx: Context, data: st.DataObject) -> None:
    """Hostile values for one to three arguments of one entry point."""
    target = data.draw(st.sampled_from(("segment",) * 6 + ("module", "constructor", "from_bytes")), label="target")
    if target == "constructor":
        return _constructor(ctx, data)
    if target == "from_bytes":
        return _from_bytes(ctx, data)
    name = data.draw(st.sampled_from(("tiny", "tiny", "same", "rgb")), label="model")
    model = ctx.model(name)
    channels = int(model.info["in_channels"])
    image = np.random.default_rng(1).random(((channels,) if channels > 1 else ()) + (64, 72)).astype(np.float32)
    names = SEGMENT_ARGUMENTS + (("nonfinite",) if ctx.has_nonfinite else ())
    kwargs = data.draw(draw_kwargs(names), label="kwargs")
    if channels > 1 and "axes" not in kwargs:
        kwargs["axes"] = "cyx"
    desc = f"<image {image.shape} float32>"
    if target == "module":
        return _module_segment(ctx, data, name, model, image, desc, kwargs)
    segment(ctx, model, name, image, desc, kwargs)


def _module_segment(ctx: Context, data: st.DataObject, name: str, model: Any, image: np.ndarray, desc: str,
                    kwargs: Dict[str, Any]) -> None:
    """``unet_rt.segment(image, model, **kwargs)`` with a hostile ``model``
    (or the model itself and hostile options)."""
    import unet_rt

    which = data.draw(st.one_of(st.just(model), st.sampled_from(POOL)), label="model argument")
    expect = segment_expect(model, image.shape, kwargs)
    if which is None:
        expect = Expect()  # the bundled model, installed or not: only the outcome's type is checked
    elif which is not model:
        expect = Expect(must_fail=f"model={describe(which)} is not a model")
    case = f"unet_rt.segment({desc}, {name if which is model else describe(which)}, device='cpu', {kwargs_repr(kwargs)})"
    ctx.rec.run(case, lambda: unet_rt.segment(image, which, device="cpu", precision="fp32", **kwargs), expect,
                tuple(kwargs) + ("model",), ctx.limits.segment)


def _constructor(ctx: Context, data: st.DataObject) -> None:
    """``unet_rt.Model(path, device, precision)`` with hostile device/precision."""
    import unet_rt

    path = ctx.path("tiny.pt")
    with open(path, "wb") as f:
        f.write(tiny_bytes())
    device = data.draw(hostile("device"), label="device")
    precision = data.draw(hostile("precision"), label="precision")
    must_fail = _device_problem(device, precision)
    case = f"unet_rt.Model(<tiny.pt>, device={describe(device)}, precision={describe(precision)})"
    ctx.rec.run(case, lambda: unet_rt.Model(path, device=device, precision=precision), Expect(must_fail=must_fail),
                ("device", "precision"), ctx.limits.load)


def _device_problem(device: Any, precision: Any) -> Optional[str]:
    """Why a CPU-only machine must refuse this device and precision."""
    if not (isinstance(device, str) and device.lower() in ("cpu", "auto")):
        return f"device={describe(device)} is not a device of this machine"
    if not (isinstance(precision, str) and precision.lower() in ("fp32", "float32", "f32", "auto", "bf16", "bfloat16")):
        return f"precision={describe(precision)} is not a CPU precision"
    return None


def _from_bytes(ctx: Context, data: st.DataObject) -> None:
    """``Model.from_bytes(data)`` with ``data`` of a wrong type."""
    import unet_rt

    good = tiny_bytes()
    value = data.draw(st.one_of(st.sampled_from(POOL), st.sampled_from(
        (bytearray(good), memoryview(good), np.frombuffer(good, np.uint8), good.decode("latin-1"), list(good[:64]),
         None, 5, 10**12, -1))), label="data")
    is_bytes_like = isinstance(value, (bytes, bytearray, memoryview)) or (
        isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1)
    must_fail = None if is_bytes_like else f"data={describe(value)} is not bytes"
    case = f"unet_rt.Model.from_bytes({describe(value)}, device='cpu', precision='fp32')"
    ctx.rec.run(case, lambda: unet_rt.Model.from_bytes(value, device="cpu", precision="fp32"),
                Expect(must_fail=must_fail), ("data",), ctx.limits.load)


# --- planning ------------------------------------------------------------------------

HUGE_SIDES = (10**6, 10**9, 10**13, 10**14, 2**31, 2**32 + 44, 2**62, 2**63 - 1, 2**63, 2**64, 10**30)


def _side() -> st.SearchStrategy[Any]:
    """One side length: usual, huge, an edge integer, or any hostile value."""
    return st.one_of(st.integers(1, 200), st.sampled_from(HUGE_SIDES), st.sampled_from(INTS), st.sampled_from(POOL))


def _shape(dims: int) -> st.SearchStrategy[Any]:
    """A spatial shape: usually ``dims`` sides, sometimes another count, or not a sequence."""
    return st.one_of(
        st.lists(_side(), min_size=dims, max_size=dims).map(tuple),
        st.lists(_side(), min_size=dims, max_size=dims).map(tuple),
        st.lists(_side(), min_size=0, max_size=5).map(tuple),
        st.sampled_from(POOL),
    )


def _is_sides(value: Any, dims: int, minimum: int = 1) -> bool:
    """A sequence of ``dims`` non-bool integers >= ``minimum``."""
    if _length(value) < 0:
        return False
    try:
        items = list(value)
    except TypeError:
        return False
    return len(items) == dims and all(is_int(v) and v >= minimum for v in items)


def planning(ctx: Context, data: st.DataObject) -> None:
    """``layout``, a ``Window`` and ``needed_input``, or a windowed segment."""
    target = data.draw(st.sampled_from(("layout", "layout", "window", "window", "piece")), label="target")
    name = data.draw(st.sampled_from(("tiny", "same", "volume")), label="model")
    model = ctx.model(name)
    dims = int(model.info["spatial_dims"])
    options = data.draw(_planning_options(), label="options")
    if target == "layout":
        return _layout(ctx, data, name, model, dims, options)
    if target == "window":
        return _window(ctx, data, name, model, dims, options)
    return _piece(ctx, data, name, model, dims)


def _planning_options() -> st.SearchStrategy[Dict[str, Any]]:
    """``tile``, ``batch_size`` and ``memory_budget``, each absent or hostile."""
    return st.fixed_dictionaries({}, optional={"tile": hostile("tile"), "batch_size": hostile("batch_size"),
                                               "memory_budget": hostile("memory_budget")})


def _options_problem(options: Dict[str, Any], dims: int) -> Optional[str]:
    """Why these planning options must be refused, or ``None``."""
    for key, value in options.items():
        if not acceptable(key, value, dims):
            return f"{key}={describe(value)} is not acceptable"
    return None


def _layout(ctx: Context, data: st.DataObject, name: str, model: Any, dims: int, options: Dict[str, Any]) -> None:
    """``model.layout(shape, **options)``: fast, and self-consistent when it returns."""
    shape = data.draw(_shape(dims), label="shape")
    must_fail = _options_problem(options, dims) or (None if _is_sides(shape, dims) else f"shape={describe(shape)} is not {dims} positive sides")
    case = f"{name}.layout({describe(shape)}, {kwargs_repr(options)})"
    result = ctx.rec.run(case, lambda: model.layout(shape, **options), Expect(must_fail=must_fail),
                         ("shape",) + tuple(options), ctx.limits.plan)
    if result is not None and must_fail is None:
        ctx.rec.check(case, _silent(layout_problem(result, list(shape))))


def _silent(problem: Optional[str]) -> Optional[str]:
    """A problem of a returned result, marked as a silent one."""
    return None if problem is None else f"silent: {problem}"


def _window_fields(dims: int) -> st.SearchStrategy[Dict[str, Any]]:
    """The keyword arguments of a ``Window``: hostile sides, ``origin`` optional."""
    fields = {"image": _shape(dims), "start": _shape(dims), "shape": _shape(dims)}
    return st.fixed_dictionaries(fields, optional={"origin": _shape(dims)})


def _window_problem(fields: Dict[str, Any], dims: int) -> Optional[str]:
    """Why a window of these fields cannot describe a region of an image."""
    for key in ("image", "shape"):
        if not _is_sides(fields[key], dims):
            return f"{key}={describe(fields[key])} is not {dims} positive sides"
    for key in ("start", "origin"):
        if key in fields and not (key == "origin" and fields[key] is None) \
                and not _is_sides(fields[key], dims, minimum=0):
            return f"{key}={describe(fields[key])} is not {dims} offsets"
    if any(int(s) + int(n) > int(i) for s, n, i in zip(fields["start"], fields["shape"], fields["image"])):
        return "the region reaches past the image"
    return None


def _window(ctx: Context, data: st.DataObject, name: str, model: Any, dims: int, options: Dict[str, Any]) -> None:
    """``Window(...)`` then ``model.needed_input(window, **options)``."""
    import unet_rt

    fields = data.draw(_window_fields(dims), label="window")
    case = f"unet_rt.Window({kwargs_repr(fields)})"
    window = ctx.rec.run(case, lambda: unet_rt.Window(**fields), Expect(must_fail=_window_type_problem(fields)),
                         tuple(fields), ctx.limits.plan)
    if window is None:
        return
    must_fail = _window_problem(fields, dims) or _options_problem(options, dims)
    case = f"{name}.needed_input({case}, {kwargs_repr(options)})"
    result = ctx.rec.run(case, lambda: model.needed_input(window, **options), Expect(must_fail=must_fail),
                         ("window",) + tuple(options), ctx.limits.plan)
    if result is not None and must_fail is None:
        ctx.rec.check(case, _silent(_needed_problem(result, fields)))


def _window_type_problem(fields: Dict[str, Any]) -> Optional[str]:
    """Why ``Window(**fields)`` itself must refuse: a field that is not a
    sequence of non-negative non-bool ints, or fields of different lengths."""
    lengths = set()
    for key, value in fields.items():
        if key == "origin" and value is None:
            continue  # the documented default: the image's origin
        length = _length(value)
        if not _is_sides(value, length, minimum=0):
            return f"{key}={describe(value)} is not a sequence of offsets/sizes"
        lengths.add(length)
    return None if len(lengths) == 1 else "the fields have different lengths"


def _length(value: Any) -> int:
    """``len(value)`` for sequences (not strings), else -1."""
    if isinstance(value, (str, bytes, bytearray)):
        return -1
    try:
        return len(value)
    except TypeError:
        return -1


def _needed_problem(result: Any, fields: Dict[str, Any]) -> Optional[str]:
    """What is wrong with ``needed_input``'s ``(first, end)`` for a window."""
    try:
        first, end = result
        pairs = list(zip(first, end, fields["image"], fields["start"], fields["shape"]))
    except (TypeError, ValueError):
        return f"needed_input returned {result!r}"
    for lo, hi, image, start, size in pairs:
        if not (0 <= lo <= start and start + size <= hi <= image):
            return f"needed input {result} does not hold the region {fields['start']}+{fields['shape']} within {fields['image']}"
    return None


def _whole(shape: Sequence[int], origin: Sequence[int]) -> np.ndarray:
    """Pixels ``origin .. origin + shape`` of an endless test image, a smooth
    function of the global coordinates (so any window of any image has them)."""
    grids = np.meshgrid(*[np.arange(o, o + s, dtype=np.float64) for o, s in zip(origin, shape)], indexing="ij")
    value = sum(np.sin(g * (0.13 + 0.07 * i)) for i, g in enumerate(grids))
    return (value * 50 + 100).astype(np.float32)


def _piece(ctx: Context, data: st.DataObject, name: str, model: Any, dims: int) -> None:
    """Segment a window of an image through the piece ``needed_input`` names:
    for small images, equal to the whole image's result; for huge ones, fast."""
    import unet_rt

    huge = data.draw(st.integers(0, 2), label="huge?") == 0
    limit = 60 if dims == 2 else 16
    sides = [data.draw(st.sampled_from((10**6, 10**13, 2**40)) if huge else st.integers(1, limit)) for _ in range(dims)]
    start = [data.draw(st.integers(0, s - 1)) for s in sides]
    size = [data.draw(st.integers(1, min(s - b, limit))) for s, b in zip(sides, start)]
    window = unet_rt.Window(image=tuple(sides), start=tuple(start), shape=tuple(size))
    output = data.draw(st.sampled_from(("raw", "probabilities", "labels")), label="output")
    tile = data.draw(st.sampled_from((48, 64) if huge else (None, 48, 64)) if dims == 2 else st.just(None), label="tile")
    kwargs: Dict[str, Any] = {"output": output, "input_range": (-100.0, 300.0), "tile": tile}
    case = f"{name}.needed_input({window!r}, tile={tile!r})"
    needed = ctx.rec.run(case, lambda: model.needed_input(window, tile=tile), Expect(), (), ctx.limits.plan)
    if needed is None:
        return
    first, end = needed
    if max(e - f for f, e in zip(first, end)) > 1200:
        return  # a whole default tile (legitimately): too big for this campaign's budget
    piece = _whole([e - f for f, e in zip(first, end)], first)
    kwargs["window"] = window.at(first)
    desc = f"<piece {piece.shape} of the test image at {tuple(first)}>"
    expect = segment_expect(model, piece.shape, kwargs)
    if not huge:
        case = f"{name}.segment(<test image {tuple(sides)}>, output={output!r}, input_range=(-100.0, 300.0), tile={tile!r})"
        whole = ctx.rec.run(case, lambda: model.segment(_whole(sides, [0] * dims), output=output,
                                                        input_range=(-100.0, 300.0), tile=tile), None, (),
                            ctx.limits.segment)
        if whole is None:
            return
        region = (Ellipsis,) + tuple(slice(b, b + n) for b, n in zip(start, size))
        expect.reference, expect.atol = whole[region], 1e-5
    segment(ctx, model, name, piece, desc, kwargs, expect)
