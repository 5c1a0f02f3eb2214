"""Identify a plane too large to load (a slide scan, a mosaic) from a sample of windows
across its field: a grid of crops, each read on its own and identified like a small image,
their estimates combined like a stack's planes."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from .. import notices
from ..intensity import ConstantImageError
from ..models import as_model
from ..optics import ProductConvolution
from ._estimate import BlurEstimate
from ._identify import identify_plane
from ._prepare import as_image
from ._progress import Progress, run
from ._sampling import Sampling
from ._stacks import combine_estimates
from ._tiling import DEFAULT_TILE_PX, check_tile_px

#: Windows per side of the grid sampled across a large plane (3 × 3 = 9 windows).
SAMPLE_GRID = 3


def sample_windows(shape, window: int, grid: int = SAMPLE_GRID) -> list[tuple[slice, slice]]:
    """``grid × grid`` windows of ``window`` px a side spread evenly over a plane of
    ``shape`` (corners, edges and centre), as slices; fewer when the plane is small."""
    h, w = shape[-2:]

    def starts(length: int) -> list[int]:
        if length <= window:
            return [0]
        return sorted({round(k * (length - window) / (grid - 1)) for k in range(grid)})

    return [
        (slice(top, min(h, top + window)), slice(left, min(w, left + window)))
        for top in starts(h)
        for left in starts(w)
    ]


def iter_identify_sampled(
    source,
    model=None,
    *,
    sampling: Sampling | None = None,
    grid: int = SAMPLE_GRID,
    window_px: int = DEFAULT_TILE_PX,
    device="auto",
    augment: bool = True,
) -> Generator[Progress, None, BlurEstimate]:
    """Identify a 2D ``source`` (any array-like that slices like NumPy: zarr, dask, a
    memory map) from ``grid × grid`` windows of ``window_px`` px at the model's sampling,
    read one at a time: memory is that of one window, whatever the plane's size. Windows
    with no structure (blank background) are left out; the estimate is the median over the
    others (:func:`combine_estimates`), its uncertainty at least their spread.

    A blur that does not change across the field is the same in every window; 9 windows of
    1024² px hold up to 9 × 64 network evaluations, against 64 for a whole 1024² image.
    Space-varying models need the whole plane and are refused here.
    """
    model = as_model(model, device)
    if isinstance(model.family, ProductConvolution):
        raise ValueError(
            f"the model {model.name!r} estimates a blur that varies across the field, which a "
            "sample of windows cannot give: identify a plane that fits in memory instead"
        )
    window_px = check_tile_px(window_px)
    sampling = Sampling.given(sampling)
    min_size = model.identification.config.min_size
    zoom = sampling.zoom(model.fc)
    window = max(int(np.ceil(window_px / zoom)), int(np.ceil(min_size / zoom)))
    windows = sample_windows(source.shape, window, grid)
    estimates = []
    yield Progress(0, len(windows), f"identifying {len(windows)} window(s) across the field")
    for k, (rows, cols) in enumerate(windows):
        try:
            raw = as_image(np.asarray(source[rows, cols]), min_size)
            estimate, _ = run(identify_plane(raw, model, sampling, augment))
            estimates.append(estimate)
        except ConstantImageError:
            pass
        yield Progress(k + 1, len(windows), f"identified window {k + 1} of {len(windows)}")
    if not estimates:
        raise ConstantImageError(
            f"all {len(windows)} windows sampled across the image are constant: there is no "
            "structure from which to estimate the blur"
        )
    if len(estimates) < len(windows):
        notices.warn(
            f"{len(windows) - len(estimates)} of {len(windows)} sampled windows have no "
            "structure (background) and were left out of the identification",
            RuntimeWarning,
            stacklevel=2,
        )
    return combine_estimates(estimates, model)
