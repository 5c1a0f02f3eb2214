"""``deepblur psf``: the PSF of given optics and Zernike coefficients, as a PSF file."""

from __future__ import annotations

import argparse

from .common import add_optics_arguments, floats, ints, microscope


def add_psf_parser(sub) -> None:
    p = sub.add_parser(
        "psf",
        help="write the PSF of given optics and Zernike coefficients to a TIFF",
        description="Write a PSF (float32, sum 1, centred) as TIFF + JSON metadata. "
        "Negative leading values need '=': --coefficients=-0.1,0,0.05.",
    )
    p.add_argument("out", help="output TIFF path")
    add_optics_arguments(p)
    p.add_argument(
        "--coefficients",
        type=floats,
        help="Zernike coefficients in waves RMS (Noll-normalised), one per --noll index, "
        "comma-separated (default: all 0, the Airy pattern)",
    )
    p.add_argument(
        "--noll",
        type=ints,
        default=[4, 5, 6, 7, 8, 9, 10],
        help="Noll indices of the coefficients (default 4,5,6,7,8,9,10)",
    )
    p.add_argument("--size", type=int, default=31, help="odd kernel size in pixels (default 31)")
    p.add_argument(
        "--defocus-um",
        type=floats,
        help="distances from focus in µm, comma-separated: writes a (Z, size, size) stack",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_run_psf)


def _run_psf(args: argparse.Namespace) -> int:
    from .. import formats
    from ..optics import zernike_psf

    scope = microscope(args)
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
