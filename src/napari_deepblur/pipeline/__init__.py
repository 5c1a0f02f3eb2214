"""The public API: :func:`identify`, :func:`deblur` and :class:`BlurEstimate`.

Every entry point (napari widgets, CLI, batch, benchmark) goes through these functions, so
validation, intensity normalisation, resampling to the model's sampling, tiling and device
choice exist once. Long work has a generator form (:func:`iter_identify`,
:func:`iter_deblur`) that yields :class:`Progress` and returns the result; the plain
functions run it to the end.

Scale: :func:`iter_deblur_into` deblurs a 2D array-like (a memory-mapped TIFF, zarr) into
another, band by band with bounded memory; :func:`deblur_dask` is the lazy ``map_overlap``
form for huge dask arrays; :func:`iter_identify_stack` and :func:`iter_deblur_stack` process
Z/T/C stacks plane by plane (one shared estimate, the median over planes, or one per plane).
Tiles start on multiples of the deblurring network's stride, so tiled and untiled results
agree. A GPU out-of-memory error while deblurring retries with half-size tiles, then on the
CPU (with a warning).

The rooms follow the stages (private modules; this package's ``__all__`` is the API):
``_progress`` (generators and their progress), ``_estimate`` (the estimate),
``_sampling`` (optics → cutoff, once: :class:`Sampling`; resampling), ``_prepare`` (a plane
made ready once: checks, resampling, intensity range, noise: :class:`PreparedPlane`, which
identify makes and deblurring the same plane reuses), ``_tiling`` (tiles and their
blending), ``_identify``, ``_deblur`` (with the one rule for the noise it uses,
``deblur_noise``), ``_stacks`` (Z/T/C planes); identify's helpers ``_windows`` (the
network applied to windows of an image), ``_refine`` (refinement through the physics) and
``_field`` (the space-varying estimate and its fit; :mod:`napari_deepblur.field` gathers
the whole feature).

    >>> import napari_deepblur as ndb
    >>> from napari_deepblur.samples import make_blurred_sample
    >>> image = make_blurred_sample(seed=0, size=128)["image"]
    >>> est = ndb.identify(image, pixel_size_nm=74, na=1.4, wavelength_nm=520, device="cpu")
    >>> est.noll_indices, round(est.fc, 4), est.optics["refractive_index"]
    ((4, 5, 6, 7, 8, 9, 10), 0.1992, 1.518)
    >>> ndb.deblur(image, est, device="cpu").shape
    (128, 128)
"""

from ._deblur import (
    DeblurSetup,
    block_margin,
    deblur,
    deblur_dask,
    deblur_region,
    deblur_setup,
    iter_deblur,
    iter_deblur_into,
)
from ._estimate import BlurEstimate, clean_measured_psf
from ._field import FieldEstimate
from ._identify import identify, iter_identify
from ._prepare import (
    STRENGTH_RANGE,
    PreparedPlane,
    check_finite,
    check_noise_and_strength,
    plane_indices,
)
from ._progress import Progress, ProgressBar, drive, run
from ._sampled import SAMPLE_GRID, iter_identify_sampled, sample_windows
from ._sampling import Sampling, psf_sampled_like
from ._stacks import (
    STACK_MODES,
    combine_estimates,
    iter_deblur_stack,
    iter_identify_stack,
    plane_index,
    representative_plane,
)
from ._tiling import DEFAULT_TILE_PX, MIN_TILE_PX, TILE_OVERLAP_PX, check_tile_px

__all__ = [
    # the estimate (and the field of a space-varying one), and long work
    "BlurEstimate",
    "FieldEstimate",
    "Progress",
    "run",
    "drive",
    "ProgressBar",
    # one image
    "identify",
    "iter_identify",
    "deblur",
    "iter_deblur",
    # large images and stacks
    "iter_deblur_into",
    "deblur_dask",
    "iter_identify_stack",
    "iter_deblur_stack",
    "iter_identify_sampled",
    "sample_windows",
    "SAMPLE_GRID",
    "block_margin",
    "deblur_region",
    "deblur_setup",
    "DeblurSetup",
    "combine_estimates",
    "representative_plane",
    "plane_index",
    "plane_indices",
    "STACK_MODES",
    # sampling (resolved once, where an image enters), PSFs from elsewhere
    "Sampling",
    "psf_sampled_like",
    "clean_measured_psf",
    # a plane prepared once, by identify, for deblurring
    "PreparedPlane",
    # checks of options, before any work
    "check_finite",
    "check_noise_and_strength",
    "check_tile_px",
    "STRENGTH_RANGE",
    "DEFAULT_TILE_PX",
    "MIN_TILE_PX",
    "TILE_OVERLAP_PX",
]
