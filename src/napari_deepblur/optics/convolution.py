"""FFT convolution with an explicit boundary policy and its exact adjoint.

``reflect`` (default): the image is extended by mirror reflection (no edge repeat, as
``numpy.pad(mode="reflect")``) by half a kernel on each side, convolved, and cropped back to
its own size ("same"). The operator is ``A = crop ∘ circulant ∘ reflect-pad``; its adjoint
``Aᵀ = fold ∘ circulantᵀ ∘ zero-embed`` adds the reflected margins back onto the pixels they
came from, so ``⟨A x, y⟩ = ⟨x, Aᵀ y⟩`` holds to rounding.

``circular``: periodic convolution on the image's own grid. Its regularized inverse
``(AᵀA + λI)⁻¹Aᵀ`` is exact in Fourier; with ``reflect`` the same Fourier formula is applied
to the reflect-padded image, a close approximation away from the borders.
"""

from __future__ import annotations

import torch
from scipy.fft import next_fast_len

BOUNDARIES = ("reflect", "circular")


def reflect_indices(n: int, pad: int, device=None) -> torch.Tensor:
    """Source index of each pixel of a length-``n`` axis reflect-padded by ``pad``."""
    if pad > n - 1:
        raise ValueError(
            f"the image ({n} px along an axis) is smaller than the kernel needs: reflect "
            f"padding by {pad} px requires at least {pad + 1} px"
        )
    i = torch.arange(-pad, n + pad, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


class Convolution:
    """``y = h ⋆ x`` for a batch of centred kernels ``h (…, k, k)`` on images ``(…, H, W)``.

    Leading axes of the kernels and images broadcast. The kernels' OTF is computed once,
    so the same operator can be applied many times (e.g. in every unrolled iteration).
    """

    def __init__(self, psf: torch.Tensor, image_shape: tuple[int, int], boundary: str = "reflect"):
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        k = psf.shape[-1]
        if psf.shape[-2] != k or k % 2 == 0:
            raise ValueError(f"kernels must be square with an odd size, got {tuple(psf.shape)}")
        self.boundary = boundary
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        height, width = self.image_shape
        self.pad = k // 2 if boundary == "reflect" else 0
        if boundary == "reflect":
            self._rows = reflect_indices(height, self.pad, psf.device)
            self._cols = reflect_indices(width, self.pad, psf.device)
            self.fft_shape = (
                next_fast_len(height + 2 * self.pad, real=True),
                next_fast_len(width + 2 * self.pad, real=True),
            )
        else:
            if k > min(height, width):
                raise ValueError(f"the image {self.image_shape} is smaller than the kernel {k}")
            self.fft_shape = self.image_shape
        self.otf = otf(psf, self.fft_shape)

    # -- the pieces of A = crop ∘ circulant ∘ pad ------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.boundary == "circular":
            return x
        return x.index_select(-2, self._rows).index_select(-1, self._cols)

    def _fold(self, z: torch.Tensor) -> torch.Tensor:
        """Adjoint of ``_pad``: each padded pixel adds onto the pixel it was copied from."""
        if self.boundary == "circular":
            return z
        height, width = self.image_shape
        rows = z.new_zeros(*z.shape[:-2], height, z.shape[-1]).index_add_(-2, self._rows, z)
        return rows.new_zeros(*z.shape[:-2], height, width).index_add_(-1, self._cols, rows)

    def _crop(self, z: torch.Tensor) -> torch.Tensor:
        height, width = self.image_shape
        return z[..., self.pad : self.pad + height, self.pad : self.pad + width]

    def _embed(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of ``_crop``: zeros around ``y`` on the padded grid."""
        p = self.pad
        return torch.nn.functional.pad(y, (p, p, p, p))

    def _circulant(self, x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft2(x, s=self.fft_shape) * transfer
        out = torch.fft.irfft2(spectrum, s=self.fft_shape)
        return out[..., : x.shape[-2], : x.shape[-1]]

    # -- the operator ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: blur images ``(…, H, W)``."""
        return self._crop(self._circulant(self._pad(x), self.otf))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: correlate with the kernel, fold the margins back."""
        return self._fold(self._circulant(self._embed(y), self.otf.conj()))

    def regularized_inverse(self, y: torch.Tensor, lam, prior: torch.Tensor | None = None):
        """``(AᵀA + λI)⁻¹(Aᵀy + λ·prior)`` in closed form in Fourier (exact for ``circular``).

        Without ``prior`` this is the regularized inverse ``R(y)``; with it, the proximal
        step of the data term ``½‖A x − y‖²`` at ``prior`` with step ``1/λ``. ``lam`` is a
        positive float or a tensor broadcastable to the leading axes (e.g. ``(B,)``).
        """
        lam = _as_map(lam, y)
        power = self.otf.real**2 + self.otf.imag**2
        spectrum = torch.fft.rfft2(self._pad(y), s=self.fft_shape) * self.otf.conj()
        if prior is not None:
            spectrum = spectrum + lam * torch.fft.rfft2(self._pad(prior), s=self.fft_shape)
        out = torch.fft.irfft2(spectrum / (power + lam), s=self.fft_shape)
        return self._crop(out)

    def normal_inverse(self, v: torch.Tensor, lam) -> torch.Tensor:
        """An approximation of ``(AᵀA + λI)⁻¹ v`` that is symmetric positive definite (a
        preconditioner for conjugate gradient): ``v`` zero-embedded in the FFT grid, divided
        by ``|OTF|² + λ``, cropped back (exact for ``circular``)."""
        lam = _as_map(lam, v)
        power = self.otf.real**2 + self.otf.imag**2
        spectrum = torch.fft.rfft2(self._embed(v), s=self.fft_shape) / (power + lam)
        return self._crop(torch.fft.irfft2(spectrum, s=self.fft_shape))


def _as_map(lam, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-image ``(…,)`` regularisation weight shaped ``(…, 1, 1)``."""
    lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    return lam.reshape(*lam.shape, 1, 1) if lam.ndim else lam


def otf(psf: torch.Tensor, fft_shape: tuple[int, int]) -> torch.Tensor:
    """Real-FFT transfer function of centred kernels ``(…, k, k)`` on an ``fft_shape`` grid."""
    k = psf.shape[-1]
    embedded = torch.nn.functional.pad(psf, (0, fft_shape[1] - k, 0, fft_shape[0] - k))
    embedded = torch.roll(embedded, shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))
    return torch.fft.rfft2(embedded, s=fft_shape)
