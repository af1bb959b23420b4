"""Axes: the canonical ``(b, c, spatial...)`` layout blocks are cut in, and
the padding of the boundary modes that extend the array."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from .. import _unet_rt
from .._axes import to_engine_layout

__all__ = ["ArrayAxes", "block_depth"]


@dataclass(frozen=True)
class ArrayAxes:
    """How an array with named ``axes`` maps onto the canonical layout
    ``(b, c, spatial...)`` in which blocks are cut and segmented: the
    engine's arrangement (:meth:`unet_rt.Model.segment` reads arrays the
    same way; results are channel-first).

    >>> lay = ArrayAxes.of((300, 400, 3), "yxc", spatial_dims=2, in_channels=3)
    >>> lay.canonical_shape((300, 400, 3)), lay.batched
    ((1, 3, 300, 400), False)
    >>> lay.user_slices((slice(0, 1), slice(0, 3), slice(10, 20), slice(5, 9)))
    (slice(10, 20, None), slice(5, 9, None), slice(0, 3, None))
    """

    axes: str
    #: For each canonical axis, the array's axis, or ``None`` (length 1).
    sources: Tuple[Optional[int], ...]

    @classmethod
    def of(cls, shape: Sequence[int], axes: Optional[str], spatial_dims: int, in_channels: int) -> "ArrayAxes":
        """Checks ``axes`` against ``shape`` (inferring them when ``None``)."""
        used, sources = _unet_rt.arrangement(tuple(int(s) for s in shape), axes, spatial_dims, in_channels)
        return cls(used, tuple(sources))

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return len(self.sources) - 2

    @property
    def batched(self) -> bool:
        """Whether the array has a batch axis."""
        return self.sources[0] is not None

    def canonical_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
        """The shape of the array in the canonical layout."""
        return tuple(1 if s is None else int(shape[s]) for s in self.sources)

    def to_canonical(self, array: Any) -> Any:
        """The array (NumPy or Dask) as a ``(b, c, spatial...)`` view."""
        return to_engine_layout(array, self.sources)

    def user_slices(self, canonical: Sequence[slice]) -> Tuple[slice, ...]:
        """The slices of the user's array that read the canonical window
        ``canonical`` (one slice per canonical axis)."""
        index = {s: c for s, c in zip(self.sources, canonical) if s is not None}
        return tuple(index[i] for i in range(len(self.axes)))


def block_depth(info: Dict[str, Any]) -> int:
    """Pixels by which boundary modes other than ``"reflect"`` extend the
    array on each side (:func:`unet_rt.dask.segment`'s ``boundary``):
    ``info["block_depth"]`` of a model's :attr:`~unet_rt.Model.info`, the
    halo rounded up to its pooling multiple ``size_multiple``, so that the
    extended array's result over the original pixels is that of
    ``numpy.pad(array, block_depth(info), mode)``.

    >>> import unet_rt
    >>> model = unet_rt.Model(device="cpu")
    >>> model.info["halo"], model.info["size_multiple"], block_depth(model.info)
    (44, 8, 48)
    """
    return int(info["block_depth"])
