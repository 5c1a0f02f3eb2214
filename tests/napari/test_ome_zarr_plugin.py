"""Our OME-Zarr output, opened by napari-ome-zarr (the reader napari users have for
OME-Zarr): a multiscale layer in micrometres that the docks read the pixel size of and
identify without further input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur import cli
from napari_deepblur._napari import RunState
from napari_deepblur.samples import make_blurred_sample

pytestmark = pytest.mark.napari
pytest.importorskip("napari_ome_zarr")
zarr = pytest.importorskip("zarr")
writer = pytest.importorskip("ome_zarr.writer")


def _input_store(path):
    """A 288² uint16 OME-Zarr, 0.074 µm pixels, written by ome-zarr-py."""
    image = np.clip(make_blurred_sample(0, 288)["image"], 0, None) * 3000
    group = zarr.open_group(str(path), mode="w")
    writer.write_image(
        image.astype(np.uint16), group, axes="yx", scale={"y": 0.074, "x": 0.074},
        axes_units={"y": "micrometer", "x": "micrometer"}, scale_factors=[2],
        storage_options={"chunks": (64, 64)},
    )  # fmt: skip
    return path


def test_napari_ome_zarr_opens_our_output_and_the_docks_take_its_pixel_size(
    make_napari_viewer, qtbot, tmp_path
):
    from napari_deepblur._qt import IdentifyWidget

    source, out = _input_store(tmp_path / "in.ome.zarr"), tmp_path / "out.ome.zarr"
    argv = ["deblur", str(source), "-o", str(out), "--chunk-px", "144", "--dtype", "input",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(out), plugin="napari-ome-zarr")
    assert layer.multiscale and [d.shape for d in layer.data] == [(288, 288), (144, 144)]
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert tuple(layer.scale) == pytest.approx((0.074, 0.074))

    widget = IdentifyWidget(viewer)
    widget._image_layer.value = layer
    assert widget._pixel_size.value == pytest.approx(74.0)  # µm scale → nm
    assert not widget._use_optics.value  # no NA or wavelength in the store: not "known"
    widget._device.value = "cpu"
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: widget.state == RunState.DONE, timeout=60_000)
    psf = viewer.layers[-1]
    assert psf.name == f"{layer.name} PSF" and psf.data.shape == (31, 31)
    assert np.isclose(psf.data.sum(), 1, atol=1e-3)
    # on the image's pixel grid, in its units, beside it
    assert [str(u) for u in psf.units] == ["micrometer", "micrometer"]
    assert tuple(psf.scale) == pytest.approx((0.074, 0.074)) and psf.translate[1] > 288 * 0.074
