"""``deepblur demo``: the README's main command, on the shipped sample, with no download."""

import json

import numpy as np

from napari_deepblur import cli, formats, io


def test_demo_writes_everything_and_scores(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert cli.main(["demo", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "PSF SNR" in text and "SSIM" in text and "defocus" in text
    for name in ("raw.tif", "sharp.tif", "deblurred.tif", "psf_true.tif", "psf_estimated.tif"):
        assert (out / name).is_file(), name
    raw, deblurred = io.read_image(out / "raw.tif"), io.read_image(out / "deblurred.tif")
    assert raw.data.shape == deblurred.data.shape == (256, 256)
    assert raw.pixel_size_nm == 74.0 and raw.metadata["optics"]["na"] == 1.4
    true_psf, meta = formats.read_psf(out / "psf_true.tif")
    estimated, _ = formats.read_psf(out / "psf_estimated.tif")
    assert true_psf.shape == estimated.shape == (31, 31)
    assert np.isclose(estimated.sum(), 1, atol=1e-4)
    summary = json.loads((out / "estimate.json").read_text())
    assert set(summary["metrics"]) >= {"psf_snr_db", "ssim_raw", "ssim_deblurred"}
    assert summary["truth"]["coefficients_waves_rms"] == meta["coefficients_waves_rms"]
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_demo_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "raw.tif").write_bytes(b"mine")
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "raw.tif").read_bytes() == b"mine"
