"""Two identification models (or two settings) on the same table1 pairs, paired.

For each level: the mean PSF SNR of each, their paired difference ± its standard error, how
many pairs got worse by more than 0.5 dB, and with ``--deblur`` the SSIM of each model's own
restoration. The pairs are the benchmark's (``evaluation.table1.draw_pair``): ``--split
validation`` (the default: for choosing) or ``test`` (for the final table only).
``--refine`` runs ``identify(…, refine=True)`` for model B (A as given), to judge the
refinement against the network alone.

Run: ``python docs/experiments/identification_paired.py zernike-default
../shared/models/zernike-h200-continued/model.safetensors --n 100``
"""

import argparse
import time

import numpy as np

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import psf_snr_db, ssim
from napari_deepblur.evaluation.table1 import _TEST, _VALIDATION, FC, LEVELS, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--levels", default="L0,L1,L2,H1,H2")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", default=None, help="folder of test images (default: bundled)")
    p.add_argument("--deblur", action="store_true", help="also SSIM of each model's restoration")
    p.add_argument("--refine", action="store_true", help="B with refine=True")
    p.add_argument("--precision", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--per-image", action="store_true", help="also B − A per test image")
    args = p.parse_args()
    split = _VALIDATION if args.split == "validation" else _TEST
    models = [ndb.load_model(m, args.device, args.precision) for m in (args.a, args.b)]
    images = load_test_images(args.images, size=args.size)
    print(f"A: {args.a}\nB: {args.b}{' (refine)' if args.refine else ''}")
    print(f"split {args.split}, n {args.n}, {args.size} px, seed {args.seed}, {args.precision}")
    for level in args.levels.split(","):
        snr, quality, seconds = np.zeros((2, args.n)), np.zeros((2, args.n)), np.zeros(2)
        names = []
        for i in range(args.n):
            pair = draw_pair(images, i, level, args.seed, split)
            names.append(pair["image"])
            for m, model in enumerate(models):
                start = time.perf_counter()
                refine = args.refine and m == 1
                estimate = ndb.identify(pair["y"], model, fc=FC, refine=refine)
                seconds[m] += time.perf_counter() - start
                snr[m, i] = psf_snr_db(estimate.psf, pair["psf"])
                if args.deblur:
                    restored = ndb.deblur(pair["y"], estimate, model, fc=FC)
                    quality[m, i] = ssim(np.clip(restored, 0, 1), pair["x"])
        diff = snr[1] - snr[0]
        line = (
            f"{level} {LEVELS[level]}: PSF SNR A {snr[0].mean():.2f}, B {snr[1].mean():.2f}, "
            f"B − A {diff.mean():+.2f} ± {diff.std(ddof=1) / np.sqrt(args.n):.2f} dB, "
            f"worse by > 0.5 dB {int((diff < -0.5).sum())}/{args.n}"
        )
        if args.deblur:
            line += f"; SSIM A {quality[0].mean():.3f}, B {quality[1].mean():.3f}"
        line += f"; identify {seconds[0] / args.n:.2f} / {seconds[1] / args.n:.2f} s"
        print(line, flush=True)
        if args.per_image:
            for name in dict.fromkeys(names):
                mine = diff[[k for k, other in enumerate(names) if other == name]]
                print(f"    {name}: B − A {mine.mean():+.2f} dB (n {len(mine)})")


if __name__ == "__main__":
    main()
