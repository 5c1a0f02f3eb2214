"""The sharpness criterion of test-time refinement (``napari_deepblur/refinement.py``),
measured on table1's *validation* draws (split 1: same images, other γ and noise), never on
the test pairs: mean PSF SNR of the network's γ̂ and of the refined γ.

``shipped`` is the module as it is (ℓ0.3/ℓ2 of the gradient magnitude in 32 px windows,
prior weight 0.3); ``previous`` the criterion it replaced (ℓ1/ℓ2 of the two gradient
components in 64 px windows, prior weight 1). The noise is ``k`` times the std of level L1
(``k = 0``: noise-free, level L0); refinement is forced here even where the pipeline would
skip it for noise. ``truth`` as a fourth argument starts from the true γ without the prior
instead, and also prints where the criterion settles, as the mean projection ``⟨γ, γ_true⟩ /
‖γ_true‖²`` (1: unbiased; below 1: pulled towards a too weak blur). Run: ``python
docs/experiments/refinement_criterion.py shipped 0 100`` (criterion, k, pairs[, truth])."""

import sys
import time

import numpy as np
import torch

import napari_deepblur as ndb
from napari_deepblur.evaluation import table1
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.evaluation.testimages import load_test_images
from napari_deepblur.pipeline import _refine as refinement


def previous_score(x):
    b = 16
    x = x[b:-b, b:-b]
    gradients = torch.stack([x[:-1, 1:] - x[:-1, :-1], x[1:, :-1] - x[:-1, :-1]])
    patches = gradients.unfold(1, 64, 56).unfold(2, 64, 56).permute(1, 2, 0, 3, 4)
    patches = patches.reshape(-1, 2 * 64 * 64)
    return (patches.abs().sum(-1) / torch.sqrt((patches**2).sum(-1) + 1e-12)).mean()


criterion, k, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
from_truth = sys.argv[4:] == ["truth"]
if criterion == "previous":
    refinement.sparsity_score, refinement.PRIOR_WEIGHT = previous_score, 1.0
elif criterion != "shipped":
    raise SystemExit("criterion: shipped or previous")
if from_truth:
    refinement.PRIOR_WEIGHT = 0.0
alpha, beta = table1.LEVELS["L1"]
table1.LEVELS["k"] = (alpha * k**2, beta * k)
model = ndb.load_model()
images = load_test_images(size=256)
rows, projections, names, seconds = [], [], [], 0.0
for i in range(n):
    pair = table1.draw_pair(images, i, "k", seed=0, split=1)
    estimate = ndb.identify(pair["y"], model, fc=table1.FC)
    start = time.perf_counter()
    start_gamma = pair["gamma"] if from_truth else estimate.coefficients
    gamma = refinement.refine_coefficients(
        torch.from_numpy(pair["y"]).float(),
        torch.from_numpy(start_gamma),
        table1.FAMILY,
        torch.from_numpy(estimate.uncertainty),
    )
    seconds += time.perf_counter() - start
    projections.append(float(gamma.numpy() @ pair["gamma"]) / float(pair["gamma"] @ pair["gamma"]))
    refined_psf = table1.FAMILY.psf(gamma).double().numpy()
    names.append(pair["image"])
    rows.append([psf_snr_db(estimate.psf, pair["psf"]), psf_snr_db(refined_psf, pair["psf"])])
rows = np.array(rows)
settled = f"from the truth, settles on {np.mean(projections):.3f} of it; " if from_truth else ""
print(
    f"{criterion}, k = {k:g}, {n} validation pairs: {settled}PSF SNR {rows[:, 0].mean():.2f} → "
    f"{rows[:, 1].mean():.2f} dB (median {np.median(rows[:, 1]):.2f}; worse by > 0.5 dB on "
    f"{int(np.sum(rows[:, 1] < rows[:, 0] - 0.5))}); {seconds / n:.2f} s per refinement"
)
by_image = {name: rows[[m == name for m in names]].mean(0) for name in dict.fromkeys(names)}
print("per image:", ", ".join(f"{m} {a:.1f} → {b:.1f}" for m, (a, b) in by_image.items()))
