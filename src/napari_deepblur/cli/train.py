"""``deepblur train``: the identification then the deblurring network (resumable)."""

from __future__ import annotations

import argparse
import shlex

from .common import ints


def add_train_parser(sub) -> None:
    from ..training.run import ARCHITECTURES, TrainOptions

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
    p.add_argument("--noll", type=ints, default=list(d.noll), help="Noll indices")
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
        type=ints,
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

    from ..training.run import TrainOptions, train_model

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
