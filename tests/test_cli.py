"""The `deepblur` command line: in-process through `cli.main`, plus one real entry point."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from napari_deepblur import __version__, cli, io
from napari_deepblur.optics import airy_pattern


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deepblur {__version__}"


def test_installed_entry_point():
    exe = shutil.which("deepblur")
    assert exe, "the deepblur console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_psf_writes_tiff_with_metadata(tmp_path, capsys):
    out = tmp_path / "psf.tif"
    coeffs = [0.1, 0, 0.05, 0.08, 0, 0, 0]
    argv = ["psf", str(out), "--coefficients", ",".join(map(str, coeffs)), "--size", "25"]
    assert cli.main(argv) == 0
    psf, meta = io.read_psf(out)
    assert psf.shape == (25, 25) and psf.dtype == np.float32
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert meta["noll_indices"] == [4, 5, 6, 7, 8, 9, 10]
    assert meta["coefficients_waves_rms"] == coeffs
    assert meta["names"][0] == "defocus"
    assert meta["optics"]["na"] == 1.4 and meta["optics"]["pixel_size_nm"] == 74
    assert meta["fc"] == pytest.approx(1.4 * 74 / 520)


def test_psf_airy_matches_closed_form(tmp_path, capsys):
    out = tmp_path / "airy.tif"
    assert cli.main(["psf", str(out), "--fc", "0.2"]) == 0
    psf, meta = io.read_psf(out)
    assert meta["fc"] == pytest.approx(0.2)
    ref = airy_pattern(0.2, 31)
    assert np.abs(psf - ref).max() < 1e-3 * ref.max()


def test_psf_defocus_stack(tmp_path, capsys):
    out = tmp_path / "stack.tif"
    assert cli.main(["psf", str(out), "--defocus-um=-0.5,0,0.5", "--size", "21"]) == 0
    psf, meta = io.read_psf(out)
    assert psf.shape == (3, 21, 21)
    np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert meta["defocus_um"] == [-0.5, 0.0, 0.5]


def test_psf_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "psf.tif"
    assert cli.main(["psf", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["psf", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepblur: error:") and "exists" in err and "Traceback" not in err
    assert cli.main(["psf", str(out), "--overwrite"]) == 0


def test_psf_undersampled_is_a_user_error(tmp_path, capsys):
    assert cli.main(["psf", str(tmp_path / "x.tif"), "--fc", "0.3"]) == 2
    assert "Nyquist" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


def test_psf_wrong_number_of_coefficients(tmp_path, capsys):
    assert cli.main(["psf", str(tmp_path / "x.tif"), "--coefficients", "0.1,0.2"]) == 2
    assert "coefficients" in capsys.readouterr().err


def test_bench_psf_prints_json(capsys):
    assert cli.main(["bench", "psf", "--seconds", "0.5", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["psf_per_second"] > 0
    assert result["max_relative_l2_error"] < 1e-3
    assert result["batch"] == 256 and result["device"] == "cpu" and result["torch_threads"] >= 1
