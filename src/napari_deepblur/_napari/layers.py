"""Layers in and out, as plain napari layer data tuples ``(data, kwargs, "image")`` (no
napari here): checks of the layers chosen (:func:`check_layer`), where the layers we add
go (:func:`layer_geometry`), which PSF layer is whose (:func:`estimate_source`,
:func:`is_psf_of`), and the layers an estimate is shown with (:func:`estimate_layers`: the
PSF, the map of local PSFs of a tiled image, the kernel map and PSF weight maps of a
space-varying estimate). The metadata of PSF layers is :mod:`napari_deepblur.formats`'."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..formats import estimate_from_psf_metadata, is_psf_metadata, psf_metadata
from .messages import UserError
from .tables import KERNEL_MAP_GRID, field_summary

#: Colormaps of the layers we add.
PSF_COLORMAP = "magma"


#: The PSF weight maps are sampled on at most this many points a side (they are smooth).
WEIGHT_MAP_MAX_PX = 512


#: Colormap of the (signed) PSF weight maps.
WEIGHT_MAP_COLORMAP = "PiYG"


#: ``metadata["deepblur_layer"]`` of the layers that only illustrate an estimate (not images
#: to identify or deblur).
AUXILIARY_LAYERS = ("psf map", "kernel map", "weight map", "eigen-PSFs")


LayerDataTuple = tuple[Any, dict, str]


#: The smallest image side (px, at the model's sampling) the shipped models identify (their
#: identification network's ``min_size``) and deblur (larger than the 31 px blur kernel).
IDENTIFY_MIN_PX = 96
DEBLUR_MIN_PX = 32


def check_layer(
    kind: str, *, rgb: bool = False, shape: Sequence[int] = (), min_size: int = DEBLUR_MIN_PX
) -> None:
    """Refuse a layer Deep-Blur cannot use, with a :class:`UserError` that says what to do.

    ``kind``: the layer's type name ("image", "labels", …); ``shape``: its data shape. An
    image under ``min_size`` px a side is refused with both minimums (the pipeline checks
    them exactly, at the model's sampling, when it runs).
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
            f"the image ({shape[-2]}×{shape[-1]} px) is too small: identifying the blur "
            f"needs at least {IDENTIFY_MIN_PX} px a side and deblurring with a known PSF "
            f"{DEBLUR_MIN_PX} px, at the model's sampling; use a larger crop"
        )


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


def renamed_source(metadata: Mapping | None, old_image: str, new_image: str) -> str | None:
    """The ``source`` a PSF identified from the image layer ``old_image`` has once that
    image is renamed ``new_image`` (so that it stays that image's estimate); None for
    anything else.

    >>> from napari_deepblur.formats import PSF_FORMAT
    >>> meta = {"format": PSF_FORMAT, "source": "cell [2]", "planes": [[2]]}
    >>> renamed_source(meta, "cell", "cell A"), renamed_source(meta, "other", "cell A")
    ('cell A [2]', None)
    """
    if not is_psf_of(metadata, old_image):
        return None
    planes = metadata.get("planes") or [()]
    return estimate_source(new_image, metadata.get("stack_mode", "plane"), planes[0])


def rename_sources(metadatas: Iterable, old_image: str, new_image: str) -> None:
    """The image layer ``old_image`` renamed ``new_image``: its PSFs among ``metadatas``
    (layer metadata dicts, changed in place) take the new name as their ``source``."""
    for metadata in metadatas:
        source = renamed_source(metadata, old_image, new_image)
        if source is not None:
            metadata["source"] = source


def is_auxiliary_layer(metadata: Mapping | None) -> bool:
    """True for the layers that illustrate an estimate (PSF map, kernel map, PSF weight
    maps): not images to identify or deblur."""
    if not metadata:
        return False
    return metadata.get("deepblur_layer") in AUXILIARY_LAYERS or bool(metadata.get("tiles"))


def psf_layer_data(
    estimate, source: str, geometry: Mapping, image_shape: Sequence[int] | None = None
) -> LayerDataTuple:
    """The PSF as an image layer named after the source. It is sampled at the image's
    pixels, so it takes the image's scale and units (nm for our samples and files; without
    units on the image, the pixel size in nm is kept in the metadata's ``optics``), and sits
    just right of the image (of ``image_shape``) so that both are visible."""
    kwargs: dict[str, Any] = {
        "name": f"{source} PSF",
        "colormap": PSF_COLORMAP,
        "metadata": psf_metadata(estimate, source),
        **beside_image(geometry, image_shape),
    }
    return np.asarray(estimate.psf, np.float32), kwargs, "image"


#: Pixels of the image between it and its PSF layer.
PSF_GAP_PX = 8


def beside_image(geometry: Mapping, image_shape: Sequence[int] | None = None) -> dict:
    """Where a PSF layer of the image of ``geometry`` (:func:`layer_geometry`, 2 axes) and
    ``image_shape`` goes: on the image's pixel grid (its ``scale``, ``units``, ``affine``),
    :data:`PSF_GAP_PX` px right of the image (at its origin without ``image_shape``).

    >>> beside_image({"scale": (2.0, 2.0), "translate": (0.0, 0.0)}, (64, 64))["translate"]
    (0.0, 144.0)
    """
    geometry = layer_geometry(
        geometry.get("scale", (1.0, 1.0)),
        geometry.get("translate", (0.0, 0.0)),
        geometry.get("units"),
        affine=geometry.get("affine"),
    )
    scale, translate = geometry["scale"], geometry["translate"]
    if image_shape is not None:
        translate = (translate[0], translate[1] + (image_shape[-1] + PSF_GAP_PX) * scale[1])
    return {"scale": scale, "translate": translate, **_on_grid(geometry)}


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


def deblurred_layer_kwargs(request, estimate, **extra_metadata) -> dict[str, Any]:
    """The restored layer's kwargs for a Deblur ``request`` (name, its metadata: source,
    plane, strength, noise and the ``estimate`` used, plus ``extra_metadata``; the image's
    geometry; its colormap)."""
    name = f"{request.source} deblurred"
    if request.plane:
        name += f" {list(request.plane)}"
    kwargs: dict[str, Any] = {
        "name": name,
        "metadata": {
            "deblurred_from": request.source,
            "plane": None if request.plane is None else list(request.plane),
            "strength": float(request.strength),
            "noise": request.noise,
            "estimate": estimate.to_dict(),
            **extra_metadata,
        },
        **dict(request.geometry),
    }
    if request.colormap:
        kwargs["colormap"] = request.colormap
    return kwargs


def matched_contrast_limits(*arrays, percentiles=(0.5, 99.8)) -> tuple[float, float]:
    """Common contrast limits for side-by-side views (robust percentiles over all arrays)."""
    samples = []
    for a in arrays:
        if isinstance(a, Sequence) and not isinstance(a, np.ndarray):  # multiscale levels
            a = a[-1]
        if not isinstance(a, np.ndarray) and a.size > 4_000_000:  # lazy: a strided sample
            step = int(np.ceil(np.sqrt(a.size / 1_000_000)))
            a = a[..., ::step, ::step]
        a = np.asarray(a, dtype=np.float32).ravel()
        if a.size > 1_000_000:
            a = a[:: a.size // 1_000_000]
        samples.append(a[np.isfinite(a)])
    values = np.concatenate(samples)
    low, high = np.percentile(values, percentiles)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)
