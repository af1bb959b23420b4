"""U-Net (Ronneberger et al., MICCAI 2015), its same-padded variant, and
UNet++ (Zhou et al., DLMIA 2018).

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

Checkpoints and the exporter describe a network by a plain dict, its
constructor's keyword arguments plus ``"architecture"``; :func:`build_model`
turns such a dict back into a module:

>>> build_model({"architecture": "unet++", "depth": 3, "base": 4}).config["deep_supervision"]
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "UNet",
    "UNetPlusPlus",
    "ARCHITECTURES",
    "Geometry",
    "geometry",
    "unetpp_geometry",
    "model_geometry",
    "build_model",
    "offset_logits",
    "valid_sizes",
    "output_size",
    "crop_to",
]


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
    Geometry(size_offset=0, size_multiple=16, halo=96)
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
        return Geometry(0, multiple, same_margin(halo, multiple))
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def same_margin(valid_halo: int, multiple: int) -> int:
    """Context margin of a same-padded net whose valid twin crops ``valid_halo``.

    Zero padding inside a same-padded net damages output pixels a little
    farther from the border than the valid net's crop, because pooling and
    up-convolution round positions to their grid: measured on random nets of
    depth 3, 4 and 5, a margin of ``valid_halo`` still differs from the
    whole-image result (by up to 1e-2 of the logits), and the next multiple of
    the pooling factor above it agrees to float rounding. Tiles that discard
    this margin (on the pooling grid) reproduce the whole-image forward.

    >>> same_margin(92, 16), same_margin(20, 4)
    (96, 24)
    """
    return (valid_halo // multiple + 1) * multiple


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


def _he_normal_(module: nn.Module) -> None:
    """He-normal initialisation of every (transposed) convolution in ``module``:
    std sqrt(2 / N), N the fan-in; biases zero."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                fan_in = m.weight[0].numel() if not isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) \
                    else m.weight.size(0) * m.weight[0, 0].numel()
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


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
        _he_normal_(self)

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


# --------------------------------------------------------------------------
# UNet++
# --------------------------------------------------------------------------


def _unetpp_valid_output(size: int, depth: int) -> int:
    """Output size of a valid UNet++ for input ``size`` (-1 when invalid),
    found by walking its node graph: node ``X[i][j]`` (level ``i``, column
    ``j``) is two 3x3 convolutions on the concatenation of ``X[i][0..j-1]``
    and the 2x up-convolution of ``X[i+1][j-1]``, all centre-cropped to the
    smallest of them."""
    enc: List[int] = []
    s = size
    for i in range(depth):
        if i > 0:
            if s <= 0 or s % 2:
                return -1
            s //= 2
        s -= 4
        if s <= 0:
            return -1
        enc.append(s)
    cols: List[List[int]] = [[e] for e in enc]
    for j in range(1, depth):
        for i in range(depth - j):
            inputs = cols[i][:j] + [2 * cols[i + 1][j - 1]]
            s = min(inputs) - 4
            if s <= 0:
                return -1
            cols[i].append(s)
    return cols[0][depth - 1]


def unetpp_geometry(depth: int = 5, padding: str = "valid") -> Geometry:
    """The size rule of a :class:`UNetPlusPlus` of ``depth`` levels, computed
    from its node graph (:func:`_unetpp_valid_output`), not assumed.

    The deepest path ``X[0][0] -> ... -> X[depth-1][0] -> X[depth-2][1] -> ...
    -> X[0][depth-1]`` is the U-Net's path and every other input of a node is
    larger than the up-convolved one, so the rule equals the U-Net's:

    >>> unetpp_geometry(5, "valid") == geometry(5, "valid")
    True
    >>> unetpp_geometry(3, "valid")
    Geometry(size_offset=0, size_multiple=4, halo=20)
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    multiple = 2 ** (depth - 1)
    smallest = next(s for s in range(1, 64 * multiple + 64) if _unetpp_valid_output(s, depth) > 0)
    halo = (smallest - _unetpp_valid_output(smallest, depth)) // 2
    if padding == "valid":
        return Geometry(smallest % multiple, multiple, halo)
    return Geometry(0, multiple, same_margin(halo, multiple))


class UNetPlusPlus(nn.Module):
    """UNet++ (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical
    Image Segmentation", DLMIA 2018): the U-Net's encoder with nested, dense
    skip pathways.

    Node ``X[i][j]`` (level ``i``, ``j``-th node of that level) is a pair of
    3x3 convolutions applied to ``[X[i][0], ..., X[i][j-1], Up(X[i+1][j-1])]``
    concatenated along channels, ``Up`` a 2x2 up-convolution halving the
    channels. All nodes of level ``i`` have ``base * 2**i`` channels. With
    valid padding, the earlier nodes of a level are larger than the
    up-convolved map and are centre-cropped to it before concatenation.

    Args:
        in_channels, classes, depth, base, padding, batch_norm, dims: as in
            :class:`UNet`.
        deep_supervision: a 1x1 head on each of ``X[0][1..depth-1]``. In
            training mode (eager) ``forward`` returns the list of head outputs,
            all centre-cropped to the final output's size; in eval mode and
            in TorchScript it returns their mean (the paper's "accurate
            mode", on logits), one tensor.

    >>> net = UNetPlusPlus(depth=3, base=4).eval()
    >>> net(torch.zeros(1, 1, 60, 60)).shape
    torch.Size([1, 2, 20, 20])
    >>> ds = UNetPlusPlus(depth=3, base=4, deep_supervision=True).train()
    >>> [h.shape[-1] for h in ds(torch.zeros(1, 1, 60, 60))]
    [20, 20]
    """

    __jit_unused_properties__ = ["geometry"]

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        depth: int = 5,
        base: int = 32,
        padding: str = "valid",
        batch_norm: bool = False,
        deep_supervision: bool = False,
        dims: int = 2,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if depth < 1 or (deep_supervision and depth < 2):
            raise ValueError(f"depth must be at least {2 if deep_supervision else 1}, got {depth}")
        self.config = dict(
            in_channels=in_channels, classes=classes, depth=depth, base=base, padding=padding,
            batch_norm=batch_norm, deep_supervision=deep_supervision, dims=dims,
        )
        self.depth = depth
        self.deep_supervision = deep_supervision
        pad = 1 if padding == "same" else 0
        conv, convT = _conv(dims), (nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d)
        self.pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(2)
        widths = [base * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, pad, batch_norm, dims))
            cin = w
        # Nodes in evaluation order: column j = 1..depth-1, level i = 0..depth-1-j.
        self.ups = nn.ModuleList()
        self.nodes = nn.ModuleList()
        for j in range(1, depth):
            for i in range(depth - j):
                self.ups.append(convT(widths[i + 1], widths[i], 2, stride=2))
                self.nodes.append(DoubleConv((j + 1) * widths[i], widths[i], pad, batch_norm, dims))
        n_heads = depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList([conv(widths[0], classes, 1) for _ in range(n_heads)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal initialisation, as :meth:`UNet.reset_parameters`."""
        _he_normal_(self)

    def forward_heads(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The head outputs (one without deep supervision), each centre-cropped
        to the size of the last, deepest-path head."""
        cols: List[List[torch.Tensor]] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            cols.append([x])
        i, j = 0, 1
        for up, node in zip(self.ups, self.nodes):
            u = up(cols[i + 1][j - 1])
            parts: List[torch.Tensor] = []
            for k in range(j):
                parts.append(crop_to(cols[i][k], u))
            parts.append(u)
            cols[i].append(node(torch.cat(parts, dim=1)))
            i += 1
            if i > self.depth - 1 - j:
                i, j = 0, j + 1
        top = cols[0]
        first = len(top) - len(self.heads)
        outs: List[torch.Tensor] = []
        for k, head in enumerate(self.heads):
            outs.append(head(top[first + k]))
        last = outs[-1]
        return [crop_to(o, last) for o in outs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.forward_heads(x)
        if self.deep_supervision and self.training and not torch.jit.is_scripting():
            # Eager training with deep supervision: the list of heads, for the
            # loss. TorchScript drops this branch (is_scripting() is constant
            # there), so a scripted module always returns one tensor.
            return heads
        if len(heads) == 1:
            return heads[0]
        return torch.stack(heads, dim=0).mean(dim=0)

    @property
    def geometry(self) -> Geometry:
        """The size rule of this configuration."""
        return unetpp_geometry(self.config["depth"], self.config["padding"])


ARCHITECTURES = {"unet": UNet, "unet++": UNetPlusPlus}


def model_geometry(config: Dict[str, Any], architecture: Optional[str] = None) -> Geometry:
    """The size rule of the network a config dict describes (``architecture``
    defaults to ``config.get("architecture", "unet")``).

    >>> model_geometry({"architecture": "unet++", "depth": 4, "padding": "valid"})
    Geometry(size_offset=4, size_multiple=8, halo=44)
    """
    arch = architecture or config.get("architecture", "unet")
    depth, padding = int(config.get("depth", 5)), str(config.get("padding", "valid"))
    if arch == "unet":
        return geometry(depth, padding)
    if arch == "unet++":
        return unetpp_geometry(depth, padding)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")


def build_model(config: Dict[str, Any]) -> nn.Module:
    """A network from a config dict: ``"architecture"`` (``"unet"`` by default)
    and the constructor's keyword arguments. Unknown keys are an error.

    >>> build_model({"depth": 3, "base": 4}).config["depth"]
    3
    """
    kwargs = dict(config)
    arch = kwargs.pop("architecture", "unet")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


@torch.no_grad()
def offset_logits(model: nn.Module, offsets: Sequence[float]) -> None:
    """Adds ``offsets[c]`` to the logit of class ``c`` by shifting the bias of
    the network's 1x1 output convolution (each of UNet++'s heads, whose mean
    is the output), in place. Softmax then weighs class ``c`` by
    ``exp(offsets[c])``: the calibration of :func:`training.train.calibrate`,
    carried by the weights themselves so that every inference path of the
    runtime (host or device reduction, tiles, Dask blocks) applies it.

    >>> net = build_model({"depth": 1, "base": 2, "classes": 3})
    >>> offset_logits(net, [0.5, 0.0, 0.0])
    >>> round(float(net.head.bias.detach()[0]), 3)
    0.5
    """
    heads = list(model.heads) if hasattr(model, "heads") else [model.head]
    for head in heads:
        if head.bias is None or head.bias.shape[0] != len(offsets):
            raise ValueError(f"offsets need one value per class ({head.out_channels}), got {len(offsets)}")
        head.bias.add_(torch.tensor(list(offsets), dtype=head.bias.dtype))
