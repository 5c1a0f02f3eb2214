"""Calibration of a product-convolution family from bead images
(``napari_deepblur.field.calibration``) and the ``deepblur calibrate`` command.

Synthetic bead images are rendered from a known :class:`FieldAberrations` (PSFs that vary
over the field) at sub-pixel positions, with Poisson–Gaussian noise. The real image is one
confocal plane shipped in ``tests/data`` (see ``tests/data/ATTRIBUTION.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_deepblur.field import calibrate_from_beads, save_calibration
from napari_deepblur.field.beads import BORDER, NOT_POINT_LIKE, OVERLAP, SATURATED, WEAK, find_beads
from napari_deepblur.optics.field import FieldAberrations

FC = 0.2
K = 31
DATA = Path(__file__).parent / "data"
CONFOCAL_PLANE = DATA / "beads_confocal_plane.tif"

#: Strong field: defocus, astigmatism and coma grow towards the corners.
STRONG = FieldAberrations(
    base={4: 0.04, 5: 0.02}, defocus_r2=0.15, astigmatism_r2=0.12, coma_r=0.10, tilt_x=0.04
)
#: Mild field: PSF peaks stay at the bead positions (for the sub-pixel accuracy test).
MILD = FieldAberrations(base={4: 0.02}, defocus_r2=0.08, astigmatism_r2=0.06, coma_r=0.05)


def render(shape, positions, amplitudes, field, fc=FC, background=100.0, read_std=3.0, seed=0):
    """Beads (total photons ``amplitudes``) at sub-pixel ``positions`` (px), PSFs from
    ``field`` at their field positions, plus background, Poisson and Gaussian noise."""
    rng = np.random.default_rng(seed)
    positions = np.asarray(positions, float)
    height, width = shape
    fractions = positions / np.array([height - 1, width - 1])
    psfs = field.psfs_at(fractions, fc, K).double().numpy()
    pad = 4
    canvas = np.zeros((height + 2 * (K + pad), width + 2 * (K + pad)))
    for (y, x), psf, amplitude in zip(positions, psfs, amplitudes, strict=True):
        iy, ix = int(np.floor(y)), int(np.floor(x))
        shifted = np.fft.ifftn(
            ndi.fourier_shift(np.fft.fftn(np.pad(psf, pad)), (y - iy, x - ix))
        ).real
        oy, ox = iy + K + pad - K // 2 - pad, ix + K + pad - K // 2 - pad
        canvas[oy : oy + K + 2 * pad, ox : ox + K + 2 * pad] += amplitude * shifted
    clean = canvas[K + pad : K + pad + height, K + pad : K + pad + width] + background
    return rng.poisson(np.clip(clean, 0, None)) + rng.normal(0, read_std, shape)


def grid(shape=(256, 256), spacing=36, seed=0, margin=K // 2 + 8):
    """Bead positions on a jittered grid, at least ``spacing − 6`` px apart."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(margin, shape[0] - 1 - margin, (shape[0] - 2 * margin) // spacing + 1)
    xs = np.linspace(margin, shape[1] - 1 - margin, (shape[1] - 2 * margin) // spacing + 1)
    positions = np.array([[y, x] for y in ys for x in xs])
    return positions + rng.uniform(-3, 3, positions.shape)


@pytest.fixture(scope="module")
def strong_image():
    positions = grid()
    image = render((256, 256), positions, [2e4] * len(positions), STRONG).astype(np.float32)
    return image, positions


@pytest.fixture(scope="module")
def strong_result(strong_image):
    return calibrate_from_beads(strong_image[0], FC, num_psfs=4, map_degree=2, seed=0)


def _match(beads, positions):
    found = np.array([[b.y_px, b.x_px] for b in beads])
    distance = np.hypot(*(found[:, None] - positions[None]).transpose(2, 0, 1))
    return distance.min(0), distance.argmin(0)


# -- detection ----------------------------------------------------------------------------


def test_detection_sub_pixel():
    positions = grid(seed=1)
    image = render((256, 256), positions, [2e4] * len(positions), MILD, seed=1)
    beads, psfs = find_beads(image, FC, K)
    assert len(beads) == len(positions) and all(b.accepted for b in beads)
    error, _ = _match(beads, positions)
    assert error.max() < 0.5, error.max()
    assert psfs.shape == (len(positions), K, K) and psfs.dtype == np.float32
    np.testing.assert_allclose(psfs.sum((1, 2)), 1, atol=1e-5)
    # centred: the centroid of every extracted PSF's core is near the central pixel
    yy, xx = np.mgrid[-2:3, -2:3]
    core = np.clip(psfs[:, K // 2 - 2 : K // 2 + 3, K // 2 - 2 : K // 2 + 3], 0, None)
    centroid = np.stack([(core * yy).sum((1, 2)), (core * xx).sum((1, 2))], 1)
    assert np.abs(centroid / core.sum((1, 2))[:, None]).max() < 0.35


def test_rejections_have_the_right_reason():
    good = [[60, 60], [60, 130], [130, 60], [190, 190], [130, 190]]
    special = {
        "border": [6.3, 100.4],
        "saturated": [190.2, 60.7],
        "overlap_a": [130.4, 125.2],
        "overlap_b": [130.1, 137.6],  # 12 px from overlap_a: inside one kernel
        "weak": [60.5, 190.5],
    }
    positions = good + list(special.values())
    amplitudes = [2e4] * len(good) + [2e4, 1e8, 2e4, 2e4, 400]
    image = render((224, 224), positions, amplitudes, FieldAberrations(), seed=2)
    # a blob 4 px wide (a cell, dirt): bright, but not a point
    yy, xx = np.mgrid[:224, :224]
    image += 3e3 * np.exp(-((yy - 190.0) ** 2 + (xx - 125.0) ** 2) / (2 * 4.0**2))
    image = np.clip(image, 0, 65535).astype(np.uint16)  # saturates the bright bead
    beads, psfs = find_beads(image, FC, K)
    reasons = {}
    for name, where in [*special.items(), ("blob", [190.0, 125.0])]:
        error, index = _match(beads, np.array([where]))
        assert error[0] < 1.5, f"{name} not detected"
        reasons[name] = beads[index[0]].reason
    assert reasons == {
        "border": BORDER,
        "saturated": SATURATED,
        "overlap_a": OVERLAP,
        "overlap_b": OVERLAP,
        "weak": WEAK,
        "blob": NOT_POINT_LIKE,
    }
    error, index = _match(beads, np.array(good, float))
    assert error.max() < 0.5 and all(beads[i].accepted for i in index)
    assert len(psfs) == sum(b.accepted for b in beads) == len(good)


# -- calibration ----------------------------------------------------------------------------


def test_calibration_beats_single_psf_on_held_out_beads(strong_result, strong_image):
    r = strong_result
    image, positions = strong_image
    assert len(r.accepted) == len(positions) and not r.rejected
    family = r.family
    assert (family.num_psfs, family.num_maps, family.num_parameters) == (4, 6, 24)
    assert family.parameter_bank.shape == (1, 24)
    torch.testing.assert_close(family.parameter_bank, r.gamma)
    assert 0 < family.parameter_jitter < 0.1
    assert r.variance_captured > 0.95
    assert r.variance_per_component[0] > r.variance_per_component[1]
    assert r.mean_relative_error < 0.25
    h = r.holdout
    assert h.num_held_out == round(0.2 * len(positions)) and h.num_fit + h.num_held_out == 36
    assert sum(b.held_out for b in r.beads) == h.num_held_out
    assert h.gain_db > 2.0, r.report_text()  # clear margin over one PSF for the field
    # the model's local PSF inside the field covered by beads is a normalised PSF
    centre = r.family.psf_at(r.gamma[0], 0.5, 0.5)
    assert centre.shape == (K, K) and float(centre.sum()) == pytest.approx(1, abs=0.15)
    text = r.report_text()
    assert "held-out PSF SNR" in text and "single-PSF baseline" in text


def test_several_images_give_one_parameter_vector_each():
    positions = grid(shape=(192, 192), spacing=34, seed=3)
    other = FieldAberrations(base={4: -0.05}, defocus_r2=-0.1, astigmatism_r2=0.08, coma_r=0.05)
    images = [
        render((192, 192), positions, [2e4] * len(positions), field, seed=4 + i)
        for i, field in enumerate([STRONG, other])
    ]
    r = calibrate_from_beads(images, FC, num_psfs=3, map_degree=1, seed=0)
    assert r.num_images == 2 and r.gamma.shape == (2, 9)
    assert r.family.parameter_bank.shape == (2, 9)
    assert {b.image for b in r.accepted} == {0, 1}
    # a stack (planes = states) is the same as a list of its planes
    stacked = calibrate_from_beads(np.stack(images), FC, num_psfs=3, map_degree=1, seed=0)
    torch.testing.assert_close(stacked.gamma, r.gamma)
    assert r.holdout is not None and r.holdout.num_held_out >= 2


def test_family_file_round_trips(strong_result, tmp_path):
    from napari_deepblur.models import load_family

    path = save_calibration(strong_result, tmp_path / "beads.safetensors", {"note": "test"})
    family, fc, card = load_family(path)
    assert fc == pytest.approx(FC)
    assert family.kind == "product_convolution"
    torch.testing.assert_close(family.eigen_psfs, strong_result.family.eigen_psfs)
    torch.testing.assert_close(family.maps, strong_result.family.maps)
    torch.testing.assert_close(family.parameter_bank, strong_result.gamma)
    assert family.parameter_jitter == pytest.approx(strong_result.family.parameter_jitter)
    assert card["note"] == "test" and card["calibration"]["beads_accepted"] == 36
    assert card["calibration"]["holdout"]["gain_db"] == pytest.approx(strong_result.holdout.gain_db)
    assert len(card["beads"]) == 36
    with pytest.raises(FileExistsError, match="exists"):
        save_calibration(strong_result, path)
    with pytest.raises(ValueError, match="safetensors"):
        save_calibration(strong_result, tmp_path / "beads.tif")


def test_bad_inputs_give_clear_errors(strong_image):
    image = strong_image[0]
    with pytest.raises(ValueError, match="must be 2D"):
        calibrate_from_beads([image[None]], FC)
    with pytest.raises(ValueError, match="shape"):
        calibrate_from_beads(np.zeros((2, 2, 64, 64)), FC)
    bad = image.copy()
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calibrate_from_beads(bad, FC)
    with pytest.raises(ValueError, match="Nyquist"):
        calibrate_from_beads(image, 0.3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        find_beads(image, FC, 30)
    few = render((128, 128), [[40.2, 30.7], [40.5, 52.1], [90.3, 90.6]], [2e4] * 3, MILD)
    with pytest.raises(ValueError) as err:
        calibrate_from_beads(few, FC, map_degree=2)
    message = str(err.value)
    assert "found 1 usable bead(s)" in message and "needs at least 6" in message
    assert "2 other detection(s) were rejected: 2 overlaps another bead" in message


# -- real beads ---------------------------------------------------------------------------------


def test_real_confocal_plane_four_beads():
    """One confocal plane, 22 nm pixels: beads are ~6 px RMS radius (FWHM ~10–14 px) and
    41–47 px apart. A 31 px kernel holds ±2.5 RMS radii of each bead and keeps the
    neighbours outside the overlap distance (one kernel); a larger one (e.g. 45) would
    reject them as overlapping."""
    from napari_deepblur.io import read_image
    from napari_deepblur.optics import Microscope

    image = read_image(CONFOCAL_PLANE)
    assert image.data.dtype == np.uint8 and image.pixel_size_nm == pytest.approx(22)
    fc = Microscope(1.4, 520, image.pixel_size_nm, 1.518).fc
    beads, psfs = find_beads(image.data, fc, kernel_size=31)
    assert len(beads) == 4 and all(b.accepted for b in beads)
    expected = np.array([[82, 75], [73, 29], [111, 44], [36, 125]], float)
    error, _ = _match(beads, expected)
    assert error.max() < 2
    assert all(4 < b.width_px < 9 for b in beads)
    r = calibrate_from_beads(image.data, fc, num_psfs=1, map_degree=0)
    assert r.variance_captured > 0.99
    assert r.holdout.num_held_out == 1 and r.holdout.model_mean_snr_db > 15
    assert find_beads(image.data, fc, kernel_size=45)[0][0].reason == OVERLAP


# -- the command line ---------------------------------------------------------------------------


def test_cli_calibrate_end_to_end(tmp_path, capsys, strong_image):
    from napari_deepblur.cli import main
    from napari_deepblur.io import write_image
    from napari_deepblur.models import load_family

    beads = write_image(tmp_path / "beads.tif", strong_image[0])
    out = tmp_path / "family.safetensors"
    argv = ["calibrate", str(beads), "--out", str(out), "--fc", "0.2", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "36 accepted" in printed and "single-PSF baseline" in printed
    family, fc, card = load_family(out)
    assert fc == pytest.approx(0.2) and family.num_parameters == 24
    assert card["command"].startswith("deepblur calibrate") and card["date"]
    assert card["inputs"][0]["path"] == str(beads)
    assert card["calibration"]["beads_accepted"] == 36
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == card["sha256"]
    # a family file is no model: said by its header as by load_model (a dock showed the
    # sampling of a "model" that could not load)
    from napari_deepblur.models import ModelFileError, load_model, model_header

    for read in (model_header, load_model):
        with pytest.raises(ModelFileError, match="is a family file, not a model"):
            read(out)
    # refuses to overwrite; --overwrite replaces
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_cli_calibrate_real_plane_and_errors(tmp_path, capsys):
    from napari_deepblur.cli import main

    out = tmp_path / "confocal.safetensors"
    base = ["calibrate", str(CONFOCAL_PLANE), "--out", str(out), "--quiet"]
    # the file's 22 nm pixel size is used with NA 1.4 and 520 nm
    assert main([*base, "--psfs", "1", "--map-degree", "0"]) == 0
    assert "4 detected in 1 image(s), 4 accepted" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["optics"]["pixel_size_nm"] == pytest.approx(22)
    # too few beads for 6 maps: one line, exit code 2, saying what would work
    assert main([*base, "--map-degree", "2", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepblur: error: found 4 usable bead(s)") and err.count("\n") == 1
    assert "allow map degree 0 and 2 eigen-PSF(s)" in err
    # the defaults choose what four beads can determine
    assert main([*base, "--overwrite"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    settings = card["calibration"]["settings"]
    assert settings["map_degree"] == 0 and settings["num_psfs"] == 2
    assert main([*base, "--fc", "0.3", "--overwrite"]) == 2
    assert "Nyquist" in capsys.readouterr().err
    missing = ["calibrate", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "m.safetensors")]
    assert main(missing) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["calibrate", str(CONFOCAL_PLANE), "--out", str(tmp_path / "x.npz")]) == 2
    assert ".safetensors" in capsys.readouterr().err


# -- the widget's headless twin ---------------------------------------------------------------


def test_calibrate_layers_headless(strong_image):
    from napari_deepblur._napari.calibrate import CalibrateRequest, calibrate_layers, variance_rows

    image = strong_image[0]
    before = image.copy()
    out = calibrate_layers(
        CalibrateRequest(
            data=image, source="beads", fc=FC, geometry={"scale": (74.0, 74.0)}, map_degree=1
        )
    )
    (coords, points, kind), (eigen, image_kwargs, image_kind) = out.layers
    assert kind == "points" and coords.shape == (36, 2)
    assert set(points["features"]["status"]) == {"accepted", "held out"}
    assert points["scale"] == (74.0, 74.0) and len(points["border_color"]) == 36
    assert image_kind == "image" and eigen.shape == (K, 4 * (K + 4) - 4)  # side by side
    assert image_kwargs["scale"] == (74.0, 74.0)
    rows = variance_rows(out.result)
    assert rows[0][0] == "e1" and len(rows) == 10
    assert all(a[2] < b[2] <= 100 + 1e-9 for a, b in zip(rows, rows[1:], strict=False))
    np.testing.assert_array_equal(image, before)


# -- defaults that the beads can determine ----------------------------------------------------


def test_defaults_fit_what_four_beads_allow_and_say_what_is_untested():
    """Four real beads: the defaults choose one map and two eigen-PSFs (not 6 maps, which
    failed), hold one bead out; a fit the beads cannot determine is named, not silent."""
    from napari_deepblur.field import TooFewBeadsError
    from napari_deepblur.io import read_image
    from napari_deepblur.optics import Microscope

    image = read_image(CONFOCAL_PLANE)
    fc = Microscope(1.4, 520, image.pixel_size_nm, 1.518).fc
    r = calibrate_from_beads(image.data, fc)
    assert (r.settings["map_degree"], r.settings["num_psfs"]) == (0, 2)
    assert r.holdout is not None and r.holdout.num_held_out == 1 and not r.cautions
    # degree 1 on 4 beads: 3 maps through 4 beads and 4 eigen-PSFs copying them
    with pytest.warns(UserWarning) as caught:
        r = calibrate_from_beads(image.data, fc, num_psfs=4, map_degree=1)
    text = " ".join(str(w.message) for w in caught)
    assert "3 maps to 4 bead(s)" in text and "by construction" in text
    assert "no bead was held out" in text and len(r.cautions) == 3
    assert "caution: " in r.report_text()
    # 6 maps: refused, with the beads found and the settings that would work
    with pytest.raises(TooFewBeadsError, match="allow map degree 0 and 2 eigen-PSF") as err:
        calibrate_from_beads(image.data, fc, map_degree=2)
    assert len(err.value.beads) == 4 and "bead image 1" in str(err.value)


def test_rings_of_a_defocused_bead_are_not_beads():
    """A defocused bead's ring has many local maxima: they are one bead (before: each was
    a detection, and all were rejected as overlapping one another)."""
    ring = FieldAberrations(base={4: 0.35})
    image = render((128, 128), [[63.3, 64.6]], [3e5], ring, seed=3)
    beads, psfs = find_beads(image, FC, 41)
    bright = [b for b in beads if b.peak > 0.2 * beads[0].peak]
    assert len(bright) == 1 and bright[0].accepted, [(b.peak, b.reason) for b in beads]
    assert len(psfs) == 1
    result = calibrate_from_beads(image, FC, kernel_size=41, holdout_fraction=0)
    assert any("one bead" in c for c in result.cautions)
