"""Turning an image with named axes into the engine's ``(C, spatial...)``
layout, as views: no pixel is copied."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _unet_rt
from .errors import InvalidArgumentError

__all__ = ["infer_axes", "arrange"]

_SPATIAL = {2: "yx", 3: "zyx"}


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
    had a batch axis, and the axes used.

    >>> a = np.zeros((2, 5, 6, 3))
    >>> v, batched, axes = arrange(a, "byxc", 2, 3)
    >>> v.shape, batched, np.shares_memory(v, a)
    ((2, 3, 5, 6), True, True)
    """
    if axes is None:
        axes = infer_axes(image.shape, spatial_dims, in_channels)
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a str such as 'yx' or 'cyx', got {type(axes).__name__}")
    axes = axes.lower()
    spatial = _SPATIAL[spatial_dims]
    allowed = set("bc" + spatial)
    if len(axes) != image.ndim or set(axes) - allowed or len(set(axes)) != len(axes) or not set(spatial) <= set(axes):
        raise InvalidArgumentError(
            f"invalid axes: {axes!r} does not describe an array of shape {image.shape} for a "
            f"{spatial_dims}-D model; use the letters b (batch), c (channels) and {spatial!r}, each once"
        )
    if "b" in axes and axes[0] != "b":
        raise InvalidArgumentError(f"invalid axes: the batch axis 'b' must come first, got {axes!r}")
    view = image
    order = axes
    if "c" not in order:
        view = view[..., np.newaxis]
        order = order + "c"
    if "b" not in order:
        view = view[np.newaxis]
        order = "b" + order
    view = np.transpose(view, [order.index(a) for a in "bc" + spatial])
    return view, "b" in axes, axes
