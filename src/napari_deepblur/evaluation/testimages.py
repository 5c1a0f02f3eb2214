"""The benchmark's held-out test images (never used in training, which sees only synthetic
dead-leaves and fluorescence scenes).

Default set: the natural images bundled inside scikit-image's package (loaded from its own
files, no download) plus three real fluorescence crops shipped in ``napari_deepblur/data``
(sources and licenses in ``data/ATTRIBUTION.md``). Every image is grayscale float32,
centre-cropped (or reflect-padded) to ``size × size`` px and scaled to [0, 1] by its min/max.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: ``skimage.data`` images whose files ship inside the scikit-image package (checked with
#: the network off: none of them triggers a download). Left out: binary or synthetic ones
#: (horse, logo, phantom), duplicates (cat = chelsea) and tiny ones (microaneurysms, 102 px).
SKIMAGE_IMAGES = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "coins",
    "moon",
    "page",
    "text",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "grass",
    "gravel",
    "brick",
    "cell",
    "retina",
    "clock",
)

#: Real microscopy crops (400 × 400 px, uint16) bundled with the package.
MICROSCOPY_IMAGES = ("bpae_actin_400.tif", "bpae_nuclei_400.tif", "dsb2018_nuclei_400.tif")

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def prepare_test_image(image, size: int) -> np.ndarray:
    """A test image as the benchmark uses it: grayscale (RGB(A) → luminance with
    ``skimage.color.rgb2gray``), centre-cropped or reflect-padded to ``size × size`` px
    (:func:`fit_to_size`), then scaled to [0, 1] by its min/max (float32). Idempotent.
    A constant image is refused (nothing to deblur)."""
    from skimage.color import rgb2gray

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = rgb2gray(array[..., :3])
    array = np.squeeze(array).astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D grayscale or RGB image, got shape {np.shape(image)}")
    array = fit_to_size(array, size)
    low, high = float(array.min()), float(array.max())
    if not high > low:
        raise ValueError("the image is constant: it cannot be a test image")
    return ((array - low) / (high - low)).astype(np.float32)


def fit_to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to ``size × size`` px; axes shorter than ``size`` are reflect-padded
    (symmetrically, as evenly as possible) first."""
    pads = [(max(0, size - n) // 2, max(0, size - n) - max(0, size - n) // 2) for n in image.shape]
    if any(sum(p) for p in pads):
        while any(sum(p) > n - 1 for p, n in zip(pads, image.shape, strict=True)):
            # a reflection adds at most n − 1 px: pad in several rounds for tiny images
            step = [
                (min(a, n - 1), min(b, n - 1)) for (a, b), n in zip(pads, image.shape, strict=True)
            ]
            image = np.pad(image, step, mode="reflect")
            pads = [(a - sa, b - sb) for (a, b), (sa, sb) in zip(pads, step, strict=True)]
        image = np.pad(image, pads, mode="reflect")
    top, left = ((n - size) // 2 for n in image.shape)
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def _read(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".png":
        from skimage.io import imread

        return imread(path)
    import tifffile

    return tifffile.imread(path)


def load_test_images(folder=None, size: int = 256) -> list[tuple[str, np.ndarray]]:
    """The test images as ``[(name, image)]``, each float32 ``(size, size)`` in [0, 1].

    ``folder``: every TIFF/PNG image in it (sorted by file name; RGB → gray; 3D stacks are
    refused) instead of the default set (``SKIMAGE_IMAGES`` + ``MICROSCOPY_IMAGES``,
    20 images).
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such image folder: {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no TIFF or PNG images in {folder}")
        raw = [(p.stem, _read(p)) for p in files]
    else:
        import skimage.data

        raw = [(name, getattr(skimage.data, name)()) for name in SKIMAGE_IMAGES]
        raw += [(Path(f).stem, _read(DATA_DIR / f)) for f in MICROSCOPY_IMAGES]
    return [(name, prepare_test_image(image, size)) for name, image in raw]
