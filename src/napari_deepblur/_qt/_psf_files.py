"""PSF files opened in napari become PSF layers like those Identify adds, whichever reader
opened them.

napari 0.9's ``viewer.open(path)`` reads with napari's own reader unless a plugin is named
(its ``plugin`` argument defaults to ``"napari"``), and File › Open / drag and drop ask which
reader to use when several match a file, unless the settings name a preferred reader for its
pattern. So:

- :func:`prefer_psf_reader` makes napari-deepblur the preferred reader of the patterns of its
  manifest (``*.psf.tif``…) where the user has set no preference (what napari's "remember
  this choice" would write);
- :func:`adopt_psf_layer` gives a PSF file opened by another reader what our reader gives
  (metadata, pixel size and units, colormap, name);
- :func:`place_psf_layer` lays a PSF read from a file beside its image, on the image's pixel
  grid, as an identified PSF is (not on the image's corner).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import numpy as np

from .. import _napari as logic
from ._job import full_resolution, layer_geometry

PLUGIN = "napari-deepblur"
#: The patterns of the manifest's reader (read from the manifest when napari knows it).
PSF_PATTERNS = ("*.psf.tif", "*.psf.tiff", "*.psf.json")


def psf_patterns() -> tuple[str, ...]:
    """The filename patterns our reader is registered for."""
    with contextlib.suppress(Exception):  # (npe2 not initialised: the manifest's own)
        from npe2 import PluginManager

        manifest = PluginManager.instance().get_manifest(PLUGIN)
        patterns = [p for r in manifest.contributions.readers or [] for p in r.filename_patterns]
        if patterns:
            return tuple(patterns)
    return PSF_PATTERNS


def prefer_psf_reader() -> list[str]:
    """Name napari-deepblur the preferred reader of its PSF patterns where no reader is
    preferred yet; returns the patterns it set (a user's own choice is kept)."""
    try:
        from napari.settings import get_settings

        preferred = get_settings().plugins.extension2reader
    except Exception:  # noqa: BLE001 - napari without settings: File › Open asks
        return []
    added = [p for p in psf_patterns() if p not in preferred]
    if added:
        get_settings().plugins.extension2reader = {
            **preferred,
            **dict.fromkeys(added, PLUGIN),
        }
    return added


def _source_path(layer: Any) -> str | None:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


def adopt_psf_layer(layer: Any) -> bool:
    """Give ``layer``, a PSF file opened by another reader (napari's), our reader's metadata,
    scale, units, colormap and name; True when it did. Other layers are left alone."""
    from napari.layers import Image

    from .._reader import is_psf_file, read_psf_layers

    if not isinstance(layer, Image) or logic.is_psf_metadata(layer.metadata):
        return False
    path = _source_path(layer)
    if path is None or not is_psf_file(path):
        return False
    try:
        [(data, kwargs, _)] = read_psf_layers(path)
    except Exception:  # noqa: BLE001 - not readable as ours: napari's layer stays as it is
        return False
    if tuple(np.shape(layer.data)) != tuple(data.shape):
        return False
    layer.metadata = {**layer.metadata, **kwargs["metadata"]}
    for key in ("scale", "units", "colormap", "blending"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    layer.name = kwargs["name"]
    return True


def place_psf_layer(viewer, layer: Any) -> bool:
    """Lay a 2D PSF layer read from a file (at the origin: identified ones are placed
    already) beside the image it was identified on, when that image is in ``viewer``: on its
    pixel grid, right of it; True when moved."""
    from napari.layers import Image

    metadata = getattr(layer, "metadata", None)
    if not logic.is_psf_metadata(metadata):
        return False
    if np.ndim(layer.data) != 2 or np.any(np.asarray(layer.translate) != 0):
        return False  # placed already
    image = next(
        (
            other
            for other in viewer.layers
            if other is not layer
            and isinstance(other, Image)
            and logic.is_psf_of(metadata, other.name)
        ),
        None,
    )
    if image is None:
        return False
    shape = full_resolution(image).shape
    placed = logic.beside_image(layer_geometry(image), shape)
    if "units" in placed:
        layer.units = placed["units"]
    layer.scale = placed["scale"]
    layer.translate = placed["translate"]
    if "affine" in placed:
        layer.affine = placed["affine"]
    return True


def settle_psf_layer(viewer, layer: Any) -> None:
    """A layer just added: if it is a PSF file, make it ours, lay it beside its image and
    bring it into view."""
    from ._view import reveal

    adopt_psf_layer(layer)
    if place_psf_layer(viewer, layer):
        reveal(viewer, [layer])


_WATCHED: weakref.WeakSet = weakref.WeakSet()
#: Each layer's name, to know the old one when it is renamed.
_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _follow_renames(viewer, layer) -> None:
    """An image layer renamed keeps its PSFs: their ``source`` follows its new name.
    Connected first, so that the docks list the estimates by the new name."""
    if layer in _NAMES:  # (removed and added again: followed already)
        return
    _NAMES[layer] = layer.name
    layer_ref, viewer_ref = weakref.ref(layer), weakref.ref(viewer)

    def renamed(*_: Any) -> None:
        layer, viewer = layer_ref(), viewer_ref()
        if layer is None or viewer is None:
            return
        old, new = _NAMES.get(layer), layer.name
        _NAMES[layer] = new
        if old is None or old == new:
            return
        logic.rename_sources((other.metadata for other in viewer.layers), old, new)

    layer.events.name.connect(renamed, position="first")


def watch_psf_files(viewer) -> None:
    """Once per viewer: prefer our reader for PSF files (:func:`prefer_psf_reader`), settle
    the PSF files open now and every one opened later (:func:`settle_psf_layer`), and keep
    the PSFs of an image renamed (:func:`_follow_renames`)."""
    if viewer in _WATCHED:
        return
    _WATCHED.add(viewer)
    prefer_psf_reader()
    for layer in list(viewer.layers):
        settle_psf_layer(viewer, layer)
        _follow_renames(viewer, layer)

    def inserted(event) -> None:
        settle_psf_layer(viewer, event.value)
        _follow_renames(viewer, event.value)

    viewer.layers.events.inserted.connect(inserted)
