"""Reader (npe2 contribution): our exported PSF files → a PSF image layer with its metadata.

A file is ours when its JSON sidecar (or the TIFF's JSON description) says
``"format": "napari-deepblur-psf"`` (:func:`napari_deepblur.io.write_psf`). Any other file
gets ``None``, so napari's own reader handles it. The manifest registers ``*.psf.tif``,
``*.psf.tiff`` and ``*.psf.json``; other names open with ``viewer.open(path,
plugin="napari-deepblur")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

PSF_FORMAT = "napari-deepblur-psf"
_SUFFIXES = (".tif", ".tiff", ".json")


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader function for a PSF file exported by napari-deepblur, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_psf_layers if is_psf_file(path) else None


def is_psf_file(path: str | os.PathLike) -> bool:
    """Cheap check: the sidecar's or the TIFF description's ``format`` is ours."""
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES or not path.is_file():
        return False
    if path.suffix.lower() == ".json":
        return _json_format(path) == PSF_FORMAT and any(
            path.with_suffix(s).is_file() for s in (".tif", ".tiff")
        )
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return _json_format(sidecar) == PSF_FORMAT
    from .io import read_header

    try:
        _, metadata = read_header(path)
    except Exception:  # noqa: BLE001 - not ours
        return False
    return metadata.get("format") == PSF_FORMAT


def _json_format(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get("format") if isinstance(value, dict) else None


def read_psf_layers(path: str | list[str]) -> list[tuple]:
    """``[(psf, kwargs, "image")]``: the PSF scaled in nm (when its pixel size is known),
    named after the file, with the file's metadata as ``layer.metadata``."""
    from .io import read_psf

    if isinstance(path, (list, tuple)):
        path = path[0]
    psf, metadata = read_psf(path)
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
