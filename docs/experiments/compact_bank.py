"""The real-image training bank (float32 TIFFs) as PNGs, small enough to travel to a GPU
machine with the device tool (its carried files are limited to 64 MiB in all).

Photographs become 8-bit PNGs (their sources are 8-bit JPEGs and PNGs: after conversion to
grey and downsampling, 256 levels are what they hold), micrographs 16-bit ones. The bank
itself and its
sources: ``/work/data/real-bank/ATTRIBUTION.md`` (made by its ``make_bank.py``); the
ATTRIBUTION file is copied along.

Run: ``python docs/experiments/compact_bank.py /work/data/real-bank .gpu/real-bank``.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile
from skimage.io import imsave

source, target = (Path(p) for p in sys.argv[1:3])
total = 0
for folder in ("natural", "microscopy-2x"):
    (target / folder).mkdir(parents=True, exist_ok=True)
    for path in sorted((source / folder).glob("*.tif")):
        image = np.clip(tifffile.imread(path).astype(np.float64), 0, 1)
        out = target / folder / f"{path.stem}.png"
        depth = np.uint8 if folder == "natural" else np.uint16
        levels = np.iinfo(depth).max
        imsave(out, np.round(image * levels).astype(depth), check_contrast=False)
        total += out.stat().st_size
shutil.copy(source / "ATTRIBUTION.md", target / "ATTRIBUTION.md")
print(f"{target}: {total / 2**20:.1f} MiB")
