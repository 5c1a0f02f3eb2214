"""Physics of microscope blur: Zernike pupils, PSFs, operator families and noise (no Qt)."""

from .convolution import Convolution
from .families import (
    EigenPSFConvolution,
    OperatorFamily,
    ProductConvolution,
    ZernikeConvolution,
    family_from_state,
    pca_basis,
)
from .microscope import NYQUIST_FC, Microscope, UndersampledError, check_fc
from .noise import add_poisson_gaussian, noise_std
from .psf import airy_pattern, airy_psf, zernike_psf
from .zernike import DEFAULT_NOLL_INDICES, noll_to_nm, zernike, zernike_basis, zernike_name

__all__ = [
    "Convolution",
    "EigenPSFConvolution",
    "OperatorFamily",
    "ProductConvolution",
    "ZernikeConvolution",
    "family_from_state",
    "pca_basis",
    "NYQUIST_FC",
    "Microscope",
    "UndersampledError",
    "check_fc",
    "add_poisson_gaussian",
    "noise_std",
    "airy_pattern",
    "airy_psf",
    "zernike_psf",
    "DEFAULT_NOLL_INDICES",
    "noll_to_nm",
    "zernike",
    "zernike_basis",
    "zernike_name",
]
