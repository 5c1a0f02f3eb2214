"""The "Identify blur" dock widget: image layer → PSF layer, coefficient table, PSF map
(tiled images), kernel map and PSF weight maps (space-varying models).

Thin: it reads its controls into an :class:`~napari_deepblur._napari.IdentifyRequest`
and runs :func:`~napari_deepblur._napari.iter_identify_layers` (the headless twin) in a
thread worker.
"""

from __future__ import annotations

import weakref
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
    Table,
)
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QHeaderView, QStyledItemDelegate

from .. import _napari as logic
from ._job import (
    DEFAULT_OPTICS,
    JobWidget,
    device_choices,
    full_resolution,
    layer_axes,
    layer_geometry,
    layer_optics,
    notify_error,
    notify_info,
    safe_file_name,
    save_path_for,
    wrap_to_dock_width,
)
from ._psf_files import watch_psf_files
from ._view import reveal

if TYPE_CHECKING:
    import napari

#: The choices for a stack (Z, T, C), and the pipeline's stack mode for each.
CURRENT_PLANE = "current plane"
ALL_PLANES_MEDIAN = "all planes (median)"
STACK_MODES = {CURRENT_PLANE: "plane", ALL_PLANES_MEDIAN: "median"}


#: The aberration table scrolls beyond this height (a space-varying model has 16 rows).
TABLE_MAX_HEIGHT_PX = 270


class IdentifyWidget(JobWidget):
    """Estimate the blur of an image layer: of the current plane of a stack, or the median
    over all its planes.

    Private sub-widgets (tests drive them): ``_image_layer``, ``_planes``, ``_model``,
    ``_model_file``, ``_use_optics``, ``_na``, ``_wavelength``, ``_pixel_size``,
    ``_fc_label``, ``_device``, ``_augment``, ``_refine``, ``_tile_px``, ``_kernel_grid``
    (shown for space-varying models), ``_run_button``, ``_progress``, ``_status``, ``_table``,
    ``_summary``, ``_export_path``, ``_export_button``.
    """

    action = "Identify blur"

    def __init__(self, viewer: napari.viewer.Viewer, scrollable: bool = True) -> None:
        super().__init__(viewer, labels=False, scrollable=scrollable)
        self._image_layer = ComboBox(label="Image", choices=self._image_layer_choices)
        self._planes = ComboBox(
            label="Planes",
            choices=list(STACK_MODES),
            value=CURRENT_PLANE,
            tooltip="For a stack (Z, T): the plane shown now, or the median of the "
            "estimates of every plane (one plane at a time; slower). Not across channels: "
            "each has its own wavelength.",
        )
        self._model, self._model_file = self._make_model_widgets()
        self._use_optics = CheckBox(
            text="Optics known",
            value=True,
            tooltip="Unchecked: the image is assumed sampled like the model's training data.",
        )
        self._na = FloatSpinBox(label="NA", value=1.4, min=0.05, max=1.7, step=0.01)
        self._wavelength = FloatSpinBox(
            label="Wavelength (nm)", value=520.0, min=200.0, max=2000.0, step=1.0
        )
        self._pixel_size = FloatSpinBox(
            label="Pixel size (nm)",
            value=74.0,
            min=1.0,
            max=10000.0,
            step=0.5,
            tooltip="In the sample plane: camera pixel / magnification.",
        )
        self._fc_label = Label(label="Sampling", value="")
        self._device = ComboBox(label="Device", choices=device_choices, value="auto")
        self._when_torch_ready(self._device.reset_choices)  # the accelerators need torch
        self._augment = CheckBox(
            text="Average over flips (±)",
            value=True,
            tooltip="Identify 8 flipped/rotated copies: slower, and gives the uncertainty.",
        )
        self._refine = CheckBox(
            text="Refine on the image (noise-free images)",
            value=False,
            tooltip="Fit the coefficients to the image itself after the network (~1 s). "
            "Helps nearly noise-free images; skipped, with a message, on noisy ones.",
        )
        self._tile_px = SpinBox(
            label="Tile size (px)",
            value=1024,
            min=128,  # pipeline.MIN_TILE_PX
            max=16384,
            step=32,
            tooltip="Images larger than this are identified tile by tile, which also gives "
            "a map of local PSFs across the field.",
        )
        self._kernel_grid = SpinBox(
            label="Kernel map grid",
            value=logic.KERNEL_MAP_GRID,
            min=1,
            max=15,
            step=1,
            visible=False,
            tooltip="Space-varying models: the kernel map shows the local PSF at the centres "
            "of this many × this many cells over the image.",
        )
        self._table = Table(label="", value=[], visible=False)
        self._table.native.setMaximumHeight(TABLE_MAX_HEIGHT_PX)  # scrolls beyond (16 rows)
        header = self._table.native.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self._table.read_only = True
        # magicgui's delegate re-formats numeric cells ("-1.4740", "2.700e-02", "-0.0000"):
        # show our text (logic.coefficient_text) as it is
        self._table.native.setItemDelegate(QStyledItemDelegate(self._table.native))
        self._summary = Label(label="", value="", visible=False)
        for label in (self._summary, self._fc_label):
            wrap_to_dock_width(label)
        self._export_path = FileEdit(label="Export PSF to", mode="w", filter="*.psf.tif")
        self._export_button = PushButton(text="Export PSF (TIFF + JSON)", enabled=False)
        settings = Container(
            labels=True,
            widgets=[
                self._image_layer,
                self._planes,
                self._model,
                self._model_file,
                self._use_optics,
                self._na,
                self._wavelength,
                self._pixel_size,
                self._fc_label,
                self._device,
                self._augment,
                self._refine,
                self._tile_px,
                self._kernel_grid,
            ],
        )
        export = Container(labels=True, widgets=[self._export_path])
        self.extend(
            [
                settings,
                self._run_button,
                self._progress,
                self._status,
                self._table,
                self._summary,
                export,
                self._export_button,
            ]
        )
        self._settle_layout()
        self._result_layer = None
        #: the image's channel axis (among its leading axes) and each channel's emission
        #: wavelength (nm), when its file states them: the wavelength follows the slider
        self._channel_wavelengths: tuple[int, list] | None = None
        self._shown_channel: int | None = None  # the channel whose wavelength is shown
        #: optics typed for an image, given back when it is chosen again: by layer, the
        #: fields changed ({index in (Optics known, NA, wavelength nm, pixel size nm):
        #: value}); and the layer the fields show, with what was filled in for it
        self._typed_optics: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._optics_of: tuple[Any, tuple] | None = None
        self._image_layer.changed.connect(self._on_layer_changed)
        self._viewer.dims.events.current_step.connect(self._on_step_changed)
        for w in (
            self._use_optics,
            self._na,
            self._wavelength,
            self._pixel_size,
            self._model,
            self._model_file,
        ):
            w.changed.connect(self._update_fc)
        self._use_optics.changed.connect(self._on_use_optics)
        self._export_button.changed.connect(self._on_export_clicked)
        self._connect_layer_events()
        watch_psf_files(self._viewer)  # PSF files opened by napari's reader
        self.reset_choices()
        self._on_layer_changed(self._image_layer.value)

    # -- controls → request ---------------------------------------------------------------
    def _on_layer_changed(self, layer: Any) -> None:
        """Prefill the optics from the layer's metadata and scale/units; offer the choice of
        planes for stacks only."""
        shape = () if layer is None else tuple(full_resolution(layer).shape)
        self._planes.visible = len(shape) > 2 and not getattr(layer, "rgb", False)
        if layer is None:
            self._update_fc()
            return
        self._remember_typed_optics()
        self._channel_wavelengths = _channel_wavelengths(layer)
        self._shown_channel = self._channel_of(layer)
        optics = layer_optics(layer, self._shown_channel)
        guess = DEFAULT_OPTICS
        self._set_optics_fields(
            (
                optics.complete,
                optics.na or self._na.value or guess.na,
                optics.wavelength_nm or self._wavelength.value,
                optics.pixel_size_nm or self._pixel_size.value,
            )
        )
        filled = self._optics_fields()
        typed = self._typed_optics.get(layer, {})
        if typed:  # over what is filled in (the wavelength of the channel shown now)
            self._set_optics_fields(tuple(typed.get(i, v) for i, v in enumerate(filled)))
        self._optics_of = (weakref.ref(layer), filled)
        self._update_fc()

    def _optics_fields(self) -> tuple:
        return (
            bool(self._use_optics.value),
            float(self._na.value),
            float(self._wavelength.value),
            float(self._pixel_size.value),
        )

    def _set_optics_fields(self, values: tuple) -> None:
        use, na, wavelength_nm, pixel_size_nm = values
        self._use_optics.value = use
        self._na.value, self._wavelength.value, self._pixel_size.value = (
            na,
            wavelength_nm,
            pixel_size_nm,
        )

    def _remember_typed_optics(self) -> None:
        """The optics fields the user changed for the image shown until now, kept for it
        (another image chosen, then this one again: what was typed comes back; the rest is
        filled in again)."""
        if self._optics_of is None:
            return
        ref, filled = self._optics_of
        layer, now = ref(), self._optics_fields()
        if layer is not None:
            typed = {i: v for i, (v, f) in enumerate(zip(now, filled, strict=True)) if v != f}
            self._typed_optics[layer] = typed

    def _channel_of(self, layer) -> int | None:
        """The channel shown now, for a layer whose channels state their wavelengths."""
        if self._channel_wavelengths is None:
            return None
        axis, _ = self._channel_wavelengths
        plane = self._plane_of(layer)
        return plane[axis] if axis < len(plane) else None

    def _on_step_changed(self, *_: Any) -> None:
        """Another channel shown: its own emission wavelength (when its file states it).
        Moving another slider (Z, T) keeps the wavelength as it is (typed or not)."""
        if self._gone() or self._channel_wavelengths is None:
            return
        layer = self._image_layer.value
        channel = None if layer is None else self._channel_of(layer)
        if channel is None or channel == self._shown_channel:
            return
        self._shown_channel = channel
        wavelengths = self._channel_wavelengths[1]
        if channel < len(wavelengths) and wavelengths[channel]:
            self._wavelength.value = wavelengths[channel]
            if self._optics_of is not None:  # filled in, not typed (as the field rounds it)
                ref, (use, na, _, pixel_size_nm) = self._optics_of
                self._optics_of = (ref, (use, na, float(self._wavelength.value), pixel_size_nm))

    def _on_use_optics(self, value: bool) -> None:
        for w in (self._na, self._wavelength, self._pixel_size):
            w.enabled = bool(value)

    def _optics(self) -> logic.KnownOptics:
        if not self._use_optics.value:
            return logic.KnownOptics()
        layer = self._image_layer.value
        known = logic.known_optics(getattr(layer, "metadata", None))
        return logic.KnownOptics(
            na=float(self._na.value),
            wavelength_nm=float(self._wavelength.value),
            pixel_size_nm=float(self._pixel_size.value),
            refractive_index=known.refractive_index,
        )

    def _update_fc(self, *_: Any) -> None:
        if not self.torch_ready:  # the sampling's rules need torch: shown once it is here
            self._fc_label.value = "…"
            self._when_torch_ready(self._update_fc)
            return
        try:
            from ..model_files import SPACE_VARYING_KIND, model_header

            # the header only: loading the model here stalled the UI (0.45 s) on each change
            model_fc, kind = model_header(self._model_value())
            field = kind == SPACE_VARYING_KIND
        except Exception:  # noqa: BLE001 - shown when Identify runs
            model_fc, field = None, False
        self._fc_label.value = logic.fc_text(self._optics(), model_fc)
        self._kernel_grid.visible = field

    def _prepare(self):
        layer = self._image_layer.value
        if layer is None:
            raise logic.UserError("open an image first (File > Open, or File > Open Sample)")
        data = full_resolution(layer)
        logic.check_layer(type(layer).__name__, rgb=getattr(layer, "rgb", False), shape=data.shape)
        stack_mode = STACK_MODES[self._planes.value] if len(data.shape) > 2 else "plane"
        if stack_mode == "median":
            logic.check_not_across_channels(
                layer_axes(layer), data.shape, "the median over all planes"
            )
        request = logic.IdentifyRequest(
            data=data,
            source=layer.name,
            plane=self._current_plane(layer) if stack_mode == "plane" else (),
            stack_mode=stack_mode,
            model=self._model_value(),
            optics=self._optics(),
            device=self._device.value,
            augment=bool(self._augment.value),
            refine=bool(self._refine.value),
            tile_px=int(self._tile_px.value),
            geometry=layer_geometry(layer),
            kernel_grid=int(self._kernel_grid.value),
        )
        return logic.iter_identify_layers(request)

    # -- result → viewer --------------------------------------------------------------------
    def _finish(self, result: logic.IdentifyResult) -> None:

        added = self._add_layers(result.layers)
        reveal(self._viewer, added[:1])  # the PSF, beside the image
        self._result_layer = added[0]
        self.show_estimate(added[0].metadata)
        self._export_button.enabled = True
        # the export path follows the latest PSF, in the folder chosen before (if any)
        self._export_path.value = save_path_for(
            self._export_path,
            self._image_layer.value,
            f"{safe_file_name(added[0].name, 'psf')}.psf.tif",
        )
        tiles = len(result.estimate.tiles)
        planes = added[0].metadata.get("planes") or []
        kinds = [layer.metadata.get("deepblur_layer") for layer in added]
        maps = kinds.count("weight map")
        if "kernel map" in kinds:
            grid = added[kinds.index("kernel map")].metadata["grid"]
            extra = (
                f" (the PSF at the image centre), a kernel map of {grid[0]}×{grid[1]} local "
                f"PSFs and {maps} PSF weight maps (hidden; tick their eye to show them)."
            )
        else:
            extra = f" and a map of {tiles} local PSFs." if tiles else "."
        self._status.value = (
            f"Added '{added[0].name}'"
            + (f" (median of {len(planes)} planes)" if len(planes) > 1 else "")
            + extra
        )

    def show_estimate(self, metadata: dict) -> None:
        """Fill the coefficient table and the summary from a PSF layer's metadata."""
        estimate = metadata.get("estimate") or metadata
        rows = logic.coefficient_rows(estimate)
        self._table.value = {
            "data": [
                [
                    r["aberration"],
                    logic.coefficient_text(r["waves_rms"], r["uncertainty"])
                    + (f" {logic.UNCERTAIN_MARK}" if r["uncertain"] else ""),
                    r["bar"],
                ]
                for r in rows
            ],
            "columns": list(logic.coefficient_columns(estimate)),
            "index": [r["label"] for r in rows],
        }
        table = self._table.native
        for n, row in enumerate(rows):
            if row["uncertain"]:  # greyed, and says why on hover
                for column in range(table.columnCount()):
                    item = table.item(n, column)
                    item.setForeground(QColor("gray"))
                    item.setToolTip(logic.UNCERTAIN_TOOLTIP)
        table.verticalHeader().setVisible(False)
        table.resizeColumnsToContents()
        rows_px = sum(table.rowHeight(i) for i in range(len(rows)))
        table.setFixedHeight(rows_px + table.horizontalHeader().height() + 4)
        self._table.visible = bool(rows)
        self._summary.value = logic.summary_text(estimate, metadata.get("field_summary"))
        self._summary.visible = True

    # -- export -------------------------------------------------------------------------------
    def _on_export_clicked(self, *_: Any) -> None:
        self.export_psf(self._export_path.value)

    def export_psf(self, path) -> list[str]:
        """Write the last PSF layer (or the selected PSF layer) as TIFF + JSON; never
        overwrites (a notification says so)."""
        from .._writer import write_psf_layer

        layer = self._viewer.layers.selection.active
        if layer is None or not logic.is_psf_metadata(getattr(layer, "metadata", None)):
            layer = self._result_layer
        if layer is None or layer not in self._viewer.layers:
            notify_error("Export PSF failed: identify the blur first (no PSF layer to export).")
            return []
        # a typed "~/psfs/cell.tif" is written as cell.psf.tif: the name our reader opens
        path = logic.psf_file_path(Path(str(path)).expanduser())
        folder = path.parent
        if not folder.is_dir():
            notify_error(
                f"Export PSF failed: the folder {folder} does not exist: choose an existing folder."
            )
            return []
        try:
            written = write_psf_layer(
                str(path),
                layer.data,
                {"metadata": layer.metadata, "name": layer.name},
                overwrite=False,
            )
        except Exception as exc:  # noqa: BLE001
            notify_error(logic.user_message(exc, "Export PSF"))
            return []
        notify_info(f"PSF written to {written[0]} and {written[1]}.")
        return written


def _channel_wavelengths(layer) -> tuple[int, list] | None:
    """``(channel axis among the leading axes, [emission wavelength per channel, nm])`` of
    a layer whose file states one per channel (an OME-TIFF opened by napari's reader keeps
    its channels as a stack axis), else None."""
    axes = layer_axes(layer)
    if "C" not in axes[:-2]:
        return None
    channels = full_resolution(layer).shape[axes.index("C")]
    source = getattr(getattr(layer, "source", None), "path", None)
    wavelengths = logic.channel_wavelengths_nm(layer.metadata, source)
    if len(wavelengths) != channels or len({w for w in wavelengths if w}) < 2:
        return None  # not stated for every channel, or one wavelength for all
    return axes.index("C"), wavelengths
