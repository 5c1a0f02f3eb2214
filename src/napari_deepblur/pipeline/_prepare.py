"""A plane made ready for the networks: checks, intensity range, noise, and what all tiles of a
plane share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..intensity import check_contrast, normalize, robust_range
from ..models import DeepBlurModel
from ..optics.noise import NOISE_MIN_SIDE_PX, estimate_noise
from ._estimate import BlurEstimate
from ._sampling import image_fc, resample


def as_image(image, min_size: int = 1) -> np.ndarray:
    """Check that ``image`` is a finite, real 2D array of at least ``min_size`` px a side and
    return it as float32 (a copy: the caller's array is never modified)."""
    array = np.asarray(image)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"expected a real-valued grayscale image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"this looks like an RGB(A) image (shape {array.shape}); Deep-Blur works on one "
            "fluorescence channel: split the channels and process each one"
        )
    if array.ndim != 2:
        raise ValueError(
            f"expected a 2D image (Y, X), got shape {array.shape}; for stacks process each "
            "plane (napari: the current plane or all planes; CLI: planes are looped over)"
        )
    if min(array.shape) < min_size:
        raise ValueError(
            f"the image ({array.shape[0]}×{array.shape[1]} px) is too small: "
            f"at least {min_size}×{min_size} px are needed"
        )
    with np.errstate(over="ignore"):  # reported below
        image32 = array.astype(np.float32, copy=True)
    bad = ~np.isfinite(image32)
    if bad.any() and np.isfinite(array).all():
        raise ValueError(
            f"the image has values beyond float32's range (largest {np.abs(array).max():.3g}, "
            "float32 holds up to 3.4e38): divide it by a constant first"
        )
    if bad.any():
        raise ValueError(
            f"the image has {int(bad.sum())} NaN or infinite pixels; replace them "
            "(e.g. with numpy.nan_to_num or an inpainting) before deblurring"
        )
    return image32


def _noise_of(raw: np.ndarray, fc_img: float) -> dict:
    """Noise ``{"alpha", "beta"}`` of an image, from (at most) a central crop: the
    estimator's memory grows ~70 bytes/pixel."""
    noise_sample = np.ascontiguousarray(_central_crop(raw, STATS_MAX_PX))
    alpha, beta = estimate_noise(torch.from_numpy(noise_sample)[None], fc_img)
    return {"alpha": float(alpha[0]), "beta": float(beta[0])}


#: The range of ``strength`` where the network does what it promises (> 1 smoother,
#: < 1 sharper): measured on the demo and on table1 images at L1/H1 (SSIM against strength,
#: 2026-12-03), it turns noisier again above ~3 and falls apart towards 10, far from the
#: noise levels it was trained on.
STRENGTH_RANGE = (0.25, 3.0)


#: Noise given (``noise=``, ``--noise``) beyond this many times the image's intensity range
#: is refused: the image would be noise only, and the network's arithmetic overflows
#: (NaN pixels) before long.
MAX_NOISE_TO_RANGE = 1e6


def check_noise_and_strength(noise, strength) -> None:
    """ValueError unless ``strength`` is a number within :data:`STRENGTH_RANGE` and
    ``noise`` is None, a std, or ``{"alpha", "beta"}``, in finite nonnegative numbers."""
    low, high = STRENGTH_RANGE
    if not (_is_number(strength) and low <= float(strength) <= high):
        raise ValueError(
            f"the strength must be a number from {low:g} (sharper) to {high:g} (smoother), "
            f"got {strength!r}: outside that range the network adds artefacts"
        )
    if noise is None:
        return
    if isinstance(noise, dict):
        unknown = sorted(set(noise) - {"alpha", "beta"})
        values = list(noise.values())
    else:
        unknown, values = [], [noise]
    if unknown or not all(_is_number(v) and 0 <= float(v) < np.inf for v in values):
        raise ValueError(
            "the noise must be a nonnegative std, or {'alpha': gain, 'beta': std}, in image "
            f"units; got {noise!r}"
        )


def _is_number(value) -> bool:
    """A real number (not a bool, a string or NaN)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and not np.isnan(value)
    )


def _noise_in_normalised_units(y: torch.Tensor, low, scale, noise, fc: float):
    """``(α_n, β_n)`` of the normalised image: estimated, or converted from ``noise`` given
    in the image's units (``{"alpha", "beta"}``, or a number: a constant std β)."""
    if noise is None:
        alpha, beta = estimate_noise(normalize(y, low, scale)[None], fc)
        return float(alpha[0]), float(beta[0])
    if isinstance(noise, int | float):
        noise = {"alpha": 0.0, "beta": float(noise)}
    a, b = float(noise.get("alpha", 0.0)), float(noise.get("beta", 0.0))
    s, lo = float(scale), float(low)
    top_std = float(np.sqrt(max(a * (lo + s), 0.0) + b * b))  # at the top of the range
    if top_std > MAX_NOISE_TO_RANGE * s:
        raise ValueError(
            f"the noise given (a std of {top_std:.3g} at the image's bright end, image units) "
            f"is {top_std / s:.3g}× the image's intensity range ({s:.3g}): beyond "
            f"{MAX_NOISE_TO_RANGE:.0e}× the image is noise only; give the noise in the "
            "image's units"
        )
    return a / s, float(np.sqrt(max(a * lo + b * b, 0.0))) / s


#: Planes larger than this many pixels take their noise level from a central crop of this
#: many pixels and their intensity range from a regular subsample (below it: the whole plane),
#: which bounds the memory of the statistics (the noise estimator needs ~70 bytes/pixel).
STATS_MAX_PX = 2048 * 2048


@dataclass(frozen=True)
class DeblurSetup:
    """What all tiles (or dask blocks) of one plane share.

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


def _check_dtype(dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(f"expected a real-valued grayscale image, got dtype {dtype}")


def _central_crop(source, max_px: int):
    """``source`` itself (2D) when it has at most ``max_px`` pixels, else a central crop."""
    h, w = source.shape[-2:]
    if h * w <= max_px:
        return source
    ch = min(h, int(max_px**0.5))
    cw = min(w, max_px // ch)
    top, left = (h - ch) // 2, (w - cw) // 2
    return source[top : top + ch, left : left + cw]


def _check_deblurrable_size(shape, zoom: float, kernel_px: int) -> None:
    """An image is deblurred at the model's sampling (``zoom`` × its pixels), where it must
    be larger than the blur kernel and than the noise estimator's window."""
    side_px = min(round(n * zoom) for n in shape)
    need_px = max(kernel_px + 1, NOISE_MIN_SIDE_PX)
    if side_px >= need_px:
        return
    at_model = "" if abs(zoom - 1) < 1e-3 else f"; at the model's sampling (×{zoom:.3g}) "
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


def deblur_setup(
    source,
    estimate: BlurEstimate,
    model: DeepBlurModel,
    *,
    noise=None,
    strength: float = 1.0,
    fc=None,
    pixel_size_nm=None,
    na=None,
    wavelength_nm=None,
    refractive_index=None,
) -> DeblurSetup:
    """The sampling, intensity range and noise level of a 2D ``source`` (any array-like;
    for planes above :data:`STATS_MAX_PX` pixels the range comes from a regular subsample
    and the noise from a central crop)."""
    if len(source.shape) != 2:
        raise ValueError(f"expected a 2D image (Y, X), got shape {tuple(source.shape)}")
    _check_dtype(source.dtype)
    _check_estimate(estimate)
    check_noise_and_strength(noise, strength)
    fc_img, _ = image_fc(
        model.fc,
        fc=fc,
        pixel_size_nm=pixel_size_nm,
        na=na,
        wavelength_nm=wavelength_nm,
        refractive_index=refractive_index,
    )
    if fc is None and not any(v is not None for v in (pixel_size_nm, na, wavelength_nm)):
        fc_img = estimate.fc  # the estimate knows the image's sampling
    zoom = fc_img / model.fc
    _check_deblurrable_size(source.shape, zoom, model.family.kernel_size)
    _check_psf_fits(estimate, fc_img, source.shape)
    h, w = source.shape
    crop = as_image(_central_crop(source, STATS_MAX_PX), 16)
    y = torch.from_numpy(resample(crop, zoom))
    if h * w <= STATS_MAX_PX:  # the whole plane
        low, scale = robust_range(y)
    else:  # a regular subsample of about 2**20 pixels
        step = int(np.ceil(np.sqrt(h * w / 2**20)))
        low, scale = robust_range(torch.from_numpy(as_image(source[::step, ::step])))
    check_contrast(scale, low, y)
    alpha, beta = _noise_in_normalised_units(y, low, scale, noise, model.fc)
    return DeblurSetup(zoom, float(low), float(scale), alpha * strength**2, beta * strength)


def check_finite(stack, rows_per_block: int = 1024) -> None:
    """Refuse a stack ``(…, Y, X)`` (or a 2D image) with NaN or infinite pixels, naming the
    planes, before any work: a float image is scanned in blocks of rows (memory-mapped ones
    too: reading is much faster than deblurring); integer images cannot hold NaN."""
    if not np.issubdtype(np.dtype(stack.dtype), np.floating):
        return
    bad_planes = {}
    for index in plane_indices(stack.shape):
        plane, bad = stack[index], 0
        for top in range(0, plane.shape[0], rows_per_block):
            bad += int(np.count_nonzero(~np.isfinite(plane[top : top + rows_per_block])))
        if bad:
            bad_planes[index] = bad
    if not bad_planes:
        return
    where = ""
    if len(stack.shape) > 2:  # a stack: name the planes
        shown = ", ".join(f"{index}: {n}" for index, n in list(bad_planes.items())[:5])
        more = " …" if len(bad_planes) > 5 else ""
        where = f" in {len(bad_planes)} plane(s) ({shown}{more})"
    raise ValueError(
        f"the image has {sum(bad_planes.values())} NaN or infinite pixels{where}; replace "
        "them (e.g. with numpy.nan_to_num or an inpainting) before deblurring"
    )


def plane_indices(shape) -> list[tuple[int, ...]]:
    """Indices of the 2D planes of an array ``(…, Y, X)``, in C order (``[()]`` for 2D)."""
    if len(shape) < 2:
        raise ValueError(f"expected an image (…, Y, X), got shape {tuple(shape)}")
    return list(np.ndindex(*shape[:-2]))
