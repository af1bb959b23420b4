"""On-the-fly data augmentation, seeded by a :class:`numpy.random.Generator`.

The paper's elastic deformation: random displacement vectors on a coarse 3x3
grid (standard deviation 10 pixels) are interpolated smoothly (bicubic) to a
dense displacement field; the image is resampled with bicubic interpolation
and the labels with nearest neighbour, so no new label value can appear.
Optionally a random zoom (``scale``: a patch pixel covers ``s`` image
pixels, ``s`` log-uniform in the range) so that the network sees objects at
other magnifications, and optionally a Gaussian blur (``blur``: sigma
uniform in the range, on a ``blur_probability`` share of the patches), as
an image resampled up from a lower magnification looks. Then flips, 90-degree rotations and gray-value changes
(gamma, contrast, brightness) of the image only.

Sampling is done straight from the whole image: a patch at ``origin`` reads
``image[origin + p + displacement(p)]``, and positions outside the image are
mirrored with ``numpy.pad(mode="reflect")`` semantics (the edge pixel is not
repeated), as the runtime does; so crops near the border work and the warp
never exposes an artificial edge. The bicubic kernel is the interpolating
Keys kernel (a = -0.5): at integer positions its weights are exactly 0 and 1,
so a zero displacement reproduces the input exactly.

>>> import numpy as np
>>> img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
>>> bool((sample_patch(img, (0, 0), (4, 4), np.zeros((2, 4, 4)), order=3) == img).all())
True
>>> sample_patch(img, (-1, 0), (2, 2), order=0)[0].tolist()   # row -1 mirrors row 1
[[4.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "reflect_index",
    "elastic_field",
    "sample_patch",
    "flip_rotate",
    "gray_values",
    "blur",
    "Augmenter",
]


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Maps integer positions into ``[0, n)`` by mirroring without repeating
    the edge pixel (``numpy.pad(mode="reflect")``), again and again for
    positions far outside.

    >>> reflect_index(np.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    index = np.asarray(index)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.mod(index, period)
    return np.where(i >= n, period - i, i)


def _keys_weights(t: np.ndarray) -> List[np.ndarray]:
    """Keys (a = -0.5) cubic convolution weights for the taps at offsets
    -1, 0, 1, 2 of a fractional position ``t`` in [0, 1)."""
    a = -0.5

    def k(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x <= 1, near, np.where(x < 2, far, 0.0))

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def _bicubic(array: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Samples ``array`` (..., H, W) at float positions (yy, xx) with the Keys
    kernel and mirrored borders."""
    h, w = array.shape[-2:]
    y0, x0 = np.floor(yy), np.floor(xx)
    wy, wx = _keys_weights(yy - y0), _keys_weights(xx - x0)
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    iy = [reflect_index(y0 + d, h) for d in (-1, 0, 1, 2)]
    ix = [reflect_index(x0 + d, w) for d in (-1, 0, 1, 2)]
    out = np.zeros(array.shape[:-2] + yy.shape, np.float64)
    for a in range(4):
        row = np.zeros_like(out)
        for b in range(4):
            row += wx[b] * array[..., iy[a], ix[b]]
        out += wy[a] * row
    return out


def elastic_field(
    shape: Tuple[int, int], rng: np.random.Generator, std: float = 10.0, grid: int = 3
) -> np.ndarray:
    """A smooth random displacement field ``(2, H, W)`` (dy, dx in pixels):
    vectors drawn from N(0, std^2) on a ``grid`` x ``grid`` lattice spanning the
    patch (corners included), interpolated bicubically to every pixel.

    >>> f = elastic_field((32, 48), np.random.default_rng(0))
    >>> f.shape
    (2, 32, 48)
    """
    h, w = shape
    coarse = rng.normal(0.0, std, size=(2, grid, grid))
    # Bicubic interpolation on a tensor-product grid is separable:
    # field = Wy @ coarse @ Wx^T with 1D Keys weights.
    wy, wx = _interp_matrix(h, grid), _interp_matrix(w, grid)
    return np.einsum("yi,cij,xj->cyx", wy, coarse, wx)


def _zoom_field(shape: Tuple[int, int], s: float) -> np.ndarray:
    """The displacement ``(2, H, W)`` that makes a patch read ``s`` image
    pixels per patch pixel around the patch centre.

    >>> _zoom_field((3, 1), 2.0)[0, :, 0].tolist()
    [-1.0, 0.0, 1.0]
    """
    h, w = shape
    dy = (np.arange(h, dtype=np.float64) - (h - 1) / 2.0) * (s - 1.0)
    dx = (np.arange(w, dtype=np.float64) - (w - 1) / 2.0) * (s - 1.0)
    return np.stack([np.broadcast_to(dy[:, None], (h, w)), np.broadcast_to(dx[None, :], (h, w))])


def _interp_matrix(n: int, grid: int) -> np.ndarray:
    """``(n, grid)`` matrix of 1D Keys weights that interpolates ``grid``
    samples (at 0 .. grid-1, mirrored beyond) at ``n`` evenly spaced positions
    from the first to the last sample."""
    pos = np.linspace(0.0, grid - 1, n)
    base = np.floor(pos)
    weights = _keys_weights(pos - base)
    m = np.zeros((n, grid))
    rows = np.arange(n)
    for d, wgt in zip((-1, 0, 1, 2), weights):
        np.add.at(m, (rows, reflect_index(base.astype(np.int64) + d, grid)), wgt)
    return m


def sample_patch(
    array: np.ndarray,
    origin: Sequence[int],
    size: Sequence[int],
    displacement: Optional[np.ndarray] = None,
    order: int = 3,
) -> np.ndarray:
    """The patch of ``array`` (..., H, W) with top-left corner ``origin`` and
    spatial ``size``, read at ``origin + p + displacement[:, p]`` for each patch
    position ``p`` with mirrored borders. ``order`` 3 is bicubic (float64 math,
    result in ``array``'s dtype for floats, float32 otherwise), 0 is nearest
    neighbour (dtype kept, values only copied).
    """
    h, w = int(size[0]), int(size[1])
    H, W = array.shape[-2:]
    if displacement is None:
        iy = reflect_index(np.arange(origin[0], origin[0] + h), H)
        ix = reflect_index(np.arange(origin[1], origin[1] + w), W)
        return np.ascontiguousarray(array[..., iy[:, None], ix[None, :]])
    yy = origin[0] + np.arange(h, dtype=np.float64)[:, None] + displacement[0]
    xx = origin[1] + np.arange(w, dtype=np.float64)[None, :] + displacement[1]
    if order == 0:
        iy = reflect_index(np.floor(yy + 0.5).astype(np.int64), H)
        ix = reflect_index(np.floor(xx + 0.5).astype(np.int64), W)
        return np.ascontiguousarray(array[..., iy, ix])
    if order != 3:
        raise ValueError(f"order must be 0 (nearest) or 3 (bicubic), got {order}")
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float32
    return _bicubic(array, yy, xx).astype(dtype)


def flip_rotate(arrays: Sequence[np.ndarray], rng: np.random.Generator, flips: bool = True,
                rot90: bool = True) -> List[np.ndarray]:
    """The same random flip (vertical, horizontal) and rotation by a multiple
    of 90 degrees of the last two axes of every array (rotations by 90 or 270
    degrees only when those axes are square)."""
    out = list(arrays)
    if flips:
        for axis in (-2, -1):
            if rng.random() < 0.5:
                out = [np.flip(a, axis) for a in out]
    if rot90:
        square = all(a.shape[-1] == a.shape[-2] for a in out)
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        out = [np.rot90(a, k, axes=(-2, -1)) for a in out]
    return [np.ascontiguousarray(a) for a in out]


def gray_values(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma: Optional[Tuple[float, float]] = (0.7, 1.4),
    contrast: Optional[Tuple[float, float]] = (0.75, 1.33),
    brightness: Optional[Tuple[float, float]] = (-0.1, 0.1),
) -> np.ndarray:
    """Random gray-value changes of a normalised float image: gamma (applied
    to the patch rescaled to its own min..max, so values stay in that range),
    contrast around the patch mean and a brightness offset; gamma and
    contrast factors are log-uniform in their ranges, the offset uniform.
    ``None`` disables a change."""
    x = image.astype(np.float32, copy=True)
    if gamma is not None:
        g = float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]))))
        lo, hi = float(x.min()), float(x.max())
        if hi > lo:
            x = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g
    if contrast is not None:
        c = float(np.exp(rng.uniform(np.log(contrast[0]), np.log(contrast[1]))))
        m = float(x.mean())
        x = m + c * (x - m)
    if brightness is not None:
        x = x + float(rng.uniform(brightness[0], brightness[1]))
    return x.astype(np.float32)


#: The largest blur sigma a configuration may ask for, in pixels: far more
#: than any resampling blur, and small enough that the kernel stays small.
MAX_BLUR_SIGMA = 16.0

#: The most coarse grid points per axis of the elastic field: a grid finer than
#: any patch's pixels deforms nothing more, and its draws grow with its square.
MAX_ELASTIC_GRID = 256


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` (C, H, W) blurred per channel by a Gaussian of ``sigma``
    pixels (mirrored at the edges); ``sigma <= 0`` returns it unchanged.

    >>> img = np.zeros((1, 5, 5), np.float32); img[0, 2, 2] = 1.0
    >>> out = blur(img, 1.0)
    >>> out.shape, out.dtype, bool(out[0, 2, 2] < 1.0)
    ((1, 5, 5), dtype('float32'), True)
    >>> bool(np.allclose(blur(np.full((1, 5, 5), 3.0, np.float32), 2.0), 3.0))   # flat stays flat
    True
    """
    if sigma <= 0:
        return image
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma=(0.0, sigma, sigma), mode="mirror").astype(image.dtype, copy=False)


@dataclass
class Augmenter:
    """The training augmentation, configurable from a JSON dict
    (``Augmenter(**config)``; ``asdict`` gives it back).

    Args:
        elastic_std: standard deviation of the coarse displacements in
            pixels (10 in the paper); 0 disables the elastic deformation.
        elastic_grid: coarse grid points per axis (3 in the paper).
        flips, rot90: random flips and 90-degree rotations.
        gamma, contrast, brightness: ranges for :func:`gray_values`, or None.
        scale: range of the zoom factor ``s`` (image pixels per patch
            pixel, log-uniform; 2 halves the objects' size), or None.
        blur: range of a Gaussian blur's sigma in patch pixels (uniform),
            or None; applied to ``blur_probability`` of the patches.
            Upsampled images (``object_size=`` on small objects) look
            blurred to the network; this shows it such images in training.

    >>> aug = Augmenter()
    >>> img = np.random.default_rng(1).random((1, 40, 40)).astype(np.float32)
    >>> lab = (img[0] > 0.5).astype(np.int32) * 7
    >>> a, (b,) = aug.patch(img, [lab], (0, 0), (40, 40), np.random.default_rng(2))
    >>> a.shape, set(np.unique(b).tolist()) <= {0, 7}
    ((1, 40, 40), True)
    """

    elastic_std: float = 10.0
    elastic_grid: int = 3
    flips: bool = True
    rot90: bool = True
    gamma: Optional[Tuple[float, float]] = (0.7, 1.4)
    contrast: Optional[Tuple[float, float]] = (0.75, 1.33)
    brightness: Optional[Tuple[float, float]] = (-0.1, 0.1)
    scale: Optional[Tuple[float, float]] = None
    blur: Optional[Tuple[float, float]] = None
    blur_probability: float = 0.5

    def __post_init__(self) -> None:
        # Checked here, not when the first patch is drawn: a bad config
        # fails before training starts, naming the setting (a huge sigma
        # would otherwise ask scipy for a kernel of gigabytes).
        if self.blur is not None:
            try:
                lo, hi = (float(v) for v in self.blur)
            except (TypeError, ValueError):
                raise ValueError(f"augment.blur must be two numbers (a sigma range in pixels), got {self.blur!r}") from None
            if not (0.0 <= lo <= hi <= MAX_BLUR_SIGMA):
                raise ValueError(f"augment.blur must satisfy 0 <= low <= high <= {MAX_BLUR_SIGMA:g}, got {self.blur!r}")
            self.blur = (lo, hi)
        # A reversed range failed at the first batch ("high - low < 0"),
        # naming no setting, after the run folder was made.
        for name, positive in (("gamma", True), ("contrast", True), ("scale", True), ("brightness", False)):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"augment.{name} must be two numbers (a range) or null, got {value!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (lo > 0 or not positive)):
                bound = "0 < low <= high" if positive else "low <= high"
                raise ValueError(f"augment.{name} must satisfy {bound}, got {value!r}")
            setattr(self, name, (lo, hi))
        p = self.blur_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.blur_probability must be a number between 0 and 1, got {p!r}")
        # A grid of 0 points failed at the first batch (IndexError), 2.5 with
        # a TypeError; a negative or NaN std turned the deformation off.
        std = self.elastic_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (math.isfinite(std) and std >= 0):
            raise ValueError(f"augment.elastic_std must be a number >= 0 (pixels; 0: no elastic deformation), "
                             f"got {std!r}")
        grid = self.elastic_grid
        if (isinstance(grid, bool) or not isinstance(grid, (int, float)) or not math.isfinite(grid)
                or not float(grid).is_integer() or not 2 <= grid <= MAX_ELASTIC_GRID):
            raise ValueError(f"augment.elastic_grid must be an integer from 2 to {MAX_ELASTIC_GRID} (points per axis "
                             f"of the coarse grid, 3 in the paper), got {grid!r}")
        self.elastic_std, self.elastic_grid = float(std), int(grid)

    def patch(
        self,
        image: np.ndarray,
        nearest: Sequence[np.ndarray],
        origin: Sequence[int],
        size: Sequence[int],
        rng: np.random.Generator,
    ) -> Tuple[np.ndarray, List[np.ndarray]]:
        """An augmented patch of ``image`` (C, H, W), bicubic, and the same
        patch of each of ``nearest`` ((H, W) label-like arrays: labels, weight
        maps), nearest neighbour."""
        disp = (
            elastic_field((int(size[0]), int(size[1])), rng, self.elastic_std, self.elastic_grid)
            if self.elastic_std > 0 else None
        )
        if self.scale is not None:
            s = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
            zoom = _zoom_field((int(size[0]), int(size[1])), s)
            disp = zoom if disp is None else disp + zoom
        img = sample_patch(image, origin, size, disp, order=3)
        others = [sample_patch(a, origin, size, disp, order=0) for a in nearest]
        # Drawn only when enabled, so configurations without blur keep
        # their random streams (and seeded runs their results).
        if self.blur is not None and rng.random() < self.blur_probability:
            img = blur(img, float(rng.uniform(self.blur[0], self.blur[1])))
        img, *others = flip_rotate([img, *others], rng, self.flips, self.rot90)
        img = gray_values(img, rng, self.gamma, self.contrast, self.brightness)
        return img, others

    def __call__(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Augments a whole image (C, H, W) and its labels (H, W)."""
        img, (lab,) = self.patch(image, [labels], (0, 0), labels.shape[-2:], rng)
        return img, lab

    @classmethod
    def from_config(cls, config: Optional[Dict[str, Any]]) -> Optional["Augmenter"]:
        """``None`` for ``None``/``{"enabled": false}``, else an Augmenter of
        the dict's keys (lists become tuples)."""
        if config is None or not config.get("enabled", True):
            return None
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "enabled"}
        return cls(**kw)

    def to_config(self) -> Dict[str, Any]:
        """The JSON-friendly dict of this augmenter."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
