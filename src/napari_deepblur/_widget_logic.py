"""What the napari widgets do, without napari or Qt: the widgets' headless twins.

The dock widgets in :mod:`napari_deepblur._qt` only read their controls and the chosen
layers into a request, hand the request's generator to a thread worker, and add the layer
data tuples it returns. Everything in between lives here and is testable without a viewer:

- :class:`RunState` / :class:`RunStateMachine`: the explicit run state of a dock widget;
- :func:`check_layer`: refuse RGB, Labels, too small or otherwise unusable layers with a
  sentence that says what to do;
- :func:`optics_from_layer`: NA, wavelength and pixel size (nm) from a layer's metadata and
  scale/units, to prefill the widgets;
- :func:`iter_identify_layers` / :func:`identify_layers` and :func:`iter_deblur_layers` /
  :func:`deblur_layers`: the jobs, as generators of :class:`~napari_deepblur.pipeline.Progress`
  returning napari layer data tuples ``(data, kwargs, "image")`` (plain tuples: no napari);
- :func:`psf_metadata`, :func:`estimate_from_psf_layer`: the PSF layer's metadata (the same
  dict the PSF files carry) and back;
- :func:`coefficient_rows`, :func:`summary_text`: what the coefficient table shows;
- :func:`estimate_layers`: the layers an estimate is shown with: the PSF, the map of local
  PSFs of a tiled image (:func:`psf_map_layer_data`) and, for a space-varying estimate, the
  kernel map (:func:`kernel_map_layer_data`) and the PSF weight maps
  (:func:`weight_map_layers_data`);
- :func:`user_message`: any exception → one sentence for a notification.

Nothing here imports napari, magicgui or qtpy; torch and the pipeline are imported lazily.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .formats import (  # noqa: F401 - PSF_FORMAT, is_psf_metadata: the widgets' names
    PSF_FORMAT,
    estimate_from_psf_metadata,
    is_psf_metadata,
    psf_metadata,
    zernike_names,
)
from .formats import KnownOptics as Optics
from .formats import known_optics as optics_from_layer  # noqa: F401 - the widgets' name

#: Colormaps of the layers we add.
PSF_COLORMAP = "magma"
#: A full bar in the coefficient table is this many waves RMS.
BAR_FULL_SCALE_WAVES = 0.2
BAR_WIDTH = 16
#: Maréchal criterion: a wavefront error below this RMS (waves) is "diffraction-limited".
MARECHAL_WAVES = 0.072
#: The kernel map of a space-varying estimate: local PSFs on a grid of this many cells a side.
KERNEL_MAP_GRID = 5
#: The PSF weight maps are sampled on at most this many points a side (they are smooth).
WEIGHT_MAP_MAX_PX = 512
#: Colormap of the (signed) PSF weight maps.
WEIGHT_MAP_COLORMAP = "PiYG"
#: ``metadata["deepblur_layer"]`` of the layers that only illustrate an estimate (not images
#: to identify or deblur).
AUXILIARY_LAYERS = ("psf map", "kernel map", "weight map")

LayerDataTuple = tuple[Any, dict, str]


# -- run state --------------------------------------------------------------------------
class RunState(str, enum.Enum):
    """The run state of a dock widget."""

    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"


_TRANSITIONS = {
    RunState.IDLE: {RunState.RUNNING, RunState.FAILED},
    RunState.RUNNING: {RunState.CANCELLING, RunState.DONE, RunState.FAILED},
    RunState.CANCELLING: {RunState.IDLE, RunState.DONE, RunState.FAILED},
    RunState.DONE: {RunState.RUNNING, RunState.FAILED, RunState.IDLE},
    RunState.FAILED: {RunState.RUNNING, RunState.FAILED, RunState.IDLE},
}


class RunStateMachine:
    """Explicit run state with checked transitions and change callbacks.

    >>> s = RunStateMachine()
    >>> s.state, s.busy
    (<RunState.IDLE: 'idle'>, False)
    >>> s.set(RunState.RUNNING); s.busy
    True
    """

    def __init__(self) -> None:
        self._state = RunState.IDLE
        self._callbacks: list[Callable[[RunState], None]] = []

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def busy(self) -> bool:
        """A job is running or being cancelled: no second job may start."""
        return self._state in (RunState.RUNNING, RunState.CANCELLING)

    def connect(self, callback: Callable[[RunState], None]) -> None:
        self._callbacks.append(callback)

    def set(self, state: RunState) -> None:
        state = RunState(state)
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"run state cannot go from {self._state.value} to {state.value}")
        self._state = state
        for callback in self._callbacks:
            callback(state)


# -- messages ---------------------------------------------------------------------------
class UserError(ValueError):
    """An error whose message is already a sentence for the user (what went wrong, what
    to do)."""


def user_message(exc: BaseException, action: str = "") -> str:
    """One readable sentence for a notification (no traceback), saying what to do."""
    prefix = f"{action} failed: " if action else ""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, UserError):
        return prefix + _sentence(text)
    from .devices import is_out_of_memory
    from .models import ModelFileError, ModelNotFoundError
    from .outputs import OutputExistsError

    if is_out_of_memory(exc):
        return prefix + (
            "the GPU ran out of memory. Choose the device 'cpu', close other programs that "
            "use the GPU, or use a smaller tile size."
        )
    if isinstance(exc, ModelFileError):
        return prefix + _sentence(text) + " Choose a shipped model or another model file."
    if isinstance(exc, ModelNotFoundError):
        return prefix + _sentence(text) + " Check the path, or choose a shipped model."
    if isinstance(exc, FileNotFoundError):
        return prefix + _sentence(text) + " Check the path."
    if isinstance(exc, OutputExistsError):
        return prefix + f"{exc.path} already exists. Choose another file name."
    if isinstance(exc, ValueError):
        return prefix + _sentence(text)
    return prefix + (
        f"unexpected {type(exc).__name__}: {_sentence(text)} Please report it (napari "
        "version, image size and the settings you used)."
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


# -- layers -----------------------------------------------------------------------------
def check_layer(
    kind: str, *, rgb: bool = False, shape: Sequence[int] = (), min_size: int = 32
) -> None:
    """Refuse a layer Deep-Blur cannot use, with a :class:`UserError` that says what to do.

    ``kind``: the layer's type name ("image", "labels", …); ``shape``: its data shape.
    """
    kind = kind.lower()
    if kind == "labels":
        raise UserError(
            "this is a Labels (segmentation) layer; choose the fluorescence image layer instead"
        )
    if kind != "image":
        raise UserError(f"a {kind} layer cannot be deblurred; choose an image layer")
    if rgb:
        raise UserError(
            "this is an RGB image; Deep-Blur works on one fluorescence channel: split the "
            "channels (right-click the layer > Split RGB) and choose one"
        )
    if len(shape) < 2:
        raise UserError(f"expected an image with at least 2 dimensions, got shape {tuple(shape)}")
    if min(shape[-2:]) < min_size:
        raise UserError(
            f"the image ({shape[-2]}×{shape[-1]} px) is too small: at least "
            f"{min_size}×{min_size} px are needed"
        )


def fc_text(optics: Optics, model_fc: float | None) -> str:
    """A line about the sampling, for the widget: fc and whether it is above Nyquist
    (``model_fc``: the model's cutoff, None when the model cannot be read)."""
    from .optics import NYQUIST_FC

    model = "" if model_fc is None else f"{model_fc:.3f}"
    if not optics.complete:
        like = f" (fc = {model})" if model else ""
        return f"Optics unknown: the image is assumed sampled like the model{like}."
    try:
        fc = optics.sampling().fc
    except ValueError as exc:
        return f"⚠ {exc}"
    model = f"; model: {model}" if model else ""
    return f"fc = {fc:.3f} cycles/pixel (Nyquist: at most {NYQUIST_FC}{model})"


def plane_index(shape: Sequence[int], data_position: Sequence[float] | None) -> tuple[int, ...]:
    """Indices of the leading (non-YX) axes at ``data_position`` (rounded, clipped)."""
    lead = tuple(shape[:-2])
    if not lead:
        return ()
    if data_position is None:
        return (0,) * len(lead)
    position = list(data_position)[-len(shape) :][: len(lead)]
    position = [0.0] * (len(lead) - len(position)) + position
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(position, lead, strict=True))


def layer_geometry(
    scale: Sequence[float],
    translate: Sequence[float],
    units=None,
    *,
    rotate=None,
    shear=None,
    affine=None,
    axes: int = 2,
) -> dict:
    """Where the layers we add go: ``scale``/``translate``/``units`` of the last ``axes``
    axes (2 for the 2D layers we add) and, for a layer that is rotated, sheared or has an
    affine transform (napari's ``rotate``: an n×n matrix, ``shear``: the upper-triangular
    values of its matrix, ``affine``: an (n+1)×(n+1) matrix, in world units), ``affine``: the
    ``(axes+1)×(axes+1)`` matrix ``affine · translate · rotate · shear · translate⁻¹``, so
    that a layer laid with ``scale``/``translate`` on the image's pixel grid stays on it.

    >>> layer_geometry((2, 2), (0, 4), ("nm", "nm"))
    {'scale': (2.0, 2.0), 'translate': (0.0, 4.0), 'units': ('nm', 'nm')}
    """
    geometry: dict[str, Any] = {
        "scale": tuple(float(s) for s in scale[-axes:]),
        "translate": tuple(float(t) for t in translate[-axes:]),
    }
    if units is not None and len(units) >= axes:
        geometry["units"] = tuple(str(u) for u in list(units)[-axes:])
    n = len(scale)
    linear = np.eye(n + 1)
    if rotate is not None:
        linear[:n, :n] = np.asarray(rotate, float)
    if shear is not None:  # the upper-triangular values, row by row
        sheared = np.eye(n)
        sheared[np.triu_indices(n, 1)] = shear
        linear[:n, :n] = linear[:n, :n] @ sheared
    shift = np.eye(n + 1)
    shift[:n, n] = np.asarray(translate, float)[-n:]
    frame = shift @ linear @ np.linalg.inv(shift)
    if affine is not None:
        frame = np.asarray(affine, float) @ frame
    keep = [*range(n - axes, n), n]  # the last axes and the homogeneous coordinate
    frame = frame[np.ix_(keep, keep)]
    if not np.allclose(frame, np.eye(axes + 1)):
        geometry["affine"] = frame
    return geometry


def _on_grid(geometry: Mapping) -> dict:
    """The ``units`` and ``affine`` of ``geometry`` (:func:`layer_geometry`): what a layer
    laid on the image's pixel grid takes besides its own scale and translate."""
    return {key: geometry[key] for key in ("units", "affine") if key in geometry}


def estimate_from_psf_layer(data, metadata: Mapping | None, default_fc: float | None = None):
    """A :class:`~napari_deepblur.pipeline.BlurEstimate` from a PSF layer (an Identify
    result, or a PSF file read back): :func:`~napari_deepblur.formats.estimate_from_psf_metadata`,
    its refusals as :class:`UserError`."""
    try:
        return estimate_from_psf_metadata(data, metadata, default_fc)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def estimate_source(image: str, stack_mode: str = "plane", plane: Sequence[int] = ()) -> str:
    """The name an estimate of the image layer ``image`` goes by (its PSF layer is this name
    + " PSF", and its metadata's ``source``): ``"cell"`` for a 2D image, ``"cell [2]"`` for
    plane 2 of a stack, ``"cell median"`` for the median over the planes of a stack.

    >>> estimate_source("cell", plane=(2,)), estimate_source("cell", "median")
    ('cell [2]', 'cell median')
    """
    if stack_mode == "median":
        return f"{image} median"
    return image + (f" {[int(i) for i in plane]}" if len(plane) else "")


def is_psf_of(metadata: Mapping | None, image: str) -> bool:
    """True for a PSF identified from the image layer named ``image`` (or the file of one):
    its ``source`` is exactly :func:`estimate_source` of ``image`` for the plane(s) its
    metadata records, so the PSFs of "cell 2" or of "cell [1]" are not those of "cell"."""
    if not is_psf_metadata(metadata):
        return False
    planes = metadata.get("planes") or [()]  # a stack's PSF records its planes; a 2D's none
    source = estimate_source(image, metadata.get("stack_mode", "plane"), planes[0])
    return metadata.get("source") == source


def is_auxiliary_layer(metadata: Mapping | None) -> bool:
    """True for the layers that illustrate an estimate (PSF map, kernel map, PSF weight
    maps): not images to identify or deblur."""
    if not metadata:
        return False
    return metadata.get("deepblur_layer") in AUXILIARY_LAYERS or bool(metadata.get("tiles"))


# -- what the coefficient table shows -------------------------------------------------------
def is_field_estimate(estimate: Mapping) -> bool:
    """True for a space-varying (product-convolution) estimate (a ``to_dict()`` or PSF
    metadata): its coefficients are the γ of its family, not Zernike coefficients."""
    inner = estimate.get("estimate") if isinstance(estimate.get("estimate"), Mapping) else {}
    return bool(estimate.get("field") or inner.get("field"))


def coefficient_columns(estimate: Mapping) -> tuple[str, str, str]:
    """The coefficient table's column titles for ``estimate``."""
    if is_field_estimate(estimate):
        return ("term", "γ", "")
    return ("aberration", "waves RMS", "")


def coefficient_rows(estimate: Mapping) -> list[dict]:
    """One row per Zernike term of ``estimate`` (a ``to_dict()`` or PSF metadata):
    aberration name, Noll index, coefficient (waves RMS), its uncertainty and a text bar
    proportional to its magnitude (full bar = :data:`BAR_FULL_SCALE_WAVES`); ``label`` is
    the row's short name (``Z4``).

    For a space-varying estimate, one row per parameter ``γ[i, j]`` (no unit; ``noll`` is
    None): ``label`` is its name (``e1·f2``: eigen-PSF 1 weighted by spatial map 2),
    ``aberration`` says it in words, and the full bar is the largest ``|γ|``."""
    coefficients = (
        estimate.get("coefficients", estimate.get("coefficients_waves_rms", estimate.get("gamma")))
        or []
    )
    noll = estimate.get("noll_indices") or []
    names = estimate.get("names") or zernike_names(noll)
    uncertainty = estimate.get("uncertainty", estimate.get("uncertainty_waves_rms"))
    if not noll and is_field_estimate(estimate):
        return _field_rows(estimate, [float(c) for c in coefficients], names, uncertainty)
    rows = []
    for i, (j, c) in enumerate(zip(noll, coefficients, strict=True)):
        u = None if uncertainty is None else float(uncertainty[i])
        rows.append(
            {
                "aberration": names[i] if i < len(names) else f"Z{j}",
                "noll": int(j),
                "label": f"Z{int(j)}",
                "waves_rms": float(c),
                "uncertainty": u,
                "bar": magnitude_bar(float(c)),
            }
        )
    return rows


def _field_rows(estimate: Mapping, gamma: list[float], names, uncertainty) -> list[dict]:
    field_dict = estimate.get("field")
    if not isinstance(field_dict, Mapping):
        field_dict = (estimate.get("estimate") or {}).get("field") or {}
    num_maps = len(field_dict.get("maps") or []) or 1
    full = max((abs(g) for g in gamma), default=0.0) or 1.0
    rows = []
    for k, g in enumerate(gamma):
        i, j = divmod(k, num_maps)
        rows.append(
            {
                "aberration": f"eigen-PSF {i + 1} × map {j + 1}",
                "noll": None,
                "label": names[k] if k < len(names) else f"γ{k + 1}",
                "waves_rms": g,  # (the same key as Zernike rows; γ has no unit)
                "uncertainty": None if uncertainty is None else float(uncertainty[k]),
                "bar": magnitude_bar(g, full=full),
            }
        )
    return rows


def magnitude_bar(value: float, full: float = BAR_FULL_SCALE_WAVES, width: int = BAR_WIDTH) -> str:
    """A text bar of ``|value|`` (eighth-block resolution), ``▸`` past ``full``.

    >>> magnitude_bar(0.1, full=0.2, width=4)
    '██'
    """
    blocks = " ▏▎▍▌▋▊▉█"
    eighths = round(min(abs(value) / full, 1.0) * width * 8)
    text = "█" * (eighths // 8) + (blocks[eighths % 8] if eighths % 8 else "")
    return text + ("▸" if abs(value) > full else "")


def summary_text(estimate: Mapping, field_summary: Mapping | None = None) -> str:
    """Total aberration (RMS waves, Strehl ratio), noise and model, in a few lines. For a
    space-varying estimate, its parameters and how much the PSF changes across the field
    (``field_summary``: :func:`field_summary`, kept in the PSF layer's metadata)."""
    coefficients = np.asarray(
        estimate.get("coefficients", estimate.get("coefficients_waves_rms")) or [], float
    )
    lines = []
    if is_field_estimate(estimate):
        field_dict = estimate.get("field") or (estimate.get("estimate") or {}).get("field") or {}
        psfs, maps = len(field_dict.get("eigen_psfs") or []), len(field_dict.get("maps") or [])
        lines.append(
            f"Space-varying blur (product-convolution): {coefficients.size} parameters γ "
            f"({psfs} eigen-PSFs × {maps} spatial maps); the PSF shown is the one at the "
            "image centre."
        )
        radius = (field_summary or {}).get("rms_radius_px") or {}
        if radius:
            grid = (field_summary or {}).get("grid", KERNEL_MAP_GRID)
            lines.append(
                f"PSF RMS radius: {radius['centre']:.2f} px at the centre, "
                f"{radius['min']:.2f}–{radius['max']:.2f} px across the field "
                f"({grid}×{grid} grid)"
            )
    elif coefficients.size:
        rms = float(np.sqrt((coefficients**2).sum()))
        strehl = math.exp(-((2 * math.pi * rms) ** 2))
        verdict = "diffraction-limited" if rms < MARECHAL_WAVES else "aberrated"
        lines.append(
            f"Total aberration: {rms:.3f} waves RMS, Strehl ≈ {strehl:.2f} ({verdict}; "
            f"diffraction-limited below {MARECHAL_WAVES} waves)"
        )
    noise = estimate.get("noise") or {}
    if noise:
        lines.append(
            f"Noise: Poisson gain α = {noise.get('alpha', 0):.3g}, Gaussian std β = "
            f"{noise.get('beta', 0):.3g} (image intensity units)"
        )
    if estimate.get("refined"):
        lines.append("Refined on the image itself (fit through the physics after the network)")
    if estimate.get("uncertainty", estimate.get("uncertainty_waves_rms")) is not None:
        lines.append("± = spread over flipped/rotated copies of the image (waves RMS)")
    if estimate.get("model"):
        lines.append(f"Model: {estimate['model']}, fc = {float(estimate.get('fc', 0)):.3f}")
    return "\n".join(lines)


def rms_radius(psf: np.ndarray) -> float:
    """The RMS radius (pixels) of a PSF about its centroid (negative values clipped).

    >>> round(rms_radius(np.pad(np.ones((1, 1)), 2)), 3)
    0.0
    """
    p = np.clip(np.asarray(psf, np.float64), 0, None)
    total = p.sum()
    if total <= 0:
        return 0.0
    yy, xx = np.indices(p.shape)
    cy, cx = (p * yy).sum() / total, (p * xx).sum() / total
    return float(np.sqrt((p * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total))


def field_summary(estimate, count: int = KERNEL_MAP_GRID) -> dict | None:
    """How the PSF of a space-varying ``estimate`` changes across the field: the RMS radius
    (pixels of the image) of the centre PSF and its range over a ``count × count`` grid;
    None without a field."""
    if getattr(estimate, "field", None) is None:
        return None
    _, psfs = estimate.psf_grid(count)
    radii = [rms_radius(p) for p in psfs]
    return {
        "grid": int(count),
        "rms_radius_px": {
            "centre": rms_radius(estimate.psf),
            "min": float(min(radii)),
            "max": float(max(radii)),
        },
        "eigen_psfs": int(estimate.field.num_psfs),
        "maps": int(estimate.field.num_maps),
    }


# -- layer data tuples ------------------------------------------------------------------------
def psf_layer_data(
    estimate, source: str, geometry: Mapping, image_shape: Sequence[int] | None = None
) -> LayerDataTuple:
    """The PSF as an image layer named after the source. It is sampled at the image's
    pixels, so it takes the image's scale and units (nm for our samples and files; without
    units on the image, the pixel size in nm is kept in the metadata's ``optics``), and sits
    just right of the image (of ``image_shape``) so that both are visible."""
    geometry = layer_geometry(
        geometry.get("scale", (1.0, 1.0)),
        geometry.get("translate", (0.0, 0.0)),
        geometry.get("units"),
        affine=geometry.get("affine"),
    )
    scale, translate = geometry["scale"], geometry["translate"]
    if image_shape is not None:
        gap = 8
        translate = (translate[0], translate[1] + (image_shape[-1] + gap) * scale[1])
    kwargs: dict[str, Any] = {
        "name": f"{source} PSF",
        "colormap": PSF_COLORMAP,
        "metadata": psf_metadata(estimate, source),
        "scale": scale,
        "translate": translate,
        **_on_grid(geometry),
    }
    return np.asarray(estimate.psf, np.float32), kwargs, "image"


def _mosaic(
    positions: np.ndarray, psfs: np.ndarray, image_shape: Sequence[int], geometry: Mapping
) -> tuple[np.ndarray, dict, list[int]]:
    """Local PSFs ``(n, k, k)`` at ``positions`` ``(n, 2)`` (pixel indices ``y, x`` of the
    image, on a regular grid) as one mosaic, each PSF scaled to its own peak, and the
    ``scale``/``translate`` (world units of the image) that lay every PSF's centre over its
    position: the cells, ``k`` mosaic pixels a side, tile the image between grid points.
    Returns ``(mosaic, geometry, [rows, cols])``."""
    positions = np.asarray(positions, np.float64)
    size = int(psfs.shape[-1])
    ys = sorted({round(float(v), 3) for v in positions[:, 0]})
    xs = sorted({round(float(v), 3) for v in positions[:, 1]})
    mosaic = np.zeros((len(ys) * size, len(xs) * size), np.float32)
    for (y, x), psf in zip(positions, psfs, strict=True):
        i, j = ys.index(round(float(y), 3)), xs.index(round(float(x), 3))
        peak = float(np.max(psf))
        if peak > 0:
            mosaic[i * size : (i + 1) * size, j * size : (j + 1) * size] = psf / peak

    def step(centres, length):
        return (centres[-1] - centres[0]) / (len(centres) - 1) if len(centres) > 1 else length

    dy = step(ys, image_shape[-2])
    dx = step(xs, image_shape[-1])
    if len(ys) == 1 and len(xs) > 1:
        dy = min(dx, image_shape[-2])
    if len(xs) == 1 and len(ys) > 1:
        dx = min(dy, image_shape[-1])
    scale = tuple(geometry.get("scale", (1.0, 1.0)))
    translate = tuple(geometry.get("translate", (0.0, 0.0)))
    cell = (dy / size, dx / size)  # image pixels per mosaic pixel
    centre = (size - 1) / 2  # mosaic pixel (i·size + centre) sits over the image pixel ys[i]
    origin = (ys[0] - centre * cell[0], xs[0] - centre * cell[1])
    placed = {
        "scale": (cell[0] * scale[0], cell[1] * scale[1]),
        "translate": (translate[0] + origin[0] * scale[0], translate[1] + origin[1] * scale[1]),
        **_on_grid(geometry),
    }
    return mosaic, placed, [len(ys), len(xs)]


def psf_map_layer_data(
    estimate, source: str, image_shape: Sequence[int], geometry: Mapping, size: int = 31
) -> LayerDataTuple | None:
    """A mosaic of the local PSFs of ``estimate.tiles`` (each scaled to its own peak), laid
    over the image so that each PSF sits over its tile; None without tiles."""
    tiles = list(estimate.tiles or [])
    if not tiles or not len(estimate.noll_indices):
        return None
    # tile centres are in edge coordinates (a tile of 0..128 px has its centre at 64):
    # pixel indices are half a pixel less
    positions = np.array([[float(t["y"]) - 0.5, float(t["x"]) - 0.5] for t in tiles])
    mosaic, placed, grid = _mosaic(positions, estimate.local_psfs(size), image_shape, geometry)
    kwargs: dict[str, Any] = {
        "name": f"{source} PSF map",
        "colormap": PSF_COLORMAP,
        "blending": "additive",
        "opacity": 0.8,
        **placed,
        "metadata": {
            "deepblur_layer": "psf map",
            "source": source,
            "tiles": [
                {
                    "y": float(t["y"]),
                    "x": float(t["x"]),
                    "coefficients": [float(v) for v in t["coefficients"]],
                }
                for t in tiles
            ],
            "noll_indices": [int(j) for j in estimate.noll_indices],
            "fc": float(estimate.fc),
            "grid": grid,
        },
    }
    return mosaic, kwargs, "image"


def kernel_map_layer_data(
    estimate, source: str, geometry: Mapping, count: int = KERNEL_MAP_GRID
) -> LayerDataTuple | None:
    """The kernel map of a space-varying ``estimate``: its local PSFs at the centres of a
    ``count × count`` grid of cells over the image, each scaled to its own peak and drawn
    over its cell (one image layer aligned with the image: same world coordinates); None
    without a field. The PSFs are drawn magnified (or shrunk) to fill their cells:
    ``metadata["magnification"]`` says by how much."""
    if getattr(estimate, "field", None) is None:
        return None
    count = int(count)
    if count < 1:
        raise UserError(f"the kernel map needs at least 1 cell a side, got {count}")
    image_shape = tuple(estimate.field.shape)
    positions, psfs = estimate.psf_grid(count)
    mosaic, placed, grid = _mosaic(positions, psfs, image_shape, geometry)
    magnification = image_shape[-2] / count / psfs.shape[-1]
    kwargs: dict[str, Any] = {
        "name": f"{source} kernel map",
        "colormap": PSF_COLORMAP,
        "blending": "additive",
        "opacity": 0.8,
        **placed,
        "metadata": {
            "deepblur_layer": "kernel map",
            "source": source,
            "grid": grid,
            "positions_px": [[float(y), float(x)] for y, x in positions],
            "kernel_size_px": int(psfs.shape[-1]),
            "magnification": float(1 / magnification) if magnification else 1.0,
            "fc": float(estimate.fc),
            "note": "local PSFs, each scaled to its own peak, drawn over their grid cells",
        },
    }
    return mosaic, kwargs, "image"


def weight_map_layers_data(
    estimate, source: str, geometry: Mapping, max_px: int = WEIGHT_MAP_MAX_PX
) -> list[LayerDataTuple]:
    """The spatial maps ``m_i`` of a space-varying ``estimate`` (the weight of eigen-PSF
    ``e_i`` at every point: the local PSF is ``Σ_i m_i(y, x) e_i``), one image layer each,
    over the image (sampled on at most ``max_px`` points a side, from the image's first to
    its last pixel), hidden at first; ``[]`` without a field."""
    field_estimate = getattr(estimate, "field", None)
    if field_estimate is None:
        return []
    height, width = field_estimate.shape
    out_shape = (min(height, max_px), min(width, max_px))
    maps = field_estimate.multipliers(out_shape=out_shape).numpy().astype(np.float32)
    scale = tuple(geometry.get("scale", (1.0, 1.0)))
    translate = tuple(geometry.get("translate", (0.0, 0.0)))
    step = tuple(
        (n - 1) / (m - 1) if m > 1 else 1.0 for n, m in zip((height, width), out_shape, strict=True)
    )
    layers = []
    for i, m in enumerate(maps):
        limit = float(np.abs(m).max()) or 1.0
        kwargs: dict[str, Any] = {
            "name": f"{source} PSF weight map e{i + 1}",
            "colormap": WEIGHT_MAP_COLORMAP,
            "contrast_limits": (-limit, limit),
            "visible": False,
            "scale": (step[0] * scale[0], step[1] * scale[1]),
            "translate": translate,
            **_on_grid(geometry),
            "metadata": {
                "deepblur_layer": "weight map",
                "source": source,
                "index": i,
                "eigen_psf": field_estimate.eigen_psfs[i].tolist(),
                "fc": float(field_estimate.fc),
                "note": f"weight m{i + 1}(y, x) of eigen-PSF e{i + 1} in the local PSF "
                "Σ_i m_i(y, x) e_i (eigen-PSF at the model's sampling fc)",
            },
        }
        layers.append((m, kwargs, "image"))
    return layers


def estimate_layers(
    estimate,
    source: str,
    geometry: Mapping,
    image_shape: Sequence[int],
    kernel_grid: int = KERNEL_MAP_GRID,
) -> list[LayerDataTuple]:
    """Every layer an estimate is shown with: the PSF first; then the map of local PSFs of a
    tiled image; for a space-varying estimate, the kernel map and the PSF weight maps (and
    the PSF layer's metadata gets :func:`field_summary` as ``field_summary``)."""
    layers = [psf_layer_data(estimate, source, geometry, image_shape)]
    psf_map = psf_map_layer_data(estimate, source, image_shape, geometry)
    if psf_map is not None:
        layers.append(psf_map)
    if getattr(estimate, "field", None) is not None:
        layers[0][1]["metadata"]["field_summary"] = field_summary(estimate, kernel_grid)
        layers.append(kernel_map_layer_data(estimate, source, geometry, kernel_grid))
        layers.extend(weight_map_layers_data(estimate, source, geometry))
    return layers


# -- the jobs (headless twins of the widgets) ---------------------------------------------------
#: How the Identify widget treats a stack: the current plane, or the median over all planes.
IDENTIFY_STACK_MODES = ("plane", "median")


@dataclass
class IdentifyRequest:
    """What the Identify widget asks for. ``data`` is the layer's array (any leading axes);
    ``plane`` indexes the leading axes (``()`` for 2D). ``stack_mode``: ``"plane"`` identifies
    that one plane; ``"median"`` (stacks) the median over all planes, one plane at a time
    (:func:`napari_deepblur.pipeline.iter_identify_stack`), and ignores ``plane``.
    ``kernel_grid``: cells a side of the kernel map of a space-varying model."""

    data: Any
    source: str
    plane: tuple[int, ...] = ()
    stack_mode: str = "plane"
    model: str | None = None
    optics: Optics = field(default_factory=Optics)
    device: str = "auto"
    augment: bool = True
    refine: bool = False
    tile_px: int | None = None
    geometry: dict = field(default_factory=dict)
    kernel_grid: int = KERNEL_MAP_GRID


@dataclass
class IdentifyResult:
    estimate: Any
    layers: list[LayerDataTuple]


def _load(model, device):
    from .models import load_model

    try:
        return load_model(model, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(
            f"the model could not be loaded ({exc}); choose a shipped model or a valid "
            ".safetensors model file"
        ) from exc


def is_field_model(model) -> bool:
    """True for a space-varying (product-convolution) model."""
    from .optics.families import ProductConvolution

    return isinstance(getattr(model, "family", None), ProductConvolution)


def iter_identify_layers(request: IdentifyRequest) -> Generator[Any, None, IdentifyResult]:
    """Identify the blur of one plane, or the median over all planes of a stack
    (``stack_mode="median"``, progress in planes); yields pipeline ``Progress``, returns the
    estimate and the layers to add (:func:`estimate_layers`: the PSF; a PSF map when the
    image was processed in tiles; the kernel map and PSF weight maps of a space-varying
    model). For a stack the PSF layer's metadata lists the ``planes`` used (index lists of the
    leading axes) and the ``stack_mode``."""
    from .pipeline import DEFAULT_TILE_PX, iter_identify, iter_identify_stack, plane_indices

    if request.stack_mode not in IDENTIFY_STACK_MODES:
        raise ValueError(
            f"stack_mode must be one of {', '.join(IDENTIFY_STACK_MODES)}, "
            f"got {request.stack_mode!r}"
        )
    model = _load(request.model, request.device)
    options = {
        "device": request.device,
        "augment": request.augment,
        "refine": request.refine,
        "tile_px": request.tile_px or DEFAULT_TILE_PX,
        "sampling": request.optics.sampling(),
    }
    shape = tuple(np.shape(request.data))
    mode = request.stack_mode if len(shape) > 2 else "plane"
    if mode == "median":
        planes = plane_indices(shape)
        # every plane (max_planes: no subsampling); the loop and cancel points are the pipeline's
        estimate = yield from iter_identify_stack(
            request.data, model, mode="median", max_planes=len(planes), **options
        )
    else:
        planes = [tuple(request.plane)]
        image = np.asarray(request.data[request.plane] if request.plane else request.data)
        estimate = yield from iter_identify(image, model, **options)
    name = estimate_source(request.source, mode, request.plane)
    layers = estimate_layers(estimate, name, request.geometry, shape[-2:], request.kernel_grid)
    if len(shape) > 2:
        metadata = layers[0][1]["metadata"]
        metadata["stack_mode"] = mode
        metadata["planes"] = [[int(i) for i in index] for index in planes]
    return IdentifyResult(estimate, layers)


def identify_layers(request: IdentifyRequest) -> IdentifyResult:
    """The Identify widget without a viewer: run :func:`iter_identify_layers` to the end."""
    from .pipeline import run

    return run(iter_identify_layers(request))


@dataclass
class DeblurRequest:
    """What the Deblur widget asks for. ``plane``: indices of the leading axes to deblur one
    plane, or None for all planes. ``estimate``: a ``BlurEstimate`` or None (identify first:
    that plane, or for all planes the plane with the most contrast); ``of_this_image``: it
    was identified on this image (its sampling is then the image's, whatever ``optics``
    says: :meth:`~napari_deepblur.pipeline.Sampling.for_deblurring`). ``noise``: override
    ``{"alpha", "beta"}`` in image units, or None (the estimate's)."""

    data: Any
    source: str
    plane: tuple[int, ...] | None = ()
    estimate: Any = None
    of_this_image: bool = False
    model: str | None = None
    optics: Optics = field(default_factory=Optics)
    device: str = "auto"
    strength: float = 1.0
    noise: dict | None = None
    geometry: dict = field(default_factory=dict)
    colormap: str | None = None


@dataclass
class DeblurResult:
    restored: np.ndarray
    estimate: Any
    layers: list[LayerDataTuple]


def iter_deblur_layers(request: DeblurRequest) -> Generator[Any, None, DeblurResult]:
    """Deblur one plane or every plane (identifying the blur first when no estimate is
    given: of that plane, or for all planes of the plane with the most contrast,
    :func:`~napari_deepblur.pipeline.representative_plane`); yields pipeline ``Progress``,
    returns the restored array and the layers to add: ``"<source> deblurred"`` (and, when it
    identified, first the PSF it used, named and tagged as the Identify widget's: a stack's
    PSF records the plane in ``metadata["planes"]``)."""
    from .pipeline import iter_deblur, iter_deblur_stack, iter_identify, representative_plane

    model = _load(request.model, request.device)
    data = request.data
    layers: list[LayerDataTuple] = []
    estimate = request.estimate
    sampling = request.optics.sampling()
    of_this_image = request.of_this_image
    prepared: dict = {}  # the plane identify prepares, deblurred without preparing it again
    if estimate is None:
        plane = representative_plane(data) if request.plane is None else tuple(request.plane)
        image = np.asarray(data[plane] if plane else data)
        estimate = yield from iter_identify(
            image, model, device=request.device, sampling=sampling, prepared=prepared
        )
        if request.plane is None:  # the stack's planes are keyed by their index
            prepared = {plane: prepared[()]}
        psf = psf_layer_data(
            estimate, estimate_source(request.source, plane=plane), request.geometry, image.shape
        )
        if plane:
            psf[1]["metadata"].update(stack_mode="plane", planes=[[int(i) for i in plane]])
        layers.append(psf)
        of_this_image = True
    # the estimate knows the sampling of the image it was identified on; the layer's optics
    # matter for a PSF from elsewhere
    options = dict(
        noise=request.noise,
        strength=request.strength,
        device=request.device,
        sampling=sampling.for_deblurring(estimate, of_this_image),
    )
    if request.plane is not None:
        image = np.asarray(data[request.plane])
        restored = yield from iter_deblur(image, estimate, model, **options, prepared=prepared)
    else:  # every plane (or the only one), in the pipeline's plane loop
        restored = yield from iter_deblur_stack(data, estimate, model, **options, prepared=prepared)
    name = f"{request.source} deblurred"
    if request.plane:
        name += f" {list(request.plane)}"
    geometry = dict(request.geometry)
    kwargs: dict[str, Any] = {
        "name": name,
        "metadata": {
            "deblurred_from": request.source,
            "plane": None if request.plane is None else list(request.plane),
            "strength": float(request.strength),
            "noise": request.noise,
            "estimate": estimate.to_dict(),
        },
        **geometry,
    }
    if request.colormap:
        kwargs["colormap"] = request.colormap
    layers.append((restored.astype(np.float32, copy=False), kwargs, "image"))
    return DeblurResult(restored, estimate, layers)


def deblur_layers(request: DeblurRequest) -> DeblurResult:
    """The Deblur widget without a viewer: run :func:`iter_deblur_layers` to the end."""
    from .pipeline import run

    return run(iter_deblur_layers(request))


def guarded(job: Generator, action: str) -> Generator:
    """Run ``job`` (``yield from``), turning any exception into a :class:`UserError` with a
    sentence (thread workers swallow RuntimeErrors raised by generators, so a CUDA
    out-of-memory error would otherwise never reach the user)."""
    try:
        return (yield from job)
    except Exception as exc:  # noqa: BLE001 - every error becomes a message
        raise UserError(user_message(exc, action)) from exc


def matched_contrast_limits(*arrays, percentiles=(0.5, 99.8)) -> tuple[float, float]:
    """Common contrast limits for side-by-side views (robust percentiles over all arrays)."""
    samples = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float32).ravel()
        if a.size > 1_000_000:
            a = a[:: a.size // 1_000_000]
        samples.append(a[np.isfinite(a)])
    values = np.concatenate(samples)
    low, high = np.percentile(values, percentiles)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)
