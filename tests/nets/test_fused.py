"""The fused CPU inference kernels give what the plain modules give (float32 to rounding,
bfloat16 within its precision), follow changed weights, and stay out of training."""

import pickle

import pytest
import torch
from torch import nn

from napari_deepblur import devices
from napari_deepblur.nets import fused
from napari_deepblur.nets.blocks import BasicBlock, ResidualBlock, ResidualUNet
from napari_deepblur.nets.identification import IdentificationConfig, IdentificationNetwork

pytestmark = pytest.mark.skipif(not fused.available(), reason="no oneDNN fused kernels here")


def _trained_looking(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, biases and batch-norm statistics (fresh ones are 0/1: folding them
    would change nothing), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(values + 0.5 if "var" in name else values * 0.4 - 0.2)
    return module.eval()


def _plain(module, *inputs):
    """The module's plain path: with gradients on, nothing is fused."""
    with torch.enable_grad():
        return module(*inputs).detach()


def _fused(module, *inputs):
    with torch.no_grad():
        assert fused.applies(module, inputs[0])
        return module(*inputs)


@pytest.mark.parametrize(
    "block",
    [
        lambda: ResidualBlock(8),
        lambda: BasicBlock(8, 8),
        lambda: BasicBlock(8, 16, stride=2),  # its skip is a strided 1×1 convolution + norm
    ],
)
def test_fused_blocks_equal_the_plain_blocks_in_float32(block):
    module = _trained_looking(block())
    x = torch.randn(2, 8, 20, 20, generator=torch.Generator().manual_seed(1))
    expected, got = _plain(module, x), _fused(module, x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _networks_and_inputs():
    """A whole U-Net and identification network with inputs for them."""
    unet = _trained_looking(ResidualUNet((8, 16)))
    config = IdentificationConfig(widths=(8, 16), blocks=(1, 1), spectrum_widths=(8, 16))
    identification = _trained_looking(IdentificationNetwork(config), seed=2)
    generator = torch.Generator().manual_seed(3)
    z, sigma = torch.rand(1, 1, 64, 64, generator=generator), torch.full((1, 1, 64, 64), 0.05)
    windows = torch.rand(3, 1, 128, 128, generator=generator)
    return (unet, (z, sigma)), (identification, (windows,))


def test_networks_fused_in_float32():
    for network, inputs in _networks_and_inputs():
        reference = _plain(network, *inputs)
        torch.testing.assert_close(_fused(network, *inputs), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(
    not devices.bfloat16_available(torch.device("cpu")),
    reason=str(devices.bfloat16_missing(torch.device("cpu"))),
)
def test_networks_fused_in_bfloat16():
    """Under bfloat16 autocast, as close to float32 as the plain bfloat16 path is."""
    for network, inputs in _networks_and_inputs():
        reference = _plain(network, *inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_error = (_plain(network, *inputs).float() - reference).abs().max()
            fused_error = (_fused(network, *inputs).float() - reference).abs().max()
        assert 0 < fused_error <= 2 * plain_error + 1e-3


def test_changed_weights_are_picked_up_and_training_is_not_fused():
    module = _trained_looking(BasicBlock(8, 8))
    x = torch.randn(2, 8, 12, 12)
    before = _fused(module, x)
    module.load_state_dict(_trained_looking(BasicBlock(8, 8), seed=5).state_dict())
    after = _fused(module, x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _plain(module, x), rtol=1e-5, atol=1e-5)

    module.train()
    with torch.no_grad():
        assert not fused.applies(module, x)
        module(x * 3 + 1)  # re-estimating the batch-norm statistics, without a step
    module.eval()
    assert not fused.applies(module, x)  # gradients on: training a frozen copy, or a probe
    torch.testing.assert_close(_fused(module, x), _plain(module, x), rtol=1e-5, atol=1e-5)


def test_other_processors_keep_the_plain_path(monkeypatch):
    """Only measured on x86-64: elsewhere (Apple silicon, ARM servers) nothing changes."""
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    fused.available.cache_clear()
    try:
        assert not fused.available()
    finally:
        fused.available.cache_clear()
    monkeypatch.undo()
    assert fused.available()


def test_what_is_not_fused_and_what_a_model_carries():
    module = _trained_looking(ResidualBlock(8))
    x = torch.randn(1, 8, 12, 12)
    size = len(pickle.dumps(module))
    _fused(module, x)
    assert len(pickle.dumps(module)) == size  # the prepared weights stay out of the model
    with torch.no_grad():
        with torch.backends.mkldnn.flags(enabled=False):
            assert not fused.applies(module, x)  # the user switched oneDNN off
        assert not fused.applies(module.double(), x.double())  # only float32 weights
        torch.testing.assert_close(module(x.double()), _plain(module, x.double()))


def test_fused_under_inference_mode_even_when_probed_there():
    """``torch.inference_mode`` (whose tensors keep no version count) is inference too."""
    x = torch.randn(2, 8, 12, 12)
    expected = _plain(_trained_looking(BasicBlock(8, 8)), x)
    fused.available.cache_clear()
    with torch.inference_mode():
        assert fused.available()
        module = _trained_looking(BasicBlock(8, 8))  # the same weights, as inference tensors
        assert fused.applies(module, x)
        got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
