"""Segmentation architectures users bring to ``unet_rt``, as small tested
examples: FCN-8s, SegNet, PSPNet and the pix2pix U-Net generator, next to
the paper's U-Net and U-Net++ of :mod:`training.unet`.

Each is written as its paper describes it, with a ``width`` that scales every
layer (the tests use narrow ones; the geometry does not depend on width):

* :class:`FCN8s` (Long et al., 2015): a VGG encoder with five poolings,
  fully convolutional ``fc6``/``fc7``, learned 2x/2x/8x up-convolutions and
  the pool4 and pool3 skips. It takes sizes on its 32 pixel grid only.
* :class:`SegNet` (Badrinarayanan et al., 2017): an encoder-decoder whose
  decoder unpools with the encoder's max-pooling indices
  (``MaxUnpool2d``); it restores any input size.
* :class:`PSPNet` (Zhao et al., 2017): a dilated backbone of output stride 8
  and the pyramid pooling module (adaptive average pooling to 1, 2, 3 and
  6 bins). Its global context makes every output pixel depend on the whole
  input, so tiles are approximate at any overlap.
* :class:`Pix2PixGenerator` (Isola et al., 2017): the "U-Net 256"
  generator, eight stride-2 4x4 convolutions down and up with skips, 3
  channels in and out (``output="raw"``): sizes on a 256 grid.

>>> import torch
>>> net = build("segnet", width=4).eval()
>>> net(torch.zeros(1, 1, 64, 64)).shape
torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FCN8s", "SegNet", "PSPNet", "Pix2PixGenerator", "GlobalAttentionUNet", "ARCHITECTURES", "build", "he_init_"]


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FCN8s(nn.Module):
    """FCN-8s on a VGG-16 style encoder (``width`` 64 is VGG-16's).

    >>> FCN8s(width=2)(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 64) -> None:
        super().__init__()
        w = width
        plan = [(2, w), (2, 2 * w), (3, 4 * w), (3, 8 * w), (3, 8 * w)]
        blocks: List[nn.Module] = []
        cin = in_channels
        for convs, cout in plan:
            layers: List[nn.Module] = []
            for _ in range(convs):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3, self.block4, self.block5 = blocks
        self.fc = nn.Sequential(
            nn.Conv2d(8 * w, 64 * w, 7, padding=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(64 * w, 64 * w, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64 * w, classes, 1),
        )
        self.score_pool4 = nn.Conv2d(8 * w, classes, 1)
        self.score_pool3 = nn.Conv2d(4 * w, classes, 1)
        self.up2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.up4 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.up8 = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.block3(self.block2(self.block1(x)))
        pool4 = self.block4(pool3)
        score = self.fc(self.block5(pool4))
        score = self.up2(score) + self.score_pool4(pool4)
        score = self.up4(score) + self.score_pool3(pool3)
        return self.up8(score)


class SegNet(nn.Module):
    """SegNet: max-pooling indices carried to the decoder's unpooling.

    >>> SegNet(width=2, depth=3)(torch.zeros(1, 1, 30, 30)).shape
    torch.Size([1, 2, 30, 30])
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 64, depth: int = 5) -> None:
        super().__init__()
        widths = [width * min(2**i, 8) for i in range(depth)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for cout in widths:
            self.encoders.append(nn.Sequential(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout)))
            cin = cout
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            cout = widths[i - 1] if i > 0 else widths[0]
            self.decoders.append(nn.Sequential(_conv_bn_relu(widths[i], widths[i]), _conv_bn_relu(widths[i], cout)))
        self.classifier = nn.Conv2d(widths[0], classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices: List[torch.Tensor] = []
        sizes: List[List[int]] = []
        for encoder in self.encoders:
            x = encoder(x)
            sizes.append([int(s) for s in x.shape[-2:]])
            x, index = F.max_pool2d_with_indices(x, [2, 2], [2, 2])
            indices.append(index)
        for k, decoder in enumerate(self.decoders):
            level = len(indices) - 1 - k
            # MaxUnpool2d's functional form: TorchScript 2.11 fails to
            # script the module (an internal IntList assertion).
            x = F.max_unpool2d(x, indices[level], [2, 2], [2, 2], [0, 0], sizes[level])
            x = decoder(x)
        return self.classifier(x)


class _PyramidPooling(nn.Module):
    def __init__(self, channels: int, bins: Tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = channels // len(bins)
        self.bins: List[int] = list(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, branch, 1, bias=False), nn.ReLU(inplace=True)) for _ in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(s) for s in x.shape[-2:]]
        pooled = [x]
        for i, stage in enumerate(self.stages):
            y = stage(F.adaptive_avg_pool2d(x, [self.bins[i], self.bins[i]]))
            pooled.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return torch.cat(pooled, dim=1)


class PSPNet(nn.Module):
    """PSPNet: a dilated backbone of output stride 8 and pyramid pooling.

    >>> PSPNet(width=4)(torch.zeros(1, 1, 48, 48)).shape
    torch.Size([1, 2, 48, 48])
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 64) -> None:
        super().__init__()
        w = width
        self.backbone = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(4 * w, 4 * w, dilation=2),
            _conv_bn_relu(4 * w, 8 * w, dilation=4),
        )
        self.ppm = _PyramidPooling(8 * w)
        self.head = nn.Sequential(_conv_bn_relu(16 * w, 4 * w), nn.Conv2d(4 * w, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(s) for s in x.shape[-2:]]
        y = self.head(self.ppm(self.backbone(x)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class _SkipBlock(nn.Module):
    """One level of the pix2pix U-Net: down, the inner levels, up, concat."""

    def __init__(self, outer: int, inner: int, sub: nn.Module | None, outermost: bool = False,
                 in_channels: int | None = None, out_channels: int | None = None, dropout: bool = False) -> None:
        super().__init__()
        cin = in_channels if in_channels is not None else outer
        down: List[nn.Module] = [nn.Conv2d(cin, inner, 4, stride=2, padding=1, bias=False)]
        if not outermost:
            down = [nn.LeakyReLU(0.2, inplace=False)] + down
            if sub is not None:
                down.append(nn.BatchNorm2d(inner))
        up_in = inner if sub is None else 2 * inner
        if outermost:
            up: List[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(up_in, out_channels or outer, 4, stride=2, padding=1), nn.Tanh()]
        else:
            up = [nn.ReLU(), nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(outer)]
            if dropout:
                up.append(nn.Dropout(0.5))
        self.outermost = outermost
        self.down = nn.Sequential(*down)
        self.sub = sub if sub is not None else nn.Identity()
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.sub(self.down(x)))
        return y if self.outermost else torch.cat([x, y], 1)


class Pix2PixGenerator(nn.Module):
    """The pix2pix "U-Net 256" generator (``width`` 64 is the paper's ngf).

    >>> Pix2PixGenerator(width=2)(torch.zeros(1, 3, 256, 256)).shape
    torch.Size([1, 3, 256, 256])
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 64, downs: int = 8) -> None:
        super().__init__()
        w = width
        block = _SkipBlock(8 * w, 8 * w, None)
        for _ in range(downs - 5):
            block = _SkipBlock(8 * w, 8 * w, block, dropout=True)
        block = _SkipBlock(4 * w, 8 * w, block)
        block = _SkipBlock(2 * w, 4 * w, block)
        block = _SkipBlock(w, 2 * w, block)
        self.model = _SkipBlock(out_channels, w, block, outermost=True, in_channels=in_channels, out_channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GlobalAttentionUNet(nn.Module):
    """A same-padded U-Net with global self-attention written by hand
    (``softmax(q k^T / sqrt(c)) v`` as matmul, exp and sum, which no code
    scan names) at its deepest level, ``2**levels`` times smaller than the
    image: its memory grows with the square of a tile's pixels (two
    ``(h w / 4**levels)^2`` matrices; at ``levels=3`` 2.2 GiB for a 1024 px
    image, ~31 GiB at 2048). Not in :data:`ARCHITECTURES`: it is for the
    memory tests, where tiles are approximate by design.

    >>> GlobalAttentionUNet(width=4, levels=2)(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 2, 32, 32])
    """

    def __init__(self, width: int = 16, levels: int = 3) -> None:
        super().__init__()
        c = width
        self.inc = nn.Conv2d(1, c, 3, padding=1)
        self.down = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(levels)])
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.up = nn.ModuleList([nn.Conv2d(2 * c, c, 3, padding=1) for _ in range(levels)])
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.inc(x))
        skips: List[torch.Tensor] = []
        for d in self.down:
            skips.append(x)
            x = F.relu(d(F.max_pool2d(x, 2)))
        n, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)
        k = self.k(x).flatten(2)
        v = self.v(x).flatten(2).transpose(1, 2)
        a = torch.matmul(q, k) / (c**0.5)
        a = torch.exp(a - a.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        x = x + torch.matmul(a, v).transpose(1, 2).reshape(n, c, h, w)
        i = len(skips) - 1
        for u in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.relu(u(torch.cat([x, skips[i]], 1)))
            i -= 1
        return self.out(x)


#: name -> (constructor, its keyword arguments for a small test network,
#: the geometry a user declares for it in metadata).
ARCHITECTURES: Dict[str, Tuple[Callable[..., nn.Module], Dict[str, int], Dict[str, object]]] = {
    "fcn8s": (FCN8s, {"width": 4}, {"padding": "same", "size_multiple": 32, "halo": 128}),
    "segnet": (SegNet, {"width": 4, "depth": 4}, {"padding": "same", "size_multiple": 16, "halo": 96}),
    "pspnet": (PSPNet, {"width": 4}, {"padding": "same", "size_multiple": 8, "halo": 64}),
    "pix2pix": (Pix2PixGenerator, {"width": 4}, {"padding": "same", "size_multiple": 256, "halo": 512}),
}


def he_init_(net: nn.Module) -> nn.Module:
    """He-normal weights and zero biases for every (transposed) convolution:
    narrow random networks keep their signal through a dozen ReLUs (with
    PyTorch's default initialisation a narrow FCN-8s outputs its biases,
    whatever the input)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.zero_()
    return net


def build(name: str, **kwargs: int) -> nn.Module:
    """A zoo network by name, with the small test configuration unless
    ``kwargs`` say otherwise, He-initialised (seed torch first for
    repeatable weights)."""
    try:
        constructor, defaults, _ = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}") from None
    return he_init_(constructor(**{**defaults, **kwargs}))
