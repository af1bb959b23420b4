"""Instance labels checked for what they are.

Instance labels give every object an id of its own (0 is background): the
targets' separation borders, the weight map's border term and the model's
``object_size`` all come from the ids. Two other kinds of file were taken
for them without a word:

- a binary mask (one value, 255 or 1, over every object) trained as one
  object per image: no borders between touching objects, and an
  ``object_size`` of 54.7 pixels for nuclei of 19. Its connected objects
  (face neighbours, as the runtime's instances and the metrics join
  pixels) are taken as the instances, and a note says so;
- a file that is not a label image at all (an intensity image, a class
  mask) trained with each grey level or class as one scattered "object":
  refused, where most of its ids lie in several separate pieces.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["as_instances", "scattered_ids"]

# Ids looked at before deciding: an intensity image has thousands of grey
# levels, each over the whole image; a few hundred tell.
_IDS_SEEN = 256


def as_instances(labels: np.ndarray, name: str) -> Tuple[np.ndarray, bool]:
    """``labels`` (int32 ids) as instance labels: the connected objects of a
    binary mask numbered, other labels as they are. Returns the labels and
    whether they were a binary mask. Raises ``ValueError`` for labels whose
    ids mostly lie in several separate pieces.

    >>> mask = np.array([[255, 0, 255], [0, 0, 0], [255, 255, 0]], np.int32)
    >>> labels, binary = as_instances(mask, "mask.png")
    >>> labels.tolist(), binary
    ([[1, 0, 2], [0, 0, 0], [3, 3, 0]], True)
    >>> as_instances(np.array([[1, 0, 1], [2, 0, 2]], np.int32), "classes.png")
    Traceback (most recent call last):
    ...
    ValueError: labels classes.png: 2 of its 2 ids each lie in several separate pieces (id 1 in 2): instance labels give every object an id of its own; a class mask (0..K-1) trains with --class-masks, and an image given as labels is the wrong file
    """
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if len(ids) == 0:
        return labels, False
    if len(ids) == 1:
        pieces = ndimage.label(labels != 0, structure=ndimage.generate_binary_structure(2, 1))[0]
        return pieces.astype(np.int32), int(pieces.max()) > 1
    scattered = scattered_ids(labels)
    if len(ids) >= 2 and 2 * len(scattered) > min(len(ids), _IDS_SEEN):
        first, count = scattered[0]
        raise ValueError(
            f"labels {name}: {len(scattered)} of its {min(len(ids), _IDS_SEEN)} ids"
            f"{' looked at' if len(ids) > _IDS_SEEN else ''} each lie in several separate pieces (id {first} in "
            f"{count}): instance labels give every object an id of its own; a class mask (0..K-1) trains with "
            "--class-masks, and an image given as labels is the wrong file"
        )
    return labels, False


def scattered_ids(labels: np.ndarray) -> List[Tuple[int, int]]:
    """``(id, pieces)`` of the ids (the :data:`_IDS_SEEN` smallest) whose
    pixels lie in more than one piece, pixels touching at a corner counted
    as one piece (a hand-drawn object's thin diagonal is one object).

    >>> scattered_ids(np.array([[1, 0, 1], [0, 7, 0], [0, 0, 7]]))
    [(1, 2)]
    """
    ids = np.unique(labels)
    ids = ids[ids != 0][:_IDS_SEEN]
    if len(ids) == 0:
        return []
    if int(ids[-1]) <= 4 * _IDS_SEEN + len(ids):
        # Ids numbered from 1 (as labelling tools write them): a slot each.
        numbered, value_of = labels, None
    else:
        # find_objects makes a slot for every value up to the largest: ids
        # up to 2**31 made as many. Numbered 1..n here, in their order.
        numbered = np.searchsorted(ids, labels) + 1
        numbered[(labels == 0) | (numbered > len(ids)) | (ids[np.minimum(numbered, len(ids)) - 1] != labels)] = 0
        value_of = ids
    corners = ndimage.generate_binary_structure(2, 2)
    found: List[Tuple[int, int]] = []
    top = int(ids[-1]) if value_of is None else len(ids)
    for index, box in enumerate(ndimage.find_objects(numbered, max_label=top)):
        if box is not None:
            count = ndimage.label(numbered[box] == index + 1, structure=corners)[1]
            if count > 1:
                found.append((int(index + 1 if value_of is None else value_of[index]), int(count)))
    return found
