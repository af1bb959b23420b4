"""The paper's weight map and the weighted loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from training.loss import (
    border_term,
    boundary_targets,
    object_diameters,
    class_weights,
    foreground_dice_loss,
    instance_targets,
    separation_borders,
    segmentation_loss,
    weight_map,
    weighted_cross_entropy,
)


def disks(gap: int, radius: int = 12, size=(64, 96)) -> np.ndarray:
    """Two disks side by side, ``gap`` background pixels between them
    (0: touching), and a third one far away."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    lab = np.zeros(size, np.int32)
    cy, c1 = 32, 20
    c2 = c1 + 2 * radius + 1 + gap
    lab[(yy - cy) ** 2 + (xx - c1) ** 2 <= radius**2] = 1
    lab[(yy - cy) ** 2 + (xx - c2) ** 2 <= radius**2] = 2
    return lab


@pytest.mark.parametrize("gap", [0, 1, 3])
def test_weight_peaks_in_the_gap(gap: int):
    lab = disks(gap)
    w = weight_map(lab)
    targets = instance_targets(lab)
    # The gap: background pixels on the line between the two centres.
    c2 = 20 + 25 + gap
    cols = [x for x in range(20, c2) if targets[32, x] == 0]
    assert cols and max(cols) - min(cols) == len(cols) - 1  # one run of pixels
    gap_w = w[32, cols].max()
    assert gap_w == pytest.approx(w.max())
    far = w[2, 2]  # far background
    assert gap_w > 5 * far
    assert gap_w > w[targets > 0].max()  # higher than anywhere in the objects
    # Far from the pair, the border term has vanished: only w_c remains.
    wc = class_weights(targets, 2)
    assert far == pytest.approx(wc[0], rel=1e-4)


def test_touching_objects_get_separated():
    lab = disks(0)
    borders = separation_borders(lab)
    assert borders.any()
    assert set(np.unique(lab[borders])) == {1, 2}
    t = instance_targets(lab)
    assert ndimage.label(t)[1] == 2  # the two disks are apart in the targets
    assert ndimage.label(lab > 0)[1] == 1  # but touch in the labels


def test_border_term_matches_brute_force():
    rng = np.random.default_rng(0)
    lab = np.zeros((50, 60), np.int32)
    for k in range(1, 7):
        y, x = rng.integers(3, 45), rng.integers(3, 55)
        lab[y:y + 5, x:x + 4] = k
    ids = [k for k in np.unique(lab) if k]
    dist = np.stack([ndimage.distance_transform_edt(lab != k) for k in ids])
    dist.sort(axis=0)
    want = 10 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * 25.0))
    want[lab > 0] = 0
    assert np.allclose(border_term(lab, 10.0, 5.0), want, atol=1e-4)


def test_class_weights_balance():
    t = np.array([0] * 8 + [1] * 2)
    wc = class_weights(t, 2)
    assert np.allclose(wc, [10 / 16, 10 / 4])
    assert wc[t].mean() == pytest.approx(1.0)


def test_weighted_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 5, 6)
    t = torch.randint(0, 3, (2, 5, 6))
    assert torch.allclose(weighted_cross_entropy(z, t), F.cross_entropy(z, t))
    w = torch.rand(2, 5, 6)
    manual = (F.cross_entropy(z, t, reduction="none") * w).mean()
    assert torch.allclose(weighted_cross_entropy(z, t, w), manual)
    assert torch.allclose(weighted_cross_entropy([z, z], t, w), manual)
    assert weighted_cross_entropy(z.bfloat16(), t, w).dtype == torch.float32


def test_foreground_dice_loss_is_one_minus_the_pooled_soft_dice():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 5, 6)
    t = torch.randint(0, 3, (2, 5, 6))
    p = 1 - torch.softmax(z, 1)[:, 0]
    g = (t > 0).float()
    manual = 1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)
    assert torch.allclose(foreground_dice_loss(z, t), manual)
    assert torch.allclose(foreground_dice_loss([z, z], t), manual)
    assert foreground_dice_loss(z.bfloat16(), t).dtype == torch.float32
    # Raising the background logit on the object pixels worsens it; on the
    # background pixels it improves it.
    step = torch.zeros_like(z)
    step[:, 0] = g
    assert foreground_dice_loss(z + step, t) > manual
    step[:, 0] = 1 - g
    assert foreground_dice_loss(z + step, t) < manual


def test_segmentation_loss_adds_the_dice_term_by_its_weight():
    torch.manual_seed(1)
    z = torch.randn(2, 3, 5, 6)
    t = torch.randint(0, 3, (2, 5, 6))
    w = torch.rand(2, 5, 6)
    ce = weighted_cross_entropy(z, t, w)
    assert torch.equal(segmentation_loss(z, t, w), ce)
    assert torch.allclose(segmentation_loss(z, t, w, dice=0.5), ce + 0.5 * foreground_dice_loss(z, t))


def test_boundary_targets_keep_touching_interiors_apart():
    inst = np.zeros((20, 30), np.int32)
    inst[3:15, 2:14] = 1
    inst[3:15, 14:27] = 2  # touching along a column
    for width in (1, 2):
        t = boundary_targets(inst, width)
        assert set(np.unique(t)) == {0, 1, 2}
        assert ((t > 0) == (inst > 0)).all()  # objects keep their extent
        interiors, n = ndimage.label(t == 1)
        assert n == 2  # and their interiors are apart
        # The band is `width` pixels on each side of every object edge.
        assert (t[9, 14 - width:14 + width] == 2).all() and t[9, 14 - width - 1] == 1 and t[9, 14 + width] == 1
        assert (t[3:3 + width, 5] == 2).all() and t[3 + width, 5] == 1
    # The image edge is no boundary: an object cut by it keeps its interior there.
    assert boundary_targets(np.ones((5, 5), np.int32))[0, 2] == 1
    # Interiors of small objects vanish: the read-out keeps those as objects
    # of their own (what no seed reaches of the boundary class).
    assert (boundary_targets(np.pad(np.ones((2, 2), np.int32), 2)) != 1).all()


def test_weight_map_of_boundary_targets_weighs_the_gap_between_interiors():
    inst = np.zeros((20, 30), np.int32)
    inst[3:15, 2:14] = 1
    inst[3:15, 14:27] = 2
    t = boundary_targets(inst, 1)
    w = weight_map(inst, targets=t)
    assert w[9, 13:15].min() > 5  # the boundary between the touching interiors
    assert w[9, 13:15].min() > w[0, 0] and w[9, 13] > w[9, 8]


def test_object_diameters():
    inst = np.zeros((40, 40), np.int32)
    inst[:10, :10] = 1
    inst[20:24, 20:24] = 2
    d = object_diameters(inst)
    assert d == pytest.approx([np.sqrt(400 / np.pi), np.sqrt(64 / np.pi)])
    assert object_diameters(np.zeros((4, 4, 4), np.int32)).size == 0
    assert object_diameters(np.ones((4, 4, 4), np.int32)) == pytest.approx([np.cbrt(6 * 64 / np.pi)])


def test_the_border_term_takes_any_instance_ids():
    # find_objects made a list as long as the largest id: an id of 10^8 in a 20x20 image took
    # gigabytes (a MemoryError under a 6 GB limit), naming nothing.
    small = np.zeros((20, 20), np.int64)
    small[2:8, 2:8], small[10:16, 2:8], small[2:8, 11:18] = 1, 2, 3
    big = np.where(small > 0, np.array([0, 7, 2**31 - 1, 10**8])[small], 0)
    np.testing.assert_array_equal(border_term(big), border_term(small))
    np.testing.assert_array_equal(weight_map(big), weight_map(small))
