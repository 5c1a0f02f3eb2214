"""``deepblur demo``: the whole pipeline on the shipped synthetic sample, scored."""

from __future__ import annotations

import argparse

from .common import add_run_arguments, progress_bar


def add_demo_parser(sub) -> None:
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
    add_run_arguments(p, tile=False)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..models import load_model

    with progress_bar("demo", args.quiet) as bar:
        r = run_demo(
            args.out,
            overwrite=args.overwrite,
            model=load_model(args.model, device=args.device, precision=args.precision),
            device=args.device,
            seed=args.seed,
            progress=bar,
        )
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
