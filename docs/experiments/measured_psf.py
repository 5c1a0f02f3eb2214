"""Real optics: blur real microscopy crops with a *measured* bead PSF (pyotf's widefield
fixture: 520 nm, NA 0.85, air, 130 nm pixels, so fc = 0.2125 cycles/pixel), add noise, and
check what Deep-Blur recovers. Reports the PSF SNR of our estimate and of the aberration-free
Airy PSF at the same optics, both against the measured PSF, and SSIM before/after deblurring.
Run: ``python docs/experiments/measured_psf.py [PATH_TO_PSF_TIF] [MODEL]`` (default: the copy
in ``../shared/data`` and the shipped ``zernike-default``; a minute on 2 CPU cores)."""

import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.baselines import no_identification_psf
from napari_deepblur.evaluation.metrics import psf_snr_db, ssim
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.optics import Convolution, Microscope, add_poisson_gaussian

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[2] / "shared/data/psf_wl520nm_z300nm_x130nm_na0.85_n1.0.tif"
OPTICS = {"na": 0.85, "wavelength_nm": 520.0, "pixel_size_nm": 130.0, "refractive_index": 1.0}


def measured_psf(path: Path, size: int = 31) -> np.ndarray:
    """The in-focus plane (brightest), background removed, centred on the peak, sum 1."""
    stack = tifffile.imread(path).astype(np.float64)
    plane = stack[int(np.argmax(stack.reshape(len(stack), -1).max(1)))]
    plane = plane - np.median(plane)
    y, x = np.unravel_index(np.argmax(plane), plane.shape)
    h = size // 2
    crop = np.clip(plane[y - h : y + h + 1, x - h : x + h + 1], 0, None)
    return (crop / crop.sum()).astype(np.float32)


path = Path(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else DEFAULT
psf = measured_psf(path)
fc = Microscope(**OPTICS).fc
airy = no_identification_psf(fc, 31)
model = ndb.load_model(sys.argv[2] if len(sys.argv) > 2 else None)
images = [(n, x) for n, x in load_test_images(size=256) if n.startswith(("bpae", "dsb"))]
print(f"measured PSF {path.name}: fc {fc:.4f}; Airy vs measured: {psf_snr_db(airy, psf):.1f} dB")
for level, (alpha, beta) in {"L0": (0.0, 0.0), "L1": (0.0025, 0.04)}.items():
    ours, raw_ssim, restored_ssim = [], [], []
    for k, (name, x) in enumerate(images):
        blurred = Convolution(torch.from_numpy(psf)[None], x.shape).forward(torch.from_numpy(x))
        y = add_poisson_gaussian(blurred[0], alpha, beta, torch.Generator().manual_seed(k))
        y = y.numpy()
        estimate = ndb.identify(y, model=model, **OPTICS)
        restored = ndb.deblur(y, estimate, model=model, **OPTICS)
        ours.append(psf_snr_db(estimate.psf, psf))
        raw_ssim.append(ssim(y, x))
        restored_ssim.append(ssim(restored, x))
        print(
            f"  {level} {name}: PSF SNR {ours[-1]:.1f} dB, SSIM {raw_ssim[-1]:.3f} -> "
            f"{restored_ssim[-1]:.3f}, coefficients {np.round(estimate.coefficients, 3)}"
        )
    print(
        f"{level}: PSF SNR ours {np.mean(ours):.1f} dB (Airy {psf_snr_db(airy, psf):.1f} dB), "
        f"SSIM {np.mean(raw_ssim):.3f} -> {np.mean(restored_ssim):.3f}"
    )
