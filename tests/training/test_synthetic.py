"""Tests for the seeded synthetic image generators and FolderCrops."""

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from napari_deepblur.training.synthetic import (
    FolderCrops,
    dead_leaves,
    fluorescence_scene,
    random_sharp_image,
)

GENERATORS = [dead_leaves, fluorescence_scene, random_sharp_image]


@pytest.mark.parametrize("gen", GENERATORS)
def test_deterministic_range_shape(gen):
    a = gen(96, 3)
    b = gen(96, np.random.default_rng(3))
    c = gen(96, 4)
    assert a.shape == (96, 96) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.std() > 1e-3


def test_random_sharp_image_kinds():
    kinds = set()
    for seed in range(12):
        img = random_sharp_image(64, seed, kind="mixed")
        for kind, gen in (("dead_leaves", dead_leaves), ("fluorescence", fluorescence_scene)):
            rng = np.random.default_rng(seed)
            rng.random()  # the mixed draw
            if np.array_equal(img, gen(64, rng)):
                kinds.add(kind)
    assert kinds == {"dead_leaves", "fluorescence"}
    with pytest.raises(ValueError, match="unknown kind"):
        random_sharp_image(32, 0, kind="nope")


def _radial_power_slope(img):
    f = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
    n = img.shape[0]
    yy, xx = np.indices(f.shape) - n // 2
    r = np.hypot(yy, xx).astype(int)
    prof = np.bincount(r.ravel(), f.ravel()) / np.bincount(r.ravel())
    k = np.arange(4, n // 4)  # mid frequencies
    return np.polyfit(np.log(k), np.log(prof[k]), 1)[0]


def test_dead_leaves_power_spectrum_is_natural():
    slopes = [_radial_power_slope(dead_leaves(128, s)) for s in range(6)]
    assert -3.5 < np.mean(slopes) < -1.5


def test_dead_leaves_options():
    img = dead_leaves(64, 0, min_radius_px=4, max_radius_px=8, polygons=False)
    # Few large disks: far fewer distinct grey levels than pixels (piecewise-smooth regions).
    assert np.mean(np.abs(np.diff(img, axis=1)) < 1e-2) > 0.5
    assert not np.array_equal(img, dead_leaves(64, 0, min_radius_px=4, max_radius_px=8))
    with pytest.raises(ValueError):
        dead_leaves(32, 0, min_radius_px=5, max_radius_px=2)
    assert dead_leaves(32, 0, n_shapes=3).shape == (32, 32)


def test_fluorescence_is_sparse_and_bright():
    for seed in range(5):
        img = fluorescence_scene(128, seed)
        assert np.median(img) < img.mean()
        assert np.mean(img > 0.5) < 0.2
        assert img.max() == pytest.approx(1.0)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", rng.integers(100, 4000, (80, 90), dtype=np.uint16))
    sub = tmp_path / "sub"
    sub.mkdir()
    skio.imsave(sub / "b.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tifffile.imwrite(
        sub / "c.tiff", rng.random((3, 70, 70)).astype(np.float32), photometric="minisblack"
    )
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_crops(image_folder):
    crops = FolderCrops(image_folder, size=64, rng=1)
    assert len(crops) == 3
    samples = [crops.sample() for _ in range(12)]
    for s in samples:
        assert s.shape == (64, 64) and s.dtype == np.float32
        assert s.min() >= 0 and s.max() <= 1 and s.max() > 0.9
    assert len(crops._cache) == 3  # every file was used, then cached
    again = FolderCrops(image_folder, size=64, rng=1)
    np.testing.assert_array_equal(samples[0], again.sample())


def test_folder_crops_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        FolderCrops(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.tif"):
        FolderCrops(tmp_path)
