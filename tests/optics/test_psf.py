import numpy as np
import pytest
import torch

from napari_deepblur.optics import airy_pattern, airy_psf, zernike_psf
from napari_deepblur.optics.microscope import UndersampledError


@pytest.mark.parametrize("fc", [0.1, 0.2, 0.25])
def test_zero_aberration_is_the_airy_pattern(fc):
    h = airy_psf(fc, 31, dtype=torch.float64).numpy()
    a = airy_pattern(fc, 31)
    assert np.linalg.norm(h - a) / np.linalg.norm(a) < 2e-3
    assert np.unravel_index(h.argmax(), h.shape) == (15, 15)


def test_first_dark_ring_at_0_61_over_fc():
    fc = 0.1  # first zero of J1 at v = 3.8317 → r = 3.8317 / (2π fc) = 6.10 px
    h = airy_psf(fc, 31, dtype=torch.float64).numpy()
    profile = h[15, 15:]
    assert profile[:9].argmin() == 6
    assert profile[6] < 1e-3 * profile[0]


def test_batched_shape_sum_and_gradient():
    g = (torch.rand(4, 3, 7) * 0.3 - 0.15).requires_grad_()
    h = zernike_psf(g, 0.2)
    assert h.shape == (4, 3, 31, 31) and h.dtype == torch.float32
    torch.testing.assert_close(h.sum((-2, -1)), torch.ones(4, 3))
    assert (h >= 0).all()
    (h[..., 15, 15]).sum().backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


def test_exact_symmetries_of_intensity_psfs():
    g = torch.rand(16, 7, dtype=torch.float64) * 0.3 - 0.15
    h = zernike_psf(g, 0.2)
    # h(−γ) is h(γ) rotated by 180°.
    torch.testing.assert_close(zernike_psf(-g, 0.2), torch.flip(h, (-2, -1)), atol=1e-14, rtol=0)
    # Negating all even-order terms (defocus, astigmatism) together changes nothing.
    even = torch.tensor([1.0, 1, 1, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(zernike_psf(g * (1 - 2 * even), 0.2), h, atol=1e-14, rtol=0)
    # … but negating the odd ones alone does (coma is visible).
    assert (zernike_psf(g * (2 * even - 1), 0.2) - h).abs().max() > 1e-4


def test_accuracy_against_a_finer_pupil_grid():
    g = torch.rand(32, 7, dtype=torch.float64) * 0.3 - 0.15
    h = zernike_psf(g, 0.2)
    fine = zernike_psf(g, 0.2, pupil_samples=4 * 256)
    rel = (h - fine).norm(dim=(-2, -1)) / fine.norm(dim=(-2, -1))
    assert rel.max() < 1e-3


def test_defocus_stack_is_symmetric_about_focus_and_spreads():
    kw = dict(wavelength_nm=520, pixel_size_nm=80, refractive_index=1.0)
    h = zernike_psf(torch.zeros(7), 0.2, defocus_um=[-1.0, 0.0, 1.0], **kw)
    assert h.shape == (3, 31, 31)
    # Without aberrations, ±z give the same intensity; the peak drops out of focus.
    torch.testing.assert_close(h[0], h[2], atol=1e-6, rtol=0)
    assert h[1, 15, 15] > 2 * h[0, 15, 15]
    torch.testing.assert_close(h[1], zernike_psf(torch.zeros(7), 0.2), atol=1e-6, rtol=0)


def test_clear_errors():
    with pytest.raises(UndersampledError):
        zernike_psf(torch.zeros(7), 0.3)
    with pytest.raises(ValueError, match="7 coefficients"):
        zernike_psf(torch.zeros(5), 0.2)
    with pytest.raises(ValueError, match="odd"):
        zernike_psf(torch.zeros(7), 0.2, size=32)
    with pytest.raises(ValueError, match="wavelength_nm"):
        zernike_psf(torch.zeros(7), 0.2, defocus_um=1.0)
