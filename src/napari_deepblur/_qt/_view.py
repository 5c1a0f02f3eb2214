"""The camera follows what the docks add: a layer added off-screen (a PSF beside its image)
is brought into view (:func:`reveal`), and a grid of views is fitted whole (:func:`fit_all`).
napari fits the view only to the first layer added."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if hasattr(canvas, "grid") else viewer.grid


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def visible_area(viewer) -> np.ndarray | None:
    """The world (y, x) bounds ``[[y0, x0], [y1, x1]]`` the 2D canvas shows now; None in 3D
    or in grid mode (where each layer has its own view)."""
    if viewer.dims.ndisplay != 2 or grid(viewer).enabled:
        return None
    camera_ = camera(viewer)
    canvas = viewer.canvas
    size = canvas.viewbox_size(viewer.layers) if hasattr(canvas, "viewbox_size") else canvas.size
    half = np.asarray(size, float)[-2:] / 2 / float(camera_.zoom)
    centre = np.asarray(camera_.center, float)[-2:]
    return np.stack([centre - half, centre + half])


def is_visible(viewer, layer: Any) -> bool:
    """Whether the whole of ``layer`` (its displayed y, x extent) is on the canvas."""
    area = visible_area(viewer)
    if area is None:
        return True
    extent = np.asarray(layer.extent.world, float)[:, -2:]
    return bool(np.all(extent[0] >= area[0] - 1e-6) and np.all(extent[1] <= area[1] + 1e-6))


def reveal(viewer, layers: Iterable[Any]) -> None:
    """Fit the view to all layers when one of ``layers`` (just added) is not wholly on the
    canvas; otherwise leave the user's zoom and pan alone."""
    if not all(is_visible(viewer, layer) for layer in layers if layer in viewer.layers):
        viewer.reset_view()


def fit_all(viewer) -> None:
    """Fit the view to every layer (after switching to grid mode: each cell whole)."""
    viewer.reset_view()
