"""Docks in a real window, driven by their buttons: closing a dock or the window during a
job, double-clicking Run, and docks that fit a laptop screen (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur._napari import RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 60_000


def _a_long_job_image(viewer):
    """An image whose identification and deblurring take seconds on 2 CPU cores."""
    rng = np.random.default_rng(0)
    return viewer.add_image(rng.random((1024, 1024), dtype=np.float32), name="big")


def _start(qtbot, widget):
    widget._device.value = "cpu"
    widget._run_button.native.click()
    qtbot.waitUntil(lambda: widget.state == RunState.RUNNING, timeout=TIMEOUT_MS)
    # in the middle of the job: its tiles are counting (seconds of work left)
    qtbot.waitUntil(
        lambda: "tile" in widget._status.value or widget.state != RunState.RUNNING,
        timeout=TIMEOUT_MS,
    )
    assert widget.state == RunState.RUNNING, widget._status.value


@pytest.mark.parametrize("dock_kind", ["deblur", "panel"])
def test_closing_the_dock_during_a_job_cancels_it(make_napari_viewer, qtbot, notes, dock_kind):
    from napari_deepblur._qt import DeblurWidget, DeepBlurPanel

    viewer = make_napari_viewer()
    _a_long_job_image(viewer)
    dock_widget = DeblurWidget(viewer) if dock_kind == "deblur" else DeepBlurPanel(viewer)
    step = dock_widget if dock_kind == "deblur" else dock_widget._deblur
    dock = viewer.window.add_dock_widget(dock_widget)
    worker = (_start(qtbot, step), step.worker)[1]
    dock.destroyOnClose()  # the dock's close button
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    qtbot.wait(200)  # anything the worker sent is delivered by now
    assert [layer.name for layer in viewer.layers] == ["big"]  # stopped, nothing added
    assert notes["error"] == []


@pytest.mark.parametrize("dock_kind", ["deblur", "panel"])
def test_closing_the_window_during_a_job_raises_nothing(make_napari_viewer, qtbot, dock_kind):
    """With the Qt event loop still running (IPython, Jupyter), closing the window while a
    job runs used to raise in the widgets' slots, which aborts Python (PyQt5's default)."""
    from napari_deepblur._qt import DeblurWidget, DeepBlurPanel

    viewer = make_napari_viewer()
    _a_long_job_image(viewer)
    dock_widget = DeblurWidget(viewer) if dock_kind == "deblur" else DeepBlurPanel(viewer)
    step = dock_widget if dock_kind == "deblur" else dock_widget._deblur
    viewer.window.add_dock_widget(dock_widget)
    worker = (_start(qtbot, step), step.worker)[1]
    viewer.close()  # as the window's close button does, and IPython's viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    qtbot.wait(300)  # pytest-qt fails the test on any exception raised in a slot meanwhile


def test_closing_after_qt_deleted_the_job_s_signals_raises_nothing(make_napari_viewer):
    """At Python's exit Qt may delete a worker's signals before the dock hears it is
    destroyed: closing then must not raise (it did, building the list of signals to
    disconnect)."""
    from napari.qt.threading import create_worker
    from qtpy import sip

    from napari_deepblur._qt import DeblurWidget

    def job():
        yield

    widget = DeblurWidget(make_napari_viewer())
    widget._worker = worker = create_worker(job, _start_thread=False)
    sip.delete(worker.signals)  # as at exit
    widget._on_closed()
    assert widget.worker is None and worker.abort_requested


def test_a_double_click_on_run_does_not_cancel(make_napari_viewer, small_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    layer = viewer.add_image(data.copy(), **kwargs)
    widget = IdentifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._device.value = "cpu"
    widget._run_button.native.click()
    widget._run_button.native.click()  # the second click of a double-click
    assert widget.state == RunState.RUNNING and not widget._run_button.enabled
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)
    assert widget.state == RunState.DONE and f"{layer.name} PSF" in viewer.layers
    assert notes["error"] == []


def test_the_panel_fits_a_900_px_screen_and_scrolls(make_napari_viewer, small_sample, qtbot):
    """After Identify and Deblur the combined panel used to need 1403 px: the window grew
    off a 900 px screen. Its content now scrolls, and long texts wrap at the dock's width."""
    from napari_deepblur._qt import DeepBlurPanel

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 900)
    data, kwargs = small_sample
    viewer.add_image(data.copy(), **kwargs)
    panel = DeepBlurPanel(viewer)
    viewer.window.add_dock_widget(panel)
    for step in (panel._identify, panel._deblur):
        step._device.value = "cpu"
        step._run_button.native.click()
        qtbot.waitUntil(lambda s=step: not s.busy and s.worker is None, timeout=TIMEOUT_MS)
        assert step.state == RunState.DONE
    qtbot.wait(100)
    content = panel.content
    assert content.minimumSizeHint().height() > 900  # taller than the screen…
    assert panel.native.minimumSizeHint().height() < 300  # …but the dock scrolls
    assert window.height() <= 900
    assert content.minimumSizeHint().width() <= panel.native.width()  # nothing cut sideways


def test_a_dock_opened_before_torch_is_imported_fills_in_once_it_is(
    make_napari_viewer, small_sample, qtbot, monkeypatch
):
    """Opening a dock does not wait for torch (imported in a thread): the sampling line and
    the Device choices that need it are filled in when it is there."""
    import threading

    from napari_deepblur._qt import IdentifyWidget, _job

    not_yet = threading.Event()
    monkeypatch.setattr(_job, "_torch_ready", not_yet)
    monkeypatch.setattr(_job, "import_torch_in_background", lambda: None)
    viewer = make_napari_viewer()
    image, kwargs = small_sample
    viewer.add_image(image, **kwargs)
    widget = IdentifyWidget(viewer)
    assert widget._fc_label.value == "…"
    assert list(widget._device.choices) == ["auto", "cpu"]
    not_yet.set()
    qtbot.waitUntil(lambda: "fc = 0.199" in widget._fc_label.value, timeout=3000)


def test_opening_a_dock_imports_no_torch_and_torch_loads_in_a_thread(fresh_python):
    """The docks' modules import without torch (its import would freeze napari for ~1.5 s);
    the background import loads torch's C++ library first, and torch then works."""
    code = (
        "import sys, threading\n"
        "import napari_deepblur._qt as docks\n"
        "from napari_deepblur._qt import _job\n"
        "print('torch' in sys.modules)\n"
        "_job.import_torch_in_background()\n"
        "assert _job._torch_ready.wait(120)\n"
        "import torch\n"
        "x = torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 3, 3))\n"
        "print(float(x[0, 0, 3, 3]))\n"
    )
    assert fresh_python(code).split() == ["False", "9.0"]
