"""A scripted walk through the plugin in a real napari window, clicking its buttons as a new
user does, and measuring what the user would feel: exceptions, error notifications, the
longest stall of the Qt main thread (a 50 ms timer records the longest gap between its
ticks, per step) and the window's height (a laptop screen: 900 px).

Steps: open the synthetic sample; open "Identify blur and deblur" from the Plugins menu;
double-click "Identify blur"; Deblur; Identify with the space-varying model; open the actin
sample, switch both docks to it, identify and deblur it; Compare side by side; change the
Identify model and back; export the PSF and reopen it (as File › Open does); open
"Calibrate from beads" on the shipped bead plane (``tests/data/beads_confocal_plane.tif``,
and any ``--beads`` files) and Calibrate with the defaults (on a stack that fails on the
plane shown, move the slider to the plane the message names and calibrate again); finally
leave the Compare grid, start a Deblur on a 1024² image and close the window during the job.

Run (about 30 s on 2 CPU cores)::

    xvfb-run -a -s "-screen 0 1600x900x24" python docs/experiments/napari_walk.py \\
        [--beads /path/to/more_beads.tif ...] [--why] [--profile STEP ...] \\
        [--napari-alone | --compare]

Prints one line per step (seconds, longest main-thread gap in ms, outcome) and a summary;
exits 1 when an exception was raised, an error was shown (a bead stack opened on a plane
without beads shows one, by design), a step failed or the window grew taller than 900 px.
Stalls over 200 ms are flagged ("STALL") but do not fail the run. ``--why`` samples the
main thread's stack every 20 ms while it is stalled and prints where, per step (a stall in
C code that holds the GIL is not sampled); ``--profile STEP …`` prints a cProfile of the
main thread during the named steps (the plugin's own functions listed apart).

What napari itself costs matters here: under Xvfb, OpenGL is Mesa's software renderer, and
napari's first image layer, first points layer, grid and closing each take 0.2–0.6 s on 2
CPU cores with no plugin at all. ``--napari-alone`` walks the same steps with napari alone
(the same kinds of layers added one at a time, a dock of ~100 magicgui widgets, napari's own
TIFF reader, the window closed with as many layers); ``--compare`` runs both walks and
prints their gaps side by side: the plugin's own share of a stall is the difference.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEAD_PLANE = ROOT / "tests" / "data" / "beads_confocal_plane.tif"
WINDOW = (1600, 900)
STALL_MS = 200
TIMER_MS = 50


class GapMonitor:
    """A 50 ms QTimer on the main thread; the longest gap between its ticks per step is how
    long the UI was frozen (a tick is late when the event loop is blocked)."""

    def __init__(self, why: bool = False) -> None:
        from qtpy.QtCore import QTimer

        self.step = "start"
        self.worst: dict[str, float] = {}
        #: with ``why``: per step, where the main thread was while a tick was over 100 ms late
        self.stacks: dict[str, Counter] = {}
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(TIMER_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        if why:
            main = threading.get_ident()
            threading.Thread(target=self._sample, args=(main,), daemon=True).start()

    def _sample(self, main: int) -> None:
        """Every 20 ms: if the main thread is stalled (no tick for 100 ms), note where: the
        innermost frame of our code (the plugin or this walk) and the 3 innermost frames."""
        while True:
            time.sleep(0.02)
            if time.perf_counter() - self._last > 0.1:
                frame = sys._current_frames().get(main)
                if frame is None:
                    continue
                calls = traceback.extract_stack(frame)[::-1]
                ours = next(
                    (c for c in calls if "napari_deepblur" in c.filename or "walk" in c.filename),
                    None,
                )
                where = " < ".join(
                    f"{c.name} ({Path(c.filename).name}:{c.lineno})" for c in calls[:3]
                )
                if ours is not None:
                    where += f"  [ours: {ours.name} ({Path(ours.filename).name}:{ours.lineno})]"
                self.stacks.setdefault(self.step, Counter())[where] += 1

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000
        self._last = now
        self.worst[self.step] = max(self.worst.get(self.step, 0.0), gap)

    def begin(self, step: str) -> None:
        self._tick()  # a gap before this step belongs to the previous one
        self.step = step
        self.worst.setdefault(step, 0.0)


class Walk:
    def __init__(self, viewer, monitor: GapMonitor) -> None:
        self.viewer = viewer
        self.monitor = monitor
        self.rows: list[tuple[str, float, float, str]] = []
        self.failures: list[str] = []
        self.max_height = 0
        #: names of the steps to profile (cProfile of the main thread, ``--profile``)
        self.profile: set[str] = set()

    def pump(self, seconds: float) -> None:
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
            self._height()

    def wait(self, condition, timeout: float = 120.0) -> bool:
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > end:
                return False
            QApplication.processEvents()
            time.sleep(0.005)
            self._height()
        return True

    def _height(self) -> None:
        window = getattr(self.viewer.window, "_qt_window", None)  # (None once closed)
        if window is not None and not _deleted(window):
            self.max_height = max(self.max_height, window.frameGeometry().height())

    def run_job(self, widget, double_click: bool = False) -> str:
        """Click the dock's Run button (twice 150 ms apart for a double-click), wait for
        the job to end and for its layers to be added; returns the dock's status."""
        widget._run_button.native.click()
        if double_click:
            self.pump(0.15)
            widget._run_button.native.click()
        self.wait(lambda: not widget.busy and widget.worker is None)
        self.pump(0.3)  # what the result does after the job (layers, plots) is measured too
        return f"{widget.state.value}: {widget._status.value}"

    def step(self, name: str, action) -> None:
        key = f"{len(self.rows)}: {name}"  # (a name may come twice)
        self.monitor.begin(key)
        start = time.perf_counter()
        profiler = cProfile.Profile() if name in self.profile else None
        if profiler is not None:
            profiler.enable()
        try:
            outcome = action() or ""
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the walk goes on
            outcome = f"FAILED {type(exc).__name__}: {exc}"
            self.failures.append(f"{name}: {outcome}")
            traceback.print_exc()
        self.pump(0.1)
        if profiler is not None:
            profiler.disable()
            print(f"--- profile of '{name}' (main thread) ---")
            stats = pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative")
            stats.print_stats(20)
            stats.print_stats("napari_deepblur", 15)  # the plugin's own functions
        seconds = time.perf_counter() - start
        gap = self.monitor.worst.get(key, 0.0)
        self.rows.append((name, seconds, gap, outcome))
        flag = "  STALL" if gap > STALL_MS else ""
        text = outcome if len(outcome) < 200 else outcome[:100] + " … " + outcome[-100:]
        print(f"{name:<34} {seconds:6.1f} s  gap {gap:5.0f} ms{flag}  {text}", flush=True)


def _deleted(qobject) -> bool:
    try:
        qobject.objectName()
    except RuntimeError:
        return True
    return False


def napari_alone(viewer, walk: Walk, tmp: Path) -> None:
    """The walk's steps with napari alone: the same kinds of layers (the samples' data, a
    31² PSF beside the image, the field maps, points with text, the bead plane) added, the
    same grid, TIFF opened with napari's own reader, a dock of ~100 magicgui widgets, the
    window closed with as many layers, and none of the plugin's code (its sample files are
    read with numpy). Layers are added one at a time with events processed between them, as
    the plugin does. What napari itself costs on this machine, step by step."""
    import numpy as np
    import tifffile
    from magicgui.widgets import Container, FloatSpinBox
    from qtpy.QtWidgets import QApplication

    def sample(name: str):
        with np.load(ROOT / "src" / "napari_deepblur" / "data" / f"sample_{name}.npz") as f:
            return f["image"]

    def image(data, **kwargs):
        return lambda: viewer.add_image(data, **kwargs) and ""

    def one_at_a_time(*adds) -> None:
        for n, add in enumerate(adds):
            if n:
                QApplication.processEvents()
            add()

    psf = np.ones((31, 31), np.float32)
    fluo = sample("fluorescence")
    nm = {"scale": (74.0, 74.0), "units": ("nm", "nm")}  # as the samples have
    walk.step("open sample", image(fluo, name="fluorescence", **nm))
    widgets = [FloatSpinBox(label=f"value {n}") for n in range(100)]
    walk.step(
        "open Identify+Deblur panel",
        lambda: viewer.window.add_dock_widget(Container(widgets=widgets, scrollable=True)) and "",
    )
    walk.step("Identify (double-click)", image(psf, colormap="inferno", translate=(0, 260)))
    walk.step("Deblur", image(fluo.astype(np.float32), name="deblurred"))

    maps = [image(np.ones(fluo.shape, np.float32), visible=False, name=f"w{n}") for n in range(4)]
    kernel_map = image(np.ones((155, 155), np.float32), colormap="inferno")
    field = (image(psf, colormap="inferno", translate=(0, 260)), kernel_map, *maps)
    walk.step("Identify (field-default model)", lambda: one_at_a_time(*field))
    actin = sample("actin")
    walk.step("open the actin sample", image(actin, name="actin", **nm))
    switch = (
        image(psf, colormap="inferno", translate=(0, 260)),
        image(actin.astype(np.float32), name="actin deblurred"),
    )
    walk.step("switch image (actin)", lambda: one_at_a_time(*switch))
    walk.step("Compare side by side", lambda: setattr(viewer.grid, "enabled", True))

    def reopen():
        path = tmp / "alone.tif"
        tifffile.imwrite(path, psf)
        viewer.open(path, plugin="napari")

    walk.step("export PSF + reopen", reopen)
    walk.step("open beads_confocal_plane.tif", lambda: viewer.open(BEAD_PLANE, plugin="napari"))

    where = np.random.default_rng(0).random((20, 2)) * 150
    beads = (
        lambda: viewer.add_points(where, text=[f"bead {n}: too dim" for n in range(20)]),
        image(np.ones((4, 31, 31), np.float32), colormap="inferno"),
    )
    walk.step("Calibrate (defaults)", lambda: one_at_a_time(*beads))
    walk.step("grid off (leave Compare)", lambda: setattr(viewer.grid, "enabled", False))
    big = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    walk.step("Deblur 1024² (a second of it)", image(big, name="big"))
    walk.step("close window during Deblur", lambda: viewer.close())


def compare_with_napari_alone(extra: list[str]) -> int:
    """Run the walk with the plugin and with napari alone (two processes) and print their
    main-thread gaps side by side."""
    import subprocess

    gaps = {}
    for mode in ([], ["--napari-alone"]):
        out = subprocess.run(
            [sys.executable, __file__, *mode, *extra], capture_output=True, text=True
        ).stdout
        rows = re.findall(r"^(.{34}) +[\d.]+ s  gap +(\d+) ms", out, flags=re.MULTILINE)
        gaps[bool(mode)] = {name.strip(): int(gap) for name, gap in rows}
    print(f"{'step':<34} {'plugin':>8} {'napari alone':>13}  (longest main-thread gap, ms)")
    for name, gap in gaps[False].items():
        alone = gaps[True].get(name)
        print(f"{name:<34} {gap:8d} {alone if alone is not None else '-':>13}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beads", nargs="*", default=[], help="more bead images to calibrate")
    parser.add_argument(
        "--why", action="store_true", help="sample the main thread's stack during stalls"
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        default=[],
        metavar="STEP",
        help="print a cProfile of the main thread during these steps (their names as printed)",
    )
    parser.add_argument(
        "--napari-alone",
        action="store_true",
        help="the same steps with napari alone (the same kinds of layers, no plugin code)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="run both walks and print their gaps side by side"
    )
    args = parser.parse_args(argv)
    if args.compare:
        return compare_with_napari_alone(
            [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--compare"]
        )

    import numpy as np
    from napari.utils.notifications import notification_manager

    import napari

    exceptions: list[str] = []
    shown: list[tuple[str, str]] = []

    def on_exception(kind, value, tb):
        exceptions.append("".join(traceback.format_exception(kind, value, tb)))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = on_exception
    threading.excepthook = lambda a: on_exception(a.exc_type, a.exc_value, a.exc_traceback)
    started = time.perf_counter()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*WINDOW)
    notification_manager.notification_ready.connect(
        lambda n: shown.append((str(n.severity), str(n.message)))
    )
    walk = Walk(viewer, GapMonitor(args.why))
    walk.profile = set(args.profile)
    walk.pump(0.5)
    tmp = Path(tempfile.mkdtemp(prefix="napari_walk_"))
    docks: dict = {}

    def open_sample():
        viewer.open_sample("napari-deepblur", "blurred_fluorescence")
        return f"{viewer.layers[-1].name} {viewer.layers[-1].data.shape}"

    def open_panel():
        _, docks["panel"] = viewer.window.add_plugin_dock_widget(
            "napari-deepblur", "Identify blur and deblur"
        )
        docks["identify"], docks["deblur"] = docks["panel"]._identify, docks["panel"]._deblur
        for dock in (docks["identify"], docks["deblur"]):
            dock._device.value = "cpu"
        return "docked"

    def identify():
        return walk.run_job(docks["identify"], double_click=True)

    def deblur():
        return walk.run_job(docks["deblur"])

    def identify_field():
        widget = docks["identify"]
        before = widget._model.value
        widget._model.value = "field-default"
        try:
            return walk.run_job(widget)
        finally:
            widget._model.value = before

    def open_actin():
        viewer.open_sample("napari-deepblur", "blurred_actin")
        return f"{viewer.layers[-1].name} {viewer.layers[-1].data.shape}"

    def switch_image():
        actin = viewer.layers["blurred actin (real cells)"]
        docks["identify"]._image_layer.value = actin
        first = walk.run_job(docks["identify"])
        docks["deblur"]._image_layer.value = actin
        estimate = docks["deblur"]._psf_layer.value
        return f"{first} | estimate: {getattr(estimate, 'name', estimate)} | " + walk.run_job(
            docks["deblur"]
        )

    def compare():
        button = docks["deblur"]._compare_button
        if not button.enabled:
            raise RuntimeError("Compare is disabled after a deblur")
        button.native.click()
        walk.pump(0.5)
        return f"grid={viewer.grid.enabled}, {len(viewer.layers)} layers"

    def model_combo():
        combo = docks["identify"]._model
        choices = [c for c in combo.choices if c != combo.value and not c.endswith("…")]
        before = combo.value
        combo.value = choices[0]
        walk.pump(0.3)
        combo.value = before
        walk.pump(0.3)
        return f"{before} → {choices[0]} → {before}"

    def export_and_reopen():
        identify = docks["identify"]
        path = tmp / "walk.psf.tif"
        identify._export_path.value = path
        identify._export_button.native.click()
        walk.pump(0.3)
        if not path.exists():
            raise RuntimeError(f"{path} was not written")
        layers = viewer.open(path, plugin=None)  # as File › Open does: the preferred reader
        layer = layers[0]
        has = "estimate" in layer.metadata or "format" in layer.metadata
        return f"reopened '{layer.name}' scale {tuple(layer.scale)}, our metadata: {has}"

    def open_beads(path):
        def action():
            docks["beads"] = layer = viewer.open(path)[0]
            return f"{layer.name} {layer.data.shape}"

        return action

    def calibrate():
        layer = docks["beads"]
        if "calibrate" not in docks:
            _, docks["calibrate"] = viewer.window.add_plugin_dock_widget(
                "napari-deepblur", "Calibrate from beads"
            )
        widget = docks["calibrate"]
        widget._image_layer.value = layer
        assumed = widget.assumed_text() if hasattr(widget, "assumed_text") else "?"
        outcome = f"[{assumed or 'optics known'}] " + walk.run_job(widget)
        hint = re.search(r"Plane (\d+) is the brightest", outcome)
        docks["hint"] = int(hint.group(1)) if hint else None
        return outcome

    def move_slider(plane):
        def action():
            viewer.dims.set_current_step(0, plane - 1)
            return f"slider at plane {plane}"

        return action

    def start_big_job():
        rng = np.random.default_rng(0)
        big = viewer.add_image(rng.random((1024, 1024), dtype=np.float32), name="big")
        deblur = docks["deblur"]
        deblur._image_layer.value = big
        deblur._run_button.native.click()
        if not walk.wait(lambda: "tile" in deblur._status.value or not deblur.busy, 120):
            raise RuntimeError(f"the job did not reach its tiles: {deblur._status.value}")
        walk.pump(1.0)  # a second of the job running
        return deblur._status.value

    def close_during_job():
        deblur = docks["deblur"]
        worker = deblur.worker
        if worker is None:
            raise RuntimeError(f"no job running: {deblur._status.value}")
        viewer.close()
        walk.wait(lambda: not worker.is_running, 60)
        walk.pump(1.0)  # anything the worker still sends arrives now
        return "closed; worker stopped" if not worker.is_running else "still running"

    if args.napari_alone:
        napari_alone(viewer, walk, tmp)
    else:
        walk.step("open sample", open_sample)
        walk.step("open Identify+Deblur panel", open_panel)
        walk.step("Identify (double-click)", identify)
        walk.step("Deblur", deblur)
        walk.step("Identify (field-default model)", identify_field)
        walk.step("open the actin sample", open_actin)
        walk.step("switch image (actin)", switch_image)
        walk.step("Compare side by side", compare)
        walk.step("Identify model combo change", model_combo)
        walk.step("export PSF + reopen", export_and_reopen)
        for path in [BEAD_PLANE, *args.beads]:
            walk.step(f"open {Path(path).name[:25]}", open_beads(path))
            walk.step("Calibrate (defaults)", calibrate)
            if docks.get("hint"):  # as the message says: move the slider there, calibrate again
                walk.step(f"move the slider to plane {docks['hint']}", move_slider(docks["hint"]))
                walk.step("Calibrate (defaults) again", calibrate)
        walk.step("grid off (leave Compare)", lambda: setattr(viewer.grid, "enabled", False))
        walk.step("Deblur 1024² (a second of it)", start_big_job)
        walk.step("close window during Deblur", close_during_job)

    errors = [m for s, m in shown if s.lower() == "error"]
    warnings_shown = [m for s, m in shown if s.lower() == "warning"]
    longest = max(walk.rows, key=lambda r: r[2])
    print()
    print(f"total {time.perf_counter() - started:.0f} s; window {WINDOW[0]}×{WINDOW[1]} asked,")
    print(f"tallest window frame seen: {walk.max_height} px (fits 900: {walk.max_height <= 900})")
    print(f"longest main-thread gap: {longest[2]:.0f} ms in '{longest[0]}'")
    print(f"steps with a gap over {STALL_MS} ms: {sum(r[2] > STALL_MS for r in walk.rows)}")
    print(
        f"exceptions: {len(exceptions)}; error notifications: {len(errors)}; "
        f"warnings shown: {len(warnings_shown)}; failed steps: {len(walk.failures)}"
    )
    for step, where in walk.monitor.stacks.items():  # --why
        for place, count in where.most_common(4):
            print(f"stalled in '{step}' ({count}× 20 ms): {place}")
    for text in exceptions:
        print("EXCEPTION:", text.strip().splitlines()[-1])
    for text in errors:
        print("ERROR SHOWN:", text[:200])
    for text in warnings_shown:
        print("warning shown:", text[:200])
    ok = not exceptions and not errors and not walk.failures and walk.max_height <= 900
    sys.stdout.flush()
    os._exit(0 if ok else 1)  # the window is closed; leave without Qt's teardown


if __name__ == "__main__":
    main()
