"""The shipped samples are the samples' defaults, and napari's sample menu opens them without
torch (napari calls sample functions on its main thread)."""

import numpy as np
import pytest

from napari_deepblur import samples


@pytest.mark.parametrize(
    ("name", "make"),
    [
        (samples.SAMPLE_NAME, samples.make_blurred_sample),
        (samples.ACTIN_NAME, samples.make_actin_sample),
    ],
)
def test_shipped_samples_are_the_defaults_made_again(name, make):
    shipped, made = samples.shipped_sample(name), make()
    assert shipped.keys() == made.keys()
    for key in ("image", "sharp", "true_psf"):
        assert shipped[key].dtype == made[key].dtype and shipped[key].shape == made[key].shape
        # the blur is an FFT: the last bits may differ between CPUs (a uint16 count by one)
        difference = np.abs(shipped[key].astype(np.float64) - made[key].astype(np.float64))
        assert difference.max() <= (1 if made[key].dtype == np.uint16 else 1e-4), key
    rest = {k: v for k, v in made.items() if k not in ("image", "sharp", "true_psf")}
    assert {k: shipped[k] for k in rest} == rest


def test_the_sample_menu_needs_no_torch(fresh_python):
    code = (
        "import sys\n"
        "from napari_deepblur._sample_data import blurred_actin, blurred_fluorescence\n"
        "data, kwargs, kind = blurred_fluorescence()[0]\n"
        "assert data.shape == (256, 256) and kind == 'image'\n"
        "assert kwargs['metadata']['true_psf'].shape == (31, 31)\n"
        "assert blurred_actin()[0][0].dtype.name == 'uint16'\n"
        "print('torch' in sys.modules)\n"
    )
    assert fresh_python(code).strip() == "False"
