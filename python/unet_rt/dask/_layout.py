"""Axes and block geometry: the canonical ``(b, c, spatial...)`` layout, the
overlap depth, and chunkings whose blocks give exactly the whole-image result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._axes import arrange
from ..errors import InvalidArgumentError

__all__ = ["Layout", "block_depth", "aligned_chunks", "OUTPUTS"]

OUTPUTS = ("labels", "probabilities", "raw", "instances")
_SPATIAL = {2: "yx", 3: "zyx"}


@dataclass(frozen=True)
class Layout:
    """How an array with named ``axes`` maps onto the canonical layout
    ``(b, c, spatial...)`` in which blocks are cut and segmented, with the
    same rules as :meth:`unet_rt.Model.segment` (spatial axes in
    ``"zyx"`` order, results channel-first).

    >>> lay = Layout.of((300, 400, 3), "yxc", spatial_dims=2, in_channels=3)
    >>> lay.canonical_shape((300, 400, 3)), lay.batched
    ((1, 3, 300, 400), False)
    >>> lay.user_slices((slice(0, 1), slice(0, 3), slice(10, 20), slice(5, 9)))
    (slice(10, 20, None), slice(5, 9, None), slice(0, 3, None))
    """

    axes: str
    spatial_dims: int

    @classmethod
    def of(cls, shape: Sequence[int], axes: Optional[str], spatial_dims: int, in_channels: int) -> "Layout":
        """Checks ``axes`` against ``shape`` (inferring them when ``None``)."""
        probe = np.broadcast_to(np.zeros((), np.uint8), tuple(int(s) for s in shape))
        view, _, used = arrange(probe, axes, spatial_dims, in_channels)
        if view.shape[1] != in_channels:
            raise InvalidArgumentError(
                f"invalid image: the model takes {in_channels} channel(s), the array of shape {tuple(shape)} "
                f"with axes {used!r} has {view.shape[1]}"
            )
        return cls(used.lower(), spatial_dims)

    @property
    def batched(self) -> bool:
        """Whether the array has a batch axis ``b``."""
        return "b" in self.axes

    @property
    def spatial(self) -> str:
        """``"yx"`` or ``"zyx"``."""
        return _SPATIAL[self.spatial_dims]

    @property
    def canonical_axes(self) -> str:
        """``"bc"`` followed by the spatial axes."""
        return "bc" + self.spatial

    def _order(self) -> Tuple[str, List[int]]:
        order = self.axes + ("" if "c" in self.axes else "c")
        order = ("" if "b" in order else "b") + order
        return order, [order.index(a) for a in self.canonical_axes]

    def canonical_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
        """The shape of the array in the canonical layout."""
        sizes = dict(zip(self.axes, (int(s) for s in shape)))
        return tuple(sizes.get(a, 1) for a in self.canonical_axes)

    def to_canonical(self, array: Any) -> Any:
        """The array (NumPy or Dask) as a ``(b, c, spatial...)`` view."""
        if "c" not in self.axes:
            array = array[..., None]
        if "b" not in self.axes:
            array = array[None]
        _, perm = self._order()
        return array.transpose(perm)

    def user_slices(self, canonical: Sequence[slice]) -> Tuple[slice, ...]:
        """The slices of the user's array that read the canonical window
        ``canonical`` (one slice per canonical axis)."""
        index = dict(zip(self.canonical_axes, canonical))
        return tuple(index[a] for a in self.axes)

    def output_shape(self, canonical_shape: Sequence[int], output: str, out_channels: int) -> Tuple[int, ...]:
        """Shape of the result, as :meth:`unet_rt.Model.segment` returns it."""
        b, _, *spatial = canonical_shape
        per_image = tuple(spatial) if output in ("labels", "instances") else (out_channels, *spatial)
        return ((b,) if self.batched else ()) + per_image


def block_depth(info: Dict[str, Any]) -> int:
    """Overlap (pixels per side) that makes blocks exact: the model's halo
    rounded up to a multiple of its pooling multiple ``size_multiple``.

    A valid U-Net's output pixel at pooling phase ``r`` reads up to
    ``halo + r`` pixels to its left and ``halo + (multiple - 1 - r)`` to its
    right; a block whose boundaries are multiples of ``multiple`` and which is
    read with ``depth >= halo`` real pixels around it holds all of them, and a
    depth that is itself a multiple keeps the window's origin on the whole
    image's pooling grid (the engine anchors its tiles at the window origin).

    >>> block_depth({"halo": 20, "size_multiple": 4}), block_depth({"halo": 92, "size_multiple": 16})
    (20, 96)
    """
    halo, multiple = int(info["halo"]), max(1, int(info["size_multiple"]))
    return math.ceil(halo / multiple) * multiple


def aligned_chunks(chunks: Sequence[int], multiple: int, depth: int) -> Tuple[int, ...]:
    """A chunking of the same axis whose inner boundaries are multiples of
    ``multiple`` and whose chunks are all at least ``depth`` long (unless the
    axis itself is shorter), close to ``chunks``: each boundary is rounded to
    the nearest multiple, and boundaries that would leave a chunk shorter
    than ``max(depth, multiple)`` are dropped (chunks merge).

    >>> aligned_chunks((50, 50, 50), 4, 20)
    (48, 52, 50)
    >>> aligned_chunks((30, 5, 30, 10), 4, 20)
    (32, 43)
    >>> aligned_chunks((10,), 4, 20)
    (10,)
    """
    total = int(sum(chunks))
    least = max(depth, multiple, 1)
    bounds = np.cumsum(chunks)[:-1]
    kept = [0]
    for b in bounds:
        r = int(round(b / multiple)) * multiple
        if r - kept[-1] >= least and total - r >= least:
            kept.append(r)
    kept.append(total)
    return tuple(int(b - a) for a, b in zip(kept[:-1], kept[1:]))


def grid_block(target: int, unit: int, depth: int, size: int) -> int:
    """A block length that is a multiple of ``unit``, at least ``depth``, near
    ``target``, and no longer than needed for an axis of ``size``.

    >>> grid_block(1000, 64, 20, 5000), grid_block(10, 64, 100, 5000), grid_block(1000, 64, 20, 100)
    (1024, 128, 128)
    """
    block = max(unit, int(round(target / unit)) * unit)
    while block < depth:
        block += unit
    return min(block, math.ceil(size / unit) * unit)
