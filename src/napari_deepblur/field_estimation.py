"""How the γ of a space-varying (product-convolution) family is read off one image.

The identification network reads the local PSF in windows all over the image (as for one
PSF, :mod:`napari_deepblur.estimation`), each window in several flipped/rotated copies.
The readings are then fitted by a smooth field:

- a network that reads Zernike coefficients (``local_reader``, e.g. the shipped Zernike
  model): the coefficients of each window (median of its copies, in the sign convention of
  the whole image's estimate) are fitted by polynomials of degree ≤ 2 in the field position
  — the form field curvature, astigmatism, coma and a focal-plane tilt take — shrunk towards
  the whole image's coefficients (one PSF for the field) as far as the readings' noise
  requires; the PSFs of that coefficient field on a 9 × 9 lattice are then projected on the
  family. Fitting coefficients, not PSFs, avoids the broadening that averaging noisy PSFs
  brings.
- a network that reads the family's eigen-PSF weights: the weights are fitted by the
  family's maps, with the family's prior centred on the whole image's estimate
  (:meth:`ProductConvolution.fit_parameters`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .estimation import align_signs, check_predictions, robust_combine, window_predictions
from .optics import EigenPSFConvolution, ProductConvolution, ZernikeConvolution
from .optics.families import legendre_maps
from .optics.field import grid_positions

#: Polynomial degree of the fitted coefficient field (field curvature, astigmatism: 2).
COEFFICIENT_FIELD_DEGREE = 2
#: Typical size of the field terms of a coefficient (waves RMS): the prior of the fit.
#: Chosen on validation draws of the fig10 protocol (seed 7, not the benchmark's seed 0;
#: 10 pairs): whole-field PSF SNR 12.5 / 11.7 dB at L0 and 8.0 / 7.1 dB at L1 for 0.03 / 0.1.
FIELD_TERM_SCALE = 0.03


@dataclass
class WindowReadings:
    """The network's readings: ``copies (C, N, K)`` for ``N`` windows seen in ``C`` copies
    (in the reader family's units) and the windows' ``positions (N, 2)`` as ``(y, x)``
    fractions of the field."""

    copies: torch.Tensor
    positions: torch.Tensor


def read_windows(model, tile: torch.Tensor, reader, augment: bool, origin, shape) -> WindowReadings:
    """Readings of the windows of one tile ``(h, w)`` whose top-left pixel is ``origin`` in
    an image of ``shape`` (both at the model's sampling)."""
    predicted, centre = window_predictions(model, tile.to(model.device), reader, augment)
    check_predictions(predicted, model)
    windows = len(torch.unique(centre, dim=0))
    centre = centre[:windows] + torch.tensor(origin, dtype=centre.dtype)
    positions = centre / torch.tensor([max(n - 1, 1) for n in shape], dtype=centre.dtype)
    return WindowReadings(predicted.cpu().reshape(-1, windows, predicted.shape[-1]), positions)


def fit_field(family: ProductConvolution, reader, readings: list[WindowReadings]) -> torch.Tensor:
    """γ ``(K,)`` of the family from the readings of all tiles of one image (tiles may see
    their windows in different numbers of copies)."""
    positions = torch.cat([r.positions for r in readings])
    everything = torch.cat([r.copies.reshape(-1, r.copies.shape[-1]) for r in readings])
    overall, _ = robust_combine(everything, reader)
    if isinstance(reader, ZernikeConvolution):
        return _fit_coefficient_field(family, reader, readings, positions, overall)
    if isinstance(reader, EigenPSFConvolution):
        per_window = family.normalised_weights(
            torch.cat([r.copies.median(0).values for r in readings])
        )
        return _fit_weights(family, per_window, positions, family.normalised_weights(overall))
    raise ValueError(f"cannot fit a field to readings of a {type(reader).__name__}")


def _fit_coefficient_field(family, reader, readings, positions, overall) -> torch.Tensor:
    per_window = torch.stack(
        [
            robust_combine(r.copies[:, n], reader)[0]
            for r in readings
            for n in range(r.copies.shape[1])
        ]
    )
    per_window = align_signs(per_window, reader, overall)  # (N, K) one sign convention
    design = legendre_maps(positions.double(), COEFFICIENT_FIELD_DEGREE)  # (N, P)
    spreads = [r.copies.std(0).mean(0) for r in readings if len(r.copies) > 1]
    noise = (
        torch.stack(spreads).mean(0).double() ** 2
        if spreads
        else torch.full((reader.num_parameters,), 1e-3, dtype=torch.float64)
    )
    # ridge on the field terms (not the constant): noise / prior variance, per coefficient
    shrink = (noise / FIELD_TERM_SCALE**2).clamp_min(1e-6)
    target = per_window.double() - overall.double()  # departures from one PSF
    coefficients = []
    for k in range(reader.num_parameters):
        penalty = torch.full((design.shape[1],), float(shrink[k]), dtype=torch.float64)
        penalty[0] = 1e-9  # the constant term is free
        normal = design.T @ design + torch.diag(penalty)
        coefficients.append(torch.linalg.solve(normal, design.T @ target[:, k]))
    coefficients = torch.stack(coefficients, dim=1)  # (P, K)
    lattice = grid_positions(9)
    field = overall.double() + legendre_maps(lattice, COEFFICIENT_FIELD_DEGREE) @ coefficients
    psfs = reader.psf(field.float())
    return family.project(psfs, lattice.float())


def _fit_weights(family, readings, positions, overall) -> torch.Tensor:
    """Eigen-PSF weights ``(N, I)``: MAP fit with the prior centred on one PSF for the
    field, the readings' noise variance taken as their spread about ``overall`` (an upper
    bound: it includes the field's true variation)."""
    floor = float(0.01 * overall.abs().max()) ** 2
    variance = ((readings - overall) ** 2).mean(0).clamp_min(floor)
    return family.fit_parameters(readings, positions, variance, family.constant_parameters(overall))
