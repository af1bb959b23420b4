"""unet_rt.dask: lazy Dask segmentation, zarr to zarr, resume, instances
across blocks, memory per worker (the issue "Scale out on Dask")."""

from __future__ import annotations

import doctest
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from scipy import ndimage

import unet_rt
import unet_rt.dask as ud
from training.tiny import export_tiny
from unet_rt import _unet_rt
from unet_rt.dask import _blocks as ud_blocks
from unet_rt.dask import _spec
from unet_rt.dask._tiling import grid_chunks

ROOT = Path(__file__).resolve().parents[1]


# --- fixtures ----------------------------------------------------------------


#: libtorch threads of this process. CPU fp32 convolutions split their sums
#: by thread count, so workers compared bit for bit with this process's
#: results run as many.
THREADS = int(unet_rt.build_info()["cpu_threads"])


@contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    """Two worker processes on loopback, each with this process's libtorch
    thread count (Dask would set OMP_NUM_THREADS=1). Without a dashboard the
    scheduler still serves /health on port 8787 unless told otherwise: a
    free port instead, so that other clusters on the machine do not collide
    (and warn)."""
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": THREADS for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with dask.config.set(environ), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client():
    """Shut down at the end of the module."""
    with local_cluster() as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def model(tiny_model_path) -> unet_rt.Model:
    return unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def blob_model(tmp_path_factory) -> unet_rt.Model:
    """A tiny model whose labels of smooth noise are about half foreground,
    in thousands of objects of every size: a good test of instances."""
    path = export_tiny(tmp_path_factory.mktemp("blob") / "blob.pt", seed=1)
    return unet_rt.Model(path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory) -> unet_rt.Model:
    """4 levels: halo 44 is not a multiple of the pooling multiple 8."""
    path = export_tiny(tmp_path_factory.mktemp("deep") / "deep.pt", seed=2, depth=4)
    return unet_rt.Model(path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> unet_rt.Model:
    path = export_tiny(tmp_path_factory.mktemp("rgb") / "rgb.pt", seed=4, in_channels=3, classes=3)
    return unet_rt.Model(path, device="cpu", precision="fp32")


def blobs(shape, seed=0, sigma=3.0, dtype=np.float32) -> np.ndarray:
    image = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    image = (image - image.min()) / (image.max() - image.min())
    return (image * (60000 if np.dtype(dtype).kind in "ui" else 1000)).astype(dtype)


def random_chunks(n: int, rng: np.random.Generator, smallest: int = 8) -> tuple:
    chunks = []
    while sum(chunks) < n:
        chunks.append(int(rng.integers(smallest, 90)))
    chunks[-1] -= sum(chunks) - n
    return tuple(c for c in chunks if c > 0)


def sync(array: da.Array) -> np.ndarray:
    return array.compute(scheduler="sync")


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    """Bit for bit: same shape, dtype and values (float results included)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    mismatched = int((got != want).sum())
    assert mismatched == 0, f"{mismatched} of {want.size} values differ"


def plain_model(tmp_path: Path, **overrides) -> unet_rt.Model:
    """A tiny model without normalization: results of padded images do not
    depend on statistics of the padding."""
    path = export_tiny(tmp_path / "plain.pt", seed=0, normalization={"kind": "none"}, **overrides)
    return unet_rt.Model(path, device="cpu", precision="fp32")


# --- geometry ----------------------------------------------------------------


def test_boundary_padding_is_the_halo_rounded_up_to_the_pooling_multiple(model, deep_model):
    assert ud.block_depth(model.info) == 20 == model.halo
    assert deep_model.info["size_multiple"] == 8 and deep_model.halo == 44
    assert ud.block_depth(deep_model.info) == 48


@pytest.mark.parametrize("seed", range(20))
def test_grid_chunks_are_on_the_tile_grid_and_not_too_short(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    chunks = random_chunks(n, rng, smallest=1)
    stride, offset, least = int(rng.choice([4, 44, 60, 128])), int(rng.integers(0, 30)), int(rng.integers(0, 90))
    got = grid_chunks(chunks, stride, offset, least)
    assert sum(got) == n
    assert all((b + offset) % stride == 0 for b in np.cumsum(got)[:-1])
    assert len(got) == 1 or min(got) >= max(least, 1)


# --- lazy segment: exactness -------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_chunkings_give_the_whole_image_result_bit_for_bit(model, seed):
    rng = np.random.default_rng(seed)
    dtype = [np.float32, np.uint16, np.uint8, np.float64][seed % 4]
    image = blobs((int(rng.integers(120, 260)), int(rng.integers(120, 260))), seed, sigma=1.0, dtype=dtype)
    chunks = (random_chunks(image.shape[0], rng), random_chunks(image.shape[1], rng))
    # Tiles much smaller than the image: many tiles, many blocks.
    tile = [int(t) for t in rng.choice([84, 92, 100, 124, 140], size=2)]
    x = da.from_array(image, chunks=chunks)
    stride = model.layout(image.shape, tile=tile)["stride"]
    for output in ("raw", "probabilities", "labels"):
        lazy = ud.segment(x, model, output=output, tile=tile)
        for c, s in zip(lazy.chunks[-2:], stride):  # realigned on the tile grid
            assert all(b % s == 0 for b in np.cumsum(c)[:-1])
        assert_identical(sync(lazy), model.segment(image, output=output, tile=tile))
    assert sum(len(c) for c in lazy.chunks) > 3


def test_the_default_tiling_is_the_whole_images(model):
    # A small budget makes the engine's own choice several tiles.
    image = blobs((700, 500), 30, sigma=1.0)
    budget = 8 << 20
    layout = model.layout(image.shape, memory_budget=budget)
    assert layout["tiles"] > 4
    lazy = ud.segment(da.from_array(image, chunks=128), model, output="raw", memory_budget=budget)
    assert_identical(sync(lazy), model.segment(image, output="raw", memory_budget=budget))
    assert len(lazy.chunks[1]) * len(lazy.chunks[2]) > 4


def test_bf16_blocks_equal_the_whole_bf16_result(tiny_model_path):
    bf16 = unet_rt.Model(tiny_model_path, device="cpu", precision="bf16")
    image = blobs((300, 260), 31, sigma=1.0, dtype=np.uint16)
    lazy = ud.segment(da.from_array(image, chunks=(70, 90)), bf16, output="raw", tile=100)
    assert_identical(sync(lazy), bf16.segment(image, output="raw", tile=100))


def test_halo_not_on_the_pooling_grid_is_still_exact(deep_model):
    image = blobs((230, 170), 5, sigma=1.0)
    x = da.from_array(image, chunks=(60, 50))
    for output in ("raw", "labels"):
        got = sync(ud.segment(x, deep_model, output=output, tile=108))
        assert_identical(got, deep_model.segment(image, output=output, tile=108))


def test_chunks_smaller_than_the_context_are_merged_not_wrong(model):
    image = blobs((100, 90), 6, sigma=1.0)
    labels = ud.segment(da.from_array(image, chunks=7), model, tile=84)
    assert min(min(c) for c in labels.chunks) >= 20
    assert_identical(sync(labels), model.segment(image, tile=84))


def test_batches_and_channels(model, rgb_model):
    stack = np.stack([blobs((90, 110), 7, sigma=1.0), blobs((90, 110), 8, sigma=1.0) * 3 + 50])
    got = sync(ud.segment(da.from_array(stack, chunks=(1, 45, 40)), model, axes="byx", output="probabilities", tile=84))
    assert_identical(got, model.segment(stack, axes="byx", output="probabilities", tile=84))
    rgb = np.stack([blobs((100, 80), s, sigma=1.0) for s in (9, 10, 11)], axis=-1)  # yxc
    got = sync(ud.segment(da.from_array(rgb, chunks=(40, 40, 1)), rgb_model, output="probabilities", tile=84))
    assert got.shape == (3, 100, 80)
    assert_identical(got, rgb_model.segment(rgb, output="probabilities", tile=84))


def test_float_images_beyond_the_sample_size_use_the_engines_strided_sample(rgb_model, tmp_path):
    # 3 x 2400 x 2400 = 17.3M values > 2**24: the engine samples every 2nd
    # value in (c, y, x) order; block statistics must pick the same ones.
    rng = np.random.default_rng(12)
    rgb = (rng.random((2400, 2400, 3), dtype=np.float32) * 100).astype(np.float32)
    rgb[:, :, 0] += np.linspace(0, 900, 2400, dtype=np.float32)  # a skewed distribution
    x = da.from_array(rgb, chunks=(700, 900, 3))
    low, high = ud.image_range(x, rgb_model)
    view = np.moveaxis(rgb, -1, 0).ravel()[::2].astype(np.float64)
    n = view.size
    for q, got in ((1.0, low), (99.8, high)):
        pos = q / 100 * (n - 1)
        below = int(pos)
        a, b = np.partition(view, [below, below + 1])[[below, below + 1]]
        assert got == a + (b - a) * (pos - below)
    crop = (slice(1000, 1400), slice(1900, 2400))
    assert rgb_model.layout(rgb.shape[:2])["tiles"] > 1
    whole = rgb_model.segment(rgb, output="raw")
    got = ud.segment(x, rgb_model, output="raw")[(slice(None),) + crop]
    assert_identical(sync(got), whole[(slice(None),) + crop])
    # zarr to zarr samples the same values from its own blocks.
    zarr.create_array(tmp_path / "rgb.zarr", data=rgb, chunks=(1000, 1000, 3))
    out = ud.segment_to_zarr(tmp_path / "rgb.zarr", tmp_path / "out.zarr", rgb_model, client=False, progress=False,
                             output="raw", block=1000)
    assert zarr.open_group(tmp_path / "out.zarr").attrs["unet_rt_dask"]["ranges"] == [[low, high]]
    assert_identical(out[(slice(None),) + crop], whole[(slice(None),) + crop])


def test_volumes(tmp_path):
    path = export_tiny(tmp_path / "vol.pt", seed=3, depth=2, base=2, dims=3)
    volume_model = unet_rt.Model(path, device="cpu", precision="fp32")
    volume = blobs((30, 70, 60), 24, sigma=1.0)
    x = da.from_array(volume, chunks=(12, 30, 25))
    tile = [20, 36, 28]
    for output in ("raw", "labels", "instances"):
        got = sync(ud.segment(x, volume_model, output=output, tile=tile))
        assert_identical(got, volume_model.segment(volume, output=output, tile=tile))


@pytest.mark.parametrize("mode,numpy_mode", [("periodic", "wrap"), ("symmetric", "symmetric"), ("nearest", "edge")])
def test_boundary_modes_extend_the_array_like_numpy_pad(tmp_path, mode, numpy_mode):
    plain = plain_model(tmp_path)
    image = blobs((120, 100), 13, sigma=1.0) / 1000  # the scale the network expects
    d = ud.block_depth(plain.info)
    want = plain.segment(np.pad(image, d, mode=numpy_mode), output="raw", tile=84)[:, d:-d, d:-d]
    got = sync(ud.segment(da.from_array(image, chunks=48), plain, boundary=mode, output="raw", tile=84))
    assert_identical(got, want)
    constant = sync(ud.segment(da.from_array(image, chunks=48), plain, boundary=0.25, output="raw", tile=84))
    want = plain.segment(np.pad(image, d, constant_values=0.25), output="raw", tile=84)[:, d:-d, d:-d]
    assert_identical(constant, want)
    with pytest.raises(unet_rt.InvalidArgumentError, match="boundary"):
        ud.segment(da.from_array(image), plain, boundary="mirror")


@pytest.mark.parametrize("mode,numpy_mode", [("symmetric", "symmetric"), ("nearest", "edge")])
def test_boundary_modes_normalize_by_the_array_not_its_padding(model, mode, numpy_mode):
    # The padding adds no pixels to the percentiles: the padded array
    # normalized with the array's own range, as docs/dask.md says.
    image = blobs((120, 100), 13, dtype=np.uint16)
    d = ud.block_depth(model.info)
    padded = np.pad(image, d, mode=numpy_mode)
    want = model.segment(padded, output="raw", tile=84, input_range=model.percentile_range(image))[:, d:-d, d:-d]
    got = sync(ud.segment(da.from_array(image, chunks=48), model, boundary=mode, output="raw", tile=84))
    assert_identical(got, want)


def test_normalize_options(model):
    image = blobs((140, 120), 14, dtype=np.uint16)
    x = da.from_array(image, chunks=64)
    ranges = ud.image_range(x, model)
    assert tuple(ranges.tolist()) == model.percentile_range(image)  # the engine's own values, exactly
    np.testing.assert_allclose(ranges, np.percentile(image, [1, 99.8]), rtol=0, atol=1e-9)
    want = model.segment(image)
    assert_identical(sync(ud.segment(x, model, normalize=ranges, tile=84)), model.segment(image, tile=84))
    # Per-block normalization is the engine's own on one block...
    single = da.from_array(image, chunks=-1)
    assert (sync(ud.segment(single, model, normalize="block")) == want).all()
    # ... and, once the image is cut, each block's own: the engine on the
    # input that block reads, with that input's percentiles.
    lazy = ud.segment(x, model, normalize="block", output="raw", tile=84)
    got = sync(lazy)
    assert len(lazy.chunks[1]) * len(lazy.chunks[2]) > 1
    assert got.shape == (2,) + image.shape and not np.array_equal(got, model.segment(image, output="raw", tile=84))
    chunks = lazy.chunks[1:]
    starts = [np.cumsum((0,) + c[:-1]) for c in chunks]
    for index in [(0, 0), (len(chunks[0]) - 1, len(chunks[1]) - 1)]:
        start = tuple(int(s[i]) for s, i in zip(starts, index))
        shape = tuple(int(c[i]) for c, i in zip(chunks, index))
        region = unet_rt.Window(image=image.shape, start=start, shape=shape)
        (y0, x0), (y1, x1) = model.needed_input(region, tile=84)
        own = model.segment(image[y0:y1, x0:x1], window=region.at((y0, x0)), output="raw", tile=84)
        assert_identical(got[:, start[0]:start[0] + shape[0], start[1]:start[1] + shape[1]], own)
    with pytest.raises(unet_rt.InvalidArgumentError, match="normalize"):
        ud.segment(x, model, normalize=[1.0, 2.0, 3.0])


def test_same_padded_models_give_the_whole_images_crop_result(tmp_path):
    path = export_tiny(tmp_path / "same.pt", seed=0, padding="same")
    same = unet_rt.Model(path, device="cpu", precision="fp32")
    image = blobs((130, 110), 15, sigma=1.0)
    got = sync(ud.segment(da.from_array(image, chunks=64), same, output="raw", tile=64))
    assert_identical(got, same.segment(image, output="raw", tile=64))


def test_test_time_augmentation_keeps_blocks_exact(model, tmp_path):
    # Each block's tiles run augmented: the result is the whole image's.
    image = blobs((150, 130), 16, dtype=np.uint16)
    want = model.segment(image, output="raw", tile=84, tta="d4")
    assert not np.array_equal(want, model.segment(image, output="raw", tile=84))
    got = sync(ud.segment(da.from_array(image, chunks=64), model, output="raw", tile=84, tta="d4"))
    assert_identical(got, want)
    zarr.create_array(tmp_path / "src.zarr", data=image, chunks=(64, 64))
    out = ud.segment_to_zarr(tmp_path / "src.zarr", tmp_path / "out.zarr", model, client=False, progress=False,
                             output="raw", tile=84, block=88, tta="d4")
    assert_identical(out[...], want)
    # A resumed destination made without augmentation is another job.
    with pytest.raises(unet_rt.InvalidArgumentError, match="tta"):
        ud.segment_to_zarr(tmp_path / "src.zarr", tmp_path / "out.zarr", model, client=False, progress=False,
                           output="raw", tile=84, block=88)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid tta"):
        ud.segment(da.from_array(image), model, tta="rotate")


def test_a_client_without_the_workers_gpu_plans_for_the_gpu(tiny_model_path):
    """A CPU client plans GPU blocks by the GPU's rule (the largest tiles in
    the GPU's budget; the CPU's own are chosen for its caches) and runs
    nothing while building the graph."""
    x = da.zeros((6000, 5000), dtype=np.uint16, chunks=1000)
    lazy = ud.segment(x, tiny_model_path, device="cuda:0", precision="bf16")
    bf16 = unet_rt.Model(tiny_model_path, device="cpu", precision="bf16")
    # The engine plans for a device this machine does not have.
    want = bf16.layout(x.shape, device="cuda:0", precision="bf16")
    cpu = bf16.layout(x.shape)
    assert (want["tile"], want["batch_size"]) != (cpu["tile"], cpu["batch_size"])  # the devices matter
    assert bf16.layout(x.shape, device="cuda:1", memory_budget=_unet_rt.DEFAULT_CUDA_BUDGET) == want
    plans = [v for v in _graph_values(lazy) if isinstance(v, ud_blocks.BlockPlan)]
    assert plans and {p.tiling.tile for p in plans} == {tuple(want["tile"])}
    assert {p.tiling.batch_size for p in plans} == {want["batch_size"]}


def _graph_values(array: da.Array) -> list:
    """Every object reachable in the graph's task arguments."""
    found, todo = [], list(dict(array.__dask_graph__()).values())
    while todo:
        item = todo.pop()
        found.append(item)
        if isinstance(item, (tuple, list)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        else:
            for name in ("args", "kwargs", "value"):
                inner = getattr(item, name, None)
                if isinstance(inner, (tuple, list, dict)):
                    todo.append(inner)
    return found


def test_bad_arguments_are_value_errors(model):
    x = da.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(unet_rt.InvalidArgumentError, match="output"):
        ud.segment(x, model, output="masks")
    with pytest.raises(unet_rt.InvalidArgumentError, match="dtype"):
        ud.segment(da.zeros((64, 64), dtype=np.complex64), model)
    with pytest.raises(unet_rt.InvalidArgumentError, match="axes"):
        ud.segment(da.zeros((3, 64, 64), dtype=np.uint8), model, axes="yxc")
    # Found up front, not when the blocks are computed (an OverflowError or
    # a ValueError about NaN there).
    for constant in (300, -1, 2.5, float("nan")):
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid boundary: .* dtype uint8"):
            ud.segment(x, model, boundary=constant)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid boundary: .* dtype float16"):
        ud.segment(x.astype(np.float16), model, boundary=1e6)
    unknown = da.zeros((64, 64), dtype=np.uint8, chunks=32)
    unknown = unknown[unknown[:, 0] == 0]  # chunk sizes unknown
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid arr: its chunk sizes are unknown"):
        ud.segment(unknown, model)
    with pytest.raises(TypeError, match="model must be a unet_rt.Model, a path or None, got int"):
        ud.segment(x, 5)
    # Choices are read as the engine reads them.
    assert ud.segment(x, model, output=" Labels", tta="FLIPS").dtype == np.uint8


def test_arguments_the_engine_would_refuse_are_refused_at_the_call(model, tmp_path):
    # Given ranges for a model without percentiles were ignored without a word (segment refuses
    # input_range); reversed ones failed only at compute, and segment_to_zarr had recorded them, so
    # the corrected rerun was refused as another job; masked values were segmented as data; zarr
    # format 2 with shards failed in zarr's words.
    plain = unet_rt.Model(export_tiny(tmp_path / "plain.pt", seed=0, normalization={"kind": "none"}), device="cpu")
    x = da.from_array(blobs((96, 96), 3), chunks=48)
    zarr.create_array(tmp_path / "in.zarr", data=blobs((96, 96), 3), chunks=(48, 48))
    with pytest.raises(unet_rt.InvalidArgumentError, match=r'invalid normalize: the model\'s normalization is \{"kind": "none"\}'):
        ud.segment(x, plain, normalize=(0.0, 1.0))
    for normalize in [(10.0, 1.0), [(0.0, 1.0), (3.0, 2.0)]]:
        batch = da.stack([x, x]) if len(np.shape(normalize)) == 2 else x
        with pytest.raises(unet_rt.InvalidArgumentError, match=r"invalid normalize: .* must be low <= high"):
            ud.segment(batch, model, normalize=normalize, axes="byx" if batch.ndim == 3 else None)
    for dst, normalize, shards in [("a.zarr", (10.0, 1.0), None), ("b.zarr", (0.0, 1.0), None)]:
        kind = model if normalize != (0.0, 1.0) else plain
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid normalize"):
            ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / dst, kind, normalize=normalize, progress=False)
        assert not (tmp_path / dst).exists()
    masked = da.ma.masked_greater(x, 0.5)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid arr: a masked Dask array"):
        ud.segment(masked, model)
    assert_identical(ud.segment(masked.map_blocks(np.ma.getdata), model).compute(), model.segment(blobs((96, 96), 3)))
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid shards: .* zarr format 2"):
        ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / "v2.zarr", model, chunks=48, shards=96, block=96,
                           client=False, progress=False)


def test_an_in_memory_store_is_refused_where_workers_are_other_processes(client, model, tmp_path):
    # Each worker wrote into its own copy: the call returned zeros, no block done, without a word.
    zarr.create_array(tmp_path / "in.zarr", data=blobs((96, 96), 3), chunks=(48, 48))
    for destination in (zarr.storage.MemoryStore(), "memory://unet_rt_test/out.zarr"):
        with pytest.raises(unet_rt.InvalidArgumentError, match="invalid destination: an in-memory zarr store"):
            ud.segment_to_zarr(tmp_path / "in.zarr", destination, model, client=client, progress=False)
    # In this process it works.
    out = ud.segment_to_zarr(tmp_path / "in.zarr", zarr.storage.MemoryStore(), model, client=False, progress=False)
    assert_identical(out[...], model.segment(blobs((96, 96), 3)))


def test_matrices_and_big_endian_arrays_are_read_as_the_in_memory_api_reads_them(model, tmp_path):
    """np.matrix blocks corrupted NumPy's heap in the layout code (the
    process aborted at the next garbage collection); big-endian blocks
    failed in the percentile statistics ("dtype >u2 is not supported")."""
    import gc

    image = (np.random.default_rng(0).random((150, 170)) * 60000).astype(np.uint16)
    want = model.segment(image)
    with pytest.warns(PendingDeprecationWarning):
        matrix = np.asmatrix(image)
    with dask.config.set(scheduler="synchronous"):
        for arr in (matrix, da.from_array(matrix, chunks=64)):
            assert_identical(ud.segment(arr, model).compute(), want)
            np.testing.assert_array_equal(ud.image_range(arr, model), ud.image_range(image, model))
        gc.collect()
        swapped = image.astype(">u2")
        for arr in (swapped, da.from_array(swapped, chunks=64)):
            assert_identical(ud.segment(arr, model).compute(), want)
    zarr.create_array(tmp_path / "big.zarr", shape=image.shape, chunks=(64, 64), dtype=">u2", zarr_format=2)[:] = image
    out = ud.segment_to_zarr(tmp_path / "big.zarr", tmp_path / "out.zarr", model, client=False, progress=False)
    assert_identical(out[...], want)


def test_a_destination_that_is_or_holds_the_source_is_refused(model, tmp_path):
    source = zarr.open_array(tmp_path / "src.zarr", mode="w", shape=(64, 72), chunks=(32, 32), dtype="f4")
    source[:] = np.random.default_rng(0).random((64, 72))
    group = zarr.open_group(tmp_path / "data.zarr", mode="w")
    image = group.create_array("image", shape=(64, 72), chunks=(32, 32), dtype="f4")
    image[:] = 1
    # resume=False deleted the image it was reading (the first replaced it
    # by a group of its labels, the second removed it from its group).
    for src, dst in [(tmp_path / "src.zarr", tmp_path / "src.zarr"), (tmp_path / "data.zarr" / "image", tmp_path / "data.zarr"),
                     (tmp_path / "src.zarr", tmp_path / "src.zarr" / "out")]:
        for resume in (False, True):
            with pytest.raises(unet_rt.InvalidArgumentError, match="invalid destination: .* overwrite or nest in the source"):
                ud.segment_to_zarr(src, dst, model, resume=resume, progress=False)
    assert zarr.open_array(tmp_path / "src.zarr", mode="r")[0, 0] == source[0, 0]
    assert (zarr.open_array(tmp_path / "data.zarr" / "image", mode="r")[:] == 1).all()
    (tmp_path / "plain").write_text("not a zarr store")
    with pytest.raises(unet_rt.InvalidArgumentError, match="invalid destination: .* cannot hold a zarr group"):
        ud.segment_to_zarr(tmp_path / "src.zarr", tmp_path / "plain", model, progress=False)


# --- the graph ---------------------------------------------------------------


def test_the_graph_carries_a_small_spec_never_the_weights(model, tmp_path):
    source = zarr.create_array(tmp_path / "in.zarr", data=blobs((300, 260), 16), chunks=(64, 64))
    weights = Path(model.path).read_bytes()
    signature = weights[-4096:-2048]  # part of the serialized archive
    before = _spec.load_counts()
    lazy = ud.segment(da.from_zarr(source), model, output="probabilities", tile=84)
    graph = dict(lazy.__dask_graph__())
    size = len(cloudpickle.dumps(graph))
    blocks = lazy.npartitions
    assert signature not in cloudpickle.dumps(graph)
    assert size < 600 * len(graph), (size, len(graph))
    assert _spec.load_counts() == before  # building the graph ran no block
    spec = _spec.ModelSpec.of(model.path, "cpu", "fp32")
    assert len(pickle.dumps(spec)) < 400
    # A model given as bytes is one piece of data in the graph, not one per task.
    in_memory = unet_rt.Model.from_bytes(weights, "cpu", "fp32")
    payload = cloudpickle.dumps(dict(ud.segment(da.from_zarr(source), in_memory, tile=84).__dask_graph__()))
    assert payload.count(signature) == 1 and blocks > 1


# --- on the cluster ----------------------------------------------------------


def test_cluster_result_equals_the_whole_image_and_models_load_once(client, model):
    image = blobs((260, 230), 17, sigma=1.0)
    x = da.from_array(image, chunks=(70, 64))
    got = ud.segment(x, model, output="probabilities", tile=100).compute()
    assert_identical(got, model.segment(image, output="probabilities", tile=100))
    assert_identical(ud.segment(x, model, tile=100).compute(), model.segment(image, tile=100))
    loads = client.run(_spec.load_counts)
    assert len(loads) == 2
    for counts in loads.values():
        assert counts and all(n == 1 for n in counts.values()), loads
    bytes_model = unet_rt.Model.from_bytes(Path(model.path).read_bytes(), "cpu", "fp32")
    assert_identical(ud.segment(x, bytes_model, tile=100).compute(), model.segment(image, tile=100))


def test_instances_are_consistent_across_block_faces(client, blob_model):
    image = blobs((300, 280), 18)
    x = da.from_array(image, chunks=(64, 96))
    labels = ud.segment(x, blob_model, tile=84).compute()
    assert_identical(labels, blob_model.segment(image, tile=84))
    want, count = ndimage.label(labels > 0)
    assert count > 100  # many objects, many of them cut by block faces
    lazy = ud.segment(x, blob_model, output="instances", tile=84)
    assert lazy.dtype == np.uint32 and lazy.npartitions >= 12
    got = lazy.compute()
    assert_identical(got, want.astype(np.uint32))  # numbered in raster order, as scipy.ndimage.label
    assert_identical(got, blob_model.segment(image, output="instances", tile=84))
    # A batch: numbered per image, like unet_rt.segment.
    stack = np.stack([image, blobs((300, 280), 19)])
    chunks = (1, 100, 100)
    got = sync(ud.segment(da.from_array(stack, chunks=chunks), blob_model, axes="byx", output="instances", tile=84))
    assert_identical(got, blob_model.segment(stack, axes="byx", output="instances", tile=84))


def test_instances_run_each_blocks_inference_once(blob_model, monkeypatch):
    # Each use of a block's labels (its summary, its neighbours' context,
    # its relabelling) ran the block's inference again: 11 times per block
    # in 2-D, 22 in 3-D.
    image = blobs((300, 280), 18)
    x = da.from_array(image, chunks=(100, 100))
    lazy = ud.segment(x, blob_model, output="instances", tile=84)
    calls = []
    segment = unet_rt.Model.segment
    monkeypatch.setattr(unet_rt.Model, "segment", lambda self, *a, **k: calls.append(1) or segment(self, *a, **k))
    got = sync(lazy)
    assert len(calls) == x.npartitions == 9, len(calls)
    monkeypatch.undo()
    assert_identical(got, blob_model.segment(image, output="instances", tile=84))


@pytest.mark.skipif(unet_rt.build_info()["cuda_available"], reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_the_destination_is_made(tiny_model_path, tmp_path):
    # In this process the blocks run here: device="cuda" without CUDA
    # failed at the first block, after the destination was created.
    zarr.create_array(tmp_path / "src.zarr", data=np.zeros((96, 80), np.float32), chunks=(64, 64))
    with pytest.raises(unet_rt.DeviceError, match="cuda"):
        ud.segment_to_zarr(tmp_path / "src.zarr", tmp_path / "out.zarr", tiny_model_path, client=False,
                           progress=False, device="cuda")
    assert not (tmp_path / "out.zarr").exists()


def test_zarr_to_zarr_equals_the_in_memory_result(client, model, tmp_path):
    image = blobs((300, 270), 20, dtype=np.uint16)
    source = zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(100, 100))
    out = ud.segment_to_zarr(
        tmp_path / "in.zarr", tmp_path / "out.zarr", model, client=client, progress=False,
        output="probabilities", chunks=32, shards=64, block=128, tile=84,
    )
    assert out.chunks == (2, 32, 32) and out.shards == (2, 64, 64)
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert group.attrs["unet_rt_dask"]["block"] == [128, 128]  # a task writes whole shards
    assert_identical(out[...], model.segment(image, output="probabilities", tile=84))
    assert group["_done_probabilities"][...].all()
    assert len(group.attrs["unet_rt_dask"]["ranges"]) == 1
    # Resuming a complete run does nothing; another job is refused.
    calls = []
    ud.segment_to_zarr(source, tmp_path / "out.zarr", model, client=client, output="probabilities", tile=84,
                       progress=lambda done, total: calls.append((done, total)))
    assert calls and all(done == total for done, total in calls)
    with pytest.raises(unet_rt.InvalidArgumentError, match="resume=False"):
        ud.segment_to_zarr(source, tmp_path / "out.zarr", model, client=client, output="labels", progress=False)


def test_zarr_instances_on_the_cluster(client, blob_model, tmp_path):
    image = blobs((260, 300), 21)
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(64, 64))
    out = ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", blob_model, client=client,
                             output="instances", block=64, tile=104, progress=False)
    labels = zarr.open_group(tmp_path / "out.zarr", mode="r")["labels"][...]
    assert_identical(labels, blob_model.segment(image, tile=104))
    assert_identical(out[...], blob_model.segment(image, output="instances", tile=104))


def test_an_interrupted_run_resumes_where_it_stopped(model, tmp_path):
    image = blobs((256, 256), 22)
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(64, 64))

    def stop_after_three(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", model, client=False, block=64, tile=104,
                           progress=stop_after_three)
    group = zarr.open_group(tmp_path / "out.zarr", mode="r+")
    assert group["_done_labels"][...].sum() == 3
    # A block whose data was cut short: no marker, so it is redone.
    group["labels"][0:64, 64:128] = 7
    group["_done_labels"][0, 0, 1] = 0
    seen = []
    out = ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", model, client=False, block=64, tile=104,
                             progress=lambda done, total: seen.append(done))
    assert seen[0] == 2 and seen[-1] == 16  # two blocks skipped, fourteen done
    assert_identical(out[...], model.segment(image, tile=104))


def test_a_second_run_into_a_destination_being_written_is_refused(model, tmp_path):
    # Two threads writing one new destination: one failed with "holds data
    # that unet_rt.dask did not write" (the other's) or zarr's own error.
    src, out = tmp_path / "in.zarr", tmp_path / "results" / "out.zarr"
    zarr.create_array(src, data=blobs((128, 128), 5), chunks=(64, 64))
    refused = []

    def second_runs(done, total):
        if done != 1:
            return
        for dst in (out, out / "inner", out.parent):
            def run(dst=dst):
                try:
                    ud.segment_to_zarr(src, dst, model, client=False, block=64, progress=False)
                except unet_rt.InvalidArgumentError as e:
                    refused.append(str(e))
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ud.segment_to_zarr(src, out, model, client=False, block=64, progress=second_runs)
    assert len(refused) == 3 and all("is being written by another unet_rt.dask.segment_to_zarr call" in e
                                     for e in refused), refused
    # The interrupted run let go of it: a rerun resumes and completes.
    result = ud.segment_to_zarr(src, out, model, client=False, block=64, progress=False)
    assert_identical(result[...], model.segment(blobs((128, 128), 5)))


def test_resuming_from_other_source_data_is_refused(model, tmp_path):
    """Resume kept the blocks (and percentiles) of the image first
    segmented and filled the rest from another source, or from the same
    source rewritten since, with no word."""
    first, second = blobs((256, 256), 22), blobs((256, 256), 23)
    zarr.create_array(tmp_path / "a.zarr", data=first, chunks=(64, 64))
    zarr.create_array(tmp_path / "b.zarr", data=second, chunks=(64, 64))

    def stop_after_three(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ud.segment_to_zarr(tmp_path / "a.zarr", tmp_path / "out.zarr", model, client=False, block=64,
                           progress=stop_after_three)
    with pytest.raises(unet_rt.InvalidArgumentError, match="written from other source data .* resume=False"):
        ud.segment_to_zarr(tmp_path / "b.zarr", tmp_path / "out.zarr", model, client=False, block=64, progress=False)
    done = ud.segment_to_zarr(tmp_path / "a.zarr", tmp_path / "out.zarr", model, client=False, block=64, progress=False)
    assert_identical(done[...], model.segment(first))
    # The same path, rewritten.
    zarr.open_array(tmp_path / "a.zarr", mode="r+")[:] = second
    with pytest.raises(unet_rt.InvalidArgumentError, match="written from other source data"):
        ud.segment_to_zarr(tmp_path / "a.zarr", tmp_path / "out.zarr", model, client=False, block=64, progress=False)
    redone = ud.segment_to_zarr(tmp_path / "a.zarr", tmp_path / "out.zarr", model, client=False, block=64,
                                progress=False, resume=False)
    assert_identical(redone[...], model.segment(second))
    # Destinations written before the sample was recorded still resume.
    group = zarr.open_group(tmp_path / "out.zarr", mode="r+")
    attrs = dict(group.attrs["unet_rt_dask"])
    del attrs["source_sample"]
    group.attrs["unet_rt_dask"] = attrs
    again = ud.segment_to_zarr(tmp_path / "a.zarr", tmp_path / "out.zarr", model, client=False, block=64, progress=False)
    assert_identical(again[...], model.segment(second))


def test_killing_the_job_mid_run_then_resuming_gives_the_complete_result(client, model, tmp_path):
    """The command line on its own local workers is killed (SIGKILL, all its
    processes) after a few blocks; the rerun, with resume, finishes."""
    image = blobs((512, 448), 23)
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(64, 64))
    command = [
        sys.executable, "-m", "unet_rt.dask", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"),
        "--model", model.path, "--local-workers", "2", "--threads-per-worker", str(THREADS), "--block", "64", "--tile", "104", "--device", "cpu", "--precision", "fp32",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    markers = tmp_path / "out.zarr" / "_done_labels" / "c"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and job.poll() is None:
            # Six marker files: the kill may land inside one worker's write of
            # each (a file made, its bytes not yet there, read back as not done).
            if markers.exists() and sum(1 for p in markers.rglob("*") if p.is_file()) >= 6:
                break
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate(timeout=60)
    done = zarr.open_group(tmp_path / "out.zarr", mode="r")["_done_labels"][...]
    total = done.size
    assert 4 <= done.sum() < total, "the job was not killed mid-run"
    seen = []
    out = ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", model, client=client, tile=104,
                             progress=lambda d, t: seen.append(d))
    assert seen[0] == done.sum() and seen[-1] == total
    assert_identical(out[...], model.segment(image, tile=104))


def test_workers_refuse_a_model_file_replaced_after_the_graph_was_built(tmp_path):
    """Workers load the model from its path: a file replaced after the graph
    was built (or another copy on a worker's machine) gave other weights'
    results, with no word."""
    path = export_tiny(tmp_path / "model.pt", seed=0)
    image = np.random.default_rng(0).random((120, 130)).astype(np.float32)
    for loaded in (False, True):
        export_tiny(path, seed=0)
        model = unet_rt.Model(path, device="cpu", precision="fp32") if loaded else path
        lazy = ud.segment(image, model, device="cpu", precision="fp32", output="probabilities")
        _spec.clear_cache()
        export_tiny(path, seed=1)
        with pytest.raises(unet_rt.ModelError, match="not the model file the task graph was built with .* rebuild"):
            lazy.compute(scheduler="sync")
    _spec.clear_cache()


def test_command_line_usage_errors_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "unet_rt.dask", "a.zarr"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "destination" in run.stderr
    # -1 local workers started none, and the run waited forever.
    for flag, value in (("--local-workers", "-1"), ("--local-workers", "0"), ("--threads-per-worker", "-5")):
        run = subprocess.run([sys.executable, "-m", "unet_rt.dask", "a.zarr", "b.zarr", flag, value],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and f"{flag}: expected 1 or more, got {int(value)}" in run.stderr, run.stderr
    # The API's own argument errors are usage errors too, before anything is written.
    zarr.create_array(tmp_path / "in.zarr", shape=(40, 50), chunks=(20, 20), dtype="uint8")
    run = subprocess.run([sys.executable, "-m", "unet_rt.dask", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"),
                          "--device", "cpu", "--block", "0", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "block" in run.stderr and not (tmp_path / "out.zarr").exists(), run.stderr
    # A block of 3 px ran whole tiles for every 3 px, silent past 100 s.
    zarr.create_array(tmp_path / "big.zarr", shape=(300, 300), chunks=(100, 100), dtype="uint8")
    run = subprocess.run([sys.executable, "-m", "unet_rt.dask", str(tmp_path / "big.zarr"), str(tmp_path / "out.zarr"),
                          "--device", "cpu", "--block", "3", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "invalid --block: 3 px is under a sixteenth of the tiles' stride" in run.stderr, run.stderr
    assert "--chunks)" in run.stderr and not (tmp_path / "out.zarr").exists(), run.stderr
    # Messages of segment_to_zarr spell its keyword arguments as this command's flags.
    zarr.create_group(tmp_path / "theirs.zarr").create_array("notes", shape=(3,), dtype="uint8")
    run = subprocess.run([sys.executable, "-m", "unet_rt.dask", str(tmp_path / "in.zarr"), str(tmp_path / "theirs.zarr"),
                          "--device", "cpu", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert run.returncode in (1, 2) and "--no-resume" in run.stderr and "resume=False" not in run.stderr, run.stderr
    # A model file missing is a usage error, as unet-rt says (was: exit 1); ome=True is --ome.
    run = subprocess.run([sys.executable, "-m", "unet_rt.dask", str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr"),
                          "--model", str(tmp_path / "missing.pt"), "--no-progress"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "model file not found" in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "unet_rt.dask", str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr"),
                          "--device", "cpu", "--levels", "3", "--no-progress"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "(--ome)" in run.stderr and "ome=True" not in run.stderr, run.stderr


def test_integer_types_are_read_widened_as_the_api_reads_them(model, tmp_path):
    # Percentile statistics and blocks both read int32 as float64 (Dask
    # refused it before any block ran).
    image = (np.random.default_rng(2).random((200, 150)) * 3000).astype(np.int32)
    want = unet_rt.segment(image, model)
    assert_identical(sync(ud.segment(da.from_array(image, chunks=64), model)), want)
    zarr.create_array(tmp_path / "int.zarr", data=image.astype(np.uint32), chunks=(64, 64))
    out = ud.segment_to_zarr(str(tmp_path / "int.zarr"), str(tmp_path / "out.zarr"), model, client=False,
                             progress=False)
    assert_identical(out[...], want)


def test_nonfinite_values_are_refused_or_propagated_as_the_api_does(model, tmp_path):
    image = np.random.default_rng(0).random((200, 150)).astype(np.float32)
    image[150, 100] = np.nan
    x = da.from_array(image, chunks=64)
    with pytest.raises(unet_rt.InvalidArgumentError, match="nonfinite"):
        ud.segment(x, model, nonfinite="ignore")  # before anything is computed
    with pytest.raises(unet_rt.InvalidArgumentError, match="holds NaN or infinite values"):
        sync(ud.segment(x, model))
    want = unet_rt.segment(image, model, nonfinite="propagate")
    assert_identical(sync(ud.segment(x, model, nonfinite=" Propagate")), want)
    zarr.create_array(tmp_path / "nan.zarr", data=image, chunks=(64, 64))
    out = ud.segment_to_zarr(str(tmp_path / "nan.zarr"), str(tmp_path / "out.zarr"), model, client=False,
                             nonfinite="propagate", progress=False)
    assert_identical(out[...], want)
    # NaN over 0.2% of the pixels made the high percentile NaN: refused here, and every finite pixel
    # normalised flat in memory. Percentiles are those of the finite values now, everywhere.
    patch = np.random.default_rng(1).random((200, 150)).astype(np.float32)
    patch[100:110, 50:60] = np.nan
    want = unet_rt.segment(patch, model, nonfinite="propagate", output="probabilities")
    clean = unet_rt.segment(np.nan_to_num(patch, nan=np.nanmedian(patch)), model, output="probabilities",
                            input_range=model.percentile_range(patch))
    finite = np.isfinite(want).all(0)
    # NaN within the network's reach of the patch; every other pixel as the image without it.
    assert 0.85 < finite.mean() < 1 and finite[:75].all() and finite[140:].all()
    assert np.array_equal(want[:, finite], clean[:, finite])
    np.testing.assert_array_equal(sync(ud.segment(da.from_array(patch, chunks=64), model, nonfinite="propagate",
                                                  output="probabilities")), want)
    # A progress callable of another signature, before anything is written.
    with pytest.raises(TypeError, match=r"progress must be callable as progress\(done, total\): len takes"):
        ud.segment_to_zarr(str(tmp_path / "nan.zarr"), str(tmp_path / "other.zarr"), model, client=False,
                           nonfinite="propagate", progress=len)
    assert not (tmp_path / "other.zarr").exists()


def test_an_image_without_a_finite_pixel_is_named_among_its_batch(model):
    # With global normalization it has no percentiles: refused (docs/dask.md), but the message
    # did not say which image of the batch; per-block normalization segments it.
    image = np.random.default_rng(0).random((2, 96, 96)).astype(np.float32)
    image[1] = np.nan
    x = da.from_array(image, chunks=(1, 48, 48))
    with pytest.raises(unet_rt.InvalidArgumentError, match="image 1 of the batch: it holds no finite value"):
        ud.segment(x, model, axes="byx", nonfinite="propagate").compute(scheduler="sync")
    got = ud.segment(x, model, axes="byx", nonfinite="propagate", normalize="block", output="raw")
    assert np.isnan(got.compute(scheduler="sync")[1]).all()


def test_the_command_lines_doctests_pass():
    # pytest's --doctest-modules leaves __main__.py out.
    import unet_rt.dask.__main__ as command_line

    result = doctest.testmod(command_line)
    assert result.attempted >= 5 and result.failed == 0, result


def test_command_line_errors_are_one_line(tiny_model_path, tmp_path):
    image = np.random.default_rng(0).random((200, 150)).astype(np.float32)
    image[150, 100] = np.nan
    zarr.create_array(tmp_path / "nan.zarr", data=image, chunks=(64, 64))
    command = [sys.executable, "-m", "unet_rt.dask", str(tmp_path / "nan.zarr"), str(tmp_path / "out.zarr"),
               "--model", str(tiny_model_path), "--device", "cpu", "--no-progress"]
    # The workers' own report of the failed task (Dask's traceback) came
    # before the error, and the error named the Python keyword.
    run = subprocess.run(command + ["--local-workers", "1"], capture_output=True, text=True, timeout=300)
    # The source's pixels failed, not the command line: 1, as unet-rt's.
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr, run.stderr
    assert "holds NaN or infinite values" in run.stderr and "pass --nonfinite propagate" in run.stderr, run.stderr
    run = subprocess.run(command + ["--nonfinite", "propagate"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    # An operating system's refusal names the file, not "[Errno 2]".
    run = subprocess.run(command[:4] + ["/proc/unet-rt-test.zarr"] + command[5:], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == "unet_rt.dask: error: /proc/unet-rt-test.zarr: No such file or directory", run.stderr


# --- memory ------------------------------------------------------------------


def _load_and_measure(spec: _spec.ModelSpec) -> int:
    _spec.load_model(spec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not
    inherited from the process that started it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


@pytest.mark.slow
def test_a_zarr_of_gigabytes_keeps_worker_memory_bounded(tmp_path):
    """1.5 GiB of float64 (4 channels) through 2 workers: each worker's peak
    resident memory stays far below the array's size."""
    path = export_tiny(tmp_path / "four.pt", seed=1, in_channels=4)
    model = unet_rt.Model(path, device="cpu", precision="fp32")
    shape = (4, 7000, 7000)
    nbytes = int(np.prod(shape)) * 8
    source = zarr.create_array(tmp_path / "big.zarr", shape=shape, dtype=np.float64, chunks=(4, 1000, 1000),
                               compressors=None, fill_value=0)
    rng = np.random.default_rng(0)
    for y in range(0, shape[1], 1000):
        source[:, y : y + 1000] = rng.random((4, min(1000, shape[1] - y), shape[2]))
    try:
        with local_cluster() as cluster, Client(cluster) as c:
            spec = _spec.ModelSpec.of(path, "cpu", "fp32")
            loaded = c.run(_load_and_measure, spec)  # torch and the model: the floor
            started = time.perf_counter()
            # A bounded activation budget: the test is about memory per worker.
            out = ud.segment_to_zarr(source, tmp_path / "out.zarr", model, client=c, block=1000, progress=False,
                                     memory_budget=64 << 20)
            elapsed = time.perf_counter() - started
            peaks = c.run(_peak_rss_bytes)
            loads = c.run(_spec.load_counts)
        assert out[...].shape == shape[1:] and 0 < out[::50, ::50].mean() < 1
        # The result, not just its shape: a region across block faces equals
        # the engine's on the pixels that region reads, with the whole image's range.
        region = unet_rt.Window(image=shape[1:], start=(2950, 3980), shape=(100, 60))
        (y0, x0), (y1, x1) = model.needed_input(region, memory_budget=64 << 20)
        ranges = zarr.open_group(tmp_path / "out.zarr").attrs["unet_rt_dask"]["ranges"]
        want = model.segment(source[:, y0:y1, x0:x1], axes="cyx", window=region.at((y0, x0)),
                             input_range=ranges[0], memory_budget=64 << 20)
        assert_identical(out[2950:3050, 3980:4040], want)
        assert all(list(n.values()) == [1] for n in loads.values())
        print(f"\n{nbytes / 2**30:.2f} GiB in {elapsed:.0f} s; worker memory with the model loaded "
              + ", ".join(f"{v / 2**20:.0f} MiB" for v in loaded.values()) + "; peak "
              + ", ".join(f"{v / 2**20:.0f} MiB" for v in peaks.values()))
        for worker, peak in peaks.items():
            assert peak - loaded[worker] < nbytes / 4, (peaks, loaded, nbytes)
    finally:
        shutil.rmtree(tmp_path / "big.zarr", ignore_errors=True)
        shutil.rmtree(tmp_path / "out.zarr", ignore_errors=True)


def test_segment_to_zarr_never_deletes_what_it_did_not_write_nor_trusts_markers_of_deleted_results(model, tmp_path):
    image = np.random.default_rng(0).random((200, 150)).astype(np.float32)
    source = tmp_path / "in.zarr"
    zarr.create_array(source, data=image, chunks=(64, 64))
    # resume=False emptied a folder of other files (a typo, or ".").
    project = tmp_path / "project"
    (project / "code").mkdir(parents=True)
    (project / "code" / "a.py").write_text("x")
    with pytest.raises(unet_rt.InvalidArgumentError, match="holding files but no zarr store; resume=False would delete"):
        ud.segment_to_zarr(source, project, model, client=False, progress=False, resume=False)
    assert (project / "code" / "a.py").read_text() == "x"
    # A resumed run (the default, with or without OME-Zarr) wrote its store among them.
    for ome in (False, True):
        with pytest.raises(unet_rt.InvalidArgumentError,
                           match="holding files but no zarr store; its zarr store would be written among them"):
            ud.segment_to_zarr(source, project, model, client=False, progress=False, ome=ome)
        assert sorted(p.name for p in project.iterdir()) == ["code"]
    # The source through a file:// URL, or in a store that is not a folder, was deleted.
    url = "file://" + str(source.resolve())
    with pytest.raises(unet_rt.InvalidArgumentError, match="would overwrite or nest in the source"):
        ud.segment_to_zarr(url, url, model, client=False, progress=False, resume=False)
    assert np.array_equal(zarr.open_array(source, mode="r")[...], image)
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    raw = memory.create_array("raw", data=image)
    with pytest.raises(unet_rt.InvalidArgumentError, match="would overwrite or nest in the source"):
        ud.segment_to_zarr(raw, memory, model, client=False, progress=False, resume=False)
    assert np.array_equal(raw[...], image)
    # A result array deleted under its markers: redone (it was zeros, complete), or for the
    # result itself refused (a bare TypeError).
    out = tmp_path / "out.zarr"
    want = ud.segment_to_zarr(source, out, model, client=False, progress=False, output="instances", block=64)[...]
    assert want.any()
    shutil.rmtree(out / "instances")
    again = ud.segment_to_zarr(source, out, model, client=False, progress=False, output="instances", block=64)
    assert_identical(again[...], want)
    shutil.rmtree(out / "labels")
    with pytest.raises(unet_rt.InvalidArgumentError, match="its result array labels is missing"):
        ud.segment_to_zarr(source, out, model, client=False, progress=False, output="instances", block=64)


def test_segment_to_zarr_names_an_array_source_and_shards_without_chunks_work(model, tmp_path):
    image = np.random.default_rng(0).random((200, 150)).astype(np.float32)
    # zarr said "Unsupported type for store_like: 'ndarray'".
    for source in (image, da.from_array(image)):
        with pytest.raises(TypeError, match="source must be a zarr array or group, or a path or URL of one, got"):
            ud.segment_to_zarr(source, tmp_path / "never.zarr", model, client=False, progress=False)
    assert not (tmp_path / "never.zarr").exists()
    # Shards alone: zarr refused the blocks' chunks, which did not divide them.
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(64, 64))
    out = ud.segment_to_zarr(tmp_path / "in.zarr", tmp_path / "sharded.zarr", model, client=False, progress=False,
                             shards=64)
    assert (out.chunks, out.shards) == ((64, 64), (64, 64))
    assert_identical(out[...], model.segment(image))
