"""Two ``table1.json`` results of ``deepblur evaluate`` side by side: for every level and row
the mean SSIM and PSF SNR of each and their difference, and the largest differences.
Run: ``python docs/experiments/compare_tables.py A/table1.json B/table1.json``."""

import json
import sys

first, second = (json.load(open(path)) for path in sys.argv[1:3])
print(f"A: {first['model'].get('precision', 'float32')} ({first['date']})")
print(f"B: {second['model'].get('precision', 'float32')} ({second['date']})")
largest = {"ssim": 0.0, "psf_snr_db": 0.0}
for level, rows in first["results"].items():
    for row, metrics in rows.items():
        cells = []
        for metric in ("ssim", "psf_snr_db"):
            if metric not in metrics:
                continue
            a = metrics[metric]["mean"]
            b = second["results"][level][row][metric]["mean"]
            largest[metric] = max(largest[metric], abs(b - a))
            cells.append(f"{metric} {a:.4f} → {b:.4f} ({b - a:+.4f})")
        print(f"{level} {row:32s} " + "; ".join(cells))
print("largest |B − A|:", ", ".join(f"{m} {v:.4f}" for m, v in largest.items()))
