"""``deepblur identify``, ``deblur`` and ``batch``: images in, estimates and deblurred
images out (through :mod:`napari_deepblur.batch` and the pipeline)."""

from __future__ import annotations

import argparse
import functools
import sys

from ..outputs import check_outputs
from .common import (
    STDOUT_PATHS,
    add_image_optics_arguments,
    add_plane_arguments,
    add_run_arguments,
    check_image_path,
    drive,
    floats,
    optics_args,
    stack_mode,
)


def _deblur_options(args: argparse.Namespace, estimate, **overrides):
    """The :class:`~napari_deepblur.batch.DeblurOptions` of ``deblur`` and ``batch``."""
    from ..batch import DeblurOptions

    mode, plane = stack_mode(args)
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
            "optics": optics_args(args),
            "dtype": args.dtype,
            "tile_px": args.tile_px,
            "overwrite": args.overwrite,
            **overrides,
        }
    )


def add_identify_parser(sub) -> None:
    p = sub.add_parser(
        "identify",
        help="estimate the blur (Zernike coefficients, PSF, noise) of an image",
        description="Estimate the PSF of the microscope from one image: prints the Zernike "
        "coefficients in waves RMS (Noll), their uncertainty and the noise; optionally writes "
        "the PSF (TIFF + JSON sidecar) and the estimate (JSON, reusable with "
        "'deepblur deblur --estimate').",
    )
    p.add_argument(
        "image",
        help="input TIFF or OME-Zarr store: (Y, X) or a stack (…, Y, X); planes over 4096² px "
        "are identified from 3×3 windows across the field, never loaded whole",
    )
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
    add_image_optics_arguments(p)
    add_plane_arguments(p, "--all-planes")
    add_run_arguments(p)
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

    from .. import formats, pipeline
    from ..batch import check_image_axes, stack_sampling
    from ..chunked import identify_large, read_any
    from ..models import load_model
    from ..omezarr import is_zarr

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
    check_image_path(args.image)
    image = read_any(args.image)
    mode, plane = stack_mode(args)
    check_image_axes(image, args.image, mode)
    sampling, sampling_text = stack_sampling(image, optics_args(args), mode)
    model = load_model(args.model, device=args.device, precision=args.precision)
    if is_zarr(args.image) and not args.refine:  # planes read where sliced (sampled if huge)
        steps = identify_large(
            image.data, model, sampling, plane=plane, mode=mode, tile_px=args.tile_px,
            augment=not args.no_augment,
        )  # fmt: skip
    else:
        steps = pipeline.iter_identify_stack(
            image.data,
            model,
            mode=mode,
            plane=plane,
            device=args.device,
            augment=not args.no_augment,
            tile_px=args.tile_px,
            refine=args.refine,
            sampling=sampling,
        )
    estimate = drive(steps, args.quiet, "identify")
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


def _noise_value(text: str):
    values = floats(text)
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return {"alpha": values[0], "beta": values[1]}
    raise argparse.ArgumentTypeError("--noise: a std (beta) or 'alpha,beta' in image units")


def add_deblur_parser(sub) -> None:
    p = sub.add_parser(
        "deblur",
        help="remove the blur of an image (identifying it first unless given)",
        description="Deblur an image (2D or a stack, plane by plane) with the deblurring "
        "network. The blur is identified from the image unless --psf or --estimate gives it. "
        "Large images are read and written memory-mapped, tile by tile.",
    )
    p.add_argument("image", help="input TIFF or OME-Zarr store: (Y, X) or a stack (…, Y, X)")
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="output TIFF (float32 by default), or an OME-Zarr store (a name ending in "
        ".zarr): written block by block as a multiscale pyramid, resumed when run again "
        "after an interruption",
    )
    p.add_argument(
        "--chunk-px",
        type=int,
        default=2048,
        help="OME-Zarr output: blocks and chunks of this many px a side (default 2048)",
    )
    p.add_argument(
        "--scheduler",
        help="OME-Zarr output: deblur its blocks on this dask.distributed scheduler "
        "(tcp://host:8786; the workers must see the input, the output and the model file)",
    )
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
    add_image_optics_arguments(p)
    add_plane_arguments(p, "--per-plane")
    add_run_arguments(p)
    p.set_defaults(func=_run_deblur)


def _given_estimate(args):
    """The estimate from --estimate or --psf, or None."""
    from .. import formats

    if args.estimate:
        return formats.read_estimate_json(args.estimate)
    if args.psf:
        return formats.estimate_from_psf_file(args.psf)
    return None


def _run_deblur(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from ..batch import image_sampling, iter_deblur_file
    from ..chunked import read_any
    from ..omezarr import is_zarr

    to_zarr = is_zarr(args.out)
    if not to_zarr:
        check_outputs([args.out], args.overwrite)
        if is_zarr(args.image):
            raise ValueError(
                f"{args.image} is an OME-Zarr store: write its result to one too "
                "(an --out name ending in .ome.zarr)"
            )
    check_image_path(args.image)
    estimate = _given_estimate(args)
    if estimate is not None and not isinstance(estimate, list) and math.isnan(estimate.fc):
        # a foreign PSF without sampling: the image's (or the model's) cutoff
        from ..models import load_model
        from ..pipeline import psf_sampled_like

        image = read_any(args.image)
        sampling, _ = image_sampling(image, optics_args(args))
        model_fc = load_model(args.model, device="cpu").fc
        image_pixel_nm = (sampling.optics or {}).get("pixel_size_nm", image.pixel_size_nm)
        estimate = psf_sampled_like(estimate, sampling, model_fc, image_pixel_nm)
    options = _deblur_options(args, estimate, estimate_json=False)
    if to_zarr:
        return _deblur_to_zarr(args, options)
    result = drive(iter_deblur_file(args.image, Path(args.out), options), args.quiet, "deblur")
    print(f"wrote {result['output']} {tuple(result['shape'])} in {result['seconds']:.1f} s")
    return 0


def _deblur_to_zarr(args: argparse.Namespace, options) -> int:
    """``deepblur deblur IN OUT.ome.zarr``: block by block, here or on a scheduler."""
    from ..chunked import iter_deblur_zarr

    client = None
    if args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ValueError(
                f"could not connect to the dask scheduler at {args.scheduler}: {exc}"
            ) from None
    try:
        steps = iter_deblur_zarr(
            args.image, args.out, options, chunk_px=args.chunk_px, client=client
        )
        result = drive(steps, args.quiet, "deblur")
    finally:
        if client is not None:
            client.close()
    resumed = " (resumed)" if result["resumed"] else ""
    print(
        f"wrote {result['output']} {tuple(result['shape'])}, {result['levels']} pyramid "
        f"level(s), in {result['seconds']:.1f} s{resumed}"
    )
    return 0


def add_batch_parser(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="deblur many TIFFs on dask (a local cluster, or a scheduler address)",
        description="Identify and deblur each input (TIFF files or folders of them) into "
        "--out/<name>.tif, plus <name>.json with the estimate, one dask task per file. "
        "Finished outputs are skipped, so an interrupted batch resumes where it stopped. "
        "Exit code 1 when some files failed (listed), 2 on a usage error.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="TIFF files, OME-Zarr stores (written as OUT/<name>.ome.zarr) and/or folders of them",
    )
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
    add_image_optics_arguments(p)
    add_plane_arguments(p, "--per-plane")
    add_run_arguments(p)
    p.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    import math

    from ..batch import iter_batch
    from ..chunked import deblur_any

    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    estimate = _given_estimate(args)
    if estimate is not None and not isinstance(estimate, list) and math.isnan(estimate.fc):
        # one PSF for all files: their sampling must be given
        from ..pipeline import Sampling, psf_sampled_like

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
        images = Sampling.of(**optics_args(args))
        estimate = psf_sampled_like(estimate, images, None, args.pixel_size_nm)
    options = _deblur_options(args, estimate)
    result = drive(
        iter_batch(
            args.inputs,
            args.out,
            options,
            scheduler=args.scheduler,
            workers=args.workers,
            task=deblur_any,
        ),  # fmt: skip
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
