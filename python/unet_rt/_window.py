"""The :class:`Window` of a larger image that an array holds."""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["Window"]


@dataclass(frozen=True)
class Window:
    """A piece of a larger image, to segment exactly as the whole image.

    The array passed to :meth:`Model.segment` holds the pixels from
    ``origin`` on of an image of spatial shape ``image``; the result is the
    whole image's result over the region ``start .. start + shape``, bit
    for bit: the engine runs the whole image's tiles that write into the
    region, on the same input windows, in batches of the same sizes
    (libraries choose convolution kernels by tensor shape, so tiles of the
    piece's own would differ in the last bits). Spatial axes only, in the
    model's order (``y, x`` or ``z, y, x``).

    The array must hold every pixel those tiles read:
    :meth:`Model.needed_input` gives the range. For models with percentile
    normalization pass the whole image's values as ``input_range``
    (:meth:`Model.percentile_range`); a piece normalizes with its own
    otherwise.

    Attributes:
        image: spatial shape of the whole image.
        start: first pixel of the region.
        shape: shape of the region (the result's spatial shape).
        origin: whole-image position of the array's first pixel
            (default: the image's origin).

    Example:

        >>> import numpy as np, unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> image = np.random.default_rng(0).random((300, 200)).astype(np.float32)
        >>> region = unet_rt.Window(image=(300, 200), start=(100, 50), shape=(64, 64))
        >>> (y0, x0), (y1, x1) = model.needed_input(region)
        >>> piece = image[y0:y1, x0:x1]
        >>> got = model.segment(piece, window=region.at((y0, x0)), output="raw",
        ...                     input_range=model.percentile_range(image))
        >>> bool((got == model.segment(image, output="raw")[:, 100:164, 50:114]).all())
        True
    """

    image: Tuple[int, ...]
    start: Tuple[int, ...]
    shape: Tuple[int, ...]
    origin: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        for name in ("image", "start", "shape", "origin"):
            value = getattr(self, name)
            if value is None and name == "origin":
                continue
            sizes = _sizes(value, name)
            if any(v < 0 for v in sizes):
                raise InvalidArgumentError(f"invalid window: {name} {sizes} has negative values")
            object.__setattr__(self, name, sizes)
        if not self.image:
            raise InvalidArgumentError("invalid window: image () has no axes; give one value per spatial axis")
        origin = self.image if self.origin is None else self.origin
        ranks = {len(self.image), len(self.start), len(self.shape), len(origin)}
        if len(ranks) != 1:
            raise InvalidArgumentError(f"invalid window: {self} must give one value per spatial axis everywhere")

    def at(self, origin: Sequence[int]) -> "Window":
        """The same window for an array whose first pixel is at ``origin``."""
        return replace(self, origin=tuple(origin))

    def as_tuple(self) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
        """``(image, origin, start, shape)`` as the extension takes it."""
        origin = self.origin if self.origin is not None else (0,) * len(self.image)
        return self.image, origin, self.start, self.shape


def _sizes(value: object, name: str) -> Tuple[int, ...]:
    """``value`` as a tuple of ints: ints and NumPy integers, never a bool,
    float or string (nor bytes, whose items are ints)."""
    wrong = TypeError(f"window {name} must be a sequence of ints, got {value!r}")
    if isinstance(value, (str, bytes, bytearray)):
        raise wrong
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise wrong from None
    if any(isinstance(v, (bool, np.bool_)) for v in items):
        raise wrong
    try:
        # operator.index: ints and NumPy integers, never a float or str.
        return tuple(operator.index(v) for v in items)
    except TypeError:
        raise wrong from None
