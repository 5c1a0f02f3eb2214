"""A space-varying blur estimate: the local PSF anywhere in the field of one image.

It is the product-convolution model ``A x = Σ_i e_i ⋆ (m_i ⊙ x)`` bound to an image: the
eigen-PSFs ``e_i`` (at the model's sampling), the spatial maps ``f_j`` over the whole image
and the estimated ``γ``, so that the multipliers are ``m_i = Σ_j γ[i, j] f_j`` and the
local PSF at a pixel is ``Σ_i m_i(y, x) e_i``. Positions are in pixels of the image (row y,
column x); the maps span the image from its first to its last pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .optics.families import ProductConvolution, ProductConvolutionOperator


@dataclass
class FieldEstimate:
    """``eigen_psfs (I, k, k)`` sampled at ``fc`` cycles/pixel (the model's sampling),
    ``maps (J, Hm, Wm)``, ``gamma (I·J,)`` row-major ``γ[i, j]``, and ``shape`` ``(H, W)`` of
    the image the maps span, in the image's own pixels."""

    eigen_psfs: np.ndarray
    maps: np.ndarray
    gamma: np.ndarray
    shape: tuple[int, int]
    fc: float

    @classmethod
    def from_family(cls, family: ProductConvolution, gamma, shape, fc: float) -> FieldEstimate:
        return cls(
            family.eigen_psfs.detach().cpu().numpy().astype(np.float32),
            family.maps.detach().cpu().numpy().astype(np.float32),
            np.asarray(torch.as_tensor(gamma).detach().cpu(), np.float32),
            (int(shape[0]), int(shape[1])),
            float(fc),
        )

    def family(self) -> ProductConvolution:
        return ProductConvolution(torch.from_numpy(self.eigen_psfs), torch.from_numpy(self.maps))

    @property
    def num_psfs(self) -> int:
        return self.eigen_psfs.shape[0]

    @property
    def num_maps(self) -> int:
        return self.maps.shape[0]

    def _fractions(self, y, x) -> torch.Tensor:
        h, w = self.shape
        y = np.asarray(y, np.float64).reshape(-1) / max(h - 1, 1)
        x = np.asarray(x, np.float64).reshape(-1) / max(w - 1, 1)
        return torch.from_numpy(np.stack([y, x], axis=1)).float()

    def weights_at(self, y, x) -> np.ndarray:
        """Eigen-PSF weights ``(S, I)`` at pixel positions ``y, x`` (scalars or arrays),
        normalised so that each local PSF sums to 1."""
        family = self.family()
        weights = family.local_weights(torch.from_numpy(self.gamma), self._fractions(y, x))
        return family.normalised_weights(weights).numpy()

    def psf_at(self, y: float, x: float) -> np.ndarray:
        """The local PSF ``(k, k)`` at pixel ``(y, x)``, normalised to sum 1."""
        return self.psfs_at(y, x)[0]

    def psfs_at(self, y, x) -> np.ndarray:
        """Local PSFs ``(S, k, k)`` at pixel positions, each normalised to sum 1."""
        psfs = np.tensordot(self.weights_at(y, x), self.eigen_psfs, axes=(1, 0))
        return psfs.astype(np.float32)

    def multipliers(self, rows=None, cols=None, out_shape=None) -> torch.Tensor:
        """``m_i`` ``(I, h, w)`` over the image region ``rows × cols`` (pixel bounds,
        ``(start, stop)``; default: the whole image), sampled on ``out_shape`` points
        (default: one per pixel of the region), normalised so that the local PSF sums to 1."""
        h, w = self.shape
        rows = rows or (0, h)
        cols = cols or (0, w)
        out_shape = out_shape or (rows[1] - rows[0], cols[1] - cols[0])
        ys = np.linspace(rows[0], rows[1] - 1, out_shape[0])
        xs = np.linspace(cols[0], cols[1] - 1, out_shape[1])
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        weights = self.weights_at(yy.reshape(-1), xx.reshape(-1))  # (S, I)
        return torch.from_numpy(weights.T.reshape(-1, *out_shape).astype(np.float32))

    def operator(
        self, rows, cols, out_shape, device, boundary: str = "reflect", cg_iterations: int = 20
    ) -> ProductConvolutionOperator:
        """The blur operator over an image region (see :meth:`multipliers`), acting on
        images ``(1, 1, h, w)`` of ``out_shape``."""
        multipliers = self.multipliers(rows, cols, out_shape).to(device)
        kernels = torch.from_numpy(self.eigen_psfs).to(device)
        return ProductConvolutionOperator(kernels, multipliers[None, None], boundary, cg_iterations)

    def to_dict(self) -> dict:
        return {
            "eigen_psfs": self.eigen_psfs.tolist(),
            "maps": self.maps.tolist(),
            "gamma": self.gamma.tolist(),
            "shape": list(self.shape),
            "fc": self.fc,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FieldEstimate:
        return cls(
            np.asarray(d["eigen_psfs"], np.float32),
            np.asarray(d["maps"], np.float32),
            np.asarray(d["gamma"], np.float32),
            (int(d["shape"][0]), int(d["shape"][1])),
            float(d["fc"]),
        )


def cell_centres(shape, count: int) -> np.ndarray:
    """Pixel positions ``(count², 2)`` (``y, x``) of the centres of a ``count × count`` grid
    of equal cells over an image of ``shape``, row-major."""
    h, w = shape
    ys = (np.arange(count) + 0.5) * h / count - 0.5
    xs = (np.arange(count) + 0.5) * w / count - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.reshape(-1), xx.reshape(-1)], axis=1)
