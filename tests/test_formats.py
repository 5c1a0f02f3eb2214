"""Deep-Blur's formats (``napari_deepblur.formats``): PSF files (TIFF + JSON sidecar), the
estimate JSON, the PSF metadata of files and layers alike."""

import json

import numpy as np
import pytest

import napari_deepblur as ndb
from napari_deepblur import formats, io

PSF_META = {
    "optics": {
        "na": 1.4,
        "wavelength_nm": 520.0,
        "pixel_size_nm": 65.0,
        "refractive_index": 1.518,
        "fc": 0.175,
    },
    "noll_indices": [4, 5, 6],
    "coefficients_waves_rms": [0.1, -0.05, 0.0123456789],
    "names": ["defocus", "astig_0", "astig_45"],
    "model": "zernike",
    "noise": {"alpha": 0.01, "beta": 0.02},
}


def test_psf_round_trip_2d(tmp_path):
    psf = np.random.default_rng(0).random((31, 31)) * 7
    tif, sidecar = formats.write_psf(tmp_path / "psf.tif", psf, metadata=PSF_META)
    assert sidecar == tmp_path / "psf.json"
    for p in (tif, sidecar):
        data, meta = formats.read_psf(p)
        assert data.dtype == np.float32
        assert data.sum() == pytest.approx(1.0, rel=1e-5)
        np.testing.assert_allclose(data, psf / psf.sum(), rtol=1e-6)
        assert {k: meta[k] for k in PSF_META} == PSF_META
        assert meta["format"] == "napari-deepblur-psf" and meta["format_version"] == 1
        assert meta["shape"] == [31, 31]
    assert json.loads(sidecar.read_text()) == meta
    assert io.read_image(tif).pixel_size_nm == pytest.approx(65.0)
    # The TIFF description alone carries the same metadata.
    sidecar.unlink()
    data2, meta2 = formats.read_psf(tif)
    assert meta2 == meta
    np.testing.assert_array_equal(data2, data)
    with pytest.raises(FileExistsError):
        formats.write_psf(tmp_path / "psf.tif", psf, metadata=PSF_META)


def test_psf_stack_kept(tmp_path):
    stack = np.random.default_rng(1).random((3, 9, 9)).astype(np.float32)
    formats.write_psf(tmp_path / "stack.tif", stack, metadata={"model": "zernike"})
    data, meta = formats.read_psf(tmp_path / "stack.json")
    np.testing.assert_array_equal(data, stack)
    assert meta["shape"] == [3, 9, 9]
    assert meta["sum"] == pytest.approx(float(stack.sum(dtype=np.float64)))
    with pytest.raises(FileNotFoundError):
        formats.read_psf(tmp_path / "other.json")


def test_a_file_that_is_not_ours_is_a_typed_error(tmp_path):
    """Deciding by the exception's type, not its text: a plain TIFF is not a PSF file, and
    estimate_from_psf_file reads it as a PSF of unknown sampling instead."""
    psf = np.zeros((15, 15), np.float32)
    psf[7, 7] = 1
    plain = io.write_image(tmp_path / "plain.tif", psf)
    with pytest.raises(formats.NotAPsfFileError):
        formats.read_psf(plain)
    assert not formats.is_psf_file(plain)
    estimate = formats.estimate_from_psf_file(plain)
    assert np.isnan(estimate.fc) and estimate.model == f"psf:{plain}"


def test_estimates_and_their_psf_metadata_round_trip(tmp_path):
    """One estimate (or one per plane) → JSON → the same estimate; the PSF metadata of a
    layer and of a file is one dict, from which the estimate comes back."""
    from napari_deepblur.samples import make_blurred_sample

    image = make_blurred_sample(seed=0, size=128)["image"]
    est = ndb.identify(image, fc=0.2, device="cpu", augment=False)
    path = formats.write_estimate_json(tmp_path / "e.json", [est, est], image="x.tif")
    assert json.loads(path.read_text())["image"] == "x.tif"
    back = formats.read_estimate_json(path)
    assert len(back) == 2 and np.allclose(back[0].coefficients, est.coefficients)
    metadata = formats.psf_metadata(est, "cell")
    assert formats.is_psf_metadata(metadata) and metadata["source"] == "cell"
    tif, _ = formats.write_psf(tmp_path / "p.tif", est.psf, metadata=metadata)
    data, meta = formats.read_psf(tif)
    again = formats.estimate_from_psf_metadata(data, meta)
    assert np.allclose(again.coefficients, est.coefficients) and again.fc == est.fc
    with pytest.raises(ValueError, match="not an estimate JSON"):
        (tmp_path / "bad.json").write_text("{}")
        formats.read_estimate_json(tmp_path / "bad.json")
