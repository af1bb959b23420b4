"""Arrays described by recipes (:class:`ArraySpec`), so that a case's log line
says how to rebuild its array, and the hypothesis strategies that draw them.

>>> a = build(ArraySpec((3, 4), "<f4", "nan", "neg", False, False, 0))
>>> a.shape, a.dtype.str, a.strides[1] < 0, bool(np.isnan(a).all())
((3, 4), '<f4', True, True)
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "DTYPES",
    "SUPPORTED",
    "FILLS",
    "LAYOUTS",
    "ArraySpec",
    "HugeSpec",
    "build",
    "dtype_of",
    "build_huge",
    "array_specs",
    "huge_specs",
    "ModelShape",
    "expected_shape",
]

#: Every kind of dtype numpy has, in both byte orders where that applies.
DTYPES: Tuple[str, ...] = (
    "|b1", "|i1", "|u1", "<i2", ">i2", "<u2", ">u2", "<i4", "<u4", "<i8", ">i8", "<u8",
    "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<c8", "<c16", "|O", "<M8[s]", "<m8[ns]",
    "|S3", "<U2", "|V4", "[('a', '<f4'), ('b', '|u1')]", "<f16" if hasattr(np, "float128") else "<f8",
)
#: The pixel types unet_rt reads (native and swapped byte order).
SUPPORTED = frozenset({"|u1", "<u2", ">u2", "<i2", ">i2", "<f2", ">f2", "<f4", ">f4", "<f8", ">f8"})
FILLS: Tuple[str, ...] = (
    "random", "zeros", "constant", "nan", "inf", "-inf", "some_nan", "some_inf", "huge", "-huge",
    "tiny", "subnormal", "-0.0", "extreme_mix", "max", "min", "alternating",
)
LAYOUTS: Tuple[str, ...] = ("c", "f", "step", "neg", "transpose", "zero_stride", "unaligned")


@dataclass(frozen=True)
class ArraySpec:
    """How to build one array: ``shape``, ``dtype`` (a numpy dtype string),
    ``fill`` (see :data:`FILLS`), memory ``layout`` (see :data:`LAYOUTS`),
    whether it is ``readonly`` or a ``memmap``, and the fill ``seed``."""

    shape: Tuple[int, ...]
    dtype: str
    fill: str
    layout: str
    readonly: bool
    memmap: bool
    seed: int


@dataclass(frozen=True)
class HugeSpec:
    """An array of a huge declared shape and (almost) no memory: ``kind``
    ``"broadcast"`` (``np.broadcast_to`` of a scalar) or ``"strided"``
    (``as_strided`` with zero strides)."""

    shape: Tuple[int, ...]
    dtype: str
    kind: str


def dtype_of(text: str) -> np.dtype:
    """The numpy dtype a recipe's dtype string names (structured ones included)."""
    if text.startswith("["):
        return np.dtype([(name, code) for name, code in eval(text, {})])  # noqa: S307 (our own literal)
    return np.dtype(text)


def _values(shape: Tuple[int, ...], fill: str, rng: np.random.Generator) -> np.ndarray:
    """Float64 values of one fill pattern."""
    size = int(np.prod(shape, dtype=np.int64))
    flat = rng.random(size) * 1000.0
    special = {
        "zeros": 0.0, "constant": 7.0, "nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e300,
        "-huge": -1e308, "tiny": 1e-300, "subnormal": 5e-324, "-0.0": -0.0, "max": np.finfo(np.float64).max,
        "min": -np.finfo(np.float64).max,
    }
    if fill in special:
        flat[:] = special[fill]
    elif fill == "some_nan":
        flat[rng.random(size) < 0.1] = np.nan
    elif fill == "some_inf":
        flat[rng.random(size) < 0.1] = rng.choice([np.inf, -np.inf])
    elif fill == "extreme_mix":
        flat = rng.choice(np.array([1e300, -1e308, 1e-300, 5e-324, -0.0, 0.0, 1.0, 3e38, -3e38]), size)
    elif fill == "alternating":
        flat = np.where(np.arange(size) % 2 == 0, 1e300, -1e300)
    return flat.reshape(shape)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``, whatever it is (without numpy warnings)."""
    with np.errstate(all="ignore"):
        if dtype.fields:
            out = np.zeros(values.shape, dtype)
            out[dtype.names[0]] = np.nan_to_num(values).astype(np.float32)
            return out
        if dtype.kind == "V":
            return np.zeros(values.shape, dtype)
        if dtype.kind in "OSU":
            return np.array(values.tolist(), dtype=object).astype(dtype)
        if dtype.kind in "Mm":
            return np.nan_to_num(values, posinf=0, neginf=0).clip(-1e9, 1e9).astype(np.int64).astype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return np.nan_to_num(values, nan=0, posinf=0, neginf=0).clip(info.min, info.max).astype(dtype)
        if dtype.kind == "b":
            return np.nan_to_num(values, nan=0, posinf=1, neginf=1).astype(dtype)
        return values.astype(dtype)


def _layout(shape: Tuple[int, ...], layout: str) -> Tuple[Tuple[int, ...], str]:
    """The shape of the base array to allocate for ``layout``."""
    if layout == "step":
        return tuple(2 * s for s in shape), layout
    if layout == "transpose":
        return tuple(reversed(shape)), layout
    return shape, layout


def _view(base: np.ndarray, layout: str) -> np.ndarray:
    """The view of ``base`` that has ``layout``."""
    if base.ndim == 0:
        return base
    if layout == "step":
        return base[tuple(slice(None, None, 2) for _ in range(base.ndim))]
    if layout == "neg":
        return base[tuple(slice(None, None, -1) for _ in range(base.ndim))]
    if layout == "transpose":
        return base.T
    return base


def build(spec: ArraySpec, directory: Optional[str] = None) -> np.ndarray:
    """The array ``spec`` describes (memmaps go to ``directory``)."""
    dtype = dtype_of(spec.dtype)
    rng = np.random.default_rng(spec.seed)
    if spec.layout == "zero_stride":
        array = np.lib.stride_tricks.as_strided(_cast(_values((1,), spec.fill, rng), dtype), spec.shape,
                                                (0,) * len(spec.shape), writeable=False)
        return array
    base_shape, layout = _layout(spec.shape, spec.layout)
    base = _cast(_values(base_shape, spec.fill, rng), dtype)
    if spec.layout == "f" and base.ndim >= 2:
        base = np.asfortranarray(base)
    if spec.layout == "unaligned":
        base = _unaligned(base)
    if spec.memmap and base.size and dtype.kind not in "O" and base.ndim:
        base = _memmap(base, directory)
    array = _view(base, layout)
    if spec.readonly:
        array = array.view()
        array.setflags(write=False)
    return array


def _unaligned(base: np.ndarray) -> np.ndarray:
    """A copy of ``base`` that starts one byte past an aligned address."""
    if not base.size or base.ndim == 0 or base.dtype.kind == "O" or base.dtype.itemsize < 2:
        return base
    raw = np.zeros(base.nbytes + 1, np.uint8)
    moved = np.frombuffer(raw.data, dtype=base.dtype, count=base.size, offset=1).reshape(base.shape)
    moved[...] = base
    return moved


def _memmap(base: np.ndarray, directory: Optional[str]) -> np.ndarray:
    """A ``.npy`` memmap in ``directory`` holding ``base``."""
    fd, path = tempfile.mkstemp(suffix=".npy", dir=directory)
    os.close(fd)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=base.dtype, shape=base.shape)
    mm[...] = base
    mm.flush()
    return mm


def build_huge(spec: HugeSpec) -> np.ndarray:
    """The zero-memory array ``spec`` describes."""
    dtype = np.dtype(spec.dtype)
    if spec.kind == "broadcast":
        return np.broadcast_to(np.ones((), dtype), spec.shape)
    return np.lib.stride_tricks.as_strided(np.ones(1, dtype), spec.shape, (0,) * len(spec.shape), writeable=False)


# --- strategies ----------------------------------------------------------------


def _side(small: int, large: int) -> st.SearchStrategy[int]:
    """A side length: mostly a usable image size, sometimes 0, 1 or 2."""
    return st.one_of(st.integers(0, 3), st.integers(small, large), st.integers(0, large))


def array_specs(max_side: int = 80, max_ndim: int = 6, dtypes: Sequence[str] = DTYPES,
                fills: Sequence[str] = FILLS, max_elements: int = 40000,
                ndims: Optional[Sequence[int]] = None) -> st.SearchStrategy[ArraySpec]:
    """Array recipes: 0-d to ``max_ndim``-d (or one of ``ndims``), any dtype,
    fill and layout; the last two axes are image-sized, the others short."""

    @st.composite
    def draw(data: st.DrawFn) -> ArraySpec:
        """Draws one recipe."""
        ndim = data(st.sampled_from(tuple(ndims)) if ndims else st.integers(0, max_ndim))
        image_axes = min(ndim, 2)
        short = [data(st.integers(0, 4)) for _ in range(ndim - image_axes)]
        sides = [data(_side(min(10, max_side), max_side)) for _ in range(image_axes)]
        shape = tuple(short + sides)
        while int(np.prod(shape, dtype=np.int64)) > max_elements:
            shape = tuple(max(1, s // 2) for s in shape)
        return ArraySpec(
            shape=shape,
            dtype=data(st.sampled_from(tuple(dtypes))),
            fill=data(st.sampled_from(tuple(fills))),
            layout=data(st.sampled_from(LAYOUTS)),
            readonly=data(st.booleans()),
            memmap=data(st.integers(0, 9)) == 0,
            seed=data(st.integers(0, 2**16)),
        )

    return draw()


HUGE_SIDES = (46341, 100000, 300000, 1 << 20, 10**7, 2**31 - 1, 2**31, 2**32 + 44)


def huge_specs(ndim_choices: Sequence[int] = (2, 3, 4)) -> st.SearchStrategy[HugeSpec]:
    """Zero-memory arrays whose declared result is terabytes or more."""

    @st.composite
    def draw(data: st.DrawFn) -> HugeSpec:
        """Draws one recipe."""
        ndim = data(st.sampled_from(tuple(ndim_choices)))
        sides = [data(st.sampled_from(HUGE_SIDES + (1, 2, 3, 64))) for _ in range(ndim)]
        sides[-1] = data(st.sampled_from(HUGE_SIDES))
        sides[-2] = data(st.sampled_from(HUGE_SIDES + (64,)))
        while math.prod(sides) < 10**11:
            sides[-1] *= 1024
        while math.prod(sides) * 16 >= 2**63:  # numpy's limit on an array's bytes
            biggest = sides.index(max(sides))
            sides[biggest] = max(1, sides[biggest] // 1024)
        return HugeSpec(tuple(sides), data(st.sampled_from(("<f4", "|u1", "<f8", "<u2", ">f4"))),
                        data(st.sampled_from(("broadcast", "strided"))))

    return draw()


# --- expected shapes -----------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the shape of a result depends on: the model's ``spatial_dims``,
    ``in_channels`` and ``out_channels``."""

    spatial_dims: int
    in_channels: int
    out_channels: int


_SPATIAL = {2: "yx", 3: "zyx"}


def infer_axes(shape: Tuple[int, ...], model: ModelShape) -> Optional[str]:
    """The axes unet_rt infers for ``shape`` (its documented rule), or
    ``None`` when it must refuse to guess.

    >>> infer_axes((5, 6), ModelShape(2, 1, 2)), infer_axes((3, 5, 6), ModelShape(2, 3, 2))
    ('yx', 'cyx')
    """
    spatial = _SPATIAL[model.spatial_dims]
    if len(shape) == model.spatial_dims:
        return spatial
    # A leading or trailing axis of the model's channel count (1 included)
    # is channels, unless both ends have that length.
    if len(shape) == model.spatial_dims + 1:
        first, last = shape[0] == model.in_channels, shape[-1] == model.in_channels
        if last and not first:
            return spatial + "c"
        if first and not last:
            return "c" + spatial
    return None


def axes_problem(shape: Tuple[int, ...], axes: str, model: ModelShape) -> Optional[str]:
    """Why ``axes`` cannot describe an array of ``shape`` for ``model``, or
    ``None`` when it does."""
    spatial = _SPATIAL[model.spatial_dims]
    # b (batch) may stand anywhere; a 2-D model reads z as the batch.
    batch = "bz" if model.spatial_dims == 2 else "b"
    if len(axes) != len(shape) or set(axes) - set("bc" + spatial + batch) or len(set(axes)) != len(axes):
        return f"axes {axes!r} do not describe shape {shape}"
    if not set(spatial) <= set(axes):
        return f"axes {axes!r} lack spatial axes"
    if len(set(batch) & set(axes)) > 1:
        return f"axes {axes!r} have two batch axes"
    channels = shape[axes.index("c")] if "c" in axes else 1
    if channels != model.in_channels:
        return f"{channels} channel(s) given to a {model.in_channels}-channel model"
    if any(s == 0 for s in shape):
        return f"empty array of shape {shape}"
    return None


def expected_shape(shape: Tuple[int, ...], axes: Optional[str], output: str,
                   model: ModelShape) -> Tuple[Optional[Tuple[int, ...]], Optional[str]]:
    """``(result shape, None)`` for an array of ``shape`` with ``axes``, or
    ``(None, why it must fail)``.

    >>> expected_shape((2, 5, 6), "byx", "probabilities", ModelShape(2, 1, 3))
    ((2, 3, 5, 6), None)
    """
    if not isinstance(axes, (str, type(None))):
        return None, f"axes {axes!r} is not a string"
    named = infer_axes(shape, model) if axes is None else axes.lower()
    if named is None:
        return None, f"axes of shape {shape} are ambiguous"
    problem = axes_problem(shape, named, model)
    if problem:
        return None, problem
    sizes: Dict[str, int] = dict(zip(named, shape))
    spatial = tuple(sizes[a] for a in _SPATIAL[model.spatial_dims])
    per_image = spatial if output in ("labels", "instances") else (model.out_channels,) + spatial
    batches = [sizes[a] for a in ("b", "z") if a in sizes and a not in _SPATIAL[model.spatial_dims]]
    return tuple(batches) + per_image, None
