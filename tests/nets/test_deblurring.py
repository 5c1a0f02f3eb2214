import torch

from napari_deepblur.nets import DeblurringConfig, DeblurringNetwork
from napari_deepblur.optics import ProductConvolution, ZernikeConvolution


def test_shapes_and_gradients_with_a_zernike_operator():
    torch.manual_seed(0)
    net = DeblurringNetwork(DeblurringConfig(iterations=2, widths=(8, 16), blocks=1))
    family = ZernikeConvolution(0.2)
    gamma = family.sample_parameters(2).requires_grad_(True)
    y = torch.rand(2, 1, 70, 90)
    sigma = torch.full_like(y, 0.05)
    x = net(y, family.operator(gamma[:, None], y.shape[-2:]), sigma)
    assert x.shape == y.shape
    x.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert gamma.grad is not None and torch.isfinite(gamma.grad).all()  # differentiable in γ


def test_untrained_network_starts_from_the_regularized_inverse():
    """The U-Nets' last layers start at zero, so an untrained DN is Douglas–Rachford with
    identity proximal steps: it returns a (regularized) deconvolution of y."""
    net = DeblurringNetwork(DeblurringConfig(iterations=1, widths=(8, 16), blocks=1))
    family = ZernikeConvolution(0.2)
    gamma = torch.zeros(1, 7)
    x_true = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 64, 64), 3, 1, 1)
    op = family.operator(gamma[:, None], (64, 64))
    y = op.forward(x_true)
    x = net(y, op, torch.zeros_like(y))
    inner = (..., slice(16, -16), slice(16, -16))
    assert (x - x_true)[inner].norm() < (y - x_true)[inner].norm()


def test_works_with_product_convolution():
    torch.manual_seed(0)
    positions = torch.rand(12, 2)
    coefficients = torch.zeros(12, 7)
    coefficients[:, 0] = 0.2 * ((positions - 0.5) ** 2).sum(1)
    psfs = ZernikeConvolution(0.2, kernel_size=15).psf(coefficients)
    family, gamma, _ = ProductConvolution.from_psf_field(psfs, positions, 2, 1)
    gamma = gamma[None, None]  # (B=1, C=1, K)
    net = DeblurringNetwork(DeblurringConfig(iterations=1, widths=(8, 16), blocks=1))
    y = torch.rand(1, 1, 48, 48)
    x = net(y, family.operator(gamma, y.shape[-2:]), torch.full_like(y, 0.02))
    assert x.shape == y.shape and torch.isfinite(x).all()


class _CountingOperator:
    """A Zernike operator that counts its data steps (the expensive part of an iteration)."""

    def __init__(self, operator):
        self.operator, self.data_steps = operator, 0

    def regularized_inverse(self, y, lam, prior=None):
        self.data_steps += 1
        return self.operator.regularized_inverse(y, lam, prior)


def test_the_unread_last_data_step_is_skipped_without_changing_the_output():
    torch.manual_seed(0)
    net = DeblurringNetwork(DeblurringConfig(iterations=3, widths=(8, 16), blocks=1))
    with torch.no_grad():  # non-trivial proximal steps (the U-Nets start as the identity)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    family = ZernikeConvolution(0.2)
    op = _CountingOperator(family.operator(family.sample_parameters(1)[:, None], (48, 48)))
    y, sigma = torch.rand(1, 1, 48, 48), torch.full((1, 1, 48, 48), 0.03)
    with torch.no_grad():
        x = net(y, op, sigma)
        lam = net.regularization(sigma)[:, :, None]  # (T + 1, B, 1) as in forward
        z = op.operator.regularized_inverse(y, lam[0])  # the full recursion of the docstring
        for t, prox in enumerate(net.prox):
            x_reference = prox(z, sigma)
            z = z + op.operator.regularized_inverse(y, lam[t + 1], 2 * x_reference - z)
            z = z - x_reference
    assert op.data_steps == 3  # z0 and the two z updates that a later U-Net reads
    assert torch.allclose(x, x_reference, atol=1e-6)
    assert (x - z).abs().max() > 1e-3  # the skipped z would have differed from the output
