"""Image and PSF quality metrics of the standard benchmark (``shared/PROTOCOL.md``)."""

from __future__ import annotations

import numpy as np
import torch

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


def _pair(restored, sharp) -> tuple[np.ndarray, np.ndarray]:
    restored, sharp = (np.clip(np.asarray(a, np.float64), 0, 1) for a in (restored, sharp))
    if restored.shape != sharp.shape or restored.ndim != 2:
        raise ValueError(
            f"expected two 2D images of one shape, got {restored.shape}, {sharp.shape}"
        )
    return restored, sharp


def ssim(restored, sharp) -> float:
    """SSIM of ``restored`` against ``sharp`` (2D, intensities in [0, 1]).

    :func:`skimage.metrics.structural_similarity` with ``data_range=1`` (default 7 × 7
    window) after clipping both images to [0, 1].
    """
    from skimage.metrics import structural_similarity

    return float(structural_similarity(*_pair(restored, sharp), data_range=1.0))


def psnr(restored, sharp) -> float:
    """PSNR in dB of ``restored`` against ``sharp`` (peak 1, both clipped to [0, 1]);
    identical images give +inf."""
    from skimage.metrics import peak_signal_noise_ratio

    restored, sharp = _pair(restored, sharp)
    if np.array_equal(restored, sharp):
        return float("inf")
    return float(peak_signal_noise_ratio(sharp, restored, data_range=1.0))
