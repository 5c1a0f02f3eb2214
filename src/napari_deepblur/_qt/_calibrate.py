"""The "Calibrate from beads" dock widget: bead image layer → space-varying blur family.

Thin: it reads its controls into a :class:`~napari_deepblur._napari.calibrate.CalibrateRequest`
and runs :func:`~napari_deepblur._napari.calibrate.iter_calibrate_layers` (the headless twin)
in a thread worker; then it adds the beads (Points) and eigen-PSFs (Image), draws the
variance captured per component and the held-out PSF SNR against one PSF for the field, and
saves the family file on request.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from .. import _napari as logic
from .._napari import calibrate as calib
from . import _job
from ._job import (
    DEFAULT_OPTICS,
    JobWidget,
    full_resolution,
    layer_optics,
    safe_file_name,
    save_path_for,
    wrap_to_dock_width,
)

if TYPE_CHECKING:
    import napari

CURRENT_PLANE = "current plane"
ALL_PLANES = "all planes (one state each)"
#: What the Eigen-PSFs and Map degree boxes show at their lowest value: chosen from the beads.
AUTO = "auto"
#: The optics fields, by the name :class:`~napari_deepblur.formats.KnownOptics` gives them.
_OPTICS_NAMES = {"na": "NA", "wavelength_nm": "wavelength", "pixel_size_nm": "pixel size"}


class CalibrateWidget(JobWidget):
    """Calibrate a product-convolution family from an image of sub-resolution beads.

    Private sub-widgets (tests drive them): ``_image_layer``, ``_planes``, ``_use_fc``,
    ``_na``, ``_wavelength``, ``_pixel_size``, ``_fc``, ``_kernel_size``, ``_num_psfs``,
    ``_map_degree``, ``_run_button``, ``_status``, ``_summary``, ``_save_path``,
    ``_save_button``; ``_plot`` shows the results plot drawn by the job (``_figure``, its
    matplotlib Figure; both None before the first run).
    """

    action = "Calibrate"

    def __init__(self, viewer: napari.viewer.Viewer, scrollable: bool = True) -> None:
        super().__init__(viewer, labels=False, scrollable=scrollable)
        self._image_layer = ComboBox(label="Bead image", choices=self._image_layer_choices)
        self._planes = ComboBox(
            label="Planes",
            choices=[CURRENT_PLANE, ALL_PLANES],
            value=CURRENT_PLANE,
            tooltip="For a stack: the plane shown now, or every plane as one state of the "
            "microscope (one parameter vector each).",
        )
        self._use_fc = CheckBox(text="Give the cutoff fc directly", value=False)
        self._na = FloatSpinBox(label="NA", value=1.4, min=0.05, max=1.7, step=0.01)
        self._wavelength = FloatSpinBox(
            label="Wavelength (nm)", value=520.0, min=200.0, max=2000.0, step=1.0
        )
        self._pixel_size = FloatSpinBox(
            label="Pixel size (nm)", value=74.0, min=1.0, max=10000.0, step=0.5
        )
        self._fc = FloatSpinBox(
            label="fc (cycles/pixel)", value=0.2, min=0.005, max=0.5, step=0.005, visible=False
        )
        self._kernel_size = SpinBox(
            label="PSF size (px)",
            value=31,
            min=5,
            max=255,
            step=2,
            tooltip="Odd; beads closer than this are rejected as overlapping.",
        )
        self._num_psfs = ComboBox(
            label="Eigen-PSFs",
            choices=[(AUTO, None)] + [(str(n), n) for n in range(1, 17)],
            value=None,
            tooltip="auto: up to 4, at most half the usable beads.",
        )
        self._map_degree = ComboBox(
            label="Map degree",
            choices=[(AUTO, None)] + [(str(n), n) for n in range(7)],
            value=None,
            tooltip="Degree of the smooth maps over the field: 0 = one PSF everywhere, "
            "1 = 3 maps, 2 = 6 maps (each needs two beads); auto: the highest up to 2 that "
            "the usable beads determine.",
        )
        self._optics_note = Label(label="", value="", visible=False)
        wrap_to_dock_width(self._optics_note)
        self._optics_note.native.setStyleSheet("color: #f0a030;")
        self._assumed: set[str] = set()
        self._reading_layer = False
        self._summary = Label(label="", value="", visible=False)
        wrap_to_dock_width(self._summary)
        self._summary.native.setWordWrap(True)
        self._save_path = FileEdit(label="Family file", mode="w", filter="*.safetensors")
        self._save_button = PushButton(text="Save family…", enabled=False)
        settings = Container(
            labels=True,
            widgets=[
                self._image_layer,
                self._planes,
                self._use_fc,
                self._na,
                self._wavelength,
                self._pixel_size,
                self._fc,
                self._kernel_size,
                self._num_psfs,
                self._map_degree,
            ],
        )
        settings.insert(6, self._optics_note)
        save = Container(labels=True, widgets=[self._save_path])
        self.extend(
            [
                settings,
                self._run_button,
                self._progress,
                self._status,
                self._summary,
                save,
                self._save_button,
            ]
        )
        self._settle_layout()
        self._result = None
        self._plot = None  # the results plot (a QLabel showing its pixels)
        self._figure = None
        self._image_layer.changed.connect(self._on_layer_changed)
        self._use_fc.changed.connect(self._on_use_fc)
        for name, box in self._optics_boxes().items():
            box.changed.connect(lambda _v, name=name: self._on_optics_edited(name))
        self._save_button.changed.connect(self._on_save_clicked)
        self._connect_layer_events()
        self.reset_choices()
        self._on_layer_changed(self._image_layer.value)

    @property
    def result(self):
        """The last :class:`~napari_deepblur.field.calibration.CalibrationResult`, or None."""
        return self._result

    # -- controls → request ---------------------------------------------------------------
    def _optics_boxes(self) -> dict:
        return {
            "na": self._na,
            "wavelength_nm": self._wavelength,
            "pixel_size_nm": self._pixel_size,
        }

    def _on_use_fc(self, value: bool) -> None:
        self._fc.visible = bool(value)
        for w in (self._na, self._wavelength, self._pixel_size):
            w.visible = not value
        self._show_assumed()

    def _on_layer_changed(self, layer: Any) -> None:
        """Another bead image: the optics refilled from its metadata, file and scale (what
        it does not state: the defaults, shown as assumed, never another image's values),
        the family file named after it, and the last result forgotten (it is another
        image's). When the calibrated image was removed from the viewer (the list moved on
        by itself), its family stays, to be saved under its name."""
        shape = () if layer is None else tuple(full_resolution(layer).shape)
        self._planes.visible = len(shape) > 2
        calibrated = self._job_layer
        keep = self._result is not None and (
            calibrated is None or calibrated not in self._viewer.layers
        )
        if not keep:
            self._clear_result()
        if layer is None:
            return
        optics = layer_optics(layer)
        self._assumed = set()
        self._reading_layer = True
        try:
            for name, box in self._optics_boxes().items():
                value = getattr(optics, name)
                if not value:
                    self._assumed.add(name)
                box.value = value or getattr(DEFAULT_OPTICS, name)
        finally:
            self._reading_layer = False
        self._show_assumed()
        if not keep:
            self._name_family_file(layer.name, layer)

    def _name_family_file(self, name: str, layer: Any = None) -> None:
        """The family file path follows the image: ``<name>-family.safetensors`` in the
        folder chosen before, else the folder of the image's file (``layer``), else home."""
        file_name = f"{safe_file_name(name, 'beads')}-family.safetensors"
        self._save_path.value = save_path_for(self._save_path, layer, file_name)

    def _clear_result(self) -> None:
        """Forget the last calibration (a new run, or another image): nothing to save, and
        no summary or plot of it left showing."""
        self._result = None
        self._save_button.enabled = False
        self._summary.value, self._summary.visible = "", False
        if self._plot is not None:
            self._plot.hide()

    def _on_optics_edited(self, name: str) -> None:
        if not self._reading_layer:  # set by the user: no longer an assumption
            self._assumed.discard(name)
            self._show_assumed()

    def assumed_text(self) -> str:
        """The optics not found in the bead image's metadata, as the values assumed
        (empty when all are known or set by hand, or fc is given)."""
        if self._use_fc.value or not self._assumed:
            return ""
        boxes = self._optics_boxes()
        units = {"na": "", "wavelength_nm": " nm", "pixel_size_nm": " nm"}
        parts = [
            f"{_OPTICS_NAMES[n]} {boxes[n].value:g}{units[n]}"
            for n in _OPTICS_NAMES
            if n in self._assumed
        ]
        return "assumed " + ", ".join(parts)

    def _show_assumed(self) -> None:
        text = self.assumed_text()
        self._optics_note.value = (
            f"Not in the image's metadata — {text}. Set them to your objective, emission "
            "and camera: they set the bead size looked for."
            if text
            else ""
        )
        self._optics_note.visible = bool(text)

    def _prepare(self):
        from napari.layers import Image

        self._clear_result()  # a failed run leaves no older family to save
        layer = self._image_layer.value
        if layer is None:
            raise logic.UserError("open an image of beads first (File > Open)")
        if not isinstance(layer, Image) or getattr(layer, "rgb", False):
            raise logic.UserError("choose a grey-level image layer of beads")
        data = full_resolution(layer)
        all_planes = self._planes.value == ALL_PLANES and data.ndim > 2
        return calib.iter_calibrate_layers(
            calib.CalibrateRequest(
                data=data,
                source=layer.name,
                plane=None if all_planes else self._current_plane(layer),
                optics=logic.KnownOptics(
                    float(self._na.value),
                    float(self._wavelength.value),
                    float(self._pixel_size.value),
                    logic.known_optics(layer.metadata).refractive_index,
                ),
                fc=float(self._fc.value) if self._use_fc.value else None,
                kernel_size=int(self._kernel_size.value),
                num_psfs=self._num_psfs.value,
                map_degree=self._map_degree.value,
                geometry=_job.layer_geometry(layer),
                stack_geometry=_job.layer_geometry(layer, axes=3) if layer.ndim == 3 else {},
            )
        )

    # -- result → viewer --------------------------------------------------------------------
    def _finish(self, result: calib.CalibrateLayers) -> None:

        self._add_layers(result.layers)
        if result.layers:
            self._viewer.reset_view()  # the eigen-PSFs sit right of the bead image
        assumed = self.assumed_text()
        if result.error:  # too few beads: the detections are shown, with their reasons
            raise logic.UserError(result.error + (f" ({assumed})" if assumed else ""))
        self._result = result.result
        r = result.result
        settings = r.settings
        self._summary.value = (
            f"{len(r.accepted)} of {len(r.beads)} beads used; map degree "
            f"{settings['map_degree']}, {r.family.num_psfs} eigen-PSF(s)"
            + (" (chosen from the beads)" if settings.get("automatic") else "")
            + f" capture {100 * r.variance_captured:.2f}% of the variance; model error "
            f"{100 * r.mean_relative_error:.1f}%. "
            + calib.holdout_text(r)
            + "".join(f"\nCaution: {c}." for c in r.cautions)
            + (f"\nOptics {assumed}." if assumed else "")
        )
        self._summary.visible = True
        self._show_plot(result.plot)
        self._save_button.enabled = True
        if self._image_layer.value is not self._job_layer:  # another chosen meanwhile
            self._name_family_file(self._job_layer_name)
        rejected = ", ".join(f"{n} {k}" for k, n in r.rejection_counts().items())
        self._status.value = f"Calibrated from {len(r.accepted)} beads" + (
            f" (rejected: {rejected})." if rejected else "."
        )

    def _show_plot(self, plot) -> None:
        """Show the results plot drawn by the job (:func:`calib.plot_image`): pixels only."""
        from qtpy.QtGui import QImage, QPixmap
        from qtpy.QtWidgets import QLabel

        if plot is None:
            return
        pixels, self._figure = plot
        if self._plot is None:
            self._plot = QLabel()
            self.content.layout().insertWidget(5, self._plot)
        self._plot.show()
        height, width = pixels.shape[:2]
        image = QImage(pixels.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        self._plot.setPixmap(QPixmap.fromImage(image.copy()))

    # -- save --------------------------------------------------------------------------------
    def _on_save_clicked(self, *_: Any) -> None:
        self.save_family(self._save_path.value)

    def save_family(self, path) -> Path | None:
        """Write the last calibration as a family file (``.safetensors`` added if missing)
        and its card; never overwrites (a notification says so). Returns the path or None."""
        from ..field import save_calibration

        if self._result is None:
            _job.notify_error("Save family failed: run the calibration first.")
            return None
        path = Path(str(path)).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        card = {
            "source_layer": self._job_layer_name,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "made_with": "napari 'Calibrate from beads' widget",
        }
        try:
            written = save_calibration(self._result, path, card, overwrite=False)
        except Exception as exc:  # noqa: BLE001 - every error becomes a notification
            _job.notify_error(logic.user_message(exc, "Save family"))
            return None
        _job.notify_info(f"Family written to {written} (card: {written.with_suffix('.json')}).")
        return written
