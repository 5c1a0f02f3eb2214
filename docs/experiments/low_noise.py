"""How identification degrades between no noise (L0) and a little noise.

The benchmarks' L0 is exactly noise-free, which real images never are. This experiment
scales the noise of level L1 down — ``(α, β) = (k² α₁, k β₁)`` so that the noise's standard
deviation scales with ``k`` — and reports the mean PSF SNR (dB) of each model's estimate:

- ``--protocol table1``: the table1 pairs (random Zernike blur); PSF SNR of the one PSF.
- ``--protocol fig10``: the fig10 pairs (random fields of the space-varying family); PSF SNR
  over the whole field (8 × 8 cells).

    python docs/experiments/low_noise.py --protocol table1 --models zernike-default
    python docs/experiments/low_noise.py --protocol fig10 --models field-default --seed 7
"""

from __future__ import annotations

import argparse

import numpy as np

import napari_deepblur as ndb
from napari_deepblur.evaluation import fig10, table1
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.testimages import load_test_images

SCALES = (0.0, 0.05, 0.2, 0.5, 1.0)


def scaled_l1_level(k: float) -> str:
    """Register (once) and name the level of noise scale ``k`` × L1."""
    alpha, beta = table1.LEVELS["L1"]
    name = f"{k:g}×L1"
    table1.LEVELS.setdefault(name, (alpha * k * k, beta * k))
    return name


def _score(protocol: str, model, images, index: int, level: str, seed: int) -> float:
    if protocol == "table1":
        pair = table1.draw_pair(images, index, level, seed)
        estimate = ndb.identify(pair["y"], model, fc=table1.FC, device="cpu")
        return psf_snr_db(estimate.psf, pair["psf"])
    pair = fig10.draw_pair(images, model.family, model.fc, index, level, seed)
    estimate = ndb.identify(pair["y"], model, fc=model.fc, device="cpu")
    scores = fig10.psf_scores(estimate, model.family, pair["gamma"], pair["y"].shape)
    return scores["psf_snr_db whole field"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("table1", "fig10"), default="table1")
    parser.add_argument("--models", nargs="+", default=["zernike-default"])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = load_test_images(None, 256)
    print(f"{args.protocol}, n = {args.n}, seed {args.seed}: mean PSF SNR (dB)")
    print("".join(f"{k:>8g}" for k in SCALES) + "  ← noise, × the std of L1")
    for name in args.models:
        model = ndb.load_model(name, "cpu")
        means = []
        for k in SCALES:
            level = scaled_l1_level(k)
            scores = [
                _score(args.protocol, model, images, i, level, args.seed) for i in range(args.n)
            ]
            means.append(np.mean(scores))
        print("".join(f"{m:8.2f}" for m in means) + f"  {name}", flush=True)


if __name__ == "__main__":
    main()
