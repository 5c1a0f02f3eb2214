import numpy as np
import torch

from napari_deepblur.nets import IdentificationConfig, IdentificationNetwork, count_parameters
from napari_deepblur.nets.identification import welch_log_spectrum


def test_welch_spectrum_matches_a_direct_loop():
    image = torch.rand(2, 1, 96, 128, dtype=torch.float64)
    ours = welch_log_spectrum(image, 64)
    hann = np.outer(np.hanning(64), np.hanning(64))
    for b in range(2):
        powers = []
        for top in (0, 32):
            for left in (0, 32, 64):
                patch = image[b, 0, top : top + 64, left : left + 64].numpy()
                patch = (patch - patch.mean()) * hann
                powers.append(np.abs(np.fft.rfft2(patch)) ** 2)
        power = np.mean(powers, axis=0)
        log_power = np.fft.fftshift(np.log(power + 1e-8 * power.mean()), axes=0)
        np.testing.assert_allclose(ours[b, 0].numpy(), log_power - log_power.mean(), atol=1e-6)


def test_shapes_any_size_and_gradients():
    net = IdentificationNetwork(IdentificationConfig(num_parameters=7))
    for shape in [(96, 96), (128, 200)]:
        out = net(torch.rand(3, 1, *shape))
        assert out.shape == (3, 7)
    out.sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_paper_configuration_is_resnet18_sized():
    assert 10e6 < count_parameters(IdentificationNetwork(IdentificationConfig.paper())) < 14e6
    assert count_parameters(IdentificationNetwork()) < 3e6


def test_too_small_image_is_refused():
    import pytest

    with pytest.raises(ValueError, match="at least 96"):
        IdentificationNetwork()(torch.rand(1, 1, 80, 80))
