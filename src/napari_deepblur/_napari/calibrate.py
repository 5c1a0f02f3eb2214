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
    directly; ``num_psfs`` / ``map_degree``: None for what the beads can determine;
    ``geometry``: scale/translate (and affine) of the last two axes for the added
    layers; ``stack_geometry``: those of all three axes of a 3D layer, for the beads' markers
    when every plane is used (else they get ``geometry`` with plane scale 1).
    """

    data: Any
    source: str = "beads"
    plane: tuple[int, ...] | None = ()
    optics: KnownOptics = field(default_factory=KnownOptics)
    fc: float | None = None
    kernel_size: int = 31
    num_psfs: int | None = None
    map_degree: int | None = None
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
    """The calibration and the layer data tuples to add (points first, then eigen-PSFs).

    When there were too few usable beads, ``result`` is None, ``layers`` holds the
    detections only (rejected ones with their reason) and ``error`` says what would work."""

    result: Any
    layers: list[LayerDataTuple]
    error: str = ""
    plot: Any = None  # (pixels RGBA (H, W, 4) uint8, matplotlib Figure) of :func:`plot_image`


def _plane_name(index: tuple[int, ...]) -> str:
    """ "plane 21" for the plane of index (20,) (planes count from 1, as napari's slider)."""
    return "plane " + ", ".join(str(i + 1) for i in index)


def _planes(request: CalibrateRequest) -> tuple[np.ndarray, list[str]]:
    """The plane(s) to calibrate on, and their names for messages."""
    data = np.asarray(request.data)
    if data.ndim < 2:
        raise UserError(f"expected a bead image with at least 2 dimensions, got {data.shape}")
    if data.ndim == 2:
        return data, ["the bead image"]
    if request.plane is None:
        names = [_plane_name(i) for i in np.ndindex(*data.shape[:-2])]
        return data.reshape(-1, *data.shape[-2:]), names
    return data[tuple(request.plane)], [_plane_name(tuple(request.plane))]


def iter_calibrate_layers(request: CalibrateRequest) -> Generator[Any, None, CalibrateLayers]:
    """The widget's job: yields progress, returns :class:`CalibrateLayers`."""
    from ..pipeline import Progress

    fc = request.resolved_fc()
    yield Progress(0, 0, "reading the bead image")
    planes, names = _planes(request)
    yield Progress(0, 0, "loading the calibration (first run: a few seconds)")
    from ..field import TooFewBeadsError, iter_calibrate_from_beads

    stack = planes.ndim == 3
    points_geometry = (stack and request.stack_geometry) or request.geometry
    try:
        result = yield from iter_calibrate_from_beads(
            planes,
            fc,
            num_psfs=request.num_psfs,
            map_degree=request.map_degree,
            holdout_fraction=request.holdout_fraction,
            seed=request.seed,
            kernel_size=request.kernel_size,
            image_labels=names if stack else [names[0]],
        )
    except TooFewBeadsError as exc:
        message = str(exc) + _brightest_plane_hint(request)
        points = points_layer_data(
            exc.beads, exc.kernel_size, request.source, points_geometry, stack, message
        )
        return CalibrateLayers(None, [points] if exc.beads else [], message)
    summary = result.summary()
    yield Progress(0, 0, "drawing the results")
    return CalibrateLayers(
        result,
        [
            points_layer_data(
                result.beads, result.kernel_size, request.source, points_geometry, stack, summary
            ),
            eigen_psf_layer_data(result, request.source, request.geometry, planes.shape[-2:]),
        ],
        plot=plot_image(result),
    )


#: Size of the results plot, px (it fits the dock's width).
PLOT_PX = (300, 180)


def plot_image(result, size_px: tuple[int, int] = PLOT_PX, dpi: int = 80):
    """The variance captured per component (bars, kept ones orange) and the held-out PSF
    SNR against one PSF for the field, drawn off-screen (Agg, no Qt): in the job's thread,
    so that the dock only shows the pixels (drawing it in the dock stalled the UI ~0.7 s).
    Returns ``(pixels (H, W, 4) uint8 RGBA, the Figure)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, tight_layout=True)
    canvas = FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    rows = variance_rows(result)
    kept = result.family.num_psfs
    left.bar(
        [r[0] for r in rows],
        [r[1] for r in rows],
        color=["tab:orange" if i < kept else "tab:gray" for i in range(len(rows))],
    )
    left.set_yscale("log")
    left.set_ylabel("% of variance", fontsize=8)
    left.set_title(f"kept: {100 * result.variance_captured:.2f}%", fontsize=9)
    left.tick_params(labelsize=7)
    h = result.holdout
    if h is not None:
        right.bar(
            ["model", "one PSF"],
            [h.model_mean_snr_db, h.baseline_mean_snr_db],
            color=["tab:orange", "tab:gray"],
        )
        right.set_title(f"held-out ({h.num_held_out})", fontsize=9)
    else:
        right.text(0.5, 0.5, "no held-out\nbeads", ha="center", va="center", fontsize=8)
    right.set_ylabel("PSF SNR (dB)", fontsize=8)
    right.tick_params(labelsize=7)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy(), figure


def _brightest_plane_hint(request: CalibrateRequest) -> str:
    """For one plane of a z-stack: the brightest plane (the best-focused beads), when it is
    another one, as a sentence (a stack often opens on an out-of-focus plane)."""
    data = np.asarray(request.data)
    if data.ndim < 3 or request.plane is None or len(request.plane) != data.ndim - 2:
        return ""
    peaks = data.reshape(-1, *data.shape[-2:]).max(axis=(1, 2))
    brightest = np.unravel_index(int(np.argmax(peaks)), data.shape[:-2])
    if tuple(int(i) for i in brightest) == tuple(request.plane):
        return ""
    return (
        f". {_plane_name(tuple(int(i) for i in brightest)).capitalize()} is the brightest: try it"
    )


def calibrate_layers(request: CalibrateRequest) -> CalibrateLayers:
    """:func:`iter_calibrate_layers` run to the end (tests, scripts)."""
    from ..pipeline import run

    return run(iter_calibrate_layers(request))


def points_layer_data(
    beads,
    kernel_size: int,
    source: str,
    geometry: dict | None = None,
    stack: bool = False,
    calibration: Any = None,
) -> LayerDataTuple:
    """The beads as a Points layer: ``(y, x)`` px (``(plane, y, x)`` for a stack), colour by
    status (accepted, held out, rejected), features ``status``, ``reason``, ``peak``,
    ``snr``, ``width_px``; each rejected bead's reason is written next to it.
    ``calibration`` (the report, or the error of a failed fit) goes to the metadata."""
    geometry = dict(geometry or {})
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
    import pandas  # napari's features table; imported here, in the job (0.6 s the first time)

    kwargs = {
        "name": f"{source} beads",
        "features": pandas.DataFrame(
            {
                "status": status,
                "reason": [b.reason or "-" for b in beads],
                "peak": [float(b.peak) for b in beads],
                "snr": [float(b.snr) for b in beads],
                "width_px": [float(b.width_px) for b in beads],
                "label": [b.reason for b in beads],
            }
        ),
        "text": {"string": "{label}", "color": REJECTED_COLOR, "size": 8, "anchor": "upper_left"},
        "face_color": "transparent",
        "border_color": [colors[s] for s in status] or "transparent",
        "border_width": 0.15,
        "size": float(kernel_size) / 2,
        "symbol": "square",
        "metadata": {"calibration": calibration},
        **geometry,
    }
    return coords, kwargs, "points"


#: Pixels between the eigen-PSFs of the montage, and between the bead image and it.
MONTAGE_GAP_PX = 4


def eigen_psf_montage(eigen_psfs) -> np.ndarray:
    """The eigen-PSFs ``(I, k, k)`` side by side in one 2D image ``(k, I·(k+gap) − gap)``,
    each scaled to a largest magnitude of 1 (they are signed; e2… are small)."""
    eigen = np.asarray(eigen_psfs, np.float32)
    count, k = eigen.shape[0], eigen.shape[-1]
    montage = np.zeros((k, count * (k + MONTAGE_GAP_PX) - MONTAGE_GAP_PX), np.float32)
    for i, e in enumerate(eigen):
        peak = float(np.abs(e).max())
        montage[:, i * (k + MONTAGE_GAP_PX) : i * (k + MONTAGE_GAP_PX) + k] = e / (peak or 1.0)
    return montage


def eigen_psf_layer_data(
    result, source: str, geometry: dict | None = None, image_shape=None
) -> LayerDataTuple:
    """The eigen-PSFs as one 2D Image layer (:func:`eigen_psf_montage`, e1 left), just right
    of the bead image (of ``image_shape``). 2D, it shows on every plane of a bead stack
    (a ``(I, k, k)`` layer shared the stack's Z slider and showed nothing at most planes)."""
    geometry = dict(geometry or {})
    scale = tuple(geometry.get("scale", (1.0, 1.0)))
    translate = tuple(geometry.get("translate", (0.0, 0.0)))
    if image_shape is not None:
        shift = (image_shape[-1] + 2 * MONTAGE_GAP_PX) * scale[-1]
        translate = (translate[0], translate[1] + shift)
    kwargs = {
        "name": f"{source} eigen-PSFs",
        "colormap": "bwr",
        "contrast_limits": (-1.0, 1.0),
        "scale": scale,
        "translate": translate,
        "metadata": {"calibration": result.summary(), "deepblur_layer": "eigen-PSFs"},
    }
    for key in ("units", "affine"):
        if geometry.get(key) is not None:
            kwargs[key] = geometry[key]
    data = eigen_psf_montage(result.family.eigen_psfs.detach().cpu().numpy())
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
