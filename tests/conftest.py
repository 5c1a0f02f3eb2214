"""Fixtures shared by the whole suite: a small space-varying family and a tiny model for it
(built with the package's own commands, in seconds); Python code run in a new interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture
def fresh_python():
    """A function running Python ``code`` in a new interpreter (nothing imported yet, as in
    a napari session that has not touched the plugin) and returning what it printed; it
    fails the test, with the interpreter's errors, when the code fails."""

    def run(code: str) -> str:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


@pytest.fixture(scope="session")
def field_family_file(tmp_path_factory):
    """A product-convolution family file from 40 random fields on a 5×5 lattice (K = 4·3)."""
    from napari_deepblur.models import save_family
    from napari_deepblur.optics.field import build_field_family, random_fields

    family, report = build_field_family(random_fields(40, seed=1), 0.2, 4, 3, grid=5)
    path = tmp_path_factory.mktemp("family") / "small-field.safetensors"
    save_family(family, 0.2, path, {"report": report.__dict__})
    return path


@pytest.fixture(scope="session")
def tiny_field_model(field_family_file, tmp_path_factory):
    """A space-varying model trained for a few steps with ``deepblur train --family`` (its
    networks are barely trained: for plumbing, not accuracy)."""
    from napari_deepblur.models import load_model
    from napari_deepblur.training.run import TrainOptions, train_model

    out = tmp_path_factory.mktemp("tiny-field")
    path = train_model(
        TrainOptions(
            out=out,
            family_file=field_family_file,
            identification_steps=3,
            deblurring_steps=2,
            batch_size=4,
            deblurring_batch_size=2,
            bank_size=64,
            device="cpu",
            quiet=True,
        )
    )
    return load_model(path)
