"""``deepblur evaluate``: the standard benchmark from the command line.

:func:`add_evaluate_parser` registers it in :data:`napari_deepblur.cli.SUBCOMMANDS` (it sets
``func`` to :func:`cmd_evaluate`).
"""

from __future__ import annotations

import argparse
import shlex

from .common import add_precision_argument, check_new, progress_bar

PROTOCOLS = ("table1", "fig10")
#: Pairs per level when --n is not given.
DEFAULT_N = {"table1": 100, "fig10": 20}


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` subparsers object; returns its parser."""

    p = subparsers.add_parser(
        "evaluate",
        help="run a benchmark (table1: the standard one; fig10: space-varying blur)",
        description="table1: blur held-out test images with random Zernike aberrations (fc "
        "0.2, Noll 4–10, ±0.15 waves RMS), add Poisson–Gaussian noise at each level, and "
        "score Deep-Blur, the oracle, the Airy PSF and Richardson–Lucy on the same inputs "
        "(SSIM, PSNR, PSF SNR; mean ± std; see shared/PROTOCOL.md). fig10: blur them with "
        "random members of a space-varying model's family and compare its local PSFs (at "
        "four field positions and over the whole field) and SSIM with the convolution-only "
        "baseline (--baseline, one PSF for the field).",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="table1")
    p.add_argument("--model", help="shipped model name or model file (default: the default model)")
    p.add_argument("--images", help="folder of sharp TIFF/PNG test images (default: bundled set)")
    p.add_argument(
        "--baseline",
        default="zernike-default",
        help="fig10: the convolution-only model compared with (default zernike-default)",
    )
    p.add_argument("--n", type=int, help="pairs (image, γ) per level (table1 100, fig10 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="test image size, px (400: the paper's)")
    p.add_argument(
        "--levels", type=_names, help="e.g. L0,L1,L2,H1,H2 (table1: all; fig10: L0,L1,L2)"
    )
    p.add_argument("--out", help="folder for <protocol>.json and .csv (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument(
        "--record-in-card",
        action="store_true",
        help="store the table (means ± std, command, machine, date) in the model's card",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    add_precision_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``deepblur evaluate``: print the table, write the files with ``--out``."""
    from pathlib import Path

    from ..evaluation.fig10 import LEVELS_DEFAULT, format_fig10, run_fig10
    from ..evaluation.table1 import LEVELS, format_table, record_in_card, run_table1, write_results

    protocol = args.protocol
    n = args.n or DEFAULT_N[protocol]
    out = Path(args.out) if args.out else None
    for name in (f"{protocol}.json", f"{protocol}.csv") if out is not None else ():
        check_new(out / name, args.overwrite)  # fail before the run (the folder may be new)
    with progress_bar(protocol, args.quiet, unit="pair", leave=True) as progress:
        common = dict(images=args.images, n=n, seed=args.seed, size=args.size)
        if protocol == "fig10":
            result = run_fig10(
                args.model or "field-default",
                args.baseline,
                levels=args.levels or LEVELS_DEFAULT,
                device=args.device,
                progress=progress,
                precision=args.precision,
                **common,
            )
        else:
            result = run_table1(
                args.model,
                levels=args.levels or list(LEVELS),
                device=args.device,
                progress=progress,
                precision=args.precision,
                **common,
            )
    print(format_fig10(result) if protocol == "fig10" else format_table(result))
    if out is not None:
        json_path, csv_path = write_results(result, out, overwrite=args.overwrite)
        print(f"written: {json_path}, {csv_path}")
    if args.record_in_card:
        card = record_in_card(result, _card_path(result), "deepblur " + shlex.join(args.argv))
        print(f"recorded in the model card {card}")
    return 0


def _card_path(result: dict):
    from pathlib import Path

    path = result["model"]["path"]
    card = Path(path).with_suffix(".json") if path else None
    if card is None or not card.exists():
        raise FileNotFoundError(f"the model {result['model']['name']!r} has no card to record in")
    return card
