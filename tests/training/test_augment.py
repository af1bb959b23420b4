"""Augmentation: exact identity for zero displacement, label values kept,
mirroring semantics, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import (
    Augmenter,
    _bicubic,
    elastic_field,
    flip_rotate,
    gray_values,
    reflect_index,
    sample_patch,
)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_reflect_index_is_numpy_reflect(n: int):
    a = np.arange(n)
    pad = 3 * n + 2
    want = np.pad(a, pad, mode="reflect")
    assert reflect_index(np.arange(-pad, n + pad), n).tolist() == want.tolist()


def test_zero_displacement_is_exact_identity():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 37, 41)).astype(np.float32)
    lab = rng.integers(0, 9, size=(37, 41)).astype(np.int32)
    zero = np.zeros((2, 37, 41))
    assert np.array_equal(sample_patch(img, (0, 0), (37, 41), zero, order=3), img)
    assert np.array_equal(sample_patch(lab, (0, 0), (37, 41), zero, order=0), lab)
    # Also for a window inside and one past the edge (mirrored like numpy.pad).
    zero = np.zeros((2, 20, 25))
    assert np.array_equal(sample_patch(img, (5, 9), (20, 25), zero, order=3), img[:, 5:25, 9:34])
    padded = np.pad(img, ((0, 0), (4, 4), (6, 6)), mode="reflect")
    assert np.array_equal(sample_patch(img, (-4, -6), (20, 25), zero, order=3), padded[:, :20, :25])
    assert np.array_equal(sample_patch(img, (-4, -6), (20, 25)), padded[:, :20, :25])


def test_integer_displacement_is_a_shift():
    img = np.random.default_rng(1).random((1, 30, 30)).astype(np.float32)
    disp = np.stack([np.full((10, 10), 3.0), np.full((10, 10), -2.0)])
    assert np.array_equal(sample_patch(img, (5, 5), (10, 10), disp, order=3), img[:, 8:18, 3:13])


def test_bicubic_reproduces_linear_ramps():
    ramp = np.add.outer(np.arange(20.0), 2 * np.arange(20.0))[None]
    yy, xx = np.meshgrid(np.linspace(3, 15, 9), np.linspace(2.5, 16.3, 7), indexing="ij")
    assert np.allclose(_bicubic(ramp, yy, xx)[0], yy + 2 * xx)


def test_elastic_field_interpolates_the_coarse_grid():
    f = elastic_field((41, 61), np.random.default_rng(3), std=10.0, grid=3)
    coarse = np.random.default_rng(3).normal(0.0, 10.0, size=(2, 3, 3))
    assert np.allclose(f[:, ::20, ::30], coarse)
    # Smooth: neighbouring displacements differ by far less than the amplitude.
    assert np.abs(np.diff(f, axis=1)).max() < 3 and np.abs(np.diff(f, axis=2)).max() < 3


def test_labels_keep_their_values():
    rng = np.random.default_rng(4)
    lab = np.zeros((64, 64), np.int32)
    for v in (3, 7, 250):
        y, x = rng.integers(5, 55, 2)
        lab[y:y + 9, x:x + 9] = v
    img = lab[None].astype(np.float32)
    aug = Augmenter(elastic_std=10.0)
    for seed in range(5):
        _, (out,) = aug.patch(img, [lab], (-10, 7), (60, 60), np.random.default_rng(seed))
        assert set(np.unique(out)) <= {0, 3, 7, 250}
        assert out.dtype == lab.dtype


def test_augmentation_is_seeded_and_consistent():
    rng = np.random.default_rng(5)
    img = rng.random((1, 48, 48)).astype(np.float32)
    lab = (img[0] > 0.5).astype(np.int32)
    aug = Augmenter(gamma=None, contrast=None, brightness=None, elastic_std=0.0)
    a1, (l1,) = aug.patch(img, [lab], (0, 0), (48, 48), np.random.default_rng(9))
    a2, (l2,) = aug.patch(img, [lab], (0, 0), (48, 48), np.random.default_rng(9))
    assert np.array_equal(a1, a2) and np.array_equal(l1, l2)
    # Without elastic/gray changes the image and labels move together.
    assert np.array_equal((a1[0] > 0.5).astype(np.int32), l1)


def test_flip_rotate_same_transform_for_all():
    a = np.arange(36).reshape(6, 6)
    for seed in range(8):
        x, y = flip_rotate([a, a.copy()], np.random.default_rng(seed))
        assert np.array_equal(x, y) and sorted(x.ravel()) == list(range(36))
    x, = flip_rotate([np.arange(12).reshape(3, 4)], np.random.default_rng(0))
    assert x.shape == (3, 4)  # non-square: no quarter turns


def test_gray_values_change_intensity_only():
    img = np.linspace(0, 1, 100, dtype=np.float32).reshape(1, 10, 10)
    out = gray_values(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.float32
    assert not np.array_equal(out, img)
    # Monotone: the order of gray values is kept.
    assert np.all(np.diff(out.ravel()) >= 0)
    assert np.array_equal(gray_values(img, np.random.default_rng(0), None, None, None), img)


def test_config_round_trip():
    aug = Augmenter.from_config({"elastic_std": 5, "gamma": [0.8, 1.2]})
    assert aug.gamma == (0.8, 1.2) and Augmenter.from_config(aug.to_config()) == aug
    assert Augmenter.from_config({"enabled": False}) is None


def test_zoom_reads_a_larger_or_smaller_region_around_the_centre():
    img = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    labels = np.repeat(np.arange(64)[None, :], 64, 0)
    aug = Augmenter(elastic_std=0, flips=False, rot90=False, gamma=None, contrast=None, brightness=None, scale=(2.0, 2.0))
    a, (b,) = aug.patch(img, [labels], (16, 16), (32, 32), np.random.default_rng(0))
    # Twice the pixels per patch pixel: columns 0..63 seen in 32 steps of 2.
    assert b[0, 0] == 1 and b[0, -1] == 63 and np.all(np.diff(b[0]) == 2)
    a, (b,) = Augmenter(elastic_std=0, flips=False, rot90=False, gamma=None, contrast=None, brightness=None,
                        scale=(0.5, 0.5)).patch(img, [labels], (16, 16), (32, 32), np.random.default_rng(0))
    assert b[0, 0] == 24 and b[0, -1] == 39  # the central half, each pixel twice
    zoomed = Augmenter(scale=(0.5, 2.0))
    assert Augmenter.from_config(zoomed.to_config()) == zoomed and zoomed.to_config()["scale"] == [0.5, 2.0]


def test_blur_softens_the_image_only_and_leaves_streams_without_it_alone():
    img = np.zeros((1, 32, 32), np.float32)
    img[0, 16, 16] = 1.0
    labels = (np.arange(32 * 32).reshape(32, 32) % 7).astype(np.int32)
    plain = dict(elastic_std=0, flips=False, rot90=False, gamma=None, contrast=None, brightness=None)
    a, (b,) = Augmenter(**plain, blur=(1.0, 1.0), blur_probability=1.0).patch(
        img, [labels], (0, 0), (32, 32), np.random.default_rng(0))
    assert np.array_equal(b, labels)  # labels are never blurred
    assert a[0, 16, 16] < 0.5 and a[0, 15, 16] > 0 and a.dtype == np.float32
    # Probability 0 draws once and leaves the image alone.
    a, _ = Augmenter(**plain, blur=(1.0, 1.0), blur_probability=0.0).patch(
        img, [labels], (0, 0), (32, 32), np.random.default_rng(0))
    assert np.array_equal(a, img)
    # Without blur nothing is drawn for it: seeded runs of older configs
    # (the paper's augmentation) give the same patches as before.
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    x, _ = Augmenter().patch(img, [labels], (0, 0), (32, 32), rng1)
    y, _ = Augmenter(blur=None, blur_probability=1.0).patch(img, [labels], (0, 0), (32, 32), rng2)
    assert np.array_equal(x, y) and rng1.random() == rng2.random()
    blurred = Augmenter(blur=(0.0, 1.5))
    assert Augmenter.from_config(blurred.to_config()) == blurred and blurred.to_config()["blur"] == [0.0, 1.5]


@pytest.mark.parametrize("settings", [
    {"blur": (float("nan"), 1.0)}, {"blur": (1e9, 1e9)}, {"blur": "ab"}, {"blur": (2.0, 1.0)}, {"blur": (-1.0, 1.0)},
    {"blur": (0.0, 1.0, 2.0)}, {"blur": (0.0, 1.0), "blur_probability": "x"}, {"blur_probability": 1.5},
    {"blur_probability": float("nan")},
])
def test_bad_blur_settings_fail_when_configured_naming_the_setting(settings):
    with pytest.raises(ValueError, match=r"augment\.blur"):
        Augmenter(**settings)
