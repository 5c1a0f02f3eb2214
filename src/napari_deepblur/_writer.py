"""Writer (npe2 contribution): a PSF image layer → TIFF + JSON sidecar.

Registered for the extensions ``.psf.tif`` / ``.psf.tiff`` only, so that napari's own writer
keeps plain ``.tif`` files. The files are those of :func:`napari_deepblur.formats.write_psf`
and read back with their metadata by :mod:`napari_deepblur._reader`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import formats


def write_psf_layer(path: str, data: Any, meta: dict, *, overwrite: bool = True) -> list[str]:
    """Write one image layer as a PSF: ``path`` (float32 TIFF, a 2D PSF renormalised to sum
    1) and the sidecar ``path`` with ``.json`` (metadata: optics, Zernike coefficients in
    waves RMS, noise, model, the estimate). Returns both paths.

    napari's save dialog asks before replacing a file, so this writer overwrites by default;
    the Identify widget's Export button passes ``overwrite=False``.
    """
    metadata = dict(meta.get("metadata") or {})
    if not isinstance(metadata.get("optics"), dict) or not metadata["optics"].get("pixel_size_nm"):
        optics = formats.known_optics(metadata, meta.get("scale") or (), meta.get("units"))
        if optics.pixel_size_nm is not None:
            metadata["optics"] = {**(metadata.get("optics") or {}), **optics.known()}
    metadata.setdefault("source", meta.get("name", ""))
    psf = np.asarray(data, dtype=np.float32)
    if psf.ndim not in (2, 3):
        raise ValueError(f"a PSF layer must be 2D or 3D, got shape {psf.shape}")
    tif, sidecar = formats.write_psf(path, psf, metadata=metadata, overwrite=overwrite)
    return [str(tif), str(sidecar)]
