"""Deblurring network DN: Douglas–Rachford unrolled for T iterations.

With ``R_t(v) = (AᵀA + λ_t I)⁻¹(Aᵀy + λ_t v)`` the proximal step of the data term
``½‖A x − y‖²`` (closed form in Fourier for convolutions, conjugate gradient for
product-convolution) and ``PN_t`` a small residual U-Net (the learned proximal step of the
prior, fed with a noise-level map)::

    z0 = R_0(0) = (AᵀA + λ_0 I)⁻¹ Aᵀ y
    for t < T:  x = PN_t(z);  z = z + R_t(2x − z) − x
    return x

The last ``z`` update is never read, so it is skipped: ``T`` data steps, not ``T + 1``
(the last ``λ`` pair is kept so the weight files keep their layout).

``λ_t`` is learned, positive, and scales with the image's noise variance
(``λ_t = a_t σ̄² + b_t``), so one network serves clean and noisy images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .blocks import ResidualUNet


@dataclass
class DeblurringConfig:
    iterations: int = 4
    widths: tuple[int, ...] = (32, 64)
    blocks: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DeblurringConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class DeblurringNetwork(nn.Module):
    """``DN(y, A, σ)``: ``y (B, 1, H, W)`` normalised, ``operator`` bound to γ̂ (acting on
    ``(B, 1, H, W)``), ``sigma (B, 1, H, W)`` noise std map → restored ``(B, 1, H, W)``."""

    def __init__(self, config: DeblurringConfig | None = None):
        super().__init__()
        self.config = config = config or DeblurringConfig()
        t = config.iterations
        self.prox = nn.ModuleList(ResidualUNet(config.widths, config.blocks) for _ in range(t))
        # λ_t = softplus(a_t)·σ̄² + softplus(b_t)·1e-3, one pair for z0 and one per iteration.
        self.noise_weight = nn.Parameter(torch.full((t + 1,), 1.0))
        self.floor_weight = nn.Parameter(torch.full((t + 1,), -2.0))

    def regularization(self, sigma: torch.Tensor) -> torch.Tensor:
        """``λ (T + 1, B)`` from the mean noise variance of each image."""
        variance = (sigma**2).mean(dim=(-3, -2, -1))  # (B,)
        a = nn.functional.softplus(self.noise_weight)[:, None]
        b = nn.functional.softplus(self.floor_weight)[:, None]
        return a * variance[None] + b * 1e-3

    def forward(self, y: torch.Tensor, operator, sigma: torch.Tensor) -> torch.Tensor:
        lam = self.regularization(sigma)
        lam = lam.reshape(lam.shape[0], lam.shape[1], *([1] * (y.ndim - 3)))  # (T+1, B, 1…)
        z = _data_step(operator, y, lam[0])
        x = z
        last = len(self.prox) - 1
        for t, prox in enumerate(self.prox):
            x = prox(z, sigma)
            if t < last:  # the last z update would never be read
                z = z + _data_step(operator, y, lam[t + 1], 2 * x - z) - x
        return x


def _data_step(operator, y, lam, v=None):
    """``R(v)`` of the module docstring, always in float32 (outside any autocast: the
    conjugate gradient of product-convolution families needs the precision)."""
    with torch.autocast(y.device.type, enabled=False):
        v = None if v is None else v.float()
        return operator.regularized_inverse(y.float(), lam, v)
