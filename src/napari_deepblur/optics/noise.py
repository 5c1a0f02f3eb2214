"""Poisson–Gaussian noise ``y = A x + b``, ``b ~ N(0, α·(A x) + β²)`` (β is a std)."""

from __future__ import annotations

import math

import torch


def noise_std(clean: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Per-pixel standard deviation ``sqrt(α·max(Ax, 0) + β²)``.

    ``alpha`` and ``beta`` are floats or tensors broadcastable against ``clean`` (e.g. shape
    ``(B, 1, 1)`` for one level per image).
    """
    alpha = torch.as_tensor(alpha, dtype=clean.dtype, device=clean.device)
    beta = torch.as_tensor(beta, dtype=clean.dtype, device=clean.device)
    return torch.sqrt(alpha * clean.clamp_min(0) + beta**2)


def noise_sigma_map(y_n: torch.Tensor, alpha, beta) -> torch.Tensor:
    """The per-pixel noise std ``σ = sqrt(α·ȳ + β²)`` the deblurring network takes as its
    extra input, for normalised images ``y_n (B, 1, H, W)``: ``ȳ`` is ``y_n`` averaged over
    3 × 3 pixels (clipped at 0), ``alpha``/``beta`` (floats, or tensors broadcastable to
    ``(B, 1, 1, 1)``) in the same normalised units. The one formula for training and the
    pipeline.

    >>> noise_sigma_map(torch.zeros(1, 1, 4, 4), 0.0, 0.5).unique()
    tensor([0.5000])
    """
    smooth = torch.nn.functional.avg_pool2d(y_n, 3, 1, 1, count_include_pad=False)
    return torch.sqrt(alpha * smooth.clamp_min(0) + beta**2)


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


#: The noise estimator's high-pass length (taps) and block side (px): it needs images of at
#: least ``NOISE_TAPS - 1 + NOISE_BLOCK_PX`` pixels a side.
NOISE_TAPS = 21
NOISE_BLOCK_PX = 8
NOISE_MIN_SIDE_PX = NOISE_TAPS - 1 + NOISE_BLOCK_PX
#: Images brighter than this are estimated scaled down (by a power of two): the fit
#: multiplies intensities to the third power, which overflows float32 from about 1e12.
NOISE_MAX_LEVEL = 1e6


def _highpass_taps(cutoff: float, taps: int = NOISE_TAPS) -> torch.Tensor:
    """A linear-phase FIR high-pass (cycles/pixel cutoff), Hamming-windowed sinc."""
    n = torch.arange(taps, dtype=torch.float64) - taps // 2
    lowpass = (
        2
        * cutoff
        * torch.sinc(2 * cutoff * n)
        * torch.hamming_window(taps, periodic=False, dtype=torch.float64)
    )
    lowpass = lowpass / lowpass.sum()
    delta = (n == 0).to(torch.float64)
    return delta - lowpass


def estimate_noise(
    images: torch.Tensor, fc: float, block: int = NOISE_BLOCK_PX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate ``(α, β)`` of ``var = α·x + β²`` from blurred images ``(B, H, W)``.

    The blurred signal has no energy beyond the OTF's support (radius ``2·fc``), so a
    separable high-pass whose pass band lies outside that disk (both ``|f_x|`` and ``|f_y|``
    above ``√2·fc``) sees noise only. The local variance of that band against the local
    mean, over ``block × block`` blocks, is fitted by least squares with α, β² ≥ 0.
    Returns two tensors ``(B,)`` in the images' units.
    """
    peak = float(images.abs().amax()) if images.numel() else 0.0
    if peak > NOISE_MAX_LEVEL:  # the fit's cubic terms would overflow float32: rescale
        scale = 2.0 ** math.floor(math.log2(peak))  # a power of two: exact
        alpha, beta = estimate_noise(images / scale, fc, block)
        return alpha * scale, beta * scale  # var = α·x + β² scales as x², α as x
    cutoff = min(2**0.5 * fc + 0.03, 0.45)
    taps = _highpass_taps(cutoff).to(images)
    x = images.reshape(-1, 1, *images.shape[-2:])
    detail = torch.nn.functional.conv2d(x, taps.reshape(1, 1, -1, 1))
    detail = torch.nn.functional.conv2d(detail, taps.reshape(1, 1, 1, -1))
    gain = (taps**2).sum() ** 2  # white-noise power gain of the separable filter
    half = taps.numel() // 2
    local_mean = x[..., half : x.shape[-2] - half, half : x.shape[-1] - half]
    power = torch.nn.functional.avg_pool2d(detail**2, block).flatten(1) / gain
    mean = torch.nn.functional.avg_pool2d(local_mean, block).flatten(1)
    m_centered = mean - mean.mean(1, keepdim=True)
    alpha = (m_centered * (power - power.mean(1, keepdim=True))).mean(1) / (
        (m_centered**2).mean(1) + 1e-12
    )
    alpha = alpha.clamp_min(0)
    beta2 = (power.mean(1) - alpha * mean.mean(1)).clamp_min(0)
    no_slope = beta2 == 0  # negative intercept: refit β² alone with α from the means
    alpha = torch.where(no_slope, power.mean(1) / mean.mean(1).clamp_min(1e-12), alpha)
    return alpha.reshape(images.shape[:-2]), beta2.sqrt().reshape(images.shape[:-2])
