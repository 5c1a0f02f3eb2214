"""Channels are not planes: a CYX file's channels are not mixed in one median or deblurred
with one PSF (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur._napari import RunState

pytestmark = pytest.mark.napari


def _cyx_file(tmp_path, small_sample, name):
    from napari_deepblur import io

    data, _ = small_sample
    stack = np.stack([data, data[::-1], data[:, ::-1]]).astype(np.float32)
    return io.write_image(tmp_path / name, stack, pixel_size_nm=74.0, axes="CYX"), stack


@pytest.mark.parametrize("name", ["cells.tif", "cells.ome.tif"], ids=["imagej", "ome"])
def test_no_median_or_deblur_across_channels(
    make_napari_viewer, small_sample, tmp_path, notes, name
):
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget
    from napari_deepblur._qt._deblur import ALL_PLANES
    from napari_deepblur._qt._identify import ALL_PLANES_MEDIAN

    path, stack = _cyx_file(tmp_path, small_sample, name)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path))  # napari's reader: a (3, 128, 128) array, no axes
    assert layer.data.shape == stack.shape
    identify = IdentifyWidget(viewer)
    identify._planes.value = ALL_PLANES_MEDIAN
    identify._run_button.native.click()
    assert identify.state == RunState.FAILED and identify.worker is None
    assert "3 channels (axes CYX)" in notes["error"][-1]
    assert "the median over all planes would mix channels" in notes["error"][-1]
    deblur = DeblurWidget(viewer)
    deblur._planes.value = ALL_PLANES
    deblur._run_button.native.click()
    assert deblur.state == RunState.FAILED and deblur.worker is None
    assert "deblurring all planes with one PSF would mix channels" in notes["error"][-1]
    assert [lay.name for lay in viewer.layers] == [layer.name]
    np.testing.assert_array_equal(layer.data, stack)


def test_a_z_stack_and_a_layer_that_says_its_axes(small_sample):
    from napari_deepblur import _napari as logic

    data, _ = small_sample
    assert logic.layer_axes({"axes": "cyx"}, (3, 64, 64)) == "CYX"
    assert logic.layer_axes({}, (3, 64, 64)) == ""  # unknown: planes, as before
    logic.check_not_across_channels("ZYX", (5, 64, 64), "the median")  # Z planes: fine
    logic.check_not_across_channels("CYX", (1, 64, 64), "the median")  # one channel: fine
    with pytest.raises(logic.UserError, match="2 channels"):
        logic.check_not_across_channels("ZCYX", (5, 2, 64, 64), "the median")


def test_the_wavelength_follows_the_channel_shown(
    make_napari_viewer, small_sample, tmp_path, qtbot
):
    """An OME-TIFF whose channels state their emission wavelengths (460, 640 nm), opened by
    napari's reader as a stack: the Identify dock takes the wavelength of the channel on
    screen, and the PSF identified on channel 1 is at 640 nm."""
    import sys
    from pathlib import Path

    from napari_deepblur._qt import IdentifyWidget

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_channel_optics import write_ome

    data, _ = small_sample
    path = write_ome(tmp_path / "two.ome.tif", np.stack([data, data[::-1]]), [460, 640])
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin="napari")
    assert layer.data.shape[0] == 2
    widget = IdentifyWidget(viewer)
    widget._image_layer.value = layer
    assert widget._wavelength.value == pytest.approx(460) and widget._na.value == 1.3
    viewer.dims.set_current_step(0, 1)
    assert widget._wavelength.value == pytest.approx(640)
    widget._device.value = "cpu"
    widget._augment.value = False
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: widget.state == RunState.DONE, timeout=60_000)
    psf = viewer.layers[-1]
    assert psf.metadata["optics"]["wavelength_nm"] == pytest.approx(640)
    viewer.dims.set_current_step(0, 0)
    assert widget._wavelength.value == pytest.approx(460)
    # a wavelength typed stays while the channel shown does not change (found in review)
    widget._wavelength.value = 600
    viewer.add_image(np.zeros((3, 2, 8, 8), np.float32), name="other")  # one more slider
    viewer.dims.set_current_step(0, 2)  # that slider, not the channel's
    assert widget._wavelength.value == pytest.approx(600)
    viewer.dims.set_current_step(1, 1)  # the channel's
    assert widget._wavelength.value == pytest.approx(640)


def test_optics_typed_on_a_channel_stack_keep_the_channel_s_wavelength(
    make_napari_viewer, small_sample, tmp_path
):
    """An NA typed for a two-channel stack (460 / 640 nm) comes back with it, and the
    wavelength is still the one of the channel shown then (found in review: the channel
    shown when leaving it came back with the NA)."""
    import sys
    from pathlib import Path

    from napari_deepblur._qt import IdentifyWidget

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_channel_optics import write_ome

    data, _ = small_sample
    path = write_ome(tmp_path / "two.ome.tif", np.stack([data, data[::-1]]), [460, 640])
    viewer = make_napari_viewer()
    [stack] = viewer.open(path, plugin="napari")
    other = viewer.add_image(data.copy(), name="other")
    widget = IdentifyWidget(viewer)
    widget._image_layer.value = stack
    assert widget._wavelength.value == pytest.approx(460)
    widget._na.value = 1.2  # typed
    widget._image_layer.value = other
    viewer.dims.set_current_step(0, 1)  # channel 1 (640 nm) shown meanwhile
    widget._image_layer.value = stack
    assert widget._na.value == pytest.approx(1.2)
    assert widget._wavelength.value == pytest.approx(640)
