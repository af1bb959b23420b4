"""The paper's training targets and weighted loss.

Ronneberger et al. (2015) train with a pixel-wise softmax cross-entropy
weighted by

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

where ``w_c`` balances the class frequencies and ``d1``/``d2`` are the
distances to the border of the nearest and the second-nearest object
(``w0 = 10``, ``sigma = 5`` pixels). The border term is applied to background
pixels, in particular to the thin separation borders the paper introduces
between touching objects (:func:`instance_targets`), so the network learns
to keep touching nuclei apart.

>>> import numpy as np
>>> inst = np.zeros((1, 9), np.int32); inst[0, 1:4] = 1; inst[0, 4:7] = 2
>>> instance_targets(inst)[0].tolist()
[0, 1, 1, 0, 0, 1, 1, 0, 0]
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "separation_borders",
    "instance_targets",
    "boundary_targets",
    "object_diameters",
    "class_weights",
    "border_term",
    "weight_map",
    "weighted_cross_entropy",
    "foreground_dice_loss",
    "segmentation_loss",
]


def separation_borders(instances: np.ndarray) -> np.ndarray:
    """Pixels of an object that touch a *different* object (8-neighbourhood):
    removing them leaves a background gap of about two pixels between
    touching objects. Works for 2D and 3D label arrays.

    >>> import numpy as np
    >>> separation_borders(np.array([[1, 1, 2, 2]])).tolist()
    [[False, True, True, False]]
    """
    inst = np.asarray(instances)
    structure = np.ones((3,) * inst.ndim, bool)
    # A pixel touches another object when the largest or the smallest label in
    # its neighbourhood (ignoring background) differs from its own.
    big = int(inst.max()) + 1 if inst.size else 1
    as_min = np.where(inst > 0, inst.astype(np.int64), big)
    hi = ndimage.maximum_filter(inst.astype(np.int64), footprint=structure, mode="nearest")
    lo = ndimage.minimum_filter(as_min, footprint=structure, mode="nearest")
    return (inst > 0) & ((hi != inst) | (lo != inst))


def instance_targets(instances: np.ndarray, separate: bool = True) -> np.ndarray:
    """Two-class targets (uint8: 0 background, 1 object) from instance labels,
    with the separation borders between touching objects set to background
    when ``separate`` (the paper's Fig. 3c)."""
    inst = np.asarray(instances)
    fg = inst > 0
    if separate:
        fg &= ~separation_borders(inst)
    return fg.astype(np.uint8)


def boundary_targets(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """Three-class targets (uint8: 0 background, 1 interior, 2 boundary) from
    instance labels: an object pixel is boundary when it lies within
    ``width`` face steps of a pixel outside its object (the image edge does
    not count). Touching objects are then kept apart by ``2 * width``
    boundary pixels, and the interiors are the seeds of the runtime's
    instance read-out (``instances`` in the model metadata), which grows
    them back over the boundary.

    >>> import numpy as np
    >>> inst = np.zeros((1, 9), np.int32); inst[0, 1:4] = 1; inst[0, 4:7] = 2
    >>> boundary_targets(inst)[0].tolist()
    [0, 2, 1, 2, 2, 1, 2, 0, 0]
    >>> boundary_targets(np.pad(np.ones((1, 7), np.int32), ((0, 0), (1, 1))), width=2)[0].tolist()
    [0, 2, 2, 1, 1, 1, 2, 2, 0]
    """
    inst = np.asarray(instances)
    interior = np.where(inst > 0, inst, 0)
    centre = tuple(slice(1, -1) for _ in range(inst.ndim))
    for _ in range(int(width)):
        padded = np.pad(interior, 1, mode="edge")
        keep = interior > 0
        for axis in range(inst.ndim):
            for shift in (0, 2):
                neighbour = tuple(slice(shift, shift + n) if a == axis else c
                                  for a, (n, c) in enumerate(zip(inst.shape, centre)))
                keep &= padded[neighbour] == interior
        interior = np.where(keep, interior, 0)
    out = (inst > 0).astype(np.uint8)
    out[(inst > 0) & (interior == 0)] = 2
    return out


def object_diameters(instances: np.ndarray) -> np.ndarray:
    """The equivalent diameter of each object (of a circle, or a sphere in
    3-D, of the same area or volume), in pixels.

    >>> import numpy as np
    >>> object_diameters(np.pad(np.ones((10, 10), np.int32), 2)).round(2).tolist()
    [11.28]
    """
    inst = np.asarray(instances)
    _, counts = np.unique(inst[inst > 0], return_counts=True)
    if inst.ndim == 3:
        return np.cbrt(6.0 * counts / math.pi)
    return np.sqrt(4.0 * counts / math.pi)


def class_weights(targets: Union[np.ndarray, Iterable[np.ndarray]], classes: int) -> np.ndarray:
    """Class-balancing weights ``n / (classes * n_k)`` from the pixel counts of
    ``targets`` (one array or several): each class weighs as much in all, and
    the mean weight over all pixels is the share of the classes present (1
    when every class occurs). A class that never occurs gets weight 1.

    >>> class_weights(np.array([0, 0, 0, 1]), 2).tolist()
    [0.6666666666666666, 2.0]
    """
    arrays = [targets] if isinstance(targets, np.ndarray) else list(targets)
    counts = np.zeros(classes, np.float64)
    for t in arrays:
        counts += np.bincount(np.asarray(t, np.int64).ravel(), minlength=classes)[:classes]
    total = counts.sum()
    out = np.ones(classes, np.float64)
    present = counts > 0
    out[present] = total / (classes * counts[present])
    return out


def border_term(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    background: Optional[np.ndarray] = None,
    eps: float = 1e-6,
) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on ``background`` pixels
    (default: ``instances == 0``), 0 elsewhere; float32.

    ``d1``/``d2`` are Euclidean distances to the nearest and second-nearest
    object (a pixel next to an object is at distance 1). For speed, each
    object's distance is only computed within a margin around it beyond which
    the term is below ``eps * w0``; the result is exact up to that.
    """
    inst = np.asarray(instances)
    if background is None:
        background = inst == 0
    ids = np.unique(inst)
    ids = ids[ids > 0]
    out = np.zeros(inst.shape, np.float32)
    if len(ids) < 2 or w0 == 0:
        return out
    # Ids 1..len(ids): find_objects makes a list as long as the largest id
    # (an id of 10^8 in a 20x20 image took gigabytes).
    compact = np.zeros(inst.shape, np.int64)
    compact[inst > 0] = np.searchsorted(ids, inst[inst > 0]) + 1
    inst = compact
    # The term exceeds eps * w0 only where d1 + d2 < reach, so both objects
    # then lie within `reach` of the pixel.
    reach = sigma * math.sqrt(2.0 * math.log(1.0 / eps))
    margin = int(math.ceil(reach)) + 1
    d1 = np.full(inst.shape, np.inf)
    d2 = np.full(inst.shape, np.inf)
    for k, sl in enumerate(ndimage.find_objects(inst)):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(sl, inst.shape))
        d = ndimage.distance_transform_edt(inst[box] != k + 1)
        a, b = d1[box], d2[box]
        b[...] = np.where(d < a, a, np.minimum(b, d))
        a[...] = np.minimum(a, d)
    s = d1 + d2
    with np.errstate(over="ignore", invalid="ignore"):
        term = w0 * np.exp(-(s * s) / (2.0 * sigma * sigma))
    out[background] = np.nan_to_num(term[background], nan=0.0).astype(np.float32)
    return out


def weight_map(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weight: Optional[Sequence[float]] = None,
    targets: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The paper's weight map ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``
    for instance labels (float32, the labels' shape).

    ``targets`` are the class targets (default :func:`instance_targets`, with
    separation borders); the border term applies where they are background,
    with distances measured to the objects as they remain in the targets.
    ``class_weight`` holds ``w_c`` per class (default: balanced on this image,
    :func:`class_weights`). With three-class targets (:func:`boundary_targets`)
    the objects are the interiors (class 1) and the border term applies to
    every other pixel, boundaries included: it weighs most what separates
    touching interiors.

    >>> import numpy as np
    >>> inst = np.zeros((20, 40), np.int32); inst[5:15, 5:19] = 1; inst[5:15, 21:35] = 2
    >>> w = weight_map(inst)
    >>> bool(w[10, 20] > 6 and w[10, 20] == w.max() and w[0, 0] < 1)
    True
    """
    inst = np.asarray(instances)
    if targets is None:
        targets = instance_targets(inst)
    targets = np.asarray(targets)
    if class_weight is None:
        class_weight = class_weights(targets, int(max(targets.max(), 1)) + 1)
    wc = np.asarray(class_weight, np.float32)[targets.astype(np.int64)]
    objects = targets == 1 if targets.max() > 1 else targets > 0
    remaining = np.where(objects, inst, 0)
    return wc + border_term(remaining, w0, sigma, background=~objects)


def weighted_cross_entropy(
    logits: Union[torch.Tensor, List[torch.Tensor]],
    target: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy, each pixel's term multiplied by
    ``weight`` and averaged over pixels (the paper's energy, divided by the
    pixel count so that the loss scale does not depend on the crop size).

    ``logits`` is ``(N, C, *spatial)`` (computed in float32 whatever its
    dtype), or a list of such (deep supervision: the mean of their losses);
    ``target`` is ``(N, *spatial)`` class indices, ``weight`` the same shape.

    >>> import torch
    >>> z = torch.zeros(1, 2, 3, 3)
    >>> round(float(weighted_cross_entropy(z, torch.zeros(1, 3, 3, dtype=torch.long))), 4)
    0.6931
    """
    if isinstance(logits, (list, tuple)):
        return torch.stack([weighted_cross_entropy(z, target, weight) for z in logits]).mean()
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if weight is not None:
        ce = ce * weight
    return ce.mean()


def foreground_dice_loss(logits: Union[torch.Tensor, List[torch.Tensor]], target: torch.Tensor,
                         eps: float = 1.0) -> torch.Tensor:
    """One minus the soft Dice coefficient of the foreground (every class but
    background, class 0: ``1 - softmax(logits)[:, 0]``) against ``target > 0``,
    pooled over the whole batch (``eps`` smooths an empty batch to 0).

    Why: the weighted cross-entropy scores each pixel alone and its class
    balancing pulls ambiguous edge pixels into the objects; the Dice term
    scores the overlap itself, the quantity foreground IoU measures, so the
    outline settles where overlap is best. A list of logits (deep
    supervision) gives the mean of their losses.

    >>> import torch
    >>> t = torch.tensor([[[0, 1], [1, 0]]])
    >>> round(float(foreground_dice_loss(torch.zeros(1, 2, 2, 2), t)), 4)
    0.4
    >>> perfect = torch.stack([1 - t, t], 1).float() * 40
    >>> round(float(foreground_dice_loss(perfect, t)), 4)
    0.0
    """
    if isinstance(logits, (list, tuple)):
        return torch.stack([foreground_dice_loss(z, target, eps) for z in logits]).mean()
    p = 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]
    t = (target > 0).to(p.dtype)
    overlap = (p * t).sum()
    return 1.0 - (2.0 * overlap + eps) / (p.sum() + t.sum() + eps)


def segmentation_loss(logits: Union[torch.Tensor, List[torch.Tensor]], target: torch.Tensor,
                      weight: Optional[torch.Tensor] = None, dice: float = 0.0) -> torch.Tensor:
    """The training loss: :func:`weighted_cross_entropy` plus ``dice`` times
    :func:`foreground_dice_loss` (the config's ``loss.dice``, 0 by default:
    the paper's loss alone)."""
    loss = weighted_cross_entropy(logits, target, weight)
    if dice:
        loss = loss + dice * foreground_dice_loss(logits, target)
    return loss
