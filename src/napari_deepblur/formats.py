"""Deep-Blur's own formats, written and read here only.

- **Estimate JSON** (``deepblur identify --json``, the estimate beside each output of
  ``deepblur deblur``/``batch``, layer metadata): :func:`estimate_json` /
  :func:`estimate_from_json` (one estimate, or ``{"planes": [...]}`` for one per plane),
  :func:`write_estimate_json` / :func:`read_estimate_json` for files.
- **PSF files**: a float32 TIFF plus a JSON sidecar (``<name>.json``) whose ``"format"`` is
  :data:`PSF_FORMAT`: :func:`write_psf` / :func:`read_psf` (:class:`NotAPsfFileError` for a
  file that is not one), :func:`is_psf_file`; :func:`estimate_from_psf_file` reads any PSF
  file (ours, or a 2D PSF from another tool) as a :class:`~napari_deepblur.pipeline.BlurEstimate`.
- **PSF metadata** (the sidecar's content, and the ``metadata`` of a PSF layer in napari, the
  same dict): :func:`psf_metadata` (an estimate → metadata), :func:`zernike_psf_metadata`
  (optics and coefficients, ``deepblur psf``), :func:`estimate_from_psf_metadata` (back),
  :func:`is_psf_metadata`.
- **Optics known for an image** (its layer's metadata and scale, the TIFF it came from):
  :class:`KnownOptics` and :func:`known_optics`, which the entry points turn into the
  pipeline's :class:`~napari_deepblur.pipeline.Sampling` once.

Coefficients are Zernike coefficients in waves RMS (Noll-normalised); ``fc`` is the pupil
cutoff in cycles/pixel; pixel sizes and wavelengths in nm.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import io

if TYPE_CHECKING:  # imported where used: reading a file's format needs no torch
    from .pipeline import BlurEstimate

__all__ = [
    "PSF_FORMAT",
    "KnownOptics",
    "NotAPsfFileError",
    "estimate_from_json",
    "estimate_from_psf_file",
    "estimate_from_psf_metadata",
    "estimate_json",
    "estimate_json_text",
    "is_psf_file",
    "is_psf_metadata",
    "known_optics",
    "output_estimate_input",
    "psf_metadata",
    "read_estimate_json",
    "read_psf",
    "stack_psf_metadata",
    "write_estimate_json",
    "write_output_estimate",
    "write_psf",
    "zernike_names",
    "zernike_psf_metadata",
]

#: The ``format`` of PSF files' metadata (sidecar and TIFF description) and of PSF layers.
PSF_FORMAT = "napari-deepblur-psf"
_PSF_SUFFIXES = (".tif", ".tiff")


class NotAPsfFileError(ValueError):
    """A file read as a Deep-Blur PSF file that is not one (no :data:`PSF_FORMAT` metadata)."""


# -- estimate JSON ------------------------------------------------------------------------
def estimate_json(estimate) -> dict:
    """The JSON form of one estimate, or ``{"planes": [...]}`` for one per plane."""
    if isinstance(estimate, list | tuple):
        return {"planes": [e.to_dict() for e in estimate]}
    return estimate.to_dict()


def estimate_from_json(data: Mapping):
    """Inverse of :func:`estimate_json`: a :class:`BlurEstimate`, or a list of them (also
    from the estimate written beside an output, :func:`write_output_estimate`)."""
    from .pipeline import BlurEstimate

    if "coefficients" not in data and isinstance(data.get("estimate"), Mapping):
        data = data["estimate"]
    if "planes" in data:
        return [BlurEstimate.from_dict(d) for d in data["planes"]]
    return BlurEstimate.from_dict(dict(data))


def write_estimate_json(path, estimate, **extra) -> Path:
    """Write :func:`estimate_json` of ``estimate`` (with the keys ``extra`` first, e.g. the
    image it is of) to ``path`` atomically; ValueError (nothing written) for NaN values."""
    data = {**extra, **estimate_json(estimate)}
    return io.write_text(path, io.json_text(data, "the estimate"))


def estimate_json_text(estimate, **extra) -> str:
    """What :func:`write_estimate_json` writes, as text (e.g. for standard output)."""
    return io.json_text({**extra, **estimate_json(estimate)}, "the estimate")


def write_output_estimate(path, estimate, input_path) -> Path:
    """The estimate beside an output of ``deepblur deblur``/``batch``: ``{"input": the input
    image's path, "estimate": estimate_json(estimate)}``, written atomically."""
    data = {"input": str(input_path), "estimate": estimate_json(estimate)}
    return io.write_text(path, io.json_text(data, "the estimate"))


def output_estimate_input(path) -> str | None:
    """The input path recorded by :func:`write_output_estimate` in ``path``, or None (no
    such file, or not one of those)."""
    try:
        written_for = json.loads(Path(path).read_text(encoding="utf-8")).get("input")
    except (OSError, ValueError, AttributeError):
        return None
    return written_for


def read_estimate_json(path):
    """The estimate (or one per plane) in a JSON file from :func:`write_estimate_json`.
    FileNotFoundError when missing; ValueError, naming the file, when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"estimate file not found: {path}")
    try:
        return estimate_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} is not an estimate JSON from 'deepblur identify --json' "
            f"({type(exc).__name__}: {exc})"
        ) from None


# -- PSF metadata ---------------------------------------------------------------------------
def zernike_names(noll) -> list[str]:
    """The names of the Zernike terms of the Noll indices ``noll`` ("defocus", …)."""
    from .optics import zernike_name

    return [zernike_name(int(j)) for j in noll]


def psf_metadata(estimate, source: str = "") -> dict:
    """The metadata of the PSF of ``estimate``, in a file's sidecar or a napari layer alike:
    ``format``, ``source``, ``optics`` (``{"fc"}`` when unknown), ``fc``, ``noll_indices``,
    ``names``, the coefficients (``coefficients_waves_rms`` and ``uncertainty_waves_rms``; a
    space-varying estimate's ``gamma``, which has no unit), ``noise``, ``model`` and the whole
    estimate (``estimate``: :meth:`BlurEstimate.to_dict`)."""
    d = estimate.to_dict()
    optics = dict(estimate.optics) if estimate.optics else {"fc": float(estimate.fc)}
    names = list(estimate.names) or zernike_names(estimate.noll_indices)
    if estimate.field is not None:
        coefficients = {"gamma": d["coefficients"]}
    else:
        coefficients = {
            "coefficients_waves_rms": d["coefficients"],
            "uncertainty_waves_rms": d.get("uncertainty"),
        }
    return {
        "format": PSF_FORMAT,
        "source": source,
        "optics": optics,
        "fc": float(estimate.fc),
        "noll_indices": [int(j) for j in estimate.noll_indices],
        "names": names,
        **coefficients,
        "noise": d.get("noise") or {},
        "model": estimate.model,
        "estimate": d,
    }


def stack_psf_metadata(estimates: Sequence, source: str = "") -> dict:
    """:func:`psf_metadata` of a PSF stack with one estimate per plane: the first plane's
    keys, with the coefficients of every plane (one list per plane) and no single estimate."""
    metadata = psf_metadata(estimates[0], source)
    key = "gamma" if "gamma" in metadata else "coefficients_waves_rms"
    metadata[key] = [np.asarray(e.coefficients).tolist() for e in estimates]
    for single in ("estimate", "uncertainty_waves_rms", "noise"):
        metadata.pop(single, None)
    return metadata


def zernike_psf_metadata(scope, noll, coefficients, defocus_um=None) -> dict:
    """The metadata of a PSF computed from optics (a
    :class:`~napari_deepblur.optics.Microscope`) and Zernike ``coefficients`` (waves RMS) for
    the Noll indices ``noll`` (``deepblur psf``); ``defocus_um``: the planes of a stack."""
    metadata = {
        "optics": scope.to_dict(),
        "fc": scope.fc,
        "noll_indices": [int(j) for j in noll],
        "coefficients_waves_rms": [float(c) for c in coefficients],
        "names": zernike_names(noll),
    }
    if defocus_um is not None:
        metadata["defocus_um"] = [float(z) for z in defocus_um]
    return metadata


def is_psf_metadata(metadata: Mapping | None) -> bool:
    """True for the metadata of our PSF layers and of PSF files we read."""
    return bool(metadata) and metadata.get("format") == PSF_FORMAT


def _positive(value) -> float | None:
    """A finite, positive number, or None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def estimate_from_psf_metadata(psf, metadata: Mapping | None, default_fc: float | None = None):
    """A :class:`BlurEstimate` from a 2D PSF and its metadata (a PSF layer, a PSF file read
    back): the estimate it holds when there is one, else its Zernike coefficients, else the
    PSF alone (sampled at the metadata's ``fc``, or ``default_fc``: ValueError without
    either). The PSF is normalised to sum 1."""
    from .pipeline import BlurEstimate

    metadata = dict(metadata or {})
    psf = np.asarray(psf, dtype=np.float32)
    if psf.ndim != 2:
        raise ValueError(
            f"the PSF has shape {psf.shape}; deblurring needs a 2D PSF (Y, X): choose a 2D "
            "PSF or identify the blur of this image first"
        )
    if not (np.all(np.isfinite(psf)) and psf.sum() > 0):
        raise ValueError("the PSF has no positive, finite values; choose another PSF")
    psf = psf / psf.sum(dtype=np.float64)
    if isinstance(metadata.get("estimate"), Mapping):
        return BlurEstimate.from_dict(dict(metadata["estimate"]), psf=psf)
    optics = metadata.get("optics") if isinstance(metadata.get("optics"), Mapping) else {}
    fc = _positive(metadata.get("fc")) or _positive(optics.get("fc")) or default_fc
    if fc is None:
        raise ValueError(
            "the PSF has no sampling information (fc or optics in its metadata); "
            "identify the blur of the image instead"
        )
    coefficients = metadata.get("coefficients_waves_rms")
    noll = metadata.get("noll_indices")
    if coefficients is None or noll is None or len(coefficients) != len(noll):
        return BlurEstimate.from_psf(
            psf, fc, noise=metadata.get("noise") or {}, optics=dict(optics) or None
        )
    return BlurEstimate.from_dict(
        {
            "coefficients": list(coefficients),
            "noll_indices": list(noll),
            "fc": fc,
            "noise": metadata.get("noise") or {},
            "names": metadata.get("names") or [],
            "model": metadata.get("model", ""),
            "optics": dict(optics) or None,
        },
        psf=psf,
    )


# -- PSF files ----------------------------------------------------------------------------
def psf_file_path(path: str | os.PathLike) -> Path:
    """``path`` named as a PSF file that napari-deepblur's reader claims (``*.psf.tif``):
    a ``.tif``, ``.tiff`` or ``.json`` name, or one without them, gets ``.psf.tif``.

    >>> [psf_file_path(p).name for p in ("cell.psf.tif", "cell.tif", "cell", "cell.v2")]
    ['cell.psf.tif', 'cell.psf.tif', 'cell.psf.tif', 'cell.v2.psf.tif']
    """
    path = Path(path)
    name = path.name
    if name.lower().endswith((".psf.tif", ".psf.tiff")):
        return path
    for suffixes in ((*_PSF_SUFFIXES, ".json"), (".psf",)):
        for suffix in suffixes:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
    return path.with_name(f"{name}.psf.tif")


def write_psf(
    path: str | os.PathLike, psf: np.ndarray, *, metadata: dict, overwrite: bool = False
) -> tuple[Path, Path]:
    """Export a PSF: float32 TIFF at ``path`` + JSON sidecar ``path.with_suffix('.json')``.

    A 2D PSF (Y, X) is renormalised to sum 1; a 3D stack (Z, Y, X) is kept as given (float32).
    The sidecar (and the TIFF description) hold ``metadata`` (from :func:`psf_metadata` or
    :func:`zernike_psf_metadata`) plus "format", "format_version", "shape" and "sum".
    Refuses to replace either file unless ``overwrite``. Returns (tif path, json path).
    """
    from .outputs import check_new

    path = Path(path)
    sidecar = path.with_suffix(".json")
    if path.suffix.lower() not in _PSF_SUFFIXES:
        raise ValueError(f"PSF path must end with .tif or .tiff: {path}")
    for p in (path, sidecar):
        check_new(p, overwrite)
    psf = np.asarray(psf, dtype=np.float32)
    if psf.ndim not in (2, 3):
        raise ValueError(f"PSF must be 2D (Y, X) or 3D (Z, Y, X), got shape {psf.shape}")
    if psf.ndim == 2:
        total = float(psf.sum(dtype=np.float64))
        if not total > 0:
            raise ValueError("a 2D PSF must have a positive sum")
        psf = (psf / total).astype(np.float32)
    meta = io.to_jsonable(dict(metadata))
    meta.update(
        format=PSF_FORMAT,
        format_version=1,
        shape=list(psf.shape),
        sum=float(psf.sum(dtype=np.float64)),
    )
    pixel_size_nm = (meta.get("optics") or {}).get("pixel_size_nm")
    text = io.json_text(meta, "the PSF's metadata")
    io.write_image(
        path,
        psf,
        pixel_size_nm=pixel_size_nm,
        metadata=meta,
        overwrite=overwrite,
        axes="YX" if psf.ndim == 2 else "ZYX",
    )
    io.write_text(sidecar, text)
    return path, sidecar


def read_psf(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a PSF exported by :func:`write_psf` from its .tif/.tiff or its .json path.

    Returns (psf float32 array, metadata dict); the sidecar is preferred, the TIFF description
    is the fallback when the sidecar is missing. :class:`NotAPsfFileError` when the file is
    not one of ours (e.g. a PSF from another tool: :func:`estimate_from_psf_file` reads it).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        sidecar = path
        candidates = [path.with_suffix(".tif"), path.with_suffix(".tiff")]
        tif = next((p for p in candidates if p.is_file()), None)
        if tif is None:
            raise FileNotFoundError(f"PSF TIFF not found next to {path} (looked for .tif/.tiff)")
    else:
        tif, sidecar = path, path.with_suffix(".json")
    image = io.read_image(tif)
    if sidecar.is_file():
        try:
            metadata = json.loads(sidecar.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"PSF sidecar is not valid JSON: {sidecar} ({exc})") from exc
    else:
        metadata = image.metadata
    if not isinstance(metadata, dict) or metadata.get("format") != PSF_FORMAT:
        raise NotAPsfFileError(
            f"{path} is not a {PSF_FORMAT} file (no such 'format' in its metadata)"
        )
    return np.asarray(image.data, dtype=np.float32), metadata


def _json_format(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get("format") if isinstance(value, dict) else None


def is_psf_file(path: str | os.PathLike) -> bool:
    """Cheap check: the sidecar's or the TIFF description's ``format`` is :data:`PSF_FORMAT`
    (without reading the pixels)."""
    path = Path(path)
    if path.suffix.lower() not in (*_PSF_SUFFIXES, ".json") or not path.is_file():
        return False
    if path.suffix.lower() == ".json":
        return _json_format(path) == PSF_FORMAT and any(
            path.with_suffix(s).is_file() for s in _PSF_SUFFIXES
        )
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return _json_format(sidecar) == PSF_FORMAT
    try:
        _, metadata = io.read_header(path)
    except Exception:  # noqa: BLE001 - not ours
        return False
    return metadata.get("format") == PSF_FORMAT


def estimate_from_psf_file(path) -> BlurEstimate:
    """The estimate of a PSF file given to deblur (``--psf``): deepblur's PSF export (its
    sampling, coefficients or whole field included), or any 2D PSF TIFF, cleaned
    (:meth:`BlurEstimate.from_psf`), whose sampling is not known: its ``fc`` is NaN (and its
    file's pixel size, when it has one, is kept in ``optics``) until
    :func:`~napari_deepblur.pipeline.psf_sampled_like` resolves it with the image's."""
    import dataclasses

    from .pipeline import BlurEstimate

    foreign = None
    try:
        psf, meta = read_psf(path)
    except NotAPsfFileError:
        foreign = io.read_image(path)
        psf = np.asarray(foreign.data, np.float32)
    if psf.ndim != 2:
        hint = " (a PSF stack per plane: pass its estimate JSON with --estimate)" * (psf.ndim == 3)
        raise ValueError(f"the PSF {path} has shape {psf.shape}: a 2D (Y, X) PSF is needed{hint}")
    if not np.isfinite(psf).all():
        raise ValueError(f"the PSF {path} has NaN or infinite values")
    if not psf.sum() > 0:
        raise ValueError(f"the PSF {path} has no positive sum")
    if foreign is not None:  # cleaned (background, centre); its pixel size kept for later
        optics = {"pixel_size_nm": foreign.pixel_size_nm} if foreign.pixel_size_nm else None
        estimate = BlurEstimate.from_psf(psf, float("nan"), optics=optics)
        return dataclasses.replace(estimate, model=f"psf:{path}")
    psf = psf / psf.sum()
    if isinstance(meta.get("estimate"), dict) and meta["estimate"].get("field"):
        return BlurEstimate.from_dict(meta["estimate"], psf=psf.astype(np.float32))
    coefficients = meta.get("coefficients_waves_rms")
    noll = meta.get("noll_indices") or []
    if (
        coefficients is None
        or len(coefficients) != len(noll)
        or (coefficients and isinstance(coefficients[0], list))
    ):
        coefficients, noll = [], []
    return BlurEstimate(
        np.asarray(coefficients, np.float32),
        tuple(int(j) for j in noll),
        float(meta.get("fc", "nan")),
        psf.astype(np.float32),
        dict(meta.get("noise") or {}),
        list(meta.get("names") or []) if noll else [],
        "psf:" + str(path),
        meta.get("optics"),
    )


# -- optics known for an image ------------------------------------------------------------------
_OPTICS_KEYS = ("na", "wavelength_nm", "pixel_size_nm", "refractive_index")


@dataclass(frozen=True)
class KnownOptics:
    """What is known of an image's optics (from its metadata, its file, or a form): NA,
    emission wavelength (nm), pixel size in the sample plane (nm), immersion refractive index;
    None where unknown. The entry points turn it into the pipeline's
    :class:`~napari_deepblur.pipeline.Sampling` (:meth:`sampling`) once.

    >>> KnownOptics(1.4, 520, 74).complete, KnownOptics(1.4).complete
    (True, False)
    """

    na: float | None = None
    wavelength_nm: float | None = None
    pixel_size_nm: float | None = None
    refractive_index: float | None = None

    @property
    def complete(self) -> bool:
        """NA, wavelength and pixel size are all known (the refractive index may be
        inferred from the NA)."""
        return None not in (self.na, self.wavelength_nm, self.pixel_size_nm)

    def kwargs(self) -> dict:
        """Keyword arguments for the pipeline (empty unless complete)."""
        if not self.complete:
            return {}
        return {k: getattr(self, k) for k in _OPTICS_KEYS}

    def sampling(self):
        """The pipeline's :class:`~napari_deepblur.pipeline.Sampling` of these optics (unknown
        unless :attr:`complete`)."""
        from .pipeline import Sampling

        return Sampling.of(**self.kwargs())

    def known(self) -> dict:
        """The values that are known, by name."""
        return {k: getattr(self, k) for k in _OPTICS_KEYS if getattr(self, k) is not None}


def known_optics(
    metadata: Mapping | None,
    scale: Sequence[float] = (),
    units: Sequence[Any] | None = None,
    source_path: str | os.PathLike | None = None,
    channel: int | None = None,
) -> KnownOptics:
    """Optics known for an image (a layer): ``metadata['optics']`` (our samples and files),
    the estimate of a PSF layer, flat keys (``na``, ``wavelength_nm``, ``pixel_size_nm``), then
    what the TIFF it was opened from says (``source_path``: napari's own reader keeps neither
    the optics deepblur stores nor the pixel size), and the pixel size from ``scale`` when
    its ``units`` are lengths (:func:`~napari_deepblur.io.unit_to_nm`). ``channel``: the
    wavelength is that channel's where the image states one per channel
    (``channel_wavelengths_nm``, from an OME-TIFF). Unknown values are None."""
    sources = _optics_sources(metadata, source_path)
    wavelengths = _stated_channel_wavelengths(sources) if channel is not None else []
    if channel is not None and 0 <= channel < len(wavelengths):
        sources.insert(0, {"wavelength_nm": wavelengths[channel]})
    found: dict[str, float | None] = dict.fromkeys(_OPTICS_KEYS)
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for key in found:
            if found[key] is None:
                found[key] = _positive(source.get(key))
    if found["pixel_size_nm"] is None and len(scale) >= 2 and units is not None:
        per_unit = io.unit_to_nm(list(units)[-1]) if len(units) else None
        pixel = _positive(scale[-1])
        if per_unit is not None and pixel is not None:
            found["pixel_size_nm"] = pixel * per_unit
    return KnownOptics(**found)


def channel_wavelengths_nm(
    metadata: Mapping | None, source_path: str | os.PathLike | None = None
) -> list[float | None]:
    """Each channel's emission wavelength (nm; None where not positive) where the image (its
    metadata, or the TIFF it was opened from) states one per channel
    (``channel_wavelengths_nm``, from an OME-TIFF); [] when it does not.

    >>> channel_wavelengths_nm({"channel_wavelengths_nm": [460, 640]})
    [460.0, 640.0]
    """
    return _stated_channel_wavelengths(_optics_sources(metadata, source_path))


def kept_channel_metadata(metadata: Mapping | None) -> dict:
    """What an output written from an image keeps of its channels: their emission
    wavelengths (``channel_wavelengths_nm``) where the image states them, else nothing; so
    that the output, read again, has each channel at its own wavelength too."""
    wavelengths = channel_wavelengths_nm(metadata)
    return {"channel_wavelengths_nm": wavelengths} if wavelengths else {}


def _optics_sources(metadata: Mapping | None, source_path) -> list:
    """Where an image's optics are read, first first (:func:`known_optics`)."""
    metadata = metadata or {}
    return [
        metadata.get("optics"),
        (metadata.get("estimate") or {}).get("optics"),
        metadata,
        *_file_optics(source_path),
    ]


def _stated_channel_wavelengths(sources: Sequence) -> list[float | None]:
    for source in sources:
        stated = source.get("channel_wavelengths_nm") if isinstance(source, Mapping) else None
        if isinstance(stated, Sequence) and not isinstance(stated, str):
            return [_positive(w) for w in stated]
    return []


def _file_optics(path) -> list[Mapping]:
    """The optics a TIFF file carries (ours; its pixel size, and the NA and emission an
    OME-TIFF states); none for other files."""
    if not path or Path(str(path)).suffix.lower() not in _PSF_SUFFIXES:
        return []
    try:
        pixel_size_nm, metadata = io.read_header(path)
    except (ValueError, OSError):
        return []
    optics = metadata.get("optics")
    stated = {  # OME's
        k: metadata[k] for k in ("na", "wavelength_nm", "channel_wavelengths_nm") if k in metadata
    }
    return [
        optics if isinstance(optics, Mapping) else {},
        {"pixel_size_nm": pixel_size_nm, **stated},
    ]
