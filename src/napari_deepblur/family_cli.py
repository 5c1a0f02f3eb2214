"""``deepblur field-family``: build a product-convolution family from the parametric field
model (:mod:`napari_deepblur.optics.field`) and save it as a family file with its card."""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import asdict


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
    from pathlib import Path

    from . import __version__
    from .models import save_family
    from .optics import check_fc
    from .optics.field import build_field_family, random_fields
    from .outputs import check_new
    from .training.run import git_commit

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
