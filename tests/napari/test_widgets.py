"""The dock widgets end to end in a napari viewer (run under ``xvfb-run -a``).

Behaviour only (layers, metadata, notifications, run state, cancel), never the accuracy of
the shipped model.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_deepblur._napari import PSF_FORMAT, RunState

pytestmark = pytest.mark.napari

TIMEOUT_MS = 60_000


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy and widget.worker is None, timeout=TIMEOUT_MS)


def _run(qtbot, widget):
    widget._run_button.native.click()
    _wait_idle(qtbot, widget)


@pytest.fixture
def viewer_with_sample(make_napari_viewer, small_sample):
    viewer = make_napari_viewer()
    data, kwargs = small_sample
    layer = viewer.add_image(data.copy(), **kwargs)
    return viewer, layer


def test_identify_adds_psf_layer(viewer_with_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget

    viewer, layer = viewer_with_sample
    before = layer.data.copy()
    widget = IdentifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._image_layer.value is layer
    # optics prefilled from the sample's metadata
    assert widget._use_optics.value
    assert widget._na.value == pytest.approx(1.4)
    assert widget._wavelength.value == pytest.approx(520)
    assert widget._pixel_size.value == pytest.approx(74)
    assert "fc = 0.199" in widget._fc_label.value
    widget._device.value = "cpu"

    steps = []  # (message, total) of each step, in the order they arrive
    shown = widget._on_yielded

    def on_yielded(step):
        steps.append((step.message, step.total))
        shown(step)

    widget._on_yielded = on_yielded  # (run connects the worker to it)
    widget._run_button.native.click()
    assert widget._progress.max == 0  # busy, not "0 %", before any step counts
    _wait_idle(qtbot, widget)

    assert notes["error"] == [], notes["error"]
    assert widget.state == RunState.DONE
    # the preparation is reported (busy bar) before the tiles count
    assert steps[0] == ("loading the model", 0), steps
    assert any("preparing the image" in text and top == 0 for text, top in steps), steps
    assert steps[-1][1] > 0
    psf = viewer.layers[f"{layer.name} PSF"]
    assert psf.data.shape == (31, 31)
    assert psf.data.sum() == pytest.approx(1.0, abs=1e-4)
    assert list(widget._image_layer.choices) == [layer]  # a PSF is no image to identify
    np.testing.assert_allclose(psf.scale, (74.0, 74.0))
    assert psf.colormap.name == "magma"
    md = psf.metadata
    assert md["format"] == PSF_FORMAT and md["source"] == layer.name
    assert md["optics"]["na"] == pytest.approx(1.4)
    assert len(md["coefficients_waves_rms"]) == len(md["noll_indices"]) == 7
    assert md["estimate"]["model"] == "zernike-default"
    assert {"alpha", "beta"} <= set(md["noise"])
    # the table: one row per aberration, names in words
    rows = widget._table.data.to_list()
    assert [r[0] for r in rows][:3] == ["defocus", "oblique astigmatism", "vertical astigmatism"]
    assert "waves RMS" in widget._summary.value
    # the input is untouched
    np.testing.assert_array_equal(layer.data, before)


def test_layer_choices_follow_a_rename(viewer_with_sample):
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget

    viewer, layer = viewer_with_sample
    identify, deblur = IdentifyWidget(viewer), DeblurWidget(viewer)
    later = viewer.add_image(np.zeros((64, 64), np.float32), name="added later")
    for layer_, new_name in ((layer, "renamed sample"), (later, "renamed later")):
        layer_.name = new_name
        for widget in (identify, deblur):
            combo = widget._image_layer.native
            shown = [combo.itemText(i) for i in range(combo.count())]
            assert new_name in shown, (new_name, shown)


def test_identify_large_image_adds_psf_map(make_napari_viewer, small_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    layer = viewer.add_image(np.tile(data, (3, 3)), **kwargs)  # 384×384
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    widget._augment.value = False
    widget._tile_px.value = 128  # balanced tiles of 128 px → a 3×3 map
    _run(qtbot, widget)
    assert notes["error"] == []
    psf_map = viewer.layers[f"{layer.name} PSF map"]
    assert psf_map.data.shape == (3 * 31, 3 * 31)
    assert len(psf_map.metadata["tiles"]) == 9
    # the map lies over the image
    lo, hi = psf_map.extent.world
    assert lo[0] < 74 * 64 < hi[0] and hi[1] <= 74 * 384 + 74 * 31


def test_identify_current_plane_of_stack(make_napari_viewer, small_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    stack = np.stack([data, data[::-1], data[:, ::-1]])
    kwargs = {**kwargs, "scale": (200.0, 74.0, 74.0), "units": ("nm", "nm", "nm")}
    layer = viewer.add_image(stack, **kwargs)
    viewer.dims.set_current_step(0, 2)
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    _run(qtbot, widget)
    assert notes["error"] == []
    assert f"{layer.name} [2] PSF" in viewer.layers


def test_identify_all_planes_median(make_napari_viewer, small_sample, qtbot, notes):
    from napari_deepblur._qt import IdentifyWidget
    from napari_deepblur._qt._identify import ALL_PLANES_MEDIAN, CURRENT_PLANE

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    stack = np.stack([data, data[::-1], data[:, ::-1]])  # 3 × 128 × 128
    kwargs = {**kwargs, "scale": (200.0, 74.0, 74.0), "units": ("nm", "nm", "nm")}
    layer = viewer.add_image(stack, **kwargs)
    before = layer.data.copy()
    widget = IdentifyWidget(viewer)
    assert not widget._planes.native.isHidden() and widget._planes.value == CURRENT_PLANE
    widget._planes.value = ALL_PLANES_MEDIAN
    widget._device.value = "cpu"
    widget._augment.value = False
    statuses = []  # the message of every step, in the order they arrive
    shown = widget._on_yielded
    widget._on_yielded = lambda step: (statuses.append(step.message), shown(step))
    _run(qtbot, widget)

    assert notes["error"] == [], notes["error"]
    assert widget.state == RunState.DONE
    # the status names the planes as the slider counts them (it said "plane (0,)")
    assert any("identifying plane 1 of 3" in s for s in statuses), statuses
    assert not any("(0,)" in s for s in statuses)
    # one PSF layer, no PSF map; its metadata says which planes were used
    added = [lay for lay in viewer.layers if lay is not layer]
    assert [lay.name for lay in added] == [f"{layer.name} median PSF"]
    psf = added[0]
    assert psf.data.shape == (31, 31)
    md = psf.metadata
    assert md["format"] == PSF_FORMAT
    assert md["stack_mode"] == "median" and md["planes"] == [[0], [1], [2]]
    assert len(md["coefficients_waves_rms"]) == 7
    np.testing.assert_allclose(psf.scale, (74.0, 74.0))
    assert "median of 3 planes" in widget._status.value
    assert widget._progress.max == 3  # progress counts planes
    # the input is untouched
    np.testing.assert_array_equal(layer.data, before)

    # a 2D image has no choice of planes
    viewer.add_image(data, name="flat")
    widget._image_layer.value = viewer.layers["flat"]
    assert widget._planes.native.isHidden()


def test_deblur_adds_layer_and_keeps_input(viewer_with_sample, qtbot, notes):
    from napari_deepblur._qt import DeblurWidget
    from napari_deepblur._qt._deblur import _grid

    viewer, layer = viewer_with_sample
    layer.translate = (10.0, 20.0)
    before = layer.data.copy()
    widget = DeblurWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._image_layer.value is layer
    assert widget._psf_layer.value is None  # "identify first"
    widget._device.value = "cpu"
    widget._strength.value = 1.5

    _run(qtbot, widget)

    assert notes["error"] == [], notes["error"]
    assert widget.state == RunState.DONE
    out = viewer.layers[f"{layer.name} deblurred"]
    assert out.data.shape == layer.data.shape and out.data.dtype == np.float32
    np.testing.assert_allclose(out.scale, layer.scale)
    np.testing.assert_allclose(out.translate, layer.translate)
    assert out.metadata["strength"] == 1.5
    # identify-first also shows the PSF it used, and selects it for the next run
    psf = viewer.layers[f"{layer.name} PSF"]
    assert widget._psf_layer.value is psf
    np.testing.assert_array_equal(layer.data, before)

    # compare side by side: grid, only the two visible, same contrast limits; and back
    widget._compare_button.native.click()
    assert _grid(viewer).enabled
    assert [lay.name for lay in viewer.layers if lay.visible] == [layer.name, out.name] or [
        lay.name for lay in viewer.layers if lay.visible
    ] == [out.name, layer.name]
    np.testing.assert_allclose(layer.contrast_limits, out.contrast_limits)
    widget._compare_button.native.click()
    assert not _grid(viewer).enabled and psf.visible

    # deblur again with the PSF layer and a manual noise level
    widget._noise_override.value = True
    assert widget._noise_alpha.value == pytest.approx(psf.metadata["noise"]["alpha"], abs=1e-3)
    widget._noise_alpha.value = 0.0
    widget._noise_beta.value = 0.05
    _run(qtbot, widget)
    assert notes["error"] == []
    deblurred = [lay for lay in viewer.layers if lay.name.startswith(f"{layer.name} deblurred")]
    assert len(deblurred) == 2
    assert deblurred[-1].metadata["noise"] == {"alpha": 0.0, "beta": 0.05}
    np.testing.assert_array_equal(layer.data, before)


def _rotation_yx(degrees: float) -> np.ndarray:
    """A 3×3 rotation in the YX plane."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def test_deblur_all_planes(make_napari_viewer, small_sample, qtbot, notes):
    """Identify first on the plane with the most contrast (plane 0 is empty); the result
    lies exactly over the (rotated, moved) image, and the PSF is turned like it."""
    from napari_deepblur._qt import DeblurWidget

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    stack = np.stack([np.zeros((96, 96)), data[32:, 32:]]).astype(np.float32)
    moved = np.eye(4)
    moved[1:3, 3] = (500.0, -200.0)
    layer = viewer.add_image(
        stack, name="stack", scale=(300.0, 74.0, 74.0), rotate=_rotation_yx(30), affine=moved
    )
    widget = DeblurWidget(viewer)
    assert not widget._planes.native.isHidden()  # shown for stacks
    widget._planes.value = "all planes"
    widget._device.value = "cpu"
    _run(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    out = viewer.layers["stack deblurred"]
    assert out.data.shape == stack.shape
    np.testing.assert_allclose(out.scale, layer.scale)
    for point in [(0, 0, 0), (1, 90, 5), (1, 3, 80)]:
        np.testing.assert_allclose(out.data_to_world(point), layer.data_to_world(point))
    psf = viewer.layers["stack [1] PSF"]
    assert psf.metadata["planes"] == [[1]] and widget._psf_layer.value is psf
    assert "identified on plane [1]" in widget._status.value
    # the PSF sits right of the image (8 px apart), on its pixel grid
    for i, j in [(0, 0), (30, 30)]:
        beside = layer.data_to_world((1, i, 96 + 8 + j))[-2:]
        np.testing.assert_allclose(psf.data_to_world((i, j)), beside, atol=1e-6)


def test_layer_geometry_of_a_plane_keeps_rotation_shear_and_affine():
    from napari.layers import Image

    from napari_deepblur._qt._job import layer_geometry

    affine = np.eye(4)
    affine[1:3, 1:] = [[0.9, 0.2, 40.0], [-0.1, 1.1, -7.0]]
    layer = Image(
        np.zeros((3, 64, 64)),
        scale=(300.0, 74.0, 60.0),
        translate=(10.0, 100.0, -50.0),
        rotate=_rotation_yx(25),
        shear=[0.0, 0.0, 0.3],  # Y with X only
        affine=affine,
    )
    plane = Image(np.zeros((64, 64)), **layer_geometry(layer))
    stack = Image(np.zeros((3, 64, 64)), **layer_geometry(layer, axes=3))
    for point in [(0, 0, 0), (2, 63, 5), (1, 7, 40)]:
        np.testing.assert_allclose(stack.data_to_world(point), layer.data_to_world(point))
        np.testing.assert_allclose(
            plane.data_to_world(point[1:]), layer.data_to_world(point)[1:], atol=1e-9
        )
    # without a transform, no affine
    assert "affine" not in layer_geometry(Image(np.zeros((64, 64)), scale=(2.0, 2.0)))


def test_deblur_preselects_only_the_psf_of_its_image(make_napari_viewer):
    """Names that start the same ("cell", "cell 2", "cell [1]") are different images."""
    from napari_deepblur._qt import DeblurWidget

    viewer = make_napari_viewer()
    for name in ("cell", "cell 2", "cell [1]"):
        viewer.add_image(np.zeros((64, 64), np.float32), name=name)
    for source in ("cell 2", "cell [1]"):
        metadata = {"format": PSF_FORMAT, "source": source}
        viewer.add_image(np.ones((31, 31), np.float32), name=f"{source} PSF", metadata=metadata)
    widget = DeblurWidget(viewer)
    for image, expected in [("cell 2", "cell 2 PSF"), ("cell", None), ("cell [1]", "cell [1] PSF")]:
        widget._psf_layer.value = None
        widget._image_layer.value = viewer.layers[image]
        chosen = widget._psf_layer.value
        assert (chosen and chosen.name) == expected, image


@pytest.mark.parametrize("napari_relays_warnings", [False, True])
def test_a_constant_plane_is_copied_with_one_warning(
    make_napari_viewer, small_sample, qtbot, notes, monkeypatch, napari_relays_warnings
):
    from napari.utils.notifications import notification_manager

    from napari_deepblur._qt import DeblurWidget, _job

    if napari_relays_warnings:  # as napari versions whose worker relay is connected do
        napari_create_worker = _job.create_worker

        def create_relaying_worker(*args, **kwargs):
            worker = napari_create_worker(*args, **kwargs)
            worker.warned.connect(worker._relay_warning)
            return worker

        monkeypatch.setattr(_job, "create_worker", create_relaying_worker)
    relayed = []
    monkeypatch.setattr(notification_manager, "receive_warning", lambda *a: relayed.append(a))

    viewer = make_napari_viewer()
    data, kwargs = small_sample
    stack = np.stack([data, np.full_like(data, 0.2)]).astype(np.float32)
    layer = viewer.add_image(stack.copy(), name="stack", scale=(300.0, 74.0, 74.0))
    widget = DeblurWidget(viewer)
    widget._planes.value = "all planes"
    widget._device.value = "cpu"
    _run(qtbot, widget)
    assert notes["error"] == []
    np.testing.assert_array_equal(viewer.layers["stack deblurred"].data[1], stack[1])
    np.testing.assert_array_equal(layer.data, stack)  # the input is untouched
    qtbot.waitUntil(lambda: bool(notes["warning"]), timeout=5000)
    qtbot.wait(50)  # a second notification, if any, would arrive by now
    assert len(notes["warning"]) == 1 and relayed == []
    assert "plane 2 of 2 is constant: copied unchanged" in notes["warning"][0]


def _slow_generator(steps=400, delay=0.01):
    from napari_deepblur.pipeline import Progress

    def slow(*args, **kwargs):
        for i in range(steps):
            time.sleep(delay)
            yield Progress(i + 1, steps, f"step {i + 1}")
        raise AssertionError("the job should have been cancelled")

    return slow


def test_a_step_arriving_while_napari_draws_the_last_is_not_overwritten(viewer_with_sample):
    """napari's activity bar processes Qt events when it is updated, so the worker's next
    step can be shown in the middle of showing the previous one: the newer step must stay."""
    from napari.utils import progress
    from qtpy.QtCore import QTimer

    from napari_deepblur._qt import IdentifyWidget
    from napari_deepblur.pipeline import Progress

    viewer, _ = viewer_with_sample
    widget = IdentifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._run_state.set(RunState.RUNNING)
    widget._pbar = pbar = progress(total=0, desc=widget.action)
    arrived_inside = []

    def newer_step():
        arrived_inside.append(widget._updating_activity)
        widget._on_yielded(Progress(1, 4, "tile 1 of 4"))

    QTimer.singleShot(0, newer_step)
    widget._on_yielded(Progress(0, 0, "loading the model"))
    assert arrived_inside == [True]  # it did arrive while the older step was being shown
    assert widget._status.value == "Identify blur: tile 1 of 4"
    assert (widget._progress.value, widget._progress.max) == (1, 4)
    assert (pbar.n, pbar.total) == (1, 4) and "tile 1 of 4" in pbar.desc
    pbar.close()
    widget._pbar = None
    widget._run_state.set(RunState.DONE)


def test_a_library_deprecation_warning_is_not_shown_to_the_user(
    viewer_with_sample, qtbot, notes, monkeypatch
):
    """A job's warnings become notifications, but not a library's DeprecationWarning
    (ome-zarr's "Call to deprecated class Scaler" reached users): nothing to act on."""
    import warnings

    from napari_deepblur._qt import IdentifyWidget
    from napari_deepblur.pipeline import Progress

    def job(*args, **kwargs):
        warnings.warn("Call to deprecated class Scaler.", DeprecationWarning, stacklevel=1)
        warnings.warn("refinement skipped: the image is too small", UserWarning, stacklevel=1)
        yield Progress(1, 1, "tile 1 of 1")
        raise ValueError("stopped here")

    monkeypatch.setattr("napari_deepblur.pipeline.iter_identify", job)
    viewer, _ = viewer_with_sample
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    _run(qtbot, widget)
    qtbot.waitUntil(lambda: bool(notes["warning"]), timeout=5000)
    qtbot.wait(50)
    assert notes["warning"] == ["refinement skipped: the image is too small"]


def test_an_image_removed_during_its_job_is_said(viewer_with_sample, qtbot, notes):
    """The image deleted while Identify runs: the PSF is added all the same, and a
    notification says so (it appeared beside nothing, without a word)."""
    from napari_deepblur._qt import IdentifyWidget

    viewer, layer = viewer_with_sample
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    widget._run_button.native.click()
    viewer.layers.remove(layer)  # (before any event: the job has not returned)
    _wait_idle(qtbot, widget)
    assert widget.state == RunState.DONE and notes["error"] == []
    assert f"'{layer.name}' was removed from the viewer" in notes["info"][-1]
    assert viewer.layers[-1].name == f"{layer.name} PSF"


def test_cancel_adds_no_layer(viewer_with_sample, qtbot, notes, monkeypatch):
    from napari_deepblur import _napari
    from napari_deepblur._qt import IdentifyWidget

    monkeypatch.setattr("napari_deepblur.pipeline.iter_identify", _slow_generator())
    viewer, layer = viewer_with_sample
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    worker = widget.run()
    assert worker is not None and widget.state == RunState.RUNNING
    assert widget._run_button.text == "Cancel"
    qtbot.waitUntil(lambda: widget._progress.value >= 3, timeout=TIMEOUT_MS)
    # a second Run while running starts nothing
    assert widget.run() is None and widget.worker is worker
    assert notes["info"] and "already running" in notes["info"][-1]
    qtbot.waitUntil(lambda: widget._run_button.enabled, timeout=TIMEOUT_MS)  # after 0.6 s
    widget._run_button.native.click()  # Cancel
    assert widget.state in (RunState.CANCELLING, RunState.IDLE)
    _wait_idle(qtbot, widget)
    assert widget.state == RunState.IDLE
    assert widget._run_button.text == "Identify blur"
    assert [lay.name for lay in viewer.layers] == [layer.name]
    assert notes["error"] == []
    assert _napari  # imported for monkeypatch's target


def test_cancel_deblur(viewer_with_sample, qtbot, notes, monkeypatch):
    from napari_deepblur._qt import DeblurWidget

    monkeypatch.setattr("napari_deepblur.pipeline.iter_identify", _slow_generator())
    viewer, layer = viewer_with_sample
    widget = DeblurWidget(viewer)
    widget._device.value = "cpu"
    widget.run()
    qtbot.waitUntil(lambda: widget._progress.value >= 2, timeout=TIMEOUT_MS)
    widget.cancel()
    _wait_idle(qtbot, widget)
    assert widget.state == RunState.IDLE
    assert len(viewer.layers) == 1 and notes["error"] == []


@pytest.mark.parametrize(
    "make_layer, expected",
    [
        (lambda v, d: v.add_image(np.stack([d] * 3, -1), rgb=True), "RGB"),
        (lambda v, d: v.add_labels((d > d.mean()).astype(np.int32)), "Labels"),
        (lambda v, d: v.add_image(d[:16, :16]), "too small"),
    ],
    ids=["rgb", "labels", "too-small"],
)
def test_bad_layers_notify(make_napari_viewer, small_sample, qtbot, notes, make_layer, expected):
    from napari_deepblur._qt import DeblurWidget, IdentifyWidget

    viewer = make_napari_viewer()
    data, _ = small_sample
    layer = make_layer(viewer, data)
    before = np.array(layer.data, copy=True)
    for cls in (IdentifyWidget, DeblurWidget):
        widget = cls(viewer)
        widget._image_layer.value = layer
        assert widget.run() is None
        assert widget.state == RunState.FAILED
        assert expected in notes["error"][-1]
    assert len(viewer.layers) == 1
    np.testing.assert_array_equal(layer.data, before)


def test_errors_in_the_worker_notify(viewer_with_sample, qtbot, notes, monkeypatch):
    """fc above Nyquist, a missing model file, CUDA out of memory: a sentence each."""
    import torch

    from napari_deepblur._qt import IdentifyWidget

    viewer, layer = viewer_with_sample
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"

    widget._pixel_size.value = 200.0  # NA 1.4, 520 nm: fc = 0.54 > 0.25
    assert "Nyquist" in widget._fc_label.value
    _run(qtbot, widget)
    assert widget.state == RunState.FAILED
    assert "Nyquist" in notes["error"][-1] and "pixel size" in notes["error"][-1]
    widget._pixel_size.value = 74.0

    widget._model.value = "model file…"
    widget._model_file.value = "/nonexistent/model.safetensors"
    _run(qtbot, widget)
    assert "model could not be loaded" in notes["error"][-1]
    widget._model.value = "zernike-default"

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        yield  # a generator

    monkeypatch.setattr("napari_deepblur.pipeline.iter_identify", oom)
    _run(qtbot, widget)
    assert widget.state == RunState.FAILED
    assert "GPU ran out of memory" in notes["error"][-1] and "cpu" in notes["error"][-1]
    assert len(notes["error"]) == 3
    assert [lay.name for lay in viewer.layers] == [layer.name]


def test_export_path_follows_the_latest_psf(
    make_napari_viewer, small_sample, qtbot, notes, tmp_path, monkeypatch
):
    """Identify A, then B: the export path names B's PSF, in the folder chosen for A's; "~"
    is the home folder; a folder that does not exist is said so (nothing written)."""
    import json
    from pathlib import Path

    from napari_deepblur._qt import IdentifyWidget

    viewer = make_napari_viewer()
    data, _ = small_sample
    a = viewer.add_image(data.copy(), name="A")
    b = viewer.add_image(data[::-1].copy(), name="B")
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    widget._augment.value = False
    widget._image_layer.value = a
    _run(qtbot, widget)
    assert Path(widget._export_path.value).name == "A_PSF.psf.tif"
    widget._export_path.value = tmp_path / "A_PSF.psf.tif"  # the user picks a folder
    widget._image_layer.value = b
    _run(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    assert Path(widget._export_path.value) == tmp_path / "B_PSF.psf.tif"
    widget._export_button.native.click()
    assert json.loads((tmp_path / "B_PSF.psf.json").read_text())["source"] == "B"

    monkeypatch.setenv("HOME", str(tmp_path))  # a typed "~/…" is the home folder
    assert widget.export_psf("~/home.psf.tif") == [
        str(tmp_path / "home.psf.tif"),
        str(tmp_path / "home.psf.json"),
    ]

    missing = tmp_path / "missing"
    assert widget.export_psf(missing / "B.psf.tif") == []
    assert notes["error"][-1] == (
        f"Export PSF failed: the folder {missing} does not exist: choose an existing folder."
    )
    assert not missing.exists()


def test_export_psf_and_read_back(viewer_with_sample, qtbot, notes, tmp_path):
    """Identify → Export (the writer) → open (the reader): the same PSF and metadata."""
    import npe2

    from napari_deepblur._qt import DeblurWidget, IdentifyWidget
    from napari_deepblur.io import to_jsonable

    viewer, layer = viewer_with_sample
    widget = IdentifyWidget(viewer)
    widget._device.value = "cpu"
    widget._augment.value = False
    _run(qtbot, widget)
    psf = viewer.layers[f"{layer.name} PSF"]

    # the widget's Export button: TIFF + JSON, never overwrites
    target = tmp_path / "sample.psf.tif"
    widget._export_path.value = target
    widget._export_button.native.click()
    assert target.is_file() and target.with_suffix(".json").is_file()
    widget._export_button.native.click()
    assert "exists" in notes["error"][-1] and "another file name" in notes["error"][-1]
    # a name without .psf: written as one, so that our reader opens it (found in review)
    widget._export_path.value = tmp_path / "plain.tif"
    widget._export_button.native.click()
    assert (tmp_path / "plain.psf.tif").is_file() and (tmp_path / "plain.psf.json").is_file()
    assert not (tmp_path / "plain.tif").exists()
    [plain] = viewer.open(str(tmp_path / "plain.psf.tif"), plugin="napari-deepblur")
    assert plain.metadata["format"] == PSF_FORMAT

    # napari's writer (File > Save Selected Layers… as *.psf.tif)
    viewer.layers.selection.active = psf
    saved = viewer.layers.save(str(tmp_path / "saved.psf.tif"), selected=True)
    assert [p.rsplit("/", 1)[-1] for p in saved] == ["saved.psf.tif", "saved.psf.json"]
    written = npe2.write(str(tmp_path / "again.psf.tif"), [psf])
    assert written and written[0].endswith("again.psf.tif")

    # the reader: drag and drop / File > Open on the .psf.tif
    opened = viewer.open(str(target), plugin="napari-deepblur")
    [back] = opened
    np.testing.assert_allclose(back.data, psf.data, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(back.scale, psf.scale)
    expected = to_jsonable(psf.metadata)
    for key, value in expected.items():
        assert back.metadata[key] == value, key

    # a read-back PSF is offered to Deblur, and deblurring with it works
    deblur = DeblurWidget(viewer)
    assert deblur._psf_layer.value is back  # the latest PSF of this image, preselected
    deblur._device.value = "cpu"
    _run(qtbot, deblur)
    assert notes["error"][1:] == []
    assert f"{layer.name} deblurred" in viewer.layers


def test_the_optics_of_our_tiff_opened_by_naparis_reader_are_prefilled(
    make_napari_viewer, small_sample, tmp_path
):
    from napari_deepblur import io
    from napari_deepblur._qt import IdentifyWidget

    data, _ = small_sample
    optics = {"na": 1.2, "wavelength_nm": 600.0, "pixel_size_nm": 90.0}
    path = io.write_image(
        tmp_path / "raw.tif", data, pixel_size_nm=90.0, metadata={"optics": optics}
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari")  # napari's reader: no optics, scale 1
    assert not layer.metadata.get("optics")
    widget = IdentifyWidget(viewer)
    assert widget._image_layer.value is layer
    assert widget._use_optics.value
    assert (widget._na.value, widget._wavelength.value) == (pytest.approx(1.2), pytest.approx(600))
    assert widget._pixel_size.value == pytest.approx(90)


def test_optics_typed_for_an_image_come_back_with_it(viewer_with_sample):
    """Optics typed for an image that states none stay with it: choosing another image
    fills in that one's, choosing the first again gives back what was typed."""
    from napari_deepblur._qt import IdentifyWidget

    viewer, sample = viewer_with_sample  # states NA 1.4, 520 nm, 74 nm
    plain = viewer.add_image(sample.data.copy(), name="no optics")
    widget = IdentifyWidget(viewer)
    widget._image_layer.value = plain
    assert not widget._use_optics.value  # nothing stated: assumed
    widget._use_optics.value = True
    widget._na.value, widget._wavelength.value, widget._pixel_size.value = 1.0, 540, 108
    typed = widget._fc_label.value
    widget._image_layer.value = sample
    assert widget._use_optics.value and widget._pixel_size.value == pytest.approx(74)
    widget._image_layer.value = plain
    assert widget._use_optics.value, "the optics typed for this image were forgotten"
    assert (widget._na.value, widget._wavelength.value, widget._pixel_size.value) == (
        pytest.approx(1.0),
        pytest.approx(540),
        pytest.approx(108),
    )
    assert widget._fc_label.value == typed
    widget._image_layer.value = sample  # its own, filled in again (nothing typed for it)
    assert widget._pixel_size.value == pytest.approx(74) and widget._na.value == 1.4


def test_choosing_a_model_reads_only_its_header(viewer_with_sample):
    """Changing the Model combo updates the sampling text and the field options from the
    file's header: no weights are loaded on the UI thread (it stalled the UI 0.45 s)."""
    from napari_deepblur import models
    from napari_deepblur._qt import IdentifyWidget

    viewer, _ = viewer_with_sample
    widget = IdentifyWidget(viewer)
    models._load_cached.cache_clear()
    widget._model.value = "field-default"
    assert not widget._kernel_grid.native.isHidden()
    assert "model: 0.200" in widget._fc_label.value
    widget._model.value = "zernike-default"
    assert widget._kernel_grid.native.isHidden()
    assert models._load_cached.cache_info().currsize == 0  # nothing loaded
