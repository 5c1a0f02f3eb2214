"""The optics an OME-TIFF states (the objective's NA, each channel's emission wavelength,
the pixel size) are the image's sampling on the command line as in napari."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_deepblur import cli
from napari_deepblur.samples import make_blurred_sample


def write_ome(path, data: np.ndarray, wavelengths_nm, na=1.3, pixel_um=0.074):
    """An OME-TIFF (C, Y, X) whose OME-XML states the objective's NA, the pixel size and
    each channel's emission wavelength, as microscope software writes them."""
    channels = "".join(
        f'<Channel ID="Channel:0:{c}" SamplesPerPixel="1" EmissionWavelength="{w}" '
        'EmissionWavelengthUnit="nm"/>'
        for c, w in enumerate(wavelengths_nm)
    )
    size_c, (h, w) = len(wavelengths_nm), data.shape[-2:]
    ome = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        f'<Instrument ID="Instrument:0"><Objective ID="Objective:0" LensNA="{na}"/></Instrument>'
        f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="float" '
        f'SizeX="{w}" SizeY="{h}" SizeC="{size_c}" SizeZ="1" SizeT="1" '
        f'PhysicalSizeX="{pixel_um}" PhysicalSizeY="{pixel_um}">{channels}'
        + "".join(f'<TiffData IFD="{c}" FirstC="{c}" PlaneCount="1"/>' for c in range(size_c))
        + "</Pixels></Image></OME>"
    )
    tifffile.imwrite(path, data.astype(np.float32), description=ome, metadata=None)
    return path


def _image(seed=0):
    return make_blurred_sample(seed, 128)["image"]


def test_identify_takes_the_optics_an_ome_tiff_states(tmp_path, capsys):
    path = write_ome(tmp_path / "one.ome.tif", _image()[None], [600])
    assert cli.main(["identify", str(path), "--no-augment"]) == 0
    out = capsys.readouterr().out
    assert "sampling: NA 1.3, 600.0 nm, 74 nm pixels" in out and "(from the file)" in out


def test_each_channel_is_identified_and_deblurred_at_its_own_wavelength(tmp_path, capsys):
    """A 2-channel OME-TIFF stating 460 and 640 nm: plane by plane, each channel's estimate
    has its channel's sampling (fc = NA · pixel / λ), and nothing warns; deblurring plane by
    plane uses them."""
    import json
    import warnings

    path = write_ome(tmp_path / "two.ome.tif", np.stack([_image(0), _image(1)]), [460, 640])
    est = tmp_path / "est.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "same optics" warning
        argv = ["identify", str(path), "--all-planes", "--no-augment", "--json", str(est)]
        assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "each channel at its own emission wavelength instead (460, 640 nm)" in out
    planes = json.loads(est.read_text())["planes"]
    fc = [p["fc"] for p in planes]
    assert fc == pytest.approx([1.3 * 74 / 460, 1.3 * 74 / 640], rel=1e-3)
    assert [p["optics"]["wavelength_nm"] for p in planes] == [460.0, 640.0]

    deblurred = tmp_path / "two-deblurred.tif"
    argv = ["deblur", str(path), "-o", str(deblurred), "--per-plane", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(argv) == 0
    from napari_deepblur import io

    stored = io.read_image(deblurred).metadata["estimate"]
    assert [p["fc"] for p in stored["planes"]] == pytest.approx(fc)


def test_one_wavelength_given_for_all_channels_is_said(tmp_path):
    path = write_ome(tmp_path / "two.ome.tif", np.stack([_image(0), _image(1)]), [460, 640])
    argv = ["identify", str(path), "--all-planes", "--no-augment", "--wavelength-nm", "520"]
    with pytest.warns(RuntimeWarning, match="all are taken as imaged with the same optics"):
        assert cli.main([*argv, "--quiet"]) == 0


def test_planes_sampled_differently_cannot_share_an_estimate():
    from napari_deepblur import pipeline

    stack = np.stack([_image(0), _image(1)])
    samplings = [pipeline.Sampling.of(fc=0.21), pipeline.Sampling.of(fc=0.15)]
    with pytest.raises(ValueError, match="cannot share one estimate"):
        pipeline.run(
            pipeline.iter_identify_stack(
                stack, mode="median", device="cpu", sampling=lambda index: samplings[index[0]]
            )
        )
    per_plane = pipeline.run(
        pipeline.iter_identify_stack(
            stack, mode="per-plane", device="cpu", augment=False,
            sampling=lambda index: samplings[index[0]],
        )
    )  # fmt: skip
    assert [e.fc for e in per_plane] == pytest.approx([0.21, 0.15])


def test_a_given_estimate_deblurs_each_channel_at_its_own_sampling(tmp_path, monkeypatch):
    """Estimates given (per plane, or one for all) to deblur a 2-channel OME-TIFF: each
    channel is deblurred at its own wavelength's sampling, into a TIFF and into an
    OME-Zarr (found in review: the first channel's was used for both), and each output
    keeps the channels' wavelengths."""
    from napari_deepblur import formats, pipeline
    from napari_deepblur.chunked import read_any
    from napari_deepblur.pipeline import _stacks

    path = write_ome(tmp_path / "two.ome.tif", np.stack([_image(0), _image(1)]), [460, 640])
    expected = pytest.approx([1.3 * 74 / 460, 1.3 * 74 / 640], rel=1e-3)
    est = tmp_path / "est.json"
    argv = ["identify", str(path), "--all-planes", "--no-augment", "--json", str(est)]
    assert cli.main([*argv, "--quiet"]) == 0
    used: list[float] = []

    def spy(setup):
        def deblur_setup(plane, estimate, model, sampling, *rest, **kw):
            used.append(sampling.fc)
            return setup(plane, estimate, model, sampling, *rest, **kw)

        return deblur_setup

    monkeypatch.setattr(_stacks, "deblur_setup", spy(_stacks.deblur_setup))
    out = tmp_path / "out.tif"
    argv = ["deblur", str(path), "-o", str(out), "--estimate", str(est), "--quiet"]
    assert cli.main(argv) == 0
    assert used == expected
    kept = formats.channel_wavelengths_nm(read_any(out).metadata)
    assert kept == [460.0, 640.0]  # the output read again: each channel at its own wavelength

    pytest.importorskip("ome_zarr")
    sampling = pipeline.Sampling.of(na=1.3, wavelength_nm=460, pixel_size_nm=74)
    first = pipeline.identify(_image(0), device="cpu", augment=False, sampling=sampling)
    one = formats.write_estimate_json(tmp_path / "one.json", first)  # for both channels
    used.clear()
    monkeypatch.setattr(pipeline, "deblur_setup", spy(pipeline.deblur_setup))
    zarr_out = tmp_path / "out.ome.zarr"
    argv = ["deblur", str(path), "-o", str(zarr_out), "--estimate", str(one), "--quiet"]
    assert cli.main(argv) == 0
    assert used == expected
    assert formats.channel_wavelengths_nm(read_any(zarr_out).metadata) == [460.0, 640.0]
