"""Axes: the canonical ``(b, c, spatial...)`` layout blocks are cut in, and
the padding of the boundary modes that extend the array."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._axes import arrange
from ..errors import InvalidArgumentError

__all__ = ["ArrayAxes", "block_depth", "OUTPUTS"]

OUTPUTS = ("labels", "probabilities", "raw", "instances")
_SPATIAL = {2: "yx", 3: "zyx"}


@dataclass(frozen=True)
class ArrayAxes:
    """How an array with named ``axes`` maps onto the canonical layout
    ``(b, c, spatial...)`` in which blocks are cut and segmented, with the
    same rules as :meth:`unet_rt.Model.segment` (spatial axes in
    ``"zyx"`` order, results channel-first).

    >>> lay = ArrayAxes.of((300, 400, 3), "yxc", spatial_dims=2, in_channels=3)
    >>> lay.canonical_shape((300, 400, 3)), lay.batched
    ((1, 3, 300, 400), False)
    >>> lay.user_slices((slice(0, 1), slice(0, 3), slice(10, 20), slice(5, 9)))
    (slice(10, 20, None), slice(5, 9, None), slice(0, 3, None))
    """

    axes: str
    spatial_dims: int

    @classmethod
    def of(cls, shape: Sequence[int], axes: Optional[str], spatial_dims: int, in_channels: int) -> "ArrayAxes":
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
    """Pixels by which boundary modes other than ``"reflect"`` extend the
    array on each side (:func:`unet_rt.dask.segment`'s ``boundary``): the
    model's halo rounded up to its pooling multiple ``size_multiple``, so
    that the extended array's result over the original pixels is that of
    ``numpy.pad(array, block_depth(info), mode)``.

    >>> block_depth({"halo": 20, "size_multiple": 4}), block_depth({"halo": 92, "size_multiple": 16})
    (20, 96)
    """
    halo, multiple = int(info["halo"]), max(1, int(info["size_multiple"]))
    return math.ceil(halo / multiple) * multiple
