"""PSF SNR and time of the shipped model's identification on 20 table1 pairs per level
(seed 0) for a given budget of network evaluations per image (windows × flips), at an image
size and on a split of the benchmark's draws (0: test, 1: validation, for choosing).
Run: ``python docs/experiments/identification_budget.py 64 [SIZE_PX] [SPLIT]``."""

import sys
import time

import numpy as np

import napari_deepblur as ndb
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.table1 import FC, draw_pair
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.pipeline._windows import identify_in_windows

budget = int(sys.argv[1]) if len(sys.argv) > 1 else 64
size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
split = int(sys.argv[3]) if len(sys.argv) > 3 else 0
defaults = list(identify_in_windows.__defaults__)
defaults[-1] = budget
identify_in_windows.__defaults__ = tuple(defaults)
model = ndb.load_model()
images = load_test_images(size=size)
for level in ("L0", "L1", "L2"):
    snr, seconds = [], []
    for i in range(20):
        pair = draw_pair(images, i, level, 0, split)
        start = time.perf_counter()
        estimate = ndb.identify(pair["y"], model, fc=FC)
        seconds.append(time.perf_counter() - start)
        snr.append(psf_snr_db(estimate.psf, pair["psf"]))
    print(
        f"budget {budget}, {size} px, split {split}, {level}: PSF SNR {np.mean(snr):.2f} ± "
        f"{np.std(snr):.2f} dB, identify {np.median(seconds):.3f} s (median)"
    )
