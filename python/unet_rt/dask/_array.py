"""Lazy segmentation of Dask arrays: :func:`segment` and :func:`image_range`."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import dask
import dask.array as da
import numpy as np

from .. import _unet_rt
from ..errors import InvalidArgumentError
from ..model import Model, as_plain_array, check_dtype, check_nonfinite, check_output, check_tta, in_engine_layout
from ._blocks import BlockPlan, dask_block
from ._instances import block_summary, context_of, hole_summary, margin, merge_holes, merge_summaries, relabel_block
from ._array_axes import ArrayAxes, block_depth
from ._spec import ResolvedModel, resolve_model
from ._tiling import fitted_chunks

__all__ = ["segment", "image_range"]

ModelArg = Union[Model, str, "os.PathLike[str]", None]
Normalize = Union[str, Sequence[float], np.ndarray]
#: Percentile statistics per image index: ``(first, values)``, a histogram
#: or (``first`` None) the engine's sample (see ``_unet_rt.percentile_stats``).
Stats = Dict[int, Tuple[Optional[float], np.ndarray]]

# Our names -> Dask's: Dask's "reflect" repeats the edge pixel (NumPy's
# "symmetric"); NumPy's "reflect", the engine's own mirroring, needs no
# padding at all (see BlockPlan.padded).
_BOUNDARIES = {"symmetric": "reflect", "periodic": "periodic", "wrap": "periodic", "nearest": "nearest", "edge": "nearest"}


def segment(
    arr: Any,
    model: ModelArg = None,
    *,
    axes: Optional[str] = None,
    output: str = "labels",
    device: str = "auto",
    precision: Optional[str] = None,
    boundary: Union[str, float] = "reflect",
    normalize: Normalize = "global",
    tile: Union[int, Sequence[int], str, None] = None,
    batch_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    tta: str = "none",
    nonfinite: str = "raise",
    min_size: Optional[int] = None,
    fill_holes: Optional[bool] = None,
    object_size: Optional[float] = None,
) -> da.Array:
    """Segments a (Dask) array lazily, block by block with overlap.

    The result is a Dask array; nothing runs until it is computed. The
    whole array's tiling is chosen here, block boundaries are moved onto its
    tile grid, and each block is read with the context its tiles need
    (``map_overlap(..., trim=False)``) and segmented by the worker's cached
    model as a :class:`unet_rt.Window` of the whole array. The result equals
    ``unet_rt.segment`` on the whole array bit for bit (see
    :mod:`unet_rt.dask`).

    Args:
        arr: a Dask array (or anything ``dask.array.asarray`` takes) of
            uint8, uint16, int16, float16, float32 or float64.
        model: a :class:`unet_rt.Model`, a path, or ``None`` for the bundled
            model. Tasks carry a small :class:`ModelSpec`; each worker process
            loads the model once (paths must be readable on the workers; a
            model made with :meth:`unet_rt.Model.from_bytes` travels once per
            worker).
        axes: as in :meth:`unet_rt.Model.segment` (``"yx"``, ``"cyx"``,
            ``"byx"``...), inferred when unambiguous.
        output: ``"labels"``, ``"probabilities"``, ``"raw"`` or
            ``"instances"`` (the model's instance read-out, globally
            consistent: equal to ``unet_rt.segment``'s; see
            :mod:`unet_rt.dask`).
        device, precision: where and how workers run the model; device
            ``"auto"`` and precision ``None`` keep those of a
            :class:`~unet_rt.Model` argument (for a path, ``None`` is
            :data:`unet_rt.DEFAULT_PRECISION`).
        boundary: how the array is extended at its borders: ``"reflect"``
            (the engine's mirroring, NumPy's ``reflect``: identical to the
            whole-array result), or ``"symmetric"``, ``"periodic"``,
            ``"nearest"`` or a constant: the result is then that of the array
            padded by :func:`block_depth` pixels with ``numpy.pad`` (modes
            ``symmetric``, ``wrap``, ``edge``, ``constant``) over the
            original pixels; percentiles are those of the array itself.
            NumPy's and Dask's names are taken too: ``"wrap"``
            (``"periodic"``), ``"edge"`` (``"nearest"``) and ``"none"``
            (``"reflect"``: Dask adds nothing, the engine mirrors).
        normalize: for models with percentile normalization: ``"global"``
            (the whole image's percentiles, as ``unet_rt.segment``; computed in
            the same graph, which then keeps the array's blocks in cluster
            memory until they are known: for arrays larger than the cluster's
            memory pass precomputed values), ``"block"`` (each block with its
            overlap normalizes itself: no extra pass, results differ), or the
            ``(low, high)`` values from :func:`image_range` (one pair, or one
            per image of a batch).
        tile, batch_size, memory_budget: choose the tiling as in
            :meth:`unet_rt.Model.segment` (for the whole array, once).
        tta: test-time augmentation, as in :meth:`unet_rt.Model.segment`.
        nonfinite: ``"raise"`` (default: NaN or infinity in the input or
            the network's output fails the computation, naming the block's
            image) or ``"propagate"``, as in :meth:`unet_rt.Model.segment`.
        min_size, fill_holes: the instance read-out's options, as in
            :meth:`unet_rt.Model.segment`.
        object_size: not available for Dask arrays (resampling needs the
            whole array): an error when given. Resample the array to the
            model's ``info["object_size"]`` first.

    Returns:
        A Dask array shaped as :meth:`unet_rt.Model.segment`'s result.

    Example:

        >>> import dask.array as da, numpy as np, unet_rt, unet_rt.dask
        >>> image = da.from_array(np.random.default_rng(0).random((200, 150)), chunks=64)
        >>> labels = unet_rt.dask.segment(image, tiny_model_path, device="cpu", precision="fp32", tile=84)
        >>> labels.dtype, labels.chunks  # realigned on the tile stride, 44
        (dtype('uint8'), ((44, 88, 44, 24), (44, 106)))
        >>> want = unet_rt.segment(image.compute(), tiny_model_path, device="cpu", precision="fp32", tile=84)
        >>> bool((labels.compute(scheduler="sync") == want).all())
        True
    """
    output = check_output(output)
    tta = check_tta(tta)
    nonfinite = check_nonfinite(nonfinite)
    check_normalize(normalize)
    check_object_size(object_size)
    x = _dask_input(arr)
    resolved = resolve_model(model, device, precision)
    info = resolved.info
    read_out = json.dumps(resolved.local._read_out_for(output, min_size, fill_holes), sort_keys=True)
    array_axes = ArrayAxes.of(x.shape, axes, int(info["spatial_dims"]), int(info["in_channels"]))
    padded, dask_boundary = _boundary(boundary, x.dtype)
    canon = array_axes.to_canonical(x)
    check_given_ranges(normalize, resolved, canon.shape[0])
    planner, tiling = resolved.plan(canon.shape[2:], block_depth(info) if padded else 0,
                                    tile, batch_size, memory_budget)
    spatial_chunks, depth = fitted_chunks(planner, tiling, canon.chunks[2:])
    chunks = (canon.chunks[0], (canon.shape[1],)) + spatial_chunks
    if chunks != canon.chunks:
        canon = canon.rechunk(chunks)
    ranges = _ranges(canon, resolved, normalize, array_axes)
    engine_output = "labels" if output == "instances" else output
    plan = BlockPlan(
        spatial_dims=array_axes.spatial_dims,
        output=engine_output,
        tiling=tiling,
        depth=depth,
        padded=padded,
        memory_budget=memory_budget,
        tta=tta,
        nonfinite=nonfinite,
    )
    kwargs: dict = {"spec": resolved.spec, "plan": plan}
    if ranges is not None:
        kwargs["ranges"] = ranges
    if resolved.data is not None:
        kwargs["model_data"] = dask.delayed(resolved.data, pure=True)
    dtype = resolved.local.result_dtype(engine_output)
    if engine_output == "labels":
        out_chunks = (canon.chunks[0],) + canon.chunks[2:]
        extra: dict = {"drop_axis": 1}
    else:
        out_chunks = (canon.chunks[0], (int(info["out_channels"]),)) + canon.chunks[2:]
        extra = {}
    result = da.map_overlap(
        dask_block,
        canon,
        depth={0: 0, 1: 0, **{2 + k: d for k, d in enumerate(depth)}},
        boundary=dask_boundary,
        trim=False,
        allow_rechunk=False,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(out_chunks), dtype),
        token=f"unet_rt-{engine_output}",
        **extra,
        **kwargs,
    )
    if output == "instances":
        result = instances(result, read_out)
    return result if array_axes.batched else result[0]


def check_object_size(object_size: Any) -> None:
    """Refuses ``object_size``: resampling needs the whole array."""
    if object_size is not None:
        raise InvalidArgumentError(
            "invalid object_size: unet_rt.dask cannot resample (it needs the whole array); resample the array to the "
            "model's info['object_size'] first (e.g. with dask_image.ndinterp.zoom), or use unet_rt.segment"
        )


def instances(labels: da.Array, read_out: str) -> da.Array:
    """Globally numbered instances of a canonical label array ``(b,
    spatial...)`` by ``read_out`` (``Model.read_out``'s JSON text).

    Per block (read with the read-out's context around it): the objects,
    with ids unique in the array, and the links across its faces; across
    blocks: a merge of the linked objects (and, with ``fill_holes``, of the
    background regions); then each block is relabelled (see
    :mod:`unet_rt.dask._instances`). The blocks' labels stay in memory until
    the merges are known."""
    settings = json.loads(read_out)
    depth = margin(read_out)
    numblocks = labels.numblocks
    shape = tuple(int(s) for s in labels.shape)
    bounds = [np.cumsum((0,) + c) for c in labels.chunks]
    blocks = []
    for idx in np.ndindex(*numblocks):
        start = [int(b[i]) for b, i in zip(bounds, idx)]
        stop = [int(b[i + 1]) for b, i in zip(bounds, idx)]
        context = context_of(start[1:], stop[1:], shape[1:], depth)
        ext = labels[(slice(start[0], stop[0]),) + tuple(slice(a - c[0], b + c[1]) for a, b, c in zip(start[1:], stop[1:], context))]
        blocks.append((idx, _assembled(ext), context, tuple(start), tuple(b - a for a, b in zip(start, stop))))
    delayed = lambda f: dask.delayed(f, pure=True)  # noqa: E731
    summaries = [delayed(block_summary)(ext, ctx, origin, shape, read_out) for _, ext, ctx, origin, _ in blocks]
    mapping = delayed(merge_summaries)(summaries, numblocks, shape, int(settings.get("min_size", 0)))
    holes = None
    if settings.get("fill_holes"):
        parts = [delayed(hole_summary)(ext, ctx, origin, shape, read_out, mapping) for _, ext, ctx, origin, _ in blocks]
        holes = delayed(merge_holes)(parts, numblocks)
    pieces = {
        idx: da.from_delayed(delayed(relabel_block)(ext, ctx, origin, shape, read_out, mapping, holes), shape=size,
                             dtype=np.uint32, meta=np.empty((0,) * len(size), np.uint32))
        for idx, ext, ctx, origin, size in blocks
    }
    return da.block(_nested(pieces, numblocks))


def _assembled(piece: da.Array) -> Any:
    """``piece`` (a slice of the labels) as one delayed array built from
    its blocks' own tasks. Passed to ``dask.delayed`` as an array, each use
    was optimized apart, its blocks' segmentation fused into new tasks: a
    block's inference ran once per use (11 times per block in 2-D, 22 in
    3-D)."""
    cells = piece.to_delayed(optimize_graph=False)
    return dask.delayed(np.block, pure=True)(cells.tolist())


def _nested(pieces: Dict[Tuple[int, ...], da.Array], numblocks: Tuple[int, ...], prefix: Tuple[int, ...] = ()) -> Any:
    """``pieces`` keyed by block index as the nested lists ``da.block`` takes."""
    if len(prefix) == len(numblocks):
        return pieces[prefix]
    return [_nested(pieces, numblocks, prefix + (i,)) for i in range(numblocks[len(prefix)])]


def image_range(arr: Any, model: ModelArg = None, *, axes: Optional[str] = None) -> np.ndarray:
    """The ``(low, high)`` percentile values with which ``unet_rt.segment``
    would normalize the whole array (one pair, or one per image of a batch),
    computed block by block (with the current Dask scheduler). Pass them as
    ``segment(..., normalize=...)`` to segment an array larger than memory
    without keeping its blocks in memory for the statistics.

    >>> import dask.array as da, numpy as np, unet_rt.dask
    >>> image = da.from_array(np.arange(10000, dtype=np.uint16).reshape(100, 100), chunks=30)
    >>> unet_rt.dask.image_range(image, tiny_model_path).round(3).tolist()  # percentiles 1 and 99.8
    [99.99, 9979.002]
    """
    x = _dask_input(arr)
    resolved = resolve_model(model, "cpu", "fp32")
    info = resolved.info
    array_axes = ArrayAxes.of(x.shape, axes, int(info["spatial_dims"]), int(info["in_channels"]))
    if resolved.percentiles is None:
        raise InvalidArgumentError(
            f"invalid model: its normalization is {resolved.normalization!r}, which needs no image statistics"
        )
    ranges = np.asarray(lazy_ranges(array_axes.to_canonical(x), resolved.percentiles).compute())
    return ranges if array_axes.batched else ranges[0]


def lazy_ranges(canon: da.Array, percentiles: Tuple[float, float]) -> Any:
    """A Delayed ``(images, 2)`` array of per-image percentile values of a
    canonical array, reduced as a tree over its blocks."""
    image_shape = tuple(int(s) for s in canon.shape[1:])
    starts = [np.cumsum((0,) + c[:-1]) for c in canon.chunks]
    blocks = canon.to_delayed(optimize_graph=False)
    stats = dask.delayed(block_stats, pure=True)
    parts = [stats(blocks[idx], tuple(int(s[i]) for s, i in zip(starts, idx)), image_shape) for idx in np.ndindex(*canon.numblocks)]
    combine, finish = dask.delayed(combine_stats, pure=True), dask.delayed(finish_stats, pure=True)
    return tree_reduce(parts, lambda group: combine(*group), lambda group: finish(int(canon.shape[0]), percentiles, *group))


def _dask_input(arr: Any) -> da.Array:
    """``arr`` as a Dask array of plain ``np.ndarray`` blocks of a dtype the
    engine reads, with known chunk sizes. Blocks of an ``np.matrix`` (or
    another subclass) are viewed as plain arrays: the layout code's
    indexing on a matrix corrupted NumPy's heap and aborted the process."""
    x = arr if isinstance(arr, da.Array) else da.asarray(as_plain_array(arr, "arr"))
    check_dtype(x.dtype)
    if any(np.isnan(size) for sizes in x.chunks for size in sizes):
        raise InvalidArgumentError(
            "invalid arr: its chunk sizes are unknown (NaN, as after boolean indexing); call "
            "arr.compute_chunk_sizes() first"
        )
    meta = getattr(x, "_meta", None)
    if isinstance(meta, np.ma.MaskedArray):
        # Its blocks were viewed as plain arrays: the data under the mask
        # was segmented without a word (unet_rt.segment refuses masked values).
        raise InvalidArgumentError(
            "invalid arr: a masked Dask array (its blocks may hide masked values, which are not read as "
            "missing): fill them first, e.g. dask.array.ma.filled(arr, value), or pass "
            "arr.map_blocks(numpy.ma.getdata) to segment the data under the mask"
        )
    if isinstance(meta, np.ndarray) and type(meta) is not np.ndarray:
        x = x.map_blocks(np.asarray, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))
    return x


# The statistics' rules are the engine's (unet_rt::normalize::PercentileStats);
# these module-level functions are Dask's tasks, which pickle by reference.
def block_stats(block: np.ndarray, origin: Sequence[int], image_shape: Sequence[int]) -> Stats:
    """The percentile statistics of a canonical block ``(b, c, spatial...)``
    at ``origin`` of an array of ``image_shape`` images, per image index."""
    return _unet_rt.percentile_stats(np.ascontiguousarray(in_engine_layout(block, "block")), origin, image_shape)


def combine_stats(*parts: Stats) -> Stats:
    """The statistics of several blocks together."""
    return _unet_rt.combine_percentile_stats(parts)


def finish_stats(images: int, percentiles: Tuple[float, float], *parts: Stats) -> np.ndarray:
    """The ``(images, 2)`` percentile values from all blocks' statistics."""
    return _unet_rt.percentile_ranges(parts, images, *percentiles)


def tree_reduce(items: List[Any], combine: Callable[[List[Any]], Any], finish: Callable[[List[Any]], Any], fan_in: int = 8) -> Any:
    """Combines ``items`` in groups of ``fan_in`` until at most ``fan_in``
    are left, then ``finish`` takes those."""
    while len(items) > fan_in:
        items = [combine(items[i : i + fan_in]) for i in range(0, len(items), fan_in)]
    return finish(items)


def _boundary(boundary: Union[str, float], dtype: np.dtype) -> Tuple[bool, Any]:
    """Whether the array is extended at its borders, and Dask's boundary. A
    constant must be a value of the array's ``dtype`` (NumPy would refuse
    it, or wrap it, only when the blocks are computed)."""
    if isinstance(boundary, str):
        if boundary in ("reflect", "none"):
            return False, "none"
        if boundary in _BOUNDARIES:
            return True, _BOUNDARIES[boundary]
        raise InvalidArgumentError(
            f"invalid boundary: {boundary!r}; expected 'reflect', 'symmetric', 'periodic', 'nearest' or a number "
            "(or NumPy's and Dask's names: 'wrap', 'edge', 'none')"
        )
    if isinstance(boundary, (int, float, np.integer, np.floating)) and not isinstance(boundary, bool):
        return True, _constant_of(boundary, np.dtype(dtype))
    raise InvalidArgumentError(f"invalid boundary: {boundary!r}")


def _constant_of(value: Union[int, float, np.number], dtype: np.dtype) -> Any:
    """``value`` as a pixel of ``dtype``, or an error naming ``boundary``."""
    bad = InvalidArgumentError(f"invalid boundary: {value!r} is not a value of the array's dtype {dtype}")
    if dtype.kind in "iu":
        if not isinstance(value, (int, np.integer)) and not float(value).is_integer():
            raise bad  # fractions, NaN, infinity
        exact, limits = int(value), np.iinfo(dtype)
        if not limits.min <= exact <= limits.max:
            raise bad
        return dtype.type(exact)
    if not np.isfinite(float(value)) or abs(float(value)) > float(np.finfo(dtype).max):
        raise bad
    return dtype.type(value)


def _ranges(canon: da.Array, resolved: ResolvedModel, normalize: Normalize, array_axes: ArrayAxes) -> Any:
    """``None`` (the engine normalizes each block itself), or a Delayed
    ``(images, 2)`` array of ``(low, high)`` for the blocks to apply."""
    if resolved.percentiles is None:
        return None
    if isinstance(normalize, str):
        if normalize == "block":
            return None
        return lazy_ranges(canon, resolved.percentiles)
    return dask.delayed(given_ranges(normalize, canon.shape[0]), pure=True)


def check_normalize(normalize: Any) -> None:
    """Refuses a ``normalize`` string other than ``"global"`` and ``"block"``."""
    if isinstance(normalize, str) and normalize not in ("global", "block"):
        raise InvalidArgumentError(f"invalid normalize: {normalize!r}; expected 'global', 'block' or (low, high) values")


def given_ranges(normalize: Any, images: int) -> np.ndarray:
    """Checks user-given ``(low, high)`` values: one pair, or one per image,
    finite, low <= high (the engine's rule for ``input_range``, checked
    here so that the call fails, not its computation, and a destination
    does not record them)."""
    try:
        values = np.asarray(normalize, np.float64)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.shape == (2,) and images == 1:
        values = values[None]
    if values.shape != (images, 2) or not np.isfinite(values).all():
        raise InvalidArgumentError(
            f"invalid normalize: expected 'global', 'block' or (low, high) values of shape "
            f"{(2,) if images == 1 else (images, 2)}, got {normalize!r}"
        )
    reversed_ = np.flatnonzero(values[:, 0] > values[:, 1])
    if reversed_.size:
        low, high = values[reversed_[0]]
        where = f" (image {reversed_[0]})" if images > 1 else ""
        raise InvalidArgumentError(f"invalid normalize: ({low!r}, {high!r}){where} must be low <= high")
    return values


def check_given_ranges(normalize: Normalize, resolved: ResolvedModel, images: int) -> None:
    """Refuses ``(low, high)`` values the call cannot use: for a model
    without percentile normalization (they were ignored without a word, where
    ``unet_rt.segment`` refuses ``input_range``), or not ``given_ranges``'."""
    if isinstance(normalize, str):
        return
    if resolved.percentiles is None:
        raise InvalidArgumentError(
            f"invalid normalize: the model's normalization is {json.dumps(resolved.normalization)}, which takes "
            f"no range (only percentile normalization does)"
        )
    given_ranges(normalize, images)
