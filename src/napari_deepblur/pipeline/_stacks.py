"""Stacks: Z, T, C planes identified and deblurred plane by plane."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import replace

import numpy as np
import torch

from .. import notices
from ..devices import resolve_device
from ..intensity import ConstantImageError
from ..models import DeepBlurModel, as_model, load_model
from ..optics import (
    zernike_psf,
)
from ._deblur import _check_estimate, _deblurring_model, _iter_tiles, deblur_setup
from ._estimate import BlurEstimate
from ._identify import identify_plane
from ._prepare import (
    _check_dtype,
    as_image,
    check_finite,
    check_noise_and_strength,
    plane_indices,
    plane_label,
)
from ._progress import Progress
from ._sampling import Sampling, field_psf
from ._tiling import DEFAULT_TILE_PX
from ._windows import canonical_median


def _check_stack(stack) -> None:
    shape = tuple(stack.shape)
    if len(shape) == 3 and shape[-1] in (3, 4):
        raise ValueError(
            f"this looks like an RGB(A) image (shape {shape}); Deep-Blur works on one "
            "fluorescence channel: split the channels and process each one"
        )
    plane_indices(shape)
    _check_dtype(stack.dtype)


def plane_index(stack_shape, plane) -> tuple[int, ...]:
    """A plane given as a flat number (C order over the leading axes) or an index tuple →
    the index tuple, checked against ``stack_shape``."""
    leading = tuple(stack_shape[:-2])
    count = int(np.prod(leading)) if leading else 1
    if isinstance(plane, int | np.integer):
        if not -count <= plane < count:
            raise ValueError(f"plane {plane} is out of range: the image has {count} plane(s)")
        return tuple(int(i) for i in np.unravel_index(int(plane) % count, leading))
    plane = tuple(int(i) for i in plane)
    if len(plane) != len(leading) or any(not 0 <= i < n for i, n in zip(plane, leading)):  # noqa: B905
        raise ValueError(f"plane {plane} is not an index of the leading axes {leading}")
    return plane


def representative_plane(stack) -> tuple[int, ...]:
    """The plane with the largest robust contrast (99.9th − 1st percentile, subsampled):
    in a Z stack usually the one nearest focus, and never an empty plane."""
    best, best_score = (), -np.inf
    for index in plane_indices(stack.shape):
        plane = stack[index]
        step = max(1, int(np.ceil(np.sqrt(plane.shape[0] * plane.shape[1] / 65536))))
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: refused when read
            sub = np.asarray(plane[::step, ::step], dtype=np.float32)
            low, high = np.nanpercentile(sub, [1.0, 99.9])
        if high - low > best_score:
            best, best_score = index, high - low
    return best


def combine_estimates(estimates: list[BlurEstimate], model=None) -> BlurEstimate:
    """One estimate from several (planes of a stack): the median coefficients (each aligned
    to the first among its unobservable sign flips), the median noise, and as uncertainty the
    larger of the mean reported spread and the spread over planes."""
    if not estimates:
        raise ValueError("no estimates to combine")
    if len(estimates) == 1:
        return estimates[0]
    if isinstance(model, DeepBlurModel):
        family = model.family
    else:  # a name or path (default: the shipped model); its family only
        family = load_model(model, device=resolve_device("auto")).family
    gammas = torch.stack([torch.as_tensor(e.coefficients, dtype=torch.float32) for e in estimates])
    gamma, _ = canonical_median(gammas, family)
    spread = gammas.std(0)
    reported = [torch.as_tensor(e.uncertainty) for e in estimates if e.uncertainty is not None]
    if reported:
        spread = torch.maximum(spread, torch.stack(reported).mean(0))
    first = estimates[0]
    coefficients = gamma.numpy().astype(np.float32)
    field_estimate = None
    if first.field is not None:  # the same field, with the median γ
        field_estimate = replace(first.field, gamma=coefficients)
        psf = field_psf(field_estimate, first.fc)
    else:
        psf = zernike_psf(torch.as_tensor(coefficients), first.fc, 31, first.noll_indices).numpy()
    noise = {
        k: float(np.median([e.noise.get(k, 0.0) for e in estimates])) for k in ("alpha", "beta")
    }
    return BlurEstimate(
        coefficients,
        first.noll_indices,
        first.fc,
        psf,
        noise,
        list(first.names),
        first.model,
        first.optics,
        spread.numpy().astype(np.float32),
        [],
        field_estimate,
    )


#: How a stack is identified: one representative (or given) plane, the median over planes,
#: or one estimate per plane.
STACK_MODES = ("plane", "median", "per-plane")

#: Each plane's sampling, by its index over the leading axes (channels at their wavelengths).
PlaneSampling = Callable[[tuple[int, ...]], Sampling]


def _per_plane(sampling: Sampling | PlaneSampling | None, optics: dict) -> PlaneSampling:
    """``sampling`` as a function of the plane index: one :class:`Sampling` (or ``optics``)
    is every plane's; a function gives each plane its own."""
    if callable(sampling):
        if any(value is not None for value in optics.values()):
            raise ValueError("give the planes' sampling function or optics, not both")
        return sampling
    shared = Sampling.given(sampling, **optics)
    return lambda index: shared


def iter_identify_stack(
    stack,
    model=None,
    *,
    mode: str = "plane",
    plane=None,
    max_planes: int = 8,
    device="auto",
    sampling: Sampling | PlaneSampling | None = None,
    augment: bool = True,
    tile_px: int = DEFAULT_TILE_PX,
    refine: bool = False,
    prepared: dict | None = None,
    **optics,
) -> Generator[Progress, None, BlurEstimate | list[BlurEstimate]]:
    """Identify the blur of a stack ``(…, Y, X)`` (Z, T, C planes) plane by plane, yielding
    :class:`Progress` in planes (stop iterating to cancel).

    ``mode="plane"``: one shared estimate from ``plane`` (a flat plane number or an index
    tuple; default :func:`representative_plane`). ``"median"``: the median
    (:func:`combine_estimates`) over up to ``max_planes`` evenly spaced planes.
    ``"per-plane"``: a list with one estimate per plane, in :func:`plane_indices` order.
    ``sampling`` (or ``optics``), ``augment``, ``tile_px``, ``refine``: as for
    :func:`identify`; ``sampling`` may also be a function of the plane index giving each
    plane its own (channels imaged at different wavelengths: see
    :func:`~napari_deepblur.batch.stack_sampling`). A 2D image is a stack of one plane.
    ``prepared``: a dict that receives each plane identified, prepared (by index), for
    :func:`iter_deblur_stack` of the same stack to reuse.
    """
    if mode not in STACK_MODES:
        raise ValueError(f"mode must be one of {', '.join(STACK_MODES)}, got {mode!r}")
    _check_stack(stack)
    model = as_model(model, device)
    sampling_of = _per_plane(sampling, optics)
    indices = plane_indices(stack.shape)
    if mode == "plane":
        chosen = [representative_plane(stack) if plane is None else plane_index(stack.shape, plane)]
    elif mode == "median":
        picks = np.unique(np.linspace(0, len(indices) - 1, min(max_planes, len(indices))).round())
        chosen = [indices[int(i)] for i in picks]
    else:
        chosen = indices
    if mode != "per-plane" and len({sampling_of(index).fc for index in chosen}) > 1:
        raise ValueError(
            "the planes are sampled differently (channels imaged at different wavelengths): "
            "they cannot share one estimate; identify each plane on its own"
        )
    prepared = {} if prepared is None else prepared
    estimates: dict[tuple[int, ...], BlurEstimate] = {}
    tiles = len(chosen) == 1  # one plane: its tiles are the steps; else the planes are
    min_size = model.identification.config.min_size
    for k, index in enumerate(chosen):
        label = plane_label(index, stack.shape)
        inner = _identify_plane_of(
            stack, index, min_size, model, sampling_of(index), augment, tile_px, refine
        )
        p = Progress(0, 1)
        while True:
            try:
                p = next(inner)
            except StopIteration as stop:
                estimates[index], prepared[index] = stop.value
                break
            except ConstantImageError:
                if mode == "plane":
                    raise
                break
            done, total = (p.done, p.total) if tiles else (k, len(chosen))
            yield Progress(done, total, f"identifying {label}: {p.message}")
        done, total = (p.total, p.total) if tiles else (k + 1, len(chosen))
        yield Progress(done, total, f"identified {label}")
    return _stack_estimate(mode, chosen, estimates, model)


def _identify_plane_of(stack, index, min_size, model, sampling, *options):
    """:func:`identify_plane` of the plane ``index`` of ``stack``, read when first asked."""
    raw = as_image(stack[index], min_size)
    return (yield from identify_plane(raw, model, sampling, *options))


def _stack_estimate(mode: str, chosen, estimates: dict, model):
    """The result of :func:`iter_identify_stack` from the estimates of its ``chosen``
    planes; constant planes (absent from ``estimates``) are left out of the median, and in
    per-plane mode get the median of the others (deblurring copies them unchanged)."""
    constant = [index for index in chosen if index not in estimates]
    if not estimates:
        raise ConstantImageError(
            f"every plane identified ({len(chosen)}) is constant: there is no structure "
            "from which to estimate the blur"
        )
    if constant:
        shown = ", ".join(str(index) for index in constant[:5]) + (
            " …" if len(constant) > 5 else ""
        )
        notices.warn(
            f"{len(constant)} constant plane(s) left out of the identification: {shown}",
            RuntimeWarning,
            stacklevel=3,
        )
    if mode == "plane":
        return estimates[chosen[0]]
    combined = combine_estimates(list(estimates.values()), model)
    if mode == "median":
        return combined
    return [estimates.get(index, combined) for index in chosen]


def iter_deblur_stack(
    stack,
    estimate: BlurEstimate | list[BlurEstimate] | None = None,
    model=None,
    *,
    mode: str = "plane",
    plane=None,
    out=None,
    sampling: Sampling | PlaneSampling | None = None,
    noise=None,
    strength: float = 1.0,
    device="auto",
    tile_px: int = DEFAULT_TILE_PX,
    prepared: dict | None = None,
    **optics,
) -> Generator[Progress, None, np.ndarray]:
    """Deblur a stack ``(…, Y, X)`` plane by plane, yielding :class:`Progress` in planes
    (stop iterating to cancel; the planes done are in ``out``).

    ``estimate``: one :class:`BlurEstimate` shared by all planes, a list with one per plane,
    or None to identify first with :func:`iter_identify_stack` (``mode``, ``plane``).
    ``out``: where to write (an array-like of the stack's shape, e.g. a memory-mapped TIFF;
    default a new float32 array), returned at the end. ``sampling`` (or ``optics``; or a
    function of the plane index, as for :func:`iter_identify_stack`), ``noise``,
    ``strength``: as for :func:`deblur`. Each plane is normalised on its own and
    tiled like :func:`deblur`; the planes identified are prepared once for both (and so are
    those in ``prepared``, the dict given to :func:`iter_identify_stack` of this stack).
    """
    _check_stack(stack)
    model = _deblurring_model(model, device)
    sampling_of = _per_plane(sampling, optics)
    check_noise_and_strength(noise, strength)
    check_finite(stack)
    indices = plane_indices(stack.shape)
    prepared = {} if prepared is None else prepared
    identified_here = estimate is None
    if estimate is None:
        estimate = yield from iter_identify_stack(
            stack,
            model,
            mode=mode,
            plane=plane,
            device=device,
            sampling=sampling_of,
            tile_px=tile_px,
            prepared=prepared,
        )
    if isinstance(estimate, list | tuple):
        if len(estimate) != len(indices):
            raise ValueError(f"{len(estimate)} estimates given for {len(indices)} planes")
        estimates = list(estimate)
    else:
        estimates = [estimate] * len(indices)
    if out is None:
        out = np.empty(tuple(stack.shape), np.float32)
    elif tuple(out.shape) != tuple(stack.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the stack {tuple(stack.shape)}")
    n = len(indices)
    for k, (index, est) in enumerate(zip(indices, estimates)):  # noqa: B905
        source = stack[index]
        label = plane_label(index, stack.shape)
        ready = prepared.get(index)
        try:
            try:
                _check_estimate(est)
                plane_sampling = sampling_of(index).for_deblurring(
                    est, of_this_image=identified_here
                )
                setup = deblur_setup(source, est, model, plane_sampling, noise, strength, ready)
            except ConstantImageError:
                if not index:
                    raise
                _copy_constant_plane(source, _PlaneView(out, index), label)
                yield Progress(k + 1, n, f"copied {label} (constant)")
                continue
            tiles = _iter_tiles(
                source,
                _PlaneView(out, index),
                setup,
                est,
                model,
                tile_px,
                scanned=True,
                plane=ready,
            )
            for p in tiles:
                yield Progress(k, n, f"{label}: {p.message}")
        except ValueError as exc:
            if not index:
                raise
            raise ValueError(f"{label}: {exc}") from exc
        yield Progress(k + 1, n, f"deblurred {label}")
    return out


def _copy_constant_plane(source, out, label: str, rows_per_block: int = 1024) -> None:
    """A constant plane has no blur to remove: it is its own deblurred version (copied in
    blocks of rows, so a huge plane needs no more memory than a tile)."""
    notices.warn(
        f"{label} is constant: copied unchanged (it shows no structure to deblur)",
        RuntimeWarning,
        stacklevel=3,
    )
    for top in range(0, source.shape[0], rows_per_block):
        out[top : top + rows_per_block] = np.asarray(source[top : top + rows_per_block], np.float32)


class _PlaneView:
    """Row-slice writes into one plane of an N-D array-like (zarr slices are copies)."""

    def __init__(self, array, index: tuple[int, ...]):
        self.array, self.index = array, index
        self.shape, self.dtype = tuple(array.shape[len(index) :]), array.dtype

    def __setitem__(self, key, value):
        key = key if isinstance(key, tuple) else (key,)
        self.array[self.index + key] = value
