"""Intensity normalisation: the robust range is the 1st / 99.9th percentile, per image."""

import numpy as np
import pytest
import torch

from napari_deepblur.intensity import ConstantImageError, _percentile, check_contrast, robust_range


def test_robust_range_is_the_linear_percentiles_of_each_image():
    images = torch.rand(3, 50, 70) ** 3 * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    low, scale = robust_range(images)
    assert low.shape == scale.shape == (3, 1, 1)
    q = torch.tensor([0.01, 0.999])
    expected = torch.quantile(images.reshape(3, -1), q, dim=-1)  # torch's own definition
    torch.testing.assert_close(low.flatten(), expected[0], rtol=1e-6, atol=0)
    torch.testing.assert_close((low + scale).flatten(), expected[1], rtol=1e-6, atol=0)


def test_robust_range_keeps_the_dtype_and_ignores_a_few_outliers():
    image = np.linspace(0, 1, 10_000).reshape(100, 100)
    image[0, :5] = 1e6  # hot pixels: 0.05 % of the image, above the 99.9th percentile
    low, scale = robust_range(torch.from_numpy(image))
    assert low.dtype == torch.float64
    assert float(low) == pytest.approx(0.01, abs=1e-3)
    assert float(low + scale) == pytest.approx(0.9995, abs=1e-3)


def test_a_constant_image_is_refused():
    low, scale = robust_range(torch.full((1, 32, 32), 7.0))
    with pytest.raises(ConstantImageError, match="constant"):
        check_contrast(scale, low)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001, 16384])
def test_percentiles_from_one_tail_are_numpys(n):
    values = torch.rand(4, n, generator=torch.Generator().manual_seed(n)) ** 2
    for q in (0.0, 1.0, 37.5, 50.0, 62.5, 99.9, 100.0):
        expected = np.percentile(values.numpy(), q, axis=-1)
        np.testing.assert_allclose(_percentile(values, q).numpy(), expected, rtol=0, atol=1e-7)


def test_a_single_bright_pixel_is_not_called_constant():
    image = torch.zeros(1, 64, 64)
    image[0, 30, 30] = 1.0
    low, scale = robust_range(image)
    with pytest.raises(ConstantImageError, match="almost constant.*a single bright pixel"):
        check_contrast(scale, low, image)
    flat = torch.full((1, 64, 64), 7.0)
    low, scale = robust_range(flat)
    with pytest.raises(ConstantImageError, match="the image is constant"):
        check_contrast(scale, low, flat)
