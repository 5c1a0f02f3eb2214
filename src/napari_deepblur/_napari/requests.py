"""The jobs of the Identify and Deblur docks, as requests (what the widget read from its
controls and layers) and generators of :class:`~napari_deepblur.pipeline.Progress` that
return the layers to add: the docks' headless twins. The image's sampling is resolved
once here (:class:`~napari_deepblur.pipeline.Sampling`) from the layer's known optics."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats import KnownOptics
from .big import identify_in_windows, is_big_lazy, iter_deblur_big, refuse_median
from .layers import (
    LayerDataTuple,
    deblurred_layer_kwargs,
    estimate_layers,
    estimate_source,
    psf_layer_data,
)
from .messages import UserError
from .tables import KERNEL_MAP_GRID


def fc_text(optics: KnownOptics, model_fc: float | None) -> str:
    """A line about the sampling, for the widget: fc and whether it is above Nyquist
    (``model_fc``: the model's cutoff, None when the model cannot be read)."""
    from ..optics import NYQUIST_FC

    model = "" if model_fc is None else f"{model_fc:.3f}"
    if not optics.complete:
        like = f" (fc = {model})" if model else ""
        return f"Optics unknown: the image is assumed sampled like the model{like}."
    try:
        fc = optics.sampling().fc
    except ValueError as exc:
        return f"⚠ {exc}"
    model = f"; model: {model}" if model else ""
    return f"fc = {fc:.3f} cycles/pixel (Nyquist: at most {NYQUIST_FC}{model})"


#: How the Identify widget treats a stack: the current plane, or the median over all planes.
IDENTIFY_STACK_MODES = ("plane", "median")


@dataclass
class IdentifyRequest:
    """What the Identify widget asks for. ``data`` is the layer's array (any leading axes);
    ``plane`` indexes the leading axes (``()`` for 2D). ``stack_mode``: ``"plane"`` identifies
    that one plane; ``"median"`` (stacks) the median over all planes, one plane at a time
    (:func:`napari_deepblur.pipeline.iter_identify_stack`), and ignores ``plane``.
    ``kernel_grid``: cells a side of the kernel map of a space-varying model."""

    data: Any
    source: str
    plane: tuple[int, ...] = ()
    stack_mode: str = "plane"
    model: str | None = None
    optics: KnownOptics = field(default_factory=KnownOptics)
    device: str = "auto"
    augment: bool = True
    refine: bool = False
    tile_px: int | None = None
    geometry: dict = field(default_factory=dict)
    kernel_grid: int = KERNEL_MAP_GRID


@dataclass
class IdentifyResult:
    estimate: Any
    layers: list[LayerDataTuple]


def _load(model, device):
    from ..models import load_model

    try:
        return load_model(model, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(
            f"the model could not be loaded ({exc}); choose a shipped model or a valid "
            ".safetensors model file"
        ) from exc


def is_field_model(model) -> bool:
    """True for a space-varying (product-convolution) model."""
    from ..optics.families import ProductConvolution

    return isinstance(getattr(model, "family", None), ProductConvolution)


def iter_identify_layers(request: IdentifyRequest) -> Generator[Any, None, IdentifyResult]:
    """Identify the blur of one plane, or the median over all planes of a stack
    (``stack_mode="median"``, progress in planes); yields pipeline ``Progress``, returns the
    estimate and the layers to add (:func:`estimate_layers`: the PSF; a PSF map when the
    image was processed in tiles; the kernel map and PSF weight maps of a space-varying
    model). For a stack the PSF layer's metadata lists the ``planes`` used (index lists of the
    leading axes) and the ``stack_mode``."""
    from ..pipeline import (
        DEFAULT_TILE_PX,
        Progress,
        iter_identify,
        iter_identify_stack,
        plane_indices,
    )

    if request.stack_mode not in IDENTIFY_STACK_MODES:
        raise ValueError(
            f"stack_mode must be one of {', '.join(IDENTIFY_STACK_MODES)}, "
            f"got {request.stack_mode!r}"
        )
    yield Progress(0, 0, "loading the model")
    model = _load(request.model, request.device)
    options = {
        "device": request.device,
        "augment": request.augment,
        "refine": request.refine,
        "tile_px": request.tile_px or DEFAULT_TILE_PX,
        "sampling": request.optics.sampling(),
    }
    shape = tuple(np.shape(request.data))
    mode = request.stack_mode if len(shape) > 2 else "plane"
    big = is_big_lazy(request.data)
    if mode == "median" and big:
        refuse_median(shape)
    if mode == "median":
        planes = plane_indices(shape)
        # every plane (max_planes: no subsampling); the loop and cancel points are the pipeline's
        estimate = yield from iter_identify_stack(
            request.data, model, mode="median", max_planes=len(planes), **options
        )
    else:
        planes = [tuple(request.plane)]
        yield Progress(0, 0, "reading the image")
        plane = request.data[request.plane] if request.plane else request.data
        if big:  # never read whole: a sample of windows
            estimate = yield from identify_in_windows(plane, model, options)
        else:
            estimate = yield from iter_identify(np.asarray(plane), model, **options)
    name = estimate_source(request.source, mode, request.plane)
    layers = estimate_layers(estimate, name, request.geometry, shape[-2:], request.kernel_grid)
    if len(shape) > 2:
        metadata = layers[0][1]["metadata"]
        metadata["stack_mode"] = mode
        metadata["planes"] = [[int(i) for i in index] for index in planes]
    return IdentifyResult(estimate, layers)


def identify_layers(request: IdentifyRequest) -> IdentifyResult:
    """The Identify widget without a viewer: run :func:`iter_identify_layers` to the end."""
    from ..pipeline import run

    return run(iter_identify_layers(request))


@dataclass
class DeblurRequest:
    """What the Deblur widget asks for. ``plane``: indices of the leading axes to deblur one
    plane, or None for all planes. ``estimate``: a ``BlurEstimate`` or None (identify first:
    that plane, or for all planes the plane with the most contrast); ``of_this_image``: it
    was identified on this image (its sampling is then the image's, whatever ``optics``
    says: :meth:`~napari_deepblur.pipeline.Sampling.for_deblurring`). ``noise``: override
    ``{"alpha", "beta"}`` in image units, or None (the estimate's)."""

    data: Any
    source: str
    plane: tuple[int, ...] | None = ()
    estimate: Any = None
    of_this_image: bool = False
    model: str | None = None
    optics: KnownOptics = field(default_factory=KnownOptics)
    device: str = "auto"
    strength: float = 1.0
    noise: dict | None = None
    geometry: dict = field(default_factory=dict)
    colormap: str | None = None


@dataclass
class DeblurResult:
    restored: np.ndarray
    estimate: Any
    layers: list[LayerDataTuple]


def iter_deblur_layers(request: DeblurRequest) -> Generator[Any, None, DeblurResult]:
    """Deblur one plane or every plane (identifying the blur first when no estimate is
    given: of that plane, or for all planes of the plane with the most contrast,
    :func:`~napari_deepblur.pipeline.representative_plane`); yields pipeline ``Progress``,
    returns the restored array and the layers to add: ``"<source> deblurred"`` (and, when it
    identified, first the PSF it used, named and tagged as the Identify widget's: a stack's
    PSF records the plane in ``metadata["planes"]``)."""
    from ..pipeline import (
        Progress,
        iter_deblur,
        iter_deblur_stack,
        iter_identify,
        representative_plane,
    )

    yield Progress(0, 0, "loading the model")
    model = _load(request.model, request.device)
    data = request.data
    if is_big_lazy(data):  # written block by block into an OME-Zarr, opened as multiscale
        return DeblurResult(*(yield from iter_deblur_big(request, model)))
    layers: list[LayerDataTuple] = []
    estimate = request.estimate
    sampling = request.optics.sampling()
    of_this_image = request.of_this_image
    prepared: dict = {}  # the plane identify prepares, deblurred without preparing it again
    if estimate is None:
        plane = representative_plane(data) if request.plane is None else tuple(request.plane)
        image = np.asarray(data[plane] if plane else data)
        estimate = yield from iter_identify(
            image, model, device=request.device, sampling=sampling, prepared=prepared
        )
        if request.plane is None:  # the stack's planes are keyed by their index
            prepared = {plane: prepared[()]}
        psf = psf_layer_data(
            estimate, estimate_source(request.source, plane=plane), request.geometry, image.shape
        )
        if plane:
            psf[1]["metadata"].update(stack_mode="plane", planes=[[int(i) for i in plane]])
        layers.append(psf)
        of_this_image = True
    # the estimate knows the sampling of the image it was identified on; the layer's optics
    # matter for a PSF from elsewhere
    options = dict(
        noise=request.noise,
        strength=request.strength,
        device=request.device,
        sampling=sampling.for_deblurring(estimate, of_this_image),
    )
    if request.plane is not None:
        yield Progress(0, 0, "reading the image")
        image = np.asarray(data[request.plane])
        restored = yield from iter_deblur(image, estimate, model, **options, prepared=prepared)
    else:  # every plane (or the only one), in the pipeline's plane loop
        restored = yield from iter_deblur_stack(data, estimate, model, **options, prepared=prepared)
    kwargs = deblurred_layer_kwargs(request, estimate)
    layers.append((restored.astype(np.float32, copy=False), kwargs, "image"))
    return DeblurResult(restored, estimate, layers)


def deblur_layers(request: DeblurRequest) -> DeblurResult:
    """The Deblur widget without a viewer: run :func:`iter_deblur_layers` to the end."""
    from ..pipeline import run

    return run(iter_deblur_layers(request))
