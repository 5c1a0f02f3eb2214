"""The npe2 manifest and the sample-data contribution."""

from importlib.resources import files

import numpy as np
import pytest

from napari_deepblur._sample_data import (
    ACTIN_NAME,
    SAMPLE_NAME,
    blurred_actin,
    blurred_fluorescence,
    make_actin_sample,
    make_blurred_sample,
)

npe2 = pytest.importorskip("npe2")

SAMPLE_KEY = "blurred_fluorescence"
ACTIN_KEY = "blurred_actin"
METADATA_KEYS = {"true_psf", "coefficients_waves_rms", "noll_indices", "optics", "noise", "sharp"}


def test_manifest_is_valid():
    """What `npe2 validate --imports` checks: the schema (on load) and every python_name."""
    path = files("napari_deepblur") / "napari.yaml"
    pm = npe2.PluginManifest.from_file(str(path))
    pm.validate_imports()
    assert pm.name == "napari-deepblur" and pm.display_name == "Deep-Blur"
    assert [s.key for s in pm.contributions.sample_data] == [SAMPLE_KEY, ACTIN_KEY]
    widgets = [w.display_name for w in pm.contributions.widgets]
    assert {"Identify blur", "Deblur"} <= set(widgets)
    assert [w.filename_extensions for w in pm.contributions.writers] == [[".psf.tif", ".psf.tiff"]]
    assert pm.contributions.readers[0].filename_patterns == [
        "*.psf.tif",
        "*.psf.tiff",
        "*.psf.json",
    ]
    # registered through the napari.manifest entry point of the installed distribution
    assert npe2.PluginManifest.from_distribution("napari-deepblur").name == pm.name


def test_make_blurred_sample():
    s = make_blurred_sample(seed=0, size=64)
    assert s["image"].shape == (64, 64) and s["image"].dtype == np.float32
    assert s["sharp"].shape == (64, 64)
    assert s["true_psf"].shape == (31, 31)
    assert s["true_psf"].sum() == pytest.approx(1.0, abs=1e-5)
    assert len(s["coefficients_waves_rms"]) == len(s["noll_indices"]) == 7
    assert s["optics"]["fc"] == pytest.approx(0.2, abs=0.001)
    # deterministic, and actually blurred + noisy
    np.testing.assert_array_equal(s["image"], make_blurred_sample(seed=0, size=64)["image"])
    assert np.abs(s["image"] - s["sharp"]).mean() > 0.01


def test_blurred_fluorescence_layer_data():
    [(data, kwargs, kind)] = blurred_fluorescence()
    assert kind == "image" and data.ndim == 2 and data.dtype == np.float32
    assert kwargs["name"] == SAMPLE_NAME and kwargs["scale"] == (74.0, 74.0)
    assert METADATA_KEYS <= set(kwargs["metadata"])
    assert kwargs["metadata"]["true_psf"].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.napari
def test_open_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-deepblur", SAMPLE_KEY)
    [layer] = viewer.layers
    assert layer.name == SAMPLE_NAME
    np.testing.assert_allclose(layer.scale, (74.0, 74.0))
    assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    assert METADATA_KEYS <= set(layer.metadata)
    assert layer.data.shape == layer.metadata["sharp"].shape == (256, 256)


def test_make_actin_sample():
    s = make_actin_sample(seed=0, size=64)
    assert s["image"].shape == (64, 64) and s["image"].dtype == np.uint16
    assert s["true_psf"].sum() == pytest.approx(1.0, abs=1e-5)
    assert s["optics"]["fc"] == pytest.approx(0.2, abs=0.001)
    assert METADATA_KEYS | {"camera", "source"} <= set(s)
    np.testing.assert_array_equal(s["image"], make_actin_sample(seed=0, size=64)["image"])
    # blurred: less high-frequency energy than the sharp crop
    assert (
        np.abs(np.diff(s["image"].astype(float), axis=1)).mean()
        < np.abs(np.diff(s["sharp"], axis=1)).mean()
    )


def test_blurred_actin_layer_data():
    [(data, kwargs, kind)] = blurred_actin()
    assert kind == "image" and data.shape == (256, 256)
    assert kwargs["name"] == ACTIN_NAME and kwargs["scale"] == (108.0, 108.0)
    assert METADATA_KEYS <= set(kwargs["metadata"])


@pytest.mark.napari
def test_widgets_in_plugins_menu(make_napari_viewer):
    """Each widget opens on its own, as from the Plugins menu."""
    from napari_deepblur._qt import DeblurWidget, DeepBlurPanel, IdentifyWidget

    viewer = make_napari_viewer()
    for name, cls in [
        ("Identify blur", IdentifyWidget),
        ("Deblur", DeblurWidget),
        ("Identify blur and deblur", DeepBlurPanel),
    ]:
        _, widget = viewer.window.add_plugin_dock_widget("napari-deepblur", name)
        assert isinstance(widget, cls)
