"""The standard benchmark ``table1`` (``shared/PROTOCOL.md``), mirroring Table 1 of the
Deep-Blur paper.

For every noise level and pair ``i < n``: a sharp test image ``x`` (cycling through the test
set), Zernike coefficients ``γ ~ U[−0.15, 0.15]^7`` (Noll 4–10, waves RMS) drawn from
``(seed, i)`` — the same at every level, so levels differ by their noise only — and
``y = A(γ) x + b``, ``b ~ N(0, α·A(γ)x + β²)`` with the noise drawn from
``(seed, i, level name)``. Blur: :class:`~napari_deepblur.optics.ZernikeConvolution` at
``fc = 0.2`` cycles/pixel, 31 × 31 kernels, reflect boundary. Every row sees the same ``y``.
Richardson–Lucy's iteration count is tuned per level (and PSF) on a separate validation
draw (same images, other γ and noise).

    >>> from napari_deepblur.evaluation.table1 import run_table1, format_table
    >>> result = run_table1("default", n=100)     # doctest: +SKIP
    >>> print(format_table(result))               # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..devices import machine_info, resolve_precision
from ..models import DeepBlurModel, as_model, sha256
from ..optics import DEFAULT_NOLL_INDICES, ZernikeConvolution, add_poisson_gaussian
from ..outputs import check_new
from ..pipeline import BlurEstimate, Progress, deblur, identify, run
from .baselines import RL_ITERATIONS, no_identification_psf, richardson_lucy, tune_rl_iterations
from .metrics import psf_snr_db, psnr, ssim
from .testimages import load_test_images, prepare_test_image

#: Noise levels ``(α, β)`` of ``var = α·(Ax) + β²`` for images in [0, 1].
LEVELS = {
    "L0": (0.0, 0.0),
    "L1": (0.0025, 0.04),
    "L2": (0.005, 0.075),
    "H1": (0.025, 0.12),
    "H2": (0.05, 0.24),
}
FC = 0.2  #: cutoff of the benchmark's blur, cycles/pixel
KERNEL_SIZE = 31  #: px
GAMMA_MAX = 0.15  #: γ_k ~ U[−GAMMA_MAX, GAMMA_MAX], waves RMS
FAMILY = ZernikeConvolution(FC, DEFAULT_NOLL_INDICES, KERNEL_SIZE, GAMMA_MAX)

Y, OURS, OURS_REFINED, ORACLE = "y", "Deep-Blur (ours)", "ours + refinement", "oracle"
NO_ID_DN, NO_ID_RL, RL_ESTIMATED = (
    "no identification: DN",
    "no identification: RL",
    "RL (estimated PSF)",
)
#: The rows, in table order. "ours + refinement" is ``identify(…, refine=True)``: refined
#: on nearly noise-free images only, elsewhere the same as ours (``refined`` says which).
ROWS = (Y, OURS, OURS_REFINED, ORACLE, NO_ID_DN, NO_ID_RL, RL_ESTIMATED)
#: Validation pairs per level for tuning Richardson–Lucy's iteration count.
RL_VALIDATION_PAIRS = 8
_TEST, _VALIDATION = 0, 1


def _generator(*key: int) -> torch.Generator:
    """A CPU torch generator seeded from the integers ``key`` (NumPy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_pair(images, index: int, level: str, seed: int, split: int = _TEST) -> dict:
    """Pair ``index`` of noise level ``level`` (a name in :data:`LEVELS`): ``{"image"
    (name), "x" (sharp, [0, 1]), "gamma" (K,) waves RMS, "psf" (31, 31), "y" (blurred and
    noisy)}`` as NumPy arrays. γ depends on ``(seed, split, index)`` only, the noise on
    ``(seed, split, index, level)``."""
    alpha, beta = LEVELS[level]
    name, x = images[index % len(images)]
    gamma = FAMILY.sample_parameters(1, _generator(seed, split, index))[0]
    clean = FAMILY.forward(torch.from_numpy(x), gamma)
    noise = _generator(seed, split, index, zlib.crc32(level.encode()))
    y = add_poisson_gaussian(clean, alpha, beta, noise)
    return {
        "image": name,
        "x": x,
        "gamma": gamma.numpy(),
        "psf": FAMILY.psf(gamma).double().numpy(),
        "y": y.numpy(),
    }


def _estimate(coefficients: np.ndarray, psf: np.ndarray) -> BlurEstimate:
    """A :class:`BlurEstimate` of the benchmark's family (waves RMS, fc 0.2) with ``psf``."""
    return BlurEstimate(np.asarray(coefficients, np.float32), FAMILY.noll_indices, FC, psf, {})


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _evaluate(pair: dict, model, rows, rl_iterations: dict, airy: np.ndarray, device) -> dict:
    """``{row: {metric: value}}`` for one pair: ``ssim``, ``psnr`` (dB), ``psf_snr_db`` of
    the PSF the row used (none for ``y`` and the oracle, whose PSF is the true one) and
    ``seconds`` (``seconds_identify``, ``seconds_deblur`` for ours)."""
    x, y, h = pair["x"], pair["y"], pair["psf"]
    out = {}

    def score(row, restored, psf=None, **extra):
        out[row] = {"ssim": ssim(restored, x), "psnr": psnr(restored, x), **extra}
        if psf is not None:
            out[row]["psf_snr_db"] = psf_snr_db(psf, h)

    if Y in rows:
        score(Y, y)
    dn = dict(model=model, fc=FC, device=device)
    if OURS in rows or RL_ESTIMATED in rows:
        est, t_identify = _timed(identify, y, model, fc=FC, device=device)
    ours_restored = None
    if OURS in rows:
        restored, t_deblur = _timed(deblur, y, est, **dn)
        ours_restored = restored
        score(OURS, restored, est.psf, seconds_identify=t_identify, seconds_deblur=t_deblur)
    if OURS_REFINED in rows:
        with warnings.catch_warnings():  # the skip under noise is expected here
            warnings.simplefilter("ignore", UserWarning)
            refined, t_identify = _timed(identify, y, model, fc=FC, device=device, refine=True)
        reuse = not refined.refined and ours_restored is not None
        restored = ours_restored if reuse else deblur(y, refined, **dn)
        score(OURS_REFINED, restored, refined.psf, seconds_identify=t_identify,
              refined=float(refined.refined))  # fmt: skip
    if ORACLE in rows:
        restored, t = _timed(deblur, y, _estimate(pair["gamma"], h), **dn)
        score(ORACLE, restored, seconds=t)
    if NO_ID_DN in rows:
        restored, t = _timed(deblur, y, _estimate(np.zeros(FAMILY.num_parameters), airy), **dn)
        score(NO_ID_DN, restored, airy, seconds=t)
    if NO_ID_RL in rows:
        restored, t = _timed(richardson_lucy, y, airy, rl_iterations["airy"])
        score(NO_ID_RL, restored, airy, seconds=t)
    if RL_ESTIMATED in rows:
        restored, t = _timed(richardson_lucy, y, est.psf, rl_iterations["estimated"])
        score(RL_ESTIMATED, restored, est.psf, seconds=t)
    return out


def _tune_rl(images, level, seed, count, model, airy, device) -> tuple[dict, dict]:
    """Iteration counts ``{"estimated", "airy"}`` for ``level`` and their SSIM curves."""
    pairs = [draw_pair(images, i, level, seed, _VALIDATION) for i in range(count)]
    estimated = [identify(p["y"], model, fc=FC, device=device).psf for p in pairs]
    best_est, curve_est = tune_rl_iterations(
        [(p["y"], h, p["x"]) for p, h in zip(pairs, estimated, strict=True)]
    )
    best_airy, curve_airy = tune_rl_iterations([(p["y"], airy, p["x"]) for p in pairs])
    return {"estimated": best_est, "airy": best_airy}, {"estimated": curve_est, "airy": curve_airy}


def add_scores(per_row: dict, scores: dict) -> None:
    """Append one pair's ``{row: {metric: value}}`` to the lists of ``per_row``."""
    for row, metrics in scores.items():
        for metric, value in metrics.items():
            per_row.setdefault(row, {}).setdefault(metric, []).append(float(value))


def summarise(per_row: dict) -> dict:
    """``{row: {metric: {"mean", "std", "n"}}}`` of the per-pair lists."""
    return {row: {m: _summary(v) for m, v in metrics.items()} for row, metrics in per_row.items()}


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def _as_images(images, size: int) -> tuple[list, str]:
    if images is None:
        return load_test_images(size=size), "default"
    if isinstance(images, str | os.PathLike):
        return load_test_images(images, size), str(images)
    return [(str(n), prepare_test_image(im, size)) for n, im in images], "given"


def iter_table1(
    model,
    images=None,
    n: int = 100,
    seed: int = 0,
    size: int = 256,
    levels: Sequence[str] = tuple(LEVELS),
    rows: Sequence[str] = ROWS,
    device: str = "cpu",
    rl_validation: int = RL_VALIDATION_PAIRS,
    precision: str = "auto",
) -> Generator[Progress, None, dict]:
    """Generator form of :func:`run_table1`: yields a :class:`~napari_deepblur.pipeline.Progress`
    per pair (validation pairs included) and returns the result."""
    unknown = [r for r in rows if r not in ROWS] + [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"unknown rows/levels {unknown}; rows: {ROWS}, levels: {list(LEVELS)}")
    if n < 1 or rl_validation < 1:
        raise ValueError(f"n and rl_validation must be at least 1, got {n}, {rl_validation}")
    model = as_model(model, device, precision)
    dev = model.device
    images, source = _as_images(images, size)
    airy = no_identification_psf(FC, KERNEL_SIZE)
    tune = NO_ID_RL in rows or RL_ESTIMATED in rows
    total = len(levels) * (n + (rl_validation if tune else 0))
    done, start = 0, time.perf_counter()
    results, rl_iterations, rl_curves, values, drawn = {}, {}, {}, {}, []
    for level in levels:
        if tune:
            rl_iterations[level], rl_curves[level] = _tune_rl(
                images, level, seed, rl_validation, model, airy, dev
            )
            done += rl_validation
            yield Progress(done, total, f"{level}: tuned Richardson–Lucy")
        per_row = {row: {} for row in rows}
        for i in range(n):
            pair = draw_pair(images, i, level, seed)
            if level == levels[0]:  # γ and image are the same at every level
                drawn.append({"image": pair["image"], "gamma": pair["gamma"].tolist()})
            add_scores(per_row, _evaluate(pair, model, rows, rl_iterations.get(level), airy, dev))
            done += 1
            yield Progress(done, total, f"{level}: pair {i + 1} of {n}")
        values[level] = per_row
        results[level] = summarise(per_row)
    elapsed = time.perf_counter() - start
    ours = [values[lv].get(OURS, {}) for lv in levels]
    seconds = {
        step: float(np.mean(sum((o.get(f"seconds_{step}", []) for o in ours), [])))
        for step in ("identify", "deblur")
        if OURS in rows
    }
    return {
        "protocol": "table1",
        "parameters": {
            "n": n,
            "seed": seed,
            "size": size,
            "levels": {lv: {"alpha": LEVELS[lv][0], "beta": LEVELS[lv][1]} for lv in levels},
            "rows": list(rows),
            "fc": FC,
            "kernel_size": KERNEL_SIZE,
            "noll_indices": list(FAMILY.noll_indices),
            "gamma_max": GAMMA_MAX,
            "images": source,
            "image_names": [name for name, _ in images],
            "rl_validation_pairs": rl_validation if tune else 0,
            "rl_candidates": list(RL_ITERATIONS),
        },
        "model": model_info(model),
        "machine": machine_info(dev),
        "date": now_utc(),
        "elapsed_s": elapsed,
        "seconds_per_image": seconds,
        "rl_iterations": rl_iterations,
        "rl_validation_ssim": rl_curves,
        "results": results,
        "pairs": drawn,
        "values": values,
    }


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def model_info(model: DeepBlurModel) -> dict:
    path = model.path
    digest = model.card.get("sha256") or (sha256(path) if path and Path(path).exists() else None)
    return {
        "name": model.name,
        "path": str(path) if path else None,
        "sha256": digest,
        "precision": resolve_precision(model.device, model.precision),
    }


def run_table1(
    model,
    images=None,
    n: int = 100,
    seed: int = 0,
    size: int = 256,
    levels: Sequence[str] = tuple(LEVELS),
    rows: Sequence[str] = ROWS,
    device: str = "cpu",
    progress: Callable[[Progress], None] | None = None,
    rl_validation: int = RL_VALIDATION_PAIRS,
    precision: str = "auto",
) -> dict:
    """Run the ``table1`` benchmark and return its JSON-ready result.

    ``model``: a :class:`~napari_deepblur.models.DeepBlurModel`, a shipped model's name or a
    model file. ``images``: ``None`` (the default held-out set at ``size × size`` px), a
    folder of TIFF/PNG images, or ``[(name, array)]``. ``n`` pairs per level, drawn from
    ``seed``. ``levels``: names in :data:`LEVELS`; ``rows``: a subset of :data:`ROWS`.
    ``progress`` is called with each :class:`~napari_deepblur.pipeline.Progress`.
    ``precision``: the networks' arithmetic when ``model`` is loaded here
    (:data:`~napari_deepblur.devices.PRECISIONS`).

    The result holds ``results[level][row][metric] = {"mean", "std", "n"}`` (metrics
    ``ssim``, ``psnr`` dB, ``psf_snr_db``, ``seconds*``), the raw per-pair ``values``, the
    drawn ``pairs`` (image, γ), the tuned ``rl_iterations``, ``parameters``, ``model``
    (name, path, sha256, precision), ``machine``, ``date`` and ``seconds_per_image``.
    """
    generator = iter_table1(
        model, images, n, seed, size, levels, rows, device, rl_validation, precision
    )
    return run(generator, progress)


def _cell(stats: dict) -> str:
    text = "SSIM {mean:.2f}±{std:.2f}".format(**stats["ssim"])
    if "psf_snr_db" in stats:
        text += " / PSF SNR {mean:.1f}±{std:.1f} dB".format(**stats["psf_snr_db"])
    return text


def format_table(result: dict) -> str:
    """The result as a text table (rows × levels: SSIM and PSF SNR, mean ± std), then PSNR,
    the tuned Richardson–Lucy iterations and the time per image."""
    params, results = result["parameters"], result["results"]
    levels, rows = list(results), params["rows"]
    header = [
        "",
        *(f"{lv} (α={v['alpha']:g}, β={v['beta']:g})" for lv, v in params["levels"].items()),
    ]
    table = [header]
    table += [[row, *(_cell(results[lv][row]) for lv in levels)] for row in rows]
    table += [
        [
            f"PSNR (dB) {row}",
            *("{mean:.2f}±{std:.2f}".format(**results[lv][row]["psnr"]) for lv in levels),
        ]
        for row in rows
    ]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(rows) + 2, "")
    if result["rl_iterations"]:
        its = ", ".join(
            f"{lv} {v['estimated']}/{v['airy']}" for lv, v in result["rl_iterations"].items()
        )
        lines.append(f"RL iterations (estimated PSF / Airy), tuned on validation: {its}")
    machine, model = result["machine"], result["model"]
    timing = ", ".join(f"{k} {v:.3f} s" for k, v in result["seconds_per_image"].items())
    lines.append(
        f"n={params['n']} pairs/level, {params['size']} px, seed {params['seed']}, "
        f"images: {params['images']} ({len(params['image_names'])}); model {model['name']}; "
        f"per image: {timing or '—'} on {machine['device']} ({machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} threads); {result['date']}"
    )
    return "\n".join(lines)


def _finite(obj):
    """JSON-safe copy: non-finite floats (an exact restoration's PSNR) become ``None``."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_results(result: dict, out_dir, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``<protocol>.json`` (everything) and ``<protocol>.csv`` (``level, alpha, beta,
    row, metric, mean, std, n``) to ``out_dir`` (created); existing files are refused unless
    ``overwrite``. Returns both paths."""
    out = Path(out_dir)
    protocol = result["protocol"]
    json_path, csv_path = out / f"{protocol}.json", out / f"{protocol}.csv"
    for path in (json_path, csv_path):
        check_new(path, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_finite(result), indent=1) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["level", "alpha", "beta", "row", "metric", "mean", "std", "n"])
        for level, rows in result["results"].items():
            noise = result["parameters"]["levels"][level]
            for row, metrics in rows.items():
                for metric, s in metrics.items():
                    writer.writerow(
                        [
                            level,
                            noise["alpha"],
                            noise["beta"],
                            row,
                            metric,
                            s["mean"],
                            s["std"],
                            s["n"],
                        ]
                    )
    return json_path, csv_path


def card_summary(result: dict, command: str) -> dict:
    """The benchmark as a model card records it: the command, date, machine, parameters
    and the mean ± std of every metric per level and row (no per-pair values)."""
    params = result["parameters"]
    return {
        "protocol": result["protocol"],
        "command": command,
        "date": result["date"],
        "machine": result["machine"],
        "precision": result["model"].get("precision"),
        "n": params["n"],
        "size": params["size"],
        "seed": params["seed"],
        "images": params["images"],
        "seconds_per_image": result["seconds_per_image"],
        "rl_iterations": result.get("rl_iterations", {}),
        "results": _finite(result["results"]),
    }


def record_in_card(result: dict, card_path, command: str) -> Path:
    """Store :func:`card_summary` under ``benchmarks[protocol]`` in the model card at
    ``card_path`` (JSON, rewritten atomically; the weights and their checksum are untouched)."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    card.setdefault("benchmarks", {})[result["protocol"]] = card_summary(result, command)
    tmp = card_path.with_name(f".{card_path.name}.partial")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)
    return card_path
