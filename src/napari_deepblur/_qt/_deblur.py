"""The "Deblur" dock widget: image layer + blur estimate → "<name> deblurred", and a
side-by-side comparison.

Thin: it reads its controls into a :class:`~napari_deepblur._napari.DeblurRequest` and
runs :func:`~napari_deepblur._napari.iter_deblur_layers` (the headless twin) in a
thread worker. The input layer is never modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton

from .. import _napari as logic
from ._job import (
    MODEL_FILE_CHOICE,
    JobWidget,
    device_choices,
    full_resolution,
    layer_axes,
    layer_geometry,
    layer_optics,
    notify_error,
    notify_info,
    notify_warning,
)
from ._psf_files import settle_psf_layer, watch_psf_files
from ._view import camera, fit_all, reveal
from ._view import grid as _grid

if TYPE_CHECKING:
    import napari

IDENTIFY_FIRST = "identify first (automatic)"
CURRENT_PLANE = "current plane"
ALL_PLANES = "all planes"


class DeblurWidget(JobWidget):
    """Remove the blur of an image layer with a PSF estimate.

    The "Blur estimate" list offers the PSF layers identified on the chosen image, latest
    first (the latest is chosen); those of other images only when ``_other_estimates`` ("Show
    estimates of other images") is ticked, labelled as such, and deblurring with one whose
    optics differ from the image's warns. Choosing an estimate sets the model to the one it
    was identified with (or warns when that model is not available).

    Private sub-widgets (tests drive them): ``_image_layer``, ``_planes``, ``_psf_layer``,
    ``_other_estimates``, ``_psf_file``, ``_open_psf_button``, ``_model``, ``_model_file``,
    ``_device``, ``_strength``, ``_noise_override``, ``_noise_alpha``, ``_noise_beta``,
    ``_run_button``, ``_progress``, ``_status``, ``_compare_button``.
    """

    action = "Deblur"

    def __init__(self, viewer: napari.viewer.Viewer, scrollable: bool = True) -> None:
        super().__init__(viewer, labels=False, scrollable=scrollable)
        self._image_layer = ComboBox(label="Image", choices=self._image_layer_choices)
        self._planes = ComboBox(
            label="Planes", choices=[CURRENT_PLANE, ALL_PLANES], value=CURRENT_PLANE
        )
        self._other_estimates = CheckBox(
            text="Show estimates of other images",
            value=False,
            tooltip="Offer the PSFs identified on other images too (their optics may "
            "differ: a warning says so when you deblur).",
        )
        self._psf_layer = ComboBox(label="Blur estimate", choices=self._psf_choices)
        self._psf_file = FileEdit(label="…or a PSF file", mode="r", filter="*.tif *.tiff *.json")
        self._open_psf_button = PushButton(text="Open PSF file")
        self._model, self._model_file = self._make_model_widgets()
        self._device = ComboBox(label="Device", choices=device_choices, value="auto")
        self._when_torch_ready(self._device.reset_choices)  # the accelerators need torch
        from ..model_files import STRENGTH_RANGE

        low, high = STRENGTH_RANGE
        self._strength = FloatSpinBox(
            label="Strength",
            value=1.0,
            min=low,
            max=high,
            step=0.05,
            tooltip="Multiplies the noise level the network assumes: > 1 smoother, < 1 sharper "
            f"({low:g}–{high:g}; outside it the network adds artefacts).",
        )
        self._noise_override = CheckBox(text="Set the noise by hand", value=False)
        self._noise_alpha = FloatSpinBox(
            label="Poisson gain α", value=0.0, min=0.0, max=1e9, step=0.001, visible=False
        )
        self._noise_beta = FloatSpinBox(
            label="Gaussian std β", value=0.0, min=0.0, max=1e9, step=0.001, visible=False
        )
        self._compare_button = PushButton(text="Compare side by side", enabled=False)
        settings = Container(
            labels=True,
            widgets=[
                self._image_layer,
                self._planes,
                self._psf_layer,
                self._other_estimates,
                self._psf_file,
            ],
        )
        options = Container(
            labels=True,
            widgets=[
                self._model,
                self._model_file,
                self._device,
                self._strength,
                self._noise_override,
                self._noise_alpha,
                self._noise_beta,
            ],
        )
        self.extend(
            [
                settings,
                self._open_psf_button,
                options,
                self._run_button,
                self._progress,
                self._status,
                self._compare_button,
            ]
        )
        self._settle_layout()
        self._raw_layer = None
        self._result_layer = None
        self._comparing = False
        self._saved_view: dict = {}
        self._image_layer.changed.connect(self._on_layer_changed)
        self._psf_layer.changed.connect(self._on_psf_changed)
        self._other_estimates.changed.connect(self._on_other_estimates)
        self._noise_override.changed.connect(self._on_noise_override)
        self._open_psf_button.changed.connect(self._on_open_psf_clicked)
        self._compare_button.changed.connect(self._on_compare_clicked)
        self._connect_layer_events()
        self._viewer.layers.events.inserted.connect(self._on_layer_inserted)
        watch_psf_files(self._viewer)  # PSF files opened by napari's reader
        self.reset_choices()
        self._on_layer_changed(self._image_layer.value)

    # -- choices --------------------------------------------------------------------------
    def _psf_choices(self, _widget=None) -> list:
        """ "identify first", the PSF layers of the chosen image (latest first), then, when
        "Show estimates of other images" is ticked, the others (labelled as such)."""
        psfs = [
            layer
            for layer in self._viewer.layers
            if logic.is_psf_metadata(getattr(layer, "metadata", None))
        ]
        image = self._image_layer.value
        mine, others = logic.order_estimates(
            None if image is None else image.name,
            [(layer.name, layer.metadata) for layer in psfs],
            include_others=bool(self._other_estimates.value),
        )
        foreign = [
            (
                logic.OTHER_IMAGE_LABEL.format(
                    name=psfs[i].name, source=psfs[i].metadata.get("source") or "unknown"
                ),
                psfs[i],
            )
            for i in others
        ]
        return [(IDENTIFY_FIRST, None), *((psfs[i].name, psfs[i]) for i in mine), *foreign]

    def _latest_estimate(self) -> Any:
        """The latest PSF layer identified on the chosen image, or None."""
        choices = self._psf_choices()
        return choices[1][1] if len(choices) > 1 and self._is_mine(choices[1][1]) else None

    def _is_mine(self, psf) -> bool:
        image = self._image_layer.value
        return image is not None and logic.is_psf_of(psf.metadata, image.name)

    def _on_layer_inserted(self, event) -> None:
        """A new PSF layer (identified or opened) of the chosen image becomes the estimate
        to use (one of another image is only offered, with "Show estimates of other
        images"). Any new layer ends a comparison (it would take a grid cell, unseen)."""
        layer = event.value
        if self._comparing:  # a layer added meanwhile (Identify): it is shown, in no grid
            self.end_comparison()
        settle_psf_layer(self._viewer, layer)  # a PSF file opened by napari's reader
        if logic.is_psf_metadata(getattr(layer, "metadata", None)):
            self._psf_layer.reset_choices()
            if self._is_mine(layer):
                self._psf_layer.value = layer

    def _on_layer_changed(self, layer: Any) -> None:
        """Another image: its own latest estimate (or "identify first"), never the
        estimate chosen for the previous image."""
        shape = () if layer is None else tuple(layer.data.shape)
        self._planes.visible = len(shape) > 2 and not getattr(layer, "rgb", False)
        self._psf_layer.reset_choices()
        self._psf_layer.value = self._latest_estimate()

    def _on_other_estimates(self, value: bool) -> None:
        """Offer (or stop offering) other images' estimates; one chosen that is no longer
        offered gives way to the image's latest."""
        chosen = self._psf_layer.value
        self._psf_layer.reset_choices()
        offered = any(chosen is v for _, v in self._psf_choices())
        self._psf_layer.value = chosen if offered else self._latest_estimate()

    def _on_psf_changed(self, layer: Any) -> None:
        noise = {} if layer is None else (layer.metadata.get("noise") or {})
        if noise and not self._noise_override.value:
            self._noise_alpha.value = max(float(noise.get("alpha", 0.0)), 0.0)
            self._noise_beta.value = max(float(noise.get("beta", 0.0)), 0.0)
        if layer is not None:
            self._follow_estimate_model(layer)

    def _follow_estimate_model(self, psf) -> None:
        """Deblur with the model the estimate was identified with (a field estimate with
        field-default), or warn when it is not available here."""
        current = self._model.value
        if current == MODEL_FILE_CHOICE:
            current = Path(str(self._model_file.value)).stem
        available = [c for c in self._model.choices if c != MODEL_FILE_CHOICE]
        follow = logic.model_to_follow(psf.metadata, current, available)
        if follow is None:
            return
        if follow.startswith("⚠"):
            notify_warning(f"Deblur with '{psf.name}': {follow[1:].strip()}")
            return
        self._model.value = follow
        notify_info(f"Deblur: model set to '{follow}', the model '{psf.name}' was identified with.")

    def _on_noise_override(self, value: bool) -> None:
        self._noise_alpha.visible = self._noise_beta.visible = bool(value)

    # -- controls → request ---------------------------------------------------------------
    def _prepare(self):
        layer = self._image_layer.value
        if layer is None:
            raise logic.UserError("open an image first (File > Open, or File > Open Sample)")
        shape = full_resolution(layer).shape
        logic.check_layer(type(layer).__name__, rgb=getattr(layer, "rgb", False), shape=shape)
        data = full_resolution(layer)
        all_planes = len(shape) > 2 and self._planes.value == ALL_PLANES
        if all_planes:
            logic.check_not_across_channels(
                layer_axes(layer), shape, "deblurring all planes with one PSF"
            )
        psf_layer = self._psf_layer.value
        estimate = None
        if psf_layer is not None:
            estimate = logic.estimate_from_psf_layer(psf_layer.data, psf_layer.metadata)
        of_this_image = psf_layer is not None and logic.is_psf_of(psf_layer.metadata, layer.name)
        optics = layer_optics(layer)
        if psf_layer is not None and not of_this_image:
            warning = logic.foreign_estimate_warning(
                psf_layer.name, psf_layer.metadata, layer.name, optics
            )
            if warning:
                notify_warning(warning)
        model = self._model_value()
        if psf_layer is not None:
            self._warn_other_model(psf_layer, Path(model).stem)
        noise = None
        if self._noise_override.value:
            noise = {"alpha": float(self._noise_alpha.value), "beta": float(self._noise_beta.value)}
        request = logic.DeblurRequest(
            data=data,
            source=layer.name,
            plane=None if all_planes else self._current_plane(layer),
            estimate=estimate,
            of_this_image=of_this_image,
            model=model,
            optics=optics,
            device=self._device.value,
            strength=float(self._strength.value),
            noise=noise,
            geometry=layer_geometry(layer, axes=len(shape) if all_planes else 2),
            colormap=getattr(layer.colormap, "name", None),
        )
        return logic.iter_deblur_layers(request)

    def _warn_other_model(self, psf, model: str) -> None:
        """Deblurring with another model than the estimate's runs, but is a mismatch."""
        identified_with = logic.estimate_model(psf.metadata)
        if identified_with and identified_with != model:
            notify_warning(
                f"Deblur: '{psf.name}' was identified with the model '{identified_with}' and "
                f"is deblurred with '{model}': choose '{identified_with}' as the Model, "
                "unless you are comparing models."
            )

    # -- result → viewer --------------------------------------------------------------------
    def _finish(self, result: logic.DeblurResult) -> None:

        if self._comparing:
            self.end_comparison()
        added = self._add_layers(result.layers)
        reveal(self._viewer, added)
        self._result_layer = added[-1]
        self._raw_layer = raw = self._job_layer  # (the image the job ran on)
        if raw is not None and raw in self._viewer.layers:
            self._result_layer.contrast_limits = logic.matched_contrast_limits(
                _current(raw, self._viewer), self._result_layer.data
            )
        self._compare_button.enabled = True
        self._status.value = f"Added '{self._result_layer.name}'" + (
            _identified(added[0]) if len(added) > 1 else "."
        )

    # -- compare --------------------------------------------------------------------------------
    def _on_compare_clicked(self, *_: Any) -> None:
        if self._comparing:
            self.end_comparison()
        else:
            self.compare()

    def compare(self) -> None:
        """Raw and deblurred side by side (grid mode, only those two visible, in 2D), with
        the same contrast limits; the cameras are shared, so zoom and pan stay linked."""
        raw, result = self._raw_layer, self._result_layer
        layers = self._viewer.layers
        if raw is None or result is None:
            notify_error("Compare failed: deblur an image first.")
            return
        missing = [layer.name for layer in (raw, result) if layer not in layers]
        if missing:
            notify_error(
                f"Compare failed: '{missing[0]}' is no longer in the viewer; deblur an image "
                "to compare it with its result."
            )
            return
        view = camera(self._viewer)
        self._saved_view = {
            "camera": (tuple(view.center), float(view.zoom)),
            "visible": {layer: layer.visible for layer in layers},
            "grid": _grid(self._viewer).enabled,
            "limits": {raw: tuple(raw.contrast_limits), result: tuple(result.contrast_limits)},
            "ndisplay": self._viewer.dims.ndisplay,
        }
        # side by side in 3D: small, clipped views; and going to 2D may move the sliders,
        # so the contrast is matched on the plane shown after
        self._viewer.dims.ndisplay = 2
        limits = logic.matched_contrast_limits(_current(raw, self._viewer), result.data)
        self._saved_view["matched"] = limits
        for layer in layers:
            layer.visible = layer in (raw, result)
        for layer in (raw, result):
            layer.contrast_limits = limits
        # grid cells follow the layer list from its bottom: raw left, deblurred right
        if layers.index(raw) > layers.index(result):
            layers.move(layers.index(raw), layers.index(result))
        _grid(self._viewer).enabled = True
        fit_all(self._viewer)  # each grid cell shows its whole image
        self._comparing = True
        self._compare_button.text = "End comparison"

    def end_comparison(self) -> None:
        """Back to the view before :meth:`compare` (visibility, grid mode, 2D or 3D view,
        contrast)."""
        saved = self._saved_view
        # the grid first: each layer shown again in grid mode re-lays every cell (12
        # layers: 1.9 s of frozen window, against ~0.1 s)
        _grid(self._viewer).enabled = saved.get("grid", False)
        self._viewer.dims.ndisplay = saved.get("ndisplay", self._viewer.dims.ndisplay)
        for layer, visible in saved.get("visible", {}).items():
            if layer in self._viewer.layers:
                layer.visible = visible
        for layer, before in saved.get("limits", {}).items():
            # (unless changed meanwhile: the user's own contrast stays)
            if layer in self._viewer.layers and np.allclose(
                layer.contrast_limits, saved["matched"]
            ):
                layer.contrast_limits = before
        if "camera" in saved:
            camera(self._viewer).center, camera(self._viewer).zoom = saved["camera"]
        self._comparing = False
        self._saved_view = {}
        self._compare_button.text = "Compare side by side"

    # -- PSF files ------------------------------------------------------------------------------
    def _on_open_psf_clicked(self, *_: Any) -> None:
        self.open_psf(self._psf_file.value)

    def open_psf(self, path) -> Any:
        """Read an exported PSF file into a layer and use it as the estimate."""
        from napari.layers import Layer

        from .._reader import read_psf_layers

        try:
            [ldt] = read_psf_layers(str(Path(str(path)).expanduser()))
        except Exception as exc:  # noqa: BLE001
            notify_error(
                logic.user_message(exc, "Opening the PSF file")
                + " Choose a PSF exported by Deep-Blur (a .tif with its .json)."
            )
            return None
        layer = self._viewer.add_layer(Layer.create(*ldt))  # (placed by _on_layer_inserted)
        if not self._is_mine(layer):  # opening it is the explicit choice of another's PSF
            self._other_estimates.value = True
        self._psf_layer.reset_choices()
        self._psf_layer.value = layer
        return layer


def _identified(psf) -> str:
    """How the status says where the blur was identified (identify first)."""
    planes = psf.metadata.get("planes")
    where = f" on plane {planes[0]}" if planes else ""
    return f", with the blur identified{where} ('{psf.name}')."


def _current(layer, viewer):
    """The plane of ``layer`` shown now (for contrast limits of large stacks)."""
    data = full_resolution(layer)
    if data.ndim <= 2:
        return data
    from .._napari import plane_index

    return data[plane_index(data.shape, layer.world_to_data(viewer.dims.point))]
