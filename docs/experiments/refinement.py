"""Test-time refinement of γ̂, tried and not kept: alternate x̂ = DN(y, γ̂) and Adam steps on
the weighted data term ‖A(γ) x̂ − y‖² through the differentiable PSF; prints the PSF SNR of
γ̂ and after each round. Run: ``python docs/experiments/refinement.py L0 8 30 2`` (level,
pairs, Adam steps per round, rounds)."""

import sys
import time

import numpy as np
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.table1 import FAMILY, FC, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.training.train import network_inputs

level, n, steps, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = ndb.load_model()
images = load_test_images(size=256)


def refine(y, estimate, border=16):
    y_n, sigma, _, _ = network_inputs(torch.from_numpy(y)[None], FC)
    gamma = torch.tensor(estimate.coefficients, dtype=torch.float32)
    weight = 1.0 / (sigma**2 + 1e-4)
    history = []
    for _ in range(rounds):
        with torch.no_grad():
            x = model.deblurring(y_n, FAMILY.operator(gamma[None, None], y_n.shape[-2:]), sigma)
        g = gamma.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([g], lr=0.01)
        for _ in range(steps):
            optimizer.zero_grad()
            residual = FAMILY.forward(x, g[None, None]) - y_n
            inner = (..., slice(border, -border), slice(border, -border))
            loss = (residual**2 * weight)[inner].mean()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                g.clamp_(-0.2, 0.2)
        gamma = g.detach()
        history.append(gamma.clone())
    return history


rows = []
for i in range(n):
    pair = draw_pair(images, i, level, 0)
    estimate = ndb.identify(pair["y"], model, fc=FC)
    start = time.perf_counter()
    history = refine(pair["y"], estimate)
    seconds = time.perf_counter() - start
    snr = [psf_snr_db(estimate.psf, pair["psf"])]
    snr += [psf_snr_db(FAMILY.psf(g).double().numpy(), pair["psf"]) for g in history]
    rows.append(snr)
    print(i, pair["image"], " ".join(f"{v:.1f}" for v in snr), f"{seconds:.2f} s")
print("mean PSF SNR (dB): identified, then after each round:", np.mean(rows, 0).round(2))
