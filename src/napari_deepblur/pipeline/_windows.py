"""How the identification network's γ̂ is read off one image (or one tile of a large image).

The network is applied the way it was trained: on windows of its training size
(``IdentificationConfig.training_px``), each normalised on its own. The windows cover the
image with half-window overlap, windows with little contrast are skipped, and each window
may be seen in several of its 8 flips/transpositions (whose coefficients are mapped back to
the original orientation). The estimate is the coordinate-wise median of all predictions
after bringing them to one sign convention (the even-order terms of an in-focus PSF have no
observable sign), and the spread of those predictions is the reported uncertainty.

Why windows: fed a whole 256 px image, a network trained on 128 px crops loses most of its
accuracy as soon as there is noise (PSF SNR on the benchmark at level L1: −2.3 dB on whole
images, +4.8 dB with windows; measured 2026-11-25, see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .. import devices, notices
from ..devices import empty_cache, is_out_of_memory
from ..intensity import identification_inputs
from ..models import fall_back_to_cpu
from ..optics import EigenPSFConvolution, ZernikeConvolution

#: Network evaluations per image or tile: windows × dihedral copies (CPU time is linear in it).
MAX_EVALUATIONS = 64
#: Windows whose robust intensity range is below this fraction of the best window's are
#: skipped (empty background says nothing about the blur).
MIN_RELATIVE_CONTRAST = 0.2


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0…7) of the 8 flips/transpositions of images ``(…, H, W)``."""
    if k & 1:
        images = images.flip(-1)
    if k & 2:
        images = images.flip(-2)
    if k & 4:
        images = images.transpose(-2, -1)
    return images


@functools.lru_cache(maxsize=8)
def zernike_transform_matrices(noll: tuple[int, ...]) -> torch.Tensor:
    """``M_k (8, K, K)``: the PSF of the image transformed by ``dihedral(·, k)`` has
    coefficients ``M_k γ`` (flips and transposition act on the pupil the same way)."""
    from ..optics.zernike import zernike_basis

    rng = np.random.default_rng(0)
    r = np.sqrt(rng.random(4000))
    t = rng.random(4000) * 2 * np.pi
    fx, fy = r * np.cos(t), r * np.sin(t)
    base = zernike_basis(noll, r, t).T  # (S, K)
    mats = []
    for k in range(8):
        gx, gy = fx.copy(), fy.copy()
        if k & 1:
            gx = -gx
        if k & 2:
            gy = -gy
        if k & 4:
            gx, gy = gy, gx
        moved = zernike_basis(noll, np.hypot(gx, gy), np.arctan2(gy, gx)).T
        solution, *_ = np.linalg.lstsq(base, moved, rcond=None)
        mats.append(solution.T)
    return torch.as_tensor(np.stack(mats), dtype=torch.float32)


def window_starts(length: int, window: int) -> list[int]:
    """Start offsets of windows of ``window`` px covering ``length`` px, overlapping by
    about half a window."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / (window // 2)) + 1
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def align_signs(gammas: torch.Tensor, family, reference: torch.Tensor) -> torch.Tensor:
    """Each row of ``gammas (N, K)`` replaced by its equivalent closest to ``reference``
    (``(K,)``, or one row per row of ``gammas``)."""
    variants = torch.stack(family.equivalent_parameters(gammas), dim=1)  # (N, E, K)
    reference = reference[:, None] if reference.dim() == 2 else reference
    best = ((variants - reference) ** 2).sum(-1).argmin(-1)
    return variants[torch.arange(len(gammas)), best]


def robust_combine(gammas: torch.Tensor, family) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Median (K,) of predictions ``(N, K)`` in one sign convention, and their spread (std)."""
    aligned = align_signs(gammas, family, gammas[0])
    for _ in range(2):  # re-align to the median: the first prediction may be an outlier
        aligned = align_signs(aligned, family, aligned.median(0).values)
    centre = aligned.median(0).values if len(aligned) > 2 else aligned.mean(0)
    spread = aligned.std(0) if len(aligned) > 1 else None
    return centre, spread


def canonical_median(gammas: torch.Tensor, family) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`robust_combine` of predictions ``(N, K)``, the median in the family's canonical
    sign (Zernike: defocus ≥ 0), as estimates report it."""
    gamma, spread = robust_combine(gammas, family)
    if isinstance(family, ZernikeConvolution):
        gamma = family.canonical(gamma)
    return gamma, spread


def predict(model, windows: torch.Tensor) -> torch.Tensor:
    """The identification network on ``windows (N, 1, h, w)`` (on the model's device) →
    ``(N, K)`` float32. On a GPU out-of-memory error the windows go through in smaller
    batches (with a warning); when even one does not fit, the error is raised (see
    :func:`window_predictions` for the CPU fallback)."""
    batch = len(windows)
    while True:
        try:
            with model.inference():
                parts = [model.identification(windows[i : i + batch])
                         for i in range(0, len(windows), batch)]  # fmt: skip
            return torch.cat(parts).float()
        except Exception as exc:
            if not (is_out_of_memory(exc) and batch > 1):
                raise
        # out of the except clause: the failed batch's activations are freed
        empty_cache(model.device)
        batch //= 2
        notices.warn(
            f"out of memory on {model.device} identifying: retrying {batch} windows at a time",
            RuntimeWarning,
            stacklevel=2,
        )


@functools.lru_cache(maxsize=8)
def _eigen_transform_matrices(basis_bytes: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    basis = torch.from_numpy(np.frombuffer(basis_bytes, np.float32).reshape(shape).copy())
    flat = basis.reshape(len(basis), -1)
    gram_inv = torch.linalg.inv(flat @ flat.T)
    # the PSF Σ w_i e_i seen through dihedral k has weights M_k w: M_k = G⁻¹ ⟨e_a, D_k e_b⟩
    return torch.stack(
        [gram_inv @ (flat @ dihedral(basis, k).reshape(len(basis), -1).T) for k in range(8)]
    )


def transform_matrices(family) -> torch.Tensor | None:
    """``M_k (8, K, K)`` mapping a kernel's parameters to those of its ``dihedral(·, k)``
    copy, for Zernike and eigen-PSF families; ``None`` for others."""
    if isinstance(family, ZernikeConvolution):
        return zernike_transform_matrices(tuple(family.noll_indices))
    if isinstance(family, EigenPSFConvolution):
        basis = family.basis.detach().cpu().float().contiguous()
        return _eigen_transform_matrices(basis.numpy().tobytes(), tuple(basis.shape))
    return None


def window_predictions(
    model,
    image: torch.Tensor,
    family,
    augment: bool = True,
    max_evaluations: int = MAX_EVALUATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The identification network's parameters ``(N, K)`` (in ``family``'s units, on the
    CPU) for the windows of one image ``(H, W)`` at the model's sampling, and each window's
    centre ``(N, 2)`` (``y, x`` in pixels of ``image``); flipped copies come after the
    originals.

    The windows are cut, normalised and chosen on the CPU and go to the model's device as
    one batch, through one forward pass, and back in one copy: on a GPU the pass is not held
    up by small kernels and reads back. When the device runs out of memory (even for one
    window at a time), the network runs on the model's CPU copy
    (:func:`~napari_deepblur.models.fall_back_to_cpu`)."""
    windows, centres, copies = _chosen_windows(
        model.identification.config, image.cpu(), family, augment, max_evaluations
    )
    try:
        predicted = predict(model, windows.to(model.device)).cpu()
    except Exception as exc:
        if not (is_out_of_memory(exc) and devices.can_fall_back_to_cpu(model.device)):
            raise
        predicted = None  # out of the except clause: the failed pass's memory is freed
    if predicted is None:
        predicted = predict(fall_back_to_cpu(model, "identifying"), windows)
    _check_finite_outputs(predicted, model)
    return _to_original_orientation(predicted, family, copies), centres.repeat(copies, 1)


def _chosen_windows(config, image: torch.Tensor, family, augment: bool, max_evaluations: int):
    """``(windows (copies·N, 1, w, w), centres (N, 2), copies)``: the normalised windows
    of ``image`` with enough contrast, at most ``max_evaluations`` with their dihedral
    copies, the originals first. ``config``: the identification network's."""
    window = max(config.min_size, min(config.training_px, *image.shape))
    window = min(window, *image.shape)
    positions = [
        (t, l)
        for t in window_starts(image.shape[0], window)
        for l in window_starts(image.shape[1], window)
    ]
    crops = torch.stack([image[t : t + window, l : l + window] for t, l in positions])
    centres = torch.tensor(positions, dtype=torch.float32) + (window - 1) / 2
    y_n, _, contrast = identification_inputs(crops)
    contrast = contrast.flatten()
    keep = contrast >= MIN_RELATIVE_CONTRAST * contrast.max()
    y_n, centres = y_n[keep], centres[keep]
    if len(y_n) > max_evaluations:
        pick = torch.as_tensor(
            np.unique(np.linspace(0, len(y_n) - 1, max_evaluations).round().astype(int))
        )
        y_n, centres = y_n[pick], centres[pick]
    copies = 1
    if augment and transform_matrices(family) is not None:
        copies = 2 ** int(math.log2(max(1, min(8, max_evaluations // len(y_n)))))
    return torch.cat([dihedral(y_n, k) for k in range(copies)]), centres, copies


def _to_original_orientation(predicted: torch.Tensor, family, copies: int) -> torch.Tensor:
    """Network outputs ``(copies·N, K)`` for the dihedral copies of N windows → the
    parameters of the windows themselves, in ``family``'s units (``γ = M_k⁻¹ γ'``)."""
    predicted = (predicted * family.parameter_scale).reshape(copies, -1, predicted.shape[-1])
    if copies > 1:
        mats = transform_matrices(family)[:copies]  # (copies, K, K)
        predicted = torch.linalg.solve(mats, predicted.transpose(1, 2)).transpose(1, 2)
    return predicted.reshape(-1, predicted.shape[-1])


def identify_in_windows(
    model, image: torch.Tensor, augment: bool = True, max_evaluations: int = MAX_EVALUATIONS
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """γ̂ ``(K,)`` (waves RMS for Zernike families) and its spread for one image ``(H, W)``
    at the model's sampling, in the intensity units of the image (any range)."""
    predictions, _ = window_predictions(model, image, model.family, augment, max_evaluations)
    return robust_combine(predictions, model.family)


def _check_finite_outputs(predictions: torch.Tensor, model) -> None:
    """A ValueError when the identification network returned NaN or infinite values: its
    inputs are checked before (finite, normalised), so the weights are to blame."""
    if not bool(torch.isfinite(predictions).all()):
        raise ValueError(
            f"the identification network of model {model.name!r} returned NaN or infinite "
            "values; its weights are probably damaged: reinstall the model or use another one"
        )
