"""Scale-out on Dask: segment arrays larger than memory, on cluster workers
and GPUs, with zarr in and out.

* :func:`segment` — a lazy Dask array, built with ``dask.array.map_overlap``.
* :func:`segment_to_zarr` — zarr to zarr: workers read their block (with its
  overlap) and write their result themselves; resumable.
* ``python -m unet_rt.dask SOURCE.zarr DESTINATION.zarr --model M`` — the
  same from the command line, on a scheduler or on local worker processes.

Exactness. The result equals ``unet_rt.segment`` on the whole array, bit
for bit (labels, probabilities and raw outputs alike), on any chunking:

1. Tiles. The whole array's tiling (tile and batch size) is chosen once, on
   the client, as ``unet_rt.segment`` would choose it for the whole array,
   and every block is segmented as a :class:`unet_rt.Window` of the whole
   image: the engine runs the whole image's tiles that write into the
   block, on the same input windows, in batches of the same sizes. Block
   boundaries are moved onto the tile grid (chunks are realigned), so each
   tile runs in one block only, and blocks overlap by what their tiles
   read beyond their faces (:meth:`unet_rt.Model.needed_input`). At the
   array's borders the engine mirrors exactly as it does for the whole
   array (NumPy ``reflect``; Dask's ``"reflect"`` boundary is NumPy's
   ``symmetric`` and is not used).
2. Normalization. A model with percentile normalization scales each image
   by its own percentiles, which a block cannot see. The whole image's
   percentiles are computed from per-block statistics as the engine
   computes them and handed to every block as ``input_range``.
3. Instances. Per-block connected components get ids that are unique in the
   whole array (one plus the raster index of their first pixel); objects
   touching across block faces are merged (union-find), then numbered in
   raster order, per image: ``scipy.ndimage.label``'s numbering.

On the CPU, fp32 kernels also split their sums by the number of libtorch
threads: blocks equal a whole-array run with the same thread count, so
give workers the thread count of the run to compare with (``python -m
unet_rt.dask --threads-per-worker``; Dask's default is one).

The tiling is planned for the workers' device and precision (on a client
without their GPU, with the GPU's default memory budget); pass ``tile`` and
``batch_size`` to choose it. Same-padded models are tiled with ``blend="crop"``,
``unet_rt.segment``'s default, with the same guarantee.

Workers. Tasks carry a :class:`ModelSpec` (path or digest, device,
precision): a few hundred bytes. Each worker process loads a model once and
caches it (:func:`load_model`). On GPU clusters run one worker process per
GPU (``dask_cuda.LocalCUDACluster``, or ``dask worker --nworkers 1`` per
device with ``CUDA_VISIBLE_DEVICES`` set) and keep ``device="auto"``; see
``docs/dask.md``.

>>> import dask.array as da, numpy as np, unet_rt.dask
>>> image = da.zeros((256, 300), dtype=np.uint8, chunks=128)
>>> unet_rt.dask.segment(image, tiny_model_path, device="cpu").shape
(256, 300)
"""

from __future__ import annotations

from ._array import image_range, segment
from ._array_axes import block_depth
from ._spec import ModelSpec, clear_cache, load_model
from ._zarr import segment_to_zarr

__all__ = ["segment", "segment_to_zarr", "image_range", "block_depth", "ModelSpec", "load_model", "clear_cache"]
