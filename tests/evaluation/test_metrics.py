"""Metrics against closed forms, and our Richardson–Lucy against scikit-image's."""

import numpy as np
import pytest
import torch
from skimage.restoration import richardson_lucy as skimage_rl

from napari_deepblur.evaluation.baselines import (
    no_identification_psf,
    richardson_lucy,
    richardson_lucy_iterates,
    tune_rl_iterations,
)
from napari_deepblur.evaluation.metrics import psf_snr_db, psnr, ssim
from napari_deepblur.optics import airy_psf


def test_psf_snr_closed_forms():
    h = no_identification_psf(0.2)
    u = np.full_like(h, 1 / h.size)
    assert psf_snr_db(h, h) == pytest.approx(300)  # floored, not inf
    # ĥ − h = 0.1 (u − h): PSF SNR = −10 log10(0.01 ‖u − h‖² / ‖h‖²)
    expected = -10 * np.log10(0.01 * ((u - h) ** 2).sum() / (h**2).sum())
    assert psf_snr_db(0.9 * h + 0.1 * u, h) == pytest.approx(expected, rel=1e-9)
    # torch in → tensor out, batched over leading axes, same value
    batch = torch.stack([torch.from_numpy(h), torch.from_numpy(0.9 * h + 0.1 * u)])
    snr = psf_snr_db(batch, torch.from_numpy(h))
    assert isinstance(snr, torch.Tensor) and snr.shape == (2,)
    assert float(snr[1]) == pytest.approx(expected, rel=1e-6)


def test_psf_snr_is_the_training_one():
    from napari_deepblur.training import losses

    assert losses.psf_snr_db is psf_snr_db


def test_ssim_psnr():
    rng = np.random.default_rng(0)
    x = rng.random((64, 64))
    assert ssim(x, x) == pytest.approx(1.0)
    assert psnr(x, x) == float("inf")
    assert psnr(np.clip(x + 0.1, 0, None), x) < psnr(np.clip(x + 0.01, 0, None), x)
    # both images are clipped to [0, 1] first
    assert ssim(x + 5, np.ones_like(x)) == pytest.approx(1.0)
    assert psnr(np.zeros_like(x) + 0.1, np.zeros_like(x)) == pytest.approx(20.0)


def test_airy_psf_is_the_no_identification_psf():
    h = no_identification_psf(0.2)
    assert h.shape == (31, 31) and h.sum() == pytest.approx(1.0)
    assert np.allclose(h, airy_psf(0.2, 31).numpy(), atol=1e-7)
    assert np.unravel_index(h.argmax(), h.shape) == (15, 15)


def test_richardson_lucy_matches_skimage():
    rng = np.random.default_rng(1)
    y = rng.random((40, 56)) - 0.1  # negative values: clipped to 0 first
    h = no_identification_psf(0.15)
    iterates = dict(richardson_lucy_iterates(y, h, [1, 4, 12]))
    assert sorted(iterates) == [1, 4, 12]
    for n, x in iterates.items():
        reference = skimage_rl(np.clip(y, 0, None), h, num_iter=n, clip=False)
        np.testing.assert_allclose(x, reference, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(richardson_lucy(y, h, 4), iterates[4])


def test_richardson_lucy_keeps_skimages_precision_for_float32_images():
    rng = np.random.default_rng(3)
    y = rng.random((40, 56)).astype(np.float32)
    h = no_identification_psf(0.15).astype(np.float32)
    x = richardson_lucy(y, h, 6)
    assert x.dtype == np.float32  # as skimage: float64 would take twice as long
    reference = skimage_rl(y, h, num_iter=6, clip=False)
    assert reference.dtype == np.float32
    np.testing.assert_allclose(x, reference, rtol=1e-4, atol=1e-6)
    assert richardson_lucy(y.astype(np.uint16), h, 1).dtype == np.float64


def test_tune_rl_iterations_picks_the_best_mean_ssim():
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(2)
    x = rng.random((48, 48))
    h = no_identification_psf(0.1)
    y = fftconvolve(x, h, mode="same")
    best, curve = tune_rl_iterations([(y, h, x)], candidates=(1, 5, 20))
    assert set(curve) == {1, 5, 20}
    assert curve[best] == max(curve.values())
    assert curve[20] > curve[1]  # noise-free: more iterations help
