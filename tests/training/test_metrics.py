"""Metrics on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    average_precision,
    connected_components,
    dice,
    evaluate,
    foreground_iou,
    match_counts,
    pool,
)


def squares() -> np.ndarray:
    lab = np.zeros((20, 20), np.int32)
    lab[1:5, 1:5] = 1
    lab[1:5, 10:14] = 2
    lab[12:18, 3:9] = 3
    return lab


def test_perfect_match():
    lab = squares()
    m = evaluate((lab > 0).astype(np.uint8), lab)
    assert m["iou"] == m["dice"] == m["ap50"] == 1.0
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 0)


def test_missed_object():
    lab = squares()
    pred = (lab > 0).astype(np.uint8)
    pred[lab == 3] = 0
    m = evaluate(pred, lab)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 1)
    assert m["ap50"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(32 / 68)


def test_merged_pair():
    lab = squares()
    pred = (lab > 0).astype(np.uint8)
    pred[1:5, 5:10] = 1  # a bridge joins objects 1 and 2
    m = evaluate(pred, lab)
    # The merged component overlaps each of them by less than half its union.
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 2)
    assert m["ap50"] == pytest.approx(1 / 4)


def test_split_object_and_extra():
    lab = squares()
    pred = (lab > 0).astype(np.uint8)
    pred[12:18, 4] = 0  # splits object 3 (36 px) into 6 and 24 pixels
    pred[8, 17] = 1  # a spurious pixel
    tp, fp, fn = match_counts(connected_components(pred), lab)
    assert (tp, fp, fn) == (3, 2, 0)  # the larger part still matches (IoU 24/36)
    pred[12:18, 5] = 0  # now 6, 0 and 18 pixels: IoU 18/36 = 0.5 is no match
    tp, fp, fn = match_counts(connected_components(pred), lab)
    assert (tp, fp, fn) == (2, 3, 1)


def test_iou_threshold_is_strict():
    true = np.zeros((1, 10), np.int32)
    true[0, :4] = 1
    pred = np.zeros((1, 10), np.int32)
    pred[0, :2] = 1  # IoU exactly 0.5: not a match
    assert match_counts(pred, true) == (0, 1, 1)
    pred[0, 2] = 1  # IoU 0.75
    assert match_counts(pred, true) == (1, 0, 0)


def test_four_connectivity():
    mask = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert connected_components(mask).max() == 2
    assert connected_components(mask, connectivity=2).max() == 1


def test_empty_cases_and_simple_values():
    z = np.zeros((4, 4), np.int32)
    assert average_precision(z, z) == 1.0 and foreground_iou(z, z) == 1.0 and dice(z, z) == 1.0
    a = np.array([1, 1, 0, 0])
    b = np.array([0, 1, 1, 0])
    assert foreground_iou(a, b) == pytest.approx(1 / 3)
    assert dice(a, b) == pytest.approx(0.5)


def test_pool_sums_counts():
    lab = squares()
    perfect = evaluate((lab > 0).astype(np.uint8), lab)
    empty = evaluate(np.zeros_like(lab, np.uint8), lab)
    p = pool([perfect, empty])
    assert (p["tp"], p["fn"]) == (3, 3)
    assert p["ap50"] == 0.5 and p["iou"] == 0.5
