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
    eigen = viewer.layers["beads eigen-PSFs"]  # a 2D montage of the 4, right of the image
    assert isinstance(eigen, Image) and eigen.data.shape == (31, 4 * 35 - 4)
    assert eigen.translate[1] > 192 * 74
    assert "held-out" in widget._summary.value.lower() and "dB" in widget._summary.value
    assert not widget._plot.pixmap().isNull() and len(widget._figure.axes) == 2
    assert widget._save_button.enabled
    # the input is untouched
    np.testing.assert_array_equal(layer.data, data)
    # the eigen-PSFs are no image to calibrate, identify or deblur
    assert list(widget._image_layer.choices) == [layer]

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


@pytest.fixture(scope="module")
def confocal_stack():
    """The shipped confocal bead plane (22 nm pixels, four beads) as the middle plane of a
    3-plane stack whose first plane is empty (out of focus)."""
    from napari_deepblur.io import read_image
    from test_calibration import CONFOCAL_PLANE

    plane = read_image(CONFOCAL_PLANE).data
    empty = np.random.default_rng(0).integers(0, 2, plane.shape).astype(plane.dtype)
    return np.stack([empty, plane, plane])


def test_calibrate_defaults_work_on_real_beads_and_show_what_is_assumed(
    make_napari_viewer, qtbot, notes, confocal_stack
):
    """Four real beads, default settings: the fit the beads allow (it failed: 6 maps); the
    eigen-PSFs are one 2D image seen at every plane of the stack; NA and wavelength that
    the image does not carry are shown as assumed."""
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    viewer.add_image(
        confocal_stack, name="beads", scale=(125.0, 22.0, 22.0), units=("nm", "nm", "nm")
    )
    viewer.dims.set_point(0, 125.0)  # plane 2 of 3
    widget = CalibrateWidget(viewer)
    assert widget._pixel_size.value == pytest.approx(22)
    assert (
        widget._num_psfs.native.currentText() == widget._map_degree.native.currentText() == "auto"
    )
    note = widget._optics_note
    assert not note.native.isHidden() and "assumed NA 1.4, wavelength 520 nm" in note.value
    assert "pixel size" not in note.value
    widget._na.value = 1.3  # set by hand: no longer assumed
    assert "NA" not in note.value and "wavelength 520 nm" in note.value
    _run(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    assert widget.state == RunState.DONE
    assert (widget.result.settings["map_degree"], widget.result.family.num_psfs) == (0, 2)
    assert "chosen from the beads" in widget._summary.value
    assert "wavelength 520 nm" in widget._summary.value
    eigen = viewer.layers["beads eigen-PSFs"]
    assert eigen.ndim == 2 and eigen.data.shape == (31, 66)
    for plane in (0, 2):  # a 2D layer shows at every plane of the stack
        viewer.dims.set_point(0, plane * 125.0)
        assert eigen._slice.image.view.shape == (31, 66)
    # degree 1 on 4 beads: fitted, with a warning that it is under-determined
    widget._map_degree.value, widget._num_psfs.value = 1, 4
    viewer.dims.set_point(0, 125.0)
    _run(qtbot, widget)
    assert widget.state == RunState.DONE
    assert any("3 maps to 4 bead(s) in plane 2" in w for w in notes["warning"]), notes["warning"]
    assert "Caution" in widget._summary.value


def test_calibrate_failure_draws_detections_and_names_the_plane(
    make_napari_viewer, qtbot, notes, confocal_stack
):
    """Too few beads: the detections and rejections (with their reason) are still drawn,
    the error names the plane as the slider does (from 1) and what would work."""
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    viewer.add_image(confocal_stack, name="beads", scale=(125.0, 22.0, 22.0))
    viewer.dims.set_point(0, 125.0)
    widget = CalibrateWidget(viewer)
    widget._pixel_size.value = 22.0
    widget._map_degree.value = 2  # 6 maps: more than 4 beads determine
    _run(qtbot, widget)
    assert widget.state == RunState.FAILED
    (error,) = notes["error"]
    assert "in plane 2 but map degree 2" in error and "allow map degree 0" in error
    # on the empty first plane: no bead, and the plane with beads is named
    viewer.dims.set_point(0, 0.0)
    widget._map_degree.value = None
    _run(qtbot, widget)
    assert "no usable bead in plane 1" in notes["error"][-1]
    assert "Plane 2 is the brightest: try it" in notes["error"][-1]
    viewer.dims.set_point(0, 125.0)
    points = viewer.layers["beads beads"]
    assert len(points.data) == 4 and set(points.features["status"]) == {"accepted"}
    # every plane, as states: plane 1 has no bead; the rejected detections say why
    widget._map_degree.value = None  # auto
    widget._planes.value = "all planes (one state each)"
    widget._kernel_size.value = 45  # neighbours within 45 px overlap
    _run(qtbot, widget)
    assert "no usable bead in plane 1" in notes["error"][-1]
    points = viewer.layers["beads beads [1]"]
    rejected = points.features[points.features["status"] == "rejected"]
    assert len(rejected) and set(rejected["reason"]) >= {"overlaps another bead"}
    assert points.text.values[np.flatnonzero(points.features["status"] == "rejected")[0]]
    assert points.data.shape[1] == 3 and not {0.0} & set(points.data[:, 0])
    assert "beads eigen-PSFs" not in viewer.layers


def test_calibrate_reads_na_and_emission_of_an_ome_tiff(make_napari_viewer, tmp_path):
    """NA and wavelength stated in an OME-TIFF (Objective LensNA, Channel
    EmissionWavelength) fill the dock, and nothing is shown as assumed."""
    import tifffile

    from napari_deepblur._qt import CalibrateWidget
    from napari_deepblur.io import read_image
    from test_calibration import CONFOCAL_PLANE

    plane = read_image(CONFOCAL_PLANE).data
    ome = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Instrument ID="Instrument:0"><Objective ID="Objective:0" LensNA="1.2"/></Instrument>'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
        'SizeX="150" SizeY="150" SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="0.022" '
        'PhysicalSizeY="0.022"><Channel ID="Channel:0:0" SamplesPerPixel="1" '
        'EmissionWavelength="600" EmissionWavelengthUnit="nm"/>'
        '<TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>'
    )
    path = tmp_path / "beads.ome.tif"
    tifffile.imwrite(path, plane, description=ome, metadata=None)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari")
    widget = CalibrateWidget(viewer)
    assert widget._na.value == pytest.approx(1.2)
    assert widget._wavelength.value == pytest.approx(600)
    assert widget._pixel_size.value == pytest.approx(22)
    assert widget.assumed_text() == "" and widget._optics_note.native.isHidden()


def test_another_bead_image_refills_the_optics_from_its_own_metadata(
    make_napari_viewer, qtbot, notes, confocal_stack
):
    """After calibrating beads with 22 nm pixels, choosing an image that states no pixel
    size shows the default as assumed (it kept 22 nm and called it assumed); an image with
    its own pixel size gets it; a value typed for one image does not carry over."""
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    viewer.add_image(
        confocal_stack, name="Bead_Image1_crop", scale=(125.0, 22.49, 22.49), units="nm"
    )
    viewer.dims.set_point(0, 125.0)
    plain = viewer.add_image(confocal_stack[1].copy(), name="no pixel size")
    coarse = viewer.add_image(
        confocal_stack[1].copy(), name="coarse", scale=(50.0, 50.0), units=("nm", "nm")
    )
    widget = CalibrateWidget(viewer)
    widget._image_layer.value = viewer.layers["Bead_Image1_crop"]
    assert widget._pixel_size.value == pytest.approx(22.49)
    widget._na.value = 1.3  # typed for these beads
    _run(qtbot, widget)
    assert widget.state == RunState.DONE, notes["error"]

    widget._image_layer.value = plain
    assert widget._pixel_size.value == pytest.approx(74)
    assert widget._na.value == pytest.approx(1.4)
    note = widget._optics_note
    assert "assumed NA 1.4, wavelength 520 nm, pixel size 74 nm" in note.value
    assert not note.native.isHidden()
    widget._image_layer.value = coarse
    assert widget._pixel_size.value == pytest.approx(50)
    assert "pixel size" not in widget._optics_note.value


def test_a_failed_run_leaves_no_older_family_to_save(
    make_napari_viewer, qtbot, notes, confocal_stack, tmp_path
):
    """A run that fails after one that worked: no summary, plot or Save of the older run
    is left (saving wrote the older family)."""
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    viewer.add_image(confocal_stack, name="beads", scale=(125.0, 22.0, 22.0), units="nm")
    viewer.dims.set_point(0, 125.0)
    widget = CalibrateWidget(viewer)
    _run(qtbot, widget)
    assert widget.state == RunState.DONE and widget._save_button.enabled
    assert not widget._summary.native.isHidden() and not widget._plot.isHidden()

    widget._planes.value = "all planes (one state each)"  # plane 1 has no bead
    _run(qtbot, widget)
    assert widget.state == RunState.FAILED
    assert "no usable bead in plane 1" in widget._status.value
    assert widget.result is None and not widget._save_button.enabled
    assert widget._summary.native.isHidden() and widget._plot.isHidden()
    assert widget.save_family(tmp_path / "old.safetensors") is None
    assert not (tmp_path / "old.safetensors").exists()


def test_the_family_file_follows_the_bead_image(
    make_napari_viewer, qtbot, notes, confocal_stack, tmp_path, monkeypatch
):
    """The family file is named after the chosen image, in the folder chosen before (it
    kept the first image's name); the other image's family is not offered for saving."""
    from napari_deepblur._qt import CalibrateWidget

    monkeypatch.setenv("HOME", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(confocal_stack[1].copy(), name="beads", scale=(22.0, 22.0), units="nm")
    other = viewer.add_image(confocal_stack[2].copy(), name="other beads")
    widget = CalibrateWidget(viewer)
    assert widget._save_path.value == tmp_path / "beads-family.safetensors"
    folder = tmp_path / "families"
    folder.mkdir()
    widget._save_path.value = folder / "mine.safetensors"
    _run(qtbot, widget)
    assert widget.state == RunState.DONE and widget._save_button.enabled
    assert widget._save_path.value == folder / "mine.safetensors"  # typed: kept

    widget._image_layer.value = other
    assert widget._save_path.value == folder / "other_beads-family.safetensors"
    assert widget.result is None and not widget._save_button.enabled


def test_the_calibrate_dock_fits_its_width(make_napari_viewer, qtbot, notes, confocal_stack):
    """In a 1600×900 window, with a long layer name, a stack and the results shown (then the
    dock scrolls), no control is cut off on the right (the content was 392 px wide in a
    366 px viewport: the spin boxes' "+" and "Select file" were hidden)."""
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 900)
    viewer.add_image(
        confocal_stack, name="Bead_Image1_crop", scale=(125.0, 22.49, 22.49), units="nm"
    )
    viewer.dims.set_point(0, 125.0)
    widget = CalibrateWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    viewport = widget.native.viewport()

    def fits() -> bool:
        qtbot.wait(100)
        content = widget.content
        return max(content.width(), content.minimumSizeHint().width()) <= viewport.width()

    assert fits(), (widget.content.minimumSizeHint().width(), viewport.width())
    _run(qtbot, widget)
    assert widget.state == RunState.DONE, notes["error"]
    qtbot.wait(200)  # the results shown (the dock may scroll: a narrower viewport)
    assert fits(), (widget.content.minimumSizeHint().width(), viewport.width())
    assert window.width() == 1600


def test_the_family_stays_when_its_bead_image_is_removed(
    make_napari_viewer, qtbot, notes, bead_image, tmp_path
):
    """Calibrate, then delete the bead image (to free memory): the family can still be
    saved, under the bead image's name (the result was dropped and the file renamed after
    the layer the list moved on to)."""
    from napari_deepblur._qt import CalibrateWidget

    viewer = make_napari_viewer()
    data, _ = bead_image
    layer = viewer.add_image(data.copy(), name="beads", scale=(74.0, 74.0), units=("nm", "nm"))
    other = viewer.add_image(data[::-1].copy(), name="other beads")
    widget = CalibrateWidget(viewer)
    widget._image_layer.value = layer
    widget._use_fc.value = True
    widget._fc.value = 0.2
    widget._map_degree.value = 1
    _run(qtbot, widget)
    assert widget.state == RunState.DONE, notes["error"]
    widget._save_path.value = named = tmp_path / "x.safetensors"
    viewer.layers.remove(layer)
    assert widget._image_layer.value is other
    assert widget._save_button.enabled and widget._result is not None
    assert widget._save_path.value == named
    assert widget.save_family(widget._save_path.value).exists()
