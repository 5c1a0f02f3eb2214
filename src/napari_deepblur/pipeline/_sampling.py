"""Sampling: an image's cutoff from its optics, resolved once (:class:`Sampling`), and the
resampling of images and PSFs between samplings."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .. import notices
from ..optics import (
    Microscope,
    check_fc,
)
from ._field import FieldEstimate


@dataclass(frozen=True)
class Sampling:
    """How an image is sampled, resolved once where it enters (the command line, a batch
    file, a widget, a reader) and passed inward as it is.

    ``fc``: the pupil cutoff ``NA · pixel_size / λ`` in cycles/pixel, or None when nothing
    is known (the image is then taken as sampled like the model it meets, or like the
    estimate it is deblurred with: :meth:`for_deblurring`). ``optics``: the microscope it
    comes from (:meth:`~napari_deepblur.optics.Microscope.to_dict`: NA, wavelength_nm,
    pixel_size_nm, refractive_index — the immersion rule's when not given — and fc), when it
    was given by its optics; it becomes :attr:`BlurEstimate.optics`.

    >>> s = Sampling.of(pixel_size_nm=74, na=1.4, wavelength_nm=520)
    >>> round(s.fc, 4), s.optics["refractive_index"], round(s.zoom(0.2), 3)
    (0.1992, 1.518, 0.996)
    >>> Sampling().image_fc(0.2), Sampling.of(fc=0.1).zoom(0.2)
    (0.2, 0.5)
    """

    fc: float | None = None
    optics: dict | None = None

    @classmethod
    def of(
        cls, fc=None, pixel_size_nm=None, na=None, wavelength_nm=None, refractive_index=None
    ) -> Sampling:
        """The one resolution of optics: ``fc`` (cycles/pixel, checked against Nyquist) when
        given, else NA, wavelength (nm) and pixel size (nm) together (a
        :class:`~napari_deepblur.optics.Microscope`, which applies the immersion rule when
        ``refractive_index`` is None), else unknown."""
        if fc is not None:
            return cls(check_fc(fc))
        given = [v is not None for v in (pixel_size_nm, na, wavelength_nm)]
        if not any(given):
            return cls()
        if not all(given):
            raise ValueError("give all three of pixel_size_nm, na and wavelength_nm (or fc)")
        scope = Microscope(na, wavelength_nm, pixel_size_nm, refractive_index)
        return cls(scope.fc, scope.to_dict())

    @classmethod
    def given(cls, sampling: Sampling | None = None, **optics) -> Sampling:
        """What an entry point of the pipeline was given: a :class:`Sampling`, or the optics
        keywords of :meth:`of` (``fc`` or ``pixel_size_nm``, ``na``, ``wavelength_nm``,
        ``refractive_index``), not both."""
        if sampling is None:
            return cls.of(**optics)
        if any(v is not None for v in optics.values()):
            raise ValueError(
                "give either a sampling or the optics (fc, NA, wavelength, pixel size)"
            )
        return sampling

    @classmethod
    def of_estimate(cls, estimate) -> Sampling:
        """The sampling of the image an estimate was identified on (or that its PSF is
        sampled like): its ``fc`` and ``optics``."""
        return cls(float(estimate.fc), estimate.optics)

    @property
    def known(self) -> bool:
        return self.fc is not None

    def image_fc(self, model_fc: float) -> float:
        """The image's cutoff (cycles/pixel): :attr:`fc`, or the model's when unknown."""
        return float(model_fc) if self.fc is None else self.fc

    def zoom(self, model_fc: float) -> float:
        """How much the image is resampled to reach the model's sampling: ``fc / model_fc``
        (> 1: upsampled)."""
        return self.image_fc(model_fc) / model_fc

    def for_deblurring(self, estimate, of_this_image: bool = False) -> Sampling:
        """The rule "the estimate knows its sampling": deblurring with ``estimate`` uses this
        sampling when it is known, unless the estimate was identified on this very image
        (``of_this_image``: its PSF is sampled at that image's pixels, whatever the optics
        given now say); else the estimate's."""
        if self.known and not of_this_image:
            return self
        return Sampling.of_estimate(estimate)


def psf_sampled_like(estimate, image: Sampling, model_fc: float | None, image_pixel_nm=None):
    """An estimate whose PSF came without its sampling (``fc`` NaN: a PSF TIFF from another
    tool, :func:`~napari_deepblur.formats.estimate_from_psf_file`) given one: that of the
    image it deblurs (``image``; the model's cutoff ``model_fc`` when unknown), or, when its
    file gives a pixel size (``estimate.optics["pixel_size_nm"]``, nm) other than the
    image's (``image_pixel_nm``), the cutoff of its own pixels (the pipeline then resamples
    it to the model's sampling, with a warning). Other estimates are returned as they are."""
    if not math.isnan(estimate.fc):
        return estimate
    image_fc = image.image_fc(model_fc)
    psf_pixel_nm = (estimate.optics or {}).get("pixel_size_nm")
    if psf_pixel_nm is None or image_pixel_nm is None:
        return replace(estimate, fc=image_fc)
    if abs(psf_pixel_nm / image_pixel_nm - 1) > 0.01:
        notices.warn(
            f"the PSF has {psf_pixel_nm:.4g} nm pixels, the image {image_pixel_nm:.4g} nm: "
            "the PSF is resampled to the image's pixels"
        )
    return replace(estimate, fc=image_fc * psf_pixel_nm / image_pixel_nm)


def resamples(zoom: float) -> bool:
    """Whether an image is resampled by ``zoom`` at all: within 1e-3 of 1, it is taken as it
    is (the tiles then start on the deblurring network's stride)."""
    return abs(zoom - 1) >= 1e-3


def resample(image: np.ndarray, zoom: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Cubic-spline resampling by ``zoom`` (or to ``shape``); identity when zoom ≈ 1."""
    from scipy import ndimage

    if shape is None:
        if not resamples(zoom):
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
    if resamples(zoom) or size != psf.shape[-1]:
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
