"""Blending the field estimates of two space-varying models of the same family.

γ = w γ_A + (1 − w) γ_B for a few w; mean whole-field PSF SNR (dB, 8 × 8 cells) on fig10
pairs (validation draws: seed 7 by default) at noise levels given as multiples of L1's
noise std (0 = L0).

    python docs/experiments/blend_readers.py MODEL_A MODEL_B [--seed 7] [--n 20]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from low_noise import scaled_l1_level  # this folder's script (on sys.path when run)

import napari_deepblur as ndb
from napari_deepblur.evaluation import fig10
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.field import FieldEstimate

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
NOISE_SCALES = (0.0, 0.05, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    model_a, model_b = (ndb.load_model(name, "cpu") for name in (args.model_a, args.model_b))
    family, fc = model_a.family, model_a.fc
    images = load_test_images(None, 256)
    print(f"w (weight of {args.model_a}):".ljust(34) + "".join(f"{w:>8g}" for w in WEIGHTS))
    for k in NOISE_SCALES:
        level = scaled_l1_level(k)
        scores = []
        for i in range(args.n):
            pair = fig10.draw_pair(images, family, fc, i, level, args.seed)
            y = pair["y"]
            gamma_a, gamma_b = (
                torch.as_tensor(ndb.identify(y, m, fc=fc, device="cpu").field.gamma)
                for m in (model_a, model_b)
            )
            row = []
            for w in WEIGHTS:
                blend = FieldEstimate.from_family(
                    family, (w * gamma_a + (1 - w) * gamma_b).float(), y.shape, fc
                )
                psf = fig10.psf_scores(blend, family, pair["gamma"], y.shape)
                row.append(psf["psf_snr_db whole field"])
            scores.append(row)
        means = np.mean(scores, axis=0)
        print(f"noise {k:g} × L1".ljust(34) + "".join(f"{m:8.2f}" for m in means), flush=True)


if __name__ == "__main__":
    main()
