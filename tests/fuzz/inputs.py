"""Campaigns on what a call reads and writes: ``arrays`` (any array into
``segment``, ``forward`` and ``percentile_range``), ``numerics`` (extreme
and non-finite pixel values under every normalization) and ``outputs``
(every kind of ``out=`` array)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .arrays import DTYPES, SUPPORTED, ArraySpec, HugeSpec, array_specs, build, build_huge, dtype_of, huge_specs
from .common import OUTPUTS, Context, model_shape, segment, segment_expect
from .values import kwargs_repr
from .contract import Expect

__all__ = ["arrays", "numerics", "outputs"]

#: Kinds of dtype no call may turn into pixels.
NOT_PIXELS = "cOMmSUV"
NONFINITE_FILLS = {"nan", "inf", "-inf", "some_nan", "some_inf"}
SPATIAL = {2: "yx", 3: "zyx"}


# --- arrays ------------------------------------------------------------------------


def _axes_strategy(ndim: int, dims: int) -> st.SearchStrategy[Optional[str]]:
    """``None``, a well-formed axes string for ``ndim`` axes, or junk."""
    letters = "bc" + SPATIAL[dims]
    well_formed = st.permutations(letters).map(lambda p: "".join(p)[:ndim]) if ndim <= len(letters) else st.just("yx")
    junk = st.sampled_from(("yx", "YX", "byx", "cyx", "yxc", "bcyx", "byxc", "zyx", "czyx", "xy", "yy", "", "q",
                            "bzyx", "b" * ndim, "yx" + "c" * max(0, ndim - 2)))
    return st.one_of(st.none(), st.none(), well_formed, junk)


def _spec_problem(spec: ArraySpec) -> Optional[str]:
    """Why no call may accept an array of ``spec`` (``None`` if one may)."""
    dtype = dtype_of(spec.dtype)
    if dtype.kind in NOT_PIXELS or dtype.fields:
        return f"dtype {dtype} is not a pixel type"
    return None


#: Zero-memory arrays of huge declared shapes that every run tries once.
FIXED_HUGE: Tuple[HugeSpec, ...] = (
    HugeSpec((300000, 300000), "<f4", "broadcast"),
    HugeSpec((300000, 300000), "|u1", "strided"),
    HugeSpec((2**30, 2**30), "<f4", "broadcast"),
    HugeSpec((10**6, 10**6), ">f4", "broadcast"),
)


def _fixed_huge(ctx: Context) -> None:
    """The :data:`FIXED_HUGE` arrays, every output, on the tiny model (once per run)."""
    if not ctx.once("fixed huge arrays"):
        return
    model = ctx.model("tiny")
    for spec in FIXED_HUGE:
        for output in OUTPUTS:
            expect = Expect(output=output, must_fail=f"the result of a {spec.shape} image takes terabytes")
            segment(ctx, model, "tiny", build_huge(spec), repr(spec), {"output": output}, expect)


def arrays(ctx: Context, data: st.DataObject) -> None:
    """One hostile array into ``segment`` (mostly), ``forward`` or ``percentile_range``."""
    _fixed_huge(ctx)
    name = data.draw(st.sampled_from(("tiny", "tiny", "rgb", "volume", "same")), label="model")
    model = ctx.model(name)
    dims = model_shape(model).spatial_dims
    if data.draw(st.integers(0, 9), label="huge?") == 0:
        return _huge(ctx, data, name, model)
    sizes = dict(max_side=80 if dims == 2 else 20, max_elements=40000 if dims == 2 else 12000)
    if data.draw(st.booleans(), label="nearly valid?"):  # a pixel type and rank the model takes
        sizes.update(dtypes=sorted(SUPPORTED), ndims=(dims, dims, dims + 1))
    spec = data.draw(array_specs(**sizes), label="array")
    array = build(spec, ctx.tmp)
    target = data.draw(st.sampled_from(("segment", "segment", "segment", "forward", "percentile_range")), label="target")
    if target == "forward":
        return _forward(ctx, name, model, spec, array)
    axes = data.draw(_axes_strategy(array.ndim, dims), label="axes")
    if target == "percentile_range":
        return _percentile_range(ctx, name, model, spec, array, axes)
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    kwargs: Dict[str, Any] = {"output": output} if axes is None else {"axes": axes, "output": output}
    expect = segment_expect(model, array.shape, kwargs, must_fail=_spec_problem(spec))
    if expect.must_fail is None and _is_unusual(spec):
        _add_plain_reference(ctx, model, name, array, repr(spec), kwargs, expect)
    segment(ctx, model, name, array, repr(spec), kwargs, expect, check_consistency=spec.fill in NONFINITE_FILLS)


def _is_unusual(spec: ArraySpec) -> bool:
    """A supported pixel type in an unusual layout, byte order or buffer."""
    return spec.dtype in SUPPORTED and (spec.layout != "c" or spec.dtype.startswith(">") or spec.readonly or spec.memmap)


def _add_plain_reference(ctx: Context, model: Any, name: str, array: np.ndarray, desc: str, kwargs: Dict[str, Any],
                         expect: Expect) -> None:
    """Makes the result of a plain copy (C-contiguous, native byte order,
    writeable) the reference the unusual array's result must equal."""
    plain = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("="))
    case = f"(reference) {name}.segment(<plain copy of {desc}>, {kwargs_repr(kwargs)})"
    reference = ctx.rec.run(case, lambda: model.segment(plain, **kwargs), None, tuple(kwargs), ctx.limits.segment)
    if isinstance(reference, np.ndarray):
        expect.reference = reference
        expect.atol = 0.0 if expect.output in ("labels", "instances") else 1e-6


def _huge(ctx: Context, data: st.DataObject, name: str, model: Any) -> None:
    """A zero-memory array whose result would take terabytes: a clear error."""
    dims = model_shape(model).spatial_dims
    spec: HugeSpec = data.draw(huge_specs((dims, dims + 1)), label="huge")
    array = build_huge(spec)
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    axes = None if array.ndim == dims else "b" + SPATIAL[dims]
    kwargs = {"output": output} if axes is None else {"axes": axes, "output": output}
    expect = Expect(output=output, must_fail=f"the result of a {spec.shape} image takes terabytes")
    segment(ctx, model, name, array, repr(spec), kwargs, expect)


def _forward(ctx: Context, name: str, model: Any, spec: ArraySpec, array: np.ndarray) -> None:
    """``model.forward(array)``: a batch of valid size gives the network's output."""
    info = model.info
    must_fail = _spec_problem(spec)
    shape = None
    dims = int(info["spatial_dims"])
    valid = array.ndim == dims + 2 and array.shape[0] >= 1 and array.shape[1] == info["in_channels"] and all(
        s >= info["smallest_size"] and (s - info["size_offset"]) % info["size_multiple"] == 0 for s in array.shape[2:])
    if must_fail is None and not valid:
        must_fail = f"shape {array.shape} is not a batch of valid size"
    if valid:
        lost = 2 * int(info["halo"]) if info["padding"] == "valid" else 0
        shape = (array.shape[0], int(info["out_channels"])) + tuple(s - lost for s in array.shape[2:])
    # Non-finite input gives non-finite output: the finiteness check wants a NonFiniteError then.
    expect = Expect(output="raw", shape=shape, must_fail=must_fail)
    ctx.rec.run(f"{name}.forward({spec!r})", lambda: model.forward(array), expect, ("batch",), ctx.limits.segment)


def _percentile_range(ctx: Context, name: str, model: Any, spec: ArraySpec, array: np.ndarray,
                      axes: Optional[str]) -> None:
    """``model.percentile_range(array, axes)``: ``None``, or finite low <= high."""
    case = f"{name}.percentile_range({spec!r}, axes={axes!r})"
    result = ctx.rec.run(case, lambda: model.percentile_range(array, axes), None, ("image", "axes"), ctx.limits.segment)
    if result is None:
        return
    values = np.asarray(result, dtype=np.float64)
    if _spec_problem(spec):
        ctx.rec.check(case, f"silent: returned {result!r} for {_spec_problem(spec)}")
    elif values.shape[-1:] != (2,) or not np.isfinite(values).all() or (values[..., 0] > values[..., 1]).any():
        ctx.rec.check(case, f"silent: percentile range {result!r} is not finite low <= high")


# --- numerics ------------------------------------------------------------------------

NUMERIC_MODELS = ("tiny", "zscore", "scale", "scale_max", "none", "sigmoid", "identity", "same")
EXTREMES = (1e300, -1e308, 1e-300, 5e-324, -0.0, 0.0, 1.0, 3.4e38, -3.4e38, 1.7976931348623157e308, 65504.0, 1e38)


def _extremes(dtype: str) -> Tuple[float, ...]:
    """:data:`EXTREMES` that ``dtype`` holds as finite values."""
    with np.errstate(all="ignore"):
        cast = np.array(EXTREMES, dtype=np.float64).astype(dtype).astype(np.float64)
    return tuple(float(v) for v in cast if np.isfinite(v))


def _pixels(dtype: str, finite: bool) -> st.SearchStrategy[float]:
    """Pixel values of ``dtype``: any float of its width, or an extreme."""
    width = {"<f2": 16, ">f2": 16, "<f4": 32, ">f4": 32}.get(dtype, 64)
    floats = st.floats(allow_nan=not finite, allow_infinity=not finite, width=width)
    return st.one_of(floats, st.sampled_from(_extremes(dtype)))


def numerics(ctx: Context, data: st.DataObject) -> None:
    """A float image of extreme (finite unless drawn otherwise) values under
    one normalization: finite probabilities and raw output, or a clear error."""
    name = data.draw(st.sampled_from(NUMERIC_MODELS), label="model")
    model = ctx.model(name)
    dtype = data.draw(st.sampled_from(("<f8", "<f8", "<f4", ">f4", "<f2", ">f8")), label="dtype")
    finite = data.draw(st.integers(0, 4), label="finite?") > 0
    shape = data.draw(st.tuples(st.integers(1, 64), st.integers(1, 64)), label="shape")
    array = data.draw(hnp.arrays(np.dtype(dtype), shape, elements=_pixels(dtype, finite), fill=_pixels(dtype, finite)),
                      label="image")
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    kwargs: Dict[str, Any] = {"output": output}
    propagate = ctx.has_nonfinite and not finite and data.draw(st.booleans(), label="propagate?")
    if propagate:
        kwargs["nonfinite"] = "propagate"
    desc = _describe_values(array)
    expect = segment_expect(model, array.shape, kwargs, nonfinite_ok=propagate)
    if dtype.startswith(">"):
        _add_plain_reference(ctx, model, name, array, desc, kwargs, expect)
    segment(ctx, model, name, array, desc, kwargs, expect, check_consistency=not propagate)


def _describe_values(array: np.ndarray) -> str:
    """A rebuildable description of a drawn array: its dtype, shape and
    distinct values (with counts), or its full contents when small."""
    values, counts = np.unique(array.astype(np.float64).ravel(), return_counts=True)
    if array.size <= 16 or values.size <= 6:
        listing = ", ".join(f"{v!r}x{c}" for v, c in zip(values.tolist(), counts.tolist()))
        return f"np.array(dtype={array.dtype.str}, shape={array.shape}, values=[{listing}] {_positions(array)})"
    return (f"np.array(dtype={array.dtype.str}, shape={array.shape}, {values.size} distinct values in "
            f"[{values.min()!r}, {values.max()!r}]: {np.array2string(array.astype(np.float64), threshold=64)})")


def _positions(array: np.ndarray) -> str:
    """Where the rarest value sits (enough to rebuild small drawn arrays)."""
    flat = array.astype(np.float64).ravel()
    values, counts = np.unique(flat, return_counts=True)
    if values.size < 2:
        return ""
    rare = values[np.argmin(counts)]
    where = np.flatnonzero(flat == rare)[:8].tolist()
    return f"; {rare!r} at flat {where}"


# --- outputs -------------------------------------------------------------------------

OUT_KINDS = ("array",) * 12 + ("wrong_shape", "wrong_shape", "overlap", "overlap", "list", "tuple", "memoryview",
                                "bytearray", "masked", "matrix", "scalar")
NATURAL = {"labels": "|u1", "probabilities": "<f4", "raw": "<f4", "instances": "<u4"}
INSTANCE_DTYPES = {"<u4", "<u8", "<i8"}


def outputs(ctx: Context, data: st.DataObject) -> None:
    """One ``out=`` array (any dtype, layout, shape, or not an array) for
    one output mode: refused, or filled with exactly the fresh result."""
    name = data.draw(st.sampled_from(("tiny", "tiny", "rgb")), label="model")
    model = ctx.model(name)
    batched = data.draw(st.booleans(), label="batched")
    h, w = data.draw(st.tuples(st.integers(20, 70), st.integers(20, 70)), label="size")
    channels = int(model.info["in_channels"])
    image_shape = ((2,) if batched else ()) + ((channels,) if channels > 1 else ()) + (h, w)
    image = np.random.default_rng(h * 100 + w).random(image_shape).astype(np.float32) * 100
    axes = ("b" if batched else "") + ("c" if channels > 1 else "") + "yx"
    output = data.draw(st.sampled_from(OUTPUTS), label="output")
    base = {"axes": axes, "output": output}
    reference = model.segment(image.copy(), **base)
    kind = data.draw(st.sampled_from(OUT_KINDS), label="kind")
    dtype = data.draw(st.one_of(st.sampled_from(DTYPES), st.just(NATURAL[output])), label="dtype")
    layout = data.draw(st.sampled_from(("c", "f", "step", "neg", "transpose", "zero_stride", "unaligned")), label="layout")
    readonly = data.draw(st.integers(0, 5), label="readonly?") == 0
    memmap = data.draw(st.integers(0, 5), label="memmap?") == 0
    out, desc, why = _make_out(ctx, kind, reference.shape, dtype, layout, readonly, memmap, image)
    _run_out(ctx, model, name, image, base, out, desc, why, reference, dtype)


def _make_out(ctx: Context, kind: str, shape: Tuple[int, ...], dtype: str, layout: str, readonly: bool,
              memmap: bool, image: np.ndarray) -> Tuple[Any, str, Optional[str]]:
    """The ``out=`` value of one case, its description, and why it must be
    refused regardless of dtype (``None`` if it need not be)."""
    if kind in ("array", "wrong_shape"):
        target = shape if kind == "array" else shape[:-1] + (shape[-1] + 1,)
        spec = ArraySpec(target, dtype, "zeros", layout, readonly, memmap, 0)
        why = None if kind == "array" else "out has the wrong shape"
        if readonly or layout == "zero_stride":
            why = why or "out is not writeable"
        return build(spec, ctx.tmp), repr(spec), why
    if kind == "overlap":
        overlapped = image.view(np.uint8).reshape(-1)[: int(np.prod(shape))].reshape(shape)
        return overlapped, f"<uint8 view of the image's bytes, shape {shape}>", None
    zeros = np.zeros(shape, np.uint8)
    others = {
        "list": (zeros.tolist(), "list"), "tuple": (tuple(zeros.tolist()), "tuple"),
        "memoryview": (memoryview(zeros), "memoryview"), "bytearray": (bytearray(zeros.tobytes()), "bytearray"),
        "masked": (np.ma.masked_array(zeros), "np.ma.masked_array"), "scalar": (np.uint8(0), "np.uint8(0)"),
        "matrix": (np.asmatrix(zeros) if zeros.ndim == 2 else np.ma.masked_array(zeros),
                   "np.matrix" if zeros.ndim == 2 else "np.ma.masked_array"),
    }
    value, desc = others[kind]
    refuse = None if kind in ("masked", "matrix") else f"out is a {desc}, not an array"
    return value, f"<{desc} of zeros, shape {shape}>", refuse


def _run_out(ctx: Context, model: Any, name: str, image: np.ndarray, base: Dict[str, Any], out: Any, desc: str,
             why: Optional[str], reference: np.ndarray, dtype: str) -> None:
    """Segments with ``out=``: refused when ``why``, else ``out`` filled with the reference."""
    output = base["output"]
    original = image.copy()
    if why is None and output == "instances" and isinstance(out, np.ndarray) and (
            out.dtype.fields or out.dtype.newbyteorder("=").str not in INSTANCE_DTYPES):
        why = f"instances into {out.dtype} could wrap"
    if why is None and isinstance(out, np.ndarray) and (out.dtype.kind in "cOMmSUV" or out.dtype.fields):
        why = f"out of dtype {out.dtype} cannot hold {output}"
    tolerance = 0.0 if output in ("labels", "instances") else (2e-3 if isinstance(out, np.ndarray) and out.dtype.itemsize <= 2 else 1e-6)
    expect = Expect(output=None, must_fail=why)
    case = f"{name}.segment(<image {image.shape} float32>, {', '.join(f'{k}={v!r}' for k, v in base.items())}, out={desc})"
    result = ctx.rec.run(case, lambda: model.segment(image, out=out, **base), expect, ("out",), ctx.limits.segment)
    if result is None or why is not None:
        return
    if result is not out:
        ctx.rec.check(case, "silent: did not return the out= array itself")
    if not np.array_equal(image, original):
        ctx.rec.check(case, "silent: the call changed the image (out overlaps it)")
    got = np.asarray(result)
    if got.shape != reference.shape:
        ctx.rec.check(case, f"silent: out has shape {got.shape}, the result {reference.shape}")
        return
    with np.errstate(all="ignore"):
        diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    if not (diff <= tolerance).all():
        ctx.rec.check(case, f"silent: out={got.dtype} holds values that differ from the result by up to "
                            f"{np.nanmax(diff)!r} (tolerance {tolerance})")
