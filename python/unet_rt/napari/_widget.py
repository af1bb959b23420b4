"""The *Segment* dock widget."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from qtpy.QtCore import QObject, Signal

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

        image = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        job = {
            "image": image,
            "axes": "yxc" if layer.rgb else None,
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
            "returned": lambda done: self._add_result(layer, job, *done),
            "errored": self._on_error,
            "finished": self._on_finished,
        })
        self._worker = worker
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Stops the running segmentation at its next tile."""
        self._stop.set()
        self._status.value = "cancelling…"

    # --- worker side -------------------------------------------------------------

    def _report(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise CancelledError("cancelled from the napari widget")
        self._relay.progressed.emit(int(done), int(total))

    # --- GUI side ------------------------------------------------------------------

    def _on_progress(self, done: int, total: int) -> None:
        self._progress.max = max(1, total)
        self._progress.value = min(done, self._progress.max)

    def _add_result(self, layer: Any, job: Dict[str, Any], result: np.ndarray, classes: List[str]) -> None:
        name = f"{layer.name} {job['output']}"
        if job["output"] == "probabilities":
            self._viewer.add_image(result, channel_axis=0, name=[f"{name} {c}" for c in classes],
                                   **_placement(layer, result.ndim - 1))
        else:
            self._viewer.add_labels(result, name=name, **_placement(layer, result.ndim))
        objects = f", {int(result.max())} objects" if job["output"] == "instances" else ""
        self._status.value = f"done: {name} {result.shape}{objects}"

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, CancelledError):
            self._status.value = "cancelled"
        elif isinstance(error, UnetRtError):
            self._status.value = f"failed: {error}"
        else:
            self._status.value = f"failed: {type(error).__name__}: {error}"

    def _on_finished(self) -> None:
        self._run.enabled, self._cancel.enabled = True, False
        self._worker = None


def _segment(job: Dict[str, Any], report: Any) -> Tuple[np.ndarray, List[str]]:
    """Runs on the worker thread: loads (or reuses) the model, segments;
    returns the result and the model's class names."""
    model = cached_model(job["model"], job["device"], job["precision"])
    result = model.segment(job["image"], output=job["output"], axes=job["axes"], tile=job["tile"], progress=report)
    return result, model.classes


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
    """
    plain = dict(scale=tuple(layer.scale)[-ndim:], translate=tuple(layer.translate)[-ndim:])
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
    return dict(affine=matrix)
