"""``deepblur calibrate``: a product-convolution family from bead images.

Registration in the main CLI is one line: :func:`add_calibrate_parser` in
``napari_deepblur.cli.SUBCOMMANDS`` (it sets ``func`` to :func:`cmd_calibrate`). Errors
that are the user's to fix are ``ValueError`` / ``FileNotFoundError`` / ``FileExistsError``,
which the main CLI reports in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``calibrate`` on an ``argparse`` subparsers object; returns its parser."""
    from .cli import _add_optics_arguments

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
    _add_optics_arguments(p)
    p.add_argument("--psfs", type=int, default=4, help="number of eigen-PSFs I (default 4)")
    p.add_argument(
        "--map-degree",
        type=int,
        default=2,
        help="degree of the Legendre maps over the field (default 2: 6 maps)",
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

    from .io import read_image

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

    from . import __version__
    from .cli import _drive, _microscope
    from .field import iter_calibrate_from_beads, save_calibration
    from .outputs import check_new

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    for p in (out, out.with_suffix(".json")):  # fail before the work, not after it
        check_new(p, args.overwrite)
    planes, pixel, inputs = _read(args.beads)
    if args.fc is None and args.pixel_size_nm is None and pixel:
        args.pixel_size_nm = pixel
    scope = _microscope(args)
    result = _drive(
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
