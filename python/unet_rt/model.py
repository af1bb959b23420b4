"""The :class:`Model` class and :func:`segment`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _cache, _unet_rt
from ._axes import arrange
from ._window import Window
from .errors import ApproximateTilingWarning, InvalidArgumentError, ModelError, ModelNotFoundError

__all__ = ["Model", "segment", "plan", "bundled_model_path", "DEFAULT_PRECISION"]

PathLike = Union[str, "os.PathLike[str]"]
#: The precision every entry point uses unless told otherwise (the core's
#: default: fp32, which the whole-image oracles hold to).
DEFAULT_PRECISION: str = _unet_rt.DEFAULT_PRECISION
ProgressArg = Union[bool, Callable[[int, int], Any], None]

# The engine's names (one list each, in the binding).
_SUPPORTED = tuple(np.dtype(name).type for name in _unet_rt.PIXEL_DTYPES)
# Integer types the engine reads widened, as the command line does: int8 as
# int16, 32/64-bit integers as float64 (the core's table).
_WIDENED = {np.dtype(stored).type: np.dtype(wide) for stored, wide in _unet_rt.WIDENED_DTYPES}
OUTPUTS: Tuple[str, ...] = tuple(_unet_rt.OUTPUTS)
TTA_MODES: Tuple[str, ...] = tuple(_unet_rt.TTA_MODES)
NONFINITE_MODES: Tuple[str, ...] = tuple(_unet_rt.NONFINITE_MODES)


def bundled_model_path() -> Path:
    """Path of the pretrained nuclei model shipped inside the package.

    >>> bundled_model_path().name
    'nuclei.pt'
    """
    return Path(str(resources.files("unet_rt") / "models" / "nuclei.pt"))


class Model:
    """A segmentation model loaded once onto a device and shared by threads.

    Args:
        path: a TorchScript file (``.pt``), ideally exported with unet_rt
            metadata (``python -m unet_rt.export``); a bioimage.io package
            with TorchScript weights (``.zip``, or a folder holding
            ``rdf.yaml``; see :mod:`unet_rt.bioimageio`); ``None`` loads the
            bundled nuclei model.
        device: ``"auto"`` (the first GPU if there is one, else the CPU),
            ``"cpu"``, ``"cuda"`` (or ``"gpu"``: the first GPU), ``"cuda:N"``
            or ``"cuda:all"`` (every GPU: each call spreads its batches over
            them).
        precision: ``"fp32"`` (the default, exact to the whole-image
            forward), ``"auto"`` (bf16 on GPUs and on CPUs with bf16 units,
            about twice as fast there; a few boundary pixels may differ),
            ``"bf16"`` (GPUs, and CPUs: slow on one without bf16 units) or
            ``"fp16"`` (GPUs only).

    Example:

        >>> import numpy as np, unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> model.halo, model.classes
        (20, ['background', 'class_1'])
        >>> labels = model.segment(np.random.rand(300, 400))
        >>> labels.shape, labels.dtype
        ((300, 400), dtype('uint8'))

    A model pickles to its path (or its bytes, for models loaded with
    :meth:`from_bytes`) and options, never to pickled weights, so it can be
    sent to other processes (multiprocessing, dask).
    """

    __slots__ = ("_inner", "_info", "_source", "_stamp", "_fingerprint", "_device_request", "_precision_request", "__weakref__")

    def __init__(self, path: Optional[PathLike] = None, device: str = "auto", precision: str = DEFAULT_PRECISION) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        _check_device_precision(device, precision)
        if path is not None and "\x00" in str(os.fspath(path)):
            raise InvalidArgumentError(f"invalid path: {os.fspath(path)!r} contains a NUL character")
        if path is None:
            path = bundled_model_path()
            if not path.exists():
                raise ModelNotFoundError(f"model file not found: {path} (the bundled nuclei model is not installed)")
        from .bioimageio import is_package

        # Taken before reading: a file replaced meanwhile counts as changed.
        try:
            self._stamp: Tuple[int, ...] = _cache.file_stamp(path)
        except (OSError, ValueError):
            self._stamp = ()  # loading says what is wrong with the path
        if is_package(path):
            from .bioimageio import read_package

            self._inner = _unet_rt.Model.from_bytes(read_package(path).archive, os.fspath(path), device, precision)
        else:
            self._inner = _unet_rt.Model(os.fspath(path), device, precision)
        self._source: Union[str, bytes] = os.path.abspath(os.fspath(path))
        # Read after the load refused special files; kept only where the
        # file was not replaced meanwhile (else it may not be what loaded).
        fingerprint = _cache.file_fingerprint(path)
        try:
            unchanged = bool(self._stamp) and _cache.file_stamp(path) == self._stamp
        except (OSError, ValueError):
            unchanged = False
        self._fingerprint = fingerprint if unchanged else None
        self._device_request = device
        self._precision_request = precision
        self._warn_if_approximate()

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview], device: str = "auto", precision: str = DEFAULT_PRECISION, name: str = "<bytes>") -> "Model":
        """Loads a model from the bytes of a TorchScript archive (``bytes``,
        ``bytearray`` or ``memoryview``); ``name`` stands for its path in
        messages.

        >>> import unet_rt
        >>> with open(tiny_model_path, "rb") as f:
        ...     unet_rt.Model.from_bytes(f.read(), device="cpu").path
        '<bytes>'
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        _check_device_precision(device, precision)
        data = bytes(data)
        self = cls.__new__(cls)
        self._inner = _unet_rt.Model.from_bytes(data, name, device, precision)
        self._source = data
        self._stamp = ()
        self._fingerprint = None
        self._device_request = device
        self._precision_request = precision
        self._warn_if_approximate()
        return self

    def _described(self) -> Dict[str, Any]:
        """The engine's description of the network, parsed once (every call
        read it, parsing its JSON twice): for reading only; :attr:`info`
        gives callers a copy of their own."""
        try:
            return self._info
        except AttributeError:
            self._info = self._inner.info
            return self._info

    def _warn_if_approximate(self) -> None:
        message = self._described()["warning"]
        if message is not None:
            warnings.warn(f"{self.path}: {message}", ApproximateTilingWarning, stacklevel=3)

    def _origin(self) -> Tuple[Union[str, bytes], str, str]:
        """What the model was made from: its absolute path (or its bytes),
        and the device and precision asked for."""
        return self._source, self._device_request, self._precision_request

    def _loaded_stamp(self) -> Tuple[int, ...]:
        """The file's stamp (:func:`unet_rt._cache.file_stamp`) when the model
        was loaded, after checking that the file still has it: copies,
        pickles and Dask tasks load the model again from its path, and got
        the weights of a file replaced since (retrained, checked out), with
        no word. ``()`` for a model loaded from bytes.

        Raises :class:`~unet_rt.ModelError` where the file changed."""
        if isinstance(self._source, bytes):
            return ()
        try:
            now = _cache.file_stamp(self._source)
        except OSError:
            now = ()
        # chmod, touch, a copy of the same bytes: the same entries (names,
        # CRC-32s, sizes) are the same model. Read only where the stamp
        # moved: every pickle and Dask graph comes through here.
        if now != self._stamp and not (bool(now) and self._fingerprint is not None
                                       and _cache.file_fingerprint(self._source) == self._fingerprint):
            what = "is gone" if not now else "has changed"
            raise ModelError(
                f"{self._source} {what} since this model was loaded: a copy of it (pickle, copy, "
                f"multiprocessing, Dask) would load other weights; load the model again"
            )
        return self._stamp

    def __reduce__(self):
        if isinstance(self._source, bytes):
            # The name too: it stands for the path in messages and in ``path``.
            return (_rebuild, (self._source, self._device_request, self._precision_request, self.path))
        self._loaded_stamp()
        return (_rebuild, (self._source, self._device_request, self._precision_request))

    @property
    def path(self) -> str:
        """The file the model was loaded from."""
        return os.fspath(self._inner.path)

    @property
    def device(self) -> str:
        """The device the weights live on, e.g. ``"cpu"`` or ``"cuda:0"``;
        ``"cuda:all"`` for a model loaded on every GPU (``device="cuda:all"``
        on a machine with several), whose calls spread their batches over
        the GPUs and give what one GPU gives."""
        return self._inner.device

    @property
    def devices(self) -> List[str]:
        """Every device the model runs on, the first one planning the tiles.

        >>> import unet_rt
        >>> unet_rt.Model(tiny_model_path, device="cpu").devices
        ['cpu']
        """
        return list(self._inner.devices)

    @property
    def precision(self) -> str:
        """The precision the weights run in: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return self._inner.precision

    @property
    def metadata(self) -> Optional[Dict[str, Any]]:
        """The embedded ``unet_rt/1`` metadata as the runtime reads it (checked
        and completed with its defaults, e.g. ``min_size``), or ``None`` for
        plain TorchScript; :func:`unet_rt.export.read_metadata` gives the
        stored text's values as written."""
        text = self._inner.metadata_json
        return None if text is None else json.loads(text)

    @property
    def info(self) -> Dict[str, Any]:
        """Geometry and meaning of the network, from its metadata or, for plain
        TorchScript, found by probing it: ``spatial_dims``, ``in_channels``,
        ``out_channels``, ``output``, ``padding``, ``halo``, ``size_multiple``,
        ``size_offset``, ``smallest_size`` (the smallest input the network
        takes), ``valid_sizes`` (the first four input sizes it takes),
        ``output_shrink`` (the pixels a tile's output is smaller than its
        input, both sides together: 0 for same-padded networks),
        ``smallest_tile`` (the smallest ``tile=``: one pooling step
        of output beyond the overlap), ``fixed_size`` (the only input
        size, or ``None``), ``probed``, ``square_memory`` (bytes of a
        pass per pixel squared of a tile that probing measured growing
        faster than its pixels, as global attention's does; 0.0 where none
        was seen: tile plans and memory checks count it); ``overlap`` (the
        pixels per side tiles really overlap) and ``overlap_reason``;
        ``block_depth`` (the halo rounded up to ``size_multiple``: see
        :func:`unet_rt.dask.block_depth`);
        ``output_key`` (where the segmentation is in a dict or tuple
        output); ``exact`` (whether tiles reproduce the whole-image forward,
        up to float rounding),
        ``whole_tile_ops`` (layers that see the whole tile, from the
        network's code), ``one_image_per_pass`` (a pass of two images
        failed at load where one worked, as with a batch size fixed in a
        traced network: tiles run one per pass), ``measured`` (tiles against the whole image on a
        random probe image: ``probe_size``, ``max_difference`` relative to
        the output's range, ``label_agreement``, and ``pixels``, how many
        output pixels the tiles kept beyond their overlap), ``undeclared_geometry``
        (for a same-padded model whose metadata's ``halo`` or
        ``size_multiple`` tiles showed wrong at load: ``declared_halo``,
        ``declared_size_multiple``, and ``found_halo``,
        ``found_size_multiple`` as probing finds them, else ``None``),
        ``normalization`` (how raw pixels become network input: ``kind``
        and its parameters), ``instances`` (how ``output="instances"`` reads objects out of the
        classes: ``seed_classes``, ``grow_classes``, ``grow``,
        ``fill_holes``, ``min_size``, from the metadata's read-out or the
        default), ``object_size`` (the typical object diameter in pixels the
        model was trained at, which ``segment(..., object_size=)`` scales
        images to; ``None`` where the metadata gives none) and
        ``warning``. ``unet-rt info --json`` prints the same keys, beside
        the file's and the metadata's.

        >>> import unet_rt
        >>> info = unet_rt.Model().info
        >>> info["smallest_size"], info["valid_sizes"], info["smallest_tile"]
        (92, [92, 100, 108, 116], 100)"""
        return dict(self._inner.info)

    @property
    def halo(self) -> int:
        """Pixels of context per side tiles really use (``info["overlap"]``):
        the crop of valid models; for same-padded ones the margin the network
        needs (``info["halo"]``) rounded up to its pooling factor."""
        return int(self._described()["overlap"])

    @property
    def classes(self) -> List[str]:
        """The names of the output channels."""
        return list(self._inner.class_names)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass of the network on a batch ``(N, C, spatial...)`` of
        valid size; the raw output as float32. For images of any size, use
        :meth:`segment`. NaN or infinity in the batch raises
        :class:`~unet_rt.InvalidArgumentError`, in the output
        :class:`~unet_rt.NonFiniteError`."""
        array = as_plain_array(batch, "batch")
        # Integers and reals only: a complex batch would lose its imaginary part.
        if array.dtype.kind not in "iuf":
            raise InvalidArgumentError(f"invalid batch: dtype {array.dtype} is not an integer or real type")
        with np.errstate(over="ignore", invalid="ignore"):
            # Values beyond float32 become infinite here; the engine refuses them.
            batch32 = in_engine_layout(np.asarray(array, dtype=np.float32), "batch")
        return self._inner.forward(batch32)

    def layout(self, shape: Sequence[int], tile: Union[int, Sequence[int], str, None] = None,
               batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
               device: Optional[str] = None, precision: Optional[str] = None) -> Dict[str, Any]:
        """The tiling :meth:`segment` would use for an image of spatial
        ``shape``: the input ``tile``, the network's ``output_tile``, the
        ``stride`` between tiles, the ``grid`` of tiles per axis, the number
        of ``tiles`` and the ``batch_size``.

        With ``device`` and ``precision`` (names as for loading), the tiling
        this model would get there, planned here: the device need not exist
        on this machine (a Dask client plans its GPU workers' tiles so). On a
        GPU tiles are the largest within ``memory_budget`` (by default a
        quarter of the GPU's free memory when the process first asks, 1 to
        16 GiB; ``DEFAULT_CUDA_BUDGET``, 4 GiB, for a GPU this machine does
        not have); on the CPU the
        fastest by the planner's throughput model (smaller: their activations
        stay in the caches), never above the budget unless even the
        smallest tile the model takes is (that tile, then).

        >>> import unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> model.layout((500, 300), tile=84)
        {'tile': [84, 84], 'tiles': 84, 'batch_size': 16, 'stride': [44, 44], 'output_tile': [44, 44], 'grid': [12, 7]}
        >>> model.layout((4000, 4000))["tile"], model.layout((4000, 4000), device="cuda", precision="fp16")["tile"]
        ([296, 296], [2088, 2088])
        """
        _check_device_precision(self.device if device is None else device,
                                self.precision if precision is None else precision)
        return dict(self._inner.layout(shape, tile, batch_size, memory_budget, device, precision))

    def needed_input(self, window: Window, tile: Union[int, Sequence[int], str, None] = None,
                     batch_size: Optional[int] = None, memory_budget: Optional[int] = None) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """The pixels, ``(first, end)`` per spatial axis of the whole image,
        that segmenting ``window``'s region reads (mirrored at the image's
        borders) with these options: the array passed with the window must
        hold at least these. See :class:`Window`.

        >>> import unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> model.needed_input(unet_rt.Window(image=(500, 300), start=(88, 0), shape=(44, 300)), tile=84)
        ((68, 0), (152, 300))
        """
        if not isinstance(window, Window):
            raise InvalidArgumentError(f"invalid window: expected a unet_rt.Window, got {type(window).__name__}")
        return self.needed_inputs([window], tile, batch_size, memory_budget)[0]

    def needed_inputs(self, windows: Sequence[Window], tile: Union[int, Sequence[int], str, None] = None,
                      batch_size: Optional[int] = None,
                      memory_budget: Optional[int] = None) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
        """:meth:`needed_input` of each of ``windows``, the tiling planned
        once per image shape (what a Dask client asks of every block).

        >>> import unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> rows = [unet_rt.Window(image=(500, 300), start=(y, 0), shape=(44, 300)) for y in (0, 88)]
        >>> model.needed_inputs(rows, tile=84)
        [((0, 0), (64, 300)), ((68, 0), (152, 300))]
        """
        try:
            # A list first: a generator would be used up by the check.
            given: Optional[List[Window]] = None if isinstance(windows, Window) else list(windows)
        except TypeError:
            given = None
        if given is None or not all(isinstance(w, Window) for w in given):
            raise InvalidArgumentError(f"invalid windows: expected a sequence of unet_rt.Window, got {windows!r}")
        found = self._inner.needed_inputs([w.as_tuple() for w in given], tile, batch_size, memory_budget)
        return [(tuple(first), tuple(end)) for first, end in found]

    def percentile_range(self, image: np.ndarray, axes: Optional[str] = None) -> Optional[Any]:
        """The pixel values the model's percentile normalization maps to 0 and
        1 in ``image``, exactly as :meth:`segment` computes them: ``(low,
        high)``, an array of one row per image for a batch, or ``None`` when
        the model normalizes otherwise. Pass them as ``input_range`` to
        segment pieces of the image as the whole.

        >>> import numpy as np, unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> low, high = model.percentile_range(np.arange(10000, dtype=np.uint16).reshape(100, 100))
        >>> round(low, 6), round(high, 6)  # percentiles 1 and 99.8
        (99.99, 9979.002)
        """
        array = _check_image(image)
        info = self._described()
        view, batched, _ = arrange(array, axes, info["spatial_dims"], info["in_channels"])
        ranges = [self._inner.percentile_range(view[i]) for i in range(view.shape[0])]
        if ranges[0] is None:
            return None
        return np.asarray(ranges, np.float64) if batched else ranges[0]

    def segment(
        self,
        image: np.ndarray,
        axes: Optional[str] = None,
        output: str = "labels",
        tile: Union[int, Sequence[int], str, None] = None,
        batch_size: Optional[int] = None,
        out: Optional[np.ndarray] = None,
        progress: ProgressArg = False,
        memory_budget: Optional[int] = None,
        blend: str = "crop",
        window: Optional[Window] = None,
        input_range: Optional[Any] = None,
        nonfinite: str = "raise",
        tta: str = "none",
        object_size: Optional[float] = None,
        min_size: Optional[int] = None,
        fill_holes: Optional[bool] = None,
    ) -> np.ndarray:
        """Segments an image (or a stack of images) of any size.

        Args:
            image: a NumPy array (or memmap) of uint8, uint16, int16, float16,
                float32 or float64. It is read in place, tile by tile: strided
                and non-contiguous views are fine. The one copy made is for
                arrays in non-native byte order, and for other integer types,
                read widened as the command line reads them (int8 as int16,
                32/64-bit integers as float64; beyond 2^53 refused).
            axes: the axes of ``image``, letters ``b`` (batch), ``c``
                (channels), ``z``, ``y``, ``x`` in any order: ``"yx"``,
                ``"cyx"``, ``"yxc"``, ``"zyx"``, ``"czyx"``, ``"byx"``...; a
                2-D model reads ``z`` as a batch. Inferred when unambiguous.
                The result's axes are in the model's order whatever the
                input's: batch, then channels (per-class outputs), then
                ``z``, ``y``, ``x`` (an ``"xy"`` image gives a ``(y, x)``
                result; :meth:`result_shape` says which).
            output: ``"labels"`` (uint8, uint16 beyond 256 classes; shape of
                the spatial axes: the class of the largest logit, the lowest
                such class on a tie; for one-channel sigmoid outputs 1 where
                the logit is above 0, for one-channel probability outputs 1
                where it is above 0.5; under ``nonfinite="propagate"`` a NaN
                output is labelled 0), ``"probabilities"`` (float32, channel-first),
                ``"raw"`` (the network output, channel-first) or
                ``"instances"`` (uint32 object ids, 0 for background: the
                model's read-out, ``info["instances"]``, e.g. nucleus interiors
                grown over a boundary class; without one, the connected
                components of the non-background labels, 4-connected in 2-D
                and 6-connected in 3-D).
            tile: input tile size (an int, or one per spatial axis); when
                ``None``, on the CPU the fastest by the engine's throughput
                model, on a GPU the largest within its memory budget;
                ``"whole"`` for one tile
                covering the image and its overlap (the whole-image
                forward, for models whose tiles are approximate, see
                ``info["exact"]``: where tiles are exact they differ from it
                by float rounding only, ~1e-6 of the logits).
            batch_size: tiles per forward pass; chosen when ``None``.
            out: an array that receives the result in place (checked shape
                and dtype; float16 is accepted for probabilities), for example
                a ``np.memmap`` larger than memory. Returned as is. Tiles
                are written as they finish: when the call fails part way
                (NaN found in a later tile, a progress callback that raises),
                the parts written so far stay, and ``out``'s other contents
                are as they were.
            progress: ``True`` for a progress bar (tqdm if installed), or a
                callable ``progress(done, total)`` called as tiles complete;
                an exception it raises stops the call and comes out as it
                was raised (a ``KeyboardInterrupt`` as itself). It runs on
                the engine's worker thread, not the caller's (with the GIL
                held): thread-local and context-variable state of the
                caller is not visible there. The call waits for it to
                return, Ctrl-C included: keep it short (a callback that
                blocks holds the call). A callable that cannot take
                ``(done, total)`` is a ``TypeError`` before anything runs;
                after it raised it is not called again.
            memory_budget: bytes of activations one batch may use.
            blend: how the tiles of same-padded models combine: ``"crop"``
                (keep each tile's centre; exact with the default margin),
                ``"gaussian"`` or ``"constant"`` (weighted averages of
                overlapping tiles; memory proportional to the image).
                Valid-padded models always crop.
            window: segment ``image`` as a piece of a larger image: the
                result covers the window's region and equals the whole
                image's result there bit for bit (see :class:`Window`);
                not with ``output="instances"``, which are read out over
                the whole image (``unet_rt.dask`` reads them across blocks).
            input_range: for models with percentile normalization, the
                ``(low, high)`` pixel values to map to 0 and 1 instead of the
                image's own percentiles (one pair, or one per image of a
                batch), e.g. from :meth:`percentile_range` of a whole image.
                The image's own percentiles are taken over all its pixels
                and channels at once, separately for each image of a batch
                (each ``z`` plane, for a 2-D model reading a stack: pass one
                ``input_range`` for the stack's own).
            nonfinite: ``"raise"`` (the default): NaN or infinity in the
                image (after normalization) raises
                :class:`~unet_rt.InvalidArgumentError`, and in the network's
                output :class:`~unet_rt.NonFiniteError` naming the first tile
                affected; ``"propagate"`` lets such values through.
            tta: test-time augmentation: ``"none"`` (the default),
                ``"flips"`` (every flip of the spatial axes, 4 forward passes
                per tile in 2-D, 8 in 3-D) or ``"d4"`` (flips and quarter
                turns in the yx plane, 8 passes; in 3-D ``z`` is not
                flipped); the logits are averaged, and the result
                equals the augmented whole-image forward (up to float
                rounding, ~1e-6 of the logits: kernels are chosen by tensor
                shape).
            object_size: the typical object diameter in ``image``, in
                pixels. The image is resampled to the model's training scale
                (``info["object_size"]``), segmented, and the result resampled
                back (nearest neighbour), so objects larger or smaller than
                the training ones are segmented as well as those. Not with
                ``window``.
            min_size: instances of fewer pixels of the image are removed;
                the model's default (``info["instances"]``) when ``None``
                (that one is counted at the model's training scale, so with
                ``object_size`` it is scaled to the image's pixels). For ``output="instances"`` only (other outputs
                have no instances: an error there).
            fill_holes: whether background enclosed by one instance joins
                it; the model's default when ``None``. For
                ``output="instances"`` only.

        Returns:
            The result array (``out`` itself when given).

        Raises:
            TypeError: an argument of the wrong type (the message names it).
            InvalidArgumentError: an argument with an unusable value, e.g. a
                tile the model does not accept, or a result larger than
                memory.
            NonFiniteError: the network produced NaN or infinity, or raw
                values beyond a float16 ``out``'s range.

        >>> import numpy as np, unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu", precision="fp32")
        >>> model.segment(np.full((60, 60), np.nan, np.float32))
        Traceback (most recent call last):
        ...
        unet_rt.errors.InvalidArgumentError: invalid image: holds NaN or infinite values ...
        """
        output = check_output(output)
        if out is not None and not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array (or memmap), got {type(out).__name__}")
        if out is not None and not out.flags.writeable:
            raise InvalidArgumentError("invalid out: the array is read-only; pass a writeable array")
        if isinstance(out, np.ma.MaskedArray):
            # Written under its mask, a masked result stays hidden where
            # the mask was set: a fully masked out= came back all masked.
            raise InvalidArgumentError("invalid out: a masked array (the result would stay hidden under its mask); "
                                       "pass its data, out.data, or a plain array")
        if out is not None and _overlaps_itself(out):
            raise InvalidArgumentError(
                "invalid out: its elements overlap in memory (zero or overlapping strides, as as_strided or "
                "broadcast_to make); pass an array with one place per element, e.g. np.empty(shape, dtype)"
            )
        if out is not None:
            _check_mapped_file(out)
        progress = check_progress(progress)
        if not isinstance(nonfinite, str):
            raise TypeError(f"nonfinite must be a str, got {type(nonfinite).__name__}")
        if not isinstance(blend, str):
            raise TypeError(f"blend must be a str, got {type(blend).__name__}")
        tta = check_tta(tta)
        array = _check_image(image)
        info = self._described()
        view, batched, _ = arrange(array, axes, info["spatial_dims"], info["in_channels"])
        tiles = tile
        if window is not None and not isinstance(window, Window):
            raise InvalidArgumentError(f"invalid window: expected a unet_rt.Window, got {type(window).__name__}")
        piece = _Piece(window, _ranges(input_range, view.shape[0], batched))
        # The arrangement is made once, above: the shape follows from the view.
        shape = self._engine_result_shape(tuple(view.shape), batched, output, window)
        read_out = {"object_size": object_size, "min_size": min_size, "fill_holes": fill_holes}
        return self._run(view, output, tiles, batch_size, out, progress, memory_budget, batched, shape, blend,
                         piece, nonfinite, tta, read_out)

    def read_out(self, min_size: Optional[int] = None, fill_holes: Optional[bool] = None) -> Dict[str, Any]:
        """The instance read-out :meth:`segment` applies for
        ``output="instances"``: the model's (``info["instances"]``) with
        ``min_size`` and ``fill_holes`` when given, at the model's scale:
        with ``object_size``, :meth:`segment` scales the model's ``grow`` and
        ``min_size`` to the image's pixels (a given ``min_size`` is taken as
        it is). Keys: ``seed_classes`` (empty: every class but 0),
        ``grow_classes``, ``grow``, ``fill_holes``, ``min_size``.

        >>> import unet_rt
        >>> unet_rt.Model(tiny_model_path, device="cpu").read_out(min_size=5)["min_size"]
        5
        """
        return json.loads(self._inner.read_out(min_size, fill_holes))

    def _read_out_for(self, output: str, min_size: Optional[int], fill_holes: Optional[bool]) -> Dict[str, Any]:
        """:meth:`read_out` for a call asking for ``output``: ``min_size`` and
        ``fill_holes`` are refused unless it is ``"instances"``, as
        :meth:`segment` refuses them (they would be ignored)."""
        return json.loads(self._inner.read_out(min_size, fill_holes, output))

    def usable_tile(self, tile: int) -> int:
        """The tile size nearest ``tile`` that :meth:`segment` takes for this
        model (``tile=`` must be one: sizes follow the network's pooling, from
        the smallest that leaves output after the overlap, up to the largest
        tile side the engine takes, 2**20).

        >>> import unet_rt
        >>> model = unet_rt.Model(device="cpu")  # the bundled model: 4 + 8k from 100
        >>> model.usable_tile(104), model.usable_tile(105), model.usable_tile(8)
        (100, 108, 100)
        >>> model.usable_tile(10**9)
        1048572
        """
        return self._inner.usable_tile(tile)

    def result_shape(self, shape: Sequence[int], output: str = "labels", axes: Optional[str] = None,
                     window: Optional[Window] = None) -> Tuple[int, ...]:
        """The shape of :meth:`segment`'s result for an image of ``shape``
        (with ``axes``, and of the ``window`` when given): the batch axis if
        any, then the spatial axes, channel-first for ``"probabilities"``
        and ``"raw"``. With :meth:`result_dtype`, what an ``out=`` array
        needs.

        >>> import unet_rt
        >>> model = unet_rt.Model(tiny_model_path, device="cpu")
        >>> model.result_shape((3, 300, 400), "probabilities", axes="byx"), model.result_dtype("labels")
        ((3, 2, 300, 400), dtype('uint8'))
        """
        output = check_output(output)
        info = self._described()
        # The engine checks the shape (and names it) before it is used here.
        if not isinstance(shape, (str, bytes)) and hasattr(shape, "__iter__"):
            shape = tuple(shape)
        _, sources = _unet_rt.arrangement(shape, axes, info["spatial_dims"], info["in_channels"])
        canonical = tuple(1 if s is None else int(shape[s]) for s in sources)
        if 0 in canonical:
            # As segment() refuses such an image.
            raise InvalidArgumentError(f"invalid shape: {tuple(shape)} is an empty image")
        return self._engine_result_shape(canonical, sources[0] is not None, output, window)

    def _engine_result_shape(self, canonical: Tuple[int, ...], batched: bool, output: str,
                             window: Optional[Window]) -> Tuple[int, ...]:
        """The result shape for an input already laid out ``(B, C, spatial...)``."""
        spatial = tuple(window.shape) if window is not None else tuple(canonical[2:])
        dims = self._described()["spatial_dims"]
        if window is not None and len(spatial) != dims:
            raise InvalidArgumentError(
                f"invalid window: it has {len(spatial)} spatial axes ({window!r}), the model {dims}"
            )
        if window is not None and any(a + n > i for a, n, i in zip(window.start, window.shape, window.image)):
            raise InvalidArgumentError(
                f"invalid window: its region (start {window.start}, shape {window.shape}) reaches beyond "
                f"the image {window.image}"
            )
        per_image = tuple(self._inner.result_shape(spatial, output))
        return ((canonical[0],) if batched else ()) + per_image

    def result_dtype(self, output: str = "labels") -> np.dtype:
        """The dtype of :meth:`segment`'s result when no ``out=`` is given:
        labels in the narrowest unsigned type that holds every class
        (uint8, uint16 beyond 256 classes), instances uint32, the rest
        float32."""
        output = check_output(output)
        return np.dtype(self._inner.result_dtype(output))

    def _run(self, view, output, tile, batch_size, out, progress, memory_budget, batched, shape, blend, piece,
             nonfinite, tta, read_out):
        given = out is not None
        if out is not None:
            if tuple(out.shape) != tuple(shape):
                raise InvalidArgumentError(f"invalid out: has shape {out.shape}, the result has shape {tuple(shape)}")
        else:
            # One array for the whole batch, checked against memory before
            # any image is segmented.
            out = self._inner.result_array(shape, output)
        # The engine segments the batch (N, C, spatial...) in one call, each
        # image straight into its part of the result, and counts the tiles
        # of the whole batch.
        images, target = (view, out) if batched else (view[:1], out[None])
        with _Progress(progress) as report, _writing_into(view, out if given else None):
            self._inner.segment(images, output, tile, batch_size, memory_budget, target, report, blend,
                                piece.engine_window, piece.ranges, nonfinite, tta, **read_out)
        return out

    def __repr__(self) -> str:
        return f"Model(path={self.path!r}, device={self.device!r}, precision={self.precision!r})"


class _Piece:
    """The ``window`` and per-image ``input_range`` of one call."""

    def __init__(self, window: Optional[Window], ranges: Optional[np.ndarray]) -> None:
        self.window = window
        self.engine_window = None if window is None else window.as_tuple()
        self.ranges = None if ranges is None else [(float(low), float(high)) for low, high in ranges]


def _ranges(input_range: Any, images: int, batched: bool) -> Optional[np.ndarray]:
    """``input_range`` as one ``(low, high)`` row per image, checked."""
    if input_range is None:
        return None
    try:
        values = np.asarray(input_range, np.float64)
    except (TypeError, ValueError, OverflowError):
        # OverflowError: an int beyond float64 (10**400).
        values = np.zeros(0)
    if values.shape == (2,):
        values = np.broadcast_to(values, (images, 2))
    if values.shape != (images, 2) or not np.isfinite(values).all():
        wanted = "(low, high)" + (f" or {images} rows of them" if batched else "")
        raise InvalidArgumentError(f"invalid input_range: expected {wanted} of finite numbers, got {input_range!r}")
    return values


def _check_device_precision(device: Any, precision: Any) -> None:
    for name, value in (("device", device), ("precision", precision)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _rebuild(source: Union[str, bytes], device: str, precision: str, name: str = "<bytes>") -> Model:
    if isinstance(source, bytes):
        return Model.from_bytes(source, device, precision, name)
    return Model(source, device, precision)


def _choice(value: Any, argument: str, choices: Sequence[str]) -> str:
    """``value`` as one of ``choices``, read as every option string is (the
    engine's rule): case and surrounding spaces do not matter."""
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a str, got {type(value).__name__}")
    canonical = value.strip().lower()
    if canonical not in choices:
        raise InvalidArgumentError(f"invalid {argument}: {value!r}; expected one of {', '.join(map(repr, choices))}")
    return canonical


def check_output(output: Any) -> str:
    """``output`` as one of :data:`OUTPUTS`, or an error (the Python API and
    Dask check it before shaping results).

    >>> check_output(" Labels")
    'labels'
    """
    return _choice(output, "output", OUTPUTS)


def check_tta(tta: Any) -> str:
    """``tta`` as one of :data:`TTA_MODES`, or an error (the Dask layer
    records it before any block runs)."""
    return _choice(tta, "tta", TTA_MODES)


def check_progress(progress: Any) -> ProgressArg:
    """``progress`` as a bool, ``None`` or a callable that can take
    ``(done, total)``, or a ``TypeError`` before anything runs
    (``progress=len`` failed after the first batch, ``out=`` partly
    written, naming no argument). Callables without a signature to read
    (some builtins) are taken at their word.

    >>> check_progress(lambda done, total: None) is not None, check_progress(np.True_)
    (True, True)
    >>> check_progress(len)
    Traceback (most recent call last):
    ...
    TypeError: progress must be callable as progress(done, total): len takes (obj, /)
    """
    import inspect

    if isinstance(progress, np.bool_):
        progress = bool(progress)
    if progress is None or isinstance(progress, bool):
        return progress
    if not callable(progress):
        raise TypeError(f"progress must be a bool or a callable progress(done, total), got {type(progress).__name__}")
    try:
        # The callable itself: a functools.wraps adapter taking *args is
        # called, not what it wraps.
        signature = inspect.signature(progress, follow_wrapped=False)
    except (TypeError, ValueError):
        return progress
    try:
        signature.bind(0, 0)
    except TypeError:
        name = getattr(progress, "__name__", None) or type(progress).__name__
        raise TypeError(f"progress must be callable as progress(done, total): {name} takes {signature}") from None
    return progress


def check_nonfinite(nonfinite: Any) -> str:
    """``nonfinite`` as one of :data:`NONFINITE_MODES`, or an error (the Dask
    layer checks it before any block runs)."""
    return _choice(nonfinite, "nonfinite", NONFINITE_MODES)


def check_dtype(dtype: Any) -> None:
    """Refuses pixels of a dtype the engine neither reads nor widens
    (checked before a lazy array is computed)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        raise InvalidArgumentError("invalid image: boolean arrays are not images; convert with .astype(np.uint8)")
    if dtype.type not in _SUPPORTED and dtype.type not in _WIDENED:
        raise InvalidArgumentError(
            f"invalid image: dtype {dtype} is not supported; use {', '.join(_unet_rt.PIXEL_DTYPES)} or another "
            "integer type (read widened), e.g. image.astype(np.float32)"
        )


def as_plain_array(value: Any, argument: str) -> np.ndarray:
    """``value`` as a plain ``np.ndarray`` (a view where it is one):
    subclasses such as ``np.matrix`` keep their own indexing rules, which the
    layout code does not expect. Anything NumPy cannot read as one array
    (ragged lists, tensors that need grad, unknown scalar types) is an
    :class:`~unet_rt.InvalidArgumentError` naming ``argument``; a masked
    array with masked values too (the engine has no use for a mask and would
    silently read what lies under it)."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.getmaskarray(value).any():
        raise InvalidArgumentError(
            f"invalid {argument}: a masked array with masked values; fill them first, e.g. {argument}.filled(0)"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as err:
        # NumPy has no bfloat16: a torch tensor of it cannot be read.
        advice = f"; pass {argument}.float()" if str(getattr(value, "dtype", "")) == "torch.bfloat16" else ""
        raise InvalidArgumentError(f"invalid {argument}: cannot be read as one array ({err}){advice}") from err
    if array.dtype == object and array.ndim == 0 and not isinstance(value, np.ndarray):
        # None or a dict was "dtype object is not supported" (an object
        # array is one, and is told its dtype).
        raise TypeError(f"{argument} must be an array (NumPy's, or anything numpy.asarray reads as one), "
                        f"got {type(value).__name__}")
    return array


def _overlaps_itself(array: np.ndarray) -> bool:
    """Whether two elements of ``array`` may share memory: true unless its
    axes (longest stride first) each step past the whole of the next, which
    every array NumPy allocates or slices does. Interleavings that happen
    not to overlap are refused too: a result cannot be written into them
    safely without checking every element."""
    axes = sorted((abs(stride), size) for stride, size in zip(array.strides, array.shape) if size > 1)
    reach = array.itemsize
    for stride, size in axes:
        if stride < reach:
            return True
        reach = stride * size
    return False


def _free_bytes(path: str) -> int:
    """Bytes the calling process may still write on the file system of
    ``path`` (root may use the blocks reserved for it)."""
    st = os.statvfs(path)
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


#: The images and ``out=`` arrays of the calls running now, as ``(array,
#: is_out)`` (see :func:`_writing_into`).
_IN_USE: List[Tuple[np.ndarray, bool]] = []
_IN_USE_LOCK = threading.Lock()


@contextlib.contextmanager
def _writing_into(image: np.ndarray, out: Optional[np.ndarray]) -> Iterator[None]:
    """Refuses an ``out=`` that shares memory with the image or with what
    another running call reads or writes, and an image that shares memory
    with another running call's ``out=``; holds both as in use until the
    block ends. The engine's own check follows NumPy's ``base`` chains, and
    an alias through another chain (``np.frombuffer(a.data)``,
    ``as_strided``, ``torch.from_numpy(a).numpy()``, two memory maps of one
    file) was read while it was written: labels wrong on a third of the
    image, without a word. Memory is compared element by element
    (``numpy.shares_memory``): column slices of one result written by
    several threads stay apart."""
    if out is not None and _shares_memory(image, out):
        raise InvalidArgumentError("invalid out: it shares memory with the image (one is a view of the other's "
                                   "memory); pass an array of its own")
    image_file = _mapped_file(image, copy_on_write=True)
    out_file = _mapped_file(out) if out is not None else None
    if image_file and out_file and _same_file(image_file, out_file):
        raise InvalidArgumentError(f"invalid out: it and the image are memory maps of one file, {out_file}; write "
                                   "into another file")
    entries = [(image, False)] + ([(out, True)] if out is not None else [])
    with _IN_USE_LOCK:
        for used, is_out in _IN_USE:
            if is_out and _shares_memory(image, used):
                raise InvalidArgumentError("invalid image: cannot be read while another call writes into it (it "
                                           "shares memory with that call's out=): wait for that call, or pass a copy")
            if out is not None and _shares_memory(out, used):
                role = "writing into it (it shares memory with that call's out=)" if is_out else \
                    "reading it (it shares memory with that call's image)"
                raise InvalidArgumentError(f"invalid out: another call is {role}: wait for that call, or pass an "
                                           "array of its own")
        _IN_USE.extend(entries)
    try:
        yield
    finally:
        with _IN_USE_LOCK:
            _IN_USE[:] = [entry for entry in _IN_USE if not any(entry is mine for mine in entries)]


def _shares_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether an element of ``a`` and one of ``b`` share memory, exactly
    where NumPy can tell in a bounded search, and assumed where it cannot
    (strides that make the question hard)."""
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 20))
    except np.exceptions.TooHardError:
        return True


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def _mapped_file(out: np.ndarray, copy_on_write: bool = False) -> Optional[str]:
    """The file ``out``'s memory is a shared, writable mapping of, if any:
    an ``np.memmap`` anywhere along its ``base`` chain (a memmap's plain
    views, ``np.asarray(memmap)``, skipped the check before), or for an
    ``mmap.mmap`` buffer (``np.frombuffer(mmap)``) the file the process's
    memory map lists at its address. Copy-on-write maps never write the
    file (``copy_on_write``: count them, as maps that read it)."""
    import mmap

    node: Any = out
    for _ in range(64):  # base chains are short; a cycle is not followed
        if isinstance(node, np.memmap) and getattr(node, "filename", None):
            return None if node.mode == "c" and not copy_on_write else node.filename
        if isinstance(node, mmap.mmap):
            return _shared_mapping_at(out.__array_interface__["data"][0])
        # np.frombuffer keeps a memoryview of the buffer it was given.
        node = node.obj if isinstance(node, memoryview) else getattr(node, "base", None)
        if node is None:
            return None
    return None


def _shared_mapping_at(address: int) -> Optional[str]:
    """The file of the shared mapping holding ``address``, from
    ``/proc/self/maps`` (``None`` elsewhere, or where it is not one)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or "-" not in fields[0]:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:
                    path = fields[5].strip()
                    return path if "s" in fields[1] and path.startswith("/") else None
    except (OSError, ValueError):
        return None
    return None


def _check_mapped_file(out: np.ndarray) -> None:
    """Refuses an ``out=`` memory map whose file is sparse (as
    ``np.memmap(mode="w+")`` and ``open_memmap`` make it) by more than its
    file system has free: each page is given disk space when first written,
    and a page that gets none kills the process with SIGBUS, in the middle
    of the call, with no Python error. Whatever else is written to that
    file system meanwhile is not foreseen."""
    filename = _mapped_file(out)
    if not filename:
        return
    try:
        st = os.stat(filename)
        free = _free_bytes(filename)
    except OSError:
        return
    unallocated = st.st_size - st.st_blocks * 512
    if unallocated > free:
        missing, room = _unet_rt.format_bytes(unallocated), _unet_rt.format_bytes(free)
        raise InvalidArgumentError(
            f"invalid out: the memory-mapped file {filename} has {missing} not yet on disk and its file system "
            f"has {room} free; writing the result would crash the process (SIGBUS). Free space there, or map a "
            "file on a file system with room"
        )


def _check_image(image: Any) -> np.ndarray:
    image = as_plain_array(image, "image")
    check_dtype(image.dtype)
    if image.size == 0:
        raise InvalidArgumentError(f"invalid image: empty array of shape {image.shape}")
    return in_engine_layout(image)


def in_engine_layout(array: np.ndarray, argument: str = "image") -> np.ndarray:
    """``array`` itself, or a copy the engine can read: in native byte order
    (big-endian files, ``>u2``, are common) and aligned, with strides that
    are multiples of the item size (one field of a record array is not;
    NumPy's ``aligned`` flag, for the engine's pixel types). A copy beyond
    memory is refused naming ``argument``. Integer types the engine does
    not read are copied widened (:func:`_widened`)."""
    wide = _WIDENED.get(array.dtype.type)
    if wide is not None:
        return _widened(array, wide, argument)
    if not array.dtype.isnative:
        _unet_rt.check_image_copy(array.nbytes, argument=argument)
        return array.astype(array.dtype.newbyteorder("="))
    if not array.flags.aligned:
        _unet_rt.check_image_copy(
            array.nbytes, "its strides are not multiples of its item size or its data is not aligned to it (as "
            "in one field of a record array)", "pass a plain array", argument)
        return np.array(array, order="C")
    return array


def _widened(array: np.ndarray, wide: np.dtype, argument: str) -> np.ndarray:
    """``array`` as ``wide``, the type the engine reads its integers as
    (``_unet_rt.WIDENED_DTYPES``), without loss: 64-bit integers beyond 2^53,
    which float64 rounds, are refused, and so is a copy beyond memory."""
    if array.dtype.itemsize == 8 and array.size:
        _unet_rt.check_exact_f64(int(array.min()), int(array.max()))
    _unet_rt.check_image_copy(
        array.size * wide.itemsize, f"its type {array.dtype.name} is read as {wide.name}",
        "pass a type the engine reads where the values fit one (e.g. image.astype(np.float32) below 2^24)", argument)
    return array.astype(wide)


class _Progress:
    """Turns the ``progress`` argument into the engine's ``report(done,
    total)`` (tiles of the whole call), closing the bar at the end."""

    def __init__(self, progress: ProgressArg) -> None:
        self._arg, self._bar = progress, None

    def __enter__(self) -> Optional[Callable[[int, int], None]]:
        if self._arg is None or self._arg is False:
            return None
        if callable(self._arg):
            return self._arg
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return lambda done, total: print(f"\runet_rt: {done}/{total} tiles", end="\n" if done == total else "",
                                             file=sys.stderr)

        def report(done: int, total: int) -> None:
            if self._bar is None:
                self._bar = tqdm(total=total, unit="tile", desc="unet_rt")
            self._bar.update(done - self._bar.n)

        return report

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def cached_model(path: Optional[PathLike], device: str, precision: str) -> Model:
    """The model of ``path`` (``None``: the bundled one) from the process's
    model cache, reloaded when the file changes."""
    resolved = bundled_model_path() if path is None else Path(path)
    try:
        stamp = _cache.file_stamp(resolved)  # before resolve(): a symlink loop is an OSError here
        # Spellings of one device or precision ("cpu", "CPU", " cpu") share
        # an entry: each was a full load with its own copy of the weights.
        key: Tuple[Any, ...] = (str(resolved.resolve()), stamp, tuple(_unet_rt.canonical_devices(device)),
                                _unet_rt.canonical_precision(precision))
    except (OSError, ValueError, TypeError):
        return Model(path, device, precision)  # raises the right error
    return _cache.cached(key, lambda: Model(resolved, device, precision))


def segment(
    image: np.ndarray,
    model: Union[Model, PathLike, None] = None,
    *,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    **options: Any,
) -> np.ndarray:
    """Segments ``image`` with ``model`` (the bundled nuclei model by default).

    ``model`` is a :class:`Model` or a path; paths are loaded once and kept in
    a small cache, so calling ``segment`` in a loop does not reload the model.
    ``device`` and ``precision`` (default ``"auto"`` and
    :data:`DEFAULT_PRECISION`) say how a path is loaded; a :class:`Model`
    runs where and how it was loaded, and asking for another device or
    precision with one is an :class:`~unet_rt.InvalidArgumentError`.
    ``options`` are those of :meth:`Model.segment` (``axes``, ``output``,
    ``tile``, ``batch_size``, ``out``, ``progress``, ``memory_budget``,
    ``tta``, ``object_size``, ``min_size``, ``fill_holes`` ...).

    >>> import numpy as np, unet_rt
    >>> unet_rt.segment(np.random.rand(100, 120), tiny_model_path, device="cpu").shape
    (100, 120)
    """
    check_model_arg(model)
    if isinstance(model, Model):
        _check_loaded_as(model, device, precision)
    else:
        model = cached_model(model, "auto" if device is None else device,
                             DEFAULT_PRECISION if precision is None else precision)
    return model.segment(image, **options)


def check_model_arg(model: Any) -> None:
    """Refuses a ``model`` argument that is not a :class:`Model`, a path or
    ``None`` (the bundled model)."""
    if not (model is None or isinstance(model, (Model, str, os.PathLike))):
        raise TypeError(f"model must be a unet_rt.Model, a path or None, got {type(model).__name__}")


def _check_loaded_as(model: Model, device: Optional[str], precision: Optional[str]) -> None:
    """Refuses a ``device`` or ``precision`` other than those ``model`` was
    loaded with: the call could not honour them, and ignoring them would
    run somewhere the caller did not ask for."""
    for argument, asked, own in (("device", device, model.device), ("precision", precision, model.precision)):
        if asked is None:
            continue
        if not isinstance(asked, str):
            raise TypeError(f"{argument} must be a str, got {type(asked).__name__}")
        if argument == "device":
            devices = _unet_rt.canonical_devices(asked)
            same = devices == ["auto"] or devices == model.devices
        else:
            same = _unet_rt.canonical_precision(asked) in ("auto", own)
        if not same:
            raise InvalidArgumentError(
                f"invalid {argument}: {asked!r}, but the model was loaded with {argument} {own!r}; load it with "
                f"unet_rt.Model(path, {argument}={asked!r}) or pass the model's path"
            )


def plan(
    shape: Sequence[int],
    model: Union[Model, PathLike, None] = None,
    *,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    **options: Any,
) -> Dict[str, Any]:
    """The tiling :func:`segment` would use for an image of spatial
    ``shape`` on ``device`` in ``precision``, planned on this machine: the
    device need not exist here, and nothing runs on it (see
    :meth:`Model.layout` for the result's keys).

    ``model`` is a :class:`Model` (``device`` and ``precision`` default to
    its own) or a path (default ``"auto"`` and :data:`DEFAULT_PRECISION`,
    as for :func:`segment`; the file is read once, on the CPU, and kept in
    the model cache). ``options`` are ``tile``, ``batch_size`` and
    ``memory_budget``.

    >>> import unet_rt
    >>> gpu = unet_rt.plan((4000, 4000), tiny_model_path, device="cuda", precision="fp16")
    >>> cpu = unet_rt.plan((4000, 4000), tiny_model_path, device="cpu", precision="fp32")
    >>> gpu["tile"] > cpu["tile"]  # a GPU's largest tiles, the CPU's fastest
    True
    """
    check_model_arg(model)
    if isinstance(model, Model):
        device = model.device if device is None else device
        precision = model.precision if precision is None else precision
    else:
        device = "auto" if device is None else device
        precision = DEFAULT_PRECISION if precision is None else precision
        # The geometry, and so the plan, does not depend on where the model runs.
        model = cached_model(model, "cpu", "fp32")
    return model.layout(shape, device=device, precision=precision, **options)

