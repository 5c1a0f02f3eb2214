"""Sample data (npe2 contribution): the blurred samples of :mod:`napari_deepblur.samples` as
napari layer data, with the true blur and the sharp image in the layer's metadata. napari
calls these on its main thread: they read the shipped samples (no torch, no blurring)."""

from __future__ import annotations

from .samples import (
    ACTIN_NAME,
    SAMPLE_NAME,
    make_actin_sample,
    make_blurred_sample,
    shipped_sample,
)

__all__ = [
    "ACTIN_NAME",
    "SAMPLE_NAME",
    "blurred_actin",
    "blurred_fluorescence",
    "make_actin_sample",
    "make_blurred_sample",
]


def blurred_fluorescence() -> list[tuple]:
    """napari sample: one image layer with the true blur and the sharp image in its metadata."""
    return [_layer(shipped_sample(SAMPLE_NAME), SAMPLE_NAME)]


def blurred_actin() -> list[tuple]:
    """napari sample: real actin-labelled cells, blurred by a known PSF (in the metadata)."""
    return [_layer(shipped_sample(ACTIN_NAME), ACTIN_NAME)]


def _layer(sample: dict, name: str) -> tuple:
    """An image layer (scaled in nm) of a sample, the rest of the sample as its metadata."""
    image = sample.pop("image")
    pixel = sample["optics"]["pixel_size_nm"]
    kwargs = {"name": name, "scale": (pixel, pixel), "units": ("nm", "nm")}
    return image, {**kwargs, "metadata": sample}, "image"
