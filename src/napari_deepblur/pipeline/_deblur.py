"""Deblur: one 2D image (or array-like, or dask array) tile by tile with the deblurring network."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from .. import devices, notices
from ..devices import empty_cache, is_out_of_memory
from ..intensity import denormalize, normalize
from ..models import DeepBlurModel, as_model, fall_back_to_cpu
from ..optics import (
    Convolution,
    ZernikeConvolution,
)
from ..optics.noise import noise_sigma_map
from ._estimate import BlurEstimate
from ._identify import iter_identify
from ._prepare import DeblurSetup, as_image, check_finite, deblur_setup
from ._progress import Progress, run
from ._sampling import resample, resample_psf
from ._tiling import (
    DEFAULT_TILE_PX,
    _blend_window,
    _grid_factor,
    _read_tile,
    _store_rows,
    _tile_layout,
)


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


def iter_deblur(
    image,
    estimate: BlurEstimate | None = None,
    model=None,
    *,
    noise=None,
    strength: float = 1.0,
    fc=None,
    pixel_size_nm=None,
    na=None,
    wavelength_nm=None,
    refractive_index=None,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
) -> Generator[Progress, None, np.ndarray]:
    """Generator form of :func:`deblur`: yields :class:`Progress` per tile."""
    model = as_model(model, device)
    if model.deblurring is None:
        raise ValueError(f"the model {model.name!r} has no deblurring network")
    optics = dict(
        fc=fc,
        pixel_size_nm=pixel_size_nm,
        na=na,
        wavelength_nm=wavelength_nm,
        refractive_index=refractive_index,
    )
    if estimate is None:
        estimate = yield from iter_identify(image, model, device=device, **optics)
    raw = as_image(image, 16)
    out = np.empty(raw.shape, np.float32)
    yield from iter_deblur_into(
        raw,
        out,
        estimate,
        model,
        noise=noise,
        strength=strength,
        device=device,
        tile_px=tile_px,
        **optics,
    )
    return out


def deblur(image, estimate: BlurEstimate | None = None, model=None, **kwargs) -> np.ndarray:
    """Remove the blur of a 2D image with the deblurring network.

    ``estimate`` is a :class:`BlurEstimate` (from :func:`identify`, or built from an
    imported PSF); without it the image is identified first. ``noise`` overrides the
    estimated noise (``{"alpha", "beta"}`` in the image's units, or a std); ``strength``
    scales the noise level the network assumes (> 1: smoother, < 1: sharper).
    Returns a float32 array of the image's shape, in its intensity units.
    """
    return run(iter_deblur(image, estimate, model, **kwargs))


#: A CUDA out-of-memory error halves the tile size down to this, then moves to the CPU.
MIN_FALLBACK_TILE_PX = 256


def _deblur_tile(
    tile: np.ndarray, setup: DeblurSetup, estimate, model, origin=(0, 0)
) -> np.ndarray:
    """One tile (image pixels, float32) → its deblurred version, same shape and units.
    ``origin``: the tile's top-left pixel in the image (for space-varying estimates)."""
    y = resample(tile, setup.zoom)
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
    tile, setup, estimate, model, tile_px: int, origin=(0, 0)
) -> tuple[np.ndarray, DeepBlurModel]:
    """``(deblurred tile, the model that did it)``: :func:`_deblur_tile`; when the GPU runs
    out of memory, in smaller tiles, then on the model's CPU copy (with a warning each
    time; the caller goes on with the model returned)."""
    try:
        return _deblur_tile(tile, setup, estimate, model, origin), model
    except Exception as exc:
        smaller = tile_px // 2 >= MIN_FALLBACK_TILE_PX and max(tile.shape) > tile_px // 2
        if not (is_out_of_memory(exc) and (smaller or devices.can_fall_back_to_cpu(model.device))):
            raise
    # out of the except clause: the failed attempt's tensors, held by its traceback, are freed
    empty_cache(model.device)
    if not smaller:
        cpu_model = fall_back_to_cpu(model, f"even with {tile_px} px tiles")
        return _deblur_tile(tile, setup, estimate, cpu_model, origin), cpu_model
    notices.warn(
        f"out of memory on {model.device} with {tile_px} px tiles: "
        f"retrying with {tile_px // 2} px tiles",
        RuntimeWarning,
        stacklevel=2,
    )
    out = np.empty(tile.shape, np.float32)
    model = run(_iter_tiles(tile, out, setup, estimate, model, tile_px // 2, origin))
    return out, model


def _iter_tiles(
    source, out, setup: DeblurSetup, estimate, model: DeepBlurModel, tile_px: int, origin=(0, 0)
) -> Generator[Progress, None, DeepBlurModel]:
    """Deblur a 2D ``source`` into ``out`` (same shape; any array-likes that slice like
    NumPy: ndarray, memmap, zarr) tile by tile, with blended overlaps. ``origin``: where
    ``source`` starts in the image the estimate is of (pixels). Returns the model the last
    tile ran on (``model``, or its CPU copy after an out-of-memory fallback).

    Memory stays bounded: only one band of tiles (``tile`` rows × the width) is accumulated;
    rows that no later tile touches are written to ``out`` as soon as their band is done.
    """
    h, w = source.shape
    overlap, rows, cols = _tile_layout((h, w), setup.zoom, tile_px, _grid_factor(model))
    total = len(rows) * len(cols)
    ramp = overlap if total > 1 else 0
    acc = weight = None
    acc_top = acc_bottom = 0
    done = 0
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
                    _read_tile(source, (top, bottom), (left, right)),
                    setup,
                    estimate,
                    model,
                    tile_px,
                    (origin[0] + top, origin[1] + left),
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
    noise=None,
    strength: float = 1.0,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
    **optics,
) -> Generator[Progress, None, None]:
    """Deblur a 2D ``source`` into ``out`` with bounded memory, yielding :class:`Progress`
    per tile: the large-image form of :func:`iter_deblur` (which calls it).

    ``source`` and ``out`` are 2D array-likes of one shape that slice like NumPy arrays
    (an ndarray, a ``numpy.memmap`` or ``tifffile.memmap`` of a TIFF, a zarr array); tiles are
    read from ``source`` one at a time and ``out`` is written band by band, so a
    memory-mapped 8192×8192 image never needs to fit in memory as float32. An integer
    ``out`` receives rounded, clipped values. Without ``estimate`` the whole image is
    identified first (which loads it). ``optics``: ``fc`` or ``pixel_size_nm``, ``na``,
    ``wavelength_nm`` (``refractive_index``) as for :func:`deblur`.
    """
    model = as_model(model, device)
    if model.deblurring is None:
        raise ValueError(f"the model {model.name!r} has no deblurring network")
    if tuple(out.shape) != tuple(source.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the image {tuple(source.shape)}")
    check_finite(source)
    if estimate is None:
        estimate = yield from iter_identify(np.asarray(source), model, device=device, **optics)
    setup = deblur_setup(source, estimate, model, noise=noise, strength=strength, **optics)
    yield from _iter_tiles(source, out, setup, estimate, model, tile_px)


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
    setup = deblur_setup(array, estimate, model, noise=noise, strength=strength, **optics)
    overlap, _, _ = _tile_layout(array.shape, setup.zoom, tile_px)
    align = _grid_factor(model) if abs(setup.zoom - 1) < 1e-3 else 1
    depth = -(-overlap // align) * align  # blocks start on the network's grid, like tiles
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
        result = np.empty(x.shape, np.float32)
        run(_iter_tiles(x, result, setup, estimate, local, tile_px, origin))
        return result

    return array.map_overlap(block, depth=depth, boundary="none", dtype=np.float32, trim=True)
