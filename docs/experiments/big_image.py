"""Write the large test image of the memory benchmark: ``deepblur bench``'s synthetic scene
(:func:`napari_deepblur.evaluation.bench.bench_image`) at SIZE × SIZE px as a uint16 TIFF
(uncompressed, through :func:`napari_deepblur.io.write_image`, so the CLI reads it memory-mapped).
Run: ``python docs/experiments/big_image.py OUT.tif [SIZE_PX]`` (default 8192), then
``/usr/bin/time -v deepblur deblur OUT.tif -o restored.tif --quiet`` for the peak RSS."""

import sys

import numpy as np

from napari_deepblur.evaluation.bench import bench_image
from napari_deepblur.io import write_image

out = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
image = bench_image(size)
low, high = float(image.min()), float(image.max())
scaled = np.round((image - low) / (high - low) * 60000 + 1000).astype(np.uint16)
write_image(out, scaled, overwrite=True)
print(f"wrote {out}: {size}×{size} uint16, {scaled.nbytes / 2**20:.0f} MB")
