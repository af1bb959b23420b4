"""The *Segment* dock widget."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from qtpy.QtCore import QEvent, QObject, Signal

from ..errors import CancelledError, UnetRtError
from ..model import OUTPUTS, cached_model

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["SegmentWidget"]

BUNDLED = "bundled nuclei model"
FROM_FILE = "model file…"
_KINDS = [o for o in OUTPUTS if o in ("labels", "instances", "probabilities")]


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (a signal
    emitted on another thread is delivered through the GUI's event loop)."""

    progressed = Signal(int, int)


class _Unparented(QObject):
    """Calls ``then`` when the watched widget loses its parent: napari's
    ``remove_dock_widget`` (closing the dock) takes the widget out of its
    dock without deleting it, and the run went on to add its layer."""

    def __init__(self, then: Any) -> None:
        super().__init__()
        self._then = then

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.ParentChange and watched.parent() is None:
            self._then()
        return False


class SegmentWidget(Container):
    """Segments the chosen image layer with a U-Net into a new layer.

    Controls: the image layer; the model (the bundled nuclei model, or a
    ``.pt`` file or bioimage.io package); the output (``instances``: one id
    per object, ``labels``: one class per pixel, both as a labels layer;
    ``probabilities``: an image layer per class); device, precision and
    tile (0: chosen for the image). *Segment* runs on a worker thread, the
    bar follows the tiles, *Cancel* stops at the next tile.

    Example (headless)::

        viewer = napari.Viewer(show=False)
        viewer.add_image(unet_rt.data.nuclei(), name="nuclei")
        widget = SegmentWidget(viewer)
        widget.run()            # returns the worker; the layer appears when it ends
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        viewer = napari_viewer
        self._viewer = viewer
        self._image = ComboBox(label="image", choices=self._image_layers)
        self._model = ComboBox(label="model", choices=[BUNDLED, FROM_FILE], value=BUNDLED)
        self._file = FileEdit(label="model file", filter="*.pt *.zip *.yaml", visible=False)
        self._output = ComboBox(label="output", choices=_KINDS, value="instances")
        self._device = ComboBox(label="device", choices=["auto", "cpu"] + _cuda_devices(), value="auto")
        self._precision = ComboBox(label="precision", choices=["fp32", "auto", "bf16", "fp16"], value="fp32")
        self._tile = SpinBox(label="tile (0: auto)", min=0, max=16384, step=8, value=0)
        self._run = PushButton(text="Segment")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="tiles", min=0, max=1, value=0)
        self._status = Label(value="")
        super().__init__(widgets=[self._image, self._model, self._file, self._output, self._device, self._precision,
                                  self._tile, self._run, self._cancel, self._progress, self._status])
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._stop = threading.Event()
        self._worker: Any = None
        # Set while the widget adds its own result layers (the chooser must
        # not follow them) and once its Qt widget is gone (closing the dock
        # or the viewer mid-run: the worker is stopped, and the signals
        # still queued for the deleted controls are dropped).
        self._adding = False
        self._closed = False
        self.native.destroyed.connect(self._on_destroyed)
        self._unparented = _Unparented(self.cancel)
        self.native.installEventFilter(self._unparented)
        self._model.changed.connect(lambda value: setattr(self._file, "visible", value == FROM_FILE))
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        # Layers added later show up in the chooser.
        viewer.layers.events.inserted.connect(self._image.reset_choices)
        viewer.layers.events.removed.connect(self._image.reset_choices)
        # The chooser follows the layer selected in the layer list.
        viewer.layers.selection.events.active.connect(self._follow_selection)
        self._image.reset_choices()
        self._follow_selection()

    def _image_layers(self, _widget: Any = None) -> list:
        # The viewer's image layers, newest first (the one just opened is
        # the one to segment).
        return [(layer.name, layer) for layer in reversed(self._viewer.layers) if type(layer).__name__ == "Image"]

    def _follow_selection(self, *_: Any) -> None:
        active = self._viewer.layers.selection.active
        if self._adding or self._closed:
            return
        if active is not None and type(active).__name__ == "Image":
            self._image.reset_choices()
            self._image.value = active

    # --- actions ---------------------------------------------------------------

    def run(self, *_: Any) -> Any:
        """Starts segmenting the chosen layer; returns the worker (``None``
        when nothing could start: the reason is in the status line)."""
        layer = self._image.value
        if layer is None:
            self._status.value = "choose an image layer first"
            return None
        if self._model.value == FROM_FILE and not _is_file(self._file.value):
            self._status.value = "choose a model file (or the bundled model)"
            return None
        from napari.qt.threading import create_worker

        # Read on the worker: a Dask or otherwise lazy layer froze the
        # window while it was computed here.
        job = {
            "data": layer.data[0] if layer.multiscale else layer.data,
            "rgb": bool(layer.rgb),
            "model": None if self._model.value == BUNDLED else str(self._file.value),
            "output": self._output.value,
            "device": self._device.value,
            "precision": self._precision.value,
            "tile": int(self._tile.value) or None,
        }
        self._stop.clear()
        self._progress.value, self._progress.max = 0, 1
        self._status.value = f"segmenting {layer.name}…"
        self._run.enabled, self._cancel.enabled = False, True
        # Errors go to the status line (connecting "errored" here keeps the
        # worker from re-raising them in the event loop).
        worker = create_worker(_segment, job, self._report, _start_thread=False, _connect={
            "returned": lambda done: self._add_result(layer, job, done),
            "errored": self._on_error,
            "finished": self._on_finished,
        })
        self._worker = worker
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Stops the running segmentation at its next tile."""
        if self._worker is None:
            return
        self._stop.set()
        self._status.value = "cancelling…"

    # --- worker side -------------------------------------------------------------

    def _report(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise CancelledError("cancelled from the napari widget")
        self._relay.progressed.emit(int(done), int(total))

    # --- GUI side ------------------------------------------------------------------

    def _on_destroyed(self, *_: Any) -> None:
        self._closed = True
        self._stop.set()

    def _on_progress(self, done: int, total: int) -> None:
        if self._closed:
            return
        self._progress.max = max(1, total)
        self._progress.value = min(done, self._progress.max)

    def _add_result(self, layer: Any, job: Dict[str, Any], done: "_Done") -> None:
        if self._closed:
            return
        result = done.result
        name = f"{layer.name} {job['output']}"
        self._adding = True
        try:
            if job["output"] == "probabilities":
                # Probabilities on one scale, 0 to 1, blended alike (each
                # layer's own range drew 0.4 black).
                added = self._viewer.add_image(
                    result, channel_axis=done.channel_axis, name=[f"{name} {c}" for c in done.classes],
                    contrast_limits=[(0.0, 1.0)] * len(done.classes), blending="additive",
                    **_placement(layer, result.ndim - 1))
                shown = added[0].name if added else name
            else:
                shown = self._viewer.add_labels(result, name=name, **_placement(layer, result.ndim)).name
        finally:
            self._adding = False
        if layer in self._viewer.layers:
            self._image.value = layer  # the chooser stays on the image segmented
        objects = f", {int(result.max())} objects" if job["output"] == "instances" else ""
        used = f"; tile {done.tile} (the nearest usable to {job['tile']})" if done.tile != job["tile"] else ""
        self._status.value = f"done: {shown} {result.shape}{objects}{used}"

    def _on_error(self, error: BaseException) -> None:
        if self._closed:
            return
        if isinstance(error, CancelledError):
            self._status.value = "cancelled"
        elif isinstance(error, UnetRtError):
            self._status.value = f"failed: {error}"
        else:
            self._status.value = f"failed: {type(error).__name__}: {error}"

    def _on_finished(self) -> None:
        self._worker = None
        if self._closed:
            return
        self._run.enabled, self._cancel.enabled = True, False


class _Done(NamedTuple):
    """What a run gives the GUI: the result, the model's class names, the
    result's class axis (probabilities) and the tile used."""

    result: np.ndarray
    classes: List[str]
    channel_axis: int
    tile: Optional[int]


def _segment(job: Dict[str, Any], report: Any) -> _Done:
    """Runs on the worker thread: reads the layer's data, loads (or reuses)
    the model, segments."""
    image = np.asarray(job["data"])
    model = cached_model(job["model"], job["device"], job["precision"])
    axes = _axes(image.ndim, job["rgb"], model.info)
    # The box steps by 8 from 0: for the bundled model (4 + 8k from 100)
    # every value it stepped to was refused.
    tile = None if job["tile"] is None else model.usable_tile(job["tile"])
    result = model.segment(image, output=job["output"], axes=axes, tile=tile, progress=report)
    # A stack's probabilities are (planes, classes, y, x).
    channel_axis = 1 if axes is not None and axes.startswith("b") else 0
    return _Done(result, model.classes, channel_axis, tile)


def _axes(ndim: int, rgb: bool, info: Dict[str, Any]) -> Optional[str]:
    """The axes of a layer of ``ndim`` dimensions for a model: napari's
    leading axes beyond the model's (a z-stack or time series of images, a
    time series of volumes) are a batch, an RGB layer's last axis its
    channels; ``None`` (the array's own rule) otherwise. There is no axes
    control: a stack failed with advice to name them.

    >>> _axes(3, False, {"spatial_dims": 2, "in_channels": 1})
    'byx'
    >>> _axes(4, True, {"spatial_dims": 2, "in_channels": 3})
    'byxc'
    >>> _axes(3, False, {"spatial_dims": 3, "in_channels": 1}) is None
    True
    """
    spatial = "zyx"[-int(info["spatial_dims"]):]
    inner = spatial + ("c" if rgb else "")
    if rgb:
        return {len(inner): inner, len(inner) + 1: "b" + inner}.get(ndim)
    if int(info["in_channels"]) == 1 and ndim == len(spatial) + 1:
        return "b" + spatial
    return None


def _is_file(value: Any) -> bool:
    return value is not None and str(value) not in ("", ".") and Path(str(value)).exists()


def _cuda_devices() -> list:
    from .. import build_info

    count = int(build_info().get("cuda_device_count") or 0)
    return ["cuda"] + [f"cuda:{i}" for i in range(count)] if count else []


def _placement(layer: Any, ndim: int) -> Dict[str, Any]:
    """Where a result of ``ndim`` axes (the image layer's last ones) lies in
    the world: the layer's scale and translation, or, where it is also
    rotated, sheared or given an affine, its whole data-to-world transform
    on those axes. Scale and translation alone drew the result of a
    rotated image beside its nuclei.

    >>> from types import SimpleNamespace
    >>> plain = SimpleNamespace(ndim=2, scale=(1, 2), translate=(0, 5), rotate=np.eye(2), shear=np.zeros(1),
    ...                         affine=SimpleNamespace(affine_matrix=np.eye(3)))
    >>> _placement(plain, 2)
    {'scale': (1, 2), 'translate': (0, 5)}

    The layer's units and axis labels go with it (napari stops drawing
    units when the layers' differ: a result in pixels took the image's µm
    away).
    """
    named: Dict[str, Any] = {}
    for attribute in ("units", "axis_labels"):
        value = getattr(layer, attribute, None)
        if value is not None and len(tuple(value)) >= ndim:
            named[attribute] = tuple(value)[-ndim:]
    plain = dict(scale=tuple(layer.scale)[-ndim:], translate=tuple(layer.translate)[-ndim:], **named)
    if (np.allclose(np.asarray(layer.rotate), np.eye(layer.ndim)) and not np.any(np.asarray(layer.shear))
            and np.allclose(layer.affine.affine_matrix, np.eye(layer.ndim + 1))):
        return plain
    from napari.utils.transforms import CompositeAffine

    inner = CompositeAffine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear,
                            ndim=layer.ndim)
    whole = np.asarray(layer.affine.affine_matrix) @ inner.affine_matrix
    n = layer.ndim
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = whole[n - ndim:n, n - ndim:n]
    matrix[:ndim, ndim] = whole[n - ndim:n, n]
    return dict(affine=matrix, **named)
