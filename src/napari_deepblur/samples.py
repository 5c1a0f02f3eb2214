"""Blurred samples with a known blur, computed without napari: a synthetic fluorescence
scene (:func:`make_blurred_sample`) and real actin-labelled cells (:func:`make_actin_sample`),
each blurred by a known aberrated PSF plus Poisson–Gaussian noise.

The demo, the benchmarks' warm-ups and the tests use them directly; the napari sample-data
contribution (:mod:`napari_deepblur._sample_data`) opens them as shipped
(:func:`shipped_sample`: the defaults made once, read from a file without torch, so that the
sample menu does not stall napari), made again with ``python -m napari_deepblur.samples``.

    >>> sample = make_blurred_sample(seed=0, size=64)
    >>> sample["image"].shape, sample["true_psf"].shape, round(sample["optics"]["fc"], 4)
    ((64, 64), (31, 31), 0.1992)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: The sample's optics: NA 1.4 oil objective, 520 nm emission, 74 nm pixels (fc ≈ 0.2).
SAMPLE_OPTICS = {
    "na": 1.4,
    "wavelength_nm": 520.0,
    "pixel_size_nm": 74.0,
    "refractive_index": 1.518,
}
#: Noll 4–10 coefficients in waves RMS: defocus 0.1, vertical astigmatism 0.05, vertical coma 0.08.
SAMPLE_COEFFICIENTS = (0.1, 0.0, 0.05, 0.08, 0.0, 0.0, 0.0)
SAMPLE_NOLL_INDICES = (4, 5, 6, 7, 8, 9, 10)
#: Poisson–Gaussian noise of the benchmark's level L1 (α gain, β std, image in [0, 1]).
SAMPLE_NOISE = {"alpha": 0.0025, "beta": 0.04}
SAMPLE_NAME = "blurred fluorescence (synthetic)"


def make_blurred_sample(seed: int = 0, size: int = 256) -> dict:
    """A sharp synthetic fluorescence scene, blurred by a known aberrated PSF, plus noise.

    Returns a dict with ``image`` (blurred + noisy, float32 ``(size, size)``), ``sharp`` (the
    clean scene in [0, 1]), ``true_psf`` (float32 31×31, sum 1), ``coefficients_waves_rms``,
    ``noll_indices``, ``optics`` (NA, wavelength_nm, pixel_size_nm, refractive_index, fc in
    cycles/pixel) and ``noise`` (alpha, beta). Deterministic for a given ``seed``.
    """
    import torch

    from .optics import Microscope, ZernikeConvolution, add_poisson_gaussian
    from .training.synthetic import fluorescence_scene

    scope = Microscope(**SAMPLE_OPTICS)
    family = ZernikeConvolution(fc=scope.fc, noll_indices=SAMPLE_NOLL_INDICES)
    gamma = torch.tensor(SAMPLE_COEFFICIENTS, dtype=torch.float32)
    sharp = fluorescence_scene(size, np.random.default_rng(seed))
    blurred = family.forward(torch.from_numpy(sharp), gamma)
    gen = torch.Generator().manual_seed(seed)
    noisy = add_poisson_gaussian(blurred, SAMPLE_NOISE["alpha"], SAMPLE_NOISE["beta"], gen)
    return {
        "image": noisy.numpy().astype(np.float32),
        "sharp": sharp,
        "true_psf": family.psf(gamma).numpy().astype(np.float32),
        "coefficients_waves_rms": list(SAMPLE_COEFFICIENTS),
        "noll_indices": list(SAMPLE_NOLL_INDICES),
        "optics": scope.to_dict(),
        "noise": dict(SAMPLE_NOISE),
    }


#: The real-looking sample: actin of fixed BPAE cells (widefield, ~108 nm pixels; see
#: data/ATTRIBUTION.md), blurred again by a known aberrated PSF of these optics (fc = 0.2).
ACTIN_FILE = "bpae_actin_400.tif"
ACTIN_OPTICS = {
    "na": 1.0,
    "wavelength_nm": 540.0,
    "pixel_size_nm": 108.0,
    "refractive_index": 1.33,
}
#: Noll 4–10 in waves RMS: defocus 0.06, oblique astigmatism 0.05, horizontal coma −0.06,
#: vertical trefoil 0.03.
ACTIN_COEFFICIENTS = (0.06, 0.05, 0.0, 0.0, -0.06, 0.03, 0.0)
#: Noise of the scene scaled to [0, 1] (α gain, β std), before the camera mapping.
ACTIN_NOISE = {"alpha": 0.002, "beta": 0.01}
#: Camera mapping of the [0, 1] scene to 16-bit counts: counts = gain · I + offset.
ACTIN_CAMERA = {"gain": 4000.0, "offset": 200.0}
ACTIN_NAME = "blurred actin (real cells)"


def make_actin_sample(seed: int = 0, size: int = 256) -> dict:
    """A real fluorescence crop (actin, BPAE cells) blurred by a known PSF, plus noise,
    as a 16-bit camera image.

    Returns the keys of :func:`make_blurred_sample` (``image`` is uint16 ``(size, size)``
    in camera counts, ``sharp`` the crop in the same counts, float32) plus ``camera``
    (gain, offset: counts = gain · I + offset for the [0, 1] scene that ``noise`` refers
    to) and ``source`` (the file and its attribution). Deterministic for a given ``seed``.
    """
    from importlib.resources import files

    import tifffile
    import torch

    from .optics import Microscope, ZernikeConvolution, add_poisson_gaussian

    raw = tifffile.imread(str(files("napari_deepblur") / "data" / ACTIN_FILE)).astype(np.float32)
    top = max(0, (raw.shape[0] - size) // 2)
    left = max(0, (raw.shape[1] - size) // 2)
    crop = raw[top : top + size, left : left + size]
    low, high = np.percentile(crop, (0.5, 99.8))
    sharp = np.clip((crop - low) / (high - low), 0, 1).astype(np.float32)
    scope = Microscope(**ACTIN_OPTICS)
    family = ZernikeConvolution(fc=scope.fc, noll_indices=SAMPLE_NOLL_INDICES)
    gamma = torch.tensor(ACTIN_COEFFICIENTS, dtype=torch.float32)
    blurred = family.forward(torch.from_numpy(sharp), gamma)
    gen = torch.Generator().manual_seed(seed)
    noisy = add_poisson_gaussian(blurred, ACTIN_NOISE["alpha"], ACTIN_NOISE["beta"], gen)
    gain, offset = ACTIN_CAMERA["gain"], ACTIN_CAMERA["offset"]
    counts = np.clip(np.round(noisy.numpy() * gain + offset), 0, 65535).astype(np.uint16)
    return {
        "image": counts,
        "sharp": (sharp * gain + offset).astype(np.float32),
        "true_psf": family.psf(gamma).numpy().astype(np.float32),
        "coefficients_waves_rms": list(ACTIN_COEFFICIENTS),
        "noll_indices": list(SAMPLE_NOLL_INDICES),
        "optics": scope.to_dict(),
        "noise": dict(ACTIN_NOISE),
        "camera": dict(ACTIN_CAMERA),
        "source": f"{ACTIN_FILE}: BPAE cells, actin (see napari_deepblur/data/ATTRIBUTION.md)",
    }


#: The samples with their defaults (seed 0, 256 px), as shipped in ``napari_deepblur/data``.
SHIPPED_FILES = {SAMPLE_NAME: "sample_fluorescence.npz", ACTIN_NAME: "sample_actin.npz"}
_ARRAYS = ("image", "sharp", "true_psf")


def shipped_sample(name: str) -> dict:
    """The sample ``name`` (:data:`SAMPLE_NAME` or :data:`ACTIN_NAME`) with its defaults, as
    :func:`make_blurred_sample` / :func:`make_actin_sample` return it, read from the shipped
    file: no torch, no blurring (tens of milliseconds instead of about two seconds)."""
    from importlib.resources import files

    with np.load(str(files("napari_deepblur") / "data" / SHIPPED_FILES[name])) as stored:
        arrays = {key: stored[key] for key in _ARRAYS}
        rest = json.loads(str(stored["metadata"]))
    return {**arrays, **rest}


def write_shipped_samples(folder: str | Path | None = None) -> list[Path]:
    """Make the samples with their defaults and write them where :func:`shipped_sample`
    reads them (``folder``: default the package's data folder)."""
    folder = Path(folder) if folder is not None else Path(__file__).parent / "data"
    written = []
    for name, make in ((SAMPLE_NAME, make_blurred_sample), (ACTIN_NAME, make_actin_sample)):
        sample = make()
        arrays = {key: sample.pop(key) for key in _ARRAYS}
        path = folder / SHIPPED_FILES[name]
        np.savez_compressed(path, **arrays, metadata=np.array(json.dumps(sample)))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_shipped_samples():
        print(f"wrote {written_path}")
