"""A real CUDA out-of-memory, and the pipeline's fallback (smaller tiles, then the CPU).

Identifies and deblurs ``deepblur bench``'s 2048² scene on the GPU without a cap, then
again with the caching allocator capped (``torch.cuda.set_per_process_memory_fraction``) at
each CAP_MB, smallest last. Prints, per cap, the warnings the pipeline gave (fewer windows,
smaller tiles, a CPU copy), the time, the largest difference from the uncapped result
(relative to its range: tiles of another size blend differently, so expect ~1e-3, not 0),
and that the caller's model stayed on the GPU.
Run on a CUDA machine: ``python docs/experiments/gpu_oom.py [CAP_MB,CAP_MB,…]``
(default 1500,400,150,60)."""

import sys
import time
import warnings

import numpy as np
import torch

from napari_deepblur import pipeline
from napari_deepblur.evaluation.bench import bench_image
from napari_deepblur.models import load_model

if not torch.cuda.is_available():
    sys.exit("gpu_oom.py needs a CUDA GPU")
caps_mb = [float(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "1500,400,150,60").split(",")]
image = bench_image(2048)
total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20

model = load_model(device="cuda")
estimate = pipeline.identify(image, model=model)
reference = pipeline.deblur(image, estimate, model=model)
span = float(np.ptp(reference))
print(
    f"uncapped on {torch.cuda.get_device_name()}: peak "
    f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB allocated"
)

for cap_mb in caps_mb:
    model = load_model(device="cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_mb / total_mb))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            capped_estimate = pipeline.identify(image, model=model)
            capped = pipeline.deblur(image, capped_estimate, model=model)
            outcome = f"max |Δ| / range {np.abs(capped - reference).max() / span:.2e}"
        except Exception as exc:  # what a user would see: report it, go on with the next cap
            outcome = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
        seconds = time.perf_counter() - start
    print(f"cap {cap_mb:.0f} MB: {seconds:.2f} s, caller's model on {model.device}, {outcome}")
    for w in caught:
        print(f"  warning: {w.message}")
