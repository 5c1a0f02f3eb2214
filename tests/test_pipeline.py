"""The public API with the shipped default model: identify and deblur on real-looking data,
and the edge cases of dtype, size and content."""

import numpy as np
import pytest
import torch

import napari_deepblur as ndb
from napari_deepblur import pipeline
from napari_deepblur.evaluation.baselines import no_identification_psf
from napari_deepblur.evaluation.metrics import psf_snr_db, ssim
from napari_deepblur.intensity import ConstantImageError
from napari_deepblur.optics import ZernikeConvolution, add_poisson_gaussian
from napari_deepblur.samples import make_blurred_sample


@pytest.fixture(scope="module")
def model():
    return ndb.load_model()


@pytest.fixture(scope="module")
def sample():
    return make_blurred_sample(seed=0, size=256)


@pytest.fixture(scope="module")
def estimate(model, sample):
    return ndb.identify(sample["image"], model=model)


def test_identify_recovers_the_psf_better_than_the_airy_guess(estimate, sample):
    true = sample["true_psf"]
    ours = psf_snr_db(estimate.psf, true)
    airy = psf_snr_db(no_identification_psf(estimate.fc, 31), true)
    assert ours > airy + 3, (ours, airy)
    assert estimate.psf.shape == (31, 31) and abs(estimate.psf.sum() - 1) < 1e-4
    assert estimate.coefficients.shape == (7,) and estimate.noll_indices == tuple(range(4, 11))
    assert estimate.coefficients[0] >= 0  # canonical sign: defocus ≥ 0
    assert estimate.uncertainty is not None and (estimate.uncertainty >= 0).all()
    assert estimate.names[0].lower().startswith("defocus")


def test_identify_on_real_microscopy_blurred_with_a_known_psf(model):
    """A real actin crop (BPAE, shipped) blurred by a known aberration at level L1."""
    from napari_deepblur.evaluation.testimages import load_test_images

    images = dict(load_test_images(size=256))
    x = torch.from_numpy(images["bpae_actin_400"])
    family = ZernikeConvolution(0.2)
    gamma = torch.tensor([0.12, -0.05, 0.04, 0.0, 0.08, 0.0, 0.0])
    y = add_poisson_gaussian(
        family.forward(x, gamma), 0.0025, 0.04, torch.Generator().manual_seed(1)
    )
    est = ndb.identify(y.numpy(), model=model, fc=0.2)
    true = family.psf(gamma).numpy()
    assert psf_snr_db(est.psf, true) > psf_snr_db(no_identification_psf(0.2, 31), true) + 3


def test_deblur_improves_the_image_and_keeps_shape_and_range(model, sample, estimate):
    raw = sample["image"]
    restored = ndb.deblur(raw, estimate, model=model)
    assert restored.shape == raw.shape and restored.dtype == np.float32
    sharp = sample["sharp"]
    assert ssim(np.clip(restored, 0, 1), sharp) > ssim(np.clip(raw, 0, 1), sharp) + 0.05
    # mapped back to the input's intensity scale
    assert abs(np.median(restored) - np.median(raw)) < 0.1 * (raw.max() - raw.min())


def test_intensity_scale_and_dtype_do_not_change_the_estimate(model, sample, estimate):
    scaled = (sample["image"] * 3000 + 1000).astype(np.uint16)  # no clipping
    est16 = ndb.identify(scaled, model=model)
    assert psf_snr_db(est16.psf, estimate.psf) > 15
    est64 = ndb.identify(sample["image"].astype(np.float64), model=model)
    np.testing.assert_allclose(est64.coefficients, estimate.coefficients, atol=1e-4)
    restored = ndb.deblur(scaled, est16, model=model)
    assert restored.dtype == np.float32 and restored.shape == scaled.shape
    assert 0.5 * scaled.mean() < restored.mean() < 2 * scaled.mean()


def test_non_square_and_small_images(model, sample):
    image = sample["image"][:100, :170]
    est = ndb.identify(image, model=model)
    assert est.psf.shape == (31, 31)
    assert ndb.deblur(image, est, model=model).shape == (100, 170)
    small = sample["image"][:65, :65]
    with pytest.raises(ValueError, match="too small|at least"):
        ndb.identify(small, model=model)
    # deblurring a small image with a known estimate works
    assert ndb.deblur(small, est, model=model).shape == (65, 65)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((128, 128), 7.0), "constant"),
        (np.zeros((128, 128, 3)), "RGB"),
        (np.zeros((4, 128, 128)), "2D"),
        (np.where(np.eye(128) > 0, np.nan, 1.0), "NaN"),
        (np.zeros((128, 128), dtype=bool), "real-valued"),
    ],
)
def test_bad_images_get_a_clear_error(model, image, message):
    with pytest.raises(ValueError, match=message):
        ndb.identify(image, model=model)


def test_constant_image_error_type(model):
    with pytest.raises(ConstantImageError):
        ndb.identify(np.ones((128, 128), np.uint16), model=model)


def test_input_is_never_modified(model, sample):
    image = sample["image"].copy()
    before = image.copy()
    est = ndb.identify(image, model=model)
    ndb.deblur(image, est, model=model)
    np.testing.assert_array_equal(image, before)


def test_other_sampling_is_resampled_to_the_model(model, sample):
    """An image sampled at fc 0.15 (coarser optics) is processed at the model's fc 0.2 and
    the PSF is reported at the image's own sampling."""
    est = ndb.identify(sample["image"], model=model, na=1.2, wavelength_nm=520, pixel_size_nm=65)
    assert est.fc == pytest.approx(1.2 * 65 / 520)
    assert est.optics["na"] == 1.2
    with pytest.raises(ValueError, match="undersampled|Nyquist|0.25"):
        ndb.identify(sample["image"], model=model, na=1.4, wavelength_nm=500, pixel_size_nm=120)


def test_estimate_round_trips_through_json(estimate):
    import json

    back = ndb.BlurEstimate.from_dict(json.loads(json.dumps(estimate.to_dict())))
    np.testing.assert_allclose(back.coefficients, estimate.coefficients)
    np.testing.assert_allclose(back.psf, estimate.psf, atol=1e-6)


def test_an_estimate_from_a_psf_alone_deblurs(model, sample):
    est = ndb.BlurEstimate.from_psf(sample["true_psf"] * 5, fc=sample["optics"]["fc"])
    assert est.coefficients.size == 0 and abs(est.psf.sum() - 1) < 1e-5
    restored = ndb.deblur(sample["image"], est, model=model)
    sharp = sample["sharp"]
    assert ssim(np.clip(restored, 0, 1), sharp) > ssim(np.clip(sample["image"], 0, 1), sharp)
    with pytest.raises(ValueError, match="2D array"):
        ndb.BlurEstimate.from_psf(np.zeros((31, 31)), fc=0.2)


def test_a_psf_as_large_as_the_image_is_refused_before_any_work(model, sample):
    image = sample["image"]
    as_psf = ndb.BlurEstimate.from_psf(image + 1, fc=sample["optics"]["fc"])  # the image itself
    with pytest.raises(ValueError, match=r"PSF \(256×256 px\) is not smaller than the image"):
        ndb.deblur(image, as_psf, model=model)
    coarse = ndb.BlurEstimate.from_psf(sample["true_psf"], fc=sample["optics"]["fc"] / 10)
    with pytest.raises(ValueError, match="not smaller than the image"):  # 31 px at fc/10: 310
        ndb.deblur(image, coarse, model=model, fc=sample["optics"]["fc"])


def test_images_too_small_to_deblur_are_refused_with_the_size_needed(model, sample, estimate):
    with pytest.raises(ValueError, match=r"\(20×20 px\) is too small.*at least 32 px"):
        ndb.deblur(sample["image"][:20, :20], estimate, model=model)
    with pytest.raises(ValueError, match=r"sampling \(×0.1\) 26 px\) is too small"):
        ndb.deblur(sample["image"], estimate, model=model, fc=estimate.fc / 10)
    assert ndb.deblur(sample["image"][:32, :32], estimate, model=model).shape == (32, 32)


def test_local_psfs_of_a_tiled_estimate(model, sample):
    image = np.tile(sample["image"], (1, 2))  # 256 × 512: two tiles of 288 px
    est = ndb.identify(image, model=model, tile_px=288, augment=False)
    psfs = est.local_psfs()
    assert len(est.tiles) == 2 and psfs.shape == (2, 31, 31)
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1, atol=1e-4)
    assert est.tiles[0]["x"] < est.tiles[1]["x"]


def test_damaged_weights_give_an_error_not_a_nan_image():
    import copy

    from napari_deepblur import pipeline
    from napari_deepblur.models import load_model

    model = copy.deepcopy(load_model(None, device="cpu"))
    image = make_blurred_sample(0, 96)["image"]
    estimate = pipeline.identify(image, model, device="cpu")
    with torch.no_grad():
        next(model.deblurring.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="weights are probably damaged"):
        pipeline.deblur(image, estimate, model, device="cpu")


def test_a_measured_psf_is_freed_of_its_background_and_centred():
    from napari_deepblur.pipeline import clean_measured_psf

    profile = np.exp(-((np.arange(31) - 15) ** 2) / 8.0)
    psf = np.outer(profile, profile)
    psf = psf / psf.sum()
    np.testing.assert_allclose(clean_measured_psf(psf), psf, atol=1e-7)  # clean: unchanged
    bead = np.roll(psf * 5000 + 120, (4, -3), (0, 1))
    with pytest.warns(RuntimeWarning) as notes:
        cleaned = clean_measured_psf(bead)
    messages = " ".join(str(n.message) for n in notes)
    assert "background (120" in messages and "+4, -3 px" in messages
    np.testing.assert_allclose(cleaned, psf, atol=2e-4 * psf.max())
    with pytest.raises(ValueError, match="no signal above its background"):
        clean_measured_psf(np.full((15, 15), 3.0))


def test_wrong_arguments_to_deblur_say_what_to_pass(model, sample, estimate):
    image = sample["image"]
    with pytest.raises(TypeError, match="got a ndarray: for a PSF array use BlurEstimate.from_psf"):
        pipeline.deblur(image, estimate.psf, model)
    with pytest.raises(TypeError, match="BlurEstimate.from_dict"):
        pipeline.deblur(image, estimate.to_dict(), model)
    for noise in ("0.01", {"sigma": 0.01}, True, -1.0):
        with pytest.raises(ValueError, match="the noise must be a nonnegative std"):
            pipeline.deblur(image, estimate, model, noise=noise)
    for strength in (0.1, 10, float("nan"), "2"):
        with pytest.raises(ValueError, match="strength must be a number from 0.25"):
            pipeline.deblur(image, estimate, model, strength=strength)
    exact = model.with_precision("float32")  # bfloat16 rounds the two apart
    tiny = pipeline.deblur(image * 1e-6, estimate, exact)  # contrast is relative to the level
    normal = pipeline.deblur(image, estimate, exact)
    np.testing.assert_allclose(tiny * 1e6, normal, atol=1e-4)
    with pytest.raises(ValueError, match="beyond float32's range"):
        pipeline.deblur(image.astype(np.float64) * 1e300, estimate, model)


def test_damaged_identification_weights_give_an_error_not_nan_coefficients():
    import copy

    from napari_deepblur.models import load_model

    model = copy.deepcopy(load_model(None, device="cpu"))
    with torch.no_grad():
        model.identification.head[-1].weight.fill_(float("nan"))
    image = make_blurred_sample(0, 96)["image"]
    with pytest.raises(ValueError, match="identification network .* weights are probably damaged"):
        pipeline.identify(image, model, device="cpu", augment=False)


def test_absurd_noise_is_refused_not_blamed_on_the_weights(model, sample, estimate):
    image = sample["image"]
    with pytest.raises(ValueError, match=r"noise given .* is \d\.\d+e\+30× the image's intensity"):
        pipeline.deblur(image, estimate, model, noise=1e30)
    with pytest.raises(ValueError, match="give the noise in the image's units"):
        pipeline.deblur(image, estimate, model, noise={"alpha": 1e40, "beta": 0.0})
    assert pipeline.deblur(image, estimate, model, noise=10.0).shape == image.shape  # noisy


def test_a_crafted_estimate_is_refused_with_the_reason(estimate):
    d = estimate.to_dict()
    with pytest.raises(ValueError, match="Noll indices run from 1 to 66"):
        pipeline.BlurEstimate.from_dict({**d, "noll_indices": [4, 5, 6, 7, 8, 9, 1_000_000]})
    with pytest.raises(ValueError, match=r"coefficient of Z4 is 1e\+06 waves RMS, beyond the ±2"):
        pipeline.BlurEstimate.from_dict({**d, "coefficients": [1e6, 0, 0, 0, 0, 0, 0]})
    with pytest.raises(ValueError, match="7 coefficients for 3 Noll indices"):
        pipeline.BlurEstimate.from_dict({**d, "noll_indices": [4, 5, 6]})


def test_the_noise_of_a_very_bright_float32_image_is_finite(model, sample):
    """Near 1e30 the noise fit overflowed float32: NaN noise, and JSON that is not JSON."""
    bright = (sample["image"] * np.float32(1e30)).astype(np.float32)
    normal = ndb.identify(sample["image"], model=model, augment=False).noise
    noise = ndb.identify(bright, model=model, augment=False).noise
    assert np.isfinite([noise["alpha"], noise["beta"]]).all()
    assert noise["beta"] == pytest.approx(normal["beta"] * 1e30, rel=1e-3)
    assert noise["alpha"] == pytest.approx(normal["alpha"] * 1e30, rel=1e-3)


def test_a_single_bright_pixel_is_named_as_such(model, estimate):
    image = np.zeros((128, 128), np.float32)
    image[60, 70] = 1000.0
    for run in (
        lambda: ndb.identify(image, model=model),
        lambda: ndb.deblur(image, estimate, model=model),
    ):
        with pytest.raises(ConstantImageError, match="almost constant.*single bright pixel"):
            run()


def test_choosing_a_stacks_plane_prints_no_numpy_warnings():
    """A float64 plane beyond float32's range made numpy print its RuntimeWarnings (with
    source paths, from batch workers) before the one-line error that says what to do."""
    import warnings

    plane = make_blurred_sample(0, 64)["image"].astype(np.float64)
    stack = np.stack([plane, plane * 1e300])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipeline.representative_plane(stack) == (0,)


def test_the_documented_smallest_image_to_deblur_is_the_enforced_one(model):
    """docs/cli.md said 28 px while 32 px were enforced (more than the 31 px kernel)."""
    import re
    from pathlib import Path

    kernel = model.family.kernel_size
    smallest = next(n for n in range(8, 128) if _deblurrable(n, kernel))  # at the model's sampling
    docs = Path(__file__).parents[1] / "docs"
    said = re.findall(r"at least (\d+) px a side", (docs / "cli.md").read_text())
    said += re.findall(r"(\d+) px to deblur", (docs / "user-guide.md").read_text())
    assert said and {int(n) for n in said} == {smallest}


def _deblurrable(side: int, kernel: int) -> bool:
    try:
        pipeline._deblur._check_deblurrable_size((side, side), 1.0, kernel)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("pixel_size_nm", [None, 90.0])  # sampled like the model, and not
def test_deblur_without_an_estimate_prepares_the_image_once(
    model, sample, monkeypatch, pixel_size_nm
):
    """Identify prepares the image (resampled, ranged) and deblurring reuses it: the result is
    identify-then-deblur's, bit for bit, the image resampled once on the way in (and the
    result once on the way out). Its noise is measured once when the image is not resampled
    (the estimate's noise is then the network's); a resampled image's noise is not the
    camera's, so identify reports the image's own and the network gets its own."""
    exact = model.with_precision("float32")
    image = sample["image"]
    optics = {} if pixel_size_nm is None else {"pixel_size_nm": pixel_size_nm, "na": 1.4,
                                                 "wavelength_nm": 520}  # fmt: skip
    two_calls = pipeline.deblur(image, pipeline.identify(image, exact, **optics), exact, **optics)
    counts = {"estimate_noise": 0, "resample": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(pipeline._prepare, "estimate_noise")
    for module in (pipeline._prepare, pipeline._identify, pipeline._deblur):
        counted(module, "resample")
    prepared = {}
    one_call = pipeline.run(pipeline.iter_deblur(image, None, exact, prepared=prepared, **optics))
    np.testing.assert_array_equal(one_call, two_calls)
    resampled = pixel_size_nm is not None
    assert counts == {"estimate_noise": 1 + resampled, "resample": 2}
    plane = prepared[()]
    assert plane.y.dtype == np.float32 and plane.resampled == resampled
    assert (plane.noise is None) == resampled  # measured by identify only when shared
    if not resampled:  # one measurement, in image units the estimate's noise
        noise = pipeline.identify(image, exact).noise
        assert plane.noise_in_image_units() == pytest.approx(noise, rel=1e-5)
