"""U-Net (Ronneberger et al., MICCAI 2015) and its same-padded variant.

With its defaults, :class:`UNet` is the paper's network exactly: pairs of
unpadded 3x3 convolutions with ReLU, 2x2 max-pooling, 2x2 up-convolutions that
halve the channels, centre-cropped encoder maps concatenated to the decoder's,
a final 1x1 convolution; 23 convolution layers; 572x572 in, 388x388 out.

>>> import torch
>>> net = UNet()
>>> net.eval()(torch.zeros(1, 1, 572, 572)).shape
torch.Size([1, 2, 388, 388])
>>> geometry(depth=5, padding="valid")
Geometry(size_offset=12, size_multiple=16, halo=92)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

__all__ = ["UNet", "Geometry", "geometry", "valid_sizes", "output_size", "crop_to"]


@dataclass(frozen=True)
class Geometry:
    """Size rule of a configuration: inputs are ``size_offset + k * size_multiple``
    (k >= 0 for which the output is at least 1 pixel); valid-padded nets shrink
    by ``halo`` pixels per side, same-padded ones use ``halo`` as their context margin."""

    size_offset: int
    size_multiple: int
    halo: int


def _valid_output(size: int, depth: int) -> int:
    """Output size of a valid U-Net of ``depth`` levels for input ``size``, or -1
    when some pooling meets an odd size or a map vanishes."""
    for _ in range(depth - 1):
        size -= 4
        if size <= 0 or size % 2:
            return -1
        size //= 2
    size -= 4
    if size <= 0:
        return -1
    for _ in range(depth - 1):
        size = size * 2 - 4
        if size <= 0:
            return -1
    return size


def geometry(depth: int = 5, padding: str = "valid") -> Geometry:
    """The size rule of a U-Net of ``depth`` levels (``depth - 1`` poolings).

    >>> geometry(3, "valid")
    Geometry(size_offset=0, size_multiple=4, halo=20)
    >>> geometry(5, "same")
    Geometry(size_offset=0, size_multiple=16, halo=92)
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    multiple = 2 ** (depth - 1)
    # The smallest valid input fixes the offset; every valid input differs from
    # it by a multiple of the pooling factor.
    smallest = next(s for s in range(1, 64 * multiple + 64) if _valid_output(s, depth) > 0)
    halo = (smallest - _valid_output(smallest, depth)) // 2
    if padding == "valid":
        return Geometry(smallest % multiple, multiple, halo)
    if padding == "same":
        # The valid net's crop is its receptive-field radius: context beyond it
        # cannot change a pixel, so it is the margin that makes tiling exact
        # up to the zero-padding effects inside the tile.
        return Geometry(0, multiple, halo)
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def valid_sizes(depth: int = 5, padding: str = "valid", up_to: int = 1024) -> List[int]:
    """All valid input sizes up to ``up_to``.

    >>> valid_sizes(5, up_to=250)
    [188, 204, 220, 236]
    """
    if padding == "same":
        m = 2 ** (depth - 1)
        return list(range(m, up_to + 1, m))
    return [s for s in range(1, up_to + 1) if _valid_output(s, depth) > 0]


def output_size(size: int, depth: int = 5, padding: str = "valid") -> int:
    """Output size for input ``size``; raises ``ValueError`` for invalid sizes.

    >>> output_size(572)
    388
    """
    if padding == "same":
        if size <= 0 or size % 2 ** (depth - 1):
            raise ValueError(f"{size} is not a multiple of {2 ** (depth - 1)}")
        return size
    out = _valid_output(size, depth)
    if out <= 0:
        g = geometry(depth, padding)
        raise ValueError(
            f"{size} is not a valid input size; valid sizes are {g.size_offset} + k * {g.size_multiple}"
            f" (smallest {valid_sizes(depth, up_to=10 * g.size_multiple)[0]})"
        )
    return out


def crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Centre-crops the spatial axes of ``x`` to those of ``like`` (the paper's
    "copy and crop")."""
    for d in range(2, x.dim()):
        offset = (x.size(d) - like.size(d)) // 2
        x = x.narrow(d, offset, like.size(d))
    return x


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


class DoubleConv(nn.Module):
    """Two 3x3 convolutions, each followed by (optional batch norm and) ReLU."""

    def __init__(self, cin: int, cout: int, padding: int, batch_norm: bool, dims: int = 2):
        super().__init__()
        conv = _conv(dims)
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        layers: List[nn.Module] = []
        for c in (cin, cout):
            layers.append(conv(c, cout, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(norm(cout))
            layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    """The U-Net of Ronneberger et al. (2015).

    Args:
        in_channels: input channels (1 for the paper's gray images).
        classes: output channels (logits; 2 in the paper).
        depth: resolution levels; ``depth - 1`` poolings (5 in the paper).
        base: channels at the first level, doubled at each level (64).
        padding: ``"valid"`` (the paper: unpadded convolutions, output smaller
            by :func:`geometry`'s ``halo`` per side) or ``"same"``.
        batch_norm: batch normalisation after each convolution.
        dropout: dropout probability at the end of the contracting path.
        dims: 2 for images, 3 for volumes.
    """

    __jit_unused_properties__ = ["geometry"]

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        depth: int = 5,
        base: int = 64,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.5,
        dims: int = 2,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        self.config = dict(
            in_channels=in_channels, classes=classes, depth=depth, base=base,
            padding=padding, batch_norm=batch_norm, dropout=dropout, dims=dims,
        )
        pad = 1 if padding == "same" else 0
        conv, convT = _conv(dims), (nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d)
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        widths = [base * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, pad, batch_norm, dims))
            cin = w
        self.pool = pool(2)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.upconv.append(convT(w * 2, w, 2, stride=2))
            self.up.append(DoubleConv(w * 2, w, pad, batch_norm, dims))
        self.head = conv(widths[0], classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal initialisation, std sqrt(2 / N) with N the fan-in, as in the paper."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                fan_in = m.weight[0].numel() if not isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) \
                    else m.weight.size(0) * m.weight[0, 0].numel()
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        n = len(self.down)
        for i, block in enumerate(self.down):
            x = block(x)
            if i < n - 1:
                skips.append(x)
                x = self.pool(x)
        x = self.dropout(x)
        for i, (upconv, block) in enumerate(zip(self.upconv, self.up)):
            x = upconv(x)
            skip = skips[n - 2 - i]
            x = block(torch.cat([crop_to(skip, x), x], dim=1))
        return self.head(x)

    @property
    def geometry(self) -> Geometry:
        """The size rule of this configuration."""
        return geometry(self.config["depth"], self.config["padding"])
