"""What the ``deepblur`` commands share: the optics arguments (a microscope's, or an
image's sampling), the run arguments (model, device, precision, tiles), the stack arguments,
the overwrite check of their outputs (:func:`~napari_deepblur.outputs.check_outputs`, before
any work) and the progress bar (:func:`drive`: the pipeline's
:class:`~napari_deepblur.pipeline.ProgressBar`)."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable

from ..outputs import DISK_ERRNOS, check_new, check_outputs  # noqa: F401 - the commands' overwrite checks

#: The paths that mean standard output where a command can write there (``identify --json``).
STDOUT_PATHS = ("-", "/dev/stdout")


#: ``--refractive-index``: the immersion rule (:func:`~napari_deepblur.optics.microscope.
#: immersion_medium`) in words.
IMMERSION_HELP = (
    "refractive index of the immersion medium (default: the one the NA implies: air up to "
    "NA 1, water up to 1.27, oil 1.518 above)"
)
DEFAULT_OPTICS = {"na": 1.4, "wavelength_nm": 520.0, "pixel_size_nm": 74.0}


def number_list(kind: type) -> Callable[[str], list]:
    """argparse type: a comma-separated list of ``kind`` values (``"0.1,0,-0.05"``)."""

    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            msg = f"expected comma-separated {kind.__name__} values, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None

    return parse


floats = number_list(float)


ints = number_list(int)


def add_optics_arguments(p: argparse.ArgumentParser) -> None:
    """``--na/--wavelength-nm/--pixel-size-nm/--refractive-index`` or ``--fc``."""
    g = p.add_argument_group(
        "optics", "either the microscope (defaults: NA 1.4, 520 nm, 74 nm pixels) or --fc"
    )
    _add_microscope_arguments(g)
    g.add_argument(
        "--fc",
        type=float,
        help="pupil cutoff in cycles/pixel (NA·pixel/λ, at most 0.25); the pixel size is "
        "then derived from NA and wavelength",
    )


def microscope(args: argparse.Namespace):
    """The :class:`~napari_deepblur.optics.Microscope` described by the optics arguments."""
    from ..optics import Microscope

    given = {k: getattr(args, k) for k in DEFAULT_OPTICS if getattr(args, k) is not None}
    if args.fc is not None:
        if "pixel_size_nm" in given:
            raise ValueError("give either --fc or --pixel-size-nm, not both")
        return Microscope.from_fc(
            args.fc,
            na=given.get("na", DEFAULT_OPTICS["na"]),
            wavelength_nm=given.get("wavelength_nm", DEFAULT_OPTICS["wavelength_nm"]),
            refractive_index=args.refractive_index,
        )
    return Microscope(**{**DEFAULT_OPTICS, **given}, refractive_index=args.refractive_index)


def drive(generator, quiet: bool = False, desc: str = ""):
    """Run a pipeline generator to its result with a progress bar on stderr (none with
    ``quiet``): :func:`napari_deepblur.pipeline.drive`, imported when a command runs (the
    parsers stay light)."""
    from ..pipeline import drive as run_with_bar

    return run_with_bar(generator, quiet, desc)


def progress_bar(desc: str, quiet: bool, **kwargs):
    """A :class:`napari_deepblur.pipeline.ProgressBar` (for commands whose work reports
    :class:`~napari_deepblur.pipeline.Progress` through a callback)."""
    from ..pipeline import ProgressBar

    return ProgressBar(desc, quiet, **kwargs)


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    from ..devices import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic of the networks: auto (bfloat16 where the device computes it "
        "natively: CUDA, CPUs with AVX-512 BF16/AMX; else float32), float32, bfloat16",
    )


def tile_px_argument(text: str) -> int:
    """``--tile-px``: whole pixels; tiles so small that they are mostly the overlap their
    neighbours compute again get a warning (they still run, slowly)."""
    from ..pipeline import TILE_OVERLAP_PX

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


def add_run_arguments(p: argparse.ArgumentParser, tile: bool = True) -> None:
    p.add_argument(
        "--model",
        help="shipped model name or .safetensors file (default: zernike-default)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    add_precision_argument(p)
    if tile:
        p.add_argument(
            "--tile-px",
            type=tile_px_argument,
            default=1024,
            help="tile size in the model's pixels for large images (default 1024)",
        )
    p.add_argument("--quiet", action="store_true", help="no progress bar, only results")


def add_image_optics_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "optics",
        "the image's sampling: NA, wavelength and pixel size (the file's pixel size and the "
        "optics stored by deepblur are used when not given), or --fc; without any, the image "
        "is assumed sampled like the model",
    )
    _add_microscope_arguments(g)
    g.add_argument("--fc", type=float, help="pupil cutoff NA·pixel/λ in cycles/pixel")


def _add_microscope_arguments(group) -> None:
    """``--na``, ``--wavelength-nm``, ``--pixel-size-nm`` and ``--refractive-index``."""
    group.add_argument("--na", type=float, help="numerical aperture of the objective")
    group.add_argument("--wavelength-nm", type=float, help="emission wavelength in nm")
    group.add_argument("--pixel-size-nm", type=float, help="pixel size in the sample plane in nm")
    group.add_argument("--refractive-index", type=float, help=IMMERSION_HELP)


def add_plane_arguments(p: argparse.ArgumentParser, per_plane_flag: str) -> None:
    g = p.add_argument_group("stacks", "Z/T/C stacks (…, Y, X) are processed plane by plane")
    x = g.add_mutually_exclusive_group()
    x.add_argument(
        "--plane",
        type=ints,
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


def stack_mode(args) -> tuple[str, object]:
    plane = None
    if args.plane is not None:
        plane = args.plane[0] if len(args.plane) == 1 else tuple(args.plane)
    mode = "per-plane" if args.per_plane else "median" if args.median else "plane"
    return mode, plane


def optics_args(args) -> dict:
    return {
        "fc": args.fc,
        "pixel_size_nm": args.pixel_size_nm,
        "na": args.na,
        "wavelength_nm": args.wavelength_nm,
        "refractive_index": args.refractive_index,
    }


def check_image_path(path) -> None:
    """An input image given as a folder (not an OME-Zarr store): say so (and that
    ``batch`` takes folders)."""
    from ..omezarr import is_zarr

    if os.path.isdir(path) and not is_zarr(path):
        raise IsADirectoryError(
            f"{path} is a folder, not an image file; to process every TIFF in a folder use "
            f"'deepblur batch {path} --out OUTPUT_FOLDER'"
        )
