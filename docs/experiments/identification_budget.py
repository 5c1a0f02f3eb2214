"""PSF SNR of the shipped model's identification on 20 table1 pairs per level (seed 0) for a
given budget of network evaluations per image (windows × flips).
Run: ``python docs/experiments/identification_budget.py 64``."""

import sys

import numpy as np

import napari_deepblur as ndb
from napari_deepblur.estimation import identify_in_windows
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.table1 import FC, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images

budget = int(sys.argv[1]) if len(sys.argv) > 1 else 64
defaults = list(identify_in_windows.__defaults__)
defaults[-1] = budget
identify_in_windows.__defaults__ = tuple(defaults)
model = ndb.load_model()
images = load_test_images(size=256)
for level in ("L0", "L1", "L2"):
    snr = []
    for i in range(20):
        pair = draw_pair(images, i, level, 0)
        snr.append(psf_snr_db(ndb.identify(pair["y"], model, fc=FC).psf, pair["psf"]))
    print(f"budget {budget} {level}: PSF SNR {np.mean(snr):.2f} ± {np.std(snr):.2f} dB")
