import torch

from napari_deepblur.optics import add_poisson_gaussian


def test_empirical_variance_matches_poisson_gaussian_model():
    clean = torch.linspace(0, 1, 8).repeat(20000, 1)  # 8 intensity levels
    alpha, beta = 0.05, 0.1
    y = add_poisson_gaussian(clean, alpha, beta, torch.Generator().manual_seed(0))
    var = (y - clean).var(dim=0)
    expected = alpha * clean[0] + beta**2
    torch.testing.assert_close(var, expected, rtol=0.05, atol=0)
    torch.testing.assert_close((y - clean).mean(0), torch.zeros(8), atol=0.01, rtol=0)


def test_seeded_and_per_image_levels():
    clean = torch.rand(3, 16, 16)
    alpha = torch.tensor([0.0, 0.0, 0.02]).reshape(3, 1, 1)
    beta = torch.tensor([0.0, 0.1, 0.1]).reshape(3, 1, 1)
    a = add_poisson_gaussian(clean, alpha, beta, torch.Generator().manual_seed(1))
    b = add_poisson_gaussian(clean, alpha, beta, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], clean[0])  # level (0, 0): no noise
    assert (a[1] - clean[1]).std() > 0.05
