"""Scale-out on Dask: segment arrays larger than memory, on cluster workers
and GPUs, with zarr in and out.

* :func:`segment` — a lazy Dask array, built with ``dask.array.map_overlap``.
* :func:`segment_to_zarr` — zarr to zarr: workers read their block (with its
  overlap) and write their result themselves; resumable.
* ``python -m unet_rt.dask SOURCE.zarr DESTINATION.zarr --model M`` — the
  same from the command line, on a scheduler or on local worker processes.

Exactness. For valid-padded models the result equals ``unet_rt.segment`` on
the whole array: labels identical, probabilities to float rounding. Three
things make it so:

1. Geometry. A block is segmented together with ``depth`` pixels of its
   neighbours on every side, where ``depth`` is the model's halo rounded up
   to its pooling multiple (:func:`block_depth`), and block boundaries are
   multiples of the pooling multiple (chunks are realigned when needed). The
   engine anchors its tile grid at the origin of the window it receives,
   which then lies on the whole image's pooling grid, and every output pixel
   of the block finds all the real context it reads inside the window. At
   the array's own borders the window simply stops, and the engine mirrors
   there exactly as it does for the whole array (NumPy ``reflect``; Dask's
   ``"reflect"`` boundary is NumPy's ``symmetric`` and is not used).
2. Normalization. A model with percentile normalization scales each image
   by its own percentiles, which a block cannot see. The whole image's
   percentiles are computed from per-block statistics as the engine computes
   them, each block is normalized with them (float32 ``fma``, rounded as the
   engine rounds), and workers load the model with its normalization turned
   off (:attr:`ModelSpec.raw_input`).
3. Instances. Per-block connected components get ids that are unique in the
   whole array (one plus the raster index of their first pixel); objects
   touching across block faces are merged (union-find), then numbered in
   raster order, per image: ``scipy.ndimage.label``'s numbering.

Same-padded models use the same overlap (their context margin rounded up to
the pooling multiple); their result is as close to the whole-array result as
the engine's own tiles are.

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
from ._layout import block_depth
from ._spec import ModelSpec, clear_cache, load_model
from ._zarr import segment_to_zarr

__all__ = ["segment", "segment_to_zarr", "image_range", "block_depth", "ModelSpec", "load_model", "clear_cache"]
