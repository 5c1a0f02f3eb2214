"""Calibration of a space-varying blur (product-convolution family, Model 2.2) from images of
sub-resolution beads.

1. :func:`~napari_deepblur.field.beads.find_beads` detects the beads of each image, rejects the
   ones that would give a wrong PSF (with a reason) and extracts the local PSF of every
   accepted bead (:mod:`napari_deepblur.field.beads`).
2. :func:`calibrate_from_beads` (and its progress generator
   :func:`iter_calibrate_from_beads`) builds the family from the beads of one image or of
   several images (each a state of the microscope): eigen-PSFs by PCA of all bead PSFs,
   spatial maps = 2D Legendre polynomials over the field (interpolating the eigen-PSF weights
   between beads), one γ per image (the family's parameter bank). It reports the variance
   the eigen-PSFs capture, the complete model's errors at the beads and, on held-out beads,
   how well the model predicts a PSF it has not seen, against the convolution-only baseline
   (one mean PSF for the whole field).

Positions are in pixels ``(y, x)`` of the image (row, column, 0 = top/left pixel centre);
the family uses them as fractions of the field ``y / (H − 1)``, ``x / (W − 1)``. The
cutoff ``fc`` is ``NA · pixel_size / λ`` in cycles/pixel. No Qt here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import notices
from .beads import REASONS, Bead, check_bead_image, find_beads


@dataclass
class HoldoutReport:
    """Prediction of held-out beads' PSFs by a model fitted on the other beads.

    PSF SNR in dB (``−10 log10 ‖ĥ − h‖² / ‖h‖²``, kernels normalised to sum 1) of the
    product-convolution model at each held-out bead's position, and of the convolution-only
    baseline (the mean PSF of the fitted beads) on the same beads.
    """

    num_fit: int
    num_held_out: int
    model_snr_db: list[float]
    baseline_snr_db: list[float]

    @property
    def model_mean_snr_db(self) -> float:
        return float(np.mean(self.model_snr_db))

    @property
    def baseline_mean_snr_db(self) -> float:
        return float(np.mean(self.baseline_snr_db))

    @property
    def gain_db(self) -> float:
        """Mean improvement of the model over the single-PSF baseline, dB."""
        return self.model_mean_snr_db - self.baseline_mean_snr_db

    def to_dict(self) -> dict:
        return {
            "num_fit": self.num_fit,
            "num_held_out": self.num_held_out,
            "model_mean_snr_db": self.model_mean_snr_db,
            "baseline_mean_snr_db": self.baseline_mean_snr_db,
            "gain_db": self.gain_db,
            "model_snr_db": [float(v) for v in self.model_snr_db],
            "baseline_snr_db": [float(v) for v in self.baseline_snr_db],
        }


@dataclass
class CalibrationResult:
    """A product-convolution family calibrated from beads, and how good it is.

    ``family``: :class:`~napari_deepblur.optics.families.ProductConvolution` whose parameter
    bank is ``gamma`` (one row of ``K = I·J`` parameters per calibration image) with
    ``parameter_jitter`` for training; ``fc`` (cycles/pixel) the sampling of its kernels.
    ``beads``: every detection (accepted and rejected); ``psfs``: the accepted beads'
    PSFs ``(N, k, k)`` (sum 1) in the order of :attr:`accepted`. ``variance_per_component``:
    fraction of the bead PSFs' energy along each PCA component (first ten);
    ``variance_captured``: by the ``I`` eigen-PSFs kept; ``mean/max_relative_error``:
    ``‖h − ĥ‖ / ‖h‖`` of the complete model (eigen-PSFs and smooth maps) at the accepted
    beads. ``holdout``: None when no bead could be held out (``holdout_note`` says why).
    ``cautions``: sentences on what the beads could not determine (too few beads for the
    maps or eigen-PSFs, nothing held out); each was also given as a warning.
    """

    family: object
    gamma: torch.Tensor
    fc: float
    kernel_size: int
    image_shape: tuple[int, int]
    num_images: int
    beads: list[Bead]
    psfs: np.ndarray
    variance_per_component: list[float]
    variance_captured: float
    mean_relative_error: float
    max_relative_error: float
    holdout: HoldoutReport | None = None
    holdout_note: str = ""
    settings: dict = field(default_factory=dict)
    cautions: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[Bead]:
        return [b for b in self.beads if b.accepted]

    @property
    def rejected(self) -> list[Bead]:
        return [b for b in self.beads if not b.accepted]

    def rejection_counts(self) -> dict[str, int]:
        """Number of rejected beads per reason (reasons with none left out)."""
        counts = Counter(b.reason for b in self.rejected)
        return {r: counts[r] for r in REASONS if counts[r]}

    def summary(self) -> dict:
        """The numbers of the report, JSON-ready (for the family's card)."""
        return {
            "fc": self.fc,
            "kernel_size": self.kernel_size,
            "image_shape": list(self.image_shape),
            "num_images": self.num_images,
            "num_psfs": self.family.num_psfs,
            "num_maps": self.family.num_maps,
            "num_parameters": self.family.num_parameters,
            "parameter_jitter": self.family.parameter_jitter,
            "beads_detected": len(self.beads),
            "beads_accepted": len(self.accepted),
            "beads_rejected": self.rejection_counts(),
            "variance_per_component": self.variance_per_component,
            "variance_captured": self.variance_captured,
            "mean_relative_error": self.mean_relative_error,
            "max_relative_error": self.max_relative_error,
            "holdout": None if self.holdout is None else self.holdout.to_dict(),
            "holdout_note": self.holdout_note,
            "settings": self.settings,
            "cautions": self.cautions,
        }

    def report_text(self) -> str:
        """A short human-readable report (what the CLI prints)."""
        rejected = ", ".join(f"{n} {r}" for r, n in self.rejection_counts().items()) or "none"
        lines = [
            f"beads: {len(self.beads)} detected in {self.num_images} image(s), "
            f"{len(self.accepted)} accepted; rejected: {rejected}",
            f"family: {self.family.num_psfs} eigen-PSFs × {self.family.num_maps} maps = "
            f"{self.family.num_parameters} parameters, {self.kernel_size}×{self.kernel_size} px "
            f"kernels at fc {self.fc:.4f} cycles/pixel",
            f"variance captured by {self.family.num_psfs} eigen-PSFs: "
            f"{100 * self.variance_captured:.2f}% (per component: "
            + ", ".join(f"{100 * v:.2f}%" for v in self.variance_per_component[:6])
            + ")",
            f"model error at the beads: mean {100 * self.mean_relative_error:.1f}%, "
            f"max {100 * self.max_relative_error:.1f}% (‖h − ĥ‖/‖h‖)",
        ]
        h = self.holdout
        if h is None:
            lines.append(f"held-out beads: none ({self.holdout_note})")
        else:
            lines.append(
                f"held-out PSF SNR ({h.num_held_out} beads, fit on {h.num_fit}): model "
                f"{h.model_mean_snr_db:.2f} dB vs single-PSF baseline "
                f"{h.baseline_mean_snr_db:.2f} dB ({h.gain_db:+.2f} dB)"
            )
        lines += [f"caution: {c}" for c in self.cautions]
        return "\n".join(lines)


# -- calibration ----------------------------------------------------------------------------


def _as_images(images) -> list[np.ndarray]:
    """One 2D image, a stack ``(P, Y, X)`` (planes = states) or a sequence of 2D images."""
    if isinstance(images, np.ndarray | torch.Tensor):
        array = np.asarray(images)
        if array.ndim == 2:
            planes = [array]
        elif array.ndim == 3:
            planes = list(array)
        else:
            raise ValueError(
                f"expected a 2D bead image, a (planes, Y, X) stack or a list of 2D images, "
                f"got an array of shape {tuple(array.shape)}"
            )
    elif isinstance(images, Sequence) and not isinstance(images, str | bytes):
        planes = list(images)
    else:
        raise ValueError(f"expected bead images as arrays, got {type(images).__name__}")
    if not planes:
        raise ValueError("no bead image given")
    planes = [check_bead_image(p, i) for i, p in enumerate(planes)]
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise ValueError(
            f"all bead images must have one size (the family's maps span one field of view), "
            f"got {sorted(shapes)}"
        )
    return planes


def _num_maps(map_degree: int) -> int:
    return (map_degree + 1) * (map_degree + 2) // 2


def _fit(
    psfs: np.ndarray,
    fractions: np.ndarray,
    image_ids: np.ndarray,
    num_images: int,
    num_psfs: int,
    map_degree: int,
    map_shape: tuple[int, int],
):
    """Eigen-PSFs (PCA of all beads), Legendre maps, one γ per image (least squares).

    Returns ``(family, gamma (num_images, K) float64, report, singular values²)``.
    """
    from ..optics.families import ProductConvolution, legendre_maps

    t_psfs = torch.as_tensor(psfs, dtype=torch.float64)
    t_pos = torch.as_tensor(fractions, dtype=torch.float64)
    family, pooled, report = ProductConvolution.from_psf_field(
        t_psfs, t_pos, num_psfs, map_degree, map_shape
    )
    flat = t_psfs.reshape(len(t_psfs), -1)
    eigen = family.eigen_psfs.reshape(num_psfs, -1).double()
    weights = flat @ eigen.T  # (S, I)
    design = legendre_maps(t_pos, map_degree)  # (S, J)
    gammas = []
    for image in range(num_images):
        rows = torch.as_tensor(image_ids == image)
        if num_images == 1:
            gammas.append(pooled.double())
            continue
        g, *_ = torch.linalg.lstsq(design[rows], weights[rows])  # (J, I)
        gammas.append(g.T.reshape(-1))
    gamma = torch.stack(gammas)
    singular2 = torch.linalg.svdvals(flat) ** 2
    return family, gamma, report, singular2


def _predict(family, gamma: torch.Tensor, fractions: np.ndarray, image_ids: np.ndarray):
    """Model PSFs ``(S, k, k)`` float64 at positions, each with its image's γ."""
    from ..optics.families import legendre_maps

    design = legendre_maps(torch.as_tensor(fractions, dtype=torch.float64), _degree(family))
    g = gamma.double().reshape(len(gamma), family.num_psfs, family.num_maps)
    per_bead = g[torch.as_tensor(image_ids)]  # (S, I, J)
    weights = torch.einsum("sij,sj->si", per_bead, design)
    eigen = family.eigen_psfs.double()
    return torch.einsum("si,ikl->skl", weights, eigen).numpy()


def _degree(family) -> int:
    j, d = family.num_maps, 0
    while _num_maps(d) < j:
        d += 1
    return d


def _normalised(psfs: np.ndarray) -> np.ndarray:
    sums = psfs.sum((-2, -1), keepdims=True)
    return psfs / np.where(np.abs(sums) > 1e-12, sums, 1.0)


class TooFewBeadsError(ValueError):
    """Too few usable beads for the fit asked for. ``beads`` holds every detection (the
    rejected ones with their reason) and ``kernel_size`` their PSF size, so that a viewer
    can still show what was found; the message says which setting would work."""

    def __init__(self, message: str, beads: list[Bead], kernel_size: int) -> None:
        super().__init__(message)
        self.beads = beads
        self.kernel_size = kernel_size


#: The highest map degree chosen automatically (6 maps), and the most eigen-PSFs.
AUTO_MAX_DEGREE = 2
AUTO_MAX_PSFS = 4


def auto_settings(
    counts: Sequence[int], num_psfs: int | None = None, map_degree: int | None = None
) -> tuple[int, int]:
    """``(num_psfs, map_degree)`` that the usable beads can determine, for the ones left
    None (automatic): the map degree (up to 2) whose maps number at most half the beads of
    the image with the fewest (two beads per map, so that the fit is over-determined and
    beads can be held out), and up to 4 eigen-PSFs but at most half of all beads (more
    would merely copy the beads: 100 % of the variance, by construction).

    >>> auto_settings([4]), auto_settings([12]), auto_settings([1] * 21)
    ((2, 0), (4, 2), (4, 0))
    """
    fewest, total = min(counts, default=0), sum(counts)
    if map_degree is None:
        map_degree = 0
        for degree in range(AUTO_MAX_DEGREE, 0, -1):
            if 2 * _num_maps(degree) <= fewest:
                map_degree = degree
                break
    if num_psfs is None:
        num_psfs = min(AUTO_MAX_PSFS, max(1, total // 2))
    return int(num_psfs), int(map_degree)


def _too_few_message(
    found: int,
    needed: int,
    why: str,
    beads: list[Bead],
    where: str,
    counts: Sequence[int],
    labels: Sequence[str],
) -> str:
    rejected = Counter(b.reason for b in beads if b.reason)
    others = ", ".join(f"{n} {r}" for r, n in rejected.items())
    text = (
        f"found {found} usable bead(s) {where} but {why} needs at least {needed}"
        if found
        else f"found no usable bead {where}"
    )
    if others:
        text += f"; {sum(rejected.values())} other detection(s) were rejected: {others}"
    return text + ". " + _suggestion(counts, labels, beads)


def _suggestion(counts: Sequence[int], labels: Sequence[str], beads: list[Bead]) -> str:
    """What would work with these beads, in words."""
    if min(counts, default=0) >= 1:
        psfs, degree = auto_settings(counts)
        return (
            f"These beads allow map degree {degree} and {psfs} eigen-PSF(s) (the automatic "
            "choice); or image more well separated, unsaturated beads"
        )
    best = int(np.argmax(counts)) if len(counts) else 0
    if len(counts) > 1 and counts[best] >= 1:
        return (
            f"{sum(c == 0 for c in counts)} of {len(counts)} images have no usable bead: "
            f"calibrate on one plane ({labels[best]} has {counts[best]}), or give only "
            "planes with beads"
        )
    tips = []
    reasons = Counter(b.reason for b in beads if b.reason)
    if reasons.get("overlaps another bead"):
        tips.append("use a smaller PSF size (beads closer than it overlap)")
    if reasons.get("too weak") or not beads:
        tips.append("check NA, wavelength and pixel size (they set the bead size looked for)")
    tips.append("image more well separated, unsaturated beads")
    text = "; or ".join(tips)
    return text[0].upper() + text[1:]


def _split(
    image_ids: np.ndarray, holdout_fraction: float, min_fit: int, seed: int
) -> tuple[np.ndarray, str]:
    """A boolean mask of held-out beads: per image, about ``holdout_fraction`` of its beads,
    keeping at least ``min_fit`` fitted beads in every image (seeded)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(image_ids), bool)
    if holdout_fraction <= 0:
        return mask, "holdout_fraction is 0"
    for image in np.unique(image_ids):
        rows = np.flatnonzero(image_ids == image)
        count = min(max(1, round(holdout_fraction * len(rows))), len(rows) - min_fit)
        if count > 0:
            mask[rng.choice(rows, count, replace=False)] = True
    note = "" if mask.any() else f"no image has more than the {min_fit} bead(s) the fit needs"
    return mask, note


def iter_calibrate_from_beads(
    images,
    fc: float,
    num_psfs: int | None = None,
    map_degree: int | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    *,
    kernel_size: int = 31,
    saturation: float | None = None,
    threshold_sigmas: float = 5.0,
    min_peak_snr: float = 10.0,
    overlap_distance_px: float | None = None,
    parameter_jitter: float | None = None,
    map_shape: tuple[int, int] = (64, 64),
    image_labels: Sequence[str] | None = None,
) -> Generator:
    """:func:`calibrate_from_beads` as a generator: yields
    :class:`~napari_deepblur.pipeline.Progress` (image i of n, then the fits) and returns
    the :class:`CalibrationResult`. ``image_labels`` name the images in messages (default
    "bead image 1", "bead image 2", …; a viewer gives "plane 21")."""
    from ..optics import check_fc
    from ..optics.families import ProductConvolution
    from ..pipeline import Progress

    fc = check_fc(fc, what="the bead images' optics")
    if num_psfs is not None and int(num_psfs) < 1:
        raise ValueError(f"num_psfs must be at least 1, got {num_psfs}")
    if map_degree is not None and int(map_degree) < 0:
        raise ValueError(f"map_degree must be 0 or more, got {map_degree}")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    auto = {"num_psfs": num_psfs is None, "map_degree": map_degree is None}
    planes = _as_images(images)
    labels = list(image_labels or [f"bead image {i + 1}" for i in range(len(planes))])
    if len(labels) != len(planes):
        raise ValueError(f"{len(labels)} image label(s) for {len(planes)} image(s)")
    shape = planes[0].shape
    steps = len(planes) + 2

    beads: list[Bead] = []
    psf_list: list[np.ndarray] = []
    for index, plane in enumerate(planes):
        where = f"{labels[index]} ({index + 1} of {len(planes)})"
        yield Progress(index, steps, f"finding beads in {where}")
        found, psfs = find_beads(
            plane,
            fc,
            kernel_size,
            threshold_sigmas=threshold_sigmas,
            min_peak_snr=min_peak_snr,
            saturation=saturation,
            overlap_distance_px=overlap_distance_px,
            image_index=index,
        )
        beads.extend(found)
        psf_list.append(psfs)
    accepted = [b for b in beads if b.accepted]
    counts = [sum(b.image == index for b in accepted) for index in range(len(planes))]
    num_psfs, map_degree = auto_settings(counts, num_psfs, map_degree)
    num_maps = _num_maps(map_degree)
    for index, count in enumerate(counts):
        if count < num_maps or count == 0:
            why = f"map degree {map_degree} ({num_maps} spatial map(s) per image)"
            message = _too_few_message(
                count, num_maps, why, beads, f"in {labels[index]}", counts, labels
            )
            raise TooFewBeadsError(message, beads, int(kernel_size))
    if len(accepted) < num_psfs:
        message = _too_few_message(
            len(accepted), num_psfs, f"{num_psfs} eigen-PSFs", beads, "in all", counts, labels
        )
        raise TooFewBeadsError(message, beads, int(kernel_size))

    psfs = np.concatenate(psf_list).astype(np.float64)
    image_ids = np.array([b.image for b in accepted])
    fractions = np.array(
        [[b.y_px / max(shape[0] - 1, 1), b.x_px / max(shape[1] - 1, 1)] for b in accepted]
    )

    # held-out prediction quality: fit on ~80 % of the beads, predict the others
    yield Progress(len(planes), steps, "predicting held-out beads")
    held, note = _split(image_ids, holdout_fraction, num_maps, seed)
    holdout = None
    if held.any() and (~held).sum() < num_psfs:
        held[:], note = False, f"fewer fitted beads than the {num_psfs} eigen-PSFs"
    if held.any():
        fit = ~held
        part, part_gamma, _, _ = _fit(
            psfs[fit], fractions[fit], image_ids[fit], len(planes), num_psfs, map_degree, map_shape
        )
        predicted = _normalised(_predict(part, part_gamma, fractions[held], image_ids[held]))
        truth = psfs[held]
        baseline = _normalised(psfs[fit].mean(0))
        from ..optics.psf import psf_snr_db

        baseline_snr = psf_snr_db(np.broadcast_to(baseline, truth.shape), truth)
        holdout = HoldoutReport(
            num_fit=int(fit.sum()),
            num_held_out=int(held.sum()),
            model_snr_db=[float(v) for v in np.atleast_1d(psf_snr_db(predicted, truth))],
            baseline_snr_db=[float(v) for v in np.atleast_1d(baseline_snr)],
        )
        for bead, is_held in zip(accepted, held, strict=True):
            bead.held_out = bool(is_held)

    # the family: all accepted beads
    yield Progress(len(planes) + 1, steps, "fitting the family")
    family, gamma, report, singular2 = _fit(
        psfs, fractions, image_ids, len(planes), num_psfs, map_degree, map_shape
    )
    fitted = _predict(family, gamma, fractions, image_ids)
    flat_err = np.linalg.norm((fitted - psfs).reshape(len(psfs), -1), axis=1)
    relative = flat_err / np.linalg.norm(psfs.reshape(len(psfs), -1), axis=1)
    scale = float(gamma.abs().max())
    if parameter_jitter is None:
        parameter_jitter = _auto_jitter(gamma, scale, float(relative.mean()))
    family = ProductConvolution(
        family.eigen_psfs.float(),
        family.maps.float(),
        parameter_scale=scale,
        parameter_bank=gamma.float(),
        parameter_jitter=float(parameter_jitter),
    )
    energy = (singular2 / singular2.sum()).tolist()
    cautions = _cautions(counts, labels, num_psfs, map_degree, len(accepted), holdout, note)
    for caution in cautions:
        notices.warn(caution, UserWarning)
    yield Progress(steps, steps, "done")
    return CalibrationResult(
        family=family,
        gamma=gamma.float(),
        fc=fc,
        kernel_size=int(kernel_size),
        image_shape=tuple(int(s) for s in shape),
        num_images=len(planes),
        beads=beads,
        psfs=psfs.astype(np.float32),
        variance_per_component=[float(v) for v in energy[:10]],
        variance_captured=float(report.variance_captured),
        mean_relative_error=float(relative.mean()),
        max_relative_error=float(relative.max()),
        holdout=holdout,
        holdout_note=note,
        settings={
            "num_psfs": num_psfs,
            "map_degree": map_degree,
            "automatic": [name for name, on in auto.items() if on],
            "holdout_fraction": holdout_fraction,
            "seed": seed,
            "kernel_size": int(kernel_size),
            "saturation": saturation,
            "threshold_sigmas": threshold_sigmas,
            "min_peak_snr": min_peak_snr,
            "overlap_distance_px": overlap_distance_px,
        },
        cautions=cautions,
    )


def _cautions(
    counts: Sequence[int],
    labels: Sequence[str],
    num_psfs: int,
    map_degree: int,
    num_beads: int,
    holdout: HoldoutReport | None,
    note: str,
) -> list[str]:
    """What these beads cannot determine, one sentence each (empty: a determined fit)."""
    cautions = []
    num_maps = _num_maps(map_degree)
    fewest = int(np.argmin(counts))
    if map_degree > 0 and counts[fewest] < 2 * num_maps:
        cautions.append(
            f"map degree {map_degree} fits {num_maps} maps to {counts[fewest]} bead(s) in "
            f"{labels[fewest]}: the maps barely pass through the beads and may swing between "
            f"them; map degree {auto_settings(counts)[1]} or more beads would be safer"
        )
    if num_psfs > 1 and num_psfs > num_beads // 2:
        cautions.append(
            f"{num_psfs} eigen-PSFs from {num_beads} beads capture nearly all the variance by "
            "construction (they copy the beads); the variance captured says little"
        )
    if num_beads == 1:
        cautions.append(
            "one bead: the family is that bead's PSF everywhere, with no information on how "
            "the blur varies over the field"
        )
    if holdout is None:
        cautions.append(
            f"no bead was held out ({note}): the model's predictions between beads are untested"
        )
    return cautions


def _auto_jitter(gamma: torch.Tensor, scale: float, model_error: float) -> float:
    """Training jitter (units of ``parameter_scale``) so that a drawn PSF differs from a
    bank row by about what the calibration cannot pin down: the model's relative error at
    the beads (at least 2 %, at most 20 %) spread over the K parameters, or the spread of
    γ between calibration images when that is larger."""
    k = gamma.shape[-1]
    jitter = min(max(model_error, 0.02), 0.2) / math.sqrt(k)
    if len(gamma) > 1 and scale > 0:
        jitter = max(jitter, float(gamma.double().std(0).pow(2).mean().sqrt()) / scale)
    return float(jitter)


def calibrate_from_beads(
    images,
    fc: float,
    num_psfs: int | None = None,
    map_degree: int | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    **kwargs,
) -> CalibrationResult:
    """Calibrate a product-convolution family (Model 2.2) from bead images.

    Parameters
    ----------
    images : one 2D image ``(Y, X)``, a stack ``(P, Y, X)`` or a list of 2D images of one
        size; each is a state of the microscope and gets its own γ in the parameter bank.
    fc : cutoff ``NA · pixel_size / λ`` in cycles/pixel (at most 0.25).
    num_psfs : I, the number of eigen-PSFs; None (default): up to 4, at most half the
        usable beads (:func:`auto_settings`).
    map_degree : total degree of the 2D Legendre maps; J = (d+1)(d+2)/2 maps (d = 2: 6);
        None (default): the highest degree up to 2 with two usable beads per map in every
        image. Fits the beads cannot determine give warnings (``cautions``).
    holdout_fraction : fraction of each image's beads kept out of a second fit to measure
        how well the model predicts unseen beads (seeded by ``seed``); 0 to skip.
    kwargs : ``kernel_size`` (odd, px, default 31), ``saturation``, ``threshold_sigmas``,
        ``min_peak_snr``, ``overlap_distance_px`` (see :func:`find_beads`),
        ``parameter_jitter`` (units of ``parameter_scale``; default: automatic),
        ``map_shape``.

    Raises ``ValueError`` for an image that is not 2D or holds NaN, fc above Nyquist, and
    :class:`TooFewBeadsError` (a ``ValueError``) for too few usable beads (saying how many
    were found, why the others were rejected and what would work).

    >>> import numpy as np
    >>> from napari_deepblur.field import calibrate_from_beads
    >>> calibrate_from_beads(np.zeros((64, 64)), fc=0.2)
    Traceback (most recent call last):
    ...
    napari_deepblur.field.calibration.TooFewBeadsError: found no usable bead in bead image 1. \
Check NA, wavelength and pixel size (they set the bead size looked for); or image more well \
separated, unsaturated beads
    """
    from ..pipeline import run

    return run(
        iter_calibrate_from_beads(
            images, fc, num_psfs, map_degree, holdout_fraction, seed, **kwargs
        )
    )


def save_calibration(
    result: CalibrationResult, path, card: dict | None = None, *, overwrite: bool = False
):
    """Write the calibrated family as a family file (``.safetensors``) and its JSON card
    (the report's numbers plus ``card``); refuses to replace a file unless ``overwrite``.
    Returns the path. Load it with :func:`napari_deepblur.models.load_family`."""
    from pathlib import Path

    from ..models import save_family
    from ..outputs import check_new

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"the family file must end in .safetensors, got {path.name}")
    card_path = path.with_suffix(".json")
    for p in (path, card_path):
        check_new(p, overwrite)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder not found: {path.parent}")
    full = {
        "kind": "bead calibration",
        "calibration": result.summary(),
        "beads": [b.to_dict() for b in result.beads],
        **(card or {}),
    }
    return save_family(result.family, result.fc, path, full)
