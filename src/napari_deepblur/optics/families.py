"""Blur operator families ``A(γ)`` with a low-dimensional parameter ``γ`` (Deep-Blur §2).

Every family shares one interface:

- ``num_parameters`` — the length K of γ;
- ``operator(γ, image_shape)`` — the operator bound to γ (kernels/OTFs computed once);
- ``forward(x, γ)``, ``adjoint(y, γ)``, ``regularized_inverse(y, γ, λ)`` — shortcuts;
- ``parameter_scale`` — a typical magnitude of γ (networks predict ``γ / scale`` ≈ [−1, 1]);
- ``config()`` / ``tensors()`` and :func:`family_from_state` — to save it in a model file.

Families:

1. :class:`ZernikeConvolution` (Model 2.3): PSF of a pupil with phase ``2π Σ γ_k Z_k``.
2. :class:`EigenPSFConvolution` (Model 2.1): ``A(γ)x = (Σ_k γ_k e_k) ⋆ x``, basis by PCA.
3. :class:`ProductConvolution` (Model 2.2), space-varying:
   ``A(γ)x = Σ_i e_i ⋆ ((Σ_j γ[i,j] f_j) ⊙ x)``, eigen-PSFs ``e_i``, spatial maps ``f_j``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .convolution import Convolution, _as_map
from .psf import zernike_psf
from .zernike import DEFAULT_NOLL_INDICES, is_even_order, zernike_name


class OperatorFamily:
    """Base class: the shortcuts shared by all families."""

    num_parameters: int
    kernel_size: int
    parameter_scale: float = 1.0
    kind: str = "family"

    def operator(self, gamma: torch.Tensor, image_shape: tuple[int, int]):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return self.operator(gamma, x.shape[-2:]).forward(x)

    def adjoint(self, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return self.operator(gamma, y.shape[-2:]).adjoint(y)

    def regularized_inverse(self, y: torch.Tensor, gamma: torch.Tensor, lam) -> torch.Tensor:
        return self.operator(gamma, y.shape[-2:]).regularized_inverse(y, lam)

    def config(self) -> dict:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def equivalent_parameters(self, gamma: torch.Tensor) -> list[torch.Tensor]:
        """All parameter vectors that give exactly the same operator as ``gamma``."""
        return [gamma]

    #: Parameter vectors ``(N, K)`` that training draws from (e.g. measured or sampled
    #: from a physical model); ``None``: uniform in ``[−parameter_scale, parameter_scale]``.
    parameter_bank: torch.Tensor | None = None
    #: Gaussian jitter added to bank draws, in units of ``parameter_scale``.
    parameter_jitter: float = 0.0

    def sample_parameters(
        self, count: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Draw ``count`` random parameter vectors ``(count, K)`` for training: rows of the
        parameter bank (plus jitter) when there is one, else uniform."""
        if self.parameter_bank is None:
            u = torch.rand(count, self.num_parameters, generator=generator, device=device)
            return (2 * u - 1) * self.parameter_scale
        bank = self.parameter_bank.to(device)
        rows = torch.randint(len(bank), (count,), generator=generator, device=device)
        gamma = bank[rows]
        if self.parameter_jitter:
            noise = torch.randn(gamma.shape, generator=generator, device=device)
            gamma = gamma + self.parameter_jitter * self.parameter_scale * noise
        return gamma

    def _bank_config(self) -> dict:
        return {"parameter_jitter": self.parameter_jitter} if self.parameter_jitter else {}

    def _bank_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.parameter_bank is None else {"parameter_bank": self.parameter_bank}


class _KernelFamily(OperatorFamily):
    """A convolution family: one kernel per γ, ``psf(γ)`` defines everything."""

    boundary: str = "reflect"

    def psf(self, gamma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def operator(self, gamma, image_shape):
        return Convolution(self.psf(gamma), image_shape, self.boundary)


class ZernikeConvolution(_KernelFamily):
    """Convolution with the PSF of Zernike coefficients γ (waves RMS) at cutoff ``fc``.

    ``parameter_scale`` is the half-width η of the training range ``γ_k ~ U[−η, η]``.
    """

    kind = "zernike"

    def __init__(
        self,
        fc: float = 0.2,
        noll_indices: Iterable[int] = DEFAULT_NOLL_INDICES,
        kernel_size: int = 31,
        parameter_scale: float = 0.15,
        boundary: str = "reflect",
    ):
        self.fc = float(fc)
        self.noll_indices = tuple(int(j) for j in noll_indices)
        self.kernel_size = int(kernel_size)
        self.parameter_scale = float(parameter_scale)
        self.boundary = boundary
        self.num_parameters = len(self.noll_indices)

    @property
    def names(self) -> list[str]:
        return [zernike_name(j) for j in self.noll_indices]

    @property
    def even_mask(self) -> torch.Tensor:
        """1 for even-order terms (sign not observable in focus), 0 for odd-order ones."""
        return torch.tensor([float(is_even_order(j)) for j in self.noll_indices])

    def psf(self, gamma):
        return zernike_psf(gamma, self.fc, self.kernel_size, self.noll_indices)

    def equivalent_parameters(self, gamma):
        """γ and γ with all even-order terms negated: the same in-focus PSF."""
        return [gamma, gamma * (1 - 2 * self.even_mask.to(gamma))]

    def canonical(self, gamma: torch.Tensor) -> torch.Tensor:
        """The representative of ``{γ, γ with even terms negated}`` with defocus ≥ 0.

        Both give the same in-focus PSF; the sign is set by the first even term (defocus in
        the default family), so reported coefficients are unique.
        """
        evens = [i for i, j in enumerate(self.noll_indices) if is_even_order(j)]
        if not evens:
            return gamma
        flip = (gamma[..., evens[0] : evens[0] + 1] < 0).to(gamma.dtype)
        return gamma * (1 - 2 * flip * self.even_mask.to(gamma))

    def config(self):
        return {
            "kind": self.kind,
            "fc": self.fc,
            "noll_indices": list(self.noll_indices),
            "kernel_size": self.kernel_size,
            "parameter_scale": self.parameter_scale,
            "boundary": self.boundary,
        }


@dataclass
class PCAReport:
    """How well a PCA basis explains a sampled PSF family."""

    num_components: int
    variance_captured: float  # fraction of the family's energy Σ‖h‖² kept by the basis
    max_relative_error: float  # max over the family of ‖h − ĥ‖ / ‖h‖
    mean_relative_error: float


@dataclass
class FieldFamilyReport:
    """How well a product-convolution family explains the sampled PSFs of a field."""

    num_psfs: int  # I eigen-PSFs
    num_maps: int  # J spatial maps (K = I·J parameters)
    psf_variance_captured: float  # energy of the sampled PSFs kept by the eigen-PSFs
    map_variance_captured: float  # energy of the eigen-PSF weight fields kept by the maps
    mean_relative_error: float  # ‖h − ĥ‖ / ‖h‖ of the complete model at the sampled positions
    max_relative_error: float
    num_fields: int = 1
    num_positions: int = 0


def pca_basis(psfs: torch.Tensor, num_components: int) -> tuple[torch.Tensor, PCAReport]:
    """Uncentred PCA of kernels ``(S, k, k)``: the top ``num_components`` eigen-PSFs.

    Uncentred, because Model 2.1 writes the PSF as ``Σ γ_k e_k`` with no mean term.
    """
    flat = psfs.reshape(psfs.shape[0], -1).to(torch.float64)
    _, singular, vh = torch.linalg.svd(flat, full_matrices=False)
    basis = vh[:num_components]
    # SVD signs are arbitrary: make each eigen-PSF's largest-magnitude pixel positive
    peak = basis.gather(1, basis.abs().argmax(1, keepdim=True))
    basis = basis * torch.where(peak < 0, -1.0, 1.0).to(basis)
    recon = (flat @ basis.T) @ basis
    rel = (flat - recon).norm(dim=1) / flat.norm(dim=1)
    report = PCAReport(
        num_components=num_components,
        variance_captured=float((singular[:num_components] ** 2).sum() / (singular**2).sum()),
        max_relative_error=float(rel.max()),
        mean_relative_error=float(rel.mean()),
    )
    return basis.reshape(num_components, *psfs.shape[-2:]).to(psfs.dtype), report


class EigenPSFConvolution(_KernelFamily):
    """Convolution with ``h(γ) = Σ_k γ_k e_k`` for a fixed basis ``e (K, k, k)``."""

    kind = "eigen_psf"

    def __init__(
        self,
        basis: torch.Tensor,
        parameter_scale: float = 1.0,
        boundary: str = "reflect",
        parameter_bank: torch.Tensor | None = None,
        parameter_jitter: float = 0.0,
    ):
        self.basis = torch.as_tensor(basis)
        self.num_parameters = self.basis.shape[0]
        self.kernel_size = self.basis.shape[-1]
        self.parameter_scale = float(parameter_scale)
        self.boundary = boundary
        self.parameter_bank = parameter_bank
        self.parameter_jitter = float(parameter_jitter)

    @classmethod
    def from_psfs(cls, psfs: torch.Tensor, num_components: int, **kwargs):
        """Build the family from sampled PSFs ``(S, k, k)``; returns ``(family, report)``.

        ``parameter_scale`` defaults to the largest |coefficient| of the samples.
        """
        basis, report = pca_basis(psfs, num_components)
        coeffs = psfs.reshape(psfs.shape[0], -1) @ basis.reshape(num_components, -1).T
        kwargs.setdefault("parameter_scale", float(coeffs.abs().max()))
        return cls(basis, **kwargs), report

    def coefficients_of(self, psfs: torch.Tensor) -> torch.Tensor:
        """Projection of kernels ``(…, k, k)`` on the basis: ``(…, K)``."""
        return torch.tensordot(psfs, self.basis.to(psfs), dims=([-2, -1], [-2, -1]))

    def psf(self, gamma):
        return torch.tensordot(gamma, self.basis.to(gamma), dims=([-1], [0]))

    def config(self):
        return {
            "kind": self.kind,
            "parameter_scale": self.parameter_scale,
            "boundary": self.boundary,
            **self._bank_config(),
        }

    def tensors(self):
        return {"basis": self.basis, **self._bank_tensors()}


class ProductConvolutionOperator:
    """``A x = Σ_i e_i ⋆ (m_i ⊙ x)`` with multipliers ``m_i = Σ_j γ[i,j] f_j``."""

    def __init__(
        self,
        eigen_psfs: torch.Tensor,
        multipliers: torch.Tensor,
        boundary: str = "reflect",
        cg_iterations: int = 20,
    ):
        self.multipliers = multipliers  # (…, I, H, W)
        self.eigen_psfs = eigen_psfs
        self.conv = Convolution(eigen_psfs, multipliers.shape[-2:], boundary)  # (I, k, k)
        self.cg_iterations = cg_iterations

    def forward(self, x):
        return self.conv.forward(self.multipliers * x.unsqueeze(-3)).sum(-3)

    def adjoint(self, y):
        return (self.multipliers * self.conv.adjoint(y.unsqueeze(-3))).sum(-3)

    def mean_kernel(self) -> torch.Tensor:
        """The kernel of the field-averaged multipliers ``Σ_i mean(m_i) e_i``: ``(…, k, k)``."""
        weights = self.multipliers.mean((-2, -1))  # (…, I)
        return torch.tensordot(weights, self.eigen_psfs, dims=([-1], [0]))

    def regularized_inverse(self, y, lam, prior=None):
        """``(AᵀA + λI)⁻¹(Aᵀy + λ·prior)`` by conjugate gradient (``cg_iterations`` steps),
        preconditioned by the same problem for the field-averaged kernel (solved in
        Fourier, circular on the image grid) and started from ``prior`` or, without it,
        from that averaged problem's solution: a mildly varying field then converges in a
        few steps even for small λ."""
        average = Convolution(self.mean_kernel(), y.shape[-2:], self.conv.boundary)
        start = prior if prior is not None else average.regularized_inverse(y, lam)
        rhs = self.adjoint(y)
        if prior is not None:
            rhs = rhs + _as_map(lam, y) * prior
        return conjugate_gradient(
            lambda v: self.adjoint(self.forward(v)) + _as_map(lam, y) * v,
            rhs,
            self.cg_iterations,
            start,
            lambda r: average.normal_inverse(r, lam),
        )


def conjugate_gradient(
    apply,
    rhs: torch.Tensor,
    iterations: int,
    x0: torch.Tensor | None = None,
    precondition=None,
) -> torch.Tensor:
    """Solve ``apply(x) = rhs`` for a symmetric positive definite ``apply``, batched over
    leading axes (one scalar step per image ``(…, H, W)``), optionally preconditioned by
    ``precondition(r) ≈ apply⁻¹(r)`` (symmetric positive definite too)."""

    def dot(a, b):
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    precondition = precondition or (lambda r: r)
    x = torch.zeros_like(rhs) if x0 is None else x0
    r = rhs - apply(x) if x0 is not None else rhs
    z = precondition(r)
    p = z
    rz = dot(r, z)
    tiny = torch.finfo(rhs.dtype).tiny
    for _ in range(iterations):
        ap = apply(p)
        curvature = dot(p, ap)
        # a converged image (zero residual) stops moving instead of dividing 0 by 0
        alpha = torch.where(curvature > tiny, rz / curvature.clamp_min(tiny), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = dot(r, z)
        p = z + torch.where(rz.abs() > tiny, rz_new / rz.clamp_min(tiny), 0.0) * p
        rz = rz_new
    return x


class ProductConvolution(OperatorFamily):
    """Space-varying blur ``A(γ)x = Σ_i e_i ⋆ ((Σ_j γ[i,j] f_j) ⊙ x)``.

    ``eigen_psfs (I, k, k)``; ``maps (J, Hm, Wm)`` spatial functions over the whole field of
    view, resampled (bilinear, corners aligned) to the image size; γ has ``I·J`` entries,
    row-major ``γ[i, j]``. The regularized inverse uses conjugate gradient.
    """

    kind = "product_convolution"

    def __init__(
        self,
        eigen_psfs: torch.Tensor,
        maps: torch.Tensor,
        parameter_scale: float = 1.0,
        boundary: str = "reflect",
        cg_iterations: int = 20,
        parameter_bank: torch.Tensor | None = None,
        parameter_jitter: float = 0.0,
        local_parameter_scale: float | None = None,
        local_reader: dict | None = None,
    ):
        self.local_parameter_scale = local_parameter_scale
        self.local_reader = local_reader
        self.eigen_psfs = torch.as_tensor(eigen_psfs)
        self.maps = torch.as_tensor(maps)
        self.num_psfs = self.eigen_psfs.shape[0]
        self.num_maps = self.maps.shape[0]
        self.num_parameters = self.num_psfs * self.num_maps
        self.kernel_size = self.eigen_psfs.shape[-1]
        self.parameter_scale = float(parameter_scale)
        self.boundary = boundary
        self.cg_iterations = cg_iterations
        self.parameter_bank = parameter_bank
        self.parameter_jitter = float(parameter_jitter)

    def maps_at(self, image_shape, like: torch.Tensor) -> torch.Tensor:
        """The spatial maps resampled to ``image_shape``: ``(J, H, W)``."""
        maps = self.maps.to(like)
        if tuple(maps.shape[-2:]) == tuple(image_shape):
            return maps
        return torch.nn.functional.interpolate(
            maps[None], size=tuple(image_shape), mode="bilinear", align_corners=True
        )[0]

    def multipliers(self, gamma: torch.Tensor, image_shape) -> torch.Tensor:
        """``m_i = Σ_j γ[i,j] f_j``: ``(…, I, H, W)``."""
        g = gamma.reshape(*gamma.shape[:-1], self.num_psfs, self.num_maps)
        return torch.tensordot(g, self.maps_at(image_shape, gamma), dims=([-1], [0]))

    def operator(self, gamma, image_shape):
        return ProductConvolutionOperator(
            self.eigen_psfs.to(gamma),
            self.multipliers(gamma, image_shape),
            self.boundary,
            self.cg_iterations,
        )

    def maps_at_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The spatial maps at field positions ``(S, 2)`` (``(y, x)`` fractions of the field
        in [0, 1], 0 = top/left edge), bilinear: ``(S, J)``."""
        p = torch.as_tensor(positions, dtype=self.maps.dtype).reshape(-1, 2)
        grid = torch.stack([2 * p[:, 1] - 1, 2 * p[:, 0] - 1], dim=-1)[None, None]  # x, y
        at = torch.nn.functional.grid_sample(
            self.maps[None], grid, mode="bilinear", align_corners=True
        )  # (1, J, 1, S)
        return at[0, :, 0].T

    def local_weights(self, gamma: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Eigen-PSF weights ``m_i`` at positions ``(S, 2)``: ``(…, S, I)``."""
        f = self.maps_at_positions(positions).to(gamma)  # (S, J)
        g = gamma.reshape(*gamma.shape[:-1], self.num_psfs, self.num_maps)
        return torch.einsum("...ij,sj->...si", g, f)

    def psf_at(self, gamma: torch.Tensor, y: float, x: float) -> torch.Tensor:
        """The local kernel ``Σ_i m_i(y, x) e_i`` at a field position given as fractions of
        the field in [0, 1] (0 = top/left edge). Returns ``(…, k, k)``."""
        weights = self.local_weights(gamma, torch.tensor([[y, x]]))[..., 0, :]  # (…, I)
        return torch.tensordot(weights, self.eigen_psfs.to(gamma), dims=([-1], [0]))

    def normalised_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Eigen-PSF weights ``(…, I)`` rescaled so that their PSF sums to 1 (the PSF's shape:
        a local window of one image cannot tell the PSF's total intensity)."""
        sums = self.eigen_psfs.sum((-2, -1)).to(weights)
        total = (weights * sums).sum(-1, keepdim=True)
        return weights / torch.where(total.abs() > 1e-6, total, torch.ones_like(total))

    def local_family(self, positions_per_draw: int = 16, seed: int = 0) -> EigenPSFConvolution:
        """The convolution family of the local PSFs: the eigen-PSFs, with a parameter bank of
        normalised local weights of the bank's γ at random field positions. An
        identification network trained on it reads the local PSF off a window of an image;
        :meth:`fit_parameters` turns such local readings into γ. Sets
        :attr:`local_parameter_scale` (saved with the family), which
        :meth:`identification_family` needs."""
        if self.parameter_bank is None:
            raise ValueError("the family has no parameter bank to draw local PSFs from")
        generator = torch.Generator().manual_seed(seed)
        bank = self.parameter_bank.float()
        positions = torch.rand(len(bank), positions_per_draw, 2, generator=generator)
        weights = torch.stack(
            [self.local_weights(g, p) for g, p in zip(bank, positions, strict=True)]
        )
        weights = self.normalised_weights(weights).reshape(-1, self.num_psfs)
        self.local_parameter_scale = float(weights.abs().max())
        return EigenPSFConvolution(
            self.eigen_psfs,
            parameter_scale=self.local_parameter_scale,
            boundary=self.boundary,
            parameter_bank=weights,
        )

    def identification_family(self) -> OperatorFamily:
        """The family of local kernels whose parameters this family's identification
        network predicts: ``local_reader`` when set (e.g. a Zernike family: a Zernike
        network reads each window, and its PSF is projected on the eigen-PSFs), else the
        eigen-PSFs themselves (weights ``/ local_parameter_scale``)."""
        if self.local_reader:
            return family_from_state(self.local_reader, {})
        if not self.local_parameter_scale:
            raise ValueError(
                "the family has no local_parameter_scale: it was not trained on (see local_family)"
            )
        return EigenPSFConvolution(self.eigen_psfs, self.local_parameter_scale, self.boundary)

    def weights_of(self, psfs: torch.Tensor) -> torch.Tensor:
        """Least-squares eigen-PSF weights ``(…, I)`` of kernels ``(…, k, k)``."""
        flat = self.eigen_psfs.reshape(self.num_psfs, -1).to(psfs)
        gram = flat @ flat.T
        rhs = psfs.reshape(*psfs.shape[:-2], -1) @ flat.T
        return torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)

    def constant_parameters(self, weights: torch.Tensor, grid: int = 9) -> torch.Tensor:
        """γ ``(K,)`` whose multipliers are as close as the maps allow to the constant
        eigen-PSF weights ``weights (I,)`` over the whole field (least squares on a
        ``grid × grid`` lattice)."""
        f = self.maps_at_positions(grid_positions(grid)).double()
        ones = torch.ones(len(f), 1, dtype=torch.float64)
        c = torch.linalg.lstsq(f, ones).solution[:, 0]  # (J,): Σ_j c_j f_j ≈ 1
        return (weights.double()[:, None] * c[None, :]).reshape(-1).float()

    def project(self, psfs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """γ ``(K,)`` of the family member closest to kernels ``(S, k, k)`` known at field
        positions ``(S, 2)``: their eigen-PSF weights, fitted by the maps (no prior)."""
        weights = self.weights_of(psfs.to(self.eigen_psfs.dtype))
        return self.fit_parameters(weights, positions, 1e-10, use_prior=False)

    def fit_parameters(
        self,
        weights: torch.Tensor,
        positions: torch.Tensor,
        noise_variance: float | torch.Tensor = 1e-3,
        prior_mean: torch.Tensor | None = None,
        use_prior: bool = True,
    ) -> torch.Tensor:
        """γ ``(K,)`` from local eigen-PSF weights ``(N, I)`` read at positions ``(N, 2)``.

        Least squares on ``w_n ≈ G f(p_n)`` (``G`` the ``I × J`` matrix of γ); with a
        parameter bank, a Gaussian prior fitted to the bank (mean and covariance) makes it
        a maximum a posteriori estimate, so a few windows (or a nearly constant field) still
        give a well-posed answer. ``noise_variance``: of the readings (scalar or ``(I,)``);
        ``prior_mean`` (``(K,)``) replaces the bank's mean as the prior's centre (e.g.
        :meth:`constant_parameters` of a whole-image estimate: the fit then departs from one
        PSF for the whole field only as far as the readings support it). ``use_prior=False``:
        plain least squares.
        """
        weights = torch.as_tensor(weights, dtype=torch.float64)
        f = self.maps_at_positions(positions).double()  # (N, J)
        eye = torch.eye(self.num_psfs, dtype=torch.float64)
        design = torch.einsum("ab,nj->nabj", eye, f).reshape(-1, self.num_parameters)
        variance = torch.as_tensor(noise_variance, dtype=torch.float64).expand(self.num_psfs)
        precision = (1 / variance.clamp_min(1e-12)).repeat(len(f))  # (N·I,)
        normal = design.T @ (precision[:, None] * design)
        rhs = design.T @ (precision * weights.reshape(-1))
        bank = self.parameter_bank
        if use_prior and bank is not None and len(bank) > self.num_parameters:
            bank = bank.double()
            mean = bank.mean(0) if prior_mean is None else prior_mean.double()
            covariance = torch.cov(bank.T) + 1e-8 * torch.eye(self.num_parameters).double()
            prior = torch.linalg.inv(covariance)
            normal, rhs = normal + prior, rhs + prior @ mean
        else:
            normal = normal + 1e-9 * torch.eye(self.num_parameters, dtype=torch.float64)
        return torch.linalg.solve(normal, rhs).float()

    @classmethod
    def from_psf_field(
        cls,
        psfs: torch.Tensor,
        positions: torch.Tensor,
        num_psfs: int = 4,
        map_degree: int = 2,
        map_shape: tuple[int, int] = (64, 64),
        **kwargs,
    ):
        """Build the family from PSFs ``(S, k, k)`` sampled at field positions ``(S, 2)``
        (``(y, x)`` fractions of the field in [0, 1]).

        Eigen-PSFs by PCA; spatial maps are the 2D Legendre polynomials of total degree
        ≤ ``map_degree`` (J = (d+1)(d+2)/2); γ is the least-squares fit of the PCA weights.
        Returns ``(family, γ (I·J,), report)``; the report's errors are for the complete
        model (PCA and smooth maps) at the sample positions.
        """
        eigen_psfs, report = pca_basis(psfs, num_psfs)
        flat = psfs.reshape(psfs.shape[0], -1).to(torch.float64)
        weights = flat @ eigen_psfs.reshape(num_psfs, -1).to(torch.float64).T  # (S, I)
        design = legendre_maps(positions.to(torch.float64), map_degree)  # (S, J)
        gamma, *_ = torch.linalg.lstsq(design, weights)  # (J, I)
        gamma = gamma.T.contiguous()  # (I, J)
        maps = legendre_maps(grid_positions(*map_shape), map_degree).T.reshape(-1, *map_shape)
        fitted = (design @ gamma.T) @ eigen_psfs.reshape(num_psfs, -1).to(torch.float64)
        rel = (flat - fitted).norm(dim=1) / flat.norm(dim=1)
        report = PCAReport(
            num_psfs * maps.shape[0], report.variance_captured, float(rel.max()), float(rel.mean())
        )
        kwargs.setdefault("parameter_scale", float(gamma.abs().max()))
        family = cls(eigen_psfs.to(psfs.dtype), maps.to(psfs.dtype), **kwargs)
        return family, gamma.reshape(-1).to(psfs.dtype), report

    def config(self):
        return {
            "kind": self.kind,
            "parameter_scale": self.parameter_scale,
            "boundary": self.boundary,
            "cg_iterations": self.cg_iterations,
            **self._bank_config(),
            **(
                {"local_parameter_scale": self.local_parameter_scale}
                if self.local_parameter_scale
                else {}
            ),
            **({"local_reader": self.local_reader} if self.local_reader else {}),
        }

    def tensors(self):
        return {"eigen_psfs": self.eigen_psfs, "maps": self.maps, **self._bank_tensors()}


def grid_positions(rows: int, cols: int | None = None) -> torch.Tensor:
    """``rows × cols`` (default square) positions ``(rows·cols, 2)`` evenly spaced over
    [0, 1]², corners included, row-major (``y, x``), float64."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, rows, dtype=torch.float64),
        torch.linspace(0, 1, cols or rows, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)


def legendre_maps(positions: torch.Tensor, degree: int) -> torch.Tensor:
    """2D Legendre polynomials ``P_a(y') P_b(x')``, ``a + b ≤ degree``, at positions
    ``(S, 2)`` in [0, 1]² (mapped to [−1, 1]²). Returns ``(S, J)``."""
    from numpy.polynomial import legendre

    p = positions.detach().cpu().numpy() * 2 - 1
    columns = []
    for total in range(degree + 1):
        for a in range(total + 1):
            b = total - a
            py = legendre.legval(p[:, 0], np.eye(degree + 1)[a])
            px = legendre.legval(p[:, 1], np.eye(degree + 1)[b])
            columns.append(py * px)
    return torch.as_tensor(np.stack(columns, axis=1), dtype=positions.dtype)


def family_from_state(config: dict, tensors: dict[str, torch.Tensor]) -> OperatorFamily:
    """Rebuild a family from ``config()`` and ``tensors()`` (e.g. read from a model file)."""
    kind = config.get("kind")
    options = {k: v for k, v in config.items() if k != "kind"}
    if kind == ZernikeConvolution.kind:
        return ZernikeConvolution(**options)
    bank = tensors.get("parameter_bank")
    if kind == EigenPSFConvolution.kind:
        return EigenPSFConvolution(tensors["basis"], parameter_bank=bank, **options)
    if kind == ProductConvolution.kind:
        return ProductConvolution(
            tensors["eigen_psfs"], tensors["maps"], parameter_bank=bank, **options
        )
    raise ValueError(f"unknown operator family {kind!r}")
