"""Training losses."""

from __future__ import annotations

import torch

from ..optics import OperatorFamily
from ..optics.psf import psf_snr_db  # noqa: F401  (one implementation, re-exported)


def identification_loss(
    predicted_scaled: torch.Tensor,
    gamma: torch.Tensor,
    family: OperatorFamily,
    psf_weight: float = 1.0,
) -> torch.Tensor:
    """Sign-invariant parameter loss plus a PSF-space loss.

    The parameter term is the minimum of the squared error over all parameter vectors that
    give the same operator (for Zernike: γ and γ with its even-order terms negated, which an
    in-focus image cannot tell apart), in units of ``parameter_scale``. The PSF term
    ``‖h(γ̂) − h(γ)‖² / ‖h(γ)‖²`` is what the benchmark's PSF SNR measures.
    """
    scale = family.parameter_scale
    errors = torch.stack(
        [
            ((predicted_scaled - g / scale) ** 2).mean(-1)
            for g in family.equivalent_parameters(gamma)
        ]
    )
    loss = errors.min(0).values
    if psf_weight and hasattr(family, "psf"):
        with torch.autocast(device_type=gamma.device.type, enabled=False):
            h_hat = family.psf(predicted_scaled.float() * scale)
            h = family.psf(gamma.float())
            psf_error = ((h_hat - h) ** 2).sum((-2, -1)) / (h**2).sum((-2, -1))
        loss = loss + psf_weight * psf_error
    return loss.mean()
