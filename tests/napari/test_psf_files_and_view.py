"""A PSF file opened again is a PSF layer like an identified one, whichever way it is opened;
the camera shows what the docks add (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur._napari import PSF_FORMAT, RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 60_000


def _run(qtbot, widget):
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


@pytest.fixture
def identified(make_napari_viewer, small_sample, qtbot, notes):
    """A viewer with the sample, its PSF identified by the Identify dock's button."""
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    image = viewer.add_image(data.copy(), **kwargs)
    identify = IdentifyWidget(viewer)
    viewer.window.add_dock_widget(identify)
    identify._device.value = "cpu"
    identify._augment.value = False
    _run(qtbot, identify)
    assert identify.state == RunState.DONE, notes["error"]
    return viewer, image, identify, viewer.layers[f"{image.name} PSF"]


def test_a_reopened_psf_is_ours_and_placed_beside_its_image(identified, tmp_path, notes):
    from napari_deepblur._qt import DeblurWidget
    from napari_deepblur._qt._view import is_visible

    viewer, image, identify, psf = identified
    target = tmp_path / "cell.psf.tif"
    identify._export_path.value = target
    identify._export_button.native.click()
    assert target.is_file()
    viewer.layers.remove(psf)

    # viewer.open's default reader is napari's: the layer is made ours all the same
    [opened] = viewer.open(str(target))
    assert opened.metadata["format"] == PSF_FORMAT and opened.metadata["source"] == image.name
    np.testing.assert_allclose(opened.scale, image.scale)
    assert opened.colormap.name == "magma" and opened.name == "cell"
    for i, j in [(0, 0), (30, 30)]:  # beside the image, 8 px apart, as an identified PSF
        np.testing.assert_allclose(
            opened.data_to_world((i, j)), image.data_to_world((i, 128 + 8 + j)), atol=1e-6
        )
    assert is_visible(viewer, opened)
    # the Deblur dock offers and chooses it (the latest estimate of this image)
    deblur = DeblurWidget(viewer)
    assert deblur._psf_layer.value is opened

    # without a plugin named (File › Open, drag and drop), our reader is the preferred one
    [again] = viewer.open(str(target), plugin=None)
    assert again.source.reader_plugin == "napari-deepblur"
    assert again.metadata["format"] == PSF_FORMAT and again.colormap.name == "magma"
    assert deblur._psf_layer.value is again
    assert notes["error"] == []


def test_an_identified_psf_is_brought_into_view(identified):
    from napari_deepblur._qt._view import is_visible

    viewer, image, _, psf = identified
    assert is_visible(viewer, image) and is_visible(viewer, psf)


def test_compare_fits_wide_images_in_their_grid_cells(make_napari_viewer, small_sample, qtbot):
    from napari_deepblur._qt import DeblurWidget
    from napari_deepblur._qt._view import camera

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    viewer.add_image(np.tile(data, (1, 4)), **kwargs)  # 128 × 512: wide
    deblur = DeblurWidget(viewer)
    deblur._device.value = "cpu"
    _run(qtbot, deblur)
    assert deblur.state == RunState.DONE
    before = float(camera(viewer).zoom)
    deblur._compare_button.native.click()
    zoom = float(camera(viewer).zoom)
    viewer.reset_view()  # the zoom that shows every grid cell whole
    assert zoom == pytest.approx(float(camera(viewer).zoom))
    assert zoom < before * 0.75  # two images side by side: each fitted at half the width
    deblur._compare_button.native.click()  # End comparison: the view of before
    assert float(camera(viewer).zoom) == pytest.approx(before)


def test_end_comparison_gives_the_contrast_back_and_a_new_layer_ends_it(
    make_napari_viewer, small_sample, qtbot, notes
):
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget
    from napari_deepblur._qt._view import grid

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    raw = viewer.add_image(data.copy(), **kwargs)
    deblur = DeblurWidget(viewer)
    deblur._device.value = "cpu"
    _run(qtbot, deblur)
    low, high = np.percentile(data, [20, 60])
    raw.contrast_limits = chosen = (float(low), float(high))  # the user's contrast
    deblur._compare_button.native.click()
    assert not np.allclose(raw.contrast_limits, chosen)  # matched to the deblurred image
    deblur._compare_button.native.click()  # End comparison
    np.testing.assert_allclose(raw.contrast_limits, chosen)

    deblur._compare_button.native.click()
    raw.contrast_limits = changed = (float(low), float(np.percentile(data, 90)))
    deblur._compare_button.native.click()
    np.testing.assert_allclose(raw.contrast_limits, changed)  # changed meanwhile: kept

    # Identify during a comparison: the comparison ends, the new PSF is seen
    deblur._compare_button.native.click()
    identify = IdentifyWidget(viewer)
    identify._device.value = "cpu"
    _run(qtbot, identify)
    assert identify.state == RunState.DONE
    assert not grid(viewer).enabled and deblur._compare_button.text == "Compare side by side"
    assert viewer.layers[-1].metadata["format"] == PSF_FORMAT and viewer.layers[-1].visible
    np.testing.assert_allclose(raw.contrast_limits, changed)

    viewer.layers.remove(raw)
    deblur._compare_button.native.click()
    assert f"'{raw.name}' is no longer in the viewer" in notes["error"][-1]


def test_a_stack_in_3d_view_has_no_current_plane_and_compares_in_2d(
    make_napari_viewer, small_sample, qtbot, notes
):
    """In napari's 3D view, "current plane" of a stack is refused with a sentence (plane 0
    was taken without a word); Compare shows the two side by side in 2D, and End
    comparison goes back to 3D."""
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    stack = viewer.add_image(np.stack([data, data[::-1]]), name="zs")
    viewer.dims.ndisplay = 3
    identify, deblur = IdentifyWidget(viewer), DeblurWidget(viewer)
    for widget in (identify, deblur):
        widget._device.value = "cpu"
        assert widget.run() is None
        assert "3D" in notes["error"][-1] and "2D view" in notes["error"][-1]
    assert [layer.name for layer in viewer.layers] == ["zs"]

    deblur._planes.value = "all planes"
    _run(qtbot, deblur)
    assert deblur.state == RunState.DONE, notes["error"]
    deblur._compare_button.native.click()
    assert viewer.dims.ndisplay == 2
    deblur._compare_button.native.click()
    assert viewer.dims.ndisplay == 3
    assert stack.data.shape == (2, *data.shape)


def test_compare_after_a_refused_run_shows_the_image_deblurred(
    make_napari_viewer, small_sample, qtbot, notes
):
    """Deblur A, then a run refused on stack B (3D view): Compare still shows A beside
    its result (it showed B: the image was taken before the refusal)."""
    from napari_deepblur._qt import DeblurWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    a = viewer.add_image(data.copy(), **{**kwargs, "name": "A"})
    b = viewer.add_image(np.stack([data, data[::-1]]), name="B")
    deblur = DeblurWidget(viewer)
    deblur._device.value = "cpu"
    deblur._image_layer.value = a
    _run(qtbot, deblur)
    result = viewer.layers["A deblurred"]
    viewer.dims.ndisplay = 3
    deblur._image_layer.value = b
    assert deblur.run() is None and "3D" in notes["error"][-1]
    viewer.dims.ndisplay = 2
    deblur._compare_button.native.click()
    assert [layer for layer in viewer.layers if layer.visible] == [a, result]


def test_an_image_renamed_while_identified_keeps_its_psf(
    make_napari_viewer, small_sample, qtbot, notes
):
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    image = viewer.add_image(data.copy(), **{**kwargs, "name": "cell"})
    identify, deblur = IdentifyWidget(viewer), DeblurWidget(viewer)
    identify._device.value = "cpu"
    identify._run_button.native.click()
    image.name = "cell A"  # (before any event: the job has not returned)
    qtbot.waitUntil(lambda: not identify.busy and identify.worker is None, timeout=TIMEOUT_MS)
    psf = viewer.layers[-1]
    assert psf.metadata["format"] == PSF_FORMAT and psf.metadata["source"] == "cell A"
    assert deblur._psf_layer.value is psf
