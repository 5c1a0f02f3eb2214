"""Reader (npe2 contribution): our exported PSF files → a PSF image layer with its metadata.

A file is ours when its JSON sidecar (or the TIFF's JSON description) says
``"format": "napari-deepblur-psf"`` (:func:`napari_deepblur.formats.is_psf_file`). Any other file
gets ``None``, so napari's own reader handles it. The manifest registers ``*.psf.tif``,
``*.psf.tiff`` and ``*.psf.json``; other names open with ``viewer.open(path,
plugin="napari-deepblur")``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import formats
from .formats import is_psf_file

__all__ = ["is_psf_file", "napari_get_reader", "read_psf_layers"]


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader function for a PSF file exported by napari-deepblur, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_psf_layers if is_psf_file(path) else None


def read_psf_layers(path: str | list[str]) -> list[tuple]:
    """``[(psf, kwargs, "image")]``: the PSF scaled in nm (when its pixel size is known),
    named after the file, with the file's metadata as ``layer.metadata``."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    psf, metadata = formats.read_psf(path)
    name = Path(path).name
    for suffix in (".json", ".tiff", ".tif", ".ome", ".psf"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    kwargs: dict = {
        "name": name or "PSF",
        "metadata": metadata,
        "colormap": "magma",
        "blending": "additive",  # its dark background does not hide the image below
    }
    pixel = (metadata.get("optics") or {}).get("pixel_size_nm")
    if pixel:
        lateral = (float(pixel), float(pixel))
        if psf.ndim == 3:
            kwargs["scale"] = (_z_step_nm(metadata), *lateral)
            kwargs["units"] = ("nm", "nm", "nm")
        else:
            kwargs["scale"] = lateral
            kwargs["units"] = ("nm", "nm")
    return [(np.asarray(psf, np.float32), kwargs, "image")]


def _z_step_nm(metadata: dict) -> float:
    z = metadata.get("defocus_um")
    if isinstance(z, list) and len(z) > 1:
        steps = np.diff(np.asarray(z, float))
        if np.allclose(steps, steps[0]) and steps[0] > 0:
            return float(steps[0]) * 1000.0
    return 1.0
