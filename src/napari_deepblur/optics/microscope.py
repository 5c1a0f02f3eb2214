"""Microscope optics → sampling of the image, as the cutoff frequency ``fc``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Above this cutoff (cycles/pixel) the incoherent OTF (support ``2·fc``) passes Nyquist.
NYQUIST_FC = 0.25


class UndersampledError(ValueError):
    """The optics resolve finer detail than the pixels can sample (fc > 0.25 cycles/pixel)."""


def check_fc(fc: float, *, what: str = "these optics") -> float:
    """Return ``fc`` (cycles/pixel) if it is in (0, 0.25], else raise a clear error."""
    fc = float(fc)
    if not fc > 0:
        raise ValueError(f"the cutoff frequency fc must be positive, got {fc} cycles/pixel")
    if fc > NYQUIST_FC + 1e-9:
        raise UndersampledError(
            f"{what} give fc = {fc:.3f} cycles/pixel, above the Nyquist limit of "
            f"{NYQUIST_FC} (the OTF reaches 2·fc = {2 * fc:.3f} > 0.5): the image is "
            "undersampled. Check NA, wavelength and pixel size (pixel size must be at most "
            "λ / (4·NA))."
        )
    return fc


@dataclass(frozen=True)
class Microscope:
    """Widefield fluorescence optics.

    Parameters
    ----------
    na : numerical aperture of the objective.
    wavelength_nm : emission wavelength in nm.
    pixel_size_nm : pixel size in the sample plane in nm (camera pixel / magnification).
    refractive_index : refractive index of the immersion medium (1.0 air, 1.33 water,
        1.518 oil); must be ≥ NA.

    ``fc = NA · pixel_size / λ`` is the cutoff of the pupil in cycles/pixel; the incoherent
    OTF reaches ``2·fc``, so ``fc ≤ 0.25`` means Nyquist sampling or better.

    >>> Microscope(na=1.4, wavelength_nm=520, pixel_size_nm=74).fc
    0.19923076923076924
    """

    na: float
    wavelength_nm: float
    pixel_size_nm: float
    refractive_index: float = 1.0

    def __post_init__(self) -> None:
        for name in ("na", "wavelength_nm", "pixel_size_nm", "refractive_index"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.na > self.refractive_index + 1e-9:
            raise ValueError(
                f"NA {self.na} exceeds the refractive index {self.refractive_index} of the "
                "immersion medium; set refractive_index (e.g. 1.518 for oil)"
            )
        check_fc(
            self.fc,
            what=f"NA {self.na}, λ {self.wavelength_nm} nm and pixel {self.pixel_size_nm} nm",
        )

    @property
    def fc(self) -> float:
        """Pupil cutoff in cycles/pixel."""
        return self.na * self.pixel_size_nm / self.wavelength_nm

    def to_dict(self) -> dict:
        return {**asdict(self), "fc": self.fc}

    @classmethod
    def from_fc(
        cls,
        fc: float,
        *,
        na: float = 1.4,
        wavelength_nm: float = 520.0,
        refractive_index: float = 1.518,
    ) -> Microscope:
        """Optics with the given cutoff: the pixel size is derived from NA and λ."""
        return cls(na, wavelength_nm, fc * wavelength_nm / na, refractive_index)
