"""Sampling: an image's cutoff from its optics, and resampling images and PSFs between samplings."""

from __future__ import annotations

import numpy as np

from ..fieldmap import FieldEstimate
from ..optics import (
    Microscope,
    check_fc,
)


def image_fc(
    model_fc: float,
    *,
    fc=None,
    pixel_size_nm=None,
    na=None,
    wavelength_nm=None,
    refractive_index=None,
) -> tuple[float, dict | None]:
    """The image's cutoff (cycles/pixel) from explicit ``fc`` or optics; the model's when
    nothing is given (the image is assumed sampled like the training data)."""
    optics_given = [v is not None for v in (pixel_size_nm, na, wavelength_nm)]
    if fc is not None:
        return check_fc(fc), None
    if any(optics_given):
        if not all(optics_given):
            raise ValueError("give all three of pixel_size_nm, na and wavelength_nm (or fc)")
        scope = Microscope(na, wavelength_nm, pixel_size_nm, refractive_index)
        return scope.fc, scope.to_dict()
    return model_fc, None


def resample(image: np.ndarray, zoom: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Cubic-spline resampling by ``zoom`` (or to ``shape``); identity when zoom ≈ 1."""
    from scipy import ndimage

    if shape is None:
        if abs(zoom - 1) < 1e-3:
            return image
        shape = tuple(max(1, round(s * zoom)) for s in image.shape)
    if tuple(shape) == image.shape:
        return image
    factors = [t / s for t, s in zip(shape, image.shape, strict=True)]
    return ndimage.zoom(image, factors, order=3, mode="reflect", grid_mode=True).astype(np.float32)


def resample_psf(psf: np.ndarray, zoom: float, size: int | None = None) -> np.ndarray:
    """A centred PSF ``(k, k)`` stretched by ``zoom`` about its centre pixel (cubic spline),
    on ``size × size`` pixels (default ``k``), clipped at 0 and normalised to sum 1: a PSF
    sampled at ``fc_from`` cycles/pixel becomes one at ``fc_to`` with ``zoom = fc_from /
    fc_to``. Identity (but normalised) when zoom ≈ 1 and the size is unchanged."""
    from scipy import ndimage

    psf = np.asarray(psf, np.float64)
    size = size or psf.shape[-1]
    if abs(zoom - 1) >= 1e-3 or size != psf.shape[-1]:
        t = (np.arange(size) - (size - 1) / 2) / zoom + (psf.shape[-1] - 1) / 2
        yy, xx = np.meshgrid(t, t, indexing="ij")
        psf = np.clip(ndimage.map_coordinates(psf, [yy, xx], order=3, mode="constant"), 0, None)
    return (psf / psf.sum()).astype(np.float32)


def field_psf(field_estimate: FieldEstimate, fc: float, y=None, x=None) -> np.ndarray:
    """The local PSF of a field estimate at pixel ``(y, x)`` (default: the image centre),
    sampled at ``fc`` cycles/pixel (the image's)."""
    h, w = field_estimate.shape
    y = (h - 1) / 2 if y is None else y
    x = (w - 1) / 2 if x is None else x
    return resample_psf(field_estimate.psf_at(y, x), field_estimate.fc / fc)
