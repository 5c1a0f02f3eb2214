"""The Deblur dock uses the right blur estimate: the image's own (latest first), another
image's only when chosen explicitly (with a warning when its optics differ), and the model
the estimate was identified with (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur._napari import PSF_FORMAT, RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 60_000


def _run(qtbot, widget):
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


def _shown(combo) -> list[str]:
    native = combo.native
    return [native.itemText(i) for i in range(native.count())]


@pytest.fixture
def two_images(make_napari_viewer, small_sample):
    """Image A (74 nm pixels, NA 1.4) and image B (120 nm pixels, NA 1.0)."""
    viewer = make_napari_viewer()
    data, kwargs = small_sample
    a = viewer.add_image(data.copy(), **{**kwargs, "name": "A"})
    optics_b = {"na": 1.0, "wavelength_nm": 520.0, "pixel_size_nm": 120.0}
    b = viewer.add_image(
        data[::-1].copy(),
        name="B",
        scale=(120.0, 120.0),
        units=("nm", "nm"),
        metadata={"optics": optics_b},
    )
    return viewer, a, b


def _identify(qtbot, viewer, image, model="zernike-default"):
    from napari_deepblur._qt import IdentifyWidget

    widget = IdentifyWidget(viewer)
    widget._image_layer.value = image
    widget._model.value = model
    widget._device.value = "cpu"
    widget._augment.value = False
    _run(qtbot, widget)
    assert widget.state == RunState.DONE
    return viewer.layers[f"{image.name} PSF"]


def test_another_images_psf_needs_an_explicit_choice_and_warns(two_images, qtbot, notes):
    from napari_deepblur._qt import DeblurWidget
    from napari_deepblur._qt._deblur import IDENTIFY_FIRST

    viewer, a, b = two_images
    psf_a = _identify(qtbot, viewer, a)
    deblur = DeblurWidget(viewer)
    viewer.window.add_dock_widget(deblur)
    deblur._device.value = "cpu"
    deblur._image_layer.value = a
    assert deblur._psf_layer.value is psf_a  # A's own estimate

    # image B: A's PSF is neither chosen nor offered
    deblur._image_layer.value = b
    assert deblur._psf_layer.value is None
    assert _shown(deblur._psf_layer) == [IDENTIFY_FIRST]

    # offered, labelled, once asked for; deblurring with it warns of the other optics
    deblur._other_estimates.value = True
    assert _shown(deblur._psf_layer) == [IDENTIFY_FIRST, "A PSF  (from another image: A)"]
    assert deblur._psf_layer.value is None  # still an explicit choice
    deblur._psf_layer.value = psf_a
    _run(qtbot, deblur)
    assert notes["error"] == [], notes["error"]
    assert "B deblurred" in viewer.layers
    [warning] = notes["warning"]
    assert "identified on 'A'" in warning and "pixel size 74 nm vs 120 nm" in warning
    assert "NA 1.4 vs 1" in warning

    # unticked: no longer offered, B's own (none yet: identify first)
    deblur._other_estimates.value = False
    assert deblur._psf_layer.value is None and _shown(deblur._psf_layer) == [IDENTIFY_FIRST]

    # back to A: its own estimate again
    deblur._image_layer.value = a
    assert deblur._psf_layer.value is psf_a


def test_a_psf_of_another_image_added_later_is_not_chosen(two_images, qtbot, notes):
    from napari_deepblur._qt import DeblurWidget

    viewer, a, b = two_images
    deblur = DeblurWidget(viewer)
    deblur._image_layer.value = b
    _identify(qtbot, viewer, a)  # identified on A while the Deblur dock shows B
    assert deblur._psf_layer.value is None
    psf_b = _identify(qtbot, viewer, b)
    assert deblur._psf_layer.value is psf_b  # B's own estimate is chosen as it appears


def test_the_deblur_model_follows_the_estimates(two_images, qtbot, notes):
    """Identified with field-default: Deblur switches to field-default (and says so)."""
    from napari_deepblur._qt import DeblurWidget

    viewer, a, _ = two_images
    deblur = DeblurWidget(viewer)
    deblur._image_layer.value = a
    assert deblur._model.value == "zernike-default"
    psf = _identify(qtbot, viewer, a, model="field-default")
    assert deblur._psf_layer.value is psf
    assert deblur._model.value == "field-default"
    assert "model set to 'field-default'" in notes["info"][-1]
    # a dock opened later follows too
    later = DeblurWidget(viewer)
    later._image_layer.value = a
    assert later._psf_layer.value is psf and later._model.value == "field-default"
    # set back by hand: it runs, with a warning
    deblur._model.value = "zernike-default"
    deblur._device.value = "cpu"
    _run(qtbot, deblur)
    assert deblur.state == RunState.DONE and notes["error"] == []
    assert (
        "identified with the model 'field-default' and is deblurred with 'zernike-default'"
        in (notes["warning"][-1])
    )


def test_an_estimates_model_that_is_not_here_warns(make_napari_viewer, notes):
    from napari_deepblur._qt import DeblurWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="cell")
    metadata = {"format": PSF_FORMAT, "source": "cell", "model": "my-scope", "fc": 0.2}
    viewer.add_image(np.ones((31, 31), np.float32), name="cell PSF", metadata=metadata)
    deblur = DeblurWidget(viewer)
    assert deblur._psf_layer.value is viewer.layers["cell PSF"]
    assert deblur._model.value == "zernike-default"
    assert "'my-scope', which is not available here" in notes["warning"][-1]


def test_opening_another_images_psf_file_chooses_it(two_images, qtbot, notes, tmp_path):
    from napari_deepblur._qt import DeblurWidget
    from napari_deepblur._writer import write_psf_layer

    viewer, a, b = two_images
    psf_a = _identify(qtbot, viewer, a)
    path = tmp_path / "a.psf.tif"
    write_psf_layer(str(path), psf_a.data, {"metadata": psf_a.metadata, "name": psf_a.name})
    deblur = DeblurWidget(viewer)
    deblur._image_layer.value = b
    deblur._psf_file.value = path
    deblur._open_psf_button.native.click()  # an explicit choice of A's PSF for B
    opened = viewer.layers["a"]
    assert deblur._psf_layer.value is opened and deblur._other_estimates.value
    assert notes["error"] == []


def test_a_renamed_image_keeps_its_estimate(two_images, qtbot, notes):
    """Renaming an image in the layer list keeps its PSF as its estimate (it fell back to
    "identify first", re-identifying silently: found in review); another image's PSF that
    happens to carry the new name's prefix is not taken."""
    from napari_deepblur._qt import DeblurWidget

    viewer, a, b = two_images
    psf_a = _identify(qtbot, viewer, a)
    deblur = DeblurWidget(viewer)
    deblur._image_layer.value = a
    assert deblur._psf_layer.value is psf_a
    a.name = "cell A"
    assert deblur._psf_layer.value is psf_a, _shown(deblur._psf_layer)
    assert psf_a.metadata["source"] == "cell A"
    deblur._image_layer.value = b
    deblur._image_layer.value = a
    assert deblur._psf_layer.value is psf_a
    b.name = "A"  # the old name, now another image's: A's PSF stays A's
    deblur._image_layer.value = b
    assert deblur._psf_layer.value is not psf_a
