"""Turning an image with named axes into the engine's ``(C, spatial...)``
layout, as views: no pixel is copied."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _unet_rt

__all__ = ["infer_axes", "arrange", "to_engine_layout"]


def infer_axes(shape: Tuple[int, ...], spatial_dims: int, in_channels: int) -> str:
    """The axes of an array of ``shape`` when they are unambiguous: the
    core's rule, which the command line follows too.

    >>> infer_axes((300, 400), 2, 1)
    'yx'
    >>> infer_axes((300, 400, 3), 2, 3)
    'yxc'
    >>> infer_axes((3, 300, 400), 2, 3)
    'cyx'
    >>> infer_axes((1, 300, 400), 2, 1)
    'cyx'
    """
    return _unet_rt.infer_axes(tuple(int(s) for s in shape), spatial_dims, in_channels)


def arrange(image: np.ndarray, axes: Optional[str], spatial_dims: int, in_channels: int) -> Tuple[np.ndarray, bool, str]:
    """A view of ``image`` laid out ``(B, C, spatial...)``, whether the input
    had a batch axis, and the axes used (the core's rule: letters ``b``,
    ``c``, ``z``, ``y``, ``x`` in any order; a 2-D model reads ``z`` as a
    batch).

    >>> a = np.zeros((2, 5, 6, 3))
    >>> v, batched, axes = arrange(a, "byxc", 2, 3)
    >>> v.shape, batched, np.shares_memory(v, a)
    ((2, 3, 5, 6), True, True)
    >>> arrange(np.zeros((4, 5, 6)), "ZYX", 2, 1)[0].shape
    (4, 1, 5, 6)
    """
    used, sources = _unet_rt.arrangement(image.shape, axes, spatial_dims, in_channels)
    return to_engine_layout(image, sources), sources[0] is not None, used


def to_engine_layout(array: Any, sources: Sequence[Optional[int]]) -> Any:
    """``array`` (NumPy or Dask) as the ``(B, C, spatial...)`` view that
    ``sources`` (from the core's arrangement: the array's axis for each
    engine axis, ``None`` for a missing one) describe."""
    missing = sum(s is None for s in sources)
    extended = array[(Ellipsis,) + (None,) * missing]
    added = iter(range(array.ndim, array.ndim + missing))
    return extended.transpose([next(added) if s is None else s for s in sources])
