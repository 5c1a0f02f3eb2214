"""Space-varying models through the public pipeline: identify, the field estimate, deblur,
training for a family file, and the fig10 benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.models import DeepBlurModel, load_family, load_model, save_model
from napari_deepblur.optics import ProductConvolution
from napari_deepblur.optics.field import build_field_family, random_fields
from napari_deepblur.pipeline import BlurEstimate
from napari_deepblur.training.synthetic import random_sharp_image


def _blurred(family, gamma, size=192, seed=0):
    x = random_sharp_image(size, np.random.default_rng(seed)).astype(np.float32)
    y = family.forward(torch.from_numpy(x)[None], gamma[None])[0].numpy()
    return x, y


def test_identify_returns_a_field_and_deblur_uses_it(tiny_field_model):
    family = tiny_field_model.family
    x, y = _blurred(family, family.parameter_bank[3])
    est = ndb.identify(y, model=tiny_field_model)
    assert est.field is not None and est.noll_indices == ()
    assert est.coefficients.shape == (family.num_parameters,)
    assert len(est.names) == family.num_parameters
    assert est.psf.shape == (31, 31) and est.psf.sum() == pytest.approx(1, abs=1e-4)
    corner = est.psf_at(10, 10)
    assert corner.shape == (31, 31) and corner.sum() == pytest.approx(1, abs=1e-4)
    positions, psfs = est.psf_grid(3)
    assert positions.shape == (9, 2) and psfs.shape == (9, 31, 31)
    assert positions[0] == pytest.approx([y.shape[0] / 6 - 0.5, y.shape[1] / 6 - 0.5])
    # JSON round trip keeps the field
    again = BlurEstimate.from_dict(est.to_dict())
    assert np.allclose(again.psf_at(10, 150), est.psf_at(10, 150), atol=1e-6)
    assert np.allclose(again.psf, est.psf, atol=1e-6)
    whole = ndb.deblur(y, est, model=tiny_field_model)
    assert whole.shape == y.shape and whole.dtype == np.float32 and np.isfinite(whole).all()


def test_a_field_estimate_at_another_sampling_gives_image_sampled_psfs(tiny_field_model):
    family = tiny_field_model.family
    _, y = _blurred(family, family.parameter_bank[0], size=160)
    est = ndb.identify(y, model=tiny_field_model, fc=0.16)
    assert est.fc == pytest.approx(0.16) and est.field.fc == pytest.approx(0.2)
    assert est.psf_at(5, 5).sum() == pytest.approx(1, abs=1e-4)
    assert est.field.shape == y.shape


def test_dask_blocks_see_their_own_part_of_the_field(reader_model):
    """deblur_dask with a space-varying estimate: each block gets the operator of its region,
    so several blocks agree with one pass."""
    from napari_deepblur.pipeline import deblur_dask

    family = reader_model.family
    _, y = _blurred(family, family.parameter_bank[1], size=256)
    est = ndb.identify(y, model=reader_model)
    one_block = deblur_dask(y, est, reader_model, chunk_px=512).compute(scheduler="sync")
    blocks = deblur_dask(y, est, reader_model, chunk_px=128, tile_px=128)
    several = blocks.compute(scheduler="sync")
    assert np.abs(one_block - ndb.deblur(y, est, model=reader_model)).max() < 1e-4
    assert np.abs(several - one_block).mean() < 0.03 * np.abs(one_block).mean()


@pytest.fixture(scope="module")
def reader_model(tmp_path_factory):
    """A strongly varying family read by the shipped Zernike network (no training)."""
    zernike = load_model("zernike-default")
    family, _ = build_field_family(random_fields(40, seed=5, field_scale=0.3), 0.2, grid=5)
    family.local_reader = zernike.family.config()
    model = DeepBlurModel(family, zernike.identification, zernike.deblurring, 0.2, "reader")
    path = save_model(model, tmp_path_factory.mktemp("reader") / "reader.safetensors")
    return load_model(path)


def test_the_field_estimate_beats_one_psf_where_the_field_departs_from_the_centre(
    reader_model,
):
    """Behaviour, not plumbing: on images blurred by strongly varying members of the family,
    the fitted field predicts the local PSF near the corners better than the whole-image
    single PSF (the zernike-default model)."""
    family = reader_model.family
    zernike = load_model("zernike-default")
    ours, single = [], []
    for seed, row in ((0, 1), (1, 17)):
        _, y = _blurred(family, family.parameter_bank[row], size=256, seed=seed)
        est, one = ndb.identify(y, model=reader_model), ndb.identify(y, model=zernike)
        for fy, fx in ((0.15, 0.15), (0.15, 0.85), (0.85, 0.15), (0.85, 0.85)):
            true = family.psf_at(family.parameter_bank[row], fy, fx).numpy()
            true = true / true.sum()
            ours.append(psf_snr_db(est.psf_at(fy * 255, fx * 255), true))
            single.append(psf_snr_db(one.psf, true))
    assert np.mean(ours) > np.mean(single) + 1.0, (np.mean(ours), np.mean(single))


def test_tiles_see_their_own_part_of_the_field(reader_model):
    """Deblurring tile by tile (each tile with the operator of its region) agrees with one
    pass over the whole image, and differs from deblurring with the centre PSF alone."""
    family = reader_model.family
    x, y = _blurred(family, family.parameter_bank[1], size=256)
    est = ndb.identify(y, model=reader_model)
    whole = ndb.deblur(y, est, model=reader_model)
    tiled = ndb.deblur(y, est, model=reader_model, tile_px=128)
    assert np.abs(tiled - whole).mean() < 0.03 * np.abs(whole).mean()
    centre_only = ndb.deblur(y, BlurEstimate.from_psf(est.psf, est.fc), model=reader_model)
    assert np.abs(centre_only - whole).mean() > 2 * np.abs(tiled - whole).mean()


def test_train_for_a_family_with_a_zernike_reader(field_family_file, tmp_path):
    from napari_deepblur.training.run import TrainOptions, train_model

    path = train_model(
        TrainOptions(
            out=tmp_path,
            family_file=field_family_file,
            stage="deblurring",
            identification_from="zernike-default",
            deblurring_from="zernike-default",
            deblurring_steps=1,
            deblurring_batch_size=1,
            bank_size=64,
            device="cpu",
            quiet=True,
        )
    )
    model = load_model(path)
    assert isinstance(model.family, ProductConvolution)
    assert model.family.local_reader["kind"] == "zernike"
    card = model.card["training"]
    assert card["data"]["family_file"] == str(field_family_file)
    assert card["deblurring_initialised_from"]["file"] == "zernike-default"
    family, _, _ = load_family(field_family_file)
    assert torch.allclose(model.family.eigen_psfs, family.eigen_psfs, atol=1e-3)


def test_deblurring_stage_keeps_an_identification_network_of_the_same_family(
    tiny_field_model, field_family_file, tmp_path
):
    """The two-step recipe: an IN trained on the family (``--stage identification``), then
    the DN with ``--identification-from`` that model: its IN is kept as it is (it reads the
    family's own eigen-PSF weights, not a Zernike family) and the model identifies."""
    from napari_deepblur.training.run import TrainOptions, train_model

    path = train_model(
        TrainOptions(
            out=tmp_path,
            family_file=field_family_file,
            stage="deblurring",
            identification_from=tiny_field_model.path,
            deblurring_from=tiny_field_model.path,
            deblurring_steps=1,
            deblurring_batch_size=1,
            deblurring_lr=1e-4,
            bank_size=64,
            device="cpu",
            quiet=True,
        )
    )
    model = load_model(path)
    assert model.family.local_reader is None
    source = tiny_field_model.identification.state_dict()
    for name, value in model.identification.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert model.card["training"]["options"]["deblurring_lr"] == 1e-4
    family = model.family
    _, y = _blurred(family, family.parameter_bank[3], size=128)
    estimate = ndb.identify(y, model=model)
    assert estimate.field is not None and np.isfinite(estimate.coefficients).all()


def test_fig10_benchmark_runs_and_reports_every_position(tiny_field_model):
    from napari_deepblur.evaluation.fig10 import POSITIONS, ROWS, format_fig10, run_fig10

    result = run_fig10(tiny_field_model, n=1, size=128, levels=["L1"])
    rows = result["results"]["L1"]
    assert set(rows) == set(ROWS)
    for row in ("Deep-Blur space-varying (ours)", "convolution only (one PSF)"):
        for label in (*POSITIONS, "whole field"):
            assert np.isfinite(rows[row][f"psf_snr_db {label}"]["mean"])
    assert "PSF SNR r=0.75" in format_fig10(result)
    with pytest.raises(ValueError, match="not a space-varying"):
        run_fig10("zernike-default", n=1)


def test_cli_identify_then_deblur_with_the_exported_field(tiny_field_model, tmp_path):
    from napari_deepblur import formats, io
    from napari_deepblur.cli import main

    family = tiny_field_model.family
    _, y = _blurred(family, family.parameter_bank[2], size=128)
    image = tmp_path / "img.tif"
    io.write_image(image, y)
    model = str(tiny_field_model.path)
    psf = tmp_path / "est.psf.tif"
    assert main(["identify", str(image), "--model", model, "--psf-out", str(psf), "--quiet"]) == 0
    _, meta = formats.read_psf(psf)
    assert "gamma" in meta and "coefficients_waves_rms" not in meta
    assert meta["estimate"]["field"]["shape"] == [128, 128]
    out = tmp_path / "out.tif"
    args = ["deblur", str(image), "-o", str(out), "--psf", str(psf), "--model", model, "--quiet"]
    assert main(args) == 0
    restored = io.read_image(out).data
    assert restored.shape == y.shape and np.isfinite(restored).all()


def test_fit_field_takes_tiles_seen_in_different_numbers_of_copies(reader_model):
    """Tiles with more windows see each in fewer flipped copies: the readings of one image
    then have different copy counts, and the fit takes them all."""
    from napari_deepblur.field import WindowReadings, fit_field

    family = reader_model.family
    reader = family.identification_family()
    gamma = torch.zeros(7)
    gamma[0] = 0.1
    a = WindowReadings(
        gamma.expand(4, 3, 7).clone(), torch.tensor([[0.2, 0.2], [0.2, 0.5], [0.2, 0.8]])
    )
    b = WindowReadings(gamma.expand(1, 2, 7).clone(), torch.tensor([[0.8, 0.3], [0.8, 0.7]]))
    fitted = fit_field(family, reader, [a, b])
    expected = family.project(reader.psf(gamma)[None].expand(81, -1, -1), _lattice())
    assert torch.allclose(fitted, expected, atol=1e-3 * float(expected.abs().max()))


def _lattice():
    from napari_deepblur.optics.field import grid_positions

    return grid_positions(9).float()
