"""Beads in a 2D image: detection, rejection with a reason, and the local PSF of each.

:func:`find_beads` detects beads (Gaussian-smoothed local maxima above a robust noise
threshold), rejects the ones that would give a wrong PSF, each with a reason
(:data:`REASONS`), and extracts the local PSF of every accepted bead: ``kernel_size`` px
(odd), background subtracted, centred with sub-pixel accuracy (centroid, then a Fourier
shift), normalised to sum 1. :mod:`napari_deepblur.field.calibration` builds a space-varying family
from them.

Positions are in pixels ``(y, x)`` of the image (row, column, 0 = top/left pixel centre);
``fc`` is ``NA · pixel_size / λ`` in cycles/pixel. No Qt here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

#: Rejection reasons (the ``reason`` of a rejected :class:`Bead`).
BORDER = "too close to the border"
SATURATED = "saturated"
OVERLAP = "overlaps another bead"
LOBE = "ring or side lobe of a brighter bead"
WEAK = "too weak"
NOT_POINT_LIKE = "not point-like"
REASONS = (BORDER, SATURATED, OVERLAP, LOBE, WEAK, NOT_POINT_LIKE)

#: Gaussian approximation of the Airy core: σ ≈ 0.21 λ / NA, i.e. 0.21 / fc pixels.
AIRY_SIGMA_PER_FC = 0.21
#: Extra pixels around a bead's window, so that the sub-pixel shift does not wrap.
_MARGIN_PX = 4
#: Radius of the core whose centroid centres a bead, in units of the Airy σ (≥ 2 px).
CENTROID_RADIUS_SIGMAS = 3.0


@dataclass
class Bead:
    """One detected bead.

    ``y_px``, ``x_px``: sub-pixel centre in pixels of its image (centroid of the core);
    ``peak``: background-subtracted peak value, in the image's intensity units;
    ``background``: local background (image units); ``snr``: peak / noise std of the image;
    ``width_px``: RMS radius of the bead's core in pixels; ``reason``: empty when accepted,
    else one of :data:`REASONS`; ``image``: index of its calibration image; ``held_out``:
    kept out of the fit to test the model's predictions.
    """

    y_px: float
    x_px: float
    peak: float
    background: float = 0.0
    snr: float = 0.0
    width_px: float = 0.0
    reason: str = ""
    image: int = 0
    held_out: bool = False

    @property
    def accepted(self) -> bool:
        return not self.reason

    def to_dict(self) -> dict:
        return {**asdict(self), "accepted": self.accepted}


def default_saturation(dtype) -> float | None:
    """The saturation level of a dtype: its maximum for integers, None for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None


def _robust_std(values: np.ndarray) -> float:
    values = values.ravel()
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def check_bead_image(image, index: int = 0) -> np.ndarray:
    """``image`` as a 2D array of finite real numbers, or a ValueError naming image
    ``index`` (0-based; messages count from 1)."""
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(
            f"bead image {index + 1} must be 2D (Y, X), got shape {tuple(array.shape)}; "
            "give a stack as separate planes"
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"bead image {index + 1} must hold real numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"bead image {index + 1} contains NaN or infinite values")
    return array


def find_beads(
    image,
    fc: float,
    kernel_size: int = 31,
    *,
    threshold_sigmas: float = 5.0,
    min_peak_snr: float = 10.0,
    saturation: float | None = None,
    overlap_distance_px: float | None = None,
    max_width_ratio: float = 1.6,
    min_overlap_ratio: float = 0.1,
    image_index: int = 0,
) -> tuple[list[Bead], np.ndarray]:
    """Detect the beads of a 2D image and extract the PSFs of the usable ones.

    Parameters
    ----------
    image : ``(Y, X)`` array (any real dtype; not modified).
    fc : cutoff in cycles/pixel; sets the detection filter (Gaussian of σ = 0.21/fc px).
    kernel_size : odd size of the extracted PSFs, px.
    threshold_sigmas : detection threshold on the smoothed image, in noise std.
    min_peak_snr : beads whose peak is below this many noise std (raw image) are too weak.
    saturation : pixel value at or above which a bead is saturated (default: the dtype's
        maximum for integer images, none for floats).
    overlap_distance_px : a bead with another detection closer than this is rejected
        (default: ``kernel_size``, another bead in or next to its window); neighbours
        fainter than ``min_overlap_ratio`` × the bead's peak (noise, the bead's own rings)
        do not count; a detection next to one that many times brighter is that bead's ring
        or side lobe (reason :data:`LOBE`).
    max_width_ratio : beads wider than this × the median width are not point-like.

    Returns ``(beads, psfs)``: every detection (rejected ones with a reason) in order of
    decreasing peak, and the accepted beads' PSFs ``(N, k, k)`` float32, sum 1.
    """
    from ..optics import check_fc

    fc = check_fc(fc)
    array = check_bead_image(image, image_index)
    k = int(kernel_size)
    if k < 5 or k % 2 == 0:
        raise ValueError(f"kernel_size must be odd and at least 5 px, got {kernel_size}")
    if saturation is None:
        saturation = default_saturation(array.dtype)
    img = array.astype(np.float64)
    height, width = img.shape
    sigma = max(AIRY_SIGMA_PER_FC / fc, 0.7)
    noise = _robust_std(img)
    if np.issubdtype(array.dtype, np.integer):
        noise = max(noise, 1 / math.sqrt(12))  # quantisation
    noise = max(noise, 1e-9 * float(np.ptp(img)), np.finfo(np.float64).tiny)

    smooth = ndi.gaussian_filter(img, sigma)
    smooth_noise = max(_robust_std(smooth), noise / (2 * math.sqrt(math.pi) * sigma))
    spread = float(smooth.max() - np.median(smooth))
    threshold = np.median(smooth) + max(threshold_sigmas * smooth_noise, 1e-4 * spread)
    footprint = 2 * max(2, int(round(1.5 * sigma))) + 1
    is_max = (smooth == ndi.maximum_filter(smooth, size=footprint)) & (smooth > threshold)
    peaks = np.argwhere(is_max)
    peaks = peaks[np.argsort(-smooth[tuple(peaks.T)], kind="stable")]
    peaks = _one_per_blob(peaks, smooth, threshold, min_overlap_ratio)

    half = k // 2
    pad = half + _MARGIN_PX + 3
    padded = np.pad(img, pad, mode="reflect")
    overlap = float(k if overlap_distance_px is None else overlap_distance_px)
    beads: list[Bead] = []
    windows: list[np.ndarray | None] = []
    for y0, x0 in peaks:
        bead, window = _measure(padded, pad, int(y0), int(x0), half, sigma)
        bead.snr = bead.peak / noise
        bead.image = image_index
        beads.append(bead)
        windows.append(window)

    centres = np.array([[b.y_px, b.x_px] for b in beads]).reshape(-1, 2)
    for n, bead in enumerate(beads):
        y, x = round(bead.y_px), round(bead.x_px)
        if min(y, x) < half or y > height - 1 - half or x > width - 1 - half:
            bead.reason = BORDER
        elif (
            saturation is not None
            and (array[y - half : y + half + 1, x - half : x + half + 1] >= saturation).any()
        ):
            bead.reason = SATURATED
        elif _has_neighbour(n, beads, centres, overlap, 1 / min_overlap_ratio):
            bead.reason = LOBE
        elif _has_neighbour(n, beads, centres, overlap, min_overlap_ratio):
            bead.reason = OVERLAP
        elif bead.snr < min_peak_snr:
            bead.reason = WEAK
        elif windows[n] is None:
            bead.reason = NOT_POINT_LIKE
    widths = [b.width_px for b in beads if b.accepted]
    if len(widths) >= 3:
        limit = max_width_ratio * float(np.median(widths))
        for bead in beads:
            if bead.accepted and bead.width_px > limit:
                bead.reason = NOT_POINT_LIKE
    psfs = [w for b, w in zip(beads, windows, strict=True) if b.accepted]
    stack = np.stack(psfs).astype(np.float32) if psfs else np.zeros((0, k, k), np.float32)
    return beads, stack


def _one_per_blob(
    peaks: np.ndarray, smooth: np.ndarray, threshold: float, ratio: float
) -> np.ndarray:
    """The maxima (``peaks``, brightest first) less those on the blob of a brighter one:
    connected to it where the smoothed image stays above ``ratio`` × its height (over the
    median) and the detection threshold. The rings and side lobes of a defocused or
    aberrated bead are maxima of that bead, not beads next to it (a z-stack's out-of-focus
    planes had hundreds of them, all rejected as overlapping)."""
    if len(peaks) < 2:
        return peaks
    base = float(np.median(smooth))
    dropped = np.zeros(len(peaks), bool)
    for n, (y, x) in enumerate(peaks):
        if dropped[n]:
            continue
        level = max(threshold, base + ratio * (smooth[y, x] - base))
        labels, _ = ndi.label(smooth > level)
        same = labels[tuple(peaks.T)] == labels[y, x]
        same[: n + 1] = False
        dropped |= same
    return peaks[~dropped]


def _has_neighbour(n: int, beads: list[Bead], centres: np.ndarray, distance: float, ratio: float):
    """Whether another detection at least ``ratio`` × as bright is closer than
    ``distance`` px to bead ``n``."""
    near = np.hypot(*(centres - centres[n]).T) < distance
    near[n] = False
    return any(beads[i].peak >= ratio * beads[n].peak for i in np.flatnonzero(near))


def _measure(
    padded: np.ndarray, pad: int, y0: int, x0: int, half: int, sigma: float
) -> tuple[Bead, np.ndarray | None]:
    """Centre, peak, width and PSF of the bead near pixel ``(y0, x0)`` (image coordinates).

    The window (kernel + margin) is background-subtracted (median of its outer frame), the
    centre refined by the centroid of the core (radius ≈ 2σ, up to 3 integer re-centrings),
    then the window is shifted by the sub-pixel offset in Fourier space and cropped.
    """
    m = _MARGIN_PX
    size = 2 * (half + m) + 1
    radius = max(2.0, CENTROID_RADIUS_SIGMAS * sigma)
    yy, xx = np.mgrid[-(half + m) : half + m + 1, -(half + m) : half + m + 1].astype(np.float64)
    cy, cx = float(y0), float(x0)
    window = background = None
    offset = np.zeros(2)
    for _ in range(4):
        iy, ix = int(round(cy)), int(round(cx))
        iy = min(max(iy, half + m - pad), padded.shape[0] - pad - half - m - 1)
        ix = min(max(ix, half + m - pad), padded.shape[1] - pad - half - m - 1)
        raw = padded[iy + pad - half - m : iy + pad + half + m + 1,
                     ix + pad - half - m : ix + pad + half + m + 1]  # fmt: skip
        frame = np.concatenate([raw[:2].ravel(), raw[-2:].ravel(), raw[2:-2, :2].ravel(),
                                raw[2:-2, -2:].ravel()])  # fmt: skip
        background = float(np.median(frame))
        window = raw - background
        core = np.hypot(yy - (cy - iy), xx - (cx - ix)) <= radius
        weights = np.clip(window, 0, None) * core
        total = weights.sum()
        if not total > 0:
            return Bead(cy, cx, float(window[half + m, half + m]), background), None
        offset = np.array([(weights * yy).sum(), (weights * xx).sum()]) / total
        cy, cx = iy + offset[0], ix + offset[1]
        if abs(offset[0]) <= 0.5 and abs(offset[1]) <= 0.5:
            break
    assert window is not None and background is not None and window.shape == (size, size)
    core = np.hypot(yy - offset[0], xx - offset[1]) <= 2 * radius
    positive = np.clip(window, 0, None) * core
    r2 = (yy - offset[0]) ** 2 + (xx - offset[1]) ** 2
    width = float(np.sqrt((positive * r2).sum() / max(positive.sum(), 1e-300)))
    peak = float(window[core].max())
    bead = Bead(float(cy), float(cx), peak, background, width_px=width)
    shifted = np.fft.ifftn(ndi.fourier_shift(np.fft.fftn(window), -offset)).real
    psf = shifted[m : m + 2 * half + 1, m : m + 2 * half + 1]
    total = psf.sum()
    if not total > 0 or peak <= 0:
        return bead, None
    return bead, psf / total
