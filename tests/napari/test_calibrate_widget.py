"""The "Calibrate from beads" dock widget in a napari viewer (run under ``xvfb-run -a``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_deepblur._napari import RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 60_000
sys.path.insert(0, str(Path(__file__).parent.parent))


@pytest.fixture(scope="module")
def bead_image():
    from test_calibration import STRONG, grid, render

    positions = grid(shape=(192, 192), spacing=34, seed=5)
    image = render((192, 192), positions, [2e4] * len(positions), STRONG, seed=5)
    return image.astype(np.float32), positions


def _run(qtbot, widget):
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


def test_calibrate_adds_beads_and_eigen_psfs(
    make_napari_viewer, qtbot, notes, bead_image, tmp_path, monkeypatch
):
    from napari.layers import Image, Points

    from napari_deepblur._qt import CalibrateWidget
    from napari_deepblur.models import load_family

    viewer = make_napari_viewer()
    data, positions = bead_image
    layer = viewer.add_image(data.copy(), name="beads", scale=(74.0, 74.0), units=("nm", "nm"))
    widget = CalibrateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._image_layer.value is layer
    assert widget._pixel_size.value == pytest.approx(74)  # from the layer's scale
    assert widget._planes.native.isHidden()  # 2D: no choice of planes
    widget._use_fc.value = True
    assert not widget._fc.native.isHidden() and widget._na.native.isHidden()
    widget._fc.value = 0.2
    widget._map_degree.value = 1

    _run(qtbot, widget)

    assert notes["error"] == [], notes["error"]
    assert widget.state == RunState.DONE
    points = viewer.layers["beads beads"]
    assert isinstance(points, Points) and len(points.data) == len(positions)
    features = points.features
    assert set(features["status"]) == {"accepted", "held out"}
    assert set(features["reason"]) == {"-"}
    np.testing.assert_allclose(points.scale, (74.0, 74.0))
    eigen = viewer.layers["beads eigen-PSFs"]
    assert isinstance(eigen, Image) and eigen.data.shape == (4, 31, 31)
    assert "held-out" in widget._summary.value.lower() and "dB" in widget._summary.value
    assert widget._canvas is not None and len(widget._canvas.figure.axes) == 2
    assert widget._save_button.enabled
    # the input is untouched
    np.testing.assert_array_equal(layer.data, data)

    monkeypatch.setenv("HOME", str(tmp_path))  # "~" is the home folder; .safetensors added
    path = widget.save_family("~/beads-family")
    assert path == tmp_path / "beads-family.safetensors" and path.exists()
    family, fc, card = load_family(path)
    assert fc == pytest.approx(0.2) and family.num_parameters == 12
    assert card["source_layer"] == "beads" and card["calibration"]["beads_accepted"] == 25
    assert any("Family written" in m for m in notes["info"])
    # never overwrites: a notification, no exception
    assert widget.save_family(path) is None
    assert "exists" in notes["error"][-1]


def test_calibrate_stack_planes_as_states(make_napari_viewer, qtbot, notes, bead_image):
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    stack = np.stack([bead_image[0], bead_image[0][:, ::-1]])
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rotated = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])  # in the YX plane
    layer = viewer.add_image(
        stack, name="stack", scale=(300.0, 74.0, 74.0), translate=(5.0, 0, 0), rotate=rotated
    )
    widget = CalibrateWidget(viewer)
    widget._use_fc.value, widget._fc.value, widget._map_degree.value = True, 0.2, 1
    assert not widget._planes.native.isHidden()
    widget._planes.value = "all planes (one state each)"
    _run(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    assert widget.result.num_images == 2 and widget.result.gamma.shape == (2, 12)
    points = viewer.layers["stack beads"]
    assert points.data.shape[1] == 3 and set(points.data[:, 0]) == {0.0, 1.0}
    for plane in (0, 1):  # the markers sit on their beads in the rotated, scaled stack
        for bead in points.data[points.data[:, 0] == plane][:2]:
            np.testing.assert_allclose(points.data_to_world(bead), layer.data_to_world(bead))


def test_calibrate_errors_become_notifications(make_napari_viewer, qtbot, notes):
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    empty = viewer.add_image(np.random.default_rng(0).normal(100, 5, (96, 96)), name="noise")
    before = empty.data.copy()
    widget = CalibrateWidget(viewer)
    widget._use_fc.value, widget._fc.value = True, 0.2
    _run(qtbot, widget)
    assert widget.state == RunState.FAILED
    assert len(notes["error"]) == 1 and "usable bead" in notes["error"][0]
    assert "Traceback" not in notes["error"][0]
    assert [layer.name for layer in viewer.layers] == ["noise"]
    np.testing.assert_array_equal(empty.data, before)
    # above Nyquist: refused with a sentence
    widget._fc.value = 0.3
    _run(qtbot, widget)
    assert "Nyquist" in notes["error"][-1]
    # saving before any calibration
    assert widget.save_family("x.safetensors") is None
    assert "run the calibration first" in notes["error"][-1]
