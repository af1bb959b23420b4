"""Zarr to zarr: :func:`segment_to_zarr`.

Workers read their block (with its overlap) from the source array and write
their result block to the destination themselves: the scheduler and the
client only see block indices and a few small numbers. The destination is a
zarr group::

    DESTINATION.zarr/
        labels | probabilities | raw    the network's result
        instances                       for output="instances"
        _done_labels, ...               one marker per block, written after
                                        the block's data (resume)

and its attributes (``unet_rt_dask``) record what was asked, so that a
resumed run can refuse to mix two different jobs."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InvalidArgumentError
from ..model import ProgressArg, check_dtype, check_nonfinite, check_output, check_tta
from ._array import (
    ModelArg,
    Normalize,
    Stats,
    block_stats,
    check_given_ranges,
    check_normalize,
    check_object_size,
    combine_stats,
    finish_stats,
    given_ranges,
)
from ._blocks import BlockPlan, segment_block
from ._instances import block_summary, context_of, hole_summary, margin, merge_holes, merge_summaries, relabel_block
from ._array_axes import ArrayAxes
from ._ome import colors, label_image, open_source, write_metadata
from ._spec import ModelSpec, ResolvedModel, load_model, resolve_model
from ._runner import Runner
from ._tiling import Tiling, block_shape

__all__ = ["segment_to_zarr"]

_FORMAT = "unet_rt.dask/1"
_ATTRS = "unet_rt_dask"
_TARGET_BLOCK = {2: 1024, 3: 128}
Size = Union[int, Sequence[int], None]


@dataclass(frozen=True)
class _Job:
    """Everything a block task needs except the model bytes and the ranges,
    which travel once per worker: a few kilobytes."""

    source: Any
    target: Any
    done: Any
    array_axes: ArrayAxes
    plan: BlockPlan
    spec: ModelSpec
    block: Tuple[int, ...]
    shape: Tuple[int, ...]  # canonical (b, c, spatial...)

    def region(self, index: Sequence[int]) -> Tuple[List[int], List[int]]:
        """Spatial ``start`` and ``stop`` of the block ``index``."""
        start = [i * size for i, size in zip(index[1:], self.block)]
        stop = [min(s + size, n) for s, size, n in zip(start, self.block, self.shape[2:])]
        return start, stop

    def read(self, b: int, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """The canonical window ``(1, c, spatial...)`` of image ``b`` read from the source."""
        window = (slice(b, b + 1), slice(0, self.shape[1])) + tuple(slice(s, e) for s, e in zip(start, stop))
        return self.array_axes.to_canonical(np.asarray(self.source[self.array_axes.user_slices(window)]))

    def out_index(self, b: int, start: Sequence[int], stop: Sequence[int], channels: bool) -> Tuple[slice, ...]:
        lead = (slice(b, b + 1),) if self.array_axes.batched else ()
        return lead + ((slice(None),) if channels else ()) + tuple(slice(s, e) for s, e in zip(start, stop))


def _segment_task(job: _Job, index: Tuple[int, ...], ranges: Optional[np.ndarray] = None, model_data: Optional[bytes] = None) -> int:
    model = load_model(job.spec, model_data)
    start, stop = job.region(index)
    tiling = job.plan.tiling
    # The block's tiles read beyond it: exactly this much (mirrored at the
    # array's borders), with the whole array's tiling.
    first, end = tiling.needed(model, start, stop)
    rows = None if ranges is None else np.asarray(ranges)[index[0] : index[0] + 1]
    window = tiling.region(start, stop).at(first)
    result = segment_block(model, job.read(index[0], first, end), window, job.plan, rows)
    job.target[job.out_index(index[0], start, stop, result.ndim > 1 + job.plan.spatial_dims)] = (
        result if job.array_axes.batched else result[0]
    )
    job.done[index] = 1  # after the data, never before
    return 1


def _stats_task(job: _Job, index: Tuple[int, ...], image_shape: Tuple[int, ...]) -> Stats:
    start, stop = job.region(index)
    return block_stats(job.read(index[0], start, stop), [index[0], 0] + start, image_shape)


def _labels_block(labels: Any, batched: bool, index: Tuple[int, ...], block: Tuple[int, ...], shape: Tuple[int, ...],
                  depth: int) -> Tuple[np.ndarray, List[Tuple[int, int]], List[int]]:
    """Block ``index`` of the stored labels with ``depth`` pixels of
    context (less at the image's faces): the data ``(1, spatial...)``, the
    context per spatial axis, and the block's origin (batch first)."""
    b = index[0]
    start = [i * s for i, s in zip(index[1:], block)]
    stop = [min(a + s, n) for a, s, n in zip(start, block, shape[1:])]
    context = context_of(start, stop, shape[1:], depth)
    spatial = tuple(slice(a - c[0], z + c[1]) for a, z, c in zip(start, stop, context))
    data = np.asarray(labels[((slice(b, b + 1),) if batched else ()) + spatial])
    return (data if batched else data[None]), context, [b] + start


def _summary_task(labels: Any, batched: bool, index: Tuple[int, ...], block: Tuple[int, ...], shape: Tuple[int, ...],
                  read_out: str) -> Dict[str, Any]:
    data, context, origin = _labels_block(labels, batched, index, block, shape, margin(read_out))
    return block_summary(data, context, origin, shape, read_out)


def _hole_task(labels: Any, batched: bool, index: Tuple[int, ...], block: Tuple[int, ...], shape: Tuple[int, ...],
               read_out: str, mapping: Dict[str, np.ndarray]) -> Dict[str, Any]:
    data, context, origin = _labels_block(labels, batched, index, block, shape, margin(read_out))
    return hole_summary(data, context, origin, shape, read_out, mapping)


def _relabel_task(
    labels: Any, target: Any, done: Any, batched: bool, index: Tuple[int, ...], block: Tuple[int, ...],
    shape: Tuple[int, ...], read_out: str, mapping: Dict[str, np.ndarray], holes: Optional[Dict[str, np.ndarray]],
) -> int:
    data, context, origin = _labels_block(labels, batched, index, block, shape, margin(read_out))
    result = relabel_block(data, context, origin, shape, read_out, mapping, holes)
    spatial = tuple(slice(o, o + n) for o, n in zip(origin[1:], result.shape[1:]))
    target[((slice(index[0], index[0] + 1),) if batched else ()) + spatial] = result if batched else result[0]
    done[index] = 1
    return 1


def segment_to_zarr(
    source: Any,
    destination: Any,
    model: ModelArg = None,
    *,
    client: Any = None,
    resume: bool = True,
    progress: ProgressArg = True,
    axes: Optional[str] = None,
    output: str = "labels",
    device: str = "auto",
    precision: Optional[str] = None,
    normalize: Normalize = "global",
    block: Size = None,
    chunks: Size = None,
    shards: Size = None,
    tile: Size = None,
    batch_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    resources: Optional[Dict[str, float]] = None,
    tta: str = "none",
    nonfinite: str = "raise",
    min_size: Optional[int] = None,
    fill_holes: Optional[bool] = None,
    object_size: Optional[float] = None,
    ome: Optional[bool] = None,
    levels: Optional[int] = None,
) -> Any:
    """Segments a zarr array into a zarr group, block by block, on a Dask
    cluster (or in this process), resumably.

    Each task reads its block, with the input its tiles need around it,
    from ``source``, segments it with its worker's cached model as a window
    of the whole image, writes the block's result into ``destination`` and
    then marks the block done. The result equals ``unet_rt.segment`` on the
    whole array bit for bit (see :mod:`unet_rt.dask`). Blocks are whole
    chunks (whole shards, for sharded zarr v3 arrays) of the destination, so
    no two tasks write the same chunk or shard.

    Args:
        source: a zarr array, or the path/URL of one; or an OME-Zarr image
            (a group with NGFF ``multiscales``), whose level 0 is read with
            the axes its metadata names (length-1 ``t`` or ``z`` axes that a
            2-D model cannot read as a batch are skipped).
        destination: a zarr group, or its path/URL; created when missing.
            For OME-Zarr output, the image group to write labels into (the
            source's own group, or any other).
        model: a :class:`unet_rt.Model`, a path (readable on the workers), or
            ``None`` for the bundled model.
        client: a ``distributed.Client``; ``None`` uses the current default
            client when there is one, and otherwise runs in this process;
            ``False`` always runs in this process (blocks one after the
            other, the engine using the cores).
        resume: skip the blocks a previous run completed (their markers are
            written after their data, so a block cut short is redone); a
            destination made for a different job is refused. ``False``
            overwrites the destination (a zarr store, or a new or empty path:
            a folder of other files is refused).
        progress: ``True`` for progress bars on the client (tqdm when
            installed), or a callable ``progress(done, total)`` called as
            blocks are written (blocks skipped by ``resume`` count as done).
        axes, output, device, precision, normalize, tile, batch_size,
            memory_budget: as in :func:`unet_rt.dask.segment`. With
            ``normalize="global"`` the image statistics are computed in a
            first pass over the source (workers read and reduce it; only the
            percentile values come back) and stored in the destination.
        block: spatial block size per task (int or one per axis): a multiple
            of the destination's chunks (shards), moved onto the tile grid
            when that costs little. Default about 1024 (2-D) or 128 (3-D),
            and at least one tile stride.
        chunks, shards: spatial chunk and shard shape of a new destination
            (default: chunks of one block, no shards). A resumed destination
            keeps its own block, chunks and shards.
        tta: test-time augmentation, as in :meth:`unet_rt.Model.segment`.
        nonfinite: ``"raise"`` (default: NaN or infinity in the source or
            the network's output stops the run at that block, whose result
            is not written; blocks written before stay done) or
            ``"propagate"``, as in :meth:`unet_rt.Model.segment`. Not
            recorded: a resumed run may pass either.
        min_size, fill_holes: the instance read-out's options, as in
            :meth:`unet_rt.Model.segment`; recorded, like ``tta``.
        object_size: not available (see :func:`unet_rt.dask.segment`).
        resources: worker resources each segmentation task claims, e.g.
            ``{"GPU": 1}`` on workers started with ``--resources GPU=1``
            (statistics and merging tasks claim none).
        ome: write an OME-Zarr (NGFF) label image,
            ``destination/labels/<output>/0`` with ``image-label`` metadata
            (a colour and the class name per class for ``"labels"``),
            which viewers open as labels; ``None`` (default) does so when
            the source is an OME-Zarr image. Only for ``output="labels"``
            and ``"instances"``. Zarr v3 destinations get NGFF 0.5, v2 ones
            NGFF 0.4.
        levels: resolution levels of the OME-Zarr label image, computed
            by the workers from level 0 by nearest-neighbour subsampling
            (level k keeps every f-th pixel). Default: those of the
            OME-Zarr source image (same factors and shapes, as NGFF
            readers expect of an image's labels), else 1; levels beyond
            the image's halve the model's spatial axes again.

    Returns:
        The result array (``destination[output]``; for OME-Zarr output,
        level 0 of the label image).

    Example:

        >>> import numpy as np, zarr, unet_rt, unet_rt.dask
        >>> tmp = str(getfixture("tmp_path"))
        >>> image = np.random.default_rng(0).random((150, 130)).astype(np.float32)
        >>> src = zarr.create_array(tmp + "/in.zarr", data=image, chunks=(64, 64))
        >>> out = unet_rt.dask.segment_to_zarr(src, tmp + "/out.zarr", tiny_model_path, device="cpu", block=64, progress=False)
        >>> want = unet_rt.segment(image, tiny_model_path, device="cpu")
        >>> bool((out[...] == want).all()), out.chunks
        (True, (64, 64))
    """
    import zarr

    output = check_output(output)
    tta = check_tta(tta)
    nonfinite = check_nonfinite(nonfinite)
    check_normalize(normalize)
    check_object_size(object_size)
    levels = None if levels is None else _check_levels(levels)
    if hasattr(source, "shape") and hasattr(source, "dtype") and not isinstance(source, zarr.Array):
        # zarr said "Unsupported type for store_like: 'ndarray'".
        raise TypeError(f"source must be a zarr array or group, or a path or URL of one, got "
                        f"{type(source).__module__}.{type(source).__qualname__}; for an array in memory use "
                        f"unet_rt.dask.segment(dask.array.from_array(a), model).to_zarr(path)")
    resolved = resolve_model(model, device, precision)
    info = resolved.info
    src, ome_source = open_source(_path(source), int(info["spatial_dims"]))
    check_dtype(src.dtype)
    if ome_source is not None:
        if axes is not None and axes != ome_source.axes:
            raise InvalidArgumentError(f"invalid axes: {axes!r}; the OME-Zarr source's metadata says {ome_source.axes!r}")
        axes = ome_source.axes
    ngff = ome_source is not None if ome is None else bool(ome)
    if ngff and output not in ("labels", "instances"):
        raise InvalidArgumentError(
            f"invalid output: {output!r}; OME-Zarr destinations hold label images (output='labels' or 'instances'); "
            f"pass ome=False for a plain zarr group"
        )
    if levels is not None and levels > 1 and not ngff:
        raise InvalidArgumentError(f"invalid levels: {levels}; resolution levels are written for OME-Zarr label images (ome=True)")
    array_axes = ArrayAxes.of(src.shape, axes, int(info["spatial_dims"]), int(info["in_channels"]))
    read_out = json.dumps(resolved.local._read_out_for(output, min_size, fill_holes), sort_keys=True)
    shape = array_axes.canonical_shape(src.shape)
    if levels is not None and levels > (distinct := distinct_levels(shape[2:])):
        raise InvalidArgumentError(
            f"invalid levels: {levels}; an image of {'x'.join(map(str, shape[2:]))} pixels has "
            f"{distinct} distinct resolution level(s) (the last one pixel wide)"
        )
    check_given_ranges(normalize, resolved, shape[0])
    _, tiling = resolved.plan(shape[2:], 0, tile, batch_size, memory_budget)
    engine_output = "labels" if output == "instances" else output
    # Checked before the destination is opened (a fresh one is created then).
    fresh_blocks = _choose_blocks(block, chunks, shards, shape[2:], tiling)
    written = f"labels/{output}" if ngff else ""
    _check_apart(src, destination, written)
    with _claimed(destination):
        runner = Runner(client, progress)
        _check_shared_memory(runner, source, destination)
        if runner.client is None:
            # The blocks run here: a device this machine lacks (device="cuda"
            # without CUDA) failed at the first block, after the destination
            # was created. Workers elsewhere check their own.
            load_model(resolved.spec, resolved.data)
        mode = "a" if resume else "w"
        _refuse_plain_folder(destination, resume)
        if ngff:
            # Never overwrite the destination itself: it may be the image.
            root = _open_group(destination, "a")
            labels_group = root.require_group("labels")
            group = zarr.open_group(store=labels_group.store, path=f"{labels_group.path}/{output}".lstrip("/"), mode=mode,
                                    zarr_format=root.metadata.zarr_format)
            layout = label_image(array_axes.axes, array_axes.spatial_dims, ome_source,
                                 ome_source is not None and _same_group(ome_source.group, root), levels)
        else:
            group, layout = _open_group(destination, mode), None
        config = {
            "format": _FORMAT,
            "output": output,
            "model_sha256": _model_digest(resolved),
            "precision": resolved.spec.precision,
            "axes": array_axes.axes,
            "source_shape": [int(s) for s in src.shape],
            "source_sample": _source_sample(src),
            "tile": list(tiling.tile),
            "batch_size": tiling.batch_size,
            "tta": tta,
            "read_out": json.loads(read_out) if output == "instances" else None,
            "normalize": normalize if isinstance(normalize, str) else given_ranges(normalize, shape[0]).tolist(),
            "ome": ngff,
            "levels": 1 if layout is None else layout.levels,
        }
        previous = dict(group.attrs.get(_ATTRS) or {})
        if previous:
            _check_same_job(previous, config, destination)
            blocks = tuple(int(b) for b in previous["block"])
            spatial_chunks = spatial_shards = None
        else:
            if len(group) and resume:
                raise InvalidArgumentError(
                    f"invalid destination: {destination} holds data that unet_rt.dask did not write; "
                    f"choose an empty destination or pass resume=False to overwrite it"
                )
            blocks, spatial_chunks, spatial_shards = fresh_blocks
            if spatial_shards is not None and group.metadata.zarr_format == 2:
                # zarr's own refusal named its `shard_shape`, not this call's argument.
                raise InvalidArgumentError(
                    f"invalid shards: {destination} is a zarr format 2 group, whose arrays have no shards; leave "
                    f"shards out, or write to a new (zarr format 3) destination"
                )
        plan = BlockPlan(spatial_dims=array_axes.spatial_dims, output=engine_output, tiling=tiling, memory_budget=memory_budget,
                         tta=config["tta"], nonfinite=nonfinite)
        names = _names(output, ngff)
        target = _array(group, names[engine_output], resolved.local.result_shape(src.shape, engine_output, array_axes.axes),
                        resolved.local.result_dtype(engine_output), array_axes, spatial_chunks, spatial_shards, previous, layout,
                        markers="_done_" + engine_output)
        spatial_chunks = tuple(target.chunks[-array_axes.spatial_dims :])
        spatial_shards = None if target.shards is None else tuple(target.shards[-array_axes.spatial_dims :])
        numblocks = (shape[0],) + tuple(math.ceil(n / b) for n, b in zip(shape[2:], blocks))
        done = _markers(group, "_done_" + engine_output, numblocks)
        if not previous:
            group.attrs[_ATTRS] = {**config, "block": list(blocks), "ranges": None}
        ranges = _ranges(group, resolved, normalize, array_axes, shape, blocks, runner, src, plan)
        job = _Job(src, target, done, array_axes, plan, resolved.spec, blocks, shape)
        runner.run(
            _segment_task,
            [((job, index), {}) for index in _todo(done, numblocks)],
            shared={"ranges": ranges, "model_data": resolved.data},
            total=int(np.prod(numblocks)),
            desc=f"unet_rt {engine_output}",
            resources=resources,
        )
        if output == "instances":
            ids = (resolved.local.result_shape(src.shape, "instances", array_axes.axes), resolved.local.result_dtype("instances"))
            target = _instances(group, names["instances"], target, ids, array_axes, shape, blocks, numblocks, spatial_chunks,
                                spatial_shards, previous, runner, read_out, layout)
        if layout is None:
            return target
        _pyramid(group, layout, runner)
        image_label = colors(resolved.local.classes) if output == "labels" else {}
        write_metadata(root, labels_group, group, output, layout, image_label)
        return group["0"]


def _instances(group, name, labels, ids, array_axes, shape, blocks, numblocks, spatial_chunks, spatial_shards, previous,
               runner, read_out, layout) -> Any:
    target = _array(group, name, ids[0], ids[1], array_axes, spatial_chunks, spatial_shards, previous, layout,
                    markers="_done_instances")
    done = _markers(group, "_done_instances", numblocks)
    todo = _todo(done, numblocks)
    if not todo:
        return target
    label_shape = (shape[0],) + tuple(shape[2:])
    indices = list(np.ndindex(*numblocks))
    settings = json.loads(read_out)
    where = (labels, array_axes.batched)
    summaries = runner.map(_summary_task, [(where + (idx, blocks, label_shape, read_out), {}) for idx in indices],
                           desc="unet_rt merge")
    mapping = runner.call(merge_summaries, summaries, numblocks, label_shape, int(settings.get("min_size", 0)))
    holes = None
    if settings.get("fill_holes"):
        parts = runner.map(_hole_task, [(where + (idx, blocks, label_shape, read_out, mapping), {}) for idx in indices],
                           desc="unet_rt holes")
        holes = runner.call(merge_holes, parts, numblocks)
    runner.run(
        _relabel_task,
        [((labels, target, done, array_axes.batched, index, blocks, label_shape, read_out), {}) for index in todo],
        shared={"mapping": mapping, "holes": holes},
        total=len(indices),
        desc="unet_rt instances",
    )
    return target


# --- helpers ----------------------------------------------------------------


def _in_memory(location: Any) -> bool:
    """Whether ``location`` is (in) an in-memory store: a ``memory://`` URL,
    or a zarr node or store held by this process."""
    import zarr

    if isinstance(location, (zarr.Array, zarr.Group)):
        location = location.store
    if isinstance(location, zarr.storage.MemoryStore):
        return True
    path = _path(location)
    return isinstance(path, str) and path.startswith("memory://")


def _check_shared_memory(runner: Runner, source: Any, destination: Any) -> None:
    """Refuses an in-memory source or destination where the blocks run in
    other processes (a distributed client's workers, unless in-process):
    each worker wrote into its own copy of the store, and the call returned
    a result of zeros without a word."""
    if runner.client is None:
        return
    try:
        workers = list(runner.client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - a client that cannot say: assume other processes
        workers = []
    if workers and all(str(address).startswith("inproc://") for address in workers):
        return
    for name, location in (("source", source), ("destination", destination)):
        if _in_memory(location):
            raise InvalidArgumentError(
                f"invalid {name}: an in-memory zarr store, which the client's workers (other processes) "
                f"cannot share; use a store on disk or a URL the workers reach, or client=False"
            )


def _path(location: Any) -> Any:
    return os.fspath(location) if isinstance(location, os.PathLike) else location


def _open_group(location: Any, mode: str) -> Any:
    import zarr

    try:
        if isinstance(location, zarr.Group):
            return zarr.open_group(store=location.store, path=location.path, mode=mode)
        return zarr.open_group(_path(location), mode=mode)
    except (zarr.errors.ContainsArrayError, FileExistsError, NotADirectoryError) as err:
        raise InvalidArgumentError(
            f"invalid destination: {location} cannot hold a zarr group ({type(err).__name__}: {err}); "
            f"choose a new path or an existing group"
        ) from err


def _refuse_plain_folder(destination: Any, resume: bool) -> None:
    """Refuses a destination that is a local folder holding files but no
    zarr store: starting it over (``resume=False``) deleted everything in
    it (a typo, or ``.``, wiped a project folder), and a resumed run wrote
    its store's files among them. Zarr data another tool wrote is replaced
    (``resume=False``) or refused by the resumed run's own checks."""
    local = _local_location(destination)
    if local is None or not os.path.isdir(local) or not os.listdir(local):
        return
    if not any(os.path.isfile(os.path.join(local, m)) for m in ("zarr.json", ".zgroup", ".zarray")):
        harm = "resume=False would delete them all" if not resume else "its zarr store would be written among them"
        raise InvalidArgumentError(
            f"invalid destination: {destination} is a folder holding files but no zarr store; {harm}: "
            f"choose a new or empty path"
        )


def _local_location(location: Any) -> Optional[str]:
    """The real local path of a zarr node or of a path (``file://`` URLs
    too), when it has one (``None`` for other URLs and stores that are not
    folders)."""
    import zarr

    if isinstance(location, (zarr.Array, zarr.Group)):
        store = location.store
        root = getattr(store, "root", None)
        protocol = getattr(getattr(store, "fs", None), "protocol", ())
        if root is None and "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol)):
            root = getattr(store, "path", None)  # a file:// URL, opened through fsspec
        return None if root is None else os.path.realpath(os.path.join(os.fspath(root), location.path))
    path = _path(location)
    if isinstance(path, str) and path.startswith("file://"):
        path = path[len("file://"):]
    if isinstance(path, str) and "://" not in path:
        return os.path.realpath(path)
    return None


def _location_key(location: Any) -> Optional[Tuple[str, str]]:
    """Where a zarr node or path lies, comparable with another's: a local
    path, a URL's scheme and path, or a store object and the path in it
    (``None`` where it cannot be told)."""
    import zarr

    local = _local_location(location)
    if local is not None:
        return "local", local
    if isinstance(location, (zarr.Array, zarr.Group)):
        store = location.store
        protocol = getattr(getattr(store, "fs", None), "protocol", None)
        if protocol and getattr(store, "path", None) is not None:
            scheme = protocol if isinstance(protocol, str) else protocol[0]
            return scheme, "/" + f"{store.path.strip('/')}/{location.path.strip('/')}".strip("/")
        return f"store {id(store)}", "/" + location.path.strip("/")
    path = _path(location)
    if isinstance(path, str) and "://" in path:
        scheme, rest = path.split("://", 1)
        return scheme, "/" + rest.strip("/")
    return None


def _check_apart(src: Any, destination: Any, written: str) -> None:
    """Refuses a destination whose written part (``written`` below it: the
    whole group, or an OME-Zarr image's label group) is the source array,
    holds it or lies inside it: a fresh start (``resume=False``) would
    delete the image it reads, a resumed one mix the two. Through URLs and
    in-memory stores too (only local paths were compared, and the source
    was deleted)."""
    source, target = _location_key(src), _written_key(destination, written)
    if source is None or target is None or source[0] != target[0]:
        return
    if _overlap(source, target):
        raise InvalidArgumentError(
            f"invalid destination: {destination} would overwrite or nest in the source {source[1]}; write the "
            f"result to another path"
        )


def _written_key(destination: Any, written: str) -> Optional[Tuple[str, str]]:
    """:func:`_location_key` of the part of ``destination`` a run writes
    (``written`` below it, or all of it)."""
    key = _location_key(destination)
    if key is None or not written:
        return key
    scheme, place = key
    return scheme, (os.path.join(place, written) if scheme == "local" else place.rstrip("/") + "/" + written)


def _overlap(a: Tuple[str, str], b: Tuple[str, str]) -> bool:
    """Whether two location keys are one place, or one lies inside the other."""
    if a[0] != b[0]:
        return False
    sep = os.sep if a[0] == "local" else "/"

    def within(inner: str, outer: str) -> bool:
        return inner == outer or inner.startswith(outer.rstrip(sep) + sep)

    return within(a[1], b[1]) or within(b[1], a[1])


_WRITING: List[Tuple[str, str]] = []
_WRITING_LOCK = threading.Lock()


@contextlib.contextmanager
def _claimed(destination: Any) -> Iterator[None]:
    """Holds ``destination`` for one run: a second run into it (or into a
    group inside it, or holding it) from another thread of this process is
    refused while the first runs. Two such runs wrote correct data, but one
    failed with "holds data that unet_rt.dask did not write" (the other's,
    a moment old) or zarr's ``ContainsGroupError``; two label images written
    into one OME-Zarr image at once would both rewrite its ``labels`` list.
    Runs from other processes are not seen."""
    key = _location_key(destination)
    if key is None:
        yield
        return
    with _WRITING_LOCK:
        if any(_overlap(key, other) for other in _WRITING):
            raise InvalidArgumentError(
                f"invalid destination: {destination} is being written by another unet_rt.dask.segment_to_zarr "
                f"call of this process; wait for it to finish (a rerun then resumes) or choose another destination"
            )
        _WRITING.append(key)
    try:
        yield
    finally:
        with _WRITING_LOCK:
            _WRITING.remove(key)


def _same_group(a: Any, b: Any) -> bool:
    return str(a.store) == str(b.store) and a.path.strip("/") == b.path.strip("/")


def _names(output: str, ngff: bool) -> Dict[str, str]:
    """Array names in the destination group: by kind in a plain group; in
    an OME-Zarr label image, level 0 is ``0`` and the class map behind
    instances is ``_classes``."""
    if not ngff:
        return {kind: kind for kind in ("labels", "probabilities", "raw", "instances")}
    return {"labels": "0" if output == "labels" else "_classes", "instances": "0"}


def distinct_levels(sides: Sequence[int]) -> int:
    """How many resolution levels of an image of ``sides`` differ when
    each halves the sides (``ceil(n / 2**k)``): the last is one pixel wide.

    >>> distinct_levels((100, 60)), distinct_levels((128,)), distinct_levels((129,)), distinct_levels((1,))
    (8, 8, 9, 1)
    """
    widest = max(1, max(sides, default=1))
    return 1 + (widest - 1).bit_length()


def _check_levels(levels: Any) -> int:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 1 <= int(levels) <= 32:
        raise InvalidArgumentError(f"invalid levels: expected an int from 1 to 32, got {levels!r}")
    return int(levels)


def _downsample_task(source: Any, target: Any, done: Any, index: Tuple[int, ...], step: Tuple[int, ...]) -> int:
    region = [slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, target.chunks, target.shape)]
    read = tuple(slice(r.start * f, r.stop * f, f) for r, f in zip(region, step))
    target[tuple(region)] = np.asarray(source[read])
    done[index] = 1
    return 1


def _pyramid(group, layout, runner) -> None:
    """Resolution levels 1.. of a label image, each from the one before
    (every f-th pixel: level k is level 0's pixels 0, f_k, 2 f_k, ...), one
    task per chunk; resumable like the segmentation."""
    previous = group["0"]
    for level in range(1, layout.levels):
        shape = layout.level_shape(previous.shape, level)
        name = str(level)
        if name in group and tuple(group[name].shape) == shape and f"_done_{name}" in group:
            array = group[name]
        else:
            chunks = tuple(min(int(c), n) for c, n in zip(group["0"].chunks, shape))
            extra = {"dimension_names": [a["name"] for a in layout.axes]} if group.metadata.zarr_format == 3 else {}
            array = group.create_array(name, shape=shape, dtype=previous.dtype, chunks=chunks, fill_value=0,
                                       overwrite=True, **extra)
            # A level made afresh is not done, whatever markers a deleted
            # one left: resuming gave a level of zeros.
            if f"_done_{name}" in group:
                del group[f"_done_{name}"]
        numchunks = tuple(math.ceil(n / c) for n, c in zip(shape, array.chunks))
        done = _markers(group, f"_done_{name}", numchunks)
        todo = _todo(done, numchunks)
        runner.run(_downsample_task, [((previous, array, done, index, layout.step(level)), {}) for index in todo], {},
                   total=int(np.prod(numchunks)), desc=f"unet_rt level {level}")
        previous = array


def _model_digest(resolved: ResolvedModel) -> str:
    if resolved.data is not None:
        return hashlib.sha256(resolved.data).hexdigest()
    return resolved.spec.digest


# What destinations written before a setting existed used.
_BEFORE = {"tta": "none", "read_out": None, "ome": False, "levels": 1}
# What destinations written before it was recorded cannot be checked for.
_UNRECORDED = {"source_sample"}
#: Chunks of the source whose pixels identify it (spread over the array).
_SAMPLED_CHUNKS = 8
#: Pixels per axis read from a sampled chunk (its corner).
_SAMPLED_SIDE = 256


def _source_sample(src: Any) -> str:
    """A digest of the source's shape, dtype and the pixels of a few chunks
    spread over it (the first, the last, and evenly between: a few reads).
    Resuming compares it: a destination written from another source, or
    from a source rewritten since, kept the old image's blocks and
    percentiles and filled the rest from the new one, with no word. A
    change confined to chunks not sampled is not seen."""
    shape = tuple(int(n) for n in src.shape)
    chunks = tuple(int(c) for c in (getattr(src, "chunks", None) or shape))
    counts = [max(1, math.ceil(n / max(c, 1))) for n, c in zip(shape, chunks)]
    total = int(np.prod(counts)) if counts else 1
    picks = sorted({round(i * (total - 1) / max(_SAMPLED_CHUNKS - 1, 1)) for i in range(_SAMPLED_CHUNKS)})
    digest = hashlib.sha256(json.dumps([list(shape), str(np.dtype(src.dtype))]).encode())
    for flat in picks:
        index = np.unravel_index(flat, counts) if counts else ()
        window = tuple(slice(i * c, min(i * c + min(c, _SAMPLED_SIDE), n)) for i, c, n in zip(index, chunks, shape))
        digest.update(np.ascontiguousarray(np.asarray(src[window])).tobytes())
    return digest.hexdigest()


def _check_same_job(previous: Dict[str, Any], config: Dict[str, Any], destination: Any) -> None:
    for key, value in config.items():
        if key in _UNRECORDED and key not in previous:
            continue
        if key == "source_sample" and previous[key] != value:
            raise InvalidArgumentError(
                f"invalid destination: {destination} was written from other source data (sampled pixels differ: "
                f"another source, or the source changed since); pass resume=False to start over, or write to "
                f"another destination"
            )
        if previous.get(key, _BEFORE.get(key)) != value:
            raise InvalidArgumentError(
                f"invalid destination: {destination} was written with {key}={previous.get(key, _BEFORE.get(key))!r}, this run asks "
                f"for {value!r}; pass resume=False to start over, or write to another destination"
            )


def _choose_blocks(
    block: Size, chunks: Size, shards: Size, spatial: Sequence[int], tiling: Tiling
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Optional[Tuple[int, ...]]]:
    """Block, chunk and shard shapes (spatial) of a new destination: blocks
    are whole shards (chunks), on the tile grid when that costs little."""
    dims = len(spatial)

    def per_axis(value: Size, name: str) -> Optional[Tuple[int, ...]]:
        if value is None:
            return None
        sizes = (int(value),) * dims if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
        if len(sizes) != dims or min(sizes) < 1:
            raise InvalidArgumentError(f"invalid {name}: expected a positive int or {dims} of them, got {value!r}")
        return sizes

    chunk = per_axis(chunks, "chunks")
    shard = per_axis(shards, "shards")
    # By default a block holds at least one tile stride: tiles crossing block
    # faces would run once per block they write into.
    target = per_axis(block, "block") or tuple(max(_TARGET_BLOCK[dims], s) for s in tiling.stride)
    if block is not None:
        _check_block_against_tiles(target, tiling.stride, spatial)
    if shard is not None and chunk is not None and any(s % c for s, c in zip(shard, chunk)):
        raise InvalidArgumentError(f"invalid shards: {shard} must be multiples of the chunks {chunk}")
    unit = shard or chunk
    blocks = tuple(
        block_shape(t, stride, u, n) for t, stride, n, u in zip(target, tiling.stride, spatial, unit or (None,) * dims)
    )
    # Shards without chunks: one chunk per shard (the blocks' chunks did
    # not divide the shards, and zarr refused them in its words).
    return blocks, chunk or shard or blocks, shard


def _check_block_against_tiles(block: Sequence[int], stride: Sequence[int], spatial: Sequence[int]) -> None:
    """Refuses blocks under a sixteenth of the tile stride on an axis: each
    block runs whole tiles, overlap included, for its few pixels (a block of
    3 px on a 300 px image ran past 100 s where the default took 4). Blocks
    of a few tiles' fraction (64 px beside a stride of 296) only cost some
    work twice, and tests of many blocks use them.

    >>> _check_block_against_tiles((16, 16), (60, 60), (300, 300))
    >>> _check_block_against_tiles((64, 64), (296, 296), (1000, 1000))
    >>> _check_block_against_tiles((3, 64), (60, 60), (300, 300))
    Traceback (most recent call last):
    ...
    unet_rt.errors.InvalidArgumentError: invalid block: 3 px is under a sixteenth of the tiles' stride (60 px): each block would run whole tiles, overlap included, for a few of their pixels (about 20 times the work along that axis); pass a block of at least 60, or leave it out (the destination's chunks can still be small: chunks=)
    """
    for size, step, length in zip(block, stride, spatial):
        least = min(step, length)
        if 16 * size < least:
            raise InvalidArgumentError(
                f"invalid block: {size} px is under a sixteenth of the tiles' stride ({least} px): each block would run "
                f"whole tiles, overlap included, for a few of their pixels (about {least // size} times the work "
                f"along that axis); pass a block of at least {least}, or leave it out (the destination's "
                f"chunks can still be small: chunks=)")


def _array(group, name, shape, dtype, array_axes, spatial_chunks, spatial_shards, previous, layout=None,
           markers: Optional[str] = None) -> Any:
    if previous and name not in group:
        if spatial_chunks is None:
            # The result itself, whose chunks only it recorded: a TypeError.
            raise InvalidArgumentError(f"invalid destination: its result array {name} is missing (deleted?) though "
                                       f"its record says it was begun; pass resume=False to start over")
        # Made afresh, it is not done, whatever markers a deleted one left:
        # resuming returned zeros as the result.
        if markers is not None and markers in group:
            del group[markers]
    if previous and name in group:
        array = group[name] if layout is None else layout.view(group[name])
        if tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            raise InvalidArgumentError(f"invalid destination: {name} has shape {array.shape} and dtype {array.dtype}, "
                                       f"expected {shape} and {dtype}; pass resume=False to start over")
        return array
    lead = len(shape) - array_axes.spatial_dims
    head = tuple(1 if (array_axes.batched and i == 0) else int(shape[i]) for i in range(lead))
    chunks = head + tuple(spatial_chunks)
    shards = None if spatial_shards is None else head + tuple(spatial_shards)
    if layout is None:
        return group.create_array(name, shape=tuple(shape), dtype=dtype, chunks=chunks, shards=shards, fill_value=0,
                                  overwrite=True)
    extra = {"dimension_names": [a["name"] for a in layout.axes]} if group.metadata.zarr_format == 3 else {}
    array = group.create_array(name, shape=layout.full(shape), dtype=dtype, chunks=layout.full(chunks),
                               shards=None if shards is None else layout.full(shards), fill_value=0, overwrite=True, **extra)
    return layout.view(array)


def _markers(group, name: str, numblocks: Tuple[int, ...]) -> Any:
    if name in group and tuple(group[name].shape) == tuple(numblocks):
        return group[name]
    # One chunk per block: tasks never write the same marker chunk.
    return group.create_array(name, shape=numblocks, dtype=np.uint8, chunks=(1,) * len(numblocks), fill_value=0, overwrite=True)


def _todo(done: Any, numblocks: Tuple[int, ...]) -> List[Tuple[int, ...]]:
    marks = np.asarray(done[...])
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*numblocks) if not marks[idx]]


def _ranges(group, resolved, normalize, array_axes, shape, blocks, runner, src, plan) -> Optional[np.ndarray]:
    if resolved.percentiles is None or (isinstance(normalize, str) and normalize == "block"):
        return None
    if not isinstance(normalize, str):
        return given_ranges(normalize, shape[0])
    stored = group.attrs[_ATTRS].get("ranges")
    if stored is not None:
        return np.asarray(stored, np.float64)
    image_shape = tuple(int(s) for s in shape[1:])
    job = _Job(src, None, None, array_axes, plan, resolved.spec, blocks, shape)
    numblocks = (shape[0],) + tuple(math.ceil(n / b) for n, b in zip(shape[2:], blocks))
    parts = [((job, idx, image_shape), {}) for idx in np.ndindex(*numblocks)]
    finish = functools.partial(finish_stats, shape[0], resolved.percentiles)
    ranges = runner.reduce(_stats_task, parts, combine_stats, finish, desc="unet_rt statistics")
    attrs = dict(group.attrs[_ATTRS])
    attrs["ranges"] = ranges.tolist()
    group.attrs[_ATTRS] = attrs
    return ranges
