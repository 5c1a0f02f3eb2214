import pytest
import torch

from napari_deepblur.optics import (
    Convolution,
    EigenPSFConvolution,
    ProductConvolution,
    ZernikeConvolution,
    family_from_state,
    zernike_psf,
)

torch.manual_seed(0)


def _zernike_family(boundary="reflect"):
    return ZernikeConvolution(fc=0.2, kernel_size=15, boundary=boundary)


def _eigen_family():
    g = torch.rand(40, 7, dtype=torch.float64) * 0.3 - 0.15
    family, _ = EigenPSFConvolution.from_psfs(zernike_psf(g, 0.2, 15), 6)
    return family


def _product_family():
    positions = torch.rand(30, 2, dtype=torch.float64)
    # Defocus and coma growing towards the edges of the field.
    r = positions - 0.5
    g = torch.zeros(30, 7, dtype=torch.float64)
    g[:, 0] = 0.2 * (r**2).sum(1)
    g[:, 3] = 0.2 * r[:, 0]
    family, gamma, _ = ProductConvolution.from_psf_field(
        zernike_psf(g, 0.2, 15), positions, num_psfs=3, map_degree=2
    )
    return family, gamma


def _families():
    z = _zernike_family()
    e = _eigen_family()
    p, gp = _product_family()
    return [
        ("zernike", z, torch.rand(2, 7, dtype=torch.float64) * 0.3 - 0.15),
        (
            "zernike-circular",
            _zernike_family("circular"),
            torch.rand(2, 7, dtype=torch.float64) * 0.3 - 0.15,
        ),
        ("eigen", e, torch.randn(2, 6, dtype=torch.float64) * 0.05),
        (
            "product",
            p,
            gp.expand(2, -1) * (1 + 0.1 * torch.randn(2, gp.numel(), dtype=torch.float64)),
        ),
    ]


@pytest.mark.parametrize(
    "name,family,gamma", _families(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_adjoint_dot_product(name, family, gamma):
    x = torch.randn(2, 40, 33, dtype=torch.float64)
    y = torch.randn(2, 40, 33, dtype=torch.float64)
    lhs = (family.forward(x, gamma) * y).sum()
    rhs = (x * family.adjoint(y, gamma)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-10


def test_reflect_convolution_equals_scipy_on_a_reflect_padded_image():
    import numpy as np
    from scipy.signal import convolve2d

    h = zernike_psf(torch.rand(7, dtype=torch.float64) * 0.3 - 0.15, 0.2, 15)
    x = torch.rand(30, 37, dtype=torch.float64)
    ours = Convolution(h, x.shape).forward(x).numpy()
    padded = np.pad(x.numpy(), 7, mode="reflect")
    ref = convolve2d(padded, h.numpy(), mode="valid")
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_regularized_inverse_is_exact_with_circular_boundary():
    family = _zernike_family("circular")
    gamma = torch.rand(7, dtype=torch.float64) * 0.3 - 0.15
    y = torch.rand(48, 40, dtype=torch.float64)
    lam = 1e-2
    x = family.regularized_inverse(y, gamma, lam)
    residual = family.adjoint(family.forward(x, gamma), gamma) + lam * x - family.adjoint(y, gamma)
    assert residual.norm() / family.adjoint(y, gamma).norm() < 1e-10


@pytest.mark.parametrize("seed", range(4))
def test_regularized_inverse_with_reflect_boundary_is_close_away_from_borders(seed):
    # With reflect padding A is not circulant: the Fourier formula solves the normal
    # equations of the padded problem, exact away from the borders (the documented claim),
    # only approximate within a kernel width of them.
    generator = torch.Generator().manual_seed(seed)
    family = _zernike_family()
    gamma = torch.rand(7, generator=generator, dtype=torch.float64) * 0.3 - 0.15
    x_true = torch.nn.functional.avg_pool2d(
        torch.rand(1, 1, 72, 72, generator=generator, dtype=torch.float64), 5, 1, 2
    )[0, 0]
    y = family.forward(x_true, gamma)
    lam = 1e-2
    x = family.regularized_inverse(y, gamma, lam)
    rhs = family.adjoint(y, gamma)
    residual = family.adjoint(family.forward(x, gamma), gamma) + lam * x - rhs
    inner = (slice(16, -16), slice(16, -16))
    assert residual[inner].norm() / rhs[inner].norm() < 2e-3
    assert residual.norm() / rhs.norm() < 0.1


def test_product_convolution_cg_solves_the_normal_equations():
    family, gamma = _product_family()
    y = torch.rand(40, 40, dtype=torch.float64)
    op = family.operator(gamma, y.shape)

    def relative_residual(lam):
        x = op.regularized_inverse(y, lam)
        return (op.adjoint(op.forward(x)) + lam * x - op.adjoint(y)).norm() / op.adjoint(y).norm()

    assert op.cg_iterations == 20
    assert relative_residual(0.1) < 1e-4
    op.cg_iterations = 200
    assert relative_residual(1e-2) < 1e-8


def test_product_convolution_with_constant_maps_is_a_convolution():
    h = zernike_psf(torch.rand(7, dtype=torch.float64) * 0.3 - 0.15, 0.2, 15)
    family = ProductConvolution(h[None], torch.ones(1, 8, 8, dtype=torch.float64))
    x = torch.rand(3, 32, 32, dtype=torch.float64)
    gamma = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(family.forward(x, gamma), Convolution(h, x.shape[-2:]).forward(x))


def test_product_convolution_local_psf_follows_the_field():
    family, gamma = _product_family()
    centre = family.psf_at(gamma, 0.5, 0.5)
    corner = family.psf_at(gamma, 0.0, 0.0)
    assert centre.shape == (15, 15)
    assert centre.max() > corner.max()  # defocus grows towards the edges


def test_pca_basis_reproduces_the_family_within_the_reported_error():
    g = torch.rand(60, 7, dtype=torch.float64) * 0.3 - 0.15
    psfs = zernike_psf(g, 0.2, 15)
    family, report = EigenPSFConvolution.from_psfs(psfs, 10)
    recon = family.psf(family.coefficients_of(psfs))
    rel = (recon - psfs).norm(dim=(-2, -1)) / psfs.norm(dim=(-2, -1))
    assert rel.max() <= report.max_relative_error + 1e-12
    assert 0.9 < report.variance_captured <= 1.0
    more, report_more = EigenPSFConvolution.from_psfs(psfs, 20)
    assert report_more.max_relative_error < report.max_relative_error


def test_canonical_sign_makes_defocus_non_negative_and_keeps_the_psf():
    family = _zernike_family()
    g = torch.rand(32, 7) * 0.3 - 0.15
    c = family.canonical(g)
    assert (c[:, 0] >= 0).all()
    torch.testing.assert_close(family.psf(c), family.psf(g), atol=1e-6, rtol=0)


def test_family_state_round_trip():
    family, gamma = _product_family()
    again = family_from_state(family.config(), family.tensors())
    x = torch.rand(32, 32, dtype=torch.float64)
    torch.testing.assert_close(again.forward(x, gamma), family.forward(x, gamma))
    z = _zernike_family()
    assert family_from_state(z.config(), {}).config() == z.config()


def test_image_smaller_than_the_kernel_is_refused():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        _zernike_family().forward(torch.rand(5, 5), torch.zeros(7))
