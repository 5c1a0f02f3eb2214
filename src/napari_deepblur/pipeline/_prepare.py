"""A plane made ready for the networks: checks, intensity range, noise, and what all tiles of a
plane share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..intensity import check_contrast, normalize, robust_range
from ..model_files import STRENGTH_RANGE
from ..optics.noise import estimate_noise
from ._sampling import resample, resamples


def check_size(shape, min_size: int) -> None:
    """ValueError unless both sides of a 2D image of ``shape`` have ``min_size`` px."""
    if min(shape) < min_size:
        raise ValueError(
            f"the image ({shape[0]}×{shape[1]} px) is too small: "
            f"at least {min_size}×{min_size} px are needed"
        )


def as_image(image, min_size: int = 1) -> np.ndarray:
    """Check that ``image`` is a finite, real 2D array of at least ``min_size`` px a side and
    return it as float32 (a copy: the caller's array is never modified)."""
    array = np.asarray(image)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"expected a real-valued grayscale image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"this looks like an RGB(A) image (shape {array.shape}); Deep-Blur works on one "
            "fluorescence channel: split the channels and process each one"
        )
    if array.ndim != 2:
        raise ValueError(
            f"expected a 2D image (Y, X), got shape {array.shape}; for stacks process each "
            "plane (napari: the current plane or all planes; CLI: planes are looped over)"
        )
    check_size(array.shape, min_size)
    with np.errstate(over="ignore"):  # reported below
        image32 = array.astype(np.float32, copy=True)
    bad = ~np.isfinite(image32)
    if bad.any() and np.isfinite(array).all():
        raise ValueError(
            f"the image has values beyond float32's range (largest {np.abs(array).max():.3g}, "
            "float32 holds up to 3.4e38): divide it by a constant first"
        )
    if bad.any():
        raise ValueError(
            f"the image has {int(bad.sum())} NaN or infinite pixels; replace them "
            "(e.g. with numpy.nan_to_num or an inpainting) first"
        )
    return image32


#: Noise given (``noise=``, ``--noise``) beyond this many times the image's intensity range
#: is refused: the image would be noise only, and the network's arithmetic overflows
#: (NaN pixels) before long.
MAX_NOISE_TO_RANGE = 1e6


def check_noise_and_strength(noise, strength) -> None:
    """ValueError unless ``strength`` is a number within :data:`STRENGTH_RANGE` and
    ``noise`` is None, a std, or ``{"alpha", "beta"}``, in finite nonnegative numbers."""
    low, high = STRENGTH_RANGE
    if not (_is_number(strength) and low <= float(strength) <= high):
        raise ValueError(
            f"the strength must be a number from {low:g} (sharper) to {high:g} (smoother), "
            f"got {strength!r}: outside that range the network adds artefacts"
        )
    if noise is not None:
        check_noise(noise)


def check_noise(noise, what: str = "the noise") -> None:
    """ValueError unless ``noise`` is a std or ``{"alpha", "beta"}`` (image units) in finite
    nonnegative numbers; ``what`` names it in the message."""
    if isinstance(noise, dict):
        unknown = sorted(set(noise) - {"alpha", "beta"})
        values = list(noise.values())
    else:
        unknown, values = [], [noise]
    if unknown or not all(_is_number(v) and 0 <= float(v) < np.inf for v in values):
        raise ValueError(
            f"{what} must be a nonnegative std, or {{'alpha': gain, 'beta': std}}, in image "
            f"units; got {noise!r}"
        )


def _is_number(value) -> bool:
    """A real number (not a bool, a string or NaN)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and not np.isnan(value)
    )


#: Planes larger than this many pixels take their noise level from a central crop of this
#: many pixels and their intensity range from a regular subsample (below it: the whole plane),
#: which bounds the memory of the statistics (the noise estimator needs ~70 bytes/pixel).
STATS_MAX_PX = 2048 * 2048


@dataclass(frozen=True)
class PreparedPlane:
    """One plane ``(Y, X)`` made ready for the networks, once (:func:`prepare_plane`):
    identify makes it and deblurring the same plane reuses it, so that the plane is
    resampled, checked and ranged once and deblurring uses the noise identify measured.

    ``zoom``: the image's cutoff over the model's (the plane is resampled by it);
    ``low``, ``scale``: the plane's robust intensity range (its 1st percentile and the
    distance to its 99.9th, image units), which is mapped to [0, 1]; ``y``: the plane at the
    model's sampling (float32; above :data:`STATS_MAX_PX` pixels a central crop of it),
    ``whole``: whether ``y`` is all of it; ``noise``: ``(α, β)`` of ``var = α·x + β²`` of
    the normalised ``y`` (normalised units, at the model's sampling), None until measured
    (:meth:`with_noise`).
    """

    zoom: float
    low: float
    scale: float
    y: np.ndarray = field(repr=False)
    whole: bool = True
    noise: tuple[float, float] | None = None

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, scale)`` as :func:`~napari_deepblur.intensity.robust_range` gives them."""
        return torch.tensor([[self.low]]), torch.tensor([[self.scale]])

    def with_noise(self, model_fc: float) -> PreparedPlane:
        """This plane with its noise measured (unless it was) on the normalised ``y`` at the
        model's cutoff ``model_fc`` (cycles/pixel): :func:`~napari_deepblur.optics.noise.
        estimate_noise`, whose memory (~70 bytes/pixel) the crop bounds."""
        if self.noise is not None:
            return self
        low, scale = self._range()
        alpha, beta = estimate_noise(
            normalize(torch.from_numpy(self.y), low, scale)[None], model_fc
        )
        return replace(self, noise=(float(alpha[0]), float(beta[0])))

    @property
    def resampled(self) -> bool:
        """Whether ``y`` was resampled (its noise is then not the camera's: interpolation
        smooths it)."""
        return resamples(self.zoom)

    def noise_in_image_units(self) -> dict:
        """The measured noise ``{"alpha", "beta"}`` of ``var = α·I + β²`` in the image's
        intensity units (of ``y``: the image's own noise when it was not resampled)."""
        alpha_n, beta_n = self.noise
        alpha = alpha_n * self.scale
        beta2 = beta_n**2 * self.scale**2 - alpha * self.low
        return {"alpha": float(alpha), "beta": float(np.sqrt(max(beta2, 0.0)))}

    def normalised_noise(self, noise, what: str = "the noise given") -> tuple[float, float]:
        """``(α, β)`` in normalised units of ``noise`` in the image's units (``{"alpha",
        "beta"}``, or a number: a constant std β); ValueError for a noise so large the image
        would be noise only (:data:`MAX_NOISE_TO_RANGE`)."""
        if isinstance(noise, int | float):
            noise = {"alpha": 0.0, "beta": float(noise)}
        a, b = float(noise.get("alpha", 0.0)), float(noise.get("beta", 0.0))
        s, lo = self.scale, self.low
        top_std = float(np.sqrt(max(a * (lo + s), 0.0) + b * b))  # at the top of the range
        if top_std > MAX_NOISE_TO_RANGE * s:
            raise ValueError(
                f"{what} (a std of {top_std:.3g} at the image's bright end, image units) is "
                f"{top_std / s:.3g}× the image's intensity range ({s:.3g}): beyond "
                f"{MAX_NOISE_TO_RANGE:.0e}× the image is noise only; give the noise in the "
                "image's units"
            )
        return a / s, float(np.sqrt(max(a * lo + b * b, 0.0))) / s


def image_noise(image: np.ndarray, fc: float) -> dict:
    """The noise ``{"alpha", "beta"}`` of ``var = α·I + β²`` of a float32 image at its own
    pixels (cutoff ``fc`` cycles/pixel), in its intensity units, from at most a central crop
    of :data:`STATS_MAX_PX` pixels (the estimator needs ~70 bytes/pixel)."""
    sample = np.ascontiguousarray(_central_crop(image, STATS_MAX_PX))
    alpha, beta = estimate_noise(torch.from_numpy(sample)[None], fc)
    return {"alpha": float(alpha[0]), "beta": float(beta[0])}


def prepare_plane(
    source, zoom: float, *, checked: bool = False, min_size: int = 0
) -> PreparedPlane:
    """A 2D ``source`` (any array-like: memory-mapped, zarr, dask) prepared for the
    networks (:class:`PreparedPlane`): resampled by ``zoom`` to the model's sampling, its
    robust intensity range measured and its contrast checked
    (:class:`~napari_deepblur.intensity.ConstantImageError`). Planes above
    :data:`STATS_MAX_PX` pixels are resampled as a central crop and ranged on a regular
    subsample. ``checked``: ``source`` is already :func:`as_image`'s float32 (not checked
    again); ``min_size``: the smallest side the identification network reads (px, at the
    model's sampling)."""
    h, w = source.shape
    crop = _central_crop(source, STATS_MAX_PX)
    crop = crop if checked else as_image(crop, 16)
    y = resample(crop, zoom)
    if min(y.shape) < min_size:
        raise ValueError(
            f"after resampling to the model's sampling the image is "
            f"{y.shape[0]}×{y.shape[1]} px, smaller than the {min_size} px needed"
        )
    y_t = torch.from_numpy(y)
    if h * w <= STATS_MAX_PX:  # the whole plane
        low, scale = robust_range(y_t)
    else:  # a regular subsample of about 2**20 pixels
        step = int(np.ceil(np.sqrt(h * w / 2**20)))
        low, scale = robust_range(torch.from_numpy(as_image(source[::step, ::step])))
    check_contrast(scale, low, y_t)
    return PreparedPlane(float(zoom), float(low), float(scale), y, whole=h * w <= STATS_MAX_PX)


def _check_dtype(dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(f"expected a real-valued grayscale image, got dtype {dtype}")


def _central_crop(source, max_px: int):
    """``source`` itself (2D) when it has at most ``max_px`` pixels, else a central crop."""
    h, w = source.shape[-2:]
    if h * w <= max_px:
        return source
    ch = min(h, int(max_px**0.5))
    cw = min(w, max_px // ch)
    top, left = (h - ch) // 2, (w - cw) // 2
    return source[top : top + ch, left : left + cw]


def check_finite(stack, rows_per_block: int = 1024) -> None:
    """Refuse a stack ``(…, Y, X)`` (or a 2D image) with NaN or infinite pixels, naming the
    planes, before any work: a float image is scanned in blocks of rows (memory-mapped ones
    too: reading is much faster than deblurring); integer images cannot hold NaN."""
    if not np.issubdtype(np.dtype(stack.dtype), np.floating):
        return
    bad_planes = {}
    for index in plane_indices(stack.shape):
        plane, bad = stack[index], 0
        for top in range(0, plane.shape[0], rows_per_block):
            bad += int(np.count_nonzero(~np.isfinite(plane[top : top + rows_per_block])))
        if bad:
            bad_planes[index] = bad
    if not bad_planes:
        return
    where = ""
    if len(stack.shape) > 2:  # a stack: name the planes
        shown = ", ".join(f"{index}: {n}" for index, n in list(bad_planes.items())[:5])
        more = " …" if len(bad_planes) > 5 else ""
        where = f" in {len(bad_planes)} plane(s) ({shown}{more})"
    raise ValueError(
        f"the image has {sum(bad_planes.values())} NaN or infinite pixels{where}; replace "
        "them (e.g. with numpy.nan_to_num or an inpainting) first"
    )


def plane_label(index: tuple[int, ...], shape) -> str:
    """The plane ``index`` of an array of ``shape`` in words, counted from 1 as napari's
    slider counts: "plane 2 of 3", "plane (1, 5) of (2, 9)"; "image" for a 2D image.

    >>> plane_label((1,), (3, 64, 64)), plane_label((0, 4), (2, 9, 64, 64)), plane_label((), (8, 8))
    ('plane 2 of 3', 'plane (1, 5) of (2, 9)', 'image')
    """
    if not index:
        return "image"
    lead = tuple(shape[: len(index)])
    if len(index) == 1:
        return f"plane {index[0] + 1} of {lead[0]}"
    numbers = ", ".join(str(i + 1) for i in index)
    return f"plane ({numbers}) of ({', '.join(str(n) for n in lead)})"


def plane_indices(shape) -> list[tuple[int, ...]]:
    """Indices of the 2D planes of an array ``(…, Y, X)``, in C order (``[()]`` for 2D)."""
    if len(shape) < 2:
        raise ValueError(f"expected an image (…, Y, X), got shape {tuple(shape)}")
    return list(np.ndindex(*shape[:-2]))
