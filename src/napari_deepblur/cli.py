"""The ``deepblur`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets
``func`` (``args -> int | None``) as a default; :data:`SUBCOMMANDS` lists them. Expected user
errors (missing or existing files, bad values, undersampled optics) are reported as
``deepblur: error: <message>`` on stderr with exit code 2, without a traceback.

No Qt or napari here; heavy modules are imported inside the subcommands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .evaluation.cli import add_evaluate_parser

#: Errors that are the user's to fix: reported in one line, exit code 2.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)

_DEFAULT_OPTICS = {"na": 1.4, "wavelength_nm": 520.0, "pixel_size_nm": 74.0}


def _number_list(kind: type) -> Callable[[str], list]:
    """argparse type: a comma-separated list of ``kind`` values (``"0.1,0,-0.05"``)."""

    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            msg = f"expected comma-separated {kind.__name__} values, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None

    return parse


_floats = _number_list(float)
_ints = _number_list(int)


# --- deepblur psf -----------------------------------------------------------------------------


def _add_optics_arguments(p: argparse.ArgumentParser) -> None:
    """``--na/--wavelength-nm/--pixel-size-nm/--refractive-index`` or ``--fc``."""
    g = p.add_argument_group(
        "optics", "either the microscope (defaults: NA 1.4, 520 nm, 74 nm pixels) or --fc"
    )
    g.add_argument("--na", type=float, help="numerical aperture of the objective")
    g.add_argument("--wavelength-nm", type=float, help="emission wavelength in nm")
    g.add_argument("--pixel-size-nm", type=float, help="pixel size in the sample plane in nm")
    g.add_argument(
        "--refractive-index",
        type=float,
        default=1.518,
        help="refractive index of the immersion medium (default 1.518, oil)",
    )
    g.add_argument(
        "--fc",
        type=float,
        help="pupil cutoff in cycles/pixel (NA·pixel/λ, at most 0.25); the pixel size is "
        "then derived from NA and wavelength",
    )


def _microscope(args: argparse.Namespace):
    """The :class:`~napari_deepblur.optics.Microscope` described by the optics arguments."""
    from .optics import Microscope

    given = {k: getattr(args, k) for k in _DEFAULT_OPTICS if getattr(args, k) is not None}
    if args.fc is not None:
        if "pixel_size_nm" in given:
            raise ValueError("give either --fc or --pixel-size-nm, not both")
        return Microscope.from_fc(
            args.fc,
            na=given.get("na", _DEFAULT_OPTICS["na"]),
            wavelength_nm=given.get("wavelength_nm", _DEFAULT_OPTICS["wavelength_nm"]),
            refractive_index=args.refractive_index,
        )
    return Microscope(**{**_DEFAULT_OPTICS, **given}, refractive_index=args.refractive_index)


def _add_psf(sub) -> None:
    p = sub.add_parser(
        "psf",
        help="write the PSF of given optics and Zernike coefficients to a TIFF",
        description="Write a PSF (float32, sum 1, centred) as TIFF + JSON metadata. "
        "Negative leading values need '=': --coefficients=-0.1,0,0.05.",
    )
    p.add_argument("out", help="output TIFF path")
    _add_optics_arguments(p)
    p.add_argument(
        "--coefficients",
        type=_floats,
        help="Zernike coefficients in waves RMS (Noll-normalised), one per --noll index, "
        "comma-separated (default: all 0, the Airy pattern)",
    )
    p.add_argument(
        "--noll",
        type=_ints,
        default=[4, 5, 6, 7, 8, 9, 10],
        help="Noll indices of the coefficients (default 4,5,6,7,8,9,10)",
    )
    p.add_argument("--size", type=int, default=31, help="odd kernel size in pixels (default 31)")
    p.add_argument(
        "--defocus-um",
        type=_floats,
        help="distances from focus in µm, comma-separated: writes a (Z, size, size) stack",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_run_psf)


def _run_psf(args: argparse.Namespace) -> int:
    from . import io
    from .optics import zernike_name, zernike_psf

    scope = _microscope(args)
    noll = list(args.noll)
    coefficients = args.coefficients if args.coefficients is not None else [0.0] * len(noll)
    if len(coefficients) != len(noll):
        raise ValueError(
            f"{len(coefficients)} coefficients given for {len(noll)} Noll indices {noll}"
        )
    psf = zernike_psf(
        coefficients,
        scope.fc,
        args.size,
        noll,
        defocus_um=args.defocus_um,
        wavelength_nm=scope.wavelength_nm,
        pixel_size_nm=scope.pixel_size_nm,
        refractive_index=scope.refractive_index,
    ).numpy()
    metadata = {
        "optics": scope.to_dict(),
        "fc": scope.fc,
        "noll_indices": noll,
        "coefficients_waves_rms": [float(c) for c in coefficients],
        "names": [zernike_name(j) for j in noll],
    }
    if args.defocus_um is not None:
        metadata["defocus_um"] = list(args.defocus_um)
    tif, sidecar = io.write_psf(args.out, psf, metadata=metadata, overwrite=args.overwrite)
    print(f"wrote {tif} and {sidecar}: PSF {tuple(psf.shape)}, fc {scope.fc:.4f} cycles/pixel")
    return 0


# --- deepblur bench ---------------------------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="micro-benchmarks (throughput, accuracy)")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    q = targets.add_parser(
        "psf",
        help="PSF generation throughput (31×31, batch 256) and accuracy vs a 4× finer pupil",
    )
    q.add_argument("--batch", type=int, default=256, help="PSFs per batch (default 256)")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.add_argument(
        "--seconds", type=float, default=3.0, help="timed duration in seconds (default 3)"
    )
    q.set_defaults(func=_run_bench_psf)


def _run_bench_psf(args: argparse.Namespace) -> int:
    from .evaluation.bench import bench_psf

    r = bench_psf(batch=args.batch, device=args.device, seconds=args.seconds)
    rows = [
        ("device", f"{r['device']} ({r['device_name']}), {r['torch_threads']} torch threads"),
        ("kernels", f"{r['size']}×{r['size']}, fc {r['fc']}, batch {r['batch']}"),
        ("throughput", f"{r['psf_per_second']:,.0f} PSFs/s"),
        ("max rel. L2 error", f"{r['max_relative_l2_error']:.2e} (vs 4× finer pupil grid)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps(r))
    return 0


# --- deepblur train ---------------------------------------------------------------------------


def _add_train(sub) -> None:
    from .training.run import ARCHITECTURES, TrainOptions

    d = TrainOptions(out=None)
    p = sub.add_parser(
        "train",
        help="train the identification then the deblurring network (resumable)",
        description="Train IN on (y, γ) pairs, then DN with IN's estimate, on synthetic images "
        "(or --images DIR); writes OUT/model.safetensors and its card OUT/model.json. "
        "Re-running with the same OUT resumes from the checkpoints there.",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints, model, card)")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=d.arch)
    p.add_argument("--stage", choices=("both", "identification", "deblurring"), default="both")
    p.add_argument("--fc", type=float, default=d.fc, help="training cutoff, cycles/pixel")
    p.add_argument("--eta", type=float, default=d.eta, help="γ range ±η, waves RMS")
    p.add_argument("--noll", type=_ints, default=list(d.noll), help="Noll indices")
    p.add_argument(
        "--identification-from",
        help="a model file whose identification network to start from (fine-tuning) or, "
        "with --stage deblurring, to use",
    )
    p.add_argument("--identification-steps", type=int, default=d.identification_steps)
    p.add_argument("--deblurring-steps", type=int, default=d.deblurring_steps)
    p.add_argument("--identification-minutes", type=float, help="time budget for IN")
    p.add_argument("--deblurring-minutes", type=float, help="time budget for DN")
    p.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="peak learning rate (Adam) of the identification stage",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--deblurring-batch-size", type=int, default=d.deblurring_batch_size)
    p.add_argument("--crop", type=int, default=d.crop, help="training crop, px")
    p.add_argument("--bank-size", type=int, default=d.bank_size, help="sharp images kept")
    p.add_argument("--images", help="folder of your own sharp images (TIFF/PNG) to train on")
    p.add_argument("--kind", choices=("mixed", "dead_leaves", "fluorescence"), default=d.kind)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .training.run import TrainOptions, train_model

    minutes = {
        "identification_time_s": args.identification_minutes,
        "deblurring_time_s": args.deblurring_minutes,
    }
    path = train_model(
        TrainOptions(
            out=Path(args.out),
            arch=args.arch,
            fc=args.fc,
            eta=args.eta,
            noll=tuple(args.noll),
            identification_steps=args.identification_steps,
            deblurring_steps=args.deblurring_steps,
            batch_size=args.batch_size,
            deblurring_batch_size=args.deblurring_batch_size,
            crop=args.crop,
            bank_size=args.bank_size,
            images=Path(args.images) if args.images else None,
            kind=args.kind,
            seed=args.seed,
            device=args.device,
            stage=args.stage,
            lr=args.lr,
            identification_from=Path(args.identification_from)
            if args.identification_from
            else None,
            quiet=args.quiet,
            **{k: v * 60 if v else None for k, v in minutes.items()},
        )
    )
    print(f"model written to {path} (card: {path.with_suffix('.json')})")
    return 0


# --- entry point ------------------------------------------------------------------------------

#: Parser registrations, in the order shown by ``deepblur --help``.
SUBCOMMANDS: list[Callable] = [_add_psf, _add_train, add_evaluate_parser, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepblur",
        description="Estimate the blur of a microscope from a single image and remove it "
        "(Deep-Blur).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deepblur`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"deepblur: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
