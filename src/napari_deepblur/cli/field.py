"""The space-varying blur's commands (:mod:`napari_deepblur.field`): ``deepblur calibrate``
(a product-convolution family from bead images) and ``deepblur field-family`` (one from the
parametric field model, :mod:`napari_deepblur.optics.field`), each saved as a family file
with its card.

Errors that are the user's to fix are ``ValueError`` / ``FileNotFoundError`` /
``FileExistsError``, which the main CLI reports in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import asdict
from pathlib import Path

from .common import add_optics_arguments, check_new, drive, microscope


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``calibrate`` on an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate a space-varying blur (product-convolution family) from bead images",
        description="Detect sub-resolution beads in one or more images (each file a 2D image "
        "or a stack whose planes are states of the microscope), extract their PSFs and build "
        "a product-convolution family (eigen-PSFs × smooth maps over the field). Writes the "
        "family file (.safetensors) and its JSON card, and prints the beads accepted and "
        "rejected, the variance captured, and the PSF SNR on held-out beads against a single "
        "PSF for the whole field. Without optics, the pixel size stored in the first file is "
        "used with NA 1.4 and 520 nm.",
    )
    p.add_argument("beads", nargs="+", help="bead image TIFF(s) (2D, or a stack of states)")
    p.add_argument("--out", required=True, help="family file to write (.safetensors)")
    add_optics_arguments(p)
    p.add_argument(
        "--psfs",
        type=int,
        help="number of eigen-PSFs I (default: up to 4, at most half the usable beads)",
    )
    p.add_argument(
        "--map-degree",
        type=int,
        help="degree of the Legendre maps over the field (2: 6 maps; default: the highest "
        "up to 2 with two usable beads per map in every image)",
    )
    p.add_argument(
        "--kernel-size", type=int, default=31, help="odd PSF size in pixels (default 31)"
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of the beads held out to test predictions (default 0.2; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument(
        "--saturation",
        type=float,
        help="pixel value at which a bead counts as saturated (default: the dtype's maximum)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT and its card")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)
    return p


def _read(paths: list[str]):
    """The images (a list of 2D planes), the first file's pixel size (nm or None), inputs."""
    import numpy as np

    from ..io import read_image

    planes, inputs, pixel = [], [], None
    for name in paths:
        image = read_image(name)
        data = np.asarray(image.data)
        if data.ndim < 2 or image.axes.endswith("S"):
            raise ValueError(f"{name}: expected a grey-level 2D image or stack, got {data.shape}")
        stack = data.reshape(-1, *data.shape[-2:])
        planes.extend(stack)
        inputs.append({"path": str(name), "shape": list(data.shape), "planes": len(stack)})
        pixel = pixel if pixel is not None else image.pixel_size_nm
    return planes, pixel, inputs


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run ``deepblur calibrate``: write the family file and card, print the report."""
    import datetime

    from .. import __version__
    from ..field import iter_calibrate_from_beads, save_calibration

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    for p in (out, out.with_suffix(".json")):  # fail before the work, not after it
        check_new(p, args.overwrite)
    planes, pixel, inputs = _read(args.beads)
    if args.fc is None and args.pixel_size_nm is None and pixel:
        args.pixel_size_nm = pixel
    scope = microscope(args)
    result = drive(
        iter_calibrate_from_beads(
            planes,
            scope.fc,
            num_psfs=args.psfs,
            map_degree=args.map_degree,
            holdout_fraction=args.holdout,
            seed=args.seed,
            kernel_size=args.kernel_size,
            saturation=args.saturation,
        ),
        args.quiet,
        "calibrate",
    )
    card = {
        "command": "deepblur " + shlex.join(getattr(args, "argv", [])),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "napari_deepblur_version": __version__,
        "inputs": inputs,
        "optics": scope.to_dict(),
    }
    path = save_calibration(result, out, card, overwrite=args.overwrite)
    print(result.report_text())
    print(f"family written to {path} (card: {path.with_suffix('.json')})")
    return 0


def add_field_family_parser(sub) -> None:
    p = sub.add_parser(
        "field-family",
        help="build a space-varying (product-convolution) family from the field model",
        description="Sample random fields of Zernike aberrations (defocus and astigmatism "
        "growing with r², coma with r, focal-plane tilt, vignetting), compute their PSFs on a "
        "grid, and keep I eigen-PSFs × J spatial maps (K = I·J parameters). Writes OUT "
        "(.safetensors) and its card OUT.json; train a model for it with "
        "'deepblur train --family OUT'.",
    )
    p.add_argument("--out", required=True, help="family file to write (.safetensors)")
    p.add_argument("--fields", type=int, default=1000, help="random fields sampled")
    p.add_argument("--psfs", type=int, default=4, help="eigen-PSFs I")
    p.add_argument("--maps", type=int, default=4, help="spatial maps J")
    p.add_argument("--grid", type=int, default=9, help="PSFs sampled on a grid × grid lattice")
    p.add_argument("--fc", type=float, default=0.2, help="cutoff, cycles/pixel")
    p.add_argument("--base-scale", type=float, default=0.05, help="centre aberrations ±, waves")
    p.add_argument("--field-scale", type=float, default=0.2, help="field terms ±, waves RMS")
    p.add_argument("--vignetting", type=float, default=0.0, help="max intensity loss at corners")
    p.add_argument(
        "--cg-iterations",
        type=int,
        default=10,
        help="preconditioned conjugate-gradient steps of the regularized inverse",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_field_family)


def _run_field_family(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..models import save_family
    from ..optics import check_fc
    from ..optics.field import build_field_family, random_fields
    from ..training.run import git_commit

    out = Path(args.out)
    check_new(out, args.overwrite)
    check_fc(args.fc)
    start = time.time()
    fields = random_fields(
        args.fields,
        args.seed,
        base_scale=args.base_scale,
        field_scale=args.field_scale,
        vignetting=args.vignetting,
    )
    family, report = build_field_family(
        fields, args.fc, num_psfs=args.psfs, num_maps=args.maps, grid=args.grid
    )
    family.cg_iterations = args.cg_iterations
    card = {
        "name": out.stem,
        "kind": "family",
        "family": family.config(),
        "fc": args.fc,
        "field_model": {
            "fields": args.fields,
            "base_scale_waves": args.base_scale,
            "field_scale_waves": args.field_scale,
            "vignetting": args.vignetting,
            "grid": args.grid,
        },
        "report": asdict(report),
        "command": "deepblur " + shlex.join(args.argv),
        "seed": args.seed,
        "git_commit": git_commit(),
        "version": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "wall_time_s": round(time.time() - start, 1),
    }
    save_family(family, args.fc, out, card)
    print(
        f"{out}: K = {family.num_parameters} ({args.psfs} eigen-PSFs × {args.maps} maps); "
        f"eigen-PSFs keep {report.psf_variance_captured:.1%} of the PSFs' energy, maps "
        f"{report.map_variance_captured:.1%} of the weight fields'; relative error of the "
        f"model at the sampled PSFs: mean {report.mean_relative_error:.3f}, "
        f"max {report.max_relative_error:.3f}"
    )
    return 0
