"""What the docks say: the size error agrees with the guide and the models, the coefficient
table has fixed decimals, and an unsure estimate is called so (run under ``xvfb-run -a``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from napari_deepblur._napari import DEBLUR_MIN_PX, IDENTIFY_MIN_PX, RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 60_000
GUIDE = Path(__file__).parents[2] / "docs" / "user-guide.md"


def _run(qtbot, widget):
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


def _shown(table) -> list[list[str]]:
    """The table's cells as the user sees them (the text its delegate displays)."""
    from qtpy.QtCore import QLocale

    native = table.native
    delegate, locale = native.itemDelegate(), QLocale()
    return [
        [delegate.displayText(native.item(r, c).text(), locale) for c in range(2)]
        for r in range(native.rowCount())
    ]


def test_the_size_minimums_are_the_models_and_the_guides():
    from napari_deepblur.models import load_model
    from napari_deepblur.optics.noise import NOISE_MIN_SIDE_PX

    for name in ("zernike-default", "field-default"):
        model = load_model(name, device="cpu")
        assert model.identification.config.min_size == IDENTIFY_MIN_PX
        assert max(model.family.kernel_size + 1, NOISE_MIN_SIDE_PX) == DEBLUR_MIN_PX
    [row] = [line for line in GUIDE.read_text().splitlines() if "is too small*" in line]
    assert f"{IDENTIFY_MIN_PX} px" in row and f"{DEBLUR_MIN_PX} px" in row


def test_the_size_error_names_both_minimums(make_napari_viewer, notes):
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((16, 20)), name="tiny")
    for cls in (IdentifyWidget, DeblurWidget):
        widget = cls(viewer)
        widget._run_button.native.click()
        assert widget.state == RunState.FAILED
        message = notes["error"][-1]
        assert "(16×20 px) is too small" in message
        assert f"{IDENTIFY_MIN_PX} px a side" in message and f"{DEBLUR_MIN_PX} px" in message


def test_the_gamma_table_has_fixed_decimals(make_napari_viewer, small_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    layer = viewer.add_image(data.copy(), **kwargs)
    widget = IdentifyWidget(viewer)
    widget._model.value = "field-default"
    widget._device.value = "cpu"
    widget._augment.value = False
    _run(qtbot, widget)
    assert widget.state == RunState.DONE, notes["error"]
    shown = [row[1] for row in _shown(widget._table)]
    assert len(shown) == 16
    fixed = re.compile(r"^([+-]\d+\.\d{3}|0\.000)$")
    assert all(fixed.match(text) for text in shown), shown
    # a γ that rounds to zero, negative or not, is "0.000"
    metadata = dict(viewer.layers[f"{layer.name} PSF"].metadata)
    estimate = dict(metadata["estimate"])
    estimate["coefficients"] = [-3e-5, 2.7e-2, -1.474, *estimate["coefficients"][3:]]
    widget.show_estimate({**metadata, "estimate": estimate})
    shown = [row[1] for row in _shown(widget._table)]
    assert shown[:3] == ["0.000", "+0.027", "-1.474"]


def test_an_unsure_estimate_is_called_uncertain(make_napari_viewer):
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    widget = IdentifyWidget(viewer)
    widget.show_estimate(
        {
            "noll_indices": [4, 8, 5],
            "coefficients_waves_rms": [0.147, -0.116, 0.004],
            "uncertainty_waves_rms": [0.02, 0.09, 0.003],
        }
    )
    shown = dict(_shown(widget._table))
    assert shown["defocus"] == "+0.147 ± 0.020"  # sure: the spread is small next to it
    assert shown["horizontal coma"] == "-0.116 ± 0.090 ?"
    assert shown["oblique astigmatism"] == "+0.004 ± 0.003"  # small, and surely small
    table = widget._table.native
    unsure, sure = table.item(1, 1), table.item(0, 1)  # rows in Noll order: 4, 8, 5
    assert "at least half the value" in unsure.toolTip() and not sure.toolTip()
    assert unsure.foreground().color() != sure.foreground().color()  # greyed
    assert "Uncertain (?, greyed): horizontal coma" in widget._summary.value


def test_the_coefficient_table_fits_the_dock(make_napari_viewer, qtbot):
    """In a 1600×900 window every column of the table shows without scrolling sideways,
    with the longest terms and uncertain values of a space-varying estimate too."""
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 900)
    widget = IdentifyWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.show_estimate(
        {
            "noll_indices": [4, 5, 6, 7, 8, 9, 10],
            "coefficients_waves_rms": [0.25, -0.011, 0.004, 0.021, -0.003, 0.009, -0.006],
            "uncertainty_waves_rms": [0.036, 0.043, 0.028, 0.060, 0.063, 0.026, 0.020],
        }
    )
    table = widget._table.native
    qtbot.waitUntil(lambda: table.isVisible(), timeout=3000)
    qtbot.wait(50)
    assert table.horizontalScrollBar().maximum() == 0, "the table scrolls sideways"


@pytest.mark.parametrize("dock", ["IdentifyWidget", "DeblurWidget", "DeepBlurPanel"])
def test_a_long_layer_name_does_not_cut_the_dock_off(make_napari_viewer, qtbot, dock):
    """A layer named as microscope software names files: the docks' combo boxes do not
    grow with it (the content was 663 px wide in a 611 px scroll area: cut off)."""
    from napari_deepblur import _qt

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 900)
    name = "2024-05-17 HeLa actin phalloidin 63x oil widefield stack 03 channel 2 raw"
    viewer.add_image(np.zeros((3, 128, 128), np.float32), name=name)
    widget = getattr(_qt, dock)(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    qtbot.wait(100)
    needed = max(widget.content.width(), widget.content.minimumSizeHint().width())
    assert needed <= widget.native.viewport().width()
    assert viewer.window._qt_window.width() == 1600


@pytest.mark.parametrize("dock", ["DeblurWidget", "CalibrateWidget"])
def test_room_left_in_a_dock_goes_below_its_controls(make_napari_viewer, qtbot, dock):
    """A dock taller than its controls keeps them together at the top (the room was spread
    between them: wide gaps around a status line)."""
    from napari_deepblur import _qt

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 900)
    viewer.add_image(np.zeros((128, 128), np.float32), name="image")
    widget = getattr(_qt, dock)(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget._status.value = "a status line"
    qtbot.wait(100)
    layout = widget.content.layout()
    items = [layout.itemAt(i) for i in range(layout.count())]
    shown = [item.widget() for item in items if item.widget() and item.widget().isVisible()]
    bottom = max(w.geometry().bottom() for w in shown)
    assert widget.native.viewport().height() - bottom > 200  # room below, in a 900 px window
    for above, below in zip(shown, shown[1:], strict=False):
        gap = below.geometry().top() - above.geometry().bottom()
        assert gap < 3 * max(layout.spacing(), 6) + 20, (above, below, gap)
