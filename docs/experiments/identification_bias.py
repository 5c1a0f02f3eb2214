"""Is the identification error bias or variance? On table1 validation pairs, per level:
the least-squares slope of the estimated coefficients on the true ones (1: unbiased; < 1:
shrunk towards 0, which no averaging over windows can undo), the PSF SNR of the estimate,
of the estimate divided by that slope (an oracle de-shrinking, fitted on the same pairs: an
upper bound of what a calibration could gain), and of the mean of the windows' own
predictions against their median.

Run: ``python docs/experiments/identification_bias.py [MODEL] [N] [SIZE] [IMAGE_FOLDER]``.
"""

import sys

import numpy as np
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.table1 import _VALIDATION, FAMILY, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.pipeline._windows import align_signs, robust_combine, window_predictions

model = ndb.load_model(sys.argv[1] if len(sys.argv) > 1 else None, precision="float32")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
size = int(sys.argv[3]) if len(sys.argv) > 3 else 256
images = load_test_images(sys.argv[4] if len(sys.argv) > 4 else None, size=size)
family = model.family


def snr(gamma, truth_psf):
    return psf_snr_db(FAMILY.psf(torch.as_tensor(gamma, dtype=torch.float32)).numpy(), truth_psf)


for level in ("L0", "L1", "L2", "H1"):
    truths, medians, means = [], [], []
    for i in range(n):
        pair = draw_pair(images, i, level, 0, _VALIDATION)
        y = torch.from_numpy(pair["y"].astype(np.float32))
        with torch.no_grad():
            predictions, _ = window_predictions(model, y, family)
        truth = torch.as_tensor(pair["gamma"], dtype=torch.float32)
        median, _ = robust_combine(predictions, family)
        aligned = align_signs(predictions, family, truth)
        truths.append(truth.numpy())
        medians.append(align_signs(median[None], family, truth)[0].numpy())
        means.append(aligned.mean(0).numpy())
    t, m, a = (np.stack(v) for v in (truths, medians, means))
    slope = (m * t).sum(0) / (t * t).sum(0)  # per coefficient, through the origin
    psfs = [FAMILY.psf(torch.as_tensor(g)).double().numpy() for g in t]
    base = np.mean([snr(g, h) for g, h in zip(m, psfs, strict=True)])
    deshrunk = np.mean([snr(g / slope, h) for g, h in zip(m, psfs, strict=True)])
    mean_snr = np.mean([snr(g, h) for g, h in zip(a, psfs, strict=True)])
    print(
        f"{level}: slope per coefficient {np.round(slope, 2)}; PSF SNR median {base:.2f} dB, "
        f"÷ slope {deshrunk:.2f} dB, mean of windows {mean_snr:.2f} dB (n {n}, {size} px)",
        flush=True,
    )
