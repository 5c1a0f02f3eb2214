"""Space-varying blur on a real fluorescence image: the field-default model against one PSF.

The real BPAE actin image (widefield, 680 × 1100 px; ``../shared/data/BPAE_actin.tif``, or the
400 px crop shipped in the package when the shared file is absent) is blurred by a random
field of aberrations (the fig10 protocol's ranges, a field the family was not built from,
projected on the family) with Poisson–Gaussian noise of level L1. The field-default model
and the zernike-default model identify the blur; we score the local PSFs on a 5 × 5 grid of
cells (PSF SNR, dB) and the deblurred images (SSIM), and draw the kernel maps
(true | field-default | one PSF) to ``docs/images/field_kernel_maps.png``.

    python docs/experiments/field_on_real_image.py [--seed 3] [--level L0] [--noise-scale 0.2]
        [--also OTHER_MODEL] [--out FIGURE.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation.fig10 import BASE_SCALE, FIELD_SCALE, member_of
from napari_deepblur.evaluation.metrics import psf_snr_db, ssim
from napari_deepblur.evaluation.table1 import LEVELS
from napari_deepblur.field import FieldEstimate, cell_centres
from napari_deepblur.optics import add_poisson_gaussian
from napari_deepblur.optics.field import FieldAberrations
from napari_deepblur.pipeline import BlurEstimate

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "BPAE_actin.tif"
SHIPPED = ROOT / "src" / "napari_deepblur" / "data" / "bpae_actin_400.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--model", default="field-default", help="the space-varying model")
    parser.add_argument("--level", default="L1", help="noise level of table1 (L0, L1, …)")
    parser.add_argument(
        "--noise-scale", type=float, default=1.0, help="× the level's noise std (α k², β k)"
    )
    parser.add_argument(
        "--also", action="append", default=[], help="another space-varying model to score"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "field_kernel_maps.png"))
    args = parser.parse_args()
    import tifffile

    path = SHARED if SHARED.exists() else SHIPPED
    x = tifffile.imread(path).astype(np.float32)
    x = (x - x.min()) / (x.max() - x.min())
    field_model = ndb.load_model(args.model)
    single_model = ndb.load_model("zernike-default")
    family = field_model.family
    rng = np.random.default_rng([10_000 + args.seed, 0])
    field = FieldAberrations.random(rng, BASE_SCALE, FIELD_SCALE)
    gamma = member_of(family, field, field_model.fc)
    clean = family.forward(torch.from_numpy(x)[None], gamma[None])[0]
    alpha, beta = LEVELS[args.level]
    alpha, beta = alpha * args.noise_scale**2, beta * args.noise_scale
    noise = torch.Generator().manual_seed(args.seed)
    y = add_poisson_gaussian(clean, alpha, beta, noise).numpy()

    truth = FieldEstimate.from_family(family, gamma, y.shape, field_model.fc)
    positions = cell_centres(y.shape, 5)
    true_psfs = truth.psfs_at(positions[:, 0], positions[:, 1])
    centre_psf = truth.psf_at((y.shape[0] - 1) / 2, (y.shape[1] - 1) / 2)
    oracles = {  # deblurred with the true blur: the whole field, or its centre PSF
        "field": BlurEstimate(gamma.numpy(), (), field_model.fc, centre_psf, {}, field=truth),
        "one PSF": BlurEstimate.from_psf(centre_psf, field_model.fc),
    }
    rows = {}
    models = [(args.model, field_model), *((name, ndb.load_model(name)) for name in args.also)]
    for name, model in (*models, ("one PSF (zernike-default)", single_model)):
        start = time.perf_counter()
        est = ndb.identify(y, model=model)
        restored = ndb.deblur(y, est, model=model)
        seconds = time.perf_counter() - start
        psfs = np.stack([est.psf_at(py, px) for py, px in positions])
        oracle = oracles["field" if est.field is not None else "one PSF"]
        rows[name] = {
            "psfs": psfs,
            "snr": psf_snr_db(psfs, true_psfs),
            "ssim": ssim(restored, x),
            "ssim_true_blur": ssim(ndb.deblur(y, oracle, model=model), x),
            "seconds": seconds,
        }
    noise_name = f"{args.noise_scale:g} × {args.level}" if args.noise_scale != 1 else args.level
    print(f"image {path.name} {y.shape}, field seed {args.seed}, noise {noise_name}; SSIM blurred "
          f"{ssim(y, x):.3f}")  # fmt: skip
    for name, r in rows.items():
        print(
            f"{name:28s} PSF SNR over 5×5 cells: mean {r['snr'].mean():.2f} dB "
            f"(min {r['snr'].min():.2f}, max {r['snr'].max():.2f}); SSIM {r['ssim']:.3f} "
            f"(with the true blur {r['ssim_true_blur']:.3f}); "
            f"identify + deblur {r['seconds']:.1f} s"
        )
    _figure(true_psfs, rows, Path(args.out))


def _figure(true_psfs, rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("true field", true_psfs)] + [(n, r["psfs"]) for n, r in rows.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    for ax, (title, psfs) in zip(axes, panels, strict=True):
        k = psfs.shape[-1]
        mosaic = np.zeros((5 * k, 5 * k), np.float32)
        for i, psf in enumerate(psfs):
            r, c = divmod(i, 5)
            mosaic[r * k : (r + 1) * k, c * k : (c + 1) * k] = psf / psf.max()
        ax.imshow(mosaic[:, :], cmap="magma")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
