"""Identification in windows: the geometry of the dihedral copies and robust aggregation."""

import pytest
import torch

from napari_deepblur.optics import ZernikeConvolution
from napari_deepblur.pipeline._windows import (
    dihedral,
    robust_combine,
    window_starts,
    zernike_transform_matrices,
)


@pytest.mark.parametrize("k", range(8))
def test_transform_matrices_map_coefficients_like_the_image_transform(k):
    """The PSF of ``M_k γ`` is the PSF of γ flipped/transposed like the image."""
    family = ZernikeConvolution(0.2, kernel_size=31)
    gamma = family.sample_parameters(3, torch.Generator().manual_seed(k)).double()
    mats = zernike_transform_matrices(family.noll_indices).double()
    moved = family.psf(gamma @ mats[k].T)
    torch.testing.assert_close(moved, dihedral(family.psf(gamma), k), atol=1e-6, rtol=1e-4)


def test_window_starts_cover_with_half_overlap():
    assert window_starts(100, 128) == [0]
    starts = window_starts(256, 128)
    assert starts[0] == 0 and starts[-1] == 128 and len(starts) == 3
    for length in (129, 300, 1000):
        s = window_starts(length, 128)
        assert s[-1] + 128 == length
        assert max(b - a for a, b in zip(s, s[1:], strict=False)) <= 64


def test_robust_combine_aligns_signs_and_ignores_an_outlier():
    family = ZernikeConvolution(0.2)
    gamma = torch.tensor([0.1, 0.05, -0.03, 0.04, 0.0, 0.02, -0.01])
    flipped = family.equivalent_parameters(gamma)[1]  # same PSF, even terms negated
    predictions = torch.stack([flipped, gamma, gamma + 0.001, flipped - 0.001, -gamma * 5])
    centre, spread = robust_combine(predictions, family)
    aligned = min(family.equivalent_parameters(centre), key=lambda v: float((v - gamma).norm()))
    torch.testing.assert_close(aligned, gamma, atol=2e-3, rtol=0)
    assert spread.shape == (7,)


def test_out_of_memory_retries_in_smaller_batches(monkeypatch):
    import numpy as np

    import napari_deepblur as ndb
    from napari_deepblur.samples import make_blurred_sample

    model = ndb.load_model()
    image = make_blurred_sample(seed=1, size=192)["image"]
    expected = ndb.identify(image, model=model, augment=False)
    network = model.identification
    original = network.forward

    def small_batches_only(y):
        if len(y) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(y)

    monkeypatch.setattr(network, "forward", small_batches_only)
    with pytest.warns(RuntimeWarning, match="windows at a time"):
        result = ndb.identify(image, model=model, augment=False)
    np.testing.assert_allclose(result.coefficients, expected.coefficients, atol=1e-5)

    def never(y):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(network, "forward", never)
    with pytest.warns(RuntimeWarning), pytest.raises(torch.cuda.OutOfMemoryError):
        ndb.identify(image, model=model, augment=False)  # on the CPU already: nowhere to go


def test_all_windows_and_their_copies_go_through_the_network_in_one_pass():
    """One forward pass per tile, whatever the number of windows and flipped copies (on a
    GPU every extra pass costs its launches; the windows are chosen on the CPU)."""
    import napari_deepblur as ndb
    from napari_deepblur.samples import make_blurred_sample

    model = ndb.load_model()
    batches = []
    hook = model.identification.register_forward_hook(
        lambda module, args, output: batches.append(len(args[0]))
    )
    try:
        ndb.identify(make_blurred_sample(seed=1, size=256)["image"], model=model)
    finally:
        hook.remove()
    assert len(batches) == 1 and batches[0] > 9  # 3 × 3 windows, each in several copies
