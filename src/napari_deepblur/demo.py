"""``deepblur demo``: the whole pipeline on the shipped synthetic sample, with its ground truth.

The sample (:func:`~napari_deepblur.samples.make_blurred_sample`, 256×256 px, NA 1.4,
520 nm, 74 nm pixels, a known aberrated PSF and Poisson–Gaussian noise) is identified and
deblurred with the shipped model through :func:`pipeline.iter_identify` /
:func:`pipeline.iter_deblur`; the results are written as TIFFs, a JSON estimate and a PNG
figure, and scored against the truth (PSF SNR, SSIM). Needs nothing but the install.

    >>> from napari_deepblur.demo import run_demo
    >>> result = run_demo("demo_out")                    # doctest: +SKIP
    >>> result["metrics"]["psf_snr_db"]                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: The files the demo writes into its folder (PSF TIFFs come with a JSON sidecar).
DEMO_FILES = {
    "raw": "raw.tif",
    "sharp": "sharp.tif",
    "deblurred": "deblurred.tif",
    "true_psf": "psf_true.tif",
    "estimated_psf": "psf_estimated.tif",
    "estimate": "estimate.json",
    "figure": "demo.png",
}


def _all_paths(out: Path) -> list[Path]:
    paths = [out / name for name in DEMO_FILES.values()]
    for key in ("true_psf", "estimated_psf"):
        paths.append((out / DEMO_FILES[key]).with_suffix(".json"))
    return paths


def run_demo(
    out: str | Path = "deepblur-demo",
    *,
    overwrite: bool = False,
    model=None,
    device: str = "auto",
    seed: int = 0,
    size: int = 256,
    progress: Callable | None = None,
) -> dict:
    """Identify and deblur the synthetic sample; write the results into folder ``out``.

    ``progress``: called with a :class:`~napari_deepblur.pipeline.Progress` in steps of
    2 (identify, deblur) at each tile (e.g. to drive a progress bar). Refuses to overwrite
    existing demo files unless ``overwrite``.
    Returns ``{"paths": {key: Path}, "metrics": {...}, "coefficients": {...},
    "seconds": {...}, "device": str}``; metrics: ``psf_snr_db`` (estimated vs true PSF),
    ``psf_snr_db_airy`` (the aberration-free Airy PSF vs true: what no identification
    gives), ``ssim_raw`` and ``ssim_deblurred`` (against the sharp image).
    """
    from . import formats, io, pipeline
    from .evaluation.baselines import no_identification_psf
    from .evaluation.metrics import psf_snr_db, ssim
    from .models import as_model
    from .optics import Microscope
    from .outputs import check_new
    from .samples import make_blurred_sample

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    for path in _all_paths(out):  # before any work
        check_new(path, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in DEMO_FILES.items()}
    report = progress or (lambda p: None)

    seconds = {}
    t0 = time.perf_counter()
    sample = make_blurred_sample(seed, size)
    seconds["sample"] = time.perf_counter() - t0
    optics = sample["optics"]
    sampling = pipeline.Sampling.of(
        **{k: optics[k] for k in ("pixel_size_nm", "na", "wavelength_nm", "refractive_index")}
    )
    model = as_model(model, device)  # a name, a path or a model; default: shipped

    t0 = time.perf_counter()
    estimate = pipeline.run(
        pipeline.iter_identify(sample["image"], model, device=device, sampling=sampling),
        lambda p: report(pipeline.Progress(0, 2, f"identify: {p.message}")),
    )
    report(pipeline.Progress(1, 2, "identified"))
    seconds["identify"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = pipeline.run(
        pipeline.iter_deblur(sample["image"], estimate, model, device=device, sampling=sampling),
        lambda p: report(pipeline.Progress(1, 2, f"deblur: {p.message}")),
    )
    report(pipeline.Progress(2, 2, "deblurred"))
    seconds["deblur"] = time.perf_counter() - t0

    true_psf = sample["true_psf"]
    metrics = {
        "psf_snr_db": psf_snr_db(estimate.psf, true_psf),
        "psf_snr_db_airy": psf_snr_db(no_identification_psf(optics["fc"]), true_psf),
        "ssim_raw": ssim(sample["image"], sample["sharp"]),
        "ssim_deblurred": ssim(restored, sample["sharp"]),
    }
    names = estimate.names or [f"Z{j}" for j in estimate.noll_indices]
    coefficients = {
        "names": names,
        "noll_indices": list(estimate.noll_indices),
        "true_waves_rms": [float(c) for c in sample["coefficients_waves_rms"]],
        "estimated_waves_rms": [float(c) for c in estimate.coefficients],
    }

    pixel = optics["pixel_size_nm"]
    meta = {"sample": "make_blurred_sample", "seed": seed, "optics": optics}
    io.write_image(
        paths["raw"],
        sample["image"],
        pixel_size_nm=pixel,
        metadata={**meta, "noise": sample["noise"]},
        overwrite=overwrite,
    )
    io.write_image(
        paths["sharp"], sample["sharp"], pixel_size_nm=pixel, metadata=meta, overwrite=overwrite
    )
    io.write_image(
        paths["deblurred"],
        restored,
        pixel_size_nm=pixel,
        metadata={**meta, "model": estimate.model, "estimate": estimate.to_dict()},
        overwrite=overwrite,
    )
    scope = Microscope.from_dict(optics)
    true_meta = formats.zernike_psf_metadata(
        scope, sample["noll_indices"], coefficients["true_waves_rms"]
    )
    formats.write_psf(paths["true_psf"], true_psf, metadata=true_meta, overwrite=overwrite)
    formats.write_psf(
        paths["estimated_psf"],
        estimate.psf,
        metadata=formats.psf_metadata(estimate, "make_blurred_sample"),
        overwrite=overwrite,
    )
    summary = {
        "estimate": estimate.to_dict(),
        "truth": {
            "coefficients_waves_rms": coefficients["true_waves_rms"],
            "noll_indices": coefficients["noll_indices"],
            "noise": sample["noise"],
            "optics": optics,
        },
        "metrics": metrics,
    }
    text = json.dumps(io.to_jsonable(summary), indent=2)
    io.write_text(paths["estimate"], text)
    write_figure(paths["figure"], sample["image"], restored, true_psf, estimate.psf, metrics)
    return {
        "paths": paths,
        "metrics": metrics,
        "coefficients": coefficients,
        "seconds": seconds,
        "device": str(model.device),
    }


def write_figure(path, raw, restored, true_psf, estimated_psf, metrics: dict) -> Path:
    """PNG: raw | deblurred | true PSF | estimated PSF, titles with SSIM and PSF SNR.
    Uses matplotlib's Agg canvas directly (no GUI backend, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import atomic_write

    fig = Figure(figsize=(13, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    low, high = np.percentile(raw, [0.5, 99.8])
    panels = [
        (raw, f"raw (SSIM {metrics['ssim_raw']:.3f})", (low, high)),
        (restored, f"deblurred (SSIM {metrics['ssim_deblurred']:.3f})", (low, high)),
        (true_psf, "true PSF", (0, float(true_psf.max()))),
        (
            estimated_psf,
            f"estimated PSF (PSF SNR {metrics['psf_snr_db']:.1f} dB)",
            (0, float(true_psf.max())),
        ),
    ]
    for ax, (image, title, (vmin, vmax)) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="magma" if image.shape[0] < 64 else "gray", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle("Deep-Blur on the synthetic sample (NA 1.4, 520 nm, 74 nm pixels)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
