"""Loading, splitting and cropping."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from training.augment import Augmenter
from training.data import (
    CropDataset,
    Sample,
    find_pairs,
    load_arrays,
    load_folder,
    load_sample_data,
    normalize,
    split_files,
    split_rows,
)
from scipy import ndimage

from training.loss import boundary_targets, instance_targets


def test_folder_pairs_tiff_and_png(tmp_path):
    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4000, (20, 24)).astype(np.uint16)
    b = rng.integers(0, 255, (20, 24)).astype(np.uint8)
    tifffile.imwrite(imgs / "a.tif", a)
    tifffile.imwrite(labs / "a.tiff", (a > 2000).astype(np.uint16) * 3)
    Image.fromarray(b).save(imgs / "b.png")
    Image.fromarray((b > 100).astype(np.uint8)).save(labs / "b.png")
    (imgs / "notes.txt").write_text("ignored")
    pairs = find_pairs(imgs, labs)
    assert [(i.name, l.name) for i, l in pairs] == [("a.tif", "a.tiff"), ("b.png", "b.png")]
    samples = load_folder(imgs, labs)
    assert [s.name for s in samples] == ["a.tif", "b.png"]
    assert np.array_equal(samples[0].image[0], a.astype(np.float32))
    # A binary mask: its connected objects (face neighbours) are the instances.
    assert np.array_equal(samples[1].labels, ndimage.label(b > 100)[0])
    Image.fromarray(b).save(imgs / "c.png")
    with pytest.raises(ValueError, match="no labels"):
        find_pairs(imgs, labs)


def test_arrays_channels_and_size_check():
    s = load_arrays([np.zeros((10, 12, 3))], [np.zeros((10, 12))])[0]
    assert s.image.shape == (3, 10, 12)
    with pytest.raises(ValueError):
        load_arrays([np.zeros((10, 12))], [np.zeros((10, 11))])


def test_normalize_percentile_matches_numpy():
    x = np.random.default_rng(1).random((1, 30, 30)) * 1000
    lo, hi = np.percentile(x, [1, 99.8])
    got = normalize(x, {"kind": "percentile", "low": 1, "high": 99.8})
    assert np.allclose(got, (x - lo) / (hi - lo), atol=1e-6)
    assert np.allclose(normalize(x, {"kind": "zscore", "mean": 2.0, "std": 4.0}), (x - 2) / 4, atol=1e-4)
    assert np.array_equal(normalize(np.full((3, 3), 7.0), {"kind": "percentile", "low": 1, "high": 99}), np.zeros((3, 3)))


def test_sample_data_and_row_split():
    s = load_sample_data()
    assert s.image.shape == (1, 512, 512) and s.labels.max() > 100
    parts = split_rows([s], {"train": [0, 320], "val": [320, 384], "test": [384, 512]})
    assert [p[0].labels.shape[0] for p in (parts["train"], parts["val"], parts["test"])] == [320, 64, 128]
    assert np.array_equal(parts["test"][0].labels, s.labels[384:])
    with pytest.raises(ValueError, match="overlap"):
        split_rows([s], {"train": [0, 400], "test": [384, 512]})


def test_split_files():
    samples = load_arrays([np.zeros((4, 4))] * 5, [np.zeros((4, 4))] * 5, names=[f"f{i}.tif" for i in range(5)])
    parts = split_files(samples, val=["f1"], test=["f3.tif"])
    assert [s.name for s in parts["val"]] == ["f1.tif"] and [s.name for s in parts["test"]] == ["f3.tif"]
    assert len(parts["train"]) == 3
    parts = split_files(samples, val=0.4, seed=2)
    assert len(parts["val"]) == 2 and len(parts["train"]) == 3
    assert not {s.name for s in parts["val"]} & {s.name for s in parts["train"]}
    # -0.2 took all but one file for validation, 0.04 none; a file both validation and test is not held out.
    for bad in (-0.2, 0.04, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"data.split.val .* must be a fraction in \(0, 1\)"):
            split_files(samples, val=bad)
    with pytest.raises(ValueError, match="data.split.val and data.split.test both name f1.tif"):
        split_files(samples, val=["f1"], test=["f1.tif"])


def test_crops_are_aligned_and_cover_the_edges():
    # An image equal to its labels shows whether targets are the input's centre.
    rng = np.random.default_rng(2)
    lab = np.zeros((40, 50), np.int32)
    for k in range(1, 12):
        y, x = rng.integers(0, 36), rng.integers(0, 46)
        lab[y:y + 4, x:x + 4] = k
    mask = (lab > 0).astype(np.int32)
    s = Sample(mask[None].astype(np.float32), mask, instances=False, name="x")
    ds = CropDataset([s], crop=30, margin=8, length=40, augmenter=None, seed=1, classes=2)
    for i in range(40):
        item = ds[i]
        assert item["image"].shape == (1, 30, 30)
        assert item["target"].shape == item["weight"].shape == (14, 14)
        centre = item["image"][0, 8:-8, 8:-8].numpy()
        assert np.array_equal(centre > 0, item["target"].numpy() > 0)
    a, b = ds[3], ds[3]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_crops_from_an_image_smaller_than_the_crop():
    lab = np.zeros((10, 12), np.int32)
    lab[2:6, 3:8] = 5
    s = Sample(np.random.default_rng(0).random((1, 10, 12)).astype(np.float32), lab, True, "tiny")
    ds = CropDataset([s], crop=44, margin=10, length=4, augmenter=Augmenter(), seed=0)
    item = ds[0]
    assert item["image"].shape == (1, 44, 44) and item["target"].shape == (24, 24)
    assert set(np.unique(item["target"].numpy())) <= {0, 1}
    assert float(item["weight"].min()) > 0


def test_instance_targets_and_weights_in_dataset():
    s = load_sample_data().region(rows=(0, 128)).normalized({"kind": "percentile", "low": 1, "high": 99.8})
    ds = CropDataset([s], crop=92, margin=10, length=8, augmenter=None, seed=0)
    assert np.array_equal(ds.targets[0], instance_targets(s.labels))
    assert max(float(ds[i]["weight"].max()) for i in range(len(ds))) > 5  # the border term between touching nuclei
    assert ds.class_weight[1] > ds.class_weight[0]


@pytest.mark.parametrize("boundary", [0, 2])
def test_each_pixels_weight_is_its_own_targets_under_augmentation(boundary):
    # The weight map was made on the whole image and warped beside targets made from the warped patch:
    # 9% of the interior carried the boundary's class weight (and the reverse), and the border term
    # fell on interiors. Now both come from the patch's instance labels.
    s = load_sample_data().region(rows=(0, 160)).normalized({"kind": "percentile", "low": 1, "high": 99.8})
    aug = Augmenter(scale=(0.6, 1.6))
    classes = 3 if boundary else 2
    plain = CropDataset([s], crop=92, margin=44, length=6, augmenter=aug, seed=0, classes=classes,
                        boundary=boundary, w0=0.0)
    bordered = CropDataset([s], crop=92, margin=44, length=6, augmenter=aug, seed=0, classes=classes,
                           boundary=boundary)
    wc = plain.class_weight.astype(np.float32)
    for i in range(len(plain)):
        target, weight = plain[i]["target"].numpy(), plain[i]["weight"].numpy()
        np.testing.assert_array_equal(weight, wc[target])
        item = bordered[i]
        target, weight = item["target"].numpy(), item["weight"].numpy()
        assert np.array_equal(target, plain[i]["target"].numpy())
        objects = target == 1
        np.testing.assert_array_equal(weight[objects], wc[1])  # the border term is on what separates objects
        assert (weight >= wc[target]).all()


def test_two_class_targets_keep_touching_nuclei_apart_under_zoom():
    # Two-class targets were made on the whole image and zoomed by nearest neighbour: enlarged, the
    # two-pixel separation gaps closed (33 of 1122 components held two nuclei at zoom 1.4-1.6).
    s = load_sample_data().region(rows=(0, 160)).normalized({"kind": "percentile", "low": 1, "high": 99.8})
    ds = CropDataset([s], crop=92, margin=10, length=30, augmenter=Augmenter(scale=(1.4, 1.6)), seed=0)
    m = ds.margin
    merged = components = 0
    for i in range(len(ds)):
        target = ds[i]["target"].numpy()
        _, labels, instances = ds.patch(i)
        assert instances
        ids = labels[m:-m, m:-m]
        found, count = ndimage.label(target > 0, structure=np.ones((3, 3)))
        for c in range(1, count + 1):
            components += 1
            merged += len(np.unique(ids[found == c])) > 1
    assert components > 100 and merged == 0, (merged, components)


def test_boundary_targets_are_derived_from_each_augmented_patch():
    s = load_sample_data().region(rows=(0, 160)).normalized({"kind": "percentile", "low": 1, "high": 99.8})
    aug = Augmenter(scale=(0.6, 1.6))
    ds = CropDataset([s], crop=92, margin=44, length=6, augmenter=aug, seed=0, classes=3, boundary=2)
    assert np.array_equal(ds.targets[0], boundary_targets(s.labels, 2))
    assert ds.class_weight[2] > ds.class_weight[1] > ds.class_weight[0]
    for i in range(len(ds)):
        target = ds[i]["target"].numpy()
        assert set(np.unique(target)) <= {0, 1, 2}
        # Interiors never touch the background: the band survives any zoom.
        interior = target == 1
        grown = ndimage.binary_dilation(interior)
        assert not (grown & (target == 0))[1:-1, 1:-1].any()
    with pytest.raises(ValueError, match="class 2"):
        CropDataset([s], crop=92, margin=44, length=1, classes=2, boundary=1)


@pytest.mark.parametrize("image,message", [
    (np.zeros((0, 12), np.float32), "the image is empty"),
    (np.where(np.eye(12) > 0, np.nan, 1.0), "12 pixel value"),  # the first loss was NaN: "lower train.lr"
    (np.full((12, 12), 1e300), "NaN or infinite"),  # infinite once float32
])
def test_empty_and_non_finite_images_are_refused_at_load(image, message):
    with pytest.raises(ValueError, match=message):
        load_arrays([image], [np.zeros(image.shape, np.int32)], names=["bad.tif"])


def test_two_images_of_one_name_are_refused(tmp_path):
    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    a = np.zeros((8, 8), np.uint8)
    tifffile.imwrite(imgs / "a.tif", a)
    Image.fromarray(a).save(imgs / "a.png")
    tifffile.imwrite(labs / "a.tif", a)
    # One of the two was dropped without a word.
    with pytest.raises(ValueError, match="a.png and a.tif share the name 'a'"):
        find_pairs(imgs, labs)


def test_colour_label_pngs_are_named_for_what_they_are(tmp_path):
    # An RGB label PNG was read as (H, W, 3) and refused as "differ in
    # size" from its image; a grey one saved as RGB(A) was refused too.
    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    ids = np.zeros((20, 24), np.uint8)
    ids[2:8, 3:9], ids[10:15, 12:20] = 1, 2
    Image.fromarray(ids * 40).save(imgs / "a.png")
    Image.fromarray(np.stack([ids] * 3 + [np.full_like(ids, 255)], axis=-1), "RGBA").save(labs / "a.png")
    sample = load_folder(imgs, labs)[0]
    np.testing.assert_array_equal(sample.labels, ids)
    colour = np.zeros((20, 24, 3), np.uint8)
    colour[2:8, 3:9] = (255, 0, 0)
    colour[10:15, 12:20] = (0, 255, 0)
    Image.fromarray(colour, "RGB").save(labs / "a.png")
    with pytest.raises(ValueError, match=r"labels a.png: a colour image \(shape \(20, 24, 3\), 3 colours\); .*grey"):
        load_folder(imgs, labs)
    with pytest.raises(ValueError, match=r"labels x: shape \(2, 20, 24\); labels are one 2-D image"):
        load_arrays([np.zeros((20, 24))], [np.zeros((2, 20, 24))], names=["x"])


def test_labels_without_objects_are_refused():
    samples = load_arrays([np.ones((40, 40), np.float32)], [np.zeros((40, 40), np.int32)])
    with pytest.raises(ValueError, match="hold no objects"):
        CropDataset(samples, 20, 2, 4)
