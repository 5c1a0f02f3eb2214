import pytest

from napari_deepblur.optics import Microscope, UndersampledError


def test_fc_of_benchmark_optics():
    assert Microscope(1.4, 520, 74, refractive_index=1.518).fc == pytest.approx(0.1992, 1e-3)


def test_undersampled_optics_are_refused_with_a_reason():
    with pytest.raises(UndersampledError, match="Nyquist"):
        Microscope(na=1.4, wavelength_nm=520, pixel_size_nm=130, refractive_index=1.518)


def test_na_above_medium_index_is_refused():
    with pytest.raises(ValueError, match="exceeds the refractive index 1.0 of the immersion"):
        Microscope(na=1.4, wavelength_nm=520, pixel_size_nm=74, refractive_index=1.0)


def test_from_fc_round_trip():
    assert Microscope.from_fc(0.2).fc == pytest.approx(0.2)


def test_one_immersion_rule_for_every_caller():
    """Without a medium the NA implies one (air ≤ 1, water ≤ 1.27, oil above), it is said
    so, and the pipeline, the command line and the calibration dock all use this rule."""
    from napari_deepblur import cli, pipeline
    from napari_deepblur._napari import KnownOptics
    from napari_deepblur._napari.calibrate import CalibrateRequest
    from napari_deepblur.cli.common import microscope

    for na, index in ((0.8, 1.0), (1.0, 1.0), (1.2, 1.333), (1.27, 1.333), (1.3, 1.518)):
        scope = Microscope(na, 520, 50)
        assert scope.refractive_index == index and scope.immersion_inferred
        assert scope.to_dict()["immersion_inferred"] is True
    assert Microscope(1.4, 520, 74).immersion == "oil (inferred from NA 1.4)"
    given = Microscope(1.2, 520, 74, refractive_index=1.518)
    assert not given.immersion_inferred and "immersion_inferred" not in given.to_dict()
    with pytest.raises(ValueError, match="above the refractive index of every common"):
        Microscope(1.7, 520, 30)
    with pytest.raises(ValueError, match="exceeds the refractive index 1.333"):
        Microscope(1.4, 520, 74, refractive_index=1.333)

    optics = pipeline.Sampling.of(na=1.2, wavelength_nm=520, pixel_size_nm=80).optics
    assert optics["refractive_index"] == 1.333 and optics["immersion_inferred"]
    args = cli.build_parser().parse_args(["psf", "x.tif", "--na", "1.2"])
    assert microscope(args).refractive_index == 1.333
    request = CalibrateRequest(data=None, optics=KnownOptics(1.2, 520, 80))
    assert request.resolved_fc() == pytest.approx(Microscope(1.2, 520, 80).fc)
