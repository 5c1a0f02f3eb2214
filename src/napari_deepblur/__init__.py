"""napari-deepblur: estimate the blur of a microscope from a single image and remove it.

The public API lives in :mod:`napari_deepblur.pipeline`::

    import napari_deepblur as ndb
    model = ndb.load_model()
    est = ndb.identify(image, model=model)
    restored = ndb.deblur(image, est, model=model)

Heavy modules (torch networks, the pipeline) are imported lazily so that ``import
napari_deepblur`` stays fast, e.g. for napari's plugin discovery.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "identify": "napari_deepblur.pipeline",
    "deblur": "napari_deepblur.pipeline",
    "BlurEstimate": "napari_deepblur.pipeline",
    "load_model": "napari_deepblur.models",
    "list_models": "napari_deepblur.models",
    "Microscope": "napari_deepblur.optics.microscope",
    "zernike_psf": "napari_deepblur.optics.psf",
    "make_blurred_sample": "napari_deepblur.samples",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_deepblur' has no attribute {name!r}")
