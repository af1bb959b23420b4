"""Whole-region inference for validation and held-out evaluation.

A region is segmented in **one forward pass** of the mirror-padded region,
which is what the runtime's overlap-tile result equals (docs/design.md section 5):
the region is extended by ``halo`` pixels on every side with
``numpy.pad(mode="reflect")`` and, at the far end, by the few extra pixels
that make the input a valid size; the surplus output is cropped.

>>> import torch
>>> from training.unet import UNet
>>> net = UNet(depth=3, base=4).eval()
>>> predict_logits(net, np.zeros((1, 50, 70), np.float32)).shape
(2, 50, 70)
"""

from __future__ import annotations

import contextlib
from typing import Tuple

import numpy as np
import torch
from torch import nn

from .unet import Geometry, model_geometry

__all__ = ["padded_extent", "predict_logits", "predict_classes"]


def padded_extent(size: int, geo: Geometry, padding: str) -> Tuple[int, int]:
    """``(before, after)`` padding that turns a region of ``size`` pixels into
    the smallest valid network input covering it with ``geo.halo`` of context
    on each side.

    >>> from training.unet import geometry
    >>> padded_extent(388, geometry(5, "valid"), "valid")
    (92, 92)
    >>> padded_extent(101, geometry(5, "valid"), "valid")
    (92, 107)
    """
    need = size + 2 * geo.halo
    if padding == "valid":
        n = geo.size_offset
        while n < need or n <= 2 * geo.halo:
            n += geo.size_multiple
        return geo.halo, n - size - geo.halo
    n = -(-need // geo.size_multiple) * geo.size_multiple
    return geo.halo, n - size - geo.halo


def predict_logits(
    model: nn.Module,
    image: np.ndarray,
    geo: Geometry | None = None,
    padding: str | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """Logits ``(classes, H, W)`` float32 of a normalised ``(C, H, W)`` image,
    one forward pass of the mirror-padded image (the model should be in eval
    mode). ``geo``/``padding`` default to the model's ``geometry`` and
    ``config`` (:class:`~training.unet.UNet`, :class:`~training.unet.UNetPlusPlus`)."""
    config = getattr(model, "config", {})
    if geo is None:
        geo = getattr(model, "geometry", None) or model_geometry(config)
    padding = padding or config.get("padding", "valid")
    h, w = image.shape[-2:]
    (t, b), (l, r) = padded_extent(h, geo, padding), padded_extent(w, geo, padding)
    x = np.pad(image, ((0, 0), (t, b), (l, r)), mode="reflect")
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), cast:
        out = model(torch.from_numpy(np.ascontiguousarray(x))[None]).float()[0]
    if padding == "same":
        out = out[:, t:t + h, l:l + w]
    else:
        out = out[:, :h, :w]
    return out.numpy()


def predict_classes(model: nn.Module, image: np.ndarray, **kwargs) -> np.ndarray:
    """Class map (uint8) of a normalised ``(C, H, W)`` image: argmax of
    :func:`predict_logits`."""
    return predict_logits(model, image, **kwargs).argmax(0).astype(np.uint8)
