"""The bundled nuclei model, measured by the test suite: held-out scores on
rows 384..511 of the DSB2018 sample (never trained on; less the labels'
unannotated last row and column), and bf16 agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import unet_rt
from training.evaluate import ANNOTATED, scored_region
from training.metrics import average_precision, foreground_iou

DATA = Path(__file__).resolve().parents[1] / "data" / "dsb2018-nuclei"
HELD_OUT = scored_region((512, 512))


@pytest.fixture(scope="module")
def sample():
    return tifffile.imread(DATA / "image.tif"), tifffile.imread(DATA / "labels.tif")


# Floors under what the bundled model measures on the held-out rows (whole
# image segmented; the README's table: IoU 0.882 / AP@0.5 0.921 in fp32,
# 0.883 / 0.919 in bf16): a retrained model that scores less fails here.
# The foreground IoU floor is the goal (0.88); AP@0.5 lies above its goal (0.86).
FLOOR_IOU, FLOOR_AP = 0.88, 0.90


def test_the_labels_last_row_and_column_are_not_annotated(sample):
    """What :data:`training.evaluate.ANNOTATED` leaves out of every score:
    the label image's last row and column are background over nuclei that
    the image shows there as bright as one pixel in."""
    image, labels = sample
    rows, cols = ANNOTATED
    assert (rows, cols) == (labels.shape[0] - 1, labels.shape[1] - 1)
    background = image[labels == 0].mean()
    edges = ((labels[rows - 1], labels[rows], image[rows]), (labels[:, cols - 1], labels[:, cols], image[:, cols]))
    for inside, edge, lit in edges:
        nuclei = inside > 0
        # Nearly every nucleus pixel one row (column) in is background at the
        # edge, though the image there is nucleus-bright.
        assert nuclei.sum() >= 10
        assert (edge[nuclei] == 0).mean() >= 0.9
        assert lit[nuclei].mean() >= 1.5 * background
    # The first row and column are annotated as fully as their neighbours.
    assert (labels[0] > 0).sum() >= 0.9 * (labels[1] > 0).sum()
    assert (labels[:, 0] > 0).sum() >= 0.9 * (labels[:, 1] > 0).sum()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_held_out_scores_stay_above_the_floors(sample, precision):
    image, labels = sample
    model = unet_rt.Model(device="cpu", precision=precision)
    instances = model.segment(image, output="instances")[HELD_OUT]
    iou = foreground_iou(instances > 0, labels[HELD_OUT] > 0)
    ap = average_precision(instances, labels[HELD_OUT])
    assert iou >= FLOOR_IOU, f"foreground IoU {iou:.4f}"
    assert ap >= FLOOR_AP, f"AP@0.5 {ap:.4f}"


def test_bf16_keeps_the_labels(sample):
    image, _ = sample
    fp32 = unet_rt.Model(device="cpu", precision="fp32").segment(image)
    bf16 = unet_rt.Model(device="cpu", precision="bf16").segment(image)
    assert (fp32 == bf16).mean() >= 0.999


def test_the_default_segment_call_uses_the_bundled_model(sample):
    image, _ = sample
    labels = unet_rt.segment(image[:200, :300], device="cpu")
    assert labels.shape == (200, 300) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.any()
    meta = unet_rt.Model(device="cpu").metadata
    assert meta["name"] == "nuclei" and meta["class_names"] == ["background", "nucleus", "boundary"]
    assert unet_rt.bundled_model_path().stat().st_size < 5 * 2**20


# The scale target: a user who gives the nuclei's diameter (object_size)
# gets AP@0.5 >= 0.70 at every magnification from 0.5x to 2x.
FLOOR_AP_AT_SCALE = 0.70


def test_object_size_keeps_instances_good_at_every_magnification():
    """The recorded scores (checked against a fresh run below) meet the
    scale target at every magnification."""
    recorded = unet_rt.Model(device="cpu", precision="fp32").metadata["evaluation"]["object_size"]
    low = {scale: s["ap"]["0.5"] for scale, s in recorded.items() if s["ap"]["0.5"] < FLOOR_AP_AT_SCALE}
    assert not low, f"AP@0.5 below {FLOOR_AP_AT_SCALE} with object_size at {low}"


def test_recorded_evaluation_is_what_the_runtime_measures_now(sample):
    """``python -m training.evaluate --write`` recorded the held-out scores
    per scale in the metadata; a fresh run through the runtime gives them
    again (counts exactly, ratios to 1e-6)."""
    from training.evaluate import SCALES, evaluate_model

    image, labels = sample
    model = unet_rt.Model(device="cpu", precision="fp32")
    recorded = model.metadata["evaluation"]
    assert sorted(recorded["whole"], key=float) == [f"{s:g}" for s in SCALES]
    fresh = evaluate_model(model, image, labels)
    assert sorted(recorded["object_size"], key=float) == [f"{s:g}" for s in SCALES]
    for protocol in ("whole", "object_size", "crop"):
        want = recorded[protocol]
        got = fresh[protocol]
        pairs = [(got, want)] if protocol == "crop" else [(got[k], want[k]) for k in want]
        for g, w in pairs:
            assert {k: v for k, v in g.items() if isinstance(v, int)} == {k: v for k, v in w.items() if isinstance(v, int)}
            assert g["iou"] == pytest.approx(w["iou"], abs=1e-6)
            assert g["ap"] == pytest.approx(w["ap"], abs=1e-6)
