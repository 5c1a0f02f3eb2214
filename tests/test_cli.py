"""The `deepblur` command line: in-process through `cli.main`, plus one real entry point."""

import errno
import json
import os
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_deepblur import __version__, cli, devices, formats, io, outputs
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
    psf, meta = formats.read_psf(out)
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
    psf, meta = formats.read_psf(out)
    assert meta["fc"] == pytest.approx(0.2)
    ref = airy_pattern(0.2, 31)
    assert np.abs(psf - ref).max() < 1e-3 * ref.max()


def test_psf_defocus_stack(tmp_path, capsys):
    out = tmp_path / "stack.tif"
    assert cli.main(["psf", str(out), "--defocus-um=-0.5,0,0.5", "--size", "21"]) == 0
    psf, meta = formats.read_psf(out)
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


# --- identify / deblur on real small images ---------------------------------------------------


@pytest.fixture(scope="module")
def sample_tif(tmp_path_factory):
    from napari_deepblur.samples import make_blurred_sample

    s = make_blurred_sample(0, 128)
    folder = tmp_path_factory.mktemp("cli")
    path = io.write_image(
        folder / "raw.tif", s["image"], pixel_size_nm=74.0, metadata={"optics": s["optics"]}
    )
    return path


def _no_partials(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".partial")]


def test_identify_prints_and_writes(sample_tif, tmp_path, capsys):
    psf, est = tmp_path / "psf.tif", tmp_path / "est.json"
    argv = ["identify", str(sample_tif), "--psf-out", str(psf), "--json", str(est), "--quiet"]
    assert cli.main([*argv, "--no-augment"]) == 0
    out = capsys.readouterr().out
    assert "defocus" in out and "waves RMS" in out and "noise" in out
    assert "NA 1.4" in out  # the optics stored in the file were used
    data = json.loads(est.read_text())
    assert len(data["coefficients"]) == len(data["noll_indices"]) == 7
    kernel, meta = formats.read_psf(psf)
    assert kernel.shape == (31, 31) and meta["names"][0] == "defocus"
    # the outputs exist now: refused without --overwrite
    assert cli.main([*argv, "--no-augment"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.skipif(
    not devices.bfloat16_available(torch.device("cpu")),
    reason=str(devices.bfloat16_missing(torch.device("cpu"))),
)
def test_identify_in_both_precisions(sample_tif, tmp_path, capsys):
    coefficients = {}
    for precision in ("float32", "bfloat16"):
        est = tmp_path / f"{precision}.json"
        argv = ["identify", str(sample_tif), "--json", str(est), "--quiet", "--no-augment"]
        assert cli.main([*argv, "--precision", precision]) == 0
        coefficients[precision] = np.array(json.loads(est.read_text())["coefficients"])
    np.testing.assert_allclose(coefficients["bfloat16"], coefficients["float32"], atol=0.01)


def test_precision_a_cpu_cannot_compute_is_one_line(sample_tif, tmp_path, capsys, monkeypatch):
    """bfloat16 on a CPU without it (AVX2 only; faked here): one line, exit 2, no output."""
    monkeypatch.setattr(devices, "_cpu_bfloat16_convolutions", lambda: False)
    out = tmp_path / "out.tif"
    for argv in (["identify", str(sample_tif), "--json", str(tmp_path / "e.json")],
                 ["deblur", str(sample_tif), "-o", str(out)]):  # fmt: skip
        assert cli.main([*argv, "--precision", "bfloat16", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("deepblur: error: bfloat16 is not available: this CPU")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())
    assert cli.main(["identify", str(sample_tif), "--precision", "half"]) == 2
    assert "invalid choice: 'half'" in capsys.readouterr().err


def test_deblur_with_estimate_and_psf(sample_tif, tmp_path, capsys):
    est = tmp_path / "est.json"
    psf = tmp_path / "psf.tif"
    argv = ["identify", str(sample_tif), "--json", str(est), "--psf-out", str(psf)]
    assert cli.main([*argv, "--quiet", "--no-augment"]) == 0
    out1, out2 = tmp_path / "a.tif", tmp_path / "b.tif"
    assert cli.main(["deblur", str(sample_tif), "-o", str(out1), "--estimate", str(est)]) == 0
    assert cli.main(["deblur", str(sample_tif), "-o", str(out2), "--psf", str(psf), "--quiet"]) == 0
    a, b = io.read_image(out1), io.read_image(out2)
    assert a.data.shape == (128, 128) and a.data.dtype == np.float32
    assert a.pixel_size_nm == pytest.approx(74.0)
    np.testing.assert_allclose(a.data, b.data, atol=1e-4)  # same blur, given two ways
    assert a.metadata["estimate"]["noll_indices"] == [4, 5, 6, 7, 8, 9, 10]
    assert _no_partials(tmp_path)


def test_deblur_refuses_to_overwrite(sample_tif, tmp_path, capsys):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    assert cli.main(["deblur", str(sample_tif), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepblur: error:") and "--overwrite" in err
    assert "Traceback" not in err and out.read_bytes() == b"precious"


def test_deblur_failure_leaves_no_file(sample_tif, tmp_path, capsys, monkeypatch):
    from napari_deepblur import pipeline

    def broken(*args, **kwargs):
        raise ValueError("simulated failure in the middle of the image")

    psf = tmp_path / "airy.tif"
    assert cli.main(["psf", str(psf)]) == 0  # a given PSF: no identification (faster)
    monkeypatch.setattr(pipeline._deblur, "_deblur_tile", broken)
    out = tmp_path / "out.tif"
    argv = ["deblur", str(sample_tif), "-o", str(out), "--psf", str(psf), "--quiet"]
    assert cli.main(argv) == 2
    assert "simulated failure" in capsys.readouterr().err
    assert not out.exists() and _no_partials(tmp_path)
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._deblur, "_deblur_tile", interrupted)
    assert cli.main(argv) == 130
    assert not out.exists() and _no_partials(tmp_path)


def test_stack_per_plane(sample_tif, tmp_path, capsys):
    image = io.read_image(sample_tif).data
    stack = np.stack([image, image[::-1]]) * 1000
    src = io.write_image(tmp_path / "stack.tif", stack.astype(np.uint16), axes="ZYX")
    est = tmp_path / "planes.json"
    argv = ["identify", str(src), "--all-planes", "--json", str(est), "--quiet", "--no-augment"]
    assert cli.main(argv) == 0
    assert "plane (1,)" in capsys.readouterr().out
    assert len(json.loads(est.read_text())["planes"]) == 2
    out = tmp_path / "out.tif"
    argv = ["deblur", str(src), "-o", str(out), "--estimate", str(est), "--dtype", "input"]
    assert cli.main([*argv, "--quiet"]) == 0
    result = io.read_image(out)
    assert result.data.shape == stack.shape and result.data.dtype == np.uint16
    assert result.axes == "ZYX"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
        (np.zeros((8, 8), np.uint16), "at least 16"),
    ],
)
def test_wrong_dims_are_user_errors(tmp_path, capsys, data, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else None)
    assert cli.main(["identify", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["identify", "deblur"])
def test_channels_are_not_planes(tmp_path, capsys, command):
    """A CYX file: one estimate shared by its channels (imaged at different wavelengths) is
    refused with one sentence; --per-plane identifies each channel on its own."""
    path = tmp_path / "cyx.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        path, rng.random((2, 96, 96), np.float32), imagej=True, metadata={"axes": "CYX"}
    )
    out = ["-o", str(tmp_path / "o.tif")] if command == "deblur" else []
    for mode in ([], ["--median"]):
        assert cli.main([command, str(path), *out, *mode, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "2 channels (axes CYX)" in err and len(err.strip().splitlines()) == 1
    per_plane = "--all-planes" if command == "identify" else "--per-plane"
    assert per_plane in err
    if command == "identify":
        # …each with the same optics, and it says so
        with pytest.warns(RuntimeWarning, match="all are taken as imaged with the same optics"):
            assert cli.main([command, str(path), per_plane, "--quiet", "--no-augment"]) == 0
        assert "plane (1,)" in capsys.readouterr().out


def test_unreadable_and_missing_files(tmp_path, capsys):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    assert cli.main(["identify", str(text)]) == 2
    assert "not a readable TIFF" in capsys.readouterr().err
    assert cli.main(["deblur", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bench_pipeline_tiny(capsys):
    argv = ["bench", "--sizes", "96", "--rl-iterations", "2", "--batch-images", "0", "--quiet"]
    assert cli.main([*argv, "--precision", "float32"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["precision"] == "float32"
    row = result["sizes"][0]
    assert row["size_px"] == 96 and row["identify_s"] > 0 and row["deblur_s"] > 0
    assert row["rl_s"] > 0 and row["rl_over_deepblur"] > 0 and row["peak_rss_mb"] > 0
    assert row["rl_dtype"] == "float32"  # scikit-image on the float32 image, as users run it
    assert result["device"] in ("cpu", "cuda", "mps")
    # what the speed depends on is recorded: the CPU's vector instructions, fused kernels
    import torch

    from napari_deepblur.devices import native_bfloat16
    from napari_deepblur.nets import fused

    features = result["cpu_features"].split(", ")  # e.g. AVX512, AVX512-BF16, AMX
    assert features[0] == torch.backends.cpu.get_cpu_capability()
    assert native_bfloat16(torch.device("cpu")) == bool({"AVX512-BF16", "AMX"} & set(features))
    assert result["fused_cpu_kernels"] == (result["device"] == "cpu" and fused.available())


def test_outputs_never_replace_the_input_or_each_other(sample_tif, tmp_path, capsys):
    image = tmp_path / "in.tif"
    image.write_bytes(sample_tif.read_bytes())
    before = image.read_bytes()
    for extra in (["--psf-out", str(image)], ["--json", str(image)]):
        assert cli.main(["identify", str(image), *extra, "--overwrite", "--quiet"]) == 2
        assert "would replace the input" in capsys.readouterr().err
    psf, sidecar = tmp_path / "p.tif", tmp_path / "p.json"
    argv = ["identify", str(image), "--psf-out", str(psf), "--json", str(sidecar), "--quiet"]
    assert cli.main(argv) == 2
    assert "would replace the other output" in capsys.readouterr().err
    assert cli.main(["identify", str(image), "--json", str(tmp_path / "no" / "e.json")]) == 2
    assert "output folder" in capsys.readouterr().err
    assert image.read_bytes() == before and not psf.exists() and not sidecar.exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--noise", "nan"], "noise must be a nonnegative"),
        (["--noise", "-1"], "noise must be a nonnegative"),
        (["--strength", "-1"], "strength must be a number from 0.25"),
        (["--strength", "10"], "strength must be a number from 0.25"),
        (["--tile-px", "0"], "at least 128 px"),
        (["--device", "foo"], "unknown device 'foo'"),
    ],
)
def test_bad_deblur_options_are_user_errors(sample_tif, tmp_path, capsys, option, message):
    out = tmp_path / "out.tif"
    assert cli.main(["deblur", str(sample_tif), "-o", str(out), *option, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_truncated_tiff_names_the_file(sample_tif, tmp_path, capsys):
    broken = tmp_path / "cut.tif"
    broken.write_bytes(sample_tif.read_bytes()[:5000])
    assert cli.main(["deblur", str(broken), "-o", str(tmp_path / "o.tif"), "--quiet"]) == 2
    assert "not a readable TIFF" in capsys.readouterr().err


def test_a_bad_plane_is_named(sample_tif, tmp_path, capsys):
    image = io.read_image(sample_tif).data
    broken = image.astype(np.float32)
    broken[5, 7] = np.nan
    stack = np.stack([image, broken])
    src = io.write_image(tmp_path / "stack.tif", stack, axes="ZYX")
    out = tmp_path / "out.tif"
    assert cli.main(["deblur", str(src), "-o", str(out), "--plane", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "1 NaN or infinite pixels in 1 plane(s) ((1,): 1)" in err and not out.exists()


def test_conflicting_or_zero_optics_are_named(sample_tif, tmp_path, capsys):
    out = str(tmp_path / "out.tif")
    base = ["deblur", str(sample_tif), "-o", out, "--quiet"]
    assert cli.main([*base, "--fc", "0.2", "--pixel-size-nm", "74"]) == 2
    assert "either --fc or the optics" in capsys.readouterr().err
    assert cli.main([*base, "--na", "0", "--wavelength-nm", "520", "--pixel-size-nm", "74"]) == 2
    assert "na must be positive" in capsys.readouterr().err
    nan_psf = tmp_path / "nan_psf.tif"
    io.write_image(nan_psf, np.full((15, 15), np.nan, np.float32))
    assert cli.main([*base, "--psf", str(nan_psf)]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_warnings_read_as_one_line_and_a_constant_plane_is_copied(sample_tif, tmp_path):
    import sys

    image = io.read_image(sample_tif).data
    stack = np.stack([image, np.full_like(image, 0.5)])
    src = io.write_image(tmp_path / "stack.tif", stack, axes="ZYX")
    out = tmp_path / "out.tif"
    command = [sys.executable, "-m", "napari_deepblur.cli", "deblur", str(src), "-o", str(out)]
    done = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "deepblur: warning: plane 2 of 2 is constant: copied unchanged (it "
        "shows no structure to deblur)"
    ]
    np.testing.assert_array_equal(io.read_image(out).data[1], stack[1])


def test_a_foreign_psf_is_cleaned_and_resampled_to_the_images_pixels(tmp_path, capsys):
    """A bead crop as labs have them: a camera offset, off-centre, at its own pixel size."""
    from napari_deepblur.optics import zernike_psf
    from napari_deepblur.samples import make_blurred_sample

    s = make_blurred_sample(0, 128)
    image = io.write_image(tmp_path / "raw.tif", s["image"], pixel_size_nm=74.0)
    coefficients, noll, fc = s["coefficients_waves_rms"], s["noll_indices"], s["optics"]["fc"]
    true_psf = io.write_image(tmp_path / "true.tif", s["true_psf"], pixel_size_nm=74.0)
    fine = zernike_psf(coefficients, fc / 2, 61, noll).numpy()  # 37 nm pixels
    bead = np.roll(fine / fine.max() * 1000 + 100, (6, -4), (0, 1))  # offset, off-centre
    bead_tif = io.write_image(tmp_path / "bead.tif", bead.astype(np.float32), pixel_size_nm=37.0)
    outputs = {}
    for name, psf in {"true": true_psf, "bead": bead_tif}.items():
        outputs[name] = tmp_path / f"{name}_out.tif"
        argv = ["deblur", str(image), "-o", str(outputs[name]), "--psf", str(psf), "--quiet"]
        argv += ["--na", "1.4", "--wavelength-nm", "520"]
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            assert cli.main(argv) == 0
    said = " ".join(str(n.message) for n in notes)
    assert "background (100" in said and "+6, -4 px (y, x) from its centre" in said
    assert "the PSF has 37 nm pixels, the image 74 nm" in said
    from napari_deepblur.evaluation.metrics import ssim

    with_true, with_bead = (ssim(io.read_image(p).data, s["sharp"]) for p in outputs.values())
    assert with_bead > ssim(s["image"], s["sharp"]) + 0.2  # it deblurs
    assert with_bead == pytest.approx(with_true, abs=0.02)  # as well as the true PSF


def test_usage_errors_and_bad_estimates_are_one_line(sample_tif, tmp_path, capsys):
    assert cli.main(["deblur", str(sample_tif)]) == 2  # no -o
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deepblur: error: the following arguments")
    assert cli.main(["deblur", str(sample_tif), "-o", "x.tif", "--tile-px", "128.5"]) == 2
    assert capsys.readouterr().err.startswith("deepblur: error: argument --tile-px")
    with pytest.warns(UserWarning, match=r"--tile-px 130: .* about 3\.9× the work"):
        args = cli.build_parser().parse_args(["deblur", "x.tif", "-o", "y.tif", "--tile-px", "130"])
    assert args.tile_px == 130  # slow, not refused
    # an unknown option points to the help of the subcommand it was given to
    assert cli.main(["deblur", str(sample_tif), "-o", "x.tif", "--tile", "128"]) == 2
    assert capsys.readouterr().err.endswith("--tile 128 (see: deepblur deblur --help)\n")
    assert cli.main(["bench", "psf", "--bogus"]) == 2
    assert "(see: deepblur bench psf --help)" in capsys.readouterr().err
    assert cli.main(["--bogus", "bench"]) == 2
    assert capsys.readouterr().err.endswith("--bogus (see: deepblur --help)\n")
    # a subcommand's option is never taken for an abbreviation of its parent's
    assert cli.main(["bench", "psf", "--batch", "8", "--seconds", "0.1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["batch"] == 8
    folder = tmp_path / "out.tif"
    folder.mkdir()
    argv = ["deblur", str(sample_tif), "-o", str(folder), "--overwrite", "--quiet"]
    assert cli.main(argv) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    estimate = tmp_path / "est.json"
    assert cli.main(["identify", str(sample_tif), "--json", str(estimate), "--quiet"]) == 0
    capsys.readouterr()
    data = json.loads(estimate.read_text())
    data["coefficients"] = [None] * len(data["coefficients"])
    estimate.write_text(json.dumps(data))
    argv = ["deblur", str(sample_tif), "-o", str(tmp_path / "o.tif"), "--estimate", str(estimate)]
    assert cli.main(argv) == 2
    assert "not all finite numbers" in capsys.readouterr().err
    assert cli.main(["psf", str(tmp_path / "huge.tif"), "--size", "100001"]) == 2
    assert "above the 1023 px" in capsys.readouterr().err


def test_only_the_first_series_is_read_with_a_warning(tmp_path):
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(np.zeros((64, 64), np.uint16))
        tif.write(np.ones((32, 32), np.uint16))
    with pytest.warns(RuntimeWarning, match=r"holds 2 image series .* only the first, \(64, 64\)"):
        assert io.read_image(path).data.shape == (64, 64)


def test_an_imagej_stack_comes_back_as_an_imagej_hyperstack(sample_tif, tmp_path):
    """Fiji users open the result: same sliders, pixel size and Z step as their input."""
    plane = io.read_image(sample_tif).data.astype(np.float32)
    stack = tmp_path / "zstack.tif"
    tifffile.imwrite(
        stack,
        np.stack([plane, plane[::-1]]),
        imagej=True,
        resolution=(1 / 0.074, 1 / 0.074),
        metadata={"axes": "ZYX", "unit": "micron", "spacing": 0.3},
    )
    psf = tmp_path / "airy.tif"
    assert cli.main(["psf", str(psf)]) == 0
    out = tmp_path / "out.tif"
    assert cli.main(["deblur", str(stack), "-o", str(out), "--psf", str(psf), "--quiet"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        meta = tif.imagej_metadata
        assert meta["unit"] == "nm" and meta["spacing"] == pytest.approx(300.0)
    back = io.read_image(out)
    assert back.pixel_size_nm == pytest.approx(74.0) and back.stack_steps["spacing"] == 300.0
    assert back.metadata["deblurred_from"] == "zstack.tif"
    assert back.metadata["precision"] in ("float32", "bfloat16")  # what the networks ran in


def test_a_damaged_tile_of_a_compressed_tiff_is_one_line(tmp_path, capsys):
    """Compressed tiled TIFFs are read lazily (chunk by chunk): a damaged tile in the middle
    fails mid-run, and says so in one line, not with a traceback."""
    from napari_deepblur.samples import make_blurred_sample

    image = make_blurred_sample(0, 256)["image"]
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[5], page.databytecounts[5]  # an inner tile
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    out = tmp_path / "out.tif"
    assert cli.main(["deblur", str(path), "-o", str(out), "--fc", "0.2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepblur: error: part of the image could not be decompressed")
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_identify_json_to_stdout_for_pipes(sample_tif, tmp_path, capsys, monkeypatch):
    """``--json -``: stdout is the estimate JSON alone (``| jq``), the report goes to stderr."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["identify", str(sample_tif), "--json", "-", "--quiet"]) == 0
    captured = capsys.readouterr()
    estimate = json.loads(captured.out)
    assert len(estimate["coefficients"]) == len(estimate["noll_indices"]) == 7
    assert "Zernike coefficients (Noll):" in captured.err
    assert not (tmp_path / "-").exists()


# --- faults: full disks, special files, claimed outputs, crafted inputs -----------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_path(sample_tif, tmp_path, capsys, monkeypatch):
    """``identify --json`` on a full disk gave an ``OSError [Errno 28]`` traceback: a disk
    that cannot take an output (full, over quota, read-only) is the user's to fix; other
    OSErrors keep their traceback."""
    est = tmp_path / "est.json"
    monkeypatch.setattr(Path, "write_text", _no_space)
    argv = ["identify", str(sample_tif), "--json", str(est), "--no-augment", "--quiet"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"deepblur: error: the disk is full while writing {est}\n"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def quota(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "psf.tif"))

    monkeypatch.setattr(formats, "write_psf", quota)
    assert cli.main(["psf", str(tmp_path / "psf.tif")]) == 2
    err = capsys.readouterr().err
    assert err == f"deepblur: error: Disk quota exceeded: {tmp_path / 'psf.tif'}\n"

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(formats, "write_psf", broken)
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(["psf", str(tmp_path / "psf.tif")])


def test_a_deblur_on_a_full_disk_stops_before_identifying(
    sample_tif, tmp_path, capsys, monkeypatch
):
    from napari_deepblur import pipeline

    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: free._replace(free=1000))
    monkeypatch.setattr(pipeline, "iter_identify_stack", None)  # never reached
    out = tmp_path / "out.tif"
    assert cli.main(["deblur", str(sample_tif), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deepblur: error: not enough space on {tmp_path}: the output out.tif")
    assert err.endswith("needs 0.1 MB, 0.0 MB free\n") and list(tmp_path.iterdir()) == []


def test_devices_and_pipes_are_refused_but_stdout_is_written(sample_tif, tmp_path, capsys):
    """As root, ``identify x.tif --json /dev/full --overwrite`` turned /dev/full into a
    regular file (a FIFO stands for the device here)."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    argv = ["identify", str(sample_tif), "--json", str(fifo), "--overwrite", "--quiet"]
    assert cli.main(argv) == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    argv = ["identify", str(sample_tif), "--json", "/dev/stdout", "--no-augment", "--quiet"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["coefficients"]) == 7
    assert "Zernike coefficients" in captured.err


def test_an_unwritable_output_folder_is_refused_before_any_work(
    sample_tif, tmp_path, capsys, monkeypatch
):
    from napari_deepblur import pipeline

    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    monkeypatch.setattr(pipeline, "iter_identify_stack", None)  # never reached
    argv = ["identify", str(sample_tif), "--json", str(locked / "e.json"), "--quiet"]
    assert cli.main(argv) == 2
    assert f"cannot write in the output folder {locked}" in capsys.readouterr().err


def test_a_folder_given_as_the_image_says_so(tmp_path, capsys):
    for command in (["identify", str(tmp_path)], ["deblur", str(tmp_path), "-o", "x.tif"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path} is a folder, not an image file" in err
        assert f"'deepblur batch {tmp_path} --out OUTPUT_FOLDER'" in err


def test_deblur_removes_what_a_killed_run_left_and_waits_for_no_live_one(
    sample_tif, tmp_path, capsys
):
    """After ``kill -9`` the hidden temporary files stayed, and a re-run did not remove
    them; an output another run is writing now is refused, its files left alone."""
    psf = tmp_path / "airy.tif"
    assert cli.main(["psf", str(psf)]) == 0  # a given PSF: no identification (faster)
    out = tmp_path / "out.tif"
    argv = ["deblur", str(sample_tif), "-o", str(out), "--psf", str(psf), "--quiet"]
    left = tmp_path / ".out.tif.0badc0de.partial"
    with outputs.claim_output(out):  # another run writing it
        left.write_bytes(b"\0" * 1000)
        assert cli.main(argv) == 2
        assert "being written by another run" in capsys.readouterr().err
        assert left.exists()
    assert cli.main(argv) == 0  # that run was killed: its file is stale
    assert out.exists() and _no_partials(tmp_path)
    assert not list(tmp_path.glob(".*.lock"))
