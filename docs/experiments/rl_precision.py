"""Deep-Blur against scikit-image's Richardson–Lucy in float32 and float64, at 512².

10 alternating runs in one process on the benchmark's 512² image (``bench_image``):
``pipeline.identify``, ``pipeline.deblur``, then ``skimage.restoration.richardson_lucy`` (30
iterations, the estimated PSF) on the float32 image as given and on a float64 copy. Prints
the medians (and minima) and the ratios. Usage: ``python docs/experiments/rl_precision.py``.
"""

import statistics
import time

import numpy as np
from skimage.restoration import richardson_lucy

from napari_deepblur import pipeline
from napari_deepblur.evaluation.bench import bench_image
from napari_deepblur.models import load_model

model = load_model(None, device="cpu")
image = bench_image(512)
nonnegative = np.clip(image, 0, None)
estimate = pipeline.identify(image, model, device="cpu")
pipeline.deblur(image, estimate, model, device="cpu")  # warm-up
times = {key: [] for key in ("identify", "deblur", "rl_float32", "rl_float64")}


def clock(key, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    times[key].append(time.perf_counter() - start)
    return value


for _ in range(10):
    found = clock("identify", pipeline.identify, image, model, device="cpu")
    clock("deblur", pipeline.deblur, image, found, model, device="cpu")
    clock("rl_float32", richardson_lucy, nonnegative, estimate.psf, num_iter=30, clip=False)
    wide, psf = nonnegative.astype(np.float64), estimate.psf.astype(np.float64)
    clock("rl_float64", richardson_lucy, wide, psf, num_iter=30, clip=False)

median = {key: statistics.median(v) for key, v in times.items()}
for key, values in times.items():
    print(f"{key:>10}: median {median[key]:.3f} s, min {min(values):.3f} s")
ours = median["identify"] + median["deblur"]
for key in ("rl_float32", "rl_float64"):
    print(f"RL/ours ({key[3:]}): {median[key] / ours:.2f}×")
