"""The public API: :func:`identify`, :func:`deblur` and :class:`BlurEstimate`.

Every entry point (napari widgets, CLI, batch, benchmark) goes through these functions, so
validation, intensity normalisation, resampling to the model's sampling, tiling and device
choice exist once. Long work has a generator form (:func:`iter_identify`,
:func:`iter_deblur`) that yields :class:`Progress` and returns the result; the plain
functions run it to the end.

    >>> import napari_deepblur as ndb
    >>> est = ndb.identify(image, pixel_size_nm=74, na=1.4, wavelength_nm=520)  # doctest: +SKIP
    >>> restored = ndb.deblur(image, est)                                        # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from collections.abc import Generator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .devices import resolve_device
from .intensity import check_contrast, denormalize, normalize, robust_range
from .models import DeepBlurModel, load_model
from .optics import Convolution, Microscope, ZernikeConvolution, check_fc, zernike_psf
from .optics.noise import estimate_noise
from .training.train import network_inputs

#: Images are processed in tiles of at most this many pixels a side (bounded memory).
DEFAULT_TILE_PX = 1024
TILE_OVERLAP_PX = 64


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
    intensity units. ``uncertainty``: the spread (std, waves RMS) of the coefficients over
    flipped/rotated copies of the image. ``tiles``: per-tile estimates for large images
    (``{"y", "x", "coefficients"}`` with the tile centre in pixels).
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

    def to_dict(self) -> dict:
        """JSON-ready dict (everything but the PSF array, which is exported as a TIFF)."""
        d = asdict(self)
        d.pop("psf")
        return json.loads(json.dumps(d, default=_jsonable))

    @classmethod
    def from_dict(cls, d: dict, psf: np.ndarray | None = None) -> BlurEstimate:
        """Rebuild from :meth:`to_dict` (the PSF is recomputed from the coefficients when
        not given)."""
        coefficients = np.asarray(d["coefficients"], dtype=np.float32)
        noll = tuple(int(j) for j in d["noll_indices"])
        if psf is None:
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
        )


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# -- models ------------------------------------------------------------------------------
def _model(model, device) -> DeepBlurModel:
    if isinstance(model, DeepBlurModel):
        return model.to(resolve_device(device)).eval()
    return load_model(model, device=device)


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
    image32 = array.astype(np.float32, copy=True)
    bad = ~np.isfinite(image32)
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
        n = refractive_index if refractive_index is not None else max(1.0, 1.518 if na > 1 else 1.0)
        scope = Microscope(na, wavelength_nm, pixel_size_nm, n)
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
def _dihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/transpositions of images ``(…, H, W)``."""
    if k & 1:
        y = y.flip(-1)
    if k & 2:
        y = y.flip(-2)
    if k & 4:
        y = y.transpose(-2, -1)
    return y


@functools.lru_cache(maxsize=8)
def _zernike_transform_matrices(noll: tuple[int, ...]) -> torch.Tensor:
    """``T_k (8, K, K)``: coefficients of the PSF transformed like ``_dihedral(·, k)``
    (flips and transposition of the image act on the pupil the same way)."""
    from .optics.zernike import zernike_basis

    rng = np.random.default_rng(0)
    r = np.sqrt(rng.random(4000))
    t = rng.random(4000) * 2 * np.pi
    fx, fy = r * np.cos(t), r * np.sin(t)
    base = zernike_basis(noll, r, t).T  # (S, K)
    mats = []
    for k in range(8):
        gx, gy = fx.copy(), fy.copy()
        if k & 1:
            gx = -gx
        if k & 2:
            gy = -gy
        if k & 4:
            gx, gy = gy, gx
        moved = zernike_basis(noll, np.hypot(gx, gy), np.arctan2(gy, gx)).T
        # Z(g·f) = Σ_j M_ij Z_j(f): the transformed image has coefficients γ' = M γ.
        solution, *_ = np.linalg.lstsq(base, moved, rcond=None)
        mats.append(solution.T)
    return torch.as_tensor(np.stack(mats), dtype=torch.float32)


def _identify_normalised(model: DeepBlurModel, y_n: torch.Tensor, augment: bool):
    """γ̂ (K,) and its spread over the 8 dihedral copies (or None) for one image (1,1,H,W)."""
    family = model.family
    network = model.identification
    scale = family.parameter_scale
    if not augment or not isinstance(family, ZernikeConvolution):
        return (network(y_n)[0].float() * scale), None
    copies = [_dihedral(y_n, k) for k in range(8)]
    if y_n.shape[-1] == y_n.shape[-2]:  # one batch; transposed copies of non-square images
        predicted = network(torch.cat(copies))  # have another shape: one call each
    else:
        predicted = torch.cat([network(c) for c in copies])
    predicted = predicted.float() * scale  # (8, K): coefficients of the transformed PSFs
    mats = _zernike_transform_matrices(family.noll_indices).to(predicted)
    back = torch.linalg.solve(mats, predicted[..., None])[..., 0]  # γ = M⁻¹ γ'
    reference = back[0]
    aligned = []
    for g in back:  # pick, for each copy, the equivalent vector closest to the first
        variants = torch.stack(family.equivalent_parameters(g))
        aligned.append(variants[((variants - reference) ** 2).sum(-1).argmin()])
    aligned = torch.stack(aligned)
    return aligned.mean(0), aligned.std(0)


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
) -> Generator[Progress, None, BlurEstimate]:
    """Generator form of :func:`identify`: yields :class:`Progress` per tile."""
    model = _model(model, device)
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
    check_contrast(scale, low)
    rows, cols = (tile_starts(n, tile_px, TILE_OVERLAP_PX) for n in y.shape)
    total = len(rows) * len(cols)
    estimates, tiles = [], []
    dev = model.device
    with torch.no_grad():
        for i, (top, left) in enumerate((t, l) for t in rows for l in cols):
            tile = torch.from_numpy(y[top : top + tile_px, left : left + tile_px]).to(dev)
            y_n, *_ = network_inputs(tile[None], model.fc)
            gamma, spread = _identify_normalised(model, y_n, augment)
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
    gammas = torch.stack([g for g, _ in estimates])
    reference = gammas[0]
    gammas = torch.stack(
        [
            min(family.equivalent_parameters(g), key=lambda v: float(((v - reference) ** 2).sum()))
            for g in gammas
        ]
    )
    gamma = gammas.median(0).values if len(gammas) > 2 else gammas.mean(0)
    spreads = [s for _, s in estimates if s is not None]
    uncertainty = torch.stack(spreads).mean(0) if spreads else None
    if len(gammas) > 1:
        uncertainty = (
            torch.maximum(uncertainty, gammas.std(0)) if uncertainty is not None else gammas.std(0)
        )
    if isinstance(family, ZernikeConvolution):
        gamma = family.canonical(gamma)
        for t in tiles:
            t["coefficients"] = family.canonical(torch.as_tensor(t["coefficients"])).numpy()
    if len(tiles) == 1:
        tiles = []
    alpha, beta = estimate_noise(torch.from_numpy(raw)[None], fc_img)
    coefficients = gamma.cpu().numpy().astype(np.float32)
    noll = tuple(getattr(family, "noll_indices", ()))
    psf = zernike_psf(torch.as_tensor(coefficients), fc_img, 31, noll).numpy()
    return BlurEstimate(
        coefficients,
        noll,
        fc_img,
        psf,
        {"alpha": float(alpha[0]), "beta": float(beta[0])},
        list(getattr(family, "names", [])),
        model.name,
        optics,
        None if uncertainty is None else uncertainty.cpu().numpy().astype(np.float32),
        tiles,
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
    augment : average over the 8 flips/transpositions (and report their spread).
    """
    return run(iter_identify(image, model, **kwargs))


# -- deblur -------------------------------------------------------------------------------------
def _operator_for(model: DeepBlurModel, estimate: BlurEstimate, shape, device):
    """The blur operator for ``estimate`` at the model's sampling, on images ``(1,1,H,W)``."""
    family = model.family
    same_family = (
        isinstance(family, ZernikeConvolution)
        and tuple(estimate.noll_indices) == family.noll_indices
    )
    if same_family:
        gamma = torch.as_tensor(estimate.coefficients, dtype=torch.float32, device=device)
        return family.operator(gamma[None, None], shape)
    psf = np.asarray(estimate.psf, np.float32)
    if abs(estimate.fc - model.fc) > 1e-3:  # a PSF from elsewhere: resample it
        size = psf.shape[-1]
        psf = resample(psf, model.fc / estimate.fc)
        c, h = psf.shape[0] // 2, size // 2
        psf = np.pad(psf, h)[c : c + size, c : c + size] if psf.shape[0] >= size else psf
        psf = psf / psf.sum()
    kernel = torch.as_tensor(psf, device=device)
    if kernel.shape[-1] % 2 == 0:
        kernel = torch.nn.functional.pad(kernel, (0, 1, 0, 1))
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
    model = _model(model, device)
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
    fc_img, _ = image_fc(model.fc, **optics)
    if fc is None and not any(v is not None for v in (pixel_size_nm, na, wavelength_nm)):
        fc_img = estimate.fc  # the estimate knows the image's sampling
    zoom = fc_img / model.fc
    y = resample(raw, zoom)
    kernel = model.family.kernel_size
    if min(y.shape) <= kernel // 2:
        raise ValueError(
            f"the image ({raw.shape[0]}×{raw.shape[1]} px) is smaller than the "
            f"blur kernel ({kernel} px): nothing to deblur"
        )
    y_t = torch.from_numpy(y)
    low, scale = robust_range(y_t)
    check_contrast(scale, low)
    dev = model.device
    alpha, beta = _noise_in_normalised_units(y_t, low, scale, noise, model.fc)
    alpha, beta = alpha * strength**2, beta * strength

    out = np.zeros_like(y)
    weight = np.zeros_like(y)
    rows, cols = (tile_starts(n, tile_px, TILE_OVERLAP_PX) for n in y.shape)
    total = len(rows) * len(cols)
    with torch.no_grad():
        for i, (top, left) in enumerate((t, l) for t in rows for l in cols):
            tile = y_t[top : top + tile_px, left : left + tile_px].to(dev)
            y_n = normalize(tile, low.to(dev), scale.to(dev))[None, None]
            smooth = torch.nn.functional.avg_pool2d(y_n, 3, 1, 1, count_include_pad=False)
            sigma = torch.sqrt(alpha * smooth.clamp_min(0) + beta**2)
            operator = _operator_for(model, estimate, tile.shape, dev)
            x_n = model.deblurring(y_n, operator, sigma)[0, 0]
            x = denormalize(x_n.cpu(), low, scale).numpy()
            w = _blend_window(tile.shape, TILE_OVERLAP_PX if total > 1 else 0)
            out[top : top + tile.shape[0], left : left + tile.shape[1]] += x * w
            weight[top : top + tile.shape[0], left : left + tile.shape[1]] += w
            yield Progress(i + 1, total, f"deblurred tile {i + 1} of {total}")
    restored = out / weight
    return resample(restored, 1 / zoom, raw.shape).astype(np.float32)


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


def run(generator: Generator):
    """Run a pipeline generator to the end and return its result."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value
