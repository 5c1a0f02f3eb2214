"""Test-time refinement of the Zernike coefficients (napari_deepblur.pipeline._refine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.baselines import no_identification_psf
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.table1 import FAMILY, FC, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.pipeline import BlurEstimate
from napari_deepblur.pipeline._refine import relative_noise, sparsity_score, wiener_deconvolve

VALIDATION = 1  # table1's validation split: never the benchmark's own pairs


@pytest.fixture(scope="module")
def model():
    return ndb.load_model(device="cpu")


@pytest.fixture(scope="module")
def images():
    return load_test_images(size=256)


def test_wiener_with_the_true_psf_inverts_a_noise_free_blur(images):
    """Blurring the deconvolution again gives back ``y`` (the OTF's band is inverted)."""
    pair = draw_pair(images, 1, "L0", 0, VALIDATION)
    y = torch.from_numpy(pair["y"]).double()
    x = wiener_deconvolve(y, torch.from_numpy(pair["psf"]), lam=1e-8)
    reblurred = FAMILY.forward(x.float(), torch.from_numpy(pair["gamma"])).numpy()
    inner = (slice(40, -40), slice(40, -40))
    error = np.abs(reblurred - pair["y"])[inner].mean()
    assert error < 0.01 * np.abs(pair["y"] - pair["y"].mean())[inner].mean()


def test_sharp_images_score_sparser_than_their_blur(images):
    """At unit variance (as refinement scales them), each sharp test image scores lower
    than the same image blurred by a benchmark PSF."""
    for i in range(4):
        pair = draw_pair(images, i, "L0", 0, VALIDATION)
        x, y = (torch.from_numpy(pair[k]).float() for k in ("x", "y"))
        x, y = ((v - v.mean()) / v.std() for v in (x, y))
        assert sparsity_score(x) < sparsity_score(y), pair["image"]


def test_the_true_psf_deconvolves_sharper_than_the_airy_guess(images):
    wins = 0
    for i in range(6):
        pair = draw_pair(images, i, "L0", 0, VALIDATION)
        y = torch.from_numpy(pair["y"]).float()
        y = (y - y.mean()) / y.std()
        true = sparsity_score(wiener_deconvolve(y, torch.from_numpy(pair["psf"]).float()))
        airy = torch.from_numpy(no_identification_psf(FC)).float()
        wins += int(true < sparsity_score(wiener_deconvolve(y, airy)))
    assert wins >= 5


def test_refinement_improves_the_psf_of_noise_free_images(model, images):
    before, after = [], []
    for i in range(6):
        pair = draw_pair(images, i, "L0", 0, VALIDATION)
        plain = ndb.identify(pair["y"], model, fc=FC)
        refined = ndb.identify(pair["y"], model, fc=FC, refine=True)
        assert refined.refined and not plain.refined
        assert np.all(np.abs(refined.coefficients) <= FAMILY.parameter_scale + 1e-6)
        before.append(psf_snr_db(plain.psf, pair["psf"]))
        after.append(psf_snr_db(refined.psf, pair["psf"]))
    assert np.mean(after) > np.mean(before) + 1.0, (before, after)


def test_refinement_is_skipped_with_a_warning_on_noisy_images(model, images):
    pair = draw_pair(images, 0, "L1", 0, VALIDATION)
    plain = ndb.identify(pair["y"], model, fc=FC)
    with pytest.warns(UserWarning, match="refinement skipped"):
        refined = ndb.identify(pair["y"], model, fc=FC, refine=True)
    assert not refined.refined
    np.testing.assert_array_equal(refined.coefficients, plain.coefficients)


def test_refinement_needs_a_zernike_model(tiny_field_model, images):
    y = images[0][1]
    with pytest.raises(ValueError, match="Zernike model"):
        ndb.identify(y, tiny_field_model, refine=True)


def test_relative_noise_and_the_refined_flag_round_trip():
    assert relative_noise({"alpha": 0.0, "beta": 0.01}, 0.5, 2.0) == pytest.approx(0.005)
    assert relative_noise({"alpha": 0.04, "beta": 0.0}, 0.25, 1.0) == pytest.approx(0.1)
    psf = np.full((31, 31), 1 / 961, np.float32)
    estimate = BlurEstimate(np.zeros(7, np.float32), FAMILY.noll_indices, FC, psf, {},
                            refined=True)  # fmt: skip
    assert BlurEstimate.from_dict(estimate.to_dict()).refined
