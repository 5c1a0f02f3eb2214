"""Microscope optics → sampling of the image, as the cutoff frequency ``fc``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


#: Immersion media an objective's NA implies when the medium is not given, as (highest NA
#: made for it, refractive index, name): dry objectives reach 0.95, water immersion 1.27.
IMMERSION_MEDIA = ((1.0, 1.0, "air"), (1.27, 1.333, "water"), (1.518, 1.518, "oil"))


def immersion_medium(na: float) -> tuple[float, str]:
    """``(refractive index, name)`` of the immersion medium an objective of numerical
    aperture ``na`` implies: air up to NA 1.0, water up to 1.27, oil (1.518) above. The one
    rule for every caller that is not told the medium.

    >>> immersion_medium(0.8), immersion_medium(1.2), immersion_medium(1.4)
    ((1.0, 'air'), (1.333, 'water'), (1.518, 'oil'))
    """
    for highest_na, index, name in IMMERSION_MEDIA:
        if na <= highest_na + 1e-9:
            return index, name
    raise ValueError(
        f"NA {na} is above the refractive index of every common immersion medium (oil "
        f"1.518): give the medium's refractive index"
    )


@dataclass(frozen=True)
class Microscope:
    """Widefield fluorescence optics.

    Parameters
    ----------
    na : numerical aperture of the objective.
    wavelength_nm : emission wavelength in nm.
    pixel_size_nm : pixel size in the sample plane in nm (camera pixel / magnification).
    refractive_index : refractive index of the immersion medium (1.0 air, 1.333 water,
        1.518 oil); must be ≥ NA. None (the default): the medium the NA implies
        (:func:`immersion_medium`), and ``immersion_inferred`` is True.

    ``fc = NA · pixel_size / λ`` is the cutoff of the pupil in cycles/pixel; the incoherent
    OTF reaches ``2·fc``, so ``fc ≤ 0.25`` means Nyquist sampling or better.

    >>> scope = Microscope(na=1.4, wavelength_nm=520, pixel_size_nm=74)
    >>> round(scope.fc, 4)
    0.1992
    >>> scope.refractive_index, scope.immersion
    (1.518, 'oil (inferred from NA 1.4)')
    """

    na: float
    wavelength_nm: float
    pixel_size_nm: float
    refractive_index: float | None = None
    immersion_inferred: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.refractive_index is None:
            if not self.na > 0:
                raise ValueError(f"na must be positive, got {self.na}")
            object.__setattr__(self, "refractive_index", immersion_medium(self.na)[0])
            object.__setattr__(self, "immersion_inferred", True)
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

    @property
    def immersion(self) -> str:
        """The immersion medium in words, saying when it was inferred from the NA."""
        names = {index: name for _, index, name in IMMERSION_MEDIA}
        name = names.get(self.refractive_index, f"n = {self.refractive_index}")
        return f"{name} (inferred from NA {self.na})" if self.immersion_inferred else name

    def to_dict(self) -> dict:
        """The optics, ``fc`` and, when the medium was inferred, ``immersion_inferred``."""
        d = {**asdict(self), "fc": self.fc}
        if not d.pop("immersion_inferred"):
            return d
        return {**d, "immersion_inferred": True}

    @classmethod
    def from_dict(cls, d: dict) -> Microscope:
        """Inverse of :meth:`to_dict` (an inferred immersion is inferred again).

        >>> scope = Microscope(1.4, 520, 74)
        >>> Microscope.from_dict(scope.to_dict()) == scope
        True
        """
        index = None if d.get("immersion_inferred") else d.get("refractive_index")
        return cls(d["na"], d["wavelength_nm"], d["pixel_size_nm"], index)

    @classmethod
    def from_fc(
        cls,
        fc: float,
        *,
        na: float = 1.4,
        wavelength_nm: float = 520.0,
        refractive_index: float | None = None,
    ) -> Microscope:
        """Optics with the given cutoff: the pixel size is derived from NA and λ."""
        return cls(na, wavelength_nm, fc * wavelength_nm / na, refractive_index)
