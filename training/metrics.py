"""Segmentation metrics for held-out data.

* Foreground IoU and Dice of the binary masks "any object class" (label > 0).
* Instance AP at IoU 0.5 as defined in the StarDist paper (Schmidt et al.,
  MICCAI 2018): ``AP = TP / (TP + FP + FN)``. Predicted instances are the
  connected components of the predicted object class (class 1 by default)
  with **4-connectivity** (pixels touching only at a corner are separate
  objects, which keeps diagonally touching nuclei apart); ground-truth
  instances are the given instance labels. A predicted and a true object
  match when their IoU exceeds 0.5; such matches are unique by construction
  (two objects cannot both overlap a third by more than half its union).

>>> import numpy as np
>>> true = np.zeros((8, 8), np.int32); true[1:3, 1:3] = 1; true[5:7, 5:7] = 2
>>> evaluate((true > 0).astype(np.uint8), true)["ap50"]
1.0
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = [
    "foreground_iou",
    "dice",
    "connected_components",
    "match_counts",
    "average_precision",
    "evaluate",
    "pool",
]


def foreground_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of the masks ``pred > 0`` and ``true > 0``
    (1.0 when both are empty).

    >>> foreground_iou(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.3333333333333333
    """
    p, t = np.asarray(pred) > 0, np.asarray(true) > 0
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else float(np.count_nonzero(p & t) / union)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of ``pred > 0`` and
    ``true > 0`` (1.0 when both are empty).

    >>> dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.5
    """
    p, t = np.asarray(pred) > 0, np.asarray(true) > 0
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(p & t) / total)


def connected_components(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Instance labels (int32, 1..N) of the connected components of
    ``mask > 0``. ``connectivity`` 1 joins only face neighbours
    (4-connectivity in 2D, 6 in 3D); ``mask.ndim`` joins all (8 / 26).

    >>> connected_components(np.array([[1, 0], [0, 1]])).tolist()
    [[1, 0], [0, 2]]
    """
    m = np.asarray(mask) > 0
    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    labels, _ = ndimage.label(m, structure=structure)
    return labels.astype(np.int32)


def match_counts(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> Tuple[int, int, int]:
    """``(TP, FP, FN)`` between two instance label images (0 = background):
    a pair matches when its IoU exceeds ``threshold`` (>= 0.5, so matches
    are one-to-one).

    >>> true = np.array([[1, 1, 0, 2, 2]]); pred = np.array([[1, 1, 1, 1, 1]])
    >>> match_counts(pred, true)   # a merged pair: no match, 1 FP, 2 FN
    (0, 1, 2)
    """
    if threshold < 0.5:
        raise ValueError("matching is unique only for thresholds >= 0.5")
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(true).ravel().astype(np.int64)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    t_area = np.bincount(t_inv, minlength=len(t_ids))
    both = (p > 0) & (t > 0)
    pairs, inter = np.unique(p_inv[both] * len(t_ids) + t_inv[both], return_counts=True)
    pi, ti = pairs // len(t_ids), pairs % len(t_ids)
    iou = inter / (p_area[pi] + t_area[ti] - inter)
    tp = int(np.count_nonzero(iou > threshold))
    n_pred = int(np.count_nonzero(p_ids > 0))
    n_true = int(np.count_nonzero(t_ids > 0))
    return tp, n_pred - tp, n_true - tp


def average_precision(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> float:
    """``TP / (TP + FP + FN)`` between instance label images (1.0 when both
    have no objects).

    >>> true = np.array([[1, 1, 0, 2, 2]])
    >>> average_precision(np.array([[1, 1, 0, 0, 0]]), true)   # one object missed
    0.5
    """
    tp, fp, fn = match_counts(pred, true, threshold)
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total


def evaluate(
    classes: np.ndarray,
    true_instances: np.ndarray,
    object_class: int = 1,
    connectivity: int = 1,
    threshold: float = 0.5,
    instances: "np.ndarray | None" = None,
) -> Dict[str, float]:
    """Metrics of a predicted class map against ground-truth instance labels:
    ``iou`` and ``dice`` (foreground: any class > 0 vs label > 0), ``ap50``
    (instances = connected components of ``classes == object_class``, see the
    module docstring), and the counts ``tp``, ``fp``, ``fn``, ``n_pred``,
    ``n_true``, ``fg_intersection``, ``fg_union``, ``fg_pred``, ``fg_true``
    (pixels, for :func:`pool`). ``instances``: the predicted instances when
    they come from elsewhere (a model's read-out through the runtime).
    """
    classes = np.asarray(classes)
    true_instances = np.asarray(true_instances)
    pred_inst = connected_components(classes == object_class, connectivity) if instances is None else instances
    tp, fp, fn = match_counts(pred_inst, true_instances, threshold)
    total = tp + fp + fn
    return {
        "iou": foreground_iou(classes, true_instances),
        "dice": dice(classes, true_instances),
        "ap50": 1.0 if total == 0 else tp / total,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_pred": tp + fp,
        "n_true": tp + fn,
        "fg_intersection": int(np.count_nonzero((classes > 0) & (true_instances > 0))),
        "fg_union": int(np.count_nonzero((classes > 0) | (true_instances > 0))),
        "fg_pred": int(np.count_nonzero(classes > 0)),
        "fg_true": int(np.count_nonzero(true_instances > 0)),
    }


def pool(results: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Metrics of several images together, from their :func:`evaluate`
    results: pixel and object counts are summed, then the ratios recomputed.

    >>> a = evaluate(np.array([[1, 0]]), np.array([[1, 0]]))
    >>> b = evaluate(np.array([[0, 0]]), np.array([[0, 1]]))
    >>> pool([a, b])["ap50"], pool([a, b])["iou"]
    (0.5, 0.5)
    """
    keys = ("tp", "fp", "fn", "n_pred", "n_true", "fg_intersection", "fg_union", "fg_pred", "fg_true")
    s = {k: int(sum(r[k] for r in results)) for k in keys}
    objects = s["tp"] + s["fp"] + s["fn"]
    pixels = s["fg_pred"] + s["fg_true"]
    return {
        "iou": 1.0 if s["fg_union"] == 0 else s["fg_intersection"] / s["fg_union"],
        "dice": 1.0 if pixels == 0 else 2.0 * s["fg_intersection"] / pixels,
        "ap50": 1.0 if objects == 0 else s["tp"] / objects,
        **s,
    }
