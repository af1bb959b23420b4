"""Globally consistent instance labels from block-wise labels.

Each block's objects are its connected components (the runtime's
``connected_components``: nonzero pixels, face connectivity, as
``scipy.ndimage.label``). A component gets a provisional id that is unique
in the whole array without any coordination: one plus the raster index (in
the whole array) of its first pixel. Components that touch across a block
face are merged (union-find over the pairs of ids facing each other), every
merged object keeps the smallest id, which is the raster index of its first
pixel in the whole array, and objects are finally numbered 1, 2, ... in that
order, per image: exactly the numbering of ``scipy.ndimage.label`` (and of
``unet_rt.segment(..., output="instances")``) on the whole array."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .. import _unet_rt

__all__ = ["provisional_ids", "block_summary", "merge_summaries", "relabel_block"]

Summary = Dict[str, object]


def provisional_ids(labels: np.ndarray, origin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Connected components of a canonical label block ``(b, spatial...)``
    whose first element is at ``origin`` of an array of ``shape``, each
    numbered by 1 + the raster index of its first pixel in that array
    (uint64; 0 is background).

    >>> block = np.array([[[0, 1, 1], [1, 0, 1]]], np.uint8)
    >>> provisional_ids(block, (0, 2, 3), (1, 4, 6)).tolist()
    [[[0, 17, 17], [22, 0, 17]]]
    """
    out = np.zeros(labels.shape, np.uint64)
    for i in range(labels.shape[0]):
        image = np.ascontiguousarray(labels[i])
        if image.dtype not in (np.uint8, np.uint16, np.uint32):
            image = (image != 0).astype(np.uint8)
        components = _unet_rt.connected_components(image)
        flat = components.ravel()
        # Components are numbered in raster order of their first pixel, so
        # the running maximum rises exactly at each first pixel.
        rising = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=np.uint32(0)) > 0)
        if rising.size == 0:
            continue
        coords = np.unravel_index(rising, image.shape)
        where = (np.full(rising.size, int(origin[0]) + i, np.int64),) + tuple(
            c.astype(np.int64) + int(o) for c, o in zip(coords, origin[1:])
        )
        ids = np.ravel_multi_index(where, tuple(int(s) for s in shape)).astype(np.uint64) + np.uint64(1)
        out[i] = np.concatenate([np.zeros(1, np.uint64), ids])[components]
    return out


def block_summary(labels: np.ndarray, origin: Sequence[int], shape: Sequence[int]) -> Summary:
    """The provisional ids of a block's objects and the ids on its faces
    (first and last slice along each spatial axis)."""
    ids = provisional_ids(labels, origin, shape)
    faces = [(np.take(ids, 0, axis=axis).copy(), np.take(ids, -1, axis=axis).copy()) for axis in range(1, ids.ndim)]
    present = np.unique(ids)
    return {"ids": present[present > 0], "faces": faces}


def merge_summaries(summaries: Sequence[Summary], numblocks: Sequence[int], shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Merges objects across block faces. ``summaries`` lists the blocks in
    C order of their index over ``numblocks``. Returns ``(keys, values)``:
    provisional ids (sorted) and their final uint32 instance ids."""
    grid = np.arange(len(summaries)).reshape(tuple(numblocks))
    firsts: List[np.ndarray] = []
    seconds: List[np.ndarray] = []
    for axis in range(1, len(numblocks)):
        lower = np.take(grid, np.arange(numblocks[axis] - 1), axis=axis).ravel()
        upper = np.take(grid, np.arange(1, numblocks[axis]), axis=axis).ravel()
        for a, b in zip(lower, upper):
            high = summaries[a]["faces"][axis - 1][1]  # type: ignore[index]
            low = summaries[b]["faces"][axis - 1][0]  # type: ignore[index]
            touching = (high > 0) & (low > 0)
            firsts.append(high[touching])
            seconds.append(low[touching])
    keys = np.sort(np.concatenate([np.asarray(s["ids"], np.uint64) for s in summaries] or [np.zeros(0, np.uint64)]))
    roots = keys.copy()
    if firsts and sum(f.size for f in firsts):
        a = np.concatenate(firsts)
        b = np.concatenate(seconds)
        nodes = np.unique(np.concatenate([a, b]))
        component = _components(np.searchsorted(nodes, a), np.searchsorted(nodes, b), nodes.size)
        at = np.searchsorted(nodes, keys)
        inside = at < nodes.size
        inside[inside] = nodes[at[inside]] == keys[inside]
        roots[inside] = nodes[component[at[inside]]]
    unique_roots = np.unique(roots)
    image_size = int(np.prod(shape[1:]))
    image = (unique_roots - np.uint64(1)) // np.uint64(image_size)
    rank = np.arange(unique_roots.size)
    first_of_image = np.searchsorted(image, image, side="left")
    numbers = (rank - first_of_image + 1).astype(np.uint32)
    values = numbers[np.searchsorted(unique_roots, roots)]
    return keys, values


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """For each of ``n`` nodes joined by the edges ``(a, b)``, the smallest
    node of its connected component (min-label propagation with pointer
    jumping; every label is a node of the same component, never larger)."""
    label = np.arange(n)
    while True:
        smallest = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, smallest)
        np.minimum.at(new, b, smallest)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def relabel_block(labels: np.ndarray, origin: Sequence[int], shape: Sequence[int], keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The final uint32 instance ids of a canonical label block."""
    ids = provisional_ids(labels, origin, shape)
    out = np.zeros(ids.shape, np.uint32)
    found = ids > 0
    out[found] = values[np.searchsorted(keys, ids[found])]
    return out
