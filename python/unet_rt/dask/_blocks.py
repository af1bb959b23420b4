"""Segmenting one block: the code that runs inside each Dask task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .._window import Window
from ..model import Model
from ._spec import ModelSpec, load_model
from ._tiling import Tiling

__all__ = ["BlockPlan", "segment_block", "dask_block", "overlaps"]


@dataclass(frozen=True)
class BlockPlan:
    """How blocks are segmented (small and picklable: one per graph).

    Attributes:
        spatial_dims: 2 or 3.
        output: the engine output, ``"labels"``, ``"probabilities"`` or ``"raw"``.
        tiling: the whole image's tiling, the same for every block.
        depth: overlap per spatial axis that ``map_overlap`` adds to blocks.
        padded: whether Dask extended the array at its borders (boundary
            modes other than ``"reflect"``); otherwise blocks at the array's
            borders have no overlap on that side and the engine mirrors
            there, exactly as it does for the whole array.
        memory_budget: passed to :meth:`unet_rt.Model.segment` (with the
            tiling fixed it bounds nothing but the fallback after running
            out of device memory).
        tta: test-time augmentation, as in :meth:`unet_rt.Model.segment`
            (tile by tile, so blocks stay exact).
        nonfinite: what NaN or infinity in a block's input or output does,
            as in :meth:`unet_rt.Model.segment`.
    """

    spatial_dims: int
    output: str
    tiling: Tiling
    depth: Tuple[int, ...] = ()
    padded: bool = False
    memory_budget: Optional[int] = None
    tta: str = "none"
    nonfinite: str = "raise"


def overlaps(start: int, stop: int, size: int, depth: int, padded: bool) -> Tuple[int, int]:
    """Pixels of context a block ``[start, stop)`` of an axis of ``size`` has
    on its left and right in ``map_overlap``.

    >>> overlaps(0, 64, 200, 20, False), overlaps(64, 128, 200, 20, False), overlaps(0, 64, 200, 20, True)
    ((0, 20), (20, 20), (20, 20))
    """
    if padded:
        return depth, depth
    return min(depth, start), min(depth, size - stop)


def segment_block(
    model: Model,
    data: np.ndarray,
    window: Window,
    plan: BlockPlan,
    ranges: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Segments the canonical input ``data`` ``(b, c, spatial...)`` as the
    ``window`` of the whole image it belongs to: the result is the whole
    image's over the window's region, bit for bit.

    ``ranges``, one ``(low, high)`` row per image, are the whole images'
    percentile values for models with percentile normalization (``None``:
    each block normalizes with its own input's percentiles)."""
    spatial = "yx" if plan.spatial_dims == 2 else "zyx"
    result = model.segment(
        data,
        axes="bc" + spatial,
        output=plan.output,
        window=window,
        input_range=ranges,
        memory_budget=plan.memory_budget,
        tta=plan.tta,
        nonfinite=plan.nonfinite,
        **plan.tiling.options(),
    )
    return np.ascontiguousarray(result)


def dask_block(
    block: np.ndarray,
    *,
    spec: ModelSpec,
    plan: BlockPlan,
    ranges: Optional[np.ndarray] = None,
    model_data: Optional[bytes] = None,
    block_info: Optional[Dict[Any, Any]] = None,
) -> np.ndarray:
    """The ``map_overlap`` kernel: ``block`` is a canonical block with its
    overlap (``trim=False``); the kernel finds its place from ``block_info``
    and segments its own region as a window of the whole image."""
    if block_info is None:  # pragma: no cover - dtype and meta are always given
        raise RuntimeError("unet_rt.dask: the block kernel needs block_info")
    out = block_info[None]
    location, shape = out["array-location"], out["shape"]
    sd = plan.spatial_dims
    start, stop, have_start, have_stop = [], [], [], []
    for k in range(sd):
        axis = len(shape) - sd + k
        lo, hi = location[axis]
        left, right = overlaps(lo, hi, shape[axis], plan.depth[k], plan.padded)
        got = block.shape[block.ndim - sd + k]
        if got != hi - lo + left + right:  # pragma: no cover - guarded by the chunking
            raise RuntimeError(
                f"unet_rt.dask: block of length {got} on spatial axis {k} does not hold {hi - lo} pixels "
                f"with overlaps {left} and {right}"
            )
        start.append(lo)
        stop.append(hi)
        have_start.append(lo - left)
        have_stop.append(hi + right)
    window, index = plan.tiling.input_window(start, stop, have_start, have_stop)
    rows = None
    if ranges is not None:
        rows = np.asarray(ranges)[location[0][0] : location[0][1]]
    model = load_model(spec, model_data)
    return segment_block(model, block[(slice(None), slice(None)) + index], window, plan, rows)
