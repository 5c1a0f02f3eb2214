"""What the "Calibrate from beads" widget does, without napari or Qt (its headless twin).

:func:`iter_calibrate_layers` runs :func:`napari_deepblur.field.iter_calibrate_from_beads` on
the chosen plane (or on every plane of a stack, each a state of the microscope) and
returns the layers to add as plain layer data tuples: the detected beads as a Points layer
(accepted and rejected in different colours, the reason of each as a feature) and the
eigen-PSFs as an Image layer. :func:`variance_rows` and :func:`holdout_text` are what the
widget's plot and summary show.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats import KnownOptics
from .layers import LayerDataTuple
from .messages import UserError

#: Point colours (RGBA names napari understands).
ACCEPTED_COLOR = "lime"
REJECTED_COLOR = "red"
HELD_OUT_COLOR = "cyan"


@dataclass
class CalibrateRequest:
    """What the widget read from its controls.

    ``data``: the bead layer's array ``(…, Y, X)`` (never modified); ``plane``: indices of
    the leading axes of the plane to use, or None for all planes (each a state of the
    microscope); ``optics`` (NA, λ nm, pixel nm) or ``fc`` (cycles/pixel) when given
    directly; ``geometry``: scale/translate (and affine) of the last two axes for the added
    layers; ``stack_geometry``: those of all three axes of a 3D layer, for the beads' markers
    when every plane is used (else they get ``geometry`` with plane scale 1).
    """

    data: Any
    source: str = "beads"
    plane: tuple[int, ...] | None = ()
    optics: KnownOptics = field(default_factory=KnownOptics)
    fc: float | None = None
    kernel_size: int = 31
    num_psfs: int = 4
    map_degree: int = 2
    holdout_fraction: float = 0.2
    seed: int = 0
    geometry: dict = field(default_factory=dict)
    stack_geometry: dict = field(default_factory=dict)

    def resolved_fc(self) -> float:
        """The cutoff in cycles/pixel: ``fc`` if given, else from the optics (checked)."""
        from ..pipeline import Sampling

        sampling = Sampling.of(fc=self.fc) if self.fc is not None else self.optics.sampling()
        if not sampling.known:
            raise UserError("give NA, wavelength and pixel size, or the cutoff fc")
        return sampling.fc


@dataclass
class CalibrateLayers:
    """The calibration and the layer data tuples to add (points first, then eigen-PSFs)."""

    result: Any
    layers: list[LayerDataTuple]


def _planes(request: CalibrateRequest) -> np.ndarray:
    data = np.asarray(request.data)
    if data.ndim < 2:
        raise UserError(f"expected a bead image with at least 2 dimensions, got {data.shape}")
    if data.ndim == 2:
        return data
    if request.plane is None:
        return data.reshape(-1, *data.shape[-2:])
    return data[tuple(request.plane)]


def iter_calibrate_layers(request: CalibrateRequest) -> Generator[Any, None, CalibrateLayers]:
    """The widget's job: yields progress, returns :class:`CalibrateLayers`."""
    from ..field import iter_calibrate_from_beads

    fc = request.resolved_fc()
    planes = _planes(request)
    result = yield from iter_calibrate_from_beads(
        planes,
        fc,
        num_psfs=request.num_psfs,
        map_degree=request.map_degree,
        holdout_fraction=request.holdout_fraction,
        seed=request.seed,
        kernel_size=request.kernel_size,
    )
    stack = planes.ndim == 3
    return CalibrateLayers(
        result,
        [
            points_layer_data(
                result,
                request.source,
                (stack and request.stack_geometry) or request.geometry,
                stack,
            ),
            eigen_psf_layer_data(result, request.source, request.geometry),
        ],
    )


def calibrate_layers(request: CalibrateRequest) -> CalibrateLayers:
    """:func:`iter_calibrate_layers` run to the end (tests, scripts)."""
    from ..pipeline import run

    return run(iter_calibrate_layers(request))


def points_layer_data(
    result, source: str, geometry: dict | None = None, stack: bool = False
) -> LayerDataTuple:
    """The beads as a Points layer: ``(y, x)`` px (``(plane, y, x)`` for a stack), colour by
    status (accepted, held out, rejected), features ``status``, ``reason``, ``peak``,
    ``snr``, ``width_px``."""
    geometry = dict(geometry or {})
    beads = result.beads
    coords = np.array(
        [([b.image] if stack else []) + [b.y_px, b.x_px] for b in beads], dtype=float
    ).reshape(-1, 3 if stack else 2)
    status = [
        "rejected" if not b.accepted else "held out" if b.held_out else "accepted" for b in beads
    ]
    colors = {"accepted": ACCEPTED_COLOR, "held out": HELD_OUT_COLOR, "rejected": REJECTED_COLOR}
    if stack and len(geometry.get("scale", ())) != 3:  # the planes' geometry only
        for key, lead in (("scale", 1.0), ("translate", 0.0)):
            if key in geometry:
                geometry[key] = (lead, *geometry[key])
        geometry.pop("units", None)
        if "affine" in geometry:  # the image's rotation/affine, on the last two axes
            affine = np.eye(4)
            affine[1:, 1:] = geometry["affine"]
            geometry["affine"] = affine
    kwargs = {
        "name": f"{source} beads",
        "features": {
            "status": status,
            "reason": [b.reason or "-" for b in beads],
            "peak": [float(b.peak) for b in beads],
            "snr": [float(b.snr) for b in beads],
            "width_px": [float(b.width_px) for b in beads],
        },
        "face_color": "transparent",
        "border_color": [colors[s] for s in status],
        "border_width": 0.15,
        "size": float(result.kernel_size) / 2,
        "symbol": "square",
        "metadata": {"calibration": result.summary()},
        **geometry,
    }
    return coords, kwargs, "points"


def eigen_psf_layer_data(result, source: str, geometry: dict | None = None) -> LayerDataTuple:
    """The eigen-PSFs ``(I, k, k)`` as an Image layer (one per plane of its first axis)."""
    geometry = dict(geometry or {})
    scale = geometry.get("scale")
    kwargs = {
        "name": f"{source} eigen-PSFs",
        "colormap": "magma",
        "metadata": {"calibration": result.summary()},
    }
    if scale is not None:
        kwargs["scale"] = (1.0, *scale)
    data = result.family.eigen_psfs.detach().cpu().numpy().astype(np.float32)
    return data, kwargs, "image"


def variance_rows(result) -> list[tuple[str, float, float]]:
    """``(component, % of the energy, cumulative %)`` per PCA component of the bead PSFs."""
    rows, total = [], 0.0
    for i, v in enumerate(result.variance_per_component):
        total += v
        rows.append((f"e{i + 1}", 100 * v, 100 * total))
    return rows


def holdout_text(result) -> str:
    """One line on the held-out beads: model vs single-PSF baseline PSF SNR."""
    h = result.holdout
    if h is None:
        return f"Held-out beads: none ({result.holdout_note})."
    return (
        f"Held-out beads ({h.num_held_out}, fit on {h.num_fit}): PSF SNR {h.model_mean_snr_db:.1f}"
        f" dB vs {h.baseline_mean_snr_db:.1f} dB with one PSF for the field "
        f"({h.gain_db:+.1f} dB)."
    )
