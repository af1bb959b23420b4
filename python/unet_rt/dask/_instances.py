"""Globally consistent instances from block-wise labels.

The model's instance read-out (``Model.read_out``: seeds grown over a
boundary class, leftovers, small objects removed, holes filled, raster
numbering; the connected components of the non-background for models
without one) computed block by block, with the same result as
``unet_rt.segment(..., output="instances")`` on the whole array:

1. Each block, read with the read-out's context around it, finds its
   objects (``instance_block``: the core's growth rule is local, so the
   block decides alone) and flags, on its faces, where an object continues
   into the next block. An object of a block gets an id that is unique in
   the whole array without any coordination: one plus the raster index (in
   the whole array) of its first pixel.
2. Ids facing each other across a face where either side flags a link are
   merged (union-find); every merged object keeps the smallest id, which is
   the raster index of its first pixel in the whole array. Sizes add up,
   and objects under ``min_size`` are dropped.
3. With ``fill_holes``: the background left (the blocks' connected
   components of it, merged across faces the same way) is filled where a
   region touches no face of the image and borders exactly one object.
4. Objects are numbered 1, 2, ... per image in the order of their ids:
   the raster order of their first pixels, which filling never changes (a
   hole's first pixel has its owner above or before it).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _unet_rt

__all__ = [
    "margin",
    "context_of",
    "provisional_ids",
    "block_summary",
    "merge_summaries",
    "hole_summary",
    "merge_holes",
    "relabel_block",
]

Summary = Dict[str, Any]
Mapping = Dict[str, np.ndarray]
_EMPTY = np.zeros(0, np.uint64)


def margin(read_out: str) -> int:
    """The context (pixels per side) a block needs for ``read_out``: one
    more than the growth steps when the read-out grows over some class.

    >>> margin('{"seed_classes": [1], "grow_classes": [2], "grow": 2}'), margin("{}")
    (3, 1)
    """
    return int(_unet_rt.instance_context(read_out))


def context_of(start: Sequence[int], stop: Sequence[int], shape: Sequence[int], depth: int) -> List[Tuple[int, int]]:
    """Per spatial axis, the ``(before, after)`` context of the block
    ``start:stop`` of an image of spatial ``shape``: ``depth``, less at the
    image's faces.

    >>> context_of((0, 10), (10, 20), (30, 20), 3)
    [(0, 3), (3, 0)]
    """
    return [(min(depth, a), min(depth, n - b)) for a, b, n in zip(start, stop, shape)]


def _first_pixel_ids(components: np.ndarray, count: int, origin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Global ids (uint64, 0 background) of the components of one image's
    block, numbered ``1..count`` in raster order of their first pixel:
    one plus the raster index, in the array of ``shape`` (batch first), of
    each component's first pixel; ``origin`` is the block's (batch first)."""
    if count == 0:
        return np.zeros(components.shape, np.uint64)
    flat = components.ravel()
    # Components are numbered in raster order of their first pixel, so the
    # running maximum rises exactly at each first pixel.
    rising = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=np.uint32(0)) > 0)
    coords = np.unravel_index(rising, components.shape)
    where = (np.full(rising.size, int(origin[0]), np.int64),) + tuple(
        c.astype(np.int64) + int(o) for c, o in zip(coords, origin[1:])
    )
    ids = np.ravel_multi_index(where, tuple(int(s) for s in shape)).astype(np.uint64) + np.uint64(1)
    return np.concatenate([np.zeros(1, np.uint64), ids])[components]


def provisional_ids(mask: np.ndarray, origin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Connected components of the nonzero pixels of a block ``(b,
    spatial...)`` whose first element is at ``origin`` of an array of
    ``shape``, each named by 1 + the raster index of its first pixel in that
    array (uint64; 0 is background).

    >>> block = np.array([[[0, 1, 1], [1, 0, 1]]], np.uint8)
    >>> provisional_ids(block, (0, 2, 3), (1, 4, 6)).tolist()
    [[[0, 17, 17], [22, 0, 17]]]
    """
    out = np.zeros(mask.shape, np.uint64)
    for i in range(mask.shape[0]):
        image = np.ascontiguousarray(mask[i])
        if image.dtype not in (np.uint8, np.uint16, np.uint32):
            image = (image != 0).astype(np.uint8)
        components = _unet_rt.connected_components(image)
        out[i] = _first_pixel_ids(components, int(components.max(initial=0)), (int(origin[0]) + i,) + tuple(origin[1:]), shape)
    return out


def _labels(block: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(block)
    if image.dtype not in (np.uint8, np.uint16, np.uint32):
        image = image.astype(np.uint32)
    return image


def _objects(ext: np.ndarray, context: Sequence[Tuple[int, int]], origin: Sequence[int], shape: Sequence[int],
             read_out: str) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """The block's objects by their global ids ``(b, core...)`` and, per
    spatial axis, the face flags ``(first, last)`` stacked over the batch.
    ``ext`` is the block ``(b, spatial...)`` with ``context`` around it."""
    ids = []
    flags: List[Tuple[List[np.ndarray], List[np.ndarray]]] = [([], []) for _ in context]
    for i in range(ext.shape[0]):
        components, count, faces = _unet_rt.instance_block(_labels(ext[i]), [tuple(c) for c in context], read_out)
        ids.append(_first_pixel_ids(components, int(count), (int(origin[0]) + i,) + tuple(origin[1:]), shape))
        for (lows, highs), (low, high) in zip(flags, faces):
            lows.append(low)
            highs.append(high)
    return np.stack(ids), [(np.stack(lo), np.stack(hi)) for lo, hi in flags]


def _faces(values: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The first and last slice of ``values`` ``(b, spatial...)`` along
    each spatial axis."""
    return [(np.take(values, 0, axis=axis).copy(), np.take(values, -1, axis=axis).copy()) for axis in range(1, values.ndim)]


def block_summary(ext: np.ndarray, context: Sequence[Tuple[int, int]], origin: Sequence[int], shape: Sequence[int],
                  read_out: str) -> Summary:
    """What the merge needs of one block: its object ids and their pixel
    counts, and on each face the ids and the flags of links across."""
    ids, flags = _objects(ext, context, origin, shape, read_out)
    present, counts = np.unique(ids, return_counts=True)
    keep = present > 0
    faces = [(low, high, fl, fh) for (low, high), (fl, fh) in zip(_faces(ids), flags)]
    return {"ids": present[keep], "counts": counts[keep].astype(np.int64), "faces": faces}


def _pairs_across(summaries: Sequence[Summary], numblocks: Sequence[int], pick) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """For each pair of blocks facing each other (lower, upper) along each
    spatial axis, ``pick(lower_face_data, upper_face_data)`` -> (a, b)."""
    grid = np.arange(len(summaries)).reshape(tuple(numblocks))
    firsts: List[np.ndarray] = []
    seconds: List[np.ndarray] = []
    for axis in range(1, len(numblocks)):
        lower = np.take(grid, np.arange(numblocks[axis] - 1), axis=axis).ravel()
        upper = np.take(grid, np.arange(1, numblocks[axis]), axis=axis).ravel()
        for a, b in zip(lower, upper):
            x, y = pick(summaries[a]["faces"][axis - 1], summaries[b]["faces"][axis - 1])
            firsts.append(x)
            seconds.append(y)
    return firsts, seconds


def _roots(keys: np.ndarray, firsts: List[np.ndarray], seconds: List[np.ndarray]) -> np.ndarray:
    """The smallest id joined to each of ``keys`` (sorted) by the pairs."""
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
    return roots


def merge_summaries(summaries: Sequence[Summary], numblocks: Sequence[int], shape: Sequence[int],
                    min_size: int = 0) -> Mapping:
    """Merges objects across block faces. ``summaries`` lists the blocks in
    C order of their index over ``numblocks``. Returns the mapping
    ``keys`` (sorted ids) -> ``roots`` (each object's smallest id, 0 for an
    object under ``min_size`` pixels), and the ``kept`` roots (sorted) with
    their instance ``numbers`` (uint32, 1, 2, ... per image)."""

    def linked(lower: Tuple, upper: Tuple) -> Tuple[np.ndarray, np.ndarray]:
        # The lower block's last slice faces the upper block's first.
        join = lower[3] | upper[2]
        return lower[1][join], upper[0][join]

    firsts, seconds = _pairs_across(summaries, numblocks, linked)
    ids = np.concatenate([np.asarray(s["ids"], np.uint64) for s in summaries] or [_EMPTY])
    counts = np.concatenate([np.asarray(s["counts"], np.int64) for s in summaries] or [np.zeros(0, np.int64)])
    order = np.argsort(ids, kind="stable")
    keys, counts = ids[order], counts[order]
    roots = _roots(keys, firsts, seconds)
    unique_roots, inverse = np.unique(roots, return_inverse=True)
    if min_size > 1:
        sizes = np.bincount(inverse, weights=counts, minlength=unique_roots.size)
        small = sizes < min_size
        roots = np.where(small[inverse], np.uint64(0), roots)
        unique_roots = unique_roots[~small]
    image_size = int(np.prod(shape[1:]))
    image = (unique_roots - np.uint64(1)) // np.uint64(image_size)
    rank = np.arange(unique_roots.size)
    first_of_image = np.searchsorted(image, image, side="left")
    numbers = (rank - first_of_image + 1).astype(np.uint32)
    return {"keys": keys, "roots": roots, "kept": unique_roots, "numbers": numbers}


def _block_roots(ext: np.ndarray, context: Sequence[Tuple[int, int]], origin: Sequence[int], shape: Sequence[int],
                 read_out: str, mapping: Mapping) -> np.ndarray:
    """The block's objects named by their merged roots (0: background or
    dropped), ``(b, core...)``."""
    ids, _ = _objects(ext, context, origin, shape, read_out)
    out = np.zeros(ids.shape, np.uint64)
    found = ids > 0
    out[found] = mapping["roots"][np.searchsorted(mapping["keys"], ids[found])]
    return out


def hole_summary(ext: np.ndarray, context: Sequence[Tuple[int, int]], origin: Sequence[int], shape: Sequence[int],
                 read_out: str, mapping: Mapping) -> Summary:
    """What the hole merge needs of one block: its background regions
    (global ids), those touching a face of the image, the objects each
    borders inside the block, and on each face the regions and objects."""
    roots = _block_roots(ext, context, origin, shape, read_out, mapping)
    background = provisional_ids((roots == 0).astype(np.uint8), origin, shape)
    open_ids = []
    for axis in range(1, roots.ndim):
        if origin[axis] == 0:
            open_ids.append(np.take(background, 0, axis=axis).ravel())
        if origin[axis] + roots.shape[axis] == shape[axis]:
            open_ids.append(np.take(background, -1, axis=axis).ravel())
    regions: List[np.ndarray] = []
    owners: List[np.ndarray] = []
    for axis in range(1, roots.ndim):
        n = roots.shape[axis]
        lower, upper = np.arange(n - 1), np.arange(1, n)
        bg_lower, bg_upper = np.take(background, lower, axis=axis), np.take(background, upper, axis=axis)
        root_lower, root_upper = np.take(roots, lower, axis=axis), np.take(roots, upper, axis=axis)
        for bg, root in ((bg_lower, root_upper), (bg_upper, root_lower)):
            touch = (bg > 0) & (root > 0)
            regions.append(bg[touch])
            owners.append(root[touch])
    open_all = np.concatenate(open_ids) if open_ids else _EMPTY
    present = np.unique(background)
    return {
        "ids": present[present > 0],
        "open": np.unique(open_all[open_all > 0]),
        "regions": np.concatenate(regions) if regions else _EMPTY,
        "owners": np.concatenate(owners) if owners else _EMPTY,
        "faces": [(lb, hb, lr, hr) for (lb, hb), (lr, hr) in zip(_faces(background), _faces(roots))],
    }


def merge_holes(summaries: Sequence[Summary], numblocks: Sequence[int]) -> Mapping:
    """Merges background regions across block faces; returns ``keys``
    (sorted region ids) and ``fill``: the root of the one object a region
    is enclosed by, else 0."""

    def both_background(lower: Tuple, upper: Tuple) -> Tuple[np.ndarray, np.ndarray]:
        a, b = lower[1], upper[0]
        join = (a > 0) & (b > 0)
        return a[join], b[join]

    firsts, seconds = _pairs_across(summaries, numblocks, both_background)
    keys = np.unique(np.concatenate([np.asarray(s["ids"], np.uint64) for s in summaries] or [_EMPTY]))
    roots = _roots(keys, firsts, seconds)
    # Objects bordering regions: inside blocks, and across faces.
    regions = [np.asarray(s["regions"], np.uint64) for s in summaries]
    owners = [np.asarray(s["owners"], np.uint64) for s in summaries]

    def region_owner(lower: Tuple, upper: Tuple) -> Tuple[np.ndarray, np.ndarray]:
        # (region, object) facing each other, both ways round.
        pairs = [(lower[1], upper[2]), (upper[0], lower[3])]
        r = np.concatenate([bg[(bg > 0) & (obj > 0)] for bg, obj in pairs])
        o = np.concatenate([obj[(bg > 0) & (obj > 0)] for bg, obj in pairs])
        return r, o

    r_across, o_across = _pairs_across(summaries, numblocks, region_owner)
    region = np.concatenate(regions + r_across) if regions or r_across else _EMPTY
    owner = np.concatenate(owners + o_across) if owners or o_across else _EMPTY
    fill = np.zeros(keys.size, np.uint64)
    if keys.size == 0:
        return {"keys": keys, "fill": fill}
    unique_roots, inverse = np.unique(roots, return_inverse=True)
    closed = np.ones(unique_roots.size, bool)
    opened = np.concatenate([np.asarray(s["open"], np.uint64) for s in summaries] or [_EMPTY])
    if opened.size:
        closed[np.unique(inverse[np.searchsorted(keys, opened)])] = False
    if region.size:
        region_root = np.searchsorted(unique_roots, roots[np.searchsorted(keys, region)])
        pairs = np.unique(np.stack([region_root.astype(np.uint64), owner]), axis=1)
        per_region = np.bincount(pairs[0].astype(np.int64), minlength=unique_roots.size)
        single = per_region == 1
        the_owner = np.zeros(unique_roots.size, np.uint64)
        the_owner[pairs[0].astype(np.int64)] = pairs[1]
        filled = closed & single
        fill = np.where(filled, the_owner, np.uint64(0))[inverse]
    return {"keys": keys, "fill": fill}


def relabel_block(ext: np.ndarray, context: Sequence[Tuple[int, int]], origin: Sequence[int], shape: Sequence[int],
                  read_out: str, mapping: Mapping, holes: Optional[Mapping] = None) -> np.ndarray:
    """The final uint32 instance ids of a block ``(b, core...)``."""
    roots = _block_roots(ext, context, origin, shape, read_out, mapping)
    if holes is not None and holes["keys"].size:
        background = provisional_ids((roots == 0).astype(np.uint8), origin, shape)
        inside = background > 0
        roots[inside] = holes["fill"][np.searchsorted(holes["keys"], background[inside])]
    out = np.zeros(roots.shape, np.uint32)
    found = roots > 0
    out[found] = mapping["numbers"][np.searchsorted(mapping["kept"], roots[found])]
    return out


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
