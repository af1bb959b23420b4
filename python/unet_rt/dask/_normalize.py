"""Whole-image percentile normalization, computed block by block.

``unet_rt.segment`` maps each image's ``low`` and ``high`` percentiles to 0
and 1 (``"percentile"`` normalization). A block sees only part of the image,
so its own percentiles differ; these functions compute the whole image's
values from per-block statistics exactly as the engine does (an exact
histogram for 8- and 16-bit pixels; for floats every value, or above
``2**24`` values per image the same strided sample the engine takes). The
blocks pass them to the engine as ``input_range``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["StatsPlan", "block_stats", "combine_stats", "finish_stats", "PERCENTILE_SAMPLE"]

#: Above this many values per image the engine samples floats with a stride.
PERCENTILE_SAMPLE = 1 << 24

# dtype -> (bins, value of bin 0) for the dtypes the engine counts exactly.
_HISTOGRAM = {np.dtype(np.uint8): (256, 0), np.dtype(np.uint16): (65536, 0), np.dtype(np.int16): (65536, -32768)}


@dataclass(frozen=True)
class StatsPlan:
    """What per-block statistics need: the per-image shape ``(C, spatial...)``
    (the engine's view of one image), the pixel dtype, and the percentiles."""

    image_shape: Tuple[int, ...]
    dtype: str
    low: float
    high: float

    @property
    def histogram(self) -> Optional[Tuple[int, int]]:
        """``(bins, offset)`` for integer pixels, ``None`` for floats."""
        return _HISTOGRAM.get(np.dtype(self.dtype))

    @property
    def step(self) -> int:
        """The stride of the engine's float sample (1: every value)."""
        n = int(np.prod(self.image_shape))
        return max(1, math.ceil(n / PERCENTILE_SAMPLE))


Stats = Dict[int, np.ndarray]


def block_stats(block: np.ndarray, origin: Sequence[int], plan: StatsPlan) -> Stats:
    """Statistics of one canonical block ``(b, c, spatial...)`` whose first
    element sits at ``origin`` of the canonical array: per image index, a
    histogram (integers) or the block's share of the engine's sample (floats)."""
    result: Stats = {}
    hist = plan.histogram
    for i in range(block.shape[0]):
        image = np.asarray(block[i])
        if hist is not None:
            bins, offset = hist
            values = image.astype(np.int64) - offset if offset else image
            result[int(origin[0]) + i] = np.bincount(values.ravel(), minlength=bins).astype(np.int64)
        elif plan.step == 1:
            result[int(origin[0]) + i] = image.ravel().copy()
        else:
            result[int(origin[0]) + i] = image[_sample_mask(image.shape, origin[1:], plan)]
    return result


def _sample_mask(shape: Sequence[int], origin: Sequence[int], plan: StatsPlan) -> np.ndarray:
    """Elements of a block whose flat index in the image (C order over
    ``(c, spatial...)``, as the engine iterates) is a multiple of the step."""
    strides = np.cumprod((1,) + tuple(plan.image_shape[:0:-1]))[::-1]
    index = np.zeros((), np.int64)
    for axis, (n, o, s) in enumerate(zip(shape, origin, strides)):
        coords = (np.arange(n, dtype=np.int64) + int(o)) * int(s)
        index = index[..., None] + coords if axis else coords
    return index % plan.step == 0


def combine_stats(plan: StatsPlan, *parts: Stats) -> Stats:
    """Merges per-block statistics: sums histograms, concatenates samples."""
    merged: Dict[int, List[np.ndarray]] = {}
    for part in parts:
        for image, values in part.items():
            merged.setdefault(image, []).append(values)
    if plan.histogram is not None:
        return {image: np.sum(values, axis=0) for image, values in merged.items()}
    return {image: np.concatenate(values) for image, values in merged.items()}


def finish_stats(stats: Stats, images: int, plan: StatsPlan) -> np.ndarray:
    """The ``(images, 2)`` array of each image's ``(low, high)`` percentile
    values, computed as the engine computes them."""
    out = np.zeros((images, 2), np.float64)
    for image in range(images):
        values = stats.get(image)
        if values is None:
            continue
        if plan.histogram is not None:
            bins, offset = plan.histogram
            out[image] = [_histogram_percentile(values, q, offset) for q in (plan.low, plan.high)]
        else:
            sample = np.asarray(values, np.float64)
            out[image] = [_select_percentile(sample, q) for q in (plan.low, plan.high)]
    return out


def _position(q: float, n: int) -> Tuple[float, int]:
    pos = (min(max(float(q), 0.0), 100.0) / 100.0) * float(n - 1)
    return pos, int(math.floor(pos))


def _select_percentile(values: np.ndarray, q: float) -> float:
    """``numpy.percentile`` (linear) with the engine's rounding: ``a + (b - a) * t``."""
    n = values.size
    if n == 0:
        return 0.0
    pos, below = _position(q, n)
    kth = [below] if below + 1 >= n else [below, below + 1]
    part = np.partition(values, kth)
    a = float(part[below])
    b = float(part[below + 1]) if below + 1 < n else a
    return a + (b - a) * (pos - below)


def _histogram_percentile(counts: np.ndarray, q: float, offset: int) -> float:
    n = int(counts.sum())
    if n == 0:
        return 0.0
    pos, below = _position(q, n)
    cumulative = np.cumsum(counts)
    rank = lambda k: float(int(np.searchsorted(cumulative, k, side="right")) + offset)  # noqa: E731
    a = rank(below)
    b = rank(below + 1) if below + 1 < n else a
    return a + (b - a) * (pos - below)
