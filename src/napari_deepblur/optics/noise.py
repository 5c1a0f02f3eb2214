"""Poisson–Gaussian noise ``y = A x + b``, ``b ~ N(0, α·(A x) + β²)`` (β is a std)."""

from __future__ import annotations

import torch


def noise_std(clean: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Per-pixel standard deviation ``sqrt(α·max(Ax, 0) + β²)``.

    ``alpha`` and ``beta`` are floats or tensors broadcastable against ``clean`` (e.g. shape
    ``(B, 1, 1)`` for one level per image).
    """
    alpha = torch.as_tensor(alpha, dtype=clean.dtype, device=clean.device)
    beta = torch.as_tensor(beta, dtype=clean.dtype, device=clean.device)
    return torch.sqrt(alpha * clean.clamp_min(0) + beta**2)


def add_poisson_gaussian(
    clean: torch.Tensor, alpha, beta, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return ``clean + b`` with ``b ~ N(0, α·clean + β²)``, drawn from ``generator``.

    The same generator state gives the same noise, so every method of a benchmark sees the
    same ``y``.
    """
    std = noise_std(clean, alpha, beta)
    gauss = torch.randn(
        clean.shape,
        generator=generator,
        dtype=clean.dtype,
        device=clean.device if generator is None else generator.device,
    )
    return clean + std * gauss.to(clean.device)
