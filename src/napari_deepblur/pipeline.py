"""The public API: :func:`identify`, :func:`deblur` and :class:`BlurEstimate`.

Every entry point (napari widgets, CLI, batch, benchmark) goes through these functions, so
validation, intensity normalisation, resampling to the model's sampling, tiling and device
choice exist once. Long work has a generator form (:func:`iter_identify`,
:func:`iter_deblur`) that yields :class:`Progress` and returns the result; the plain
functions run it to the end.

Scale: :func:`iter_deblur_into` deblurs a 2D array-like (a memory-mapped TIFF, zarr) into
another, band by band with bounded memory; :func:`deblur_dask` is the lazy ``map_overlap``
form for huge dask arrays; :func:`iter_identify_stack` and :func:`iter_deblur_stack` process
Z/T/C stacks plane by plane (one shared estimate, the median over planes, or one per plane).
Tiles start on multiples of the deblurring network's stride, so tiled and untiled results
agree. A GPU out-of-memory error while deblurring retries with half-size tiles, then on the
CPU (with a warning).

    >>> import napari_deepblur as ndb
    >>> from napari_deepblur.samples import make_blurred_sample
    >>> image = make_blurred_sample(seed=0, size=128)["image"]
    >>> est = ndb.identify(image, pixel_size_nm=74, na=1.4, wavelength_nm=520, device="cpu")
    >>> est.noll_indices, round(est.fc, 4), est.optics["refractive_index"]
    ((4, 5, 6, 7, 8, 9, 10), 0.1992, 1.518)
    >>> ndb.deblur(image, est, device="cpu").shape
    (128, 128)
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from . import devices, notices
from .devices import empty_cache, is_out_of_memory, resolve_device
from .estimation import identify_in_windows, robust_combine
from .field_estimation import fit_field, read_windows
from .fieldmap import FieldEstimate, cell_centres
from .intensity import ConstantImageError, check_contrast, denormalize, normalize, robust_range
from .models import DeepBlurModel, as_model, fall_back_to_cpu, load_model
from .optics import (
    Convolution,
    Microscope,
    ProductConvolution,
    ZernikeConvolution,
    check_fc,
    zernike_psf,
)
from .optics.noise import NOISE_MIN_SIDE_PX, estimate_noise, noise_sigma_map
from .optics.zernike import check_noll_indices
from .refinement import (
    MAX_CROP_PIXELS,
    MAX_RELATIVE_NOISE,
    refine_coefficients,
    relative_noise,
)

#: Images are processed in tiles of at most this many pixels a side (bounded memory).
DEFAULT_TILE_PX = 1024
TILE_OVERLAP_PX = 64
#: The smallest tile size accepted (``tile_px``, ``--tile-px``): two blending overlaps.
MIN_TILE_PX = 2 * TILE_OVERLAP_PX


@dataclass
class Progress:
    """A step of long work: ``done`` of ``total`` units (tiles, planes), with a message."""

    done: int
    total: int
    message: str = ""


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
    :mod:`napari_deepblur.estimation`), and across tiles for large images. ``tiles``:
    per-tile estimates for large images (``{"y", "x", "coefficients"}`` with the tile
    centre in pixels). ``refined``: the coefficients were refined on the image itself
    (``identify(…, refine=True)`` on a nearly noise-free image,
    :mod:`napari_deepblur.refinement`). ``field``: for a space-varying (product-convolution)
    model, the local PSF anywhere in the image (:class:`~napari_deepblur.fieldmap.FieldEstimate`);
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


# -- validation and sampling ------------------------------------------------------------
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


# -- tiling -----------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with ≥ ``overlap`` px."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _blend_window(shape, overlap: int) -> np.ndarray:
    """Separable weights: 1 inside, a raised-cosine ramp over ``overlap`` px at the edges."""

    def ramp(n):
        w = np.ones(n, np.float32)
        m = min(overlap, n // 2)
        if m:
            r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
            w[:m], w[n - m :] = r, r[::-1]
        return w

    return ramp(shape[0])[:, None] * ramp(shape[1])[None, :]


# -- identify ---------------------------------------------------------------------------------
def check_tile_px(tile_px) -> int:
    """``tile_px`` as an int, or a ValueError that says what is accepted."""
    if isinstance(tile_px, bool) or not isinstance(tile_px, int | np.integer):
        raise ValueError(f"the tile size must be a whole number of pixels, got {tile_px!r}")
    if tile_px < MIN_TILE_PX:
        raise ValueError(f"the tile size must be at least {MIN_TILE_PX} px, got {tile_px}")
    return int(tile_px)


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
    fc=None,
    pixel_size_nm=None,
    na=None,
    wavelength_nm=None,
    refractive_index=None,
    device="auto",
    augment=True,
    tile_px: int = DEFAULT_TILE_PX,
    refine: bool = False,
) -> Generator[Progress, None, BlurEstimate]:
    """Generator form of :func:`identify`: yields :class:`Progress` per tile (and once
    more after the refinement, when asked)."""
    model = as_model(model, device)
    min_size = model.identification.config.min_size
    raw = as_image(image, min_size)
    fc_img, optics = image_fc(
        model.fc,
        fc=fc,
        pixel_size_nm=pixel_size_nm,
        na=na,
        wavelength_nm=wavelength_nm,
        refractive_index=refractive_index,
    )
    zoom = fc_img / model.fc
    y = resample(raw, zoom)
    if min(y.shape) < min_size:
        raise ValueError(
            f"after resampling to the model's sampling the image is "
            f"{y.shape[0]}×{y.shape[1]} px, smaller than the {min_size} px needed"
        )
    low, scale = robust_range(torch.from_numpy(y))
    check_contrast(scale, low, y)
    if refine and not isinstance(model.family, ZernikeConvolution):
        raise ValueError("refine=True needs a Zernike model (not a space-varying one)")
    if isinstance(model.family, ProductConvolution):
        return (yield from _iter_identify_field(model, raw, y, zoom, fc_img, optics, augment,
                                                tile_px))  # fmt: skip
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
    gamma, across_tiles = robust_combine(torch.stack([g for g, _ in estimates]), family)
    spreads = [s for _, s in estimates if s is not None]
    uncertainty = torch.stack(spreads).mean(0) if spreads else None
    if across_tiles is not None and uncertainty is not None:
        uncertainty = torch.maximum(uncertainty, across_tiles)
    elif across_tiles is not None:
        uncertainty = across_tiles
    if isinstance(family, ZernikeConvolution):
        gamma = family.canonical(gamma)
        for t in tiles:
            t["coefficients"] = family.canonical(torch.as_tensor(t["coefficients"])).numpy()
    if len(tiles) == 1:
        tiles = []
    noise = _noise_of(raw, fc_img)
    refined = False
    if refine:
        gamma, refined = _refined(y, gamma.cpu(), family, uncertainty, noise, scale)
        yield Progress(total, total, "refined" if refined else "refinement skipped (noise)")
    coefficients = gamma.cpu().numpy().astype(np.float32)
    noll = tuple(getattr(family, "noll_indices", ()))
    psf = zernike_psf(torch.as_tensor(coefficients), fc_img, 31, noll).numpy()
    return BlurEstimate(
        coefficients,
        noll,
        fc_img,
        psf,
        noise,
        list(getattr(family, "names", [])),
        model.name,
        optics,
        None if uncertainty is None else uncertainty.cpu().numpy().astype(np.float32),
        tiles,
        refined=refined,
    )


def _refined(y, gamma, family, uncertainty, noise, scale) -> tuple[torch.Tensor, bool]:
    """``(γ, applied)``: γ refined on the image (:mod:`napari_deepblur.refinement`) when
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


def _noise_of(raw: np.ndarray, fc_img: float) -> dict:
    """Noise ``{"alpha", "beta"}`` of an image, from (at most) a central crop: the
    estimator's memory grows ~70 bytes/pixel."""
    noise_sample = np.ascontiguousarray(_central_crop(raw, STATS_MAX_PX))
    alpha, beta = estimate_noise(torch.from_numpy(noise_sample)[None], fc_img)
    return {"alpha": float(alpha[0]), "beta": float(beta[0])}


def _iter_identify_field(
    model, raw, y, zoom, fc_img, optics, augment, tile_px
) -> Generator[Progress, None, BlurEstimate]:
    """Space-varying identification: the network reads the local PSF in windows all over
    the image and a smooth field is fitted to all readings at once
    (:mod:`napari_deepblur.field_estimation`)."""
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
    field_estimate = FieldEstimate.from_family(family, gamma, raw.shape, model.fc)
    centre_psf = field_psf(field_estimate, fc_img)
    names = [f"e{i + 1}·f{j + 1}" for i in range(family.num_psfs) for j in range(family.num_maps)]
    return BlurEstimate(
        gamma.numpy().astype(np.float32),
        (),
        fc_img,
        centre_psf,
        _noise_of(raw, fc_img),
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
    fc / pixel_size_nm, na, wavelength_nm, refractive_index : the image's sampling; without
        them the image is assumed sampled like the model (``model.fc``).
    device : "auto" (CUDA, MPS, CPU), "cpu", "cuda", …
    augment : also look at flipped/transposed copies of each window (as many of the 8 as
        the budget of :data:`~napari_deepblur.estimation.MAX_EVALUATIONS` network
        evaluations per tile allows); ``False``: each window once (faster).
    refine : then fit the coefficients to the image itself through the physics
        (:mod:`napari_deepblur.refinement`; under a second at 256² on a CPU). It helps nearly
        noise-free images only: above :data:`~napari_deepblur.refinement.MAX_RELATIVE_NOISE`
        of noise it is skipped with a warning and ``BlurEstimate.refined`` stays False.
        Zernike models only.
    """
    return run(iter_identify(image, model, **kwargs))


# -- deblur -------------------------------------------------------------------------------------
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


def deblur(image, estimate: BlurEstimate | None = None, model=None, **kwargs) -> np.ndarray:
    """Remove the blur of a 2D image with the deblurring network.

    ``estimate`` is a :class:`BlurEstimate` (from :func:`identify`, or built from an
    imported PSF); without it the image is identified first. ``noise`` overrides the
    estimated noise (``{"alpha", "beta"}`` in the image's units, or a std); ``strength``
    scales the noise level the network assumes (> 1: smoother, < 1: sharper).
    Returns a float32 array of the image's shape, in its intensity units.
    """
    return run(iter_deblur(image, estimate, model, **kwargs))


# -- large images: tiles streamed from any array-like ------------------------------------------
#: Planes larger than this many pixels take their noise level from a central crop of this
#: many pixels and their intensity range from a regular subsample (below it: the whole plane),
#: which bounds the memory of the statistics (the noise estimator needs ~70 bytes/pixel).
STATS_MAX_PX = 2048 * 2048
#: A CUDA out-of-memory error halves the tile size down to this, then moves to the CPU.
MIN_FALLBACK_TILE_PX = 256


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


def _grid_factor(model: DeepBlurModel) -> int:
    """The deblurring network's stride (pixel-unshuffle × down-samplings): its output is
    shift-equivariant only for shifts that are multiples of it, so tiles start on it."""
    if model.deblurring is None:
        return 1
    return max((int(getattr(m, "factor", 1)) for m in model.deblurring.modules()), default=1)


def _tile_spans(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """``(start, end)`` of tiles of about ``tile`` px covering ``length`` px, overlapping by
    at least ``overlap`` px, starting on multiples of ``align`` (the last tile then reaches
    the end, up to ``align − 1`` px longer)."""
    if length <= tile:
        return [(0, length)]
    count = len(tile_starts(length, tile, overlap + align))
    # The smallest tiles that cover the length in as many tiles: a 2048 px side cut into
    # 1024 px tiles would otherwise be computed 2.25 times over (3 tiles of 1024 px).
    balanced = -(-(length + (count - 1) * (overlap + align)) // count)
    tile = min(tile, -(-balanced // align) * align)
    starts = [s // align * align for s in tile_starts(length, tile, overlap + align)]
    ends = [min(length, s + tile) for s in starts[:-1]] + [length]
    return list(zip(starts, ends, strict=True))


def _tile_layout(
    shape, zoom: float, tile_px: int, align: int = 1
) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """The overlap (the blending ramp) in the image's pixels and the tiles' row and column
    spans; ``tile_px`` and the overlap are given in the model's pixels. Tiles start on
    multiples of ``align`` when the image is not resampled."""
    tile_px = check_tile_px(tile_px)
    if abs(zoom - 1) < 1e-3:
        tile, overlap = tile_px, TILE_OVERLAP_PX
    else:
        tile = max(2 * TILE_OVERLAP_PX, int(tile_px / zoom))
        overlap = int(np.ceil(TILE_OVERLAP_PX / zoom))
        align = 1  # resampled tiles have their own grid
    overlap = min(overlap, tile // 2)
    align = align if tile > 4 * align else 1
    rows, cols = (_tile_spans(n, tile, overlap, align) for n in shape)
    return overlap, rows, cols


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


def _read_tile(source, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    block = np.array(source[rows[0] : rows[1], cols[0] : cols[1]], dtype=np.float32)
    if not np.isfinite(block).all():
        bad = int((~np.isfinite(block)).sum())
        raise ValueError(
            f"the image has NaN or infinite pixels ({bad} in the tile at y={rows[0]}, "
            f"x={cols[0]}); replace them (e.g. with numpy.nan_to_num or an inpainting) "
            "before deblurring"
        )
    return block


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


def _store_rows(out, top: int, rows: np.ndarray) -> None:
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        rows = np.clip(np.rint(rows), info.min, info.max)
    out[top : top + rows.shape[0]] = rows.astype(out.dtype, copy=False)


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


# -- huge arrays: dask ------------------------------------------------------------------------
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


# -- stacks: Z, T, C planes -------------------------------------------------------------------
def plane_indices(shape) -> list[tuple[int, ...]]:
    """Indices of the 2D planes of an array ``(…, Y, X)``, in C order (``[()]`` for 2D)."""
    if len(shape) < 2:
        raise ValueError(f"expected an image (…, Y, X), got shape {tuple(shape)}")
    return list(np.ndindex(*shape[:-2]))


def _check_stack(stack) -> None:
    shape = tuple(stack.shape)
    if len(shape) == 3 and shape[-1] in (3, 4):
        raise ValueError(
            f"this looks like an RGB(A) image (shape {shape}); Deep-Blur works on one "
            "fluorescence channel: split the channels and process each one"
        )
    plane_indices(shape)
    _check_dtype(stack.dtype)


def plane_index(stack_shape, plane) -> tuple[int, ...]:
    """A plane given as a flat number (C order over the leading axes) or an index tuple →
    the index tuple, checked against ``stack_shape``."""
    leading = tuple(stack_shape[:-2])
    count = int(np.prod(leading)) if leading else 1
    if isinstance(plane, int | np.integer):
        if not -count <= plane < count:
            raise ValueError(f"plane {plane} is out of range: the image has {count} plane(s)")
        return tuple(int(i) for i in np.unravel_index(int(plane) % count, leading))
    plane = tuple(int(i) for i in plane)
    if len(plane) != len(leading) or any(not 0 <= i < n for i, n in zip(plane, leading)):  # noqa: B905
        raise ValueError(f"plane {plane} is not an index of the leading axes {leading}")
    return plane


def representative_plane(stack) -> tuple[int, ...]:
    """The plane with the largest robust contrast (99.9th − 1st percentile, subsampled):
    in a Z stack usually the one nearest focus, and never an empty plane."""
    best, best_score = (), -np.inf
    for index in plane_indices(stack.shape):
        plane = stack[index]
        step = max(1, int(np.ceil(np.sqrt(plane.shape[0] * plane.shape[1] / 65536))))
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: refused when read
            sub = np.asarray(plane[::step, ::step], dtype=np.float32)
            low, high = np.nanpercentile(sub, [1.0, 99.9])
        if high - low > best_score:
            best, best_score = index, high - low
    return best


def combine_estimates(estimates: list[BlurEstimate], model=None) -> BlurEstimate:
    """One estimate from several (planes of a stack): the median coefficients (each aligned
    to the first among its unobservable sign flips), the median noise, and as uncertainty the
    larger of the mean reported spread and the spread over planes."""
    if not estimates:
        raise ValueError("no estimates to combine")
    if len(estimates) == 1:
        return estimates[0]
    if isinstance(model, DeepBlurModel):
        family = model.family
    else:  # a name or path (default: the shipped model); its family only
        family = load_model(model, device=resolve_device("auto")).family
    gammas = torch.stack([torch.as_tensor(e.coefficients, dtype=torch.float32) for e in estimates])
    gamma, _ = robust_combine(gammas, family)
    if isinstance(family, ZernikeConvolution):
        gamma = family.canonical(gamma)
    spread = gammas.std(0)
    reported = [torch.as_tensor(e.uncertainty) for e in estimates if e.uncertainty is not None]
    if reported:
        spread = torch.maximum(spread, torch.stack(reported).mean(0))
    first = estimates[0]
    coefficients = gamma.numpy().astype(np.float32)
    field_estimate = None
    if first.field is not None:  # the same field, with the median γ
        field_estimate = replace(first.field, gamma=coefficients)
        psf = field_psf(field_estimate, first.fc)
    else:
        psf = zernike_psf(torch.as_tensor(coefficients), first.fc, 31, first.noll_indices).numpy()
    noise = {
        k: float(np.median([e.noise.get(k, 0.0) for e in estimates])) for k in ("alpha", "beta")
    }
    return BlurEstimate(
        coefficients,
        first.noll_indices,
        first.fc,
        psf,
        noise,
        list(first.names),
        first.model,
        first.optics,
        spread.numpy().astype(np.float32),
        [],
        field_estimate,
    )


#: How a stack is identified: one representative (or given) plane, the median over planes,
#: or one estimate per plane.
STACK_MODES = ("plane", "median", "per-plane")


def iter_identify_stack(
    stack,
    model=None,
    *,
    mode: str = "plane",
    plane=None,
    max_planes: int = 8,
    device="auto",
    **kwargs,
) -> Generator[Progress, None, BlurEstimate | list[BlurEstimate]]:
    """Identify the blur of a stack ``(…, Y, X)`` (Z, T, C planes) plane by plane, yielding
    :class:`Progress` in planes (stop iterating to cancel).

    ``mode="plane"``: one shared estimate from ``plane`` (a flat plane number or an index
    tuple; default :func:`representative_plane`). ``"median"``: the median
    (:func:`combine_estimates`) over up to ``max_planes`` evenly spaced planes.
    ``"per-plane"``: a list with one estimate per plane, in :func:`plane_indices` order.
    Other keyword arguments go to :func:`identify`. A 2D image is a stack of one plane.
    """
    if mode not in STACK_MODES:
        raise ValueError(f"mode must be one of {', '.join(STACK_MODES)}, got {mode!r}")
    _check_stack(stack)
    model = as_model(model, device)
    indices = plane_indices(stack.shape)
    if mode == "plane":
        chosen = [representative_plane(stack) if plane is None else plane_index(stack.shape, plane)]
    elif mode == "median":
        picks = np.unique(np.linspace(0, len(indices) - 1, min(max_planes, len(indices))).round())
        chosen = [indices[int(i)] for i in picks]
    else:
        chosen = indices
    estimates: dict[tuple[int, ...], BlurEstimate] = {}
    tiles = len(chosen) == 1  # one plane: its tiles are the steps; else the planes are
    for k, index in enumerate(chosen):
        label = f"plane {index}" if index else "image"
        inner = iter_identify(np.asarray(stack[index]), model, device=device, **kwargs)
        p = Progress(0, 1)
        while True:
            try:
                p = next(inner)
            except StopIteration as stop:
                estimates[index] = stop.value
                break
            except ConstantImageError:
                if mode == "plane":
                    raise
                break
            done, total = (p.done, p.total) if tiles else (k, len(chosen))
            yield Progress(done, total, f"identifying {label}: {p.message}")
        done, total = (p.total, p.total) if tiles else (k + 1, len(chosen))
        yield Progress(done, total, f"identified {label}")
    return _stack_estimate(mode, chosen, estimates, model)


def _stack_estimate(mode: str, chosen, estimates: dict, model):
    """The result of :func:`iter_identify_stack` from the estimates of its ``chosen``
    planes; constant planes (absent from ``estimates``) are left out of the median, and in
    per-plane mode get the median of the others (deblurring copies them unchanged)."""
    constant = [index for index in chosen if index not in estimates]
    if not estimates:
        raise ConstantImageError(
            f"every plane identified ({len(chosen)}) is constant: there is no structure "
            "from which to estimate the blur"
        )
    if constant:
        shown = ", ".join(str(index) for index in constant[:5]) + (
            " …" if len(constant) > 5 else ""
        )
        notices.warn(
            f"{len(constant)} constant plane(s) left out of the identification: {shown}",
            RuntimeWarning,
            stacklevel=3,
        )
    if mode == "plane":
        return estimates[chosen[0]]
    combined = combine_estimates(list(estimates.values()), model)
    if mode == "median":
        return combined
    return [estimates.get(index, combined) for index in chosen]


def iter_deblur_stack(
    stack,
    estimate: BlurEstimate | list[BlurEstimate] | None = None,
    model=None,
    *,
    mode: str = "plane",
    plane=None,
    out=None,
    noise=None,
    strength: float = 1.0,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
    **optics,
) -> Generator[Progress, None, np.ndarray]:
    """Deblur a stack ``(…, Y, X)`` plane by plane, yielding :class:`Progress` in planes
    (stop iterating to cancel; the planes done are in ``out``).

    ``estimate``: one :class:`BlurEstimate` shared by all planes, a list with one per plane,
    or None to identify first with :func:`iter_identify_stack` (``mode``, ``plane``).
    ``out``: where to write (an array-like of the stack's shape, e.g. a memory-mapped TIFF;
    default a new float32 array), returned at the end. Each plane is normalised on its own
    and tiled like :func:`deblur`.
    """
    _check_stack(stack)
    check_finite(stack)
    model = as_model(model, device)
    indices = plane_indices(stack.shape)
    if estimate is None:
        estimate = yield from iter_identify_stack(
            stack, model, mode=mode, plane=plane, device=device, tile_px=tile_px, **optics
        )
    if isinstance(estimate, list | tuple):
        if len(estimate) != len(indices):
            raise ValueError(f"{len(estimate)} estimates given for {len(indices)} planes")
        estimates = list(estimate)
    else:
        estimates = [estimate] * len(indices)
    if out is None:
        out = np.empty(tuple(stack.shape), np.float32)
    elif tuple(out.shape) != tuple(stack.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the stack {tuple(stack.shape)}")
    n = len(indices)
    for k, (index, est) in enumerate(zip(indices, estimates)):  # noqa: B905
        source = stack[index]
        label = f"plane {k + 1} of {n}" if index else "image"
        try:
            try:
                setup = deblur_setup(source, est, model, noise=noise, strength=strength, **optics)
            except ConstantImageError:
                if not index:
                    raise
                _copy_constant_plane(source, _PlaneView(out, index), f"plane {index} ({label})")
                yield Progress(k + 1, n, f"copied {label} (constant)")
                continue
            for p in _iter_tiles(source, _PlaneView(out, index), setup, est, model, tile_px):
                yield Progress(k, n, f"{label}: {p.message}")
        except ValueError as exc:
            if not index:
                raise
            raise ValueError(f"plane {index} ({label}): {exc}") from exc
        yield Progress(k + 1, n, f"deblurred {label}")
    return out


def _copy_constant_plane(source, out, label: str, rows_per_block: int = 1024) -> None:
    """A constant plane has no blur to remove: it is its own deblurred version (copied in
    blocks of rows, so a huge plane needs no more memory than a tile)."""
    notices.warn(
        f"{label} is constant: copied unchanged (it shows no structure to deblur)",
        RuntimeWarning,
        stacklevel=3,
    )
    for top in range(0, source.shape[0], rows_per_block):
        out[top : top + rows_per_block] = np.asarray(source[top : top + rows_per_block], np.float32)


class _PlaneView:
    """Row-slice writes into one plane of an N-D array-like (zarr slices are copies)."""

    def __init__(self, array, index: tuple[int, ...]):
        self.array, self.index = array, index
        self.shape, self.dtype = tuple(array.shape[len(index) :]), array.dtype

    def __setitem__(self, key, value):
        key = key if isinstance(key, tuple) else (key,)
        self.array[self.index + key] = value


def run(generator: Generator, progress=None):
    """Run a pipeline generator to the end and return its result; ``progress``, when given,
    is called with every item it yields (e.g. each :class:`Progress`)."""
    while True:
        try:
            step = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)
