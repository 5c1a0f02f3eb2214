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
