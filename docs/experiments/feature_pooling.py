"""Pooling the windows' features instead of their outputs, with the shipped network as it is.

For each table1 validation pair: the default estimate (median of the windows' outputs, all
copies), and the estimate from the identification network's head applied to the mean of
the windows' features, one per dihedral copy, mapped back to the original orientation and
averaged (a network trained on single windows, pooled without retraining).

Run: ``python docs/experiments/feature_pooling.py [MODEL] [N] [SIZE]``.
"""

import sys

import numpy as np
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.table1 import _VALIDATION, FAMILY, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.nets.identification import welch_log_spectrum
from napari_deepblur.pipeline._windows import (
    _chosen_windows,
    _to_original_orientation,
    align_signs,
    robust_combine,
)

model = ndb.load_model(sys.argv[1] if len(sys.argv) > 1 else None, precision="float32")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
size = int(sys.argv[3]) if len(sys.argv) > 3 else 256
images = load_test_images(size=size)
net, family = model.identification, model.family


def features(y):
    b = net.config.border
    y = y[..., b : y.shape[-2] - b, b : y.shape[-1] - b]
    image = net.image_stages(net.stem(y - 0.5)).mean(dim=(-2, -1))
    spectrum = welch_log_spectrum(y, net.config.spectrum_window)
    spectral = net.spectrum_stages(net.spectrum_stem(spectrum / 4)).mean(dim=(-2, -1))
    return torch.cat([image, spectral], dim=1)


def snr(gamma, pair):
    return psf_snr_db(FAMILY.psf(torch.as_tensor(gamma, dtype=torch.float32)).numpy(), pair["psf"])


for level in ("L0", "L1", "L2", "H1"):
    default, pooled = [], []
    for i in range(n):
        pair = draw_pair(images, i, level, 0, _VALIDATION)
        y = torch.from_numpy(pair["y"].astype(np.float32))
        windows, _, copies = _chosen_windows(net.config, y, family, True, 64)
        with torch.no_grad():
            feats = features(windows)
            feats = feats.reshape(copies, -1, feats.shape[-1])
            outputs = net.head(feats.reshape(-1, feats.shape[-1]))
            per_window = _to_original_orientation(outputs, family, copies)
            per_copy = _to_original_orientation(net.head(feats.mean(1)), family, copies)
        default.append(snr(robust_combine(per_window, family)[0], pair))
        aligned = align_signs(per_copy, family, per_copy[0])
        pooled.append(snr(aligned.mean(0), pair))
    d, p = np.array(default), np.array(pooled)
    print(
        f"{level}: median of outputs {d.mean():.2f} dB, head of pooled features {p.mean():.2f} "
        f"dB (paired {np.mean(p - d):+.2f} ± {np.std(p - d, ddof=1) / np.sqrt(n):.2f}; n {n})",
        flush=True,
    )
