"""Classical baselines of the benchmark: Richardson–Lucy with a given PSF, and the
"no identification" PSF (the aberration-free Airy pattern)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..optics import airy_psf
from .metrics import ssim

#: Candidate Richardson–Lucy iteration counts, tuned per noise level on a validation draw
#: (1–3 included: at high noise a few iterations are RL's best).
RL_ITERATIONS = (1, 2, 3, 5, 10, 20, 30, 50, 100)


def no_identification_psf(fc: float, size: int = 31) -> np.ndarray:
    """The PSF assumed without identification: the Airy pattern at cutoff ``fc``
    (cycles/pixel), ``size × size`` px, centred, sum 1 (float64)."""
    return airy_psf(fc, size).double().numpy()


def richardson_lucy_iterates(
    image, psf, checkpoints: Iterable[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Richardson–Lucy iterates of ``image`` deconvolved by ``psf``, yielded as
    ``(iterations, estimate)`` at each count in ``checkpoints`` (one run to the largest).

    The same algorithm as :func:`skimage.restoration.richardson_lucy` with ``clip=False``
    (start at 0.5, ``x ← x · (h̃ ⋆ (y / (h ⋆ x + 1e-12)))``, "same"-size FFT convolutions with
    zero boundary) in the same precision (float32 for float16/float32 images, float64
    otherwise; float64 takes twice as long), so the iterate after ``n`` steps equals skimage's
    with ``num_iter=n`` up to rounding. ``image`` is clipped to ≥ 0 (RL needs a nonnegative
    input); the yielded arrays are copies.
    """
    from scipy.signal import fftconvolve

    image = np.asarray(image)
    dtype = np.float32 if image.dtype in (np.float16, np.float32) else np.float64
    y = np.clip(image.astype(dtype, copy=False), 0, None)
    h = np.asarray(psf, dtype)
    h_mirror = h[::-1, ::-1]
    wanted = sorted({int(n) for n in checkpoints})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"checkpoints must be nonnegative iteration counts, got {wanted}")
    x = np.full(y.shape, 0.5, dtype)
    for n in range(wanted[-1] + 1):
        if n in wanted:
            yield n, x.copy()
        if n < wanted[-1]:
            x *= fftconvolve(y / (fftconvolve(x, h, mode="same") + 1e-12), h_mirror, mode="same")


def richardson_lucy(image, psf, num_iter: int) -> np.ndarray:
    """``num_iter`` Richardson–Lucy iterations (see :func:`richardson_lucy_iterates`)."""
    return next(richardson_lucy_iterates(image, psf, [num_iter]))[1]


def tune_rl_iterations(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    candidates: Sequence[int] = RL_ITERATIONS,
) -> tuple[int, dict[int, float]]:
    """The iteration count with the best mean SSIM over validation ``pairs``
    ``[(blurred y, psf, sharp x)]``; returns it and ``{count: mean SSIM}``. Each pair is
    deconvolved once, up to the largest candidate, scoring every candidate on the way."""
    if not pairs:
        raise ValueError("tuning needs at least one validation pair")
    scores = {int(n): [] for n in candidates}
    for y, psf, sharp in pairs:
        for n, x in richardson_lucy_iterates(y, psf, candidates):
            scores[n].append(ssim(x, sharp))
    means = {n: float(np.mean(v)) for n, v in scores.items()}
    return max(means, key=means.get), means
