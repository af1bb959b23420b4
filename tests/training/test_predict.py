"""Whole-region inference: one forward pass of the mirror-padded region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.predict import padded_extent, predict_classes, predict_logits
from training.unet import UNet, geometry


@pytest.mark.parametrize("h, w", [(40, 40), (37, 53), (5, 9)])
def test_valid_region_equals_padded_forward(h: int, w: int):
    torch.manual_seed(0)
    net = UNet(depth=3, base=4, dropout=0.0).eval()
    img = np.random.default_rng(0).random((1, h, w)).astype(np.float32)
    got = predict_logits(net, img)
    assert got.shape == (2, h, w)
    geo = geometry(3, "valid")
    (t, b), (l, r) = padded_extent(h, geo, "valid"), padded_extent(w, geo, "valid")
    assert t == l == geo.halo
    x = np.pad(img, ((0, 0), (t, b), (l, r)), mode="reflect")
    with torch.no_grad():
        want = net(torch.from_numpy(x)[None])[0, :, :h, :w].numpy()
    assert np.array_equal(got, want)
    assert predict_classes(net, img).dtype == np.uint8


def test_same_region_crops_the_context():
    net = UNet(depth=3, base=4, padding="same", dropout=0.0).eval()
    img = np.random.default_rng(1).random((1, 30, 21)).astype(np.float32)
    assert predict_logits(net, img).shape == (2, 30, 21)
    geo = geometry(3, "same")
    before, after = padded_extent(30, geo, "same")
    assert before == geo.halo and (30 + before + after) % 4 == 0
