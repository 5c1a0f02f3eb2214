"""Deblur: one 2D image (or array-like, or dask array) tile by tile with the deblurring
network, with the estimate of its blur and the noise that identify measured."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .. import devices, notices
from ..devices import empty_cache, is_out_of_memory
from ..intensity import denormalize, normalize
from ..models import DeepBlurModel, as_model, fall_back_to_cpu
from ..optics import Convolution, ZernikeConvolution
from ..optics.noise import NOISE_MIN_SIDE_PX, noise_sigma_map
from ._estimate import BlurEstimate
from ._identify import identify_plane
from ._prepare import (
    PreparedPlane,
    _check_dtype,
    as_image,
    check_finite,
    check_noise_and_strength,
    check_size,
    prepare_plane,
)
from ._progress import PREPARING, Progress, run
from ._sampling import Sampling, resample, resample_psf, resamples
from ._tiling import (
    DEFAULT_TILE_PX,
    _blend_window,
    _grid_factor,
    _read_tile,
    _store_rows,
    _tile_layout,
)


def _deblurring_model(model, device) -> DeepBlurModel:
    model = as_model(model, device)
    if model.deblurring is None:
        raise ValueError(f"the model {model.name!r} has no deblurring network")
    return model


def iter_deblur(
    image,
    estimate: BlurEstimate | None = None,
    model=None,
    *,
    sampling: Sampling | None = None,
    noise=None,
    strength: float = 1.0,
    fc=None,
    pixel_size_nm=None,
    na=None,
    wavelength_nm=None,
    refractive_index=None,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
    prepared: dict | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Generator form of :func:`deblur`: yields :class:`Progress` per tile. ``prepared``:
    the dict :func:`iter_identify` filled when it identified this same image (its
    ``estimate``): the image is then not prepared again (resampled, ranged, its noise
    measured); without ``estimate`` the dict receives the image prepared here."""
    model = _deblurring_model(model, device)
    sampling = Sampling.given(
        sampling,
        fc=fc,
        pixel_size_nm=pixel_size_nm,
        na=na,
        wavelength_nm=wavelength_nm,
        refractive_index=refractive_index,
    )
    check_noise_and_strength(noise, strength)
    raw = as_image(image, 16)
    out = np.empty(raw.shape, np.float32)
    prepared = {} if prepared is None else prepared
    plane = prepared.get(()) if estimate is not None else None
    if estimate is None:
        check_size(raw.shape, model.identification.config.min_size)  # identify's
        estimate, plane = yield from identify_plane(raw, model, sampling)
        prepared[()] = plane
    _check_estimate(estimate)
    sampling = sampling.for_deblurring(estimate, of_this_image=plane is not None)
    if plane is None:
        yield Progress(0, 0, PREPARING)
    setup = deblur_setup(raw, estimate, model, sampling, noise, strength, plane)
    yield from _iter_tiles(raw, out, setup, estimate, model, tile_px, scanned=True, plane=plane)
    return out


def deblur(image, estimate: BlurEstimate | None = None, model=None, **kwargs) -> np.ndarray:
    """Remove the blur of a 2D image with the deblurring network.

    ``estimate`` is a :class:`BlurEstimate` (from :func:`identify`, or built from an
    imported PSF); without it the image is identified first. ``sampling`` (or the optics
    keywords of :func:`identify`): the image's; without it, the estimate's (it knows the
    sampling of the image it was identified on: :meth:`Sampling.for_deblurring`).
    ``noise`` overrides the noise the network assumes (``{"alpha", "beta"}`` in the image's
    units, or a std; default: measured on the image, once: without ``estimate`` by identify,
    whose measurement deblurring reuses, :func:`deblur_noise`);
    ``strength`` scales it (> 1: smoother, < 1: sharper).
    Returns a float32 array of the image's shape, in its intensity units.
    """
    return run(iter_deblur(image, estimate, model, **kwargs))


@dataclass(frozen=True)
class DeblurSetup:
    """What all tiles (or dask blocks) of one plane share (light: shipped to dask workers).

    ``zoom``: the image's cutoff over the model's (the image is resampled by it);
    ``low``, ``scale``: the robust intensity range (image units) mapped to [0, 1];
    ``alpha``, ``beta``: the noise ``var = α·x + β²`` in normalised units, ``strength``
    already applied.
    """

    zoom: float
    low: float
    scale: float
    alpha: float
    beta: float


def _check_deblurrable_size(shape, zoom: float, kernel_px: int) -> None:
    """An image is deblurred at the model's sampling (``zoom`` × its pixels), where it must
    be larger than the blur kernel and than the noise estimator's window."""
    side_px = min(round(n * zoom) for n in shape)
    need_px = max(kernel_px + 1, NOISE_MIN_SIDE_PX)
    if side_px >= need_px:
        return
    at_model = f"; at the model's sampling (×{zoom:.3g}) " if resamples(zoom) else ""
    at_model += f"{side_px} px" if at_model else ""
    raise ValueError(
        f"the image ({shape[0]}×{shape[1]} px{at_model}) is too small to deblur: it must "
        f"be larger than the blur kernel ({kernel_px} px), at least {need_px} px a side at "
        "the model's sampling"
    )


def _check_psf_fits(estimate: BlurEstimate, fc_img: float, shape) -> None:
    """A PSF is a blur kernel, smaller than the image it blurs: one as large as the image
    (often the image itself, or a whole bead stack's plane, given as the PSF) is refused."""
    if estimate.psf is None or estimate.field is not None or len(estimate.noll_indices):
        return  # an identified estimate: its kernel is the model's, sized for any image
    side_px = [n * fc_img / estimate.fc for n in np.shape(estimate.psf)]  # image pixels
    if any(p >= n for p, n in zip(side_px, shape, strict=True)):
        ph, pw = np.shape(estimate.psf)
        raise ValueError(
            f"the PSF ({ph}×{pw} px) is not smaller than the image ({shape[0]}×{shape[1]} "
            "px): is it the right file? Crop it around its peak (a PSF needs only the pixels "
            "where the blur is, typically under 64 px a side)"
        )


def _check_estimate(estimate) -> None:
    if isinstance(estimate, BlurEstimate):
        return
    what = type(estimate).__name__
    hint = {
        "ndarray": "for a PSF array use BlurEstimate.from_psf(psf, fc)",
        "dict": "for a saved estimate use BlurEstimate.from_dict(d)",
    }.get(what, "identify the image first, or use BlurEstimate.from_psf / from_dict")
    raise TypeError(f"the estimate must be a BlurEstimate, got a {what}: {hint}")


def deblur_noise(plane: PreparedPlane, noise, model_fc: float) -> tuple[float, float]:
    """The noise for deblurring, decided here only: ``(α, β)`` of ``var = α·x + β²`` of the
    prepared ``plane`` (normalised units, at the model's sampling, where the network sees
    it), from

    1. ``noise`` when given (image units: ``{"alpha", "beta"}`` or a std);
    2. else the plane's own: measured once, by identify when it prepared this plane without
       resampling it (the estimate's ``noise`` is that same measurement, in image units), else
       here. An estimate's noise is not carried to another plane or image: in image units it
       holds only at that image's intensity scale, and a resampled image's noise is not its
       camera's.
    """
    if noise is not None:
        return plane.normalised_noise(noise)
    return plane.with_noise(model_fc).noise


def deblur_setup(
    source,
    estimate: BlurEstimate,
    model: DeepBlurModel,
    sampling: Sampling,
    noise=None,
    strength: float = 1.0,
    plane: PreparedPlane | None = None,
) -> DeblurSetup:
    """What the tiles of a 2D ``source`` (any array-like) of ``sampling`` (already resolved
    with :meth:`Sampling.for_deblurring`) share: its prepared ``plane`` (when identify
    prepared it; else prepared here, :func:`prepare_plane`) and the noise for deblurring
    (:func:`deblur_noise`) scaled by ``strength``."""
    if len(source.shape) != 2:
        raise ValueError(f"expected a 2D image (Y, X), got shape {tuple(source.shape)}")
    _check_dtype(source.dtype)
    _check_estimate(estimate)
    check_noise_and_strength(noise, strength)
    zoom = sampling.zoom(model.fc)
    _check_deblurrable_size(source.shape, zoom, model.family.kernel_size)
    _check_psf_fits(estimate, sampling.image_fc(model.fc), source.shape)
    if plane is None or plane.zoom != zoom:
        plane = prepare_plane(source, zoom)
    alpha, beta = deblur_noise(plane, noise, model.fc)
    return DeblurSetup(zoom, plane.low, plane.scale, alpha * strength**2, beta * strength)


def _operator_for(
    model: DeepBlurModel, estimate: BlurEstimate, shape, device, rows=None, cols=None
):
    """The blur operator for ``estimate`` at the model's sampling, on images ``(1,1,H,W)``
    of ``shape``: the tile ``rows × cols`` (pixel bounds in the image, needed for a
    space-varying estimate; default the whole image) resampled to the model's sampling."""
    family = model.family
    if estimate.field is not None:
        return estimate.field.operator(
            rows, cols, tuple(shape), device, family.boundary, getattr(family, "cg_iterations", 20)
        )
    same_family = (
        isinstance(family, ZernikeConvolution)
        and tuple(estimate.noll_indices) == family.noll_indices
    )
    if same_family:
        gamma = torch.as_tensor(estimate.coefficients, dtype=torch.float32, device=device)
        return family.operator(gamma[None, None], shape)
    psf = np.asarray(estimate.psf, np.float32)
    size = max(psf.shape) | 1  # odd: centred on a pixel
    psf = np.pad(psf, ((0, size - psf.shape[0]), (0, size - psf.shape[1])))
    psf = resample_psf(psf, estimate.fc / model.fc)  # a PSF from elsewhere: to the model's fc
    kernel = torch.as_tensor(psf, device=device)
    return Convolution(kernel[None, None], shape, family.boundary)


#: A CUDA out-of-memory error halves the tile size down to this, then moves to the CPU.
MIN_FALLBACK_TILE_PX = 256


def _deblur_tile(
    tile: np.ndarray, setup: DeblurSetup, estimate, model, origin=(0, 0), y=None
) -> np.ndarray:
    """One tile (image pixels, float32) → its deblurred version, same shape and units.
    ``origin``: the tile's top-left pixel in the image (for space-varying estimates);
    ``y``: the tile already at the model's sampling (a prepared plane's), else resampled."""
    y = resample(tile, setup.zoom) if y is None else y
    dev = model.device
    y_n = normalize(torch.from_numpy(y).to(dev), setup.low, setup.scale)[None, None]
    sigma = noise_sigma_map(y_n, setup.alpha, setup.beta)
    rows = (origin[0], origin[0] + tile.shape[0])
    cols = (origin[1], origin[1] + tile.shape[1])
    operator = _operator_for(model, estimate, y.shape, dev, rows, cols)
    with model.inference():
        x_n = model.deblurring(y_n, operator, sigma)[0, 0]
    x = denormalize(x_n.float().cpu(), setup.low, setup.scale).numpy()
    if not np.isfinite(x).all():  # nothing upstream is (inputs are checked): the weights
        raise ValueError(
            f"the deblurring network of model {model.name!r} returned NaN or infinite pixels; "
            "its weights are probably damaged: reinstall the model or use another one"
        )
    return resample(x, 1 / setup.zoom, tile.shape)


def _deblur_tile_or_fall_back(
    tile, setup, estimate, model, tile_px: int, origin=(0, 0), y=None
) -> tuple[np.ndarray, DeepBlurModel]:
    """``(deblurred tile, the model that did it)``: :func:`_deblur_tile`; when the GPU runs
    out of memory, in smaller tiles, then on the model's CPU copy (with a warning each
    time; the caller goes on with the model returned)."""
    try:
        return _deblur_tile(tile, setup, estimate, model, origin, y), model
    except Exception as exc:
        smaller = tile_px // 2 >= MIN_FALLBACK_TILE_PX and max(tile.shape) > tile_px // 2
        if not (is_out_of_memory(exc) and (smaller or devices.can_fall_back_to_cpu(model.device))):
            raise
    # out of the except clause: the failed attempt's tensors, held by its traceback, are freed
    empty_cache(model.device)
    if not smaller:
        cpu_model = fall_back_to_cpu(model, f"even with {tile_px} px tiles")
        return _deblur_tile(tile, setup, estimate, cpu_model, origin, y), cpu_model
    notices.warn(
        f"out of memory on {model.device} with {tile_px} px tiles: "
        f"retrying with {tile_px // 2} px tiles",
        RuntimeWarning,
        stacklevel=2,
    )
    out = np.empty(tile.shape, np.float32)
    model = run(_iter_tiles(tile, out, setup, estimate, model, tile_px // 2, origin, scanned=True))
    return out, model


def _iter_tiles(
    source,
    out,
    setup: DeblurSetup,
    estimate,
    model: DeepBlurModel,
    tile_px: int,
    origin=(0, 0),
    *,
    scanned: bool = False,
    plane: PreparedPlane | None = None,
) -> Generator[Progress, None, DeepBlurModel]:
    """Deblur a 2D ``source`` into ``out`` (same shape; any array-likes that slice like
    NumPy: ndarray, memmap, zarr) tile by tile, with blended overlaps. ``origin``: where
    ``source`` starts in the image the estimate is of (pixels). ``scanned``: ``source`` was
    checked for NaN already (:func:`check_finite`), tiles are not again; ``plane``: its
    prepared plane, whose resampled image a single tile uses instead of resampling again.
    Returns the model the last tile ran on (``model``, or its CPU copy after an
    out-of-memory fallback).

    Memory stays bounded: only one band of tiles (``tile`` rows × the width) is accumulated;
    rows that no later tile touches are written to ``out`` as soon as their band is done.
    """
    h, w = source.shape
    overlap, rows, cols = _tile_layout((h, w), setup.zoom, tile_px, _grid_factor(model))
    total = len(rows) * len(cols)
    ramp = overlap if total > 1 else 0
    whole = plane.y if total == 1 and plane is not None and plane.whole else None
    acc = weight = None
    acc_top = acc_bottom = 0
    done = 0
    yield Progress(0, total, f"deblurring tile 1 of {total}")  # the first tile takes long too
    with torch.no_grad():
        for r, (top, bottom) in enumerate(rows):
            new_acc = np.zeros((bottom - top, w), np.float32)
            new_weight = np.zeros((bottom - top, w), np.float32)
            if acc is not None and acc_bottom > top:  # the overlap with the previous band
                new_acc[: acc_bottom - top] = acc[top - acc_top :]
                new_weight[: acc_bottom - top] = weight[top - acc_top :]
            acc, weight, acc_top, acc_bottom = new_acc, new_weight, top, bottom
            for left, right in cols:
                x, model = _deblur_tile_or_fall_back(
                    _read_tile(source, (top, bottom), (left, right), scanned),
                    setup,
                    estimate,
                    model,
                    tile_px,
                    (origin[0] + top, origin[1] + left),
                    whole,
                )
                wgt = _blend_window(x.shape, ramp)
                acc[:, left:right] += x * wgt
                weight[:, left:right] += wgt
                done += 1
                yield Progress(done, total, f"deblurred tile {done} of {total}")
            finished = (rows[r + 1][0] if r + 1 < len(rows) else h) - top
            _store_rows(out, top, acc[:finished] / weight[:finished])
    return model


def iter_deblur_into(
    source,
    out,
    estimate: BlurEstimate | None = None,
    model=None,
    *,
    sampling: Sampling | None = None,
    noise=None,
    strength: float = 1.0,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
    **optics,
) -> Generator[Progress, None, None]:
    """Deblur a 2D ``source`` into ``out`` with bounded memory, yielding :class:`Progress`
    per tile: the large-image form of :func:`iter_deblur`.

    ``source`` and ``out`` are 2D array-likes of one shape that slice like NumPy arrays
    (an ndarray, a ``numpy.memmap`` or ``tifffile.memmap`` of a TIFF, a zarr array); tiles are
    read from ``source`` one at a time and ``out`` is written band by band, so a
    memory-mapped 8192×8192 image never needs to fit in memory as float32. An integer
    ``out`` receives rounded, clipped values. Without ``estimate`` the whole image is
    identified first (which loads it). ``sampling`` (or ``optics``: ``fc`` or
    ``pixel_size_nm``, ``na``, ``wavelength_nm``, ``refractive_index``) as for :func:`deblur`.
    """
    model = _deblurring_model(model, device)
    if tuple(out.shape) != tuple(source.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the image {tuple(source.shape)}")
    sampling = Sampling.given(sampling, **optics)
    check_noise_and_strength(noise, strength)
    check_finite(source)
    plane = None
    if estimate is None:
        raw = as_image(source, model.identification.config.min_size)
        estimate, plane = yield from identify_plane(raw, model, sampling)
    _check_estimate(estimate)
    sampling = sampling.for_deblurring(estimate, of_this_image=plane is not None)
    if plane is None:
        yield Progress(0, 0, PREPARING)
    setup = deblur_setup(source, estimate, model, sampling, noise, strength, plane)
    yield from _iter_tiles(source, out, setup, estimate, model, tile_px, scanned=True, plane=plane)


def deblur_dask(
    array,
    estimate: BlurEstimate,
    model=None,
    *,
    chunk_px: int = 2048,
    noise=None,
    strength: float = 1.0,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
    sampling: Sampling | None = None,
    **optics,
):
    """Lazy deblurring of a 2D (dask) array: a ``dask.array`` of float32, computed block by
    block with ``map_overlap`` (blocks of ``chunk_px`` px, rounded up to the network's
    stride, with a margin of their neighbours' pixels as deep as the tile overlap; the
    image's own borders are handled as :func:`deblur` handles them), on whatever dask
    scheduler computes it. A single block gives exactly :func:`deblur`'s result.

    The intensity range and noise level are computed once, here (from the whole image, or a
    subsample and a central crop for large ones: :func:`deblur_setup`), so that all blocks
    are normalised alike; each block is then tiled like :func:`deblur`.
    ``estimate`` is required (identify a representative crop first, e.g. with
    :func:`identify` on ``array[:2048, :2048]``); a space-varying estimate must be of the
    whole array (each block is deblurred with the operator of its own region).
    """
    import dask.array as da

    model = as_model(model, device)
    if model.deblurring is None:
        raise ValueError(f"the model {model.name!r} has no deblurring network")
    array = da.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D array (Y, X), got shape {array.shape}")
    # statistics as for deblur (a subsample and a central crop are computed, not the image)
    _check_estimate(estimate)
    sampling = Sampling.given(sampling, **optics).for_deblurring(estimate)
    setup = deblur_setup(array, estimate, model, sampling, noise, strength)
    depth, align = block_margin(array.shape, setup.zoom, tile_px, model)
    chunk_px = max(-(-int(chunk_px) // align) * align, 2 * depth)
    # a path is light to ship to dask workers, which load (and cache) the model themselves
    ref = str(model.path) if model.path is not None else model
    precision = model.precision

    array = array.rechunk(chunk_px)
    chunk_starts = [np.cumsum((0, *c[:-1])) for c in array.chunks]

    def block(x: np.ndarray, block_info=None) -> np.ndarray:
        # where the block (with its margins) starts in the image: for space-varying estimates
        i, j = block_info[0]["chunk-location"]
        origin = (
            int(chunk_starts[0][i]) - (depth if i else 0),
            int(chunk_starts[1][j]) - (depth if j else 0),
        )
        local = as_model(ref, device, precision)
        return deblur_region(x, setup, estimate, local, tile_px, origin)[0]

    return array.map_overlap(block, depth=depth, boundary="none", dtype=np.float32, trim=True)


def block_margin(shape, zoom: float, tile_px: int, model: DeepBlurModel) -> tuple[int, int]:
    """``(depth, align)`` of blocks deblurred apart (:func:`deblur_dask`, the OME-Zarr
    writer): each block is read with a margin of ``depth`` px of its neighbours (the tile
    overlap, rounded up to ``align``) and starts on a multiple of ``align`` px (the
    network's stride; 1 for a resampled image), so that blocks blend like tiles."""
    overlap, _, _ = _tile_layout(shape, zoom, tile_px)
    align = 1 if resamples(zoom) else _grid_factor(model)
    return -(-overlap // align) * align, align


def deblur_region(
    x: np.ndarray, setup: DeblurSetup, estimate, model: DeepBlurModel, tile_px: int, origin=(0, 0)
) -> tuple[np.ndarray, DeepBlurModel]:
    """``(deblurred x as float32, the model that did it)``: one block of a large plane (with
    its margins), tile by tile; ``origin``: where ``x`` starts in the plane (pixels)."""
    result = np.empty(x.shape, np.float32)
    model = run(_iter_tiles(x, result, setup, estimate, model, tile_px, origin))
    return result, model
