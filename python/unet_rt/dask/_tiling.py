"""The whole image's tiling, chosen once on the client, and the blocks cut
along it.

Every block is segmented as a :class:`unet_rt.Window` of the whole image:
the engine runs the whole image's tiles that write into the block, in
batches of the whole image's sizes, so each block holds the whole-image
result bit for bit. That needs one tiling for all blocks (tile and batch
size, decided here and passed to every task) and, per block, the input
those tiles read (:meth:`Tiling.needed`). Block boundaries on multiples of
the tile stride keep every tile inside one block, so no tile runs twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .._window import Window
from ..model import Model

__all__ = ["Tiling", "plan_tiling", "grid_chunks", "fitted_chunks", "block_shape"]


@dataclass(frozen=True)
class Tiling:
    """One tiling of the whole image, shared by every block (small and
    picklable: tasks carry it).

    Attributes:
        image: spatial shape of the image the engine tiles: the array's,
            plus ``2 * pad`` for boundary modes that extend it.
        pad: pixels the array is extended by on each side (0: the engine
            mirrors at the array's own borders).
        tile: input tile per axis.
        batch_size: tiles per forward pass.
        stride: distance between tiles per axis.
    """

    image: Tuple[int, ...]
    pad: Tuple[int, ...]
    tile: Tuple[int, ...]
    batch_size: int
    stride: Tuple[int, ...]

    def options(self) -> dict:
        """The :meth:`unet_rt.Model.segment` options that select this tiling."""
        return {"tile": list(self.tile), "batch_size": self.batch_size}

    def region(self, start: Sequence[int], stop: Sequence[int]) -> Window:
        """The window of the array's block ``start .. stop`` (array pixels)."""
        first = tuple(int(s) + p for s, p in zip(start, self.pad))
        return Window(image=self.image, start=first, shape=tuple(int(e) - int(s) for s, e in zip(start, stop)))

    def needed(self, model: Model, start: Sequence[int], stop: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """The input, ``(first, end)`` per axis in array pixels (negative or
        past the array's end inside the padding), that the block
        ``start .. stop`` reads."""
        first, end = model.needed_input(self.region(start, stop), **self.options())
        return tuple(f - p for f, p in zip(first, self.pad)), tuple(e - p for e, p in zip(end, self.pad))

    def context(self, model: Model, axis: int, chunks: Sequence[int]) -> int:
        """The overlap along ``axis`` that gives every block of ``chunks``
        all it reads: the most any block reads beyond its own faces."""
        shape = [n - 2 * p for n, p in zip(self.image, self.pad)]
        blocks = []
        start = 0
        for size in chunks:
            lo, hi = [0] * len(shape), list(shape)
            lo[axis], hi[axis] = start, start + int(size)
            blocks.append((lo, hi))
            start += int(size)
        found = model.needed_inputs([self.region(lo, hi) for lo, hi in blocks], **self.options())
        pad = self.pad[axis]
        return max(max(lo[axis] - (first[axis] - pad), (end[axis] - pad) - hi[axis])
                   for (lo, hi), (first, end) in zip(blocks, found))

    def input_window(self, start: Sequence[int], stop: Sequence[int], have_start: Sequence[int],
                     have_stop: Sequence[int]) -> Tuple[Window, Tuple[slice, ...]]:
        """The window for the block ``start .. stop`` given the array pixels
        ``have_start .. have_stop`` (with padding, maybe beyond the image the
        engine tiles), and the spatial slices of that input to pass."""
        origin, index = [], []
        for lo, hi, n, p in zip(have_start, have_stop, self.image, self.pad):
            first = max(0, int(lo) + p)
            end = min(n, int(hi) + p)
            origin.append(first)
            index.append(slice(first - (int(lo) + p), end - (int(lo) + p)))
        return self.region(start, stop).at(origin), tuple(index)


def plan_tiling(
    planner: Model,
    spatial: Sequence[int],
    pad: int,
    tile: Any,
    batch_size: Optional[int],
    memory_budget: Optional[int],
    device: str,
    precision: str,
) -> Tiling:
    """The tiling ``unet_rt.segment`` would choose for the whole (padded)
    array of spatial shape ``spatial`` with these options on the workers'
    ``device`` in their ``precision`` (planned here by the engine, see
    :meth:`unet_rt.Model.layout`)."""
    image = tuple(int(n) + 2 * pad for n in spatial)
    layout = planner.layout(image, tile=tile, batch_size=batch_size,
                            memory_budget=memory_budget, device=device, precision=precision)
    return Tiling(
        image=image,
        pad=(int(pad),) * len(image),
        tile=tuple(int(t) for t in layout["tile"]),
        batch_size=int(layout["batch_size"]),
        stride=tuple(int(s) for s in layout["stride"]),
    )


def grid_chunks(chunks: Sequence[int], stride: int, offset: int = 0, least: int = 1) -> Tuple[int, ...]:
    """A chunking of the same axis close to ``chunks`` whose inner boundaries
    ``b`` lie on the tile grid (``(b + offset) % stride == 0``) and whose
    chunks are all at least ``least`` long (unless the axis is shorter):
    each boundary moves to the nearest grid line, and boundaries that would
    leave a chunk too short are dropped (chunks merge).

    >>> grid_chunks((50, 50, 50), 44)
    (44, 44, 62)
    >>> grid_chunks((30, 5, 30, 10), 16, least=20)
    (32, 43)
    >>> grid_chunks((100, 100), 64, offset=8)
    (120, 80)
    >>> grid_chunks((10,), 4, least=20)
    (10,)
    """
    total = int(sum(chunks))
    least = max(1, int(least))
    kept = [0]
    for b in np.cumsum(chunks)[:-1]:
        r = int(round((int(b) + offset) / stride)) * stride - offset
        if r - kept[-1] >= least and total - r >= least:
            kept.append(r)
    kept.append(total)
    return tuple(int(b - a) for a, b in zip(kept[:-1], kept[1:]))


def fitted_chunks(planner: Model, tiling: Tiling, chunks: Sequence[Sequence[int]]) -> Tuple[Tuple[Tuple[int, ...], ...], Tuple[int, ...]]:
    """Spatial chunks on the tile grid, and the overlap per axis that gives
    every block what it reads; chunks merge until none is shorter than its
    axis's overlap (Dask's condition for an overlap)."""
    fitted, depths = [], []
    for axis, sizes in enumerate(chunks):
        least = 1
        while True:
            grid = grid_chunks(sizes, tiling.stride[axis], tiling.pad[axis], least)
            depth = tiling.context(planner, axis, grid)
            # Longer blocks read no more beyond their faces, so the overlap
            # stops growing and the loop ends (at the latest at one block).
            if len(grid) == 1 or min(grid) >= depth:
                break
            least = depth
        fitted.append(grid)
        depths.append(depth)
    return tuple(fitted), tuple(depths)


def block_shape(target: int, stride: int, unit: Optional[int], size: int) -> int:
    """A block length near ``target`` for an axis of ``size``: a multiple of
    ``unit`` (the destination's chunk or shard), and of the tile stride too
    when that keeps it within twice ``target`` (blocks on the tile grid run
    each tile once; otherwise tiles crossing a block face run for both
    blocks, with the same result); never longer than the axis.

    >>> block_shape(1000, 44, None, 5000), block_shape(1000, 256, 64, 5000), block_shape(1000, 1000, 96, 5000)
    (1012, 1024, 960)
    >>> block_shape(64, 1012, None, 5000), block_shape(1000, 44, None, 300)
    (64, 300)
    """
    base = unit or 1
    step = math.lcm(stride, base)
    if step > 2 * target:
        step = base
    block = max(step, int(round(target / step)) * step)
    return max(1, min(block, size))
