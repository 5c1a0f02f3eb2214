"""A parametric model of how a microscope's PSF changes across the field of view, and the
product-convolution family (Model 2.2) built from it.

Field positions are ``(y, x)`` fractions of the field in [0, 1] (0 = top/left edge); the
field radius ``r`` is 0 at the centre and 1 at the corners, and ``φ`` is the field angle
(0 along +x, the y axis pointing down as in image rows). Over the field:

- defocus grows with ``r²`` (field curvature) and with a tilt of the focal plane (linear
  in y and x);
- astigmatism grows with ``r²``, oriented along the field radius (``cos 2φ`` on vertical
  astigmatism Z6, ``sin 2φ`` on oblique astigmatism Z5);
- coma grows with ``r``, pointing along the radius (``cos φ`` on horizontal coma Z8,
  ``sin φ`` on vertical coma Z7);
- vignetting scales the PSF's total intensity by ``1 − v r²``;
- every term may also carry a constant part (``base``), the aberrations of the centre.

:func:`build_field_family` samples many random fields on a grid of positions and turns
their PSFs into a :class:`~napari_deepblur.optics.families.ProductConvolution`: eigen-PSFs by
PCA of all sampled PSFs, spatial maps by PCA of the fields of eigen-PSF weights, and the
parameters γ of every sampled field as the family's parameter bank (what training draws).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .families import FieldFamilyReport, ProductConvolution, grid_positions, pca_basis
from .psf import zernike_psf
from .zernike import DEFAULT_NOLL_INDICES

DEFOCUS, OBLIQUE_ASTIGMATISM, VERTICAL_ASTIGMATISM, VERTICAL_COMA, HORIZONTAL_COMA = 4, 5, 6, 7, 8


@dataclass
class FieldAberrations:
    """Zernike coefficients (waves RMS, Noll-normalised) that vary smoothly over the field.

    ``base``: Noll index → coefficient everywhere (the centre's aberrations).
    ``defocus_r2``, ``astigmatism_r2``: added at the corners (∝ r²); ``coma_r`` (∝ r);
    ``tilt_y``, ``tilt_x``: defocus added at the bottom / right edge, minus at the top / left;
    ``vignetting``: fraction of intensity lost at the corners.
    """

    base: dict[int, float] = field(default_factory=dict)
    defocus_r2: float = 0.0
    astigmatism_r2: float = 0.0
    coma_r: float = 0.0
    tilt_y: float = 0.0
    tilt_x: float = 0.0
    vignetting: float = 0.0

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        base_scale: float = 0.08,
        field_scale: float = 0.12,
        vignetting: float = 0.0,
        noll_indices=DEFAULT_NOLL_INDICES,
    ) -> FieldAberrations:
        """A random field: constant terms ``U[−base_scale, base_scale]`` on every Noll index,
        field terms ``U[−field_scale, field_scale]`` (tilt at half that), vignetting
        ``U[0, vignetting]``."""
        base = {int(j): float(rng.uniform(-base_scale, base_scale)) for j in noll_indices}
        f = rng.uniform(-field_scale, field_scale, 5)
        return cls(
            base, f[0], f[1], f[2], f[3] / 2, f[4] / 2, float(rng.uniform(0, vignetting))
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    def coefficients_at(self, positions, noll_indices=DEFAULT_NOLL_INDICES) -> np.ndarray:
        """Coefficients ``(S, K)`` at positions ``(S, 2)`` for the given Noll indices."""
        p = np.asarray(positions, np.float64).reshape(-1, 2)
        dy, dx = 2 * p[:, 0] - 1, 2 * p[:, 1] - 1
        r2 = (dy**2 + dx**2) / 2  # 1 at the corners
        phi = np.arctan2(dy, dx)
        r = np.sqrt(r2)
        terms = {
            DEFOCUS: self.defocus_r2 * r2 + self.tilt_y * dy + self.tilt_x * dx,
            VERTICAL_ASTIGMATISM: self.astigmatism_r2 * r2 * np.cos(2 * phi),
            OBLIQUE_ASTIGMATISM: self.astigmatism_r2 * r2 * np.sin(2 * phi),
            HORIZONTAL_COMA: self.coma_r * r * np.cos(phi),
            VERTICAL_COMA: self.coma_r * r * np.sin(phi),
        }
        columns = [
            self.base.get(int(j), 0.0) + terms.get(int(j), np.zeros(len(p))) for j in noll_indices
        ]
        return np.stack(columns, axis=1)

    def intensity_at(self, positions) -> np.ndarray:
        """Relative transmitted intensity ``1 − v r²`` at positions ``(S, 2)``."""
        p = np.asarray(positions, np.float64).reshape(-1, 2)
        r2 = ((2 * p[:, 0] - 1) ** 2 + (2 * p[:, 1] - 1) ** 2) / 2
        return 1 - self.vignetting * r2

    def psfs_at(
        self, positions, fc: float, size: int = 31, noll_indices=DEFAULT_NOLL_INDICES
    ) -> torch.Tensor:
        """PSFs ``(S, size, size)`` at positions ``(S, 2)``; each sums to the local
        intensity (1 without vignetting)."""
        coefficients = torch.as_tensor(self.coefficients_at(positions, noll_indices))
        psfs = zernike_psf(coefficients.float(), fc, size, tuple(noll_indices))
        scale = torch.as_tensor(self.intensity_at(positions), dtype=psfs.dtype)
        return psfs * scale[:, None, None]


def build_field_family(
    fields: list[FieldAberrations],
    fc: float = 0.2,
    num_psfs: int = 4,
    num_maps: int = 4,
    grid: int = 9,
    kernel_size: int = 31,
    map_px: int = 64,
    noll_indices=DEFAULT_NOLL_INDICES,
) -> tuple[ProductConvolution, FieldFamilyReport]:
    """The product-convolution family spanned by ``fields``.

    The PSFs of every field on a ``grid × grid`` lattice give the eigen-PSFs (uncentred PCA,
    ``num_psfs``); each field's weights on them, as functions over the lattice, give the
    spatial maps (uncentred PCA, ``num_maps``, upsampled bicubically to ``map_px``²). γ of a
    field is ``γ[i, j] = ⟨w_i, f_j⟩``; the γ of all fields become the parameter bank.
    Returns ``(family, report)``; the report's errors are those of the complete model
    against the true PSFs at the lattice positions.
    """
    if len(fields) < num_maps:
        raise ValueError(f"need at least {num_maps} fields to build {num_maps} maps")
    positions = grid_positions(grid)
    psfs = torch.stack(
        [f.psfs_at(positions, fc, kernel_size, noll_indices) for f in fields]
    ).double()  # (F, S, k, k)
    count, sites = psfs.shape[:2]
    eigen_psfs, psf_report = pca_basis(psfs.reshape(-1, kernel_size, kernel_size), num_psfs)
    flat_e = eigen_psfs.reshape(num_psfs, -1)
    weights = psfs.reshape(count, sites, -1) @ flat_e.T  # (F, S, I)
    weight_fields = weights.permute(0, 2, 1).reshape(-1, sites)  # (F·I, S)
    _, singular, vh = torch.linalg.svd(weight_fields, full_matrices=False)
    lattice_maps = vh[:num_maps]  # (J, S), orthonormal
    gamma = torch.einsum("fsi,js->fij", weights, lattice_maps).reshape(count, -1)
    fitted = torch.einsum("fij,js,ik->fsk", gamma.reshape(count, num_psfs, num_maps),
                          lattice_maps, flat_e)  # fmt: skip
    truth = psfs.reshape(count, sites, -1)
    relative = (fitted - truth).norm(dim=-1) / truth.norm(dim=-1)
    maps = torch.nn.functional.interpolate(
        lattice_maps.reshape(1, num_maps, grid, grid),
        size=(map_px, map_px),
        mode="bicubic",
        align_corners=True,
    )[0]
    report = FieldFamilyReport(
        num_psfs=num_psfs,
        num_maps=num_maps,
        psf_variance_captured=psf_report.variance_captured,
        map_variance_captured=float((singular[:num_maps] ** 2).sum() / (singular**2).sum()),
        mean_relative_error=float(relative.mean()),
        max_relative_error=float(relative.max()),
        num_fields=count,
        num_positions=sites,
    )
    family = ProductConvolution(
        eigen_psfs.float(),
        maps.float(),
        parameter_scale=float(gamma.abs().max()),
        parameter_bank=gamma.float(),
    )
    return family, report


def random_fields(count: int, seed: int = 0, **kwargs) -> list[FieldAberrations]:
    """``count`` fields from :meth:`FieldAberrations.random`, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [FieldAberrations.random(rng, **kwargs) for _ in range(count)]
