"""Which blur estimate the Deblur dock offers for an image, and what it says about one from
elsewhere: the estimates of the image come first (latest first), those of other images only
on request (:func:`order_estimates`); an estimate from another image whose optics differ
from the image's is said so (:func:`optics_differences`, :func:`foreign_estimate_warning`);
the model an estimate was identified with (:func:`estimate_model`) is the one to deblur it
with (:func:`model_to_follow`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..formats import KnownOptics, is_psf_metadata, known_optics
from .layers import is_psf_of

#: Optics that differ by more than this fraction are "different" (1 %: rounding in files).
OPTICS_TOLERANCE = 0.01

#: How a foreign estimate is labelled in the Deblur dock's "Blur estimate" list.
OTHER_IMAGE_LABEL = "{name}  (from another image: {source})"


def order_estimates(
    image: str | None, layers: Sequence[tuple[str, Mapping | None]], include_others: bool
) -> tuple[list[int], list[int]]:
    """Indices into ``layers`` (``(name, metadata)`` in the layer list's order, oldest first)
    of the PSF layers identified on the image layer named ``image`` and, when
    ``include_others``, of the other PSF layers; each list latest first.

    >>> psf = {"format": "napari-deepblur-psf"}
    >>> order_estimates("a", [("a PSF", {**psf, "source": "a"}), ("b PSF", {**psf, "source": "b"}),
    ...                       ("a PSF 2", {**psf, "source": "a"})], include_others=True)
    ([2, 0], [1])
    """
    mine, others = [], []
    for i, (_, metadata) in enumerate(layers):
        if not is_psf_metadata(metadata):
            continue
        if image is not None and is_psf_of(metadata, image):
            mine.append(i)
        elif include_others:
            others.append(i)
    return mine[::-1], others[::-1]


def optics_differences(psf_metadata: Mapping | None, image: KnownOptics) -> list[str]:
    """What differs (beyond :data:`OPTICS_TOLERANCE`) between the optics a PSF layer was
    identified with and the image's, in words (``"pixel size 74 nm vs 120 nm"``: PSF's
    first); ``[]`` when nothing known differs. Values unknown on either side are not
    compared, except the sampling cutoff ``fc`` of the PSF against the image's (when the
    image's optics are complete)."""
    psf = known_optics(psf_metadata)
    found = []
    for label, key, unit in (
        ("pixel size", "pixel_size_nm", " nm"),
        ("NA", "na", ""),
        ("wavelength", "wavelength_nm", " nm"),
    ):
        a, b = getattr(psf, key), getattr(image, key)
        if a is not None and b is not None and abs(a / b - 1) > OPTICS_TOLERANCE:
            found.append(f"{label} {a:.4g}{unit} vs {b:.4g}{unit}")
    psf_fc = _fc(psf_metadata)
    if psf_fc is not None and image.complete:
        try:
            image_fc = image.sampling().fc
        except ValueError:  # undersampled: refused, with its own message, when it runs
            image_fc = None
        if image_fc and abs(psf_fc / image_fc - 1) > OPTICS_TOLERANCE:
            found.append(f"fc {psf_fc:.3f} vs {image_fc:.3f} cycles/pixel")
    return found


def _fc(metadata: Mapping | None) -> float | None:
    try:
        fc = float((metadata or {}).get("fc"))
    except (TypeError, ValueError):
        return None
    return fc if fc > 0 else None


def foreign_estimate_warning(
    psf_name: str, psf_metadata: Mapping | None, image: str, optics: KnownOptics
) -> str | None:
    """The warning for deblurring the image layer ``image`` with the PSF layer ``psf_name``
    identified on another image, when their optics differ; None when they agree (or the PSF
    is the image's own)."""
    if is_psf_of(psf_metadata, image):
        return None
    differences = optics_differences(psf_metadata, optics)
    if not differences:
        return None
    source = (psf_metadata or {}).get("source") or "another image"
    return (
        f"Deblur: the blur estimate '{psf_name}' was identified on '{source}', whose optics "
        f"differ from those of '{image}' ({'; '.join(differences)}): the PSF is resampled to "
        f"this image's pixels, but a PSF of other optics is another blur. Identify the blur "
        "of this image instead, unless the two were imaged alike."
    )


def estimate_model(metadata: Mapping | None) -> str | None:
    """The name of the model a PSF layer's estimate was identified with (None if unknown)."""
    metadata = metadata or {}
    inner = metadata.get("estimate") if isinstance(metadata.get("estimate"), Mapping) else {}
    model = inner.get("model") or metadata.get("model")
    return str(model) if model else None


def model_to_follow(metadata: Mapping | None, current: str, available: Sequence[str]) -> Any:
    """What the Deblur dock does with its model when a PSF layer is chosen: ``None`` (keep
    ``current``: it is the estimate's, or the estimate does not say), the name of the model
    to switch to (one of ``available``), or a :class:`str` warning (prefixed "⚠") when the
    estimate's model is not available here.

    >>> model_to_follow({"model": "field-default"}, "zernike-default", ["zernike-default",
    ...                 "field-default"])
    'field-default'
    """
    model = estimate_model(metadata)
    if model is None or model == current:
        return None
    if model in available:
        return model
    return (
        f"⚠ the estimate was identified with the model '{model}', which is not available "
        f"here: Deblur uses '{current}'. Choose that model's file (Model › model file…), or "
        "identify the blur again with the model you deblur with."
    )
