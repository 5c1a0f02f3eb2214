"""The space-varying benchmark ``fig10``, after Fig. 10 of the Deep-Blur paper.

For every noise level and pair ``i < n``: a sharp test image ``x`` (the table1 test set), a
random field of aberrations drawn from ``(seed, i)`` with the parametric field model
(:meth:`~napari_deepblur.optics.field.FieldAberrations.random`, the shipped family's
ranges: ±0.05 waves at the centre, ±0.2 waves RMS field terms; fields the family was not
built from), projected on the space-varying model's family (its γ: a random member of the
family), and ``y = A(γ) x + b`` with the Poisson–Gaussian noise of the level (table1's
levels, drawn from ``(seed, i, level)``).

Rows: the blurred image; ours (the space-varying model: identify, then deblur with the
local operators); the convolution-only baseline (the Zernike model: one PSF for the whole
field, deblurred with it); the oracle (the space-varying DN with the true γ). PSF SNR
(local PSFs normalised to sum 1) at four field positions on the diagonal from the centre
towards the top-left corner — field radius r = 0, 0.25, 0.5, 0.75 (r = 1 at the corners) —
and its mean over the centres of an 8 × 8 grid of cells ("whole field"); SSIM before and
after.

    >>> from napari_deepblur.evaluation.fig10 import run_fig10
    >>> result = run_fig10("field-default", n=20)      # doctest: +SKIP
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Generator, Sequence

import numpy as np
import torch

from ..devices import machine_info
from ..field import FieldEstimate, cell_centres
from ..models import as_model
from ..optics import ProductConvolution, add_poisson_gaussian
from ..optics.field import FieldAberrations, grid_positions
from ..pipeline import BlurEstimate, Progress, deblur, identify, run
from .metrics import psf_snr_db, ssim
from .table1 import (
    LEVELS,
    _as_images,
    _generator,
    add_scores,
    model_info,
    now_utc,
    summarise,
)

#: Field positions (y = x = t, fractions of the field) and their field radius r.
POSITIONS = {"r=0": 0.5, "r=0.25": 0.375, "r=0.5": 0.25, "r=0.75": 0.125}
WHOLE_FIELD_GRID = 8
Y, OURS, CONVOLUTION, ORACLE = (
    "y",
    "Deep-Blur space-varying (ours)",
    "convolution only (one PSF)",
    "oracle (true field)",
)
ROWS = (Y, OURS, CONVOLUTION, ORACLE)
LEVELS_DEFAULT = ("L0", "L1", "L2")
#: Ranges of the benchmark's random fields (those of the shipped family), waves RMS.
BASE_SCALE, FIELD_SCALE = 0.05, 0.2
_SEED_OFFSET = 10_000  # the benchmark's fields are not the family's


def member_of(family: ProductConvolution, field: FieldAberrations, fc: float) -> torch.Tensor:
    """γ of the family member closest to ``field`` (its PSFs on a 9 × 9 lattice)."""
    positions = grid_positions(9).float()
    return family.project(field.psfs_at(positions, fc, family.kernel_size).float(), positions)


def draw_pair(
    images, family, fc: float, index: int, level: str, seed: int, field_scale=FIELD_SCALE
) -> dict:
    """Pair ``index`` of ``level``: ``{"image", "x", "gamma", "y"}``."""
    alpha, beta = LEVELS[level]
    name, x = images[index % len(images)]
    rng = np.random.default_rng([seed + _SEED_OFFSET, index])
    field = FieldAberrations.random(rng, BASE_SCALE, field_scale)
    gamma = member_of(family, field, fc)
    clean = family.forward(torch.from_numpy(x)[None], gamma[None])[0]
    noise = _generator(seed, index, zlib.crc32(level.encode()))
    y = add_poisson_gaussian(clean, alpha, beta, noise)
    return {"image": name, "x": x, "gamma": gamma, "y": y.numpy()}


def _true_psfs(family, gamma, fractions) -> np.ndarray:
    psfs = torch.stack([family.psf_at(gamma, float(fy), float(fx)) for fy, fx in fractions])
    return (psfs / psfs.sum((-2, -1), keepdim=True)).double().numpy()


def psf_scores(estimate, family, gamma, shape) -> dict:
    """PSF SNR (dB) of an estimate at :data:`POSITIONS` and over the whole field."""
    h, w = shape
    scores = {}
    for label, t in POSITIONS.items():
        true = _true_psfs(family, gamma, [(t, t)])[0]
        scores[f"psf_snr_db {label}"] = psf_snr_db(estimate.psf_at(t * (h - 1), t * (w - 1)), true)
    centres = cell_centres(shape, WHOLE_FIELD_GRID)
    fractions = centres / np.array([h - 1, w - 1])
    true = _true_psfs(family, gamma, fractions)
    estimated = np.stack([estimate.psf_at(y, x) for y, x in centres])
    scores["psf_snr_db whole field"] = float(np.mean(psf_snr_db(estimated, true)))
    return scores


def _evaluate(pair, model, baseline, rows, device, fc) -> dict:
    x, y, gamma = pair["x"], pair["y"], pair["gamma"]
    family = model.family
    out = {}
    if Y in rows:
        out[Y] = {"ssim": ssim(y, x)}
    for row, used in ((OURS, model), (CONVOLUTION, baseline)):
        if row not in rows:
            continue
        start = time.perf_counter()
        estimate = identify(y, used, fc=fc, device=device)
        restored = deblur(y, estimate, used, fc=fc, device=device)
        out[row] = {
            "ssim": ssim(restored, x),
            "seconds": time.perf_counter() - start,
            **psf_scores(estimate, family, gamma, y.shape),
        }
    if ORACLE in rows:
        truth = FieldEstimate.from_family(family, gamma, y.shape, model.fc)
        centre = truth.psf_at((y.shape[0] - 1) / 2, (y.shape[1] - 1) / 2)
        oracle = BlurEstimate(gamma.numpy(), (), fc, centre, {}, field=truth)
        out[ORACLE] = {"ssim": ssim(deblur(y, oracle, model, fc=fc, device=device), x)}
    return out


def iter_fig10(
    model="field-default",
    baseline="zernike-default",
    images=None,
    n: int = 20,
    seed: int = 0,
    size: int = 256,
    levels: Sequence[str] = LEVELS_DEFAULT,
    rows: Sequence[str] = ROWS,
    device: str = "cpu",
    field_scale: float = FIELD_SCALE,
    precision: str = "auto",
) -> Generator[Progress, None, dict]:
    """Generator form of :func:`run_fig10` (a :class:`Progress` per pair)."""
    unknown = [r for r in rows if r not in ROWS] + [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"unknown rows/levels {unknown}; rows: {ROWS}, levels: {list(LEVELS)}")
    model, baseline = (as_model(m, device, precision) for m in (model, baseline))
    if not isinstance(model.family, ProductConvolution):
        raise ValueError(f"{model.name!r} is not a space-varying (product-convolution) model")
    fc = model.fc
    images, source = _as_images(images, size)
    total, done, start = len(levels) * n, 0, time.perf_counter()
    results, values, drawn = {}, {}, []
    for level in levels:
        per_row = {row: {} for row in rows}
        for i in range(n):
            pair = draw_pair(images, model.family, fc, i, level, seed, field_scale)
            if level == levels[0]:
                drawn.append({"image": pair["image"], "gamma": pair["gamma"].tolist()})
            add_scores(per_row, _evaluate(pair, model, baseline, rows, model.device, fc))
            done += 1
            yield Progress(done, total, f"{level}: pair {i + 1} of {n}")
        values[level] = per_row
        results[level] = summarise(per_row)
    return {
        "protocol": "fig10",
        "parameters": {
            "n": n,
            "seed": seed,
            "size": size,
            "levels": {lv: {"alpha": LEVELS[lv][0], "beta": LEVELS[lv][1]} for lv in levels},
            "rows": list(rows),
            "fc": fc,
            "positions": POSITIONS,
            "whole_field_grid": WHOLE_FIELD_GRID,
            "field_ranges_waves": {"base": BASE_SCALE, "field": field_scale},
            "images": source,
            "image_names": [name for name, _ in images],
        },
        "model": model_info(model),
        "baseline": model_info(baseline),
        "machine": machine_info(model.device),
        "date": now_utc(),
        "elapsed_s": time.perf_counter() - start,
        "seconds_per_image": {},
        "results": results,
        "pairs": drawn,
        "values": values,
    }


def run_fig10(*args, progress=None, **kwargs) -> dict:
    """Run the ``fig10`` benchmark (arguments of :func:`iter_fig10`); ``progress`` is
    called with each :class:`Progress`. The result holds ``results[level][row][metric] =
    {"mean", "std", "n"}`` with metrics ``ssim``, ``seconds`` and ``psf_snr_db <where>``."""
    generator = iter_fig10(*args, **kwargs)
    return run(generator, progress)


def format_fig10(result: dict) -> str:
    """Rows × metrics per level (mean ± std)."""
    params = result["parameters"]
    metrics = ["ssim", *(f"psf_snr_db {p}" for p in (*POSITIONS, "whole field"))]
    lines = []
    for level, rows in result["results"].items():
        noise = params["levels"][level]
        lines.append(f"{level} (α={noise['alpha']:g}, β={noise['beta']:g})")
        header = ["", "SSIM", *(f"PSF SNR {p} (dB)" for p in (*POSITIONS, "whole field"))]
        table = [header]
        for row, stats in rows.items():
            cells = [
                "{mean:.2f}±{std:.2f}".format(**stats[m]) if m in stats else "—" for m in metrics
            ]
            table.append([row, *cells])
        widths = [max(len(r[c]) for r in table) for c in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
        lines.append("")
    machine = result["machine"]
    lines.append(
        f"n={params['n']} pairs/level, {params['size']} px, seed {params['seed']}; model "
        f"{result['model']['name']}, baseline {result['baseline']['name']}; "
        f"{machine['device']} ({machine['cpu_count']} CPUs); {result['date']}"
    )
    return "\n".join(lines)
