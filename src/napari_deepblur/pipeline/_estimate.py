"""The blur estimate (:class:`BlurEstimate`) and what makes a PSF from elsewhere fit to be one."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import notices
from ..optics import (
    zernike_psf,
)
from ..optics.zernike import check_noll_indices
from ._field import FieldEstimate, cell_centres
from ._sampling import field_psf


@dataclass
class BlurEstimate:
    """The blur of one image, as estimated by the identification network.

    ``coefficients``: Zernike coefficients in waves RMS (Noll-normalised) for
    ``noll_indices``, in the canonical sign (defocus ≥ 0: the sign of the even-order terms
    — defocus, astigmatism, spherical — is not observable from one in-focus image).
    ``psf``: the ``31 × 31`` PSF (sum 1) sampled at the image's pixels (cutoff ``fc``
    cycles/pixel). ``noise``: ``{"alpha", "beta"}`` of ``var = α·I + β²`` in the image's
    intensity units. ``uncertainty``: the spread (std, waves RMS) of the coefficients
    predicted for the windows of the image and their flipped/rotated copies (see
    :mod:`napari_deepblur.pipeline._windows`), and across tiles for large images. ``tiles``:
    per-tile estimates for large images (``{"y", "x", "coefficients"}`` with the tile
    centre in pixels). ``refined``: the coefficients were refined on the image itself
    (``identify(…, refine=True)`` on a nearly noise-free image,
    :mod:`napari_deepblur.pipeline._refine`). ``field``: for a space-varying (product-convolution)
    model, the local PSF anywhere in the image (:class:`~napari_deepblur.pipeline.FieldEstimate`);
    ``coefficients`` are then its γ and ``psf`` the PSF at the image centre.
    """

    coefficients: np.ndarray
    noll_indices: tuple[int, ...]
    fc: float
    psf: np.ndarray
    noise: dict
    names: list[str] = field(default_factory=list)
    model: str = ""
    optics: dict | None = None
    uncertainty: np.ndarray | None = None
    tiles: list[dict] = field(default_factory=list)
    field: FieldEstimate | None = None
    refined: bool = False

    def psf_at(self, y: float, x: float) -> np.ndarray:
        """The local PSF (sum 1, at the image's sampling) at pixel ``(y, x)`` of the image:
        from the field of a space-varying estimate, else :attr:`psf` (the same everywhere)."""
        if self.field is None:
            return self.psf
        return field_psf(self.field, self.fc, y, x)

    def psf_grid(self, count: int = 5, shape=None) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(count², 2)`` (pixels ``y, x`` of an image of ``shape``, centres of a
        ``count × count`` grid of cells) and the local PSFs ``(count², k, k)`` there; without
        a field, :attr:`psf` repeated (``shape`` is then required)."""
        if self.field is None:
            if shape is None:
                raise ValueError("psf_grid needs the image shape for an estimate without field")
            positions = cell_centres(shape, count)
            return positions, np.repeat(self.psf[None], len(positions), axis=0)
        positions = cell_centres(shape or self.field.shape, count)
        psfs = [self.psf_at(y, x) for y, x in positions]
        return positions, np.stack(psfs)

    def to_dict(self) -> dict:
        """JSON-ready dict (everything but the PSF array, which is exported as a TIFF)."""
        d = asdict(self)
        d.pop("psf")
        d["field"] = None if self.field is None else self.field.to_dict()
        return json.loads(json.dumps(d, default=_jsonable))

    @classmethod
    def from_dict(cls, d: dict, psf: np.ndarray | None = None) -> BlurEstimate:
        """Rebuild from :meth:`to_dict` (the PSF is recomputed from the coefficients when
        not given)."""
        coefficients = np.asarray(d["coefficients"], dtype=np.float32)
        if not np.isfinite(coefficients).all():
            raise ValueError(
                "the estimate's coefficients are not all finite numbers (null, NaN or "
                "infinite): re-run identify to make a new estimate"
            )
        noll = check_noll_indices(d["noll_indices"])
        _check_coefficients(coefficients, noll)
        field_estimate = FieldEstimate.from_dict(d["field"]) if d.get("field") else None
        if psf is None and field_estimate is not None:
            psf = field_psf(field_estimate, float(d["fc"]))
        elif psf is None:
            psf = zernike_psf(torch.as_tensor(coefficients), d["fc"], 31, noll).numpy()
        unc = d.get("uncertainty")
        return cls(
            coefficients,
            noll,
            float(d["fc"]),
            np.asarray(psf, np.float32),
            dict(d.get("noise") or {}),
            list(d.get("names") or []),
            d.get("model", ""),
            d.get("optics"),
            None if unc is None else np.asarray(unc, np.float32),
            list(d.get("tiles") or []),
            field_estimate,
            bool(d.get("refined", False)),
        )

    @classmethod
    def from_psf(
        cls, psf, fc: float, *, noise: dict | None = None, optics: dict | None = None
    ) -> BlurEstimate:
        """An estimate made of a PSF alone (e.g. measured or exported by another tool),
        sampled at ``fc`` cycles/pixel: no Zernike coefficients; deblurring uses the PSF
        (normalised to sum 1) as it is."""
        psf = np.asarray(psf, np.float32)
        if psf.ndim != 2 or not np.isfinite(psf).all() or psf.sum() <= 0:
            raise ValueError("a PSF must be a 2D array of finite values with a positive sum")
        return cls(
            np.zeros(0, np.float32), (), float(fc), clean_measured_psf(psf), dict(noise or {}),
            optics=optics,
        )  # fmt: skip

    def local_psfs(self, size: int = 31) -> np.ndarray:
        """The PSFs ``(n_tiles, size, size)`` of the per-tile estimates (``tiles``), in the
        order of ``tiles``, at the image's sampling ``fc``; empty without tiles."""
        if not self.tiles or not self.noll_indices:
            return np.zeros((0, size, size), np.float32)
        coefficients = np.stack([np.asarray(t["coefficients"], np.float32) for t in self.tiles])
        return zernike_psf(torch.from_numpy(coefficients), self.fc, size, self.noll_indices).numpy()


#: The largest Zernike coefficient an estimate may hold, in waves RMS: 2 waves of defocus
#: spread the PSF over more than 100 px at any cutoff up to Nyquist, far beyond its 31 px
#: kernel (identify reports a few tenths).
MAX_COEFFICIENT_WAVES = 2.0


def _check_coefficients(coefficients: np.ndarray, noll: tuple[int, ...]) -> None:
    """ValueError unless there is one Zernike coefficient per Noll index (of an estimate with
    any), each within ±:data:`MAX_COEFFICIENT_WAVES` waves RMS."""
    if not noll:
        return  # a space-varying estimate's γ, or a PSF alone: not waves
    if coefficients.shape != (len(noll),):
        raise ValueError(
            f"the estimate has {coefficients.size} coefficients for {len(noll)} Noll indices"
        )
    k = int(np.argmax(np.abs(coefficients)))
    if abs(float(coefficients[k])) > MAX_COEFFICIENT_WAVES:
        raise ValueError(
            f"the estimate's coefficient of Z{noll[k]} is {float(coefficients[k]):.4g} waves "
            f"RMS, beyond the ±{MAX_COEFFICIENT_WAVES:g} accepted: so large an aberration "
            "would spread the PSF far beyond its 31 px kernel (identify finds a few tenths); "
            "re-run identify to make a new estimate"
        )


#: A PSF's border level is a background (a camera offset) to subtract when, spread over
#: the whole crop, it holds more than this fraction of the PSF's sum: on a bead crop a
#: background of 0.5 % of the peak can hold half the sum.
PSF_BACKGROUND_FRACTION = 0.02


def clean_measured_psf(psf) -> np.ndarray:
    """A PSF from elsewhere (a bead crop, another tool) made fit to be a blur kernel, with a
    warning for each change: a background filling its border (a camera offset holding more
    than 2 % of the sum) is subtracted, and a peak more than 1 px from the centre pixel
    (``size // 2``) is moved there (an off-centre PSF shifts the deblurred image). Returns
    float32 of the same shape, ≥ 0, summing to 1; a clean, centred PSF comes back unchanged
    but normalised."""
    from scipy import ndimage

    psf = np.asarray(psf, np.float64)
    border = np.concatenate([psf[0], psf[-1], psf[1:-1, 0], psf[1:-1, -1]])
    background = float(np.median(border))
    if background * psf.size > PSF_BACKGROUND_FRACTION * psf.sum():
        psf = np.clip(psf - background, 0, None)
        if not psf.sum() > 0:
            raise ValueError("the PSF has no signal above its background (its border's level)")
        notices.warn(
            f"the PSF's background ({background:.4g}, the median of its border) was "
            "subtracted: a PSF must be zero away from its peak"
        )
    peak = np.unravel_index(np.argmax(ndimage.uniform_filter(psf, 3)), psf.shape)
    offset = [int(p) - n // 2 for p, n in zip(peak, psf.shape, strict=True)]
    if max(abs(o) for o in offset) > 1:
        psf = ndimage.shift(psf, [-o for o in offset], order=0, mode="constant", cval=0.0)
        notices.warn(
            f"the PSF's peak was {offset[0]:+d}, {offset[1]:+d} px (y, x) from its centre: "
            "it was moved to the centre (an off-centre PSF shifts the deblurred image)"
        )
    return (psf / psf.sum()).astype(np.float32)


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")
