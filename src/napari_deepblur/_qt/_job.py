"""The part every Deep-Blur dock widget shares: a Run/Cancel button driving one thread
worker at a time, an explicit run state, progress (in the dock and in napari's activity
panel) and notifications for every error.

A subclass builds its controls, then implements :meth:`JobWidget._prepare` (read the controls
and layers into a job generator from :mod:`napari_deepblur._napari`, quickly, on the
main thread) and :meth:`JobWidget._finish` (add the layers the job returned).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QSizePolicy

from .. import _napari as logic
from .._napari import RunState, RunStateMachine, UserError, guarded, user_message

if TYPE_CHECKING:
    import napari

_log = logging.getLogger(__name__)

MODEL_FILE_CHOICE = "model file…"
#: Docks stay narrow enough to leave the canvas most of the window.
MAX_WIDTH_PX = 480
#: The optics a dock shows for an image that states none (NA, emission nm, pixel nm).
DEFAULT_OPTICS = logic.KnownOptics(na=1.4, wavelength_nm=520.0, pixel_size_nm=74.0)
#: After Run, the button (which now reads Cancel) stays disabled for this long: the second
#: click of a double-click must not cancel the job it started.
CANCEL_GRACE_MS = 600

__all__ = ["JobWidget", "ScrollableDock", "notify_error", "notify_info", "notify_warning"]


# Module-level so that tests can capture them (monkeypatch this module's attributes).
def notify_error(message: str) -> None:
    show_error(message)


def notify_warning(message: str) -> None:
    show_warning(message)


def notify_info(message: str) -> None:
    show_info(message)


#: Set once torch (and the pipeline) are imported: by :func:`import_torch_in_background`.
_torch_ready = threading.Event()
_warm_up = threading.Lock()


def import_torch_in_background() -> None:
    """Import torch and the pipeline in a thread, once: about 1.5 s that would otherwise
    freeze napari when the first dock opens. In a thread the main thread still waits while
    the import holds Python's lock: 0.2–0.3 s at once for torch's C++ library, ~0.05 s once
    :func:`_load_torch_library` has loaded it (2-core EPYC)."""
    if _imported("napari_deepblur.pipeline"):
        _torch_ready.set()
    if _torch_ready.is_set() or not _warm_up.acquire(blocking=False):
        return  # imported, or being imported

    def run() -> None:
        try:
            _load_torch_library()
            from .. import pipeline  # noqa: F401 - imports torch, the networks, the optics
        finally:
            _torch_ready.set()

    threading.Thread(target=run, name="napari-deepblur import", daemon=True).start()


def _load_torch_library() -> None:
    """Load torch's C++ library (``libtorch_cpu.so``, Linux) with the C ``dlopen``, which
    ctypes calls without Python's global lock; ``import torch`` then finds it loaded.

    Python's own loading of an extension holds the lock, and libtorch's static
    initialisers take 0.2–0.3 s (2-core EPYC): napari would freeze that long, even with the
    import in a thread. Anything unexpected (another OS, no such file): torch's import
    loads it as usual."""
    import ctypes
    import importlib.util
    import os

    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return
    library = Path(spec.origin).parent / "lib" / "libtorch_cpu.so"
    with contextlib.suppress(OSError, AttributeError):
        dlopen = ctypes.CDLL(None).dlopen
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        if library.is_file():
            dlopen(os.fsencode(library), os.RTLD_NOW | os.RTLD_LOCAL)


def _imported(name: str) -> bool:
    """Whether module ``name`` is imported in full (not being imported by another thread)."""
    module = sys.modules.get(name)
    return module is not None and not getattr(module.__spec__, "_initializing", False)


def device_choices(_widget=None) -> list[str]:
    """ "auto", "cpu", and the accelerators present on this machine; until torch is
    imported (off the main thread) only "auto" and "cpu"."""
    choices = ["auto", "cpu"]
    if not _torch_ready.is_set():
        return choices
    import torch

    if torch.cuda.is_available():
        choices.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def model_choices() -> list[str]:
    from ..model_files import DEFAULT_MODEL, list_models

    names = list(list_models())
    if DEFAULT_MODEL in names:  # the default first
        names.remove(DEFAULT_MODEL)
        names.insert(0, DEFAULT_MODEL)
    return [*names, MODEL_FILE_CHOICE]


class ScrollableDock:
    """For a dock widget made scrollable (``Container(scrollable=True)``): napari docks a
    magicgui widget's ``native``, which for a scrollable container is the content *inside*
    its scroll area; ``native`` is the scroll area instead, so that a dock taller than the
    screen scrolls rather than growing the window off-screen."""

    @property
    def native(self):
        return self.root_native_widget

    @property
    def content(self):
        """The widget that holds the dock's layout (inside its scroll area, if any)."""
        return self._widget._mgui_get_native_widget()


class JobWidget(ScrollableDock, Container):
    """A dock widget that runs one pipeline job at a time in a napari thread worker.

    Run state: idle → running → done | failed, or running → cancelling → idle. While a job
    runs the Run button reads "Cancel"; clicking it asks the worker to stop, which happens
    at the pipeline's next progress step (between tiles or planes). :meth:`run` never starts
    a second job while one is running.
    """

    #: Button text and the name of the action in messages.
    action = "Run"

    def __init__(self, viewer: napari.viewer.Viewer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._viewer = viewer
        self._run_state = RunStateMachine()
        self._worker = None
        self._pbar = None
        self._job_layer_ref = None  # the image the running (or last) job was started on
        self._job_layer_name = ""  # its name then
        self._activity_queue: list[tuple[int, int, str]] = []  # steps not yet shown there
        self._updating_activity = False
        self._run_button = PushButton(text=self.action)
        self._progress = ProgressBar(value=0, min=0, max=1, visible=False, label="")
        self._status = Label(value="", label="")
        self._run_button.changed.connect(self._on_run_clicked)
        self._run_state.connect(self._on_state)
        self._last_error = ""
        self._closed = False
        self.native.setMaximumWidth(MAX_WIDTH_PX)
        wrap_to_dock_width(self._status)
        # closing the dock (or the window) cancels the job, and nothing touches the
        # deleted widgets afterwards
        self._removal_filter = _RemovalFilter(self._on_closed)
        self.native.installEventFilter(self._removal_filter)
        self.native.destroyed.connect(functools.partial(_on_destroyed, weakref.ref(self)))
        import_torch_in_background()

    @property
    def torch_ready(self) -> bool:
        """Whether torch is imported (:func:`import_torch_in_background`): until then the
        dock must not import it on the main thread (it would wait for the import)."""
        return _torch_ready.is_set()

    def _when_torch_ready(self, callback) -> None:
        """Call ``callback`` on the main thread once torch is imported (at once if it is)."""
        if self._gone():
            return
        if _torch_ready.is_set():
            callback()
        else:
            QTimer.singleShot(100, lambda: self._when_torch_ready(callback))

    # -- state ----------------------------------------------------------------------
    @property
    def state(self) -> RunState:
        return self._run_state.state

    @property
    def busy(self) -> bool:
        return self._run_state.busy

    @property
    def worker(self):
        """The running thread worker, or None."""
        return self._worker

    def _on_state(self, state: RunState) -> None:
        self._run_button.text = {
            RunState.RUNNING: "Cancel",
            RunState.CANCELLING: "Cancelling…",
        }.get(state, self.action)
        self._run_button.enabled = state != RunState.CANCELLING
        self._progress.visible = state in (RunState.RUNNING, RunState.CANCELLING)

    # -- subclass hooks -----------------------------------------------------------------
    def _prepare(self) -> Generator:
        """Read controls and layers; return the job generator (raise to refuse)."""
        raise NotImplementedError

    def _finish(self, result: Any) -> None:
        """Add the job's result to the viewer (main thread)."""
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------
    def _on_run_clicked(self, *_: Any) -> None:
        if self.busy:
            self.cancel()
        else:
            self.run()

    def _enable_cancel(self) -> None:
        if not self._closed and self.state == RunState.RUNNING:
            self._run_button.enabled = True

    def _on_closed(self) -> None:
        """The dock was closed or removed, or the window closed: stop the job, and let no
        signal of its worker reach the widgets again."""
        if self._closed:
            return
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            slots = {
                "yielded": self._on_yielded,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "warned": self._on_warned,
                "finished": self._on_finished,
            }
            for name, slot in slots.items():
                # (RuntimeError: at Python's exit Qt may have deleted the signals already)
                with contextlib.suppress(TypeError, RuntimeError):
                    getattr(worker, name).disconnect(slot)
            worker.quit()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def run(self):
        """Start the job in a thread worker and return the worker (None if refused)."""
        if self.busy:
            notify_info(
                f"{self.action} is already running; wait for it or click Cancel to stop it."
            )
            return None
        try:
            job = self._prepare()
        except Exception as exc:  # noqa: BLE001 - every error becomes a notification
            self._fail(user_message(exc, self.action))
            return None
        layer = getattr(getattr(self, "_image_layer", None), "value", None)
        self._job_layer_ref = None if layer is None else weakref.ref(layer)
        self._job_layer_name = getattr(layer, "name", "")
        self._run_state.set(RunState.RUNNING)
        self._run_button.enabled = False  # Cancel, once a double-click on Run is over
        QTimer.singleShot(CANCEL_GRACE_MS, self._enable_cancel)
        self._status.value = f"{self.action}: starting…"
        self._progress.max, self._progress.value = 0, 0  # busy, not "0 %", until steps count
        self._pbar = progress(total=0, desc=self.action)
        worker = create_worker(guarded, job, self.action, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        _replace_warning_relay(worker, self._on_warned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress step (no layer is added)."""
        if self.state != RunState.RUNNING or self._worker is None:
            return
        self._run_state.set(RunState.CANCELLING)
        self._status.value = f"{self.action}: cancelling…"
        self._worker.quit()

    @property
    def _job_layer(self) -> Any:
        """The image layer the last job was started on (None once it is deleted)."""
        return None if self._job_layer_ref is None else self._job_layer_ref()

    def _gone(self) -> bool:
        """The dock was closed or its widgets deleted: the worker's signals must be
        dropped (touching a deleted Qt widget raises, and PyQt5 aborts on it)."""
        return self._closed or _is_deleted(self.content)

    def _on_yielded(self, step: Any) -> None:
        if self._gone():
            return
        done, total = int(getattr(step, "done", 0)), int(getattr(step, "total", 0))
        message = getattr(step, "message", "")
        if total > 0:
            self._progress.max = total
            self._progress.value = min(done, total)
        else:  # preparing (reading, loading, resampling): busy, not a long "0 %"
            self._progress.max, self._progress.value = 0, 0
        if self.state == RunState.RUNNING:
            self._status.value = f"{self.action}: {message or f'{done} of {total}'}"
        self._show_in_activity(done, total, message)

    def _show_in_activity(self, done: int, total: int, message: str) -> None:
        """Move napari's activity bar to this step. Its setters process Qt events, so the
        next steps can arrive (re-entering :meth:`_on_yielded`) while it is being updated:
        they are queued and shown after, never overwritten by an older step."""
        self._activity_queue.append((done, total, message))
        if self._updating_activity:
            return
        self._updating_activity = True
        try:
            while self._activity_queue and self._pbar is not None:
                done, total, message = self._activity_queue.pop(0)
                pbar = self._pbar
                if total and pbar.total != total:
                    pbar.total = total
                    pbar.n = 0
                if done > pbar.n:
                    pbar.update(done - pbar.n)
                if message:
                    pbar.set_description(f"{self.action}: {message}")
        finally:
            self._activity_queue.clear()
            self._updating_activity = False

    def _on_returned(self, result: Any) -> None:
        if self._gone():
            return
        if self.state == RunState.CANCELLING:  # finished before the cancel took effect
            self._run_state.set(RunState.IDLE)
            self._status.value = f"{self.action}: cancelled."
            return
        source, name = self._job_layer, self._job_layer_name
        if name and (source is None or source not in self._viewer.layers):
            notify_info(
                f"'{name}' was removed from the viewer while {self.action} ran: "
                "its result is added all the same."
            )
        elif name and source.name != name:  # renamed meanwhile: its PSFs go by the new name
            added = getattr(result, "layers", ())
            logic.rename_sources(
                (kwargs.get("metadata") for _, kwargs, _ in added), name, source.name
            )
        try:
            self._finish(result)
        except Exception as exc:  # noqa: BLE001
            self._fail(user_message(exc, self.action))
            return
        self._run_state.set(RunState.DONE)

    def _on_errored(self, exc: Exception) -> None:
        if self._gone():
            return
        self._fail(str(exc) if isinstance(exc, UserError) else user_message(exc, self.action))

    def _on_warned(self, showwarning_args: tuple) -> None:
        """A warning of the job, shown to the user; a library's deprecation warnings (for
        developers: nothing a user can act on) only logged."""
        if self._gone():
            return
        message, category = showwarning_args[0], showwarning_args[1]
        if issubclass(category, DeprecationWarning | PendingDeprecationWarning):
            # (not warnings.showwarning: while a job runs, superqt has replaced it by a relay)
            _log.debug("%s: %s", category.__name__, message)
            return
        notify_warning(str(message))

    def _on_aborted(self) -> None:
        if self._gone():
            return
        if self.state == RunState.RUNNING:  # stopped from elsewhere (napari, on closing)
            self._run_state.set(RunState.CANCELLING)
        self._run_state.set(RunState.IDLE)
        self._status.value = f"{self.action}: cancelled."

    def _on_finished(self) -> None:
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _add_layers(self, layer_data) -> list:
        """Add layer data tuples (prepared by the job) to the viewer one at a time, letting
        the event loop run between them (timers and painting, no user input): napari builds
        each layer's views on the main thread (0.1–0.25 s a layer on a laptop CPU), and six at
        once froze the UI for over a second. Stops if the dock or window closes meanwhile."""
        from napari.layers import Layer
        from qtpy.QtCore import QEventLoop
        from qtpy.QtWidgets import QApplication

        added = []
        for n, ldt in enumerate(layer_data):
            if n:
                QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
                if self._gone():
                    break
            added.append(self._viewer.add_layer(Layer.create(*ldt)))
        return added

    def _fail(self, message: str) -> None:
        self._last_error = message
        self._status.value = message
        self._run_state.set(RunState.FAILED)
        notify_error(message)

    # -- shared pieces ------------------------------------------------------------------
    def _image_layer_choices(self, _widget=None) -> list:
        """Image and Labels layers (Labels are refused with a message when run), but not
        the PSFs and maps the docks draw."""
        from napari.layers import Image, Labels

        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, Image | Labels)
            and not logic.is_psf_metadata(layer.metadata)
            and not logic.is_auxiliary_layer(layer.metadata)  # PSF, kernel and weight maps
        ]

    def _make_model_widgets(self) -> tuple[ComboBox, FileEdit]:
        model = ComboBox(label="Model", choices=model_choices())
        model_file = FileEdit(
            label="Model file (.safetensors)", mode="r", filter="*.safetensors", visible=False
        )
        model.changed.connect(lambda v: setattr(model_file, "visible", v == MODEL_FILE_CHOICE))
        return model, model_file

    def _settle_layout(self) -> None:
        """Once a dock's controls are built: its combo boxes as narrow as they fit
        (:func:`fit_combo_boxes`), and the room the dock has beyond its controls left at
        the bottom (it was spread between them: a gap under a wrapped status line)."""
        fit_combo_boxes(self)
        self.content.layout().addStretch(1)

    def _model_value(self) -> str:
        if self._model.value == MODEL_FILE_CHOICE:
            path = self._model_file.value
            if not str(path) or str(path) == ".":
                raise UserError("choose a model file (.safetensors), or pick a shipped model")
            return str(Path(str(path)).expanduser())
        return self._model.value

    def _connect_layer_events(self) -> None:
        events = self._viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._refresh_choices)
        # the combo boxes show layer names: follow renames too
        events.inserted.connect(self._follow_new_layer_name)
        for layer in self._viewer.layers:
            layer.events.name.connect(self._refresh_choices)

    def _follow_new_layer_name(self, event) -> None:
        event.value.events.name.connect(self._refresh_choices)

    def _refresh_choices(self, *_: Any) -> None:
        self.reset_choices()

    def _current_plane(self, layer) -> tuple[int, ...]:
        """The plane of ``layer`` to process when "current plane" is chosen: the one shown
        (:meth:`_plane_of`). A stack seen in napari's 3D view shows no one plane: refused
        with a sentence (it took plane 0 without a word)."""
        shape = full_resolution(layer).shape
        if len(shape) > 2 and self._viewer.dims.ndisplay == 3:
            raise UserError(
                "napari shows this stack in 3D, where no plane is the current one: switch "
                "to the 2D view (the 2D/3D button, bottom left) and choose the plane with "
                "the slider, or choose all planes"
            )
        return self._plane_of(layer)

    def _plane_of(self, layer) -> tuple[int, ...]:
        """The indices of the plane shown now for ``layer``'s leading axes."""
        shape = full_resolution(layer).shape
        if len(shape) <= 2:
            return ()
        position = layer.world_to_data(self._viewer.dims.point)
        return logic.plane_index(shape, position)


def layer_optics(layer, channel: int | None = None):
    """The optics known for ``layer`` (:func:`napari_deepblur.formats.known_optics`):
    its metadata, the TIFF it was opened from, its scale and units; ``channel``: at that
    channel's emission wavelength where the file states one per channel."""
    return logic.known_optics(
        layer.metadata,
        tuple(layer.scale),
        tuple(getattr(layer, "units", ()) or ()),
        getattr(getattr(layer, "source", None), "path", None),
        channel,
    )


def full_resolution(layer) -> Any:
    """The layer's array: the full-resolution level of a multiscale layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_axes(layer) -> str:
    """The axes of ``layer``'s data when known ("CYX"…: :func:`napari_deepblur._napari.
    layer_axes`, from its metadata or the TIFF it was opened from), else ""."""
    data = full_resolution(layer)
    return logic.layer_axes(
        layer.metadata, data.shape, getattr(getattr(layer, "source", None), "path", None)
    )


def layer_geometry(layer, axes: int = 2) -> dict:
    """Where the layers made from ``layer`` go: its scale, translate and units of the last
    ``axes`` axes, and its rotation, shear and affine transform as one ``affine``
    (:func:`napari_deepblur._napari.layer_geometry`)."""
    return logic.layer_geometry(
        layer.scale,
        layer.translate,
        getattr(layer, "units", None),
        rotate=layer.rotate,
        shear=layer.shear,
        affine=layer.affine.affine_matrix,
        axes=axes,
    )


def save_path_for(file_box: FileEdit, layer, file_name: str) -> Path:
    """Where a dock offers to save what it made of ``layer``: ``file_name`` in the folder
    of the path ``file_box`` shows (the one chosen before), else in the folder of the
    image's file when it came from one, else in the home folder."""
    chosen = Path(str(file_box.value))
    if str(chosen) != ".":
        return chosen.parent / file_name
    path = getattr(getattr(layer, "source", None), "path", None)
    if path and Path(path).parent.is_dir():
        return Path(path).parent / file_name
    return Path.home() / file_name


def safe_file_name(name: str, fallback: str) -> str:
    """A layer name as a file name: letters, digits, "-" and "." kept, runs of anything
    else one "_"; ``fallback`` when nothing is left.

    >>> safe_file_name("cell 2 / [1] PSF", "psf"), safe_file_name("///", "psf")
    ('cell_2_1_PSF', 'psf')
    """
    text = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    return "_".join(part for part in text.split("_") if part) or fallback


def _on_destroyed(widget_ref, *_: Any) -> None:
    widget = widget_ref()
    if widget is not None:  # (None: the widget is being garbage-collected, nothing runs)
        widget._on_closed()


def _is_deleted(qobject) -> bool:
    """Whether the C++ object behind ``qobject`` was deleted (its window closed)."""
    try:
        qobject.objectName()
    except RuntimeError:
        return True
    return False


def wrap_to_dock_width(label: Label) -> None:
    """Word-wrap ``label`` at the dock's width: a wrapped QLabel still asks for a minimum
    width that grows with its text, which would make the dock scroll sideways."""
    label.native.setWordWrap(True)
    label.native.setMinimumWidth(1)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)


#: A dock's combo boxes ask this many characters' width, not their longest choice's (a long
#: layer name, "all planes (one state each)"): the full text shows when the list is open.
COMBO_CHARS = 8


def fit_combo_boxes(container: Container) -> None:
    """Make every combo box in ``container`` (and the containers in it) as narrow as
    :data:`COMBO_CHARS` allows: a long layer name made the docks wider than their scroll
    area (controls cut off on the right)."""
    for widget in container:
        if isinstance(widget, Container):
            fit_combo_boxes(widget)
        elif isinstance(widget, ComboBox):
            combo = widget.native
            combo.setSizeAdjustPolicy(combo.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(COMBO_CHARS)


class _RemovalFilter(QObject):
    """Calls ``on_removed`` when the widget it watches loses its parent: napari takes a dock
    widget out of its dock (then deletes the dock) when the dock is closed or removed."""

    def __init__(self, on_removed) -> None:
        super().__init__()
        self._on_removed = on_removed

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.ParentChange and watched.parent() is None:
            self._on_removed()
        return False


def _replace_warning_relay(worker, on_warned) -> None:
    """Send the worker's warnings (a constant plane copied, refinement skipped, an
    out-of-memory fallback) to ``on_warned`` only. napari's own relay of worker warnings is
    connected in some versions and not in others (0.9.2: not); disconnecting it where it is
    keeps each warning to one notification."""
    napari_relay = getattr(worker, "_relay_warning", None)
    if napari_relay is not None:
        with contextlib.suppress(TypeError, RuntimeError):
            worker.warned.disconnect(napari_relay)
    worker.warned.connect(on_warned)
