"""The ``deepblur`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets
``func`` (``args -> int | None``) as a default; :data:`SUBCOMMANDS` lists them. Expected user
errors (missing or existing files, bad values, undersampled optics, a disk that cannot take
an output) are reported as ``deepblur: error: <message>`` on stderr with exit code 2, without
a traceback.

No Qt or napari here; heavy modules are imported inside the subcommands.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Sequence

from . import __version__
from .calibration_cli import add_calibrate_parser
from .evaluation.cli import add_evaluate_parser
from .family_cli import add_field_family_parser
from .outputs import DISK_ERRNOS, check_outputs

#: Errors that are the user's to fix: reported in one line, exit code 2.
USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)
#: The paths that mean standard output where a command can write there (``identify --json``).
STDOUT_PATHS = ("-", "/dev/stdout")

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
        help="refractive index of the immersion medium (default: the one the NA implies: "
        "air up to NA 1, water up to 1.27, oil 1.518 above)",
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
    from . import formats
    from .optics import zernike_psf

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
    metadata = formats.zernike_psf_metadata(scope, noll, coefficients, args.defocus_um)
    tif, sidecar = formats.write_psf(args.out, psf, metadata=metadata, overwrite=args.overwrite)
    print(f"wrote {tif} and {sidecar}: PSF {tuple(psf.shape)}, fc {scope.fc:.4f} cycles/pixel")
    return 0


# --- shared: progress, model, optics ---------------------------------------------------------


def _drive(generator, quiet: bool, desc: str = ""):
    """Run a pipeline generator to its result, showing its :class:`Progress` as a tqdm bar
    on stderr (none with ``quiet``)."""
    if quiet:
        from .pipeline import run

        return run(generator)
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                p = next(generator)
            except StopIteration as stop:
                return stop.value
            if bar is None or bar.total != p.total:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=p.total, desc=desc, unit="step", leave=False, file=sys.stderr)
            bar.n = p.done
            bar.set_postfix_str(p.message, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        generator.close()


def _add_precision_argument(p: argparse.ArgumentParser) -> None:
    from .devices import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic of the networks: auto (bfloat16 where the device computes it "
        "natively: CUDA, CPUs with AVX-512 BF16/AMX; else float32), float32, bfloat16",
    )


def _tile_px(text: str) -> int:
    """``--tile-px``: whole pixels; tiles so small that they are mostly the overlap their
    neighbours compute again get a warning (they still run, slowly)."""
    from .pipeline import TILE_OVERLAP_PX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of pixels, got {text!r}") from None
    if TILE_OVERLAP_PX < value < 4 * TILE_OVERLAP_PX:
        work = (value / (value - TILE_OVERLAP_PX)) ** 2
        warnings.warn(
            f"--tile-px {value}: each tile overlaps its neighbours by {TILE_OVERLAP_PX} px, so "
            f"about {work:.1f}× the work of one pass; the default 1024 px is fastest unless "
            "memory is short",
            stacklevel=2,
        )
    return value


def _add_run_arguments(p: argparse.ArgumentParser, tile: bool = True) -> None:
    p.add_argument(
        "--model",
        help="shipped model name or .safetensors file (default: zernike-default)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    _add_precision_argument(p)
    if tile:
        p.add_argument(
            "--tile-px",
            type=_tile_px,
            default=1024,
            help="tile size in the model's pixels for large images (default 1024)",
        )
    p.add_argument("--quiet", action="store_true", help="no progress bar, only results")


def _add_image_optics_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "optics",
        "the image's sampling: NA, wavelength and pixel size (the file's pixel size and the "
        "optics stored by deepblur are used when not given), or --fc; without any, the image "
        "is assumed sampled like the model",
    )
    g.add_argument("--na", type=float, help="numerical aperture of the objective")
    g.add_argument("--wavelength-nm", type=float, help="emission wavelength in nm")
    g.add_argument("--pixel-size-nm", type=float, help="pixel size in the sample plane in nm")
    g.add_argument(
        "--refractive-index",
        type=float,
        help="refractive index of the immersion medium (default: the one the NA implies: "
        "air up to NA 1, water up to 1.27, oil 1.518 above)",
    )
    g.add_argument("--fc", type=float, help="pupil cutoff NA·pixel/λ in cycles/pixel")


def _add_plane_arguments(p: argparse.ArgumentParser, per_plane_flag: str) -> None:
    g = p.add_argument_group("stacks", "Z/T/C stacks (…, Y, X) are processed plane by plane")
    x = g.add_mutually_exclusive_group()
    x.add_argument(
        "--plane",
        type=_ints,
        help="identify on this plane: a number (C order over the leading axes) or indices "
        "'z' / 't,z' (default: the plane with the most contrast)",
    )
    x.add_argument(
        "--median",
        action="store_true",
        help="identify on up to 8 evenly spaced planes and take the median",
    )
    x.add_argument(
        per_plane_flag, dest="per_plane", action="store_true", help="one estimate per plane"
    )


def _deblur_options(args: argparse.Namespace, estimate, **overrides):
    """The :class:`~napari_deepblur.batch.DeblurOptions` of ``deblur`` and ``batch``."""
    from .batch import DeblurOptions

    mode, plane = _stack_mode(args)
    return DeblurOptions(
        **{
            "model": args.model,
            "device": args.device,
            "precision": args.precision,
            "estimate": estimate,
            "mode": mode,
            "plane": plane,
            "noise": args.noise,
            "strength": args.strength,
            "optics": _optics_args(args),
            "dtype": args.dtype,
            "tile_px": args.tile_px,
            "overwrite": args.overwrite,
            **overrides,
        }
    )


def _stack_mode(args) -> tuple[str, object]:
    plane = None
    if args.plane is not None:
        plane = args.plane[0] if len(args.plane) == 1 else tuple(args.plane)
    mode = "per-plane" if args.per_plane else "median" if args.median else "plane"
    return mode, plane


def _optics_args(args) -> dict:
    return {
        "fc": args.fc,
        "pixel_size_nm": args.pixel_size_nm,
        "na": args.na,
        "wavelength_nm": args.wavelength_nm,
        "refractive_index": args.refractive_index,
    }


def _check_image(path) -> None:
    """An input image given as a folder: say so (and that ``batch`` takes folders)."""
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path} is a folder, not an image file; to process every TIFF in a folder use "
            f"'deepblur batch {path} --out OUTPUT_FOLDER'"
        )


# --- deepblur identify ------------------------------------------------------------------------


def _add_identify(sub) -> None:
    p = sub.add_parser(
        "identify",
        help="estimate the blur (Zernike coefficients, PSF, noise) of an image",
        description="Estimate the PSF of the microscope from one image: prints the Zernike "
        "coefficients in waves RMS (Noll), their uncertainty and the noise; optionally writes "
        "the PSF (TIFF + JSON sidecar) and the estimate (JSON, reusable with "
        "'deepblur deblur --estimate').",
    )
    p.add_argument("image", help="input TIFF: (Y, X) or a stack (…, Y, X)")
    p.add_argument("--psf-out", help="write the estimated PSF here (.tif, + .json sidecar)")
    p.add_argument(
        "--json",
        help="write the estimate here (JSON; - or /dev/stdout for stdout, the report then "
        "on stderr)",
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="one pass instead of averaging 8 flips/rotations (faster)",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="then fit the coefficients to the image through the physics (~1 s; helps "
        "nearly noise-free images only, skipped with a warning on noisy ones)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_image_optics_arguments(p)
    _add_plane_arguments(p, "--all-planes")
    _add_run_arguments(p)
    p.set_defaults(func=_run_identify)


def _format_estimate(estimate, indent: str = "  ") -> list[str]:
    names = estimate.names or [f"Z{j}" for j in estimate.noll_indices]
    unc = estimate.uncertainty
    width = max((len(n) for n in names), default=0)
    lines = []
    for k, (j, name) in enumerate(zip(estimate.noll_indices, names, strict=False)):
        value = f"{estimate.coefficients[k]:+.4f}"
        spread = f" ± {unc[k]:.4f}" if unc is not None else ""
        lines.append(f"{indent}Z{j:<3} {name:<{width}}  {value}{spread} waves RMS")
    noise = estimate.noise or {}
    lines.append(
        f"{indent}noise: alpha {noise.get('alpha', float('nan')):.4g} (gain), "
        f"beta {noise.get('beta', float('nan')):.4g} (std), image units"
    )
    if estimate.tiles:
        lines.append(f"{indent}tiles: {len(estimate.tiles)} per-tile estimates (see --json)")
    return lines


def _run_identify(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from . import formats, io, pipeline
    from .batch import check_image_axes, image_sampling
    from .models import load_model

    psf_out = Path(args.psf_out) if args.psf_out else None
    if psf_out is not None and psf_out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--psf-out must end with .tif or .tiff: {psf_out}")
    to_stdout = args.json in STDOUT_PATHS  # the JSON on stdout (a pipe), the report on stderr
    report = functools.partial(print, file=sys.stderr if to_stdout else sys.stdout)
    check_outputs(
        [
            psf_out,
            psf_out.with_suffix(".json") if psf_out else None,
            None if to_stdout else args.json,
        ],
        args.overwrite,
        inputs=[args.image],
    )
    _check_image(args.image)
    image = io.read_image(args.image, mmap=True)
    check_image_axes(image, args.image)
    sampling, sampling_text = image_sampling(image, _optics_args(args))
    mode, plane = _stack_mode(args)
    model = load_model(args.model, device=args.device, precision=args.precision)
    estimate = _drive(
        pipeline.iter_identify_stack(
            image.data,
            model,
            mode=mode,
            plane=plane,
            device=args.device,
            augment=not args.no_augment,
            tile_px=args.tile_px,
            refine=args.refine,
            sampling=sampling,
        ),
        args.quiet,
        "identify",
    )
    estimates = estimate if isinstance(estimate, list) else [estimate]
    first = estimates[0]
    report(f"image: {args.image} {tuple(image.data.shape)} {image.data.dtype}")
    report(f"sampling: {sampling_text}; fc {first.fc:.4f} cycles/pixel")
    report(f"model: {first.model} on {model.device}")
    if isinstance(estimate, list):
        for index, est in zip(pipeline.plane_indices(image.data.shape), estimates, strict=True):
            report(f"plane {index}:")
            report("\n".join(_format_estimate(est, "    ")))
    else:
        if image.data.ndim > 2:
            report(f"stack: {mode} estimate shared by all planes")
        report("Zernike coefficients (Noll):")
        report("\n".join(_format_estimate(estimate)))
    if args.json:
        extra = {"image": str(args.image), "mode": mode}
        if to_stdout:
            print(formats.estimate_json_text(estimate, **extra))
        else:
            formats.write_estimate_json(args.json, estimate, **extra)
            report(f"wrote {args.json}")
    if psf_out is not None:
        if len(estimates) > 1:
            psf = np.stack([e.psf for e in estimates])
            metadata = formats.stack_psf_metadata(estimates, str(args.image))
        else:
            psf, metadata = first.psf, formats.psf_metadata(first, str(args.image))
        metadata["image"] = str(args.image)
        tif, sidecar = formats.write_psf(psf_out, psf, metadata=metadata, overwrite=args.overwrite)
        report(f"wrote {tif} and {sidecar}")
    return 0


# --- deepblur deblur --------------------------------------------------------------------------


def _noise_value(text: str):
    values = _floats(text)
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return {"alpha": values[0], "beta": values[1]}
    raise argparse.ArgumentTypeError("--noise: a std (beta) or 'alpha,beta' in image units")


def _add_deblur(sub) -> None:
    p = sub.add_parser(
        "deblur",
        help="remove the blur of an image (identifying it first unless given)",
        description="Deblur an image (2D or a stack, plane by plane) with the deblurring "
        "network. The blur is identified from the image unless --psf or --estimate gives it. "
        "Large images are read and written memory-mapped, tile by tile.",
    )
    p.add_argument("image", help="input TIFF: (Y, X) or a stack (…, Y, X)")
    p.add_argument("-o", "--out", required=True, help="output TIFF (float32 by default)")
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--psf", help="a PSF TIFF (deepblur's PSF export, or any 2D PSF sampled like the image)"
    )
    given.add_argument("--estimate", help="an estimate JSON from 'deepblur identify --json'")
    p.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="scales the assumed noise: > 1 smoother, < 1 sharper (default 1)",
    )
    p.add_argument(
        "--noise",
        type=_noise_value,
        help="noise in image units: a std, or 'alpha,beta' (default: estimated)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "input"),
        default="float32",
        help="output dtype: float32 (default) or the input's (rounded, clipped)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_image_optics_arguments(p)
    _add_plane_arguments(p, "--per-plane")
    _add_run_arguments(p)
    p.set_defaults(func=_run_deblur)


def _given_estimate(args):
    """The estimate from --estimate or --psf, or None."""
    from . import formats

    if args.estimate:
        return formats.read_estimate_json(args.estimate)
    if args.psf:
        return formats.estimate_from_psf_file(args.psf)
    return None


def _run_deblur(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from . import io
    from .batch import image_sampling, iter_deblur_file

    check_outputs([args.out], args.overwrite)
    _check_image(args.image)
    estimate = _given_estimate(args)
    if estimate is not None and not isinstance(estimate, list) and math.isnan(estimate.fc):
        # a foreign PSF without sampling: the image's (or the model's) cutoff
        from .models import load_model
        from .pipeline import psf_sampled_like

        image = io.read_image(args.image, mmap=True)
        sampling, _ = image_sampling(image, _optics_args(args))
        model_fc = load_model(args.model, device="cpu").fc
        image_pixel_nm = (sampling.optics or {}).get("pixel_size_nm", image.pixel_size_nm)
        estimate = psf_sampled_like(estimate, sampling, model_fc, image_pixel_nm)
    options = _deblur_options(args, estimate, estimate_json=False)
    result = _drive(iter_deblur_file(args.image, Path(args.out), options), args.quiet, "deblur")
    print(f"wrote {result['output']} {tuple(result['shape'])} in {result['seconds']:.1f} s")
    return 0


# --- deepblur demo ----------------------------------------------------------------------------


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the shipped synthetic sample and score it",
        description="Identify and deblur the built-in synthetic sample (256×256 px, known "
        "PSF), write raw/deblurred TIFFs, true and estimated PSFs, the estimate JSON and a "
        "PNG figure, and print PSF SNR and SSIM against the ground truth. No download.",
    )
    p.add_argument("--out", default="deepblur-demo", help="output folder (default deepblur-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace the demo files in --out")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    _add_run_arguments(p, tile=False)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .models import load_model

    if args.quiet:
        report = None
    else:
        from tqdm import tqdm

        bar = tqdm(total=2, desc="demo", unit="step", leave=False, file=sys.stderr)

        def report(p):
            bar.n = p.done
            bar.set_postfix_str(p.message)

    try:
        r = run_demo(
            args.out,
            overwrite=args.overwrite,
            model=load_model(args.model, device=args.device, precision=args.precision),
            device=args.device,
            seed=args.seed,
            progress=report,
        )
    finally:
        if not args.quiet:
            bar.close()
    m, c = r["metrics"], r["coefficients"]
    print(
        f"Deep-Blur demo: synthetic sample, model on {r['device']}, "
        f"identify {r['seconds']['identify']:.2f} s, deblur {r['seconds']['deblur']:.2f} s"
    )
    width = max(len(n) for n in c["names"]) + 7
    print(f"{'Zernike (Noll)':<{width}}{'true':>8}{'estimated':>11}  (waves RMS)")
    for j, name, t, e in zip(
        c["noll_indices"], c["names"], c["true_waves_rms"], c["estimated_waves_rms"], strict=True
    ):
        print(f"{f'  Z{j:<3} {name}':<{width}}{t:>+8.3f}{e:>+11.3f}")
    print(
        f"PSF SNR (estimated vs true PSF): {m['psf_snr_db']:.1f} dB "
        f"(Airy PSF, no identification: {m['psf_snr_db_airy']:.1f} dB)"
    )
    print(f"SSIM vs sharp: raw {m['ssim_raw']:.3f} -> deblurred {m['ssim_deblurred']:.3f}")
    print(f"wrote {', '.join(p.name for p in r['paths'].values())} in {args.out}")
    return 0


# --- deepblur batch ---------------------------------------------------------------------------


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="deblur many TIFFs on dask (a local cluster, or a scheduler address)",
        description="Identify and deblur each input (TIFF files or folders of them) into "
        "--out/<name>.tif, plus <name>.json with the estimate, one dask task per file. "
        "Finished outputs are skipped, so an interrupted batch resumes where it stopped. "
        "Exit code 1 when some files failed (listed), 2 on a usage error.",
    )
    p.add_argument("inputs", nargs="+", help="TIFF files and/or folders of TIFFs")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument(
        "--scheduler",
        help="dask.distributed scheduler address (tcp://host:8786); default: a local cluster",
    )
    p.add_argument("--workers", type=int, help="local cluster workers (default: min(4, CPUs))")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--psf", help="one PSF TIFF for all images (no identification)")
    given.add_argument("--estimate", help="one estimate JSON for all images")
    p.add_argument("--strength", type=float, default=1.0, help="noise scale (default 1)")
    p.add_argument("--noise", type=_noise_value, help="noise std or 'alpha,beta' (image units)")
    p.add_argument("--dtype", choices=("float32", "input"), default="float32")
    p.add_argument("--overwrite", action="store_true", help="redo files whose output exists")
    _add_image_optics_arguments(p)
    _add_plane_arguments(p, "--per-plane")
    _add_run_arguments(p)
    p.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    import math

    from .batch import iter_batch

    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    estimate = _given_estimate(args)
    if estimate is not None and not isinstance(estimate, list) and math.isnan(estimate.fc):
        # one PSF for all files: their sampling must be given
        from .pipeline import Sampling, psf_sampled_like

        if args.fc is None and None in (args.na, args.wavelength_nm, args.pixel_size_nm):
            raise ValueError(
                f"the PSF {args.psf} carries no sampling: give the images' --fc (or NA, "
                "wavelength and pixel size) for it"
            )
        if args.pixel_size_nm is None and (estimate.optics or {}).get("pixel_size_nm"):
            raise ValueError(
                f"the PSF {args.psf} has its own pixel size: give the images' NA, wavelength "
                "and pixel size (not --fc) so that it can be resampled to them"
            )
        images = Sampling.of(**_optics_args(args))
        estimate = psf_sampled_like(estimate, images, None, args.pixel_size_nm)
    options = _deblur_options(args, estimate)
    result = _drive(
        iter_batch(args.inputs, args.out, options, scheduler=args.scheduler, workers=args.workers),
        args.quiet,
        "batch",
    )
    rate = len(result.done) / result.seconds if result.seconds else 0.0
    busy = f", {len(result.busy)} left to another run writing them" if result.busy else ""
    print(
        f"batch: {len(result.done)} deblurred, {len(result.skipped)} skipped (output "
        f"exists){busy}, {len(result.failed)} failed; {result.seconds:.1f} s, "
        f"{rate:.2f} images/s"
        + (f" on {result.workers} workers ({result.scheduler})" if result.workers else "")
    )
    for src, message in result.warned:
        print(f"deepblur: warning: {src}: {message}", file=sys.stderr)
    for src, message in result.failed:
        print(f"deepblur: failed: {src}: {message}", file=sys.stderr)
    return 1 if result.failed else 0


# --- deepblur bench ---------------------------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="speed benchmark of identify/deblur vs Richardson–Lucy (or: bench psf)",
        description="Without TARGET: seconds for identify and deblur per image size, "
        "Richardson–Lucy with the estimated PSF on the same images and the ratio, peak "
        "memory, images/s of 'deepblur batch', and the device. Last line: the figures as JSON. "
        "'deepblur bench psf': PSF generation throughput and accuracy.",
    )
    p.add_argument(
        "--sizes",
        type=_ints,
        default=[256, 512, 2048],
        help="image sizes in px, comma-separated (default 256,512,2048; add 8192 for the "
        "tiled large image)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    _add_precision_argument(p)
    p.add_argument("--model", help="shipped model name or .safetensors file")
    p.add_argument(
        "--rl-iterations", type=int, default=30, help="Richardson–Lucy iterations (0: skip)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs per size, median reported (default 5)"
    )
    p.add_argument("--batch-images", type=int, default=16, help="images in the batch run (0: skip)")
    p.add_argument("--batch-size-px", type=int, default=512, help="batch image size, px")
    p.add_argument("--workers", type=int, help="batch workers (default: min(4, CPUs))")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=_run_bench)
    targets = p.add_subparsers(dest="target", metavar="TARGET")
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


def _run_bench(args: argparse.Namespace) -> int:
    import datetime

    from . import io
    from .evaluation.bench import bench_pipeline

    if any(n < 32 for n in args.sizes):
        raise ValueError("--sizes must be at least 32 px")
    check_outputs([args.json], args.overwrite)

    def say(message):
        if not args.quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    r = bench_pipeline(
        args.sizes,
        device=args.device,
        precision=args.precision,
        model=args.model,
        rl_iterations=args.rl_iterations,
        repeats=args.repeats,
        batch_images=args.batch_images,
        batch_size_px=args.batch_size_px,
        batch_workers=args.workers,
        progress=say,
    )
    r["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    r["command"] = "deepblur " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    where = r["device_name"] + (f"; {r['cpu_features']}" if r["device"] == "cpu" else "")
    kernels = ", fused CPU kernels" if r["fused_cpu_kernels"] else ""
    print(
        f"device: {r['device']} ({where}), {r['precision']} networks{kernels}, "
        f"{r['torch_threads']} torch threads, model {r['model']}; times: the median of "
        f"{args.repeats} runs per size (one above 4096²)"
    )
    rl = f"RL {r['rl_iterations']} it (s)"
    print(
        f"{'size':>11} {'tiles':>5} {'identify s':>10} {'deblur s':>9} {'total s':>8} "
        f"{rl:>14} {'RL/ours':>8} {'peak RSS MB':>11}"
    )
    for row in r["sizes"]:
        rl_s = row.get("rl_s")
        rl_text = "-" if rl_s is None else f"{rl_s:.2f}" + ("*" if row["rl_extrapolated"] else "")
        ratio = "-" if rl_s is None else f"{row['rl_over_deepblur']:.1f}×"
        print(
            f"{row['size_px']:>5}×{row['size_px']:<5} {row['tiles']:>5} "
            f"{row['identify_s']:>10.3f} {row['deblur_s']:>9.3f} {row['total_s']:>8.3f} "
            f"{rl_text:>14} {ratio:>8} {row['peak_rss_mb']:>11.0f}"
        )
    dtypes = sorted({row["rl_dtype"] for row in r["sizes"] if "rl_dtype" in row})
    if dtypes:
        print(f"RL: skimage.restoration.richardson_lucy in {', '.join(dtypes)}, on the CPU")
    if any(row.get("rl_extrapolated") for row in r["sizes"]):
        print("* RL timed on a central 2048² crop and scaled by the area")
    if "batch" in r:
        b = r["batch"]
        print(
            f"batch: {b['images']} images of {b['size_px']}² on {b['workers']} dask workers: "
            f"{b['images_per_s']:.2f} images/s ({b['seconds']:.1f} s, identify + deblur + write)"
        )
    if args.json:
        text = json.dumps(r, indent=2)
        io.write_text(args.json, text)
    print(json.dumps(r))
    return 0


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
    p.add_argument(
        "--family",
        help="a family file (.safetensors, e.g. from 'deepblur calibrate' or the shipped "
        "field-default family) to train for instead of the Zernike family; its fc is used",
    )
    p.add_argument("--deblurring-from", help="a model file whose deblurring network to start from")
    p.add_argument(
        "--parameter-error",
        type=float,
        default=d.parameter_error,
        help="product-convolution families: DN trains with γ plus this × the bank's std "
        "of Gaussian error",
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
    p.add_argument(
        "--deblurring-lr",
        type=float,
        default=d.deblurring_lr,
        help="peak learning rate (Adam) of the deblurring stage (lower it to fine-tune)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--deblurring-batch-size", type=int, default=d.deblurring_batch_size)
    p.add_argument(
        "--deblurring-widths",
        type=_ints,
        help="channels per scale of DN's U-Nets, e.g. 16,32 (default: the --arch's); "
        "narrower is faster",
    )
    p.add_argument("--crop", type=int, default=d.crop, help="training crop, px")
    p.add_argument("--bank-size", type=int, default=d.bank_size, help="sharp images kept")
    p.add_argument(
        "--images",
        nargs="+",
        help="folder(s) of real sharp images (TIFF/PNG/JPEG) to train on",
    )
    p.add_argument(
        "--real-fraction",
        type=float,
        default=d.real_fraction,
        help="with --images: the share of the image bank cut from them, the rest synthetic "
        "(default 1: all)",
    )
    p.add_argument(
        "--train-layers",
        type=lambda text: tuple(t for t in text.split(",") if t),
        default=d.train_layers,
        help="train only these identification layers (name prefixes, e.g. "
        "image_stages.3,spectrum_stages.2,head: a fine-tune that fits a CPU); default all",
    )
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
            deblurring_widths=tuple(args.deblurring_widths) if args.deblurring_widths else None,
            crop=args.crop,
            bank_size=args.bank_size,
            images=tuple(Path(f) for f in args.images) if args.images else None,
            real_fraction=args.real_fraction,
            train_layers=args.train_layers,
            kind=args.kind,
            seed=args.seed,
            device=args.device,
            stage=args.stage,
            lr=args.lr,
            deblurring_lr=args.deblurring_lr,
            identification_from=Path(args.identification_from)
            if args.identification_from
            else None,
            deblurring_from=Path(args.deblurring_from) if args.deblurring_from else None,
            family_file=Path(args.family) if args.family else None,
            parameter_error=args.parameter_error,
            quiet=args.quiet,
            command="deepblur " + shlex.join(args.argv),
            **{k: v * 60 if v else None for k, v in minutes.items()},
        )
    )
    print(f"model written to {path} (card: {path.with_suffix('.json')})")
    return 0


# --- entry point ------------------------------------------------------------------------------

#: Parser registrations, in the order shown by ``deepblur --help``.
SUBCOMMANDS: list[Callable] = [
    _add_demo,
    _add_identify,
    _add_deblur,
    _add_batch,
    _add_psf,
    _add_train,
    add_evaluate_parser,
    add_calibrate_parser,
    add_field_family_parser,
    _add_bench,
]


class _Parser(argparse.ArgumentParser):
    """``deepblur``'s parsers (subcommands included): a usage error is one line like every
    other error, and options are never abbreviated (an abbreviation that is unique today
    becomes ambiguous when an option is added, and a subcommand's option can be taken for
    an abbreviation of its parent's: ``bench psf --batch``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"deepblur: error: {message} (see: {self.prog} --help)\n")


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The innermost (sub)parser that ``args`` went through: ``deepblur bench psf`` → psf's."""
    chosen = True
    while chosen:
        chosen = False
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(args, action.dest, None)
                if name in action.choices:
                    parser, chosen = action.choices[name], True
                    break
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    """Run ``deepblur`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.
    A SIGTERM (``kill``) is handled like Ctrl-C: temporary output files are cleaned up."""
    import signal

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = formatwarning
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (a constant plane copied, refinement skipped, a CUDA out-of-memory
    fallback) read like the errors: one line, no source path."""
    return f"deepblur: warning: {message}\n"


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()  # imports torch: seconds, and a Ctrl-C may come meanwhile
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the parser it was given to, so the hint is its own --help
            given = list(sys.argv[1:] if argv is None else argv)
            before_command = given.index(unknown[0]) < given.index(args.command)
            chosen = parser if before_command else _chosen_parser(parser, args)
            chosen.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in model cards
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    except KeyboardInterrupt:
        print("deepblur: interrupted", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"deepblur: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that cannot take an output is the user's to fix too;
        if exc.errno not in DISK_ERRNOS:  # other OSErrors keep the traceback that helps
            raise
        where = f": {exc.filename}" if exc.filename else ""  # ours name it in the sentence
        print(f"deepblur: error: {exc.strerror}{where}", file=sys.stderr)
        return 2
    except zlib.error as exc:  # a damaged tile of a compressed TIFF, read lazily mid-run
        print(f"deepblur: error: part of the image could not be decompressed (a damaged "
              f"file?): {exc}", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("deepblur: interrupted (unfinished outputs were not written)", file=sys.stderr)
        return 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
