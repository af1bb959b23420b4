"""The napari plugin, headless (Qt's offscreen platform): found through its
npe2 manifest, the sample image, the Segment widget run off the GUI thread
with progress, cancellation and errors in its status line."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import unet_rt  # noqa: E402
from unet_rt.data import nuclei  # noqa: E402

pytest.importorskip("napari", reason="the napari extra is part of the dev environment")
from unet_rt.napari import SegmentWidget  # noqa: E402
from unet_rt.napari._widget import FROM_FILE  # noqa: E402

TIMEOUT_MS = 300_000


@pytest.fixture(autouse=True)
def _display() -> None:
    # pytest-xvfb sets DISPLAY when it started Xvfb; without a display the
    # viewer's OpenGL canvas fails deep inside vispy.
    if not os.environ.get("DISPLAY"):
        pytest.fail("napari's canvas needs an X display: install Xvfb (apt-get install xvfb; scripts/install.sh does "
                    "as root) so that pytest-xvfb can start one, or set DISPLAY")


def _wait(qtbot, widget: SegmentWidget) -> None:
    qtbot.waitUntil(lambda: widget._worker is None, timeout=TIMEOUT_MS)


def _run_tiny(viewer, qtbot, model_path, output: str) -> SegmentWidget:
    """Runs the widget on the viewer's image layer with the model file ``model_path``, on the CPU."""
    widget = SegmentWidget(viewer)
    widget._model.value = FROM_FILE
    widget._file.value = model_path
    widget._output.value = output
    widget._device.value = "cpu"
    widget.run()
    _wait(qtbot, widget)
    return widget


def _widget_picture(widget: SegmentWidget, path) -> np.ndarray:
    """A screenshot of the widget (Qt's raster grab: no OpenGL needed)."""
    image = widget.native.grab().toImage()
    assert image.save(str(path))
    from napari._qt.utils import QImg2array

    return QImg2array(image)


def test_one_click_segments_the_sample_into_a_labels_layer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("unet_rt", "nuclei")  # the manifest's sample data
    _, widget = viewer.window.add_plugin_dock_widget("unet_rt", "Segment")  # the manifest's widget
    assert isinstance(widget, SegmentWidget)
    assert widget._image.value is viewer.layers["nuclei"]
    widget._device.value = "cpu"
    widget._tile.value = 156  # several tiles, so the bar moves
    widget._run.clicked.emit()
    _wait(qtbot, widget)
    assert widget._status.value.startswith("done: nuclei instances (512, 512)"), widget._status.value
    layer = viewer.layers["nuclei instances"]
    assert type(layer).__name__ == "Labels" and layer.data.shape == (512, 512)
    want = unet_rt.segment(nuclei(), device="cpu", output="instances", tile=156)
    np.testing.assert_array_equal(layer.data, want)
    assert layer.data.max() > 50  # the sample holds about 125 nuclei
    assert widget._progress.max > 1 and widget._progress.value == widget._progress.max
    assert widget._run.enabled and not widget._cancel.enabled
    picture = _widget_picture(widget, tmp_path / "widget.png")
    assert picture.shape[0] > 100 and picture.shape[1] > 100 and picture.std() > 0
    assert (tmp_path / "widget.png").stat().st_size > 1000
    # The whole window (dock widget, layer list with the result); Qt's
    # offscreen platform draws the widgets, its OpenGL canvas stays black.
    window = viewer.screenshot(canvas_only=False, flash=False)
    assert window.ndim == 3 and min(window.shape[:2]) > 300 and window[..., :3].std() > 10


def test_cancel_stops_without_adding_a_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei(), name="nuclei")
    widget = SegmentWidget(viewer)
    widget._device.value = "cpu"
    widget._tile.value = 156
    worker = widget.run()
    assert worker is not None
    widget.cancel()
    _wait(qtbot, widget)
    assert widget._status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["nuclei"]
    assert widget._run.enabled


def test_errors_and_missing_choices_show_in_the_status_line(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert widget.run() is None and "image layer" in widget._status.value
    viewer.add_image(np.zeros((64, 64), np.float32), name="blank")
    assert widget._image.value is viewer.layers["blank"]  # new layers show up in the chooser
    viewer.add_image(np.ones((32, 32), np.float32), name="other")
    viewer.layers.selection.active = viewer.layers["blank"]
    assert widget._image.value is viewer.layers["blank"]  # and it follows the selected layer
    viewer.layers.remove("other")
    widget._model.value = FROM_FILE
    assert widget._file.native.isVisibleTo(widget.native)  # the file chooser appears
    assert widget.run() is None and "model file" in widget._status.value
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"not TorchScript")
    widget._file.value = bad
    widget._device.value = "cpu"
    assert widget.run() is not None
    _wait(qtbot, widget)
    assert widget._status.value.startswith("failed:"), widget._status.value
    assert [layer.name for layer in viewer.layers] == ["blank"]


def test_probabilities_become_one_image_layer_per_class(make_napari_viewer, qtbot, tiny_model_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((120, 130)).astype(np.float32), name="noise")
    _run_tiny(viewer, qtbot, tiny_model_path, "probabilities")
    names = [layer.name for layer in viewer.layers]
    assert names == ["noise", "noise probabilities background", "noise probabilities class_1"], names
    assert viewer.layers["noise probabilities class_1"].data.shape == (120, 130)


def test_the_result_lies_where_its_rotated_image_lies(make_napari_viewer, qtbot, tiny_model_path):
    """Only scale and translation were carried over: the labels of a
    rotated (or sheared) image were drawn beside its objects."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((90, 100)).astype(np.float32), name="turned",
                             rotate=30, shear=[0.2], scale=(2, 3), translate=(5, 6))
    _run_tiny(viewer, qtbot, tiny_model_path, "labels")
    labels = viewer.layers["turned labels"]
    for position in ([0, 0], [10, 70], [89, 99]):
        np.testing.assert_allclose(labels.data_to_world(position), image.data_to_world(position), atol=1e-9)


def test_a_stack_is_segmented_plane_by_plane_and_its_probabilities_split_by_class(make_napari_viewer, qtbot,
                                                                                 tiny_model_path):
    # A z-stack or time series had no way through: the widget passed no axes, and the core asked for
    # them ("cannot tell the axes"); a stack's probabilities are (planes, classes, y, x).
    viewer = make_napari_viewer()
    stack = np.random.default_rng(1).random((3, 70, 80)).astype(np.float32)
    viewer.add_image(stack, name="stack", units=("s", "µm", "µm"), scale=(1, 0.5, 0.5))
    model = unet_rt.Model(tiny_model_path, device="cpu")
    widget = _run_tiny(viewer, qtbot, tiny_model_path, "labels")
    assert widget._status.value.startswith("done: stack labels (3, 70, 80)"), widget._status.value
    labels = viewer.layers["stack labels"]
    np.testing.assert_array_equal(labels.data, model.segment(stack, axes="byx"))
    assert tuple(labels.units) == tuple(viewer.layers["stack"].units)  # µm was dropped for pixels
    widget._output.value = "probabilities"
    widget.run()
    _wait(qtbot, widget)
    want = model.segment(stack, axes="byx", output="probabilities")
    for c, name in enumerate(["background", "class_1"]):
        layer = viewer.layers[f"stack probabilities {name}"]
        np.testing.assert_array_equal(layer.data, want[:, c])
        assert tuple(layer.contrast_limits) == (0.0, 1.0)  # each class on one scale
    assert widget._image.value is viewer.layers["stack"]  # the chooser stayed on the image segmented


def test_a_lazy_layer_is_read_on_the_worker_and_a_closed_dock_cancels(make_napari_viewer, qtbot, tiny_model_path):
    # A Dask layer was computed on the GUI thread (the window froze); a run went on after its dock was
    # closed and added its layer.
    import threading

    import dask.array as da

    read_on = []

    def note(block):
        read_on.append(threading.current_thread() is threading.main_thread())
        return block

    viewer = make_napari_viewer()
    image = np.random.default_rng(2).random((96, 96)).astype(np.float32)
    viewer.add_image(da.from_array(image, chunks=48).map_blocks(note, dtype=np.float32), name="lazy",
                     contrast_limits=(0, 1))
    read_on.clear()  # napari may look at the layer while adding it
    widget = _run_tiny(viewer, qtbot, tiny_model_path, "labels")
    assert widget._status.value.startswith("done"), widget._status.value
    assert read_on and not any(read_on), read_on
    viewer.open_sample("unet_rt", "nuclei")
    dock, widget = viewer.window.add_plugin_dock_widget("unet_rt", "Segment")
    widget._device.value = "cpu"
    widget._tile.value = 100
    widget.run()
    viewer.window.remove_dock_widget(dock)
    _wait(qtbot, widget)
    assert "nuclei instances" not in [layer.name for layer in viewer.layers]


def test_the_tile_box_gives_the_nearest_usable_tile(make_napari_viewer, qtbot):
    # The box steps by 8 from 0; the bundled model takes 4 + 8k from 100: every value it stepped to failed.
    viewer = make_napari_viewer()
    viewer.add_image(nuclei()[:200, :200], name="nuclei")
    widget = SegmentWidget(viewer)
    widget._device.value = "cpu"
    widget._tile.value = 104
    widget.cancel()  # idle: nothing to cancel, nothing said
    assert widget._status.value == ""
    widget.run()
    _wait(qtbot, widget)
    assert widget._status.value.endswith("tile 100 (the nearest usable to 104)"), widget._status.value
    np.testing.assert_array_equal(viewer.layers["nuclei instances"].data,
                                  unet_rt.segment(nuclei()[:200, :200], device="cpu", output="instances", tile=100))
