"""Does the noise estimated from the image serve the deblurring network as well as the true
noise? Oracle PSF, 20 table1 pairs per level (seed 0); also the estimated α, β against the
truth. Run: ``python docs/experiments/noise_estimation.py`` (about 1 minute on 2 CPU cores)."""

import numpy as np
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import ssim
from napari_deepblur.evaluation.table1 import FC, LEVELS, _estimate, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.optics.noise import estimate_noise

model = ndb.load_model()
images = load_test_images(size=256)
for level in ("L1", "L2", "H2"):
    alpha, beta = LEVELS[level]
    est_ssim, true_ssim, alphas, betas = [], [], [], []
    for i in range(20):
        pair = draw_pair(images, i, level, 0)
        oracle = _estimate(pair["gamma"], pair["psf"])
        restored = ndb.deblur(pair["y"], oracle, model=model, fc=FC)
        est_ssim.append(ssim(restored, pair["x"]))
        noise = {"alpha": alpha, "beta": beta}
        restored = ndb.deblur(pair["y"], oracle, model=model, fc=FC, noise=noise)
        true_ssim.append(ssim(restored, pair["x"]))
        a, b = estimate_noise(torch.from_numpy(pair["y"])[None], FC)
        alphas.append(float(a[0]))
        betas.append(float(b[0]))
    print(
        f"{level}: SSIM with estimated noise {np.mean(est_ssim):.3f}, with the true noise "
        f"{np.mean(true_ssim):.3f}; alpha {np.mean(alphas):.4f}±{np.std(alphas):.4f} "
        f"(true {alpha}), beta {np.mean(betas):.4f}±{np.std(betas):.4f} (true {beta})"
    )
