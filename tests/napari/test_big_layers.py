"""The Identify and Deblur docks on a big lazy layer (a multiscale layer of dask arrays, as
napari-ome-zarr opens an OME-Zarr) never read its full-resolution array whole: identify
reads a sample of windows, deblur writes an OME-Zarr block by block and opens it as a
multiscale layer."""

from __future__ import annotations

import pytest

from napari_deepblur._napari import RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 120_000
#: Reads larger than this many pixels at once count as reading the image whole.
MAX_READ_PX = 2048 * 2048


class WholeReadForbidden:
    """An array whose reads of more than :data:`MAX_READ_PX` pixels raise. A dask array of
    it in one chunk passes each slice it is asked for (a window, a block, a subsample) to it
    as it is: computed whole, it raises."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.largest = 0

    def __getitem__(self, key):
        region = self.array[key]
        if region.size > MAX_READ_PX or region.shape == self.shape:
            raise MemoryError(f"read {region.shape} of {self.shape}: the image read whole")
        self.largest = max(self.largest, region.size)
        return region


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


def test_docks_on_a_big_multiscale_dask_layer_never_read_it_whole(
    make_napari_viewer, qtbot, notes, tmp_path, monkeypatch
):
    import tempfile

    import dask.array as da

    from napari_deepblur import omezarr
    from napari_deepblur._napari import big
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget
    from napari_deepblur.evaluation.bench import bench_image

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the result store goes
    monkeypatch.setattr(big, "LAYER_CHUNK_PX", 1152)  # 2 × 2 blocks of 2304²
    full = bench_image(2304)
    guard = WholeReadForbidden(full)
    level0 = da.from_array(guard, chunks=2304, asarray=False)
    with pytest.raises(MemoryError):
        level0.compute()
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        [level0, full[::2, ::2].copy(), full[::4, ::4].copy()], multiscale=True, name="scan"
    )
    identify = IdentifyWidget(viewer)
    viewer.window.add_dock_widget(identify)
    identify._device.value = "cpu"
    identify._tile_px.value = 256  # 3 × 3 windows of 256 px: fast
    identify._run_button.native.click()
    _wait_idle(qtbot, identify)
    assert notes["error"] == [], notes["error"]
    assert identify.state == RunState.DONE
    psf = viewer.layers["scan PSF"]
    assert psf.data.shape == (31, 31)

    deblur = DeblurWidget(viewer)
    viewer.window.add_dock_widget(deblur)
    deblur._image_layer.value = layer
    deblur._psf_layer.value = psf
    deblur._device.value = "cpu"
    deblur._run_button.native.click()
    _wait_idle(qtbot, deblur)
    assert notes["error"] == [], notes["error"]
    out = viewer.layers["scan deblurred"]
    assert out.multiscale and [tuple(d.shape) for d in out.data] == [(2304, 2304), (1152, 1152)]
    store = out.metadata["ome_zarr"]
    assert store.startswith(str(tmp_path))
    assert omezarr.read_ome_zarr(store).data.shape == (2304, 2304)
    assert 0 < guard.largest <= MAX_READ_PX  # read, in windows and blocks only
    assert layer.data[0] is level0
