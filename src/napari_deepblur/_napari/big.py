"""Big layers: dask- or zarr-backed arrays whose planes are larger than
:data:`BIG_LAYER_PX` (as napari-ome-zarr opens an OME-Zarr), which
the docks never read whole. Identify reads a sample of windows across the plane
(:func:`~napari_deepblur.pipeline.iter_identify_sampled`); Deblur writes the full result
block by block into an OME-Zarr (:func:`~napari_deepblur.chunked.iter_deblur_zarr`, with
progress and Cancel: a cancelled store is resumed by the same request) and opens it as a
multiscale layer."""

from __future__ import annotations

import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from .layers import LayerDataTuple, deblurred_layer_kwargs, estimate_source, psf_layer_data
from .messages import UserError

#: Lazy arrays (dask, zarr: napari's big layers) with planes larger than this many pixels
#: are never read whole: identified from windows, deblurred into an OME-Zarr.
BIG_LAYER_PX = 2048 * 2048
#: Chunks (and blocks) of the OME-Zarr a big layer is deblurred into, px a side.
LAYER_CHUNK_PX = 1024


def is_big_lazy(data) -> bool:
    """Whether ``data`` is a lazy array (not in memory) whose planes are larger than
    :data:`BIG_LAYER_PX` pixels: the docks then work on it window by window."""
    h, w = data.shape[-2:]
    return not isinstance(data, np.ndarray) and h * w > BIG_LAYER_PX


def identify_in_windows(plane, model, options: dict) -> Generator[Any, None, Any]:
    """The estimate of a big 2D ``plane`` from a 3 × 3 sample of windows of
    ``options["tile_px"]`` px (the Identify dock's options: sampling, device, augment)."""
    from ..pipeline import iter_identify_sampled

    if options.get("refine"):
        raise UserError("refining is not available on a big (dask or OME-Zarr) layer")
    return (
        yield from iter_identify_sampled(
            plane,
            model,
            sampling=options["sampling"],
            window_px=options["tile_px"],
            device=options["device"],
            augment=options["augment"],
        )
    )


def refuse_median(shape) -> None:
    """The median over a big stack's planes would read every plane whole: a sentence."""
    raise UserError(
        f"the planes of this layer ({shape[-2]}×{shape[-1]} px, not in memory) are "
        "identified one at a time from a sample of windows: choose 'plane' instead of the "
        "median over planes"
    )


def _output_path(request) -> Path:
    """Where a big layer's result goes: ``request.out`` when the request has one, else a
    new temporary folder (named in the layer's metadata and the status line)."""
    out = getattr(request, "out", None)
    if out:
        return Path(out)
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in request.source) or "image"
    return Path(tempfile.mkdtemp(prefix="napari-deepblur-")) / f"{safe}-deblurred.ome.zarr"


def iter_deblur_big(request, model) -> Generator[Any, None, tuple[Any, Any, list]]:
    """The Deblur dock on a big layer: identify first when no estimate is given (a sample
    of windows of the chosen, or most contrasted, plane), then deblur the plane (or all
    planes) into an OME-Zarr; returns ``(level 0 as a dask array, estimate, layers)``, the
    last layer the multiscale result (dask arrays of the store's levels)."""
    import dask.array as da

    from ..batch import DeblurOptions
    from ..chunked import iter_deblur_zarr
    from ..io import ImageData
    from ..pipeline import representative_plane

    data = request.data
    layers: list[LayerDataTuple] = []
    estimate, of_this_image = request.estimate, request.of_this_image
    sampling = request.optics.sampling()
    if estimate is None:
        plane = representative_plane(data) if request.plane is None else tuple(request.plane)
        options = {"sampling": sampling, "tile_px": 1024, "device": request.device}
        estimate = yield from identify_in_windows(
            data[plane] if plane else data, model, {**options, "augment": True}
        )
        psf = psf_layer_data(
            estimate, estimate_source(request.source, plane=plane), request.geometry,
            data.shape[-2:],
        )  # fmt: skip
        if plane:
            psf[1]["metadata"].update(stack_mode="plane", planes=[[int(i) for i in plane]])
        layers.append(psf)
        of_this_image = True
    source = data[tuple(request.plane)] if request.plane else data
    out = _output_path(request)
    options = DeblurOptions(
        model=request.model, device=request.device, estimate=estimate, noise=request.noise,
        strength=request.strength,
    )  # fmt: skip
    result = yield from iter_deblur_zarr(
        request.source, out, options, chunk_px=LAYER_CHUNK_PX,
        image=ImageData(source, None, None, {}, {}),
        sampling=sampling.for_deblurring(estimate, of_this_image),
    )  # fmt: skip
    levels = [da.from_zarr(str(out / str(k))) for k in range(result["levels"])]
    kwargs = deblurred_layer_kwargs(request, estimate, ome_zarr=str(out))
    kwargs["multiscale"] = len(levels) > 1
    layers.append((levels if len(levels) > 1 else levels[0], kwargs, "image"))
    return levels[0], estimate, layers
