"""Space-varying (product-convolution) estimates in the widgets: the kernel map, the PSF
weight maps, the γ table, and deblurring with the PSF layer's field (run under
``xvfb-run -a``). Plumbing only: ``tiny_field_model`` is barely trained."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur import _napari as logic
from napari_deepblur._napari import PSF_FORMAT, RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 120_000
#: Enough for the tiny model's 96 px windows after resampling to its sampling; small, since
#: the space-varying deblurring (conjugate gradient) is slow on CPU.
SIZE = 104


def _edges(scale, translate, shape):
    """World coordinates of the outer edges (first and last pixel's borders) of a 2D layer."""
    scale, translate = np.asarray(scale[-2:], float), np.asarray(translate[-2:], float)
    return translate - 0.5 * scale, translate + (np.asarray(shape[-2:]) - 0.5) * scale


def _run(qtbot, widget):
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


def _use_model_file(widget, path):
    from napari_deepblur._qt._job import MODEL_FILE_CHOICE

    widget._model.value = MODEL_FILE_CHOICE
    widget._model_file.value = str(path)


# -- headless ------------------------------------------------------------------------------
def test_field_layers_headless(tiny_field_model, small_sample):
    data, kwargs = small_sample
    image = data[:SIZE, :SIZE].copy()
    before = image.copy()
    geometry = logic.layer_geometry(kwargs["scale"], (10.0, -20.0), kwargs["units"])
    result = logic.identify_layers(
        logic.IdentifyRequest(
            image,
            "raw",
            model=str(tiny_field_model.path),
            optics=logic.known_optics(kwargs["metadata"]),
            device="cpu",
            augment=False,
            geometry=geometry,
            kernel_grid=4,
        )
    )
    estimate = result.estimate
    assert estimate.field is not None
    names = [k["name"] for _, k, _ in result.layers]
    num_psfs = estimate.field.num_psfs
    assert names == [
        "raw PSF",
        "raw kernel map",
        *[f"raw PSF weight map e{i + 1}" for i in range(num_psfs)],
    ]
    (psf, psf_kwargs, _), (kmap, kmap_kwargs, _), *weights = result.layers

    # the PSF layer keeps the whole estimate, field included, and a summary of the field
    md = psf_kwargs["metadata"]
    assert md["format"] == PSF_FORMAT and md["estimate"]["field"] is not None
    assert md["field_summary"]["grid"] == 4
    back = logic.estimate_from_psf_layer(psf, md)
    assert back.field is not None and back.field.shape == (SIZE, SIZE)

    # the kernel map: 4×4 PSFs each at its own peak, covering exactly the image
    k = kmap_kwargs["metadata"]["kernel_size_px"]
    assert kmap.shape == (4 * k, 4 * k)
    assert kmap_kwargs["metadata"]["deepblur_layer"] == "kernel map"
    assert kmap_kwargs["metadata"]["grid"] == [4, 4]
    for i in range(4):
        for j in range(4):
            assert kmap[i * k : (i + 1) * k, j * k : (j + 1) * k].max() == pytest.approx(1.0)
    for got, want in zip(
        _edges(kmap_kwargs["scale"], kmap_kwargs["translate"], kmap.shape),
        _edges(geometry["scale"], geometry["translate"], image.shape),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # each PSF's centre pixel lies over its grid position
    (y0, x0) = kmap_kwargs["metadata"]["positions_px"][0]
    centre = np.asarray(kmap_kwargs["translate"]) + (k - 1) / 2 * np.asarray(kmap_kwargs["scale"])
    np.testing.assert_allclose(centre, np.asarray((10.0, -20.0)) + np.array([y0, x0]) * 74.0)
    assert kmap_kwargs["units"] == ("nm", "nm")

    # the weight maps m_i: the image's pixels, hidden, their eigen-PSF in the metadata
    for i, (m, m_kwargs, _) in enumerate(weights):
        assert m.shape == (SIZE, SIZE) and m.dtype == np.float32
        np.testing.assert_allclose(m_kwargs["scale"], geometry["scale"])
        np.testing.assert_allclose(m_kwargs["translate"], geometry["translate"])
        assert not m_kwargs["visible"] and m_kwargs["metadata"]["index"] == i
        assert np.shape(m_kwargs["metadata"]["eigen_psf"]) == estimate.field.eigen_psfs[i].shape
        assert logic.is_auxiliary_layer(m_kwargs["metadata"])
    # they are m_i: the local PSF is Σ_i m_i e_i
    y, x = 30, 70
    local = np.tensordot([w[0][y, x] for w in weights], estimate.field.eigen_psfs, axes=1)
    np.testing.assert_allclose(local / local.sum(), estimate.field.psf_at(y, x), atol=1e-5)
    # large images: fewer samples, spanning the image from its first to its last pixel
    small = logic.weight_map_layers_data(estimate, "raw", geometry, max_px=32)
    m, m_kwargs, _ = small[0]
    assert m.shape == (32, 32)
    last = np.asarray(m_kwargs["translate"]) + 31 * np.asarray(m_kwargs["scale"])
    np.testing.assert_allclose(last, np.asarray((10.0, -20.0)) + (SIZE - 1) * 74.0)

    # the table: one row per γ, named, no unit; the summary speaks of the field
    rows = logic.coefficient_rows(md)
    assert len(rows) == len(estimate.coefficients) == len(md["estimate"]["names"])
    assert rows[0]["label"] == "e1·f1" and rows[0]["noll"] is None
    assert logic.coefficient_columns(md)[1] == "γ"
    text = logic.summary_text(md["estimate"], md["field_summary"])
    assert "Space-varying" in text and "across the field" in text and "Strehl" not in text
    np.testing.assert_array_equal(image, before)

    # the median over the planes of a stack keeps the field (median γ)
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    median = logic.identify_layers(
        logic.IdentifyRequest(
            stack, "s", model=str(tiny_field_model.path), stack_mode="median", device="cpu"
        )
    )
    assert median.estimate.field is not None
    assert median.estimate.psf_at(3, 3).shape == median.estimate.psf.shape


def test_no_field_layers_for_zernike(small_sample):
    data, kwargs = small_sample
    result = logic.identify_layers(logic.IdentifyRequest(data, "raw", device="cpu", augment=False))
    assert [k["name"] for _, k, _ in result.layers] == ["raw PSF"]
    assert logic.kernel_map_layer_data(result.estimate, "raw", {}) is None
    assert logic.weight_map_layers_data(result.estimate, "raw", {}) == []
    assert "field_summary" not in result.layers[0][1]["metadata"]
    assert logic.coefficient_columns(result.layers[0][1]["metadata"])[1] == "waves RMS"


# -- in napari -----------------------------------------------------------------------------
def test_identify_and_deblur_space_varying(make_napari_viewer, small_sample, tiny_field_model,
                                           qtbot, notes, monkeypatch):  # fmt: skip
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    layer = viewer.add_image(data[:SIZE, :SIZE].copy(), **kwargs)
    layer.translate = (100.0, 50.0)
    before = layer.data.copy()

    widget = IdentifyWidget(viewer)
    assert widget._kernel_grid.native.isHidden()  # the shipped Zernike model
    monkeypatch.setenv("HOME", str(tiny_field_model.path.parent))  # a typed "~/…" path
    _use_model_file(widget, f"~/{tiny_field_model.path.name}")
    assert not widget._kernel_grid.native.isHidden()
    widget._kernel_grid.value = 3
    widget._device.value = "cpu"
    widget._augment.value = False
    _run(qtbot, widget)

    assert notes["error"] == [], notes["error"]
    assert widget.state == RunState.DONE
    psf = viewer.layers[f"{layer.name} PSF"]
    assert psf.data.shape == (31, 31) and psf.metadata["estimate"]["field"] is not None
    kmap = viewer.layers[f"{layer.name} kernel map"]
    k = kmap.metadata["kernel_size_px"]
    assert kmap.data.shape == (3 * k, 3 * k)
    for got, want in zip(
        _edges(kmap.scale, kmap.translate, kmap.data.shape),
        _edges(layer.scale, layer.translate, layer.data.shape),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, atol=0.1)  # nm (layers keep float32)
    weights = [lay for lay in viewer.layers if lay.metadata.get("deepblur_layer") == "weight map"]
    assert len(weights) == len(psf.metadata["estimate"]["field"]["eigen_psfs"])
    for m in weights:
        assert m.data.shape == layer.data.shape and not m.visible
        np.testing.assert_allclose(m.scale, layer.scale)
        np.testing.assert_allclose(m.translate, layer.translate)
    assert "kernel map of 3×3" in widget._status.value
    # the table shows γ with its names
    assert not widget._table.native.isHidden()
    assert widget._table.native.horizontalHeaderItem(1).text() == "γ"
    assert widget._table.native.rowCount() == len(psf.metadata["estimate"]["coefficients"])
    assert "Space-varying" in widget._summary.value
    np.testing.assert_array_equal(layer.data, before)

    # Deblur with that PSF layer: the space-varying operator, the image's shape
    deblur = DeblurWidget(viewer)
    assert deblur._image_layer.choices == (layer,)  # no maps offered as images
    assert deblur._psf_layer.value is psf
    _use_model_file(deblur, tiny_field_model.path)
    deblur._device.value = "cpu"
    _run(qtbot, deblur)
    assert notes["error"] == [], notes["error"]
    out = viewer.layers[f"{layer.name} deblurred"]
    assert out.data.shape == layer.data.shape
    np.testing.assert_allclose(out.translate, layer.translate)
    assert out.metadata["estimate"]["field"] is not None
    np.testing.assert_array_equal(layer.data, before)


def test_zernike_identify_adds_no_kernel_map(make_napari_viewer, small_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    layer = viewer.add_image(data.copy(), **kwargs)
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    widget._augment.value = False
    _run(qtbot, widget)
    assert notes["error"] == []
    assert [lay.name for lay in viewer.layers] == [layer.name, f"{layer.name} PSF"]
    assert widget._table.native.horizontalHeaderItem(1).text() == "waves RMS"
    assert widget._table.native.verticalHeaderItem(0).text() == "Z4"
