"""Segmenting one block: the code that runs inside each Dask task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..model import Model
from ._normalize import affine, apply_affine
from ._spec import ModelSpec, load_model

__all__ = ["BlockPlan", "segment_window", "dask_block", "overlaps"]


@dataclass(frozen=True)
class BlockPlan:
    """How blocks are segmented (small and picklable: one per graph).

    Attributes:
        spatial_dims: 2 or 3.
        depth: overlap per side (see :func:`unet_rt.dask.block_depth`).
        output: the engine output, ``"labels"``, ``"probabilities"`` or ``"raw"``.
        padded: whether the array was extended by ``depth`` at its borders
            (Dask boundary modes); otherwise blocks at the array's borders have
            no overlap on that side and the engine mirrors there, exactly as it
            does for the whole array.
        tile, batch_size, memory_budget: passed to :meth:`unet_rt.Model.segment`.
    """

    spatial_dims: int
    depth: int
    output: str
    padded: bool = False
    tile: Optional[Tuple[int, ...]] = None
    batch_size: Optional[int] = None
    memory_budget: Optional[int] = None


def overlaps(start: int, stop: int, size: int, depth: int, padded: bool) -> Tuple[int, int]:
    """Pixels of context a block ``[start, stop)`` of an axis of ``size`` has
    on its left and right.

    >>> overlaps(0, 64, 200, 20, False), overlaps(64, 128, 200, 20, False), overlaps(0, 64, 200, 20, True)
    ((0, 20), (20, 20), (20, 20))
    """
    if padded:
        return depth, depth
    return min(depth, start), min(depth, size - stop)


def segment_window(
    model: Model,
    window: np.ndarray,
    plan: BlockPlan,
    crop: Sequence[slice],
    ranges: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Segments a canonical window ``(b, c, spatial...)`` and keeps ``crop``
    (one slice per spatial axis) of the result.

    ``ranges``, one ``(low, high)`` row per image of the window, normalizes
    the pixels here with the whole image's percentiles; the model must then
    have been loaded with its own normalization disabled
    (:attr:`ModelSpec.raw_input`).
    """
    if ranges is not None:
        normalized = np.empty(window.shape, np.float32)
        for i in range(window.shape[0]):
            scale, shift = affine(float(ranges[i][0]), float(ranges[i][1]))
            apply_affine(window[i], scale, shift, out=normalized[i])
        window = normalized
    spatial = "yx" if plan.spatial_dims == 2 else "zyx"
    result = model.segment(
        window,
        axes="bc" + spatial,
        output=plan.output,
        tile=list(plan.tile) if plan.tile is not None else None,
        batch_size=plan.batch_size,
        memory_budget=plan.memory_budget,
    )
    index = (slice(None),) * (result.ndim - plan.spatial_dims) + tuple(crop)
    return np.ascontiguousarray(result[index])


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
    overlap (``trim=False``); the kernel finds its place from ``block_info``,
    segments it with the worker's cached model and returns its own interior."""
    if block_info is None:  # pragma: no cover - dtype and meta are always given
        raise RuntimeError("unet_rt.dask: the block kernel needs block_info")
    out = block_info[None]
    location, shape = out["array-location"], out["shape"]
    sd = plan.spatial_dims
    crop = []
    for k in range(sd):
        axis = len(shape) - sd + k
        start, stop = location[axis]
        left, right = overlaps(start, stop, shape[axis], plan.depth, plan.padded)
        got = block.shape[block.ndim - sd + k]
        if got != stop - start + left + right:  # pragma: no cover - guarded by the chunking
            raise RuntimeError(
                f"unet_rt.dask: block of length {got} on spatial axis {k} does not hold {stop - start} pixels "
                f"with overlaps {left} and {right}"
            )
        crop.append(slice(left, left + stop - start))
    rows = None
    if ranges is not None:
        rows = np.asarray(ranges)[location[0][0] : location[0][1]]
    model = load_model(spec, model_data)
    return segment_window(model, block, plan, crop, rows)
