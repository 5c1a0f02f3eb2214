"""Fixtures for the napari widget tests: small sample images, captured notifications."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _torch_imported():
    """The docks import torch in a thread when the first opens, and fill in what needs it
    (the Device choices, the sampling line) when it is there; these tests start with it
    imported, as a napari session does a moment after its first dock."""
    import napari_deepblur.pipeline  # noqa: F401


@pytest.fixture(scope="session")
def small_sample():
    """The synthetic sample at 128×128 px (data + layer kwargs), computed once."""
    from napari_deepblur.samples import SAMPLE_NAME, make_blurred_sample

    sample = make_blurred_sample(seed=0, size=128)
    image = sample.pop("image")
    pixel = sample["optics"]["pixel_size_nm"]
    kwargs = {
        "name": SAMPLE_NAME,
        "scale": (pixel, pixel),
        "units": ("nm", "nm"),
        "metadata": sample,
    }
    return image, kwargs


@pytest.fixture
def notes(monkeypatch):
    """Messages the widgets send to the user: {"error": [...], "warning": [...], "info": [...]}."""
    from napari_deepblur._qt import _deblur, _identify, _job

    captured = {"error": [], "warning": [], "info": []}
    for module in (_job, _identify, _deblur):
        for kind in captured:
            name = f"notify_{kind}"
            if hasattr(module, name):
                monkeypatch.setattr(module, name, captured[kind].append)
    return captured
