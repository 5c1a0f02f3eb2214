"""Image and PSF quality metrics of the standard benchmark (``shared/PROTOCOL.md``)."""

from __future__ import annotations

import numpy as np

from ..optics.psf import psf_snr_db  # noqa: F401  (one implementation, re-exported)


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
