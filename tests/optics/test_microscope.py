import pytest

from napari_deepblur.optics import Microscope, UndersampledError


def test_fc_of_benchmark_optics():
    assert Microscope(1.4, 520, 74, refractive_index=1.518).fc == pytest.approx(0.1992, 1e-3)


def test_undersampled_optics_are_refused_with_a_reason():
    with pytest.raises(UndersampledError, match="Nyquist"):
        Microscope(na=1.4, wavelength_nm=520, pixel_size_nm=130, refractive_index=1.518)


def test_na_above_medium_index_is_refused():
    with pytest.raises(ValueError, match="refractive index"):
        Microscope(na=1.4, wavelength_nm=520, pixel_size_nm=74)


def test_from_fc_round_trip():
    assert Microscope.from_fc(0.2).fc == pytest.approx(0.2)
