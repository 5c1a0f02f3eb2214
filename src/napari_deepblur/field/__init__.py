"""Space-varying blur (the product-convolution model, Model 2.2), in one place.

``A x = Σ_i e_i ⋆ ((Σ_j γ[i, j] f_j) ⊙ x)``: eigen-PSFs ``e_i`` weighted by smooth maps
``f_j`` over the field. Its parts, by what they do:

- the physics — the operator family and the parametric field of Zernike aberrations from
  which a family is built: :mod:`napari_deepblur.optics.families` (``ProductConvolution``)
  and :mod:`napari_deepblur.optics.field`;
- the estimate of one image — :class:`FieldEstimate` (the local PSF anywhere in the image:
  ``BlurEstimate.field``) and how its γ is fitted to the identification network's readings
  all over the image (:func:`fit_field`): a stage of :func:`napari_deepblur.pipeline.identify`,
  which lives in the pipeline (``pipeline._field``) and is shown here;
- calibration from bead images — :mod:`.beads` (find, reject, extract the beads' PSFs) and
  :mod:`.calibration` (:func:`calibrate_from_beads`: a family from them, with held-out
  checks);
- the benchmark — :mod:`napari_deepblur.evaluation.fig10`; the command line —
  ``deepblur calibrate`` / ``deepblur field-family`` (:mod:`napari_deepblur.cli`); the
  "Calibrate from beads" dock's headless twin — :mod:`napari_deepblur._napari`.
"""

from ..pipeline._field import FieldEstimate, WindowReadings, cell_centres, fit_field, read_windows
from .beads import Bead, find_beads
from .calibration import (
    CalibrationResult,
    HoldoutReport,
    TooFewBeadsError,
    auto_settings,
    calibrate_from_beads,
    iter_calibrate_from_beads,
    save_calibration,
)

__all__ = [
    "Bead",
    "CalibrationResult",
    "FieldEstimate",
    "HoldoutReport",
    "TooFewBeadsError",
    "WindowReadings",
    "auto_settings",
    "calibrate_from_beads",
    "cell_centres",
    "find_beads",
    "fit_field",
    "iter_calibrate_from_beads",
    "read_windows",
    "save_calibration",
]
