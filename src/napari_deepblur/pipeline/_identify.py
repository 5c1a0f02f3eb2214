"""Identify: the blur of one 2D image from the identification network (Zernike or space-varying)."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from .. import notices
from ..models import as_model
from ..optics import (
    ProductConvolution,
    ZernikeConvolution,
    zernike_psf,
)
from ._estimate import BlurEstimate
from ._field import FieldEstimate, fit_field, read_windows
from ._prepare import PreparedPlane, _central_crop, as_image, image_noise, prepare_plane
from ._progress import PREPARING, Progress, run
from ._refine import (
    MAX_CROP_PIXELS,
    MAX_RELATIVE_NOISE,
    refine_coefficients,
    relative_noise,
)
from ._sampling import Sampling, field_psf, resample
from ._tiling import DEFAULT_TILE_PX, check_tile_px, tile_starts
from ._windows import canonical_median, identify_in_windows


def _identify_tiles(length: int, tile_px: int) -> list[tuple[int, int]]:
    """Identification tiles along one axis: as few as cover it, all of one (balanced) size,
    so no tile is mostly a copy of its neighbour (the network reads windows inside each
    tile: tiles need no overlap)."""
    tile_px = check_tile_px(tile_px)
    count = -(-length // tile_px)
    size = -(-length // count)
    starts = tile_starts(length, size, 0) if count > 1 else [0]
    return [(start, start + size) for start in starts]


def iter_identify(
    image,
    model=None,
    *,
    sampling: Sampling | None = None,
    fc=None,
    pixel_size_nm=None,
    na=None,
    wavelength_nm=None,
    refractive_index=None,
    device="auto",
    augment=True,
    tile_px: int = DEFAULT_TILE_PX,
    refine: bool = False,
    prepared: dict | None = None,
) -> Generator[Progress, None, BlurEstimate]:
    """Generator form of :func:`identify`: yields :class:`Progress` per tile (and once
    more after the refinement, when asked). ``prepared``: a dict that receives the image
    as identify prepared it (key ``()``: :class:`PreparedPlane`), for :func:`iter_deblur`
    of the same image to reuse."""
    model = as_model(model, device)
    sampling = Sampling.given(
        sampling,
        fc=fc,
        pixel_size_nm=pixel_size_nm,
        na=na,
        wavelength_nm=wavelength_nm,
        refractive_index=refractive_index,
    )
    raw = as_image(image, model.identification.config.min_size)
    estimate, plane = yield from identify_plane(raw, model, sampling, augment, tile_px, refine)
    if prepared is not None:
        prepared[()] = plane
    return estimate


def identify_plane(
    raw: np.ndarray,
    model,
    sampling: Sampling,
    augment: bool = True,
    tile_px: int = DEFAULT_TILE_PX,
    refine: bool = False,
) -> Generator[Progress, None, tuple[BlurEstimate, PreparedPlane]]:
    """Identify one plane (``raw``: checked float32, :func:`as_image`) of the given
    sampling with ``model``: ``(estimate, prepared plane)``. The plane is prepared here once
    (:func:`prepare_plane`: resampled to the model's sampling and ranged; its noise measured
    when it is not resampled) and the prepared plane is returned for deblurring it."""
    min_size = model.identification.config.min_size
    fc_img = sampling.image_fc(model.fc)
    zoom = sampling.zoom(model.fc)
    yield Progress(0, 0, PREPARING)  # seconds on a large image, before any tile counts
    plane = prepare_plane(raw, zoom, checked=True, min_size=min_size)
    y = plane.y if plane.whole else resample(raw, zoom)  # all of it, for the tiles
    if refine and not isinstance(model.family, ZernikeConvolution):
        raise ValueError("refine=True needs a Zernike model (not a space-varying one)")
    if plane.resampled:  # the image's own noise (the camera's), which resampling changes
        noise = image_noise(raw, fc_img)
    else:  # one measurement: the image's noise and the one the networks see (deblur's)
        plane = plane.with_noise(model.fc)
        noise = plane.noise_in_image_units()
    if isinstance(model.family, ProductConvolution):
        estimate = yield from _iter_identify_field(
            model, raw.shape, y, fc_img, sampling.optics, noise, augment, tile_px
        )
        return estimate, plane
    rows, cols = (_identify_tiles(n, tile_px) for n in y.shape)
    total = len(rows) * len(cols) + int(refine)
    estimates, tiles = [], []
    yield Progress(0, total, f"identifying {total} tile(s)")  # a first chance to cancel
    with torch.no_grad():
        for i, ((top, bottom), (left, right)) in enumerate((r, c) for r in rows for c in cols):
            tile = torch.from_numpy(y[top:bottom, left:right])
            gamma, spread = identify_in_windows(model, tile, augment)
            estimates.append((gamma, spread))
            h, w = tile.shape
            tiles.append(
                {
                    "y": (top + h / 2) / zoom,
                    "x": (left + w / 2) / zoom,
                    "coefficients": gamma.cpu().numpy(),
                }
            )
            yield Progress(i + 1, total, f"identified tile {i + 1} of {total}")
    family = model.family
    gamma, across_tiles = canonical_median(torch.stack([g for g, _ in estimates]), family)
    spreads = [s for _, s in estimates if s is not None]
    uncertainty = torch.stack(spreads).mean(0) if spreads else None
    if across_tiles is not None and uncertainty is not None:
        uncertainty = torch.maximum(uncertainty, across_tiles)
    elif across_tiles is not None:
        uncertainty = across_tiles
    if isinstance(family, ZernikeConvolution):
        for t in tiles:
            t["coefficients"] = family.canonical(torch.as_tensor(t["coefficients"])).numpy()
    if len(tiles) == 1:
        tiles = []
    refined = False
    if refine:
        gamma, refined = _refined(y, gamma.cpu(), family, uncertainty, noise, plane.scale)
        yield Progress(total, total, "refined" if refined else "refinement skipped (noise)")
    coefficients = gamma.cpu().numpy().astype(np.float32)
    noll = tuple(getattr(family, "noll_indices", ()))
    psf = zernike_psf(torch.as_tensor(coefficients), fc_img, 31, noll).numpy()
    estimate = BlurEstimate(
        coefficients,
        noll,
        fc_img,
        psf,
        noise,
        list(getattr(family, "names", [])),
        model.name,
        sampling.optics,
        None if uncertainty is None else uncertainty.cpu().numpy().astype(np.float32),
        tiles,
        refined=refined,
    )
    return estimate, plane


def _refined(y, gamma, family, uncertainty, noise, scale) -> tuple[torch.Tensor, bool]:
    """``(γ, applied)``: γ refined on the image (:mod:`napari_deepblur.pipeline._refine`) when
    its noise is low enough for that to help, else γ as it is, with a warning."""
    median = float(np.median(y[:: max(1, y.shape[0] // 256), :: max(1, y.shape[1] // 256)]))
    noise_fraction = relative_noise(noise, median, float(scale))
    if noise_fraction > MAX_RELATIVE_NOISE:
        notices.warn(
            f"blur refinement skipped: the image's noise ({noise_fraction:.2%} of its range) "
            f"is above the {MAX_RELATIVE_NOISE:.1%} where refinement helps; the network's "
            "estimate is kept",
            UserWarning,
            stacklevel=3,
        )
        return gamma, False
    unc = None if uncertainty is None else uncertainty.cpu()
    crop = np.ascontiguousarray(_central_crop(y, MAX_CROP_PIXELS))
    refined = refine_coefficients(torch.from_numpy(crop), gamma, family, unc)
    return family.canonical(refined), True


def _iter_identify_field(
    model, shape, y, fc_img, optics, noise, augment, tile_px
) -> Generator[Progress, None, BlurEstimate]:
    """Space-varying identification of an image of ``shape`` (``y``: at the model's
    sampling): the network reads the local PSF in windows all over the image and a smooth
    field is fitted to all readings at once (:func:`napari_deepblur.pipeline._field.fit_field`)."""
    family = model.family
    reader = family.identification_family()
    rows, cols = (_identify_tiles(n, tile_px) for n in y.shape)
    total = len(rows) * len(cols)
    readings = []
    yield Progress(0, total, f"identifying {total} tile(s)")
    with torch.no_grad():
        for i, ((top, bottom), (left, right)) in enumerate((r, c) for r in rows for c in cols):
            tile = torch.from_numpy(y[top:bottom, left:right])
            readings.append(read_windows(model, tile, reader, augment, (top, left), y.shape))
            yield Progress(i + 1, total, f"identified tile {i + 1} of {total}")
    gamma = fit_field(family, reader, readings)
    field_estimate = FieldEstimate.from_family(family, gamma, shape, model.fc)
    centre_psf = field_psf(field_estimate, fc_img)
    names = [f"e{i + 1}·f{j + 1}" for i in range(family.num_psfs) for j in range(family.num_maps)]
    return BlurEstimate(
        gamma.numpy().astype(np.float32),
        (),
        fc_img,
        centre_psf,
        noise,
        names,
        model.name,
        optics,
        field=field_estimate,
    )


def identify(image, model=None, **kwargs) -> BlurEstimate:
    """Estimate the blur of a 2D image: Zernike coefficients, PSF, noise.

    Parameters
    ----------
    image : 2D array, any real dtype and intensity range.
    model : a :class:`~napari_deepblur.models.DeepBlurModel`, a shipped model's name or a
        model file path (default: the shipped default model).
    sampling : the image's :class:`Sampling`, or its optics as keywords: ``fc`` or
        ``pixel_size_nm``, ``na``, ``wavelength_nm`` (``refractive_index``); without them
        the image is assumed sampled like the model (``model.fc``).
    device : "auto" (CUDA, MPS, CPU), "cpu", "cuda", …
    augment : also look at flipped/transposed copies of each window (as many of the 8 as
        the budget of :data:`~napari_deepblur.pipeline._windows.MAX_EVALUATIONS` network
        evaluations per tile allows); ``False``: each window once (faster).
    refine : then fit the coefficients to the image itself through the physics
        (:mod:`napari_deepblur.pipeline._refine`; under a second at 256² on a CPU). It helps nearly
        noise-free images only: above :data:`~napari_deepblur.pipeline._refine.MAX_RELATIVE_NOISE`
        of noise it is skipped with a warning and ``BlurEstimate.refined`` stays False.
        Zernike models only.

    The estimate's ``noise`` is the image's own (its camera's), in its intensity units. When
    the image is not resampled that one measurement is also the noise the deblurring
    network is given for it (:func:`iter_deblur` without an estimate reuses it); a resampled
    image has another noise (interpolation smooths it), measured where the network sees it.
    """
    return run(iter_identify(image, model, **kwargs))
