"""Pupil → intensity PSF, batched and differentiable in the Zernike coefficients.

``h = |F⁻¹(P · e^{iφ})|²`` with ``φ = 2π Σ γ_k Z_k`` (γ in waves RMS, Noll-normalised) and
``P`` the pupil disk of radius ``fc`` cycles/pixel. The pupil is sampled on a grid of step
``1 / pupil_samples`` cycles/pixel (so the PSF it gives is periodic over ``pupil_samples``
pixels, far beyond the kernel) with an area-weighted edge, and the PSF is evaluated exactly on
the kernel's pixel grid by a matrix Fourier transform (two small complex matrix products per
PSF instead of a large FFT and a crop). Pixels are point samples; the PSF is centred on pixel
``size // 2`` and normalised to sum 1. Axes: rows are ``y``, columns ``x``; the pupil angle θ
runs from +x towards +y.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .microscope import check_fc
from .zernike import DEFAULT_NOLL_INDICES, zernike_basis

#: Pupil radius in grid samples. The sampled pupil periodises the amplitude PSF, whose tails
#: fall only as r^-1.5; at 51 samples the ghosts change the PSF by < 1e-3 (`deepblur bench psf`).
PUPIL_RADIUS_SAMPLES = 51.2


def default_pupil_samples(size: int, fc: float) -> int:
    """Pupil grid period in pixels: the pupil radius spans ``PUPIL_RADIUS_SAMPLES`` samples
    and the period is at least 4× the kernel."""
    return max(4 * int(size), math.ceil(PUPIL_RADIUS_SAMPLES / fc))


def _disk_coverage(ax: np.ndarray, ay: np.ndarray, radius: float, oversample: int = 16):
    """Fraction of each unit grid cell (centred on ``ax, ay``) inside the disk ``radius``."""
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    sx = ax[..., None, None] + sub[None, :]
    sy = ay[..., None, None] + sub[:, None]
    return (np.hypot(sx, sy) <= radius).mean(axis=(-2, -1))


@functools.lru_cache(maxsize=64)
def _pupil_tables(
    fc: float,
    size: int,
    noll: tuple[int, ...],
    pupil_samples: int,
    defocus_key: tuple | None,
    device: str,
    dtype: torch.dtype,
):
    """Cached pupil amplitude, Zernike maps, defocus phase and DFT matrices."""
    radius = fc * pupil_samples  # pupil radius in grid samples
    half = math.ceil(radius + 1)
    a = np.arange(-half, half + 1, dtype=np.float64)  # symmetric grid: exact symmetries
    ax, ay = np.meshgrid(a, a, indexing="xy")
    r_samples = np.hypot(ax, ay)
    amplitude = _disk_coverage(ax, ay, radius)  # anti-aliased edge
    rho = np.minimum(r_samples / radius, 1.0)
    theta = np.arctan2(ay, ax)
    basis = zernike_basis(noll, rho, theta) * (amplitude > 0)  # (K, M, M)

    freq = a / pupil_samples  # cycles/pixel
    x = np.arange(size, dtype=np.float64) - size // 2
    dft = np.exp(2j * np.pi * np.outer(freq, x))  # (M, size): u = dftᵀ · P · dft

    defocus_phase = None
    if defocus_key is not None:
        defocus_um, wavelength_nm, pixel_size_nm, n_medium = defocus_key
        w2 = (ax**2 + ay**2) * (1.0 / (pupil_samples * pixel_size_nm)) ** 2  # (cycles/nm)²
        d = np.sqrt(np.maximum((n_medium / wavelength_nm) ** 2 - w2, 0.0))  # cycles/nm
        z_nm = np.asarray(defocus_um, dtype=np.float64) * 1e3
        defocus_phase = 2 * np.pi * z_nm[:, None, None] * d  # (Z, M, M) radians

    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    as_real = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    return (
        as_real(amplitude),
        as_real(basis),
        None if defocus_phase is None else as_real(defocus_phase),
        torch.as_tensor(dft, dtype=complex_dtype, device=device),
    )


#: Largest kernel :func:`zernike_psf` computes: 1023 px takes ~20 s and ~2 GB on a CPU.
MAX_PSF_SIZE_PX = 1023


def zernike_psf(
    coefficients,
    fc: float,
    size: int = 31,
    noll_indices: Iterable[int] = DEFAULT_NOLL_INDICES,
    defocus_um: float | Sequence[float] | None = None,
    *,
    wavelength_nm: float | None = None,
    pixel_size_nm: float | None = None,
    refractive_index: float = 1.0,
    pupil_samples: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Intensity PSF of an aberrated pupil.

    Parameters
    ----------
    coefficients : array-like or tensor ``(…, K)``, Zernike coefficients in waves RMS
        (Noll-normalised), one per entry of ``noll_indices``.
    fc : pupil cutoff in cycles/pixel (``NA · pixel_size / λ``), at most 0.25.
    size : odd kernel size in pixels.
    noll_indices : the K Noll indices (default 4–10).
    defocus_um : optional distance(s) from focus in µm (Model 2.3's ``exp(2iπ z d(w))``,
        ``d = sqrt((n/λ)² − |w|²)``); a sequence of Z distances adds an axis:
        output ``(…, Z, size, size)``. Needs ``wavelength_nm`` and ``pixel_size_nm``.
    refractive_index : of the immersion medium, for defocus.
    pupil_samples : period of the PSF in pixels set by the pupil grid step (default
        :func:`default_pupil_samples`).

    Returns
    -------
    Tensor ``(…, size, size)`` (or ``(…, Z, size, size)``), centred on ``size // 2``, each
    kernel summing to 1; float32 unless the coefficients are float64 or ``dtype`` says.
    Differentiable with respect to ``coefficients``.
    """
    check_fc(fc)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the kernel size must be odd and positive, got {size}")
    if size > MAX_PSF_SIZE_PX:
        raise ValueError(
            f"the kernel size {size} px is above the {MAX_PSF_SIZE_PX} px this computes "
            "(a PSF's energy lies within a few dozen pixels; 31 is the default)"
        )
    noll = tuple(int(j) for j in noll_indices)
    coeffs = torch.as_tensor(coefficients, device=device)
    if dtype is None:
        dtype = torch.float64 if coeffs.dtype == torch.float64 else torch.float32
    coeffs = coeffs.to(dtype)
    if coeffs.shape[-1:] != (len(noll),):
        raise ValueError(
            f"expected {len(noll)} coefficients (Noll {list(noll)}) on the last axis, "
            f"got shape {tuple(coeffs.shape)}"
        )
    defocus_key = None
    scalar_defocus = defocus_um is not None and np.ndim(defocus_um) == 0
    if defocus_um is not None:
        if wavelength_nm is None or pixel_size_nm is None:
            raise ValueError("defocus_um needs wavelength_nm and pixel_size_nm")
        defocus_key = (
            tuple(np.atleast_1d(defocus_um).astype(float)),
            float(wavelength_nm),
            float(pixel_size_nm),
            float(refractive_index),
        )
    amplitude, basis, defocus_phase, dft = _pupil_tables(
        float(fc),
        int(size),
        noll,
        int(pupil_samples or default_pupil_samples(size, fc)),
        defocus_key,
        str(coeffs.device),
        dtype,
    )
    phase = 2 * torch.pi * torch.tensordot(coeffs, basis, dims=([-1], [0]))  # (…, M, M)
    if defocus_phase is not None:
        phase = phase.unsqueeze(-3) + defocus_phase  # (…, Z, M, M)
    pupil = torch.polar(amplitude.expand_as(phase), phase)
    field = dft.transpose(0, 1) @ pupil @ dft  # (…, size, size)
    psf = field.real**2 + field.imag**2
    if scalar_defocus:
        psf = psf.squeeze(-3)
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


def airy_psf(fc: float, size: int = 31, **kwargs) -> torch.Tensor:
    """The aberration-free PSF (Airy pattern) at cutoff ``fc``: ``zernike_psf(0, …)``."""
    return zernike_psf(torch.zeros(1), fc, size, noll_indices=(4,), **kwargs)


def airy_pattern(fc: float, size: int = 31) -> np.ndarray:
    """Closed form ``(2 J1(v)/v)²``, ``v = 2π fc r`` (r in pixels), normalised to sum 1."""
    from scipy.special import j1

    x = np.arange(size) - size // 2
    v = 2 * np.pi * fc * np.hypot(*np.meshgrid(x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(v == 0, 1.0, (2 * j1(v) / v) ** 2)
    return h / h.sum()


#: Error floor of :func:`psf_snr_db`: identical kernels give 300 dB, not +inf.
_MIN_RELATIVE_ERROR = 1e-30


def psf_snr_db(estimated, true):
    """PSF signal-to-noise ratio in dB (Deep-Blur paper, eq. 6).

    ``−10 log10(‖ĥ − h‖² / ‖h‖²)`` per kernel over the last two axes ``(…, k, k)`` (the
    benchmark uses 31 × 31 kernels, centred, each normalised to sum 1). Identical kernels give
    300 dB (the relative error is floored at 1e-30). Torch tensors in → tensor out (``(…)``,
    differentiable); anything else → a NumPy float64 array (a float for one kernel).
    """
    if isinstance(estimated, torch.Tensor) or isinstance(true, torch.Tensor):
        estimated, true = torch.as_tensor(estimated), torch.as_tensor(true)
        error = ((estimated - true) ** 2).sum((-2, -1)) / (true**2).sum((-2, -1))
        return -10 * torch.log10(error.clamp_min(_MIN_RELATIVE_ERROR))
    estimated, true = np.asarray(estimated, np.float64), np.asarray(true, np.float64)
    error = ((estimated - true) ** 2).sum((-2, -1)) / (true**2).sum((-2, -1))
    snr = -10 * np.log10(np.maximum(error, _MIN_RELATIVE_ERROR))
    return float(snr) if np.ndim(snr) == 0 else snr
