"""The parametric field model and the product-convolution family built from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deepblur.models import ModelFileError, load_family, load_model, save_family
from napari_deepblur.optics import Convolution, ProductConvolution, zernike_psf
from napari_deepblur.optics.families import ProductConvolutionOperator, conjugate_gradient
from napari_deepblur.optics.field import (
    DEFOCUS,
    HORIZONTAL_COMA,
    OBLIQUE_ASTIGMATISM,
    VERTICAL_ASTIGMATISM,
    VERTICAL_COMA,
    FieldAberrations,
    build_field_family,
    grid_positions,
    random_fields,
)

NOLL = (4, 5, 6, 7, 8, 9, 10)


def _column(j):
    return NOLL.index(j)


def test_field_terms_follow_the_field_radius_and_angle():
    field = FieldAberrations(
        base={DEFOCUS: 0.02}, defocus_r2=0.1, astigmatism_r2=0.08, coma_r=0.06, tilt_y=0.04
    )
    centre, right, bottom_right = field.coefficients_at([[0.5, 0.5], [0.5, 1.0], [1.0, 1.0]])
    assert centre == pytest.approx([0.02, 0, 0, 0, 0, 0, 0])
    # along +x (φ = 0, r² = 1/2): vertical astigmatism and horizontal coma only
    assert right[_column(DEFOCUS)] == pytest.approx(0.02 + 0.1 / 2)
    assert right[_column(VERTICAL_ASTIGMATISM)] == pytest.approx(0.08 / 2)
    assert right[_column(OBLIQUE_ASTIGMATISM)] == pytest.approx(0, abs=1e-12)
    assert right[_column(HORIZONTAL_COMA)] == pytest.approx(0.06 / np.sqrt(2))
    assert right[_column(VERTICAL_COMA)] == pytest.approx(0, abs=1e-12)
    # the corner: r = 1, φ = 45°; the tilt adds its full value at the bottom edge
    assert bottom_right[_column(DEFOCUS)] == pytest.approx(0.02 + 0.1 + 0.04)
    assert bottom_right[_column(OBLIQUE_ASTIGMATISM)] == pytest.approx(0.08)
    assert bottom_right[_column(VERTICAL_COMA)] == pytest.approx(0.06 / np.sqrt(2))


def test_vignetting_scales_the_psf_sum():
    field = FieldAberrations(vignetting=0.3)
    psfs = field.psfs_at([[0.5, 0.5], [0.0, 0.0], [0.5, 0.0]], fc=0.2)
    assert psfs.sum((-2, -1)).numpy() == pytest.approx([1.0, 0.7, 0.85], abs=1e-4)


@pytest.fixture(scope="module")
def family_and_report():
    return build_field_family(random_fields(60, seed=3), 0.2, num_psfs=4, num_maps=4, grid=7)


def test_the_family_reproduces_the_fields_it_was_built_from(family_and_report):
    family, report = family_and_report
    assert family.num_parameters == 16 and family.parameter_bank.shape == (60, 16)
    assert 0.9 < report.psf_variance_captured <= 1 and 0.95 < report.map_variance_captured <= 1
    # the report's error is the complete model's: check it on one field at the lattice
    fields = random_fields(60, seed=3)
    positions = grid_positions(7)
    truth = fields[0].psfs_at(positions, 0.2).double()
    model = torch.stack(
        [family.psf_at(family.parameter_bank[0].double(), float(y), float(x)) for y, x in positions]
    )
    error = ((model - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)).mean()
    assert float(error) < report.max_relative_error
    assert float(error) < 0.5


def test_local_weights_and_psf_at_agree(family_and_report):
    family, _ = family_and_report
    gamma = family.parameter_bank[5]
    weights = family.local_weights(gamma, torch.tensor([[0.2, 0.7]]))[0]
    direct = torch.tensordot(weights, family.eigen_psfs, dims=([-1], [0]))
    assert torch.allclose(family.psf_at(gamma, 0.2, 0.7), direct, atol=1e-7)


def test_fit_parameters_recovers_gamma_from_exact_readings(family_and_report):
    family, _ = family_and_report
    gamma = family.parameter_bank[7]
    positions = torch.rand(40, 2, generator=torch.Generator().manual_seed(0))
    readings = family.local_weights(gamma, positions)
    fitted = family.fit_parameters(readings, positions, 1e-10)
    assert torch.allclose(fitted, gamma, atol=1e-3 * float(gamma.abs().max()))
    # the family member of a field's PSFs is found back by projection
    lattice = grid_positions(9).float()
    psfs = torch.stack([family.psf_at(gamma, float(y), float(x)) for y, x in lattice])
    assert torch.allclose(family.project(psfs, lattice), gamma, atol=1e-3)


def test_constant_parameters_give_one_psf_everywhere(family_and_report):
    family, _ = family_and_report
    weights = torch.tensor([0.2, 0.01, -0.02, 0.005])
    gamma = family.constant_parameters(weights)
    at = family.local_weights(gamma, torch.rand(20, 2))
    # the maps need not hold an exact constant: the weights are proportional to the given
    # ones (one PSF shape everywhere) and within a few % of them
    shape = family.normalised_weights(at)
    assert torch.allclose(shape, family.normalised_weights(weights).expand_as(shape), atol=1e-5)
    assert torch.allclose(at, weights.expand_as(at), rtol=0.1)


def test_local_family_reads_normalised_local_psfs(family_and_report):
    family, _ = family_and_report
    local = family.local_family(positions_per_draw=4)
    assert local.num_parameters == family.num_psfs
    assert family.local_parameter_scale == pytest.approx(local.parameter_scale)
    psfs = local.psf(local.parameter_bank[:10])
    assert psfs.sum((-2, -1)).numpy() == pytest.approx(np.ones(10), abs=1e-4)
    assert family.identification_family().parameter_scale == pytest.approx(local.parameter_scale)


def test_preconditioned_cg_solves_the_normal_equations(family_and_report):
    family, _ = family_and_report
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    operator = family.operator(family.parameter_bank[2][None, None].double(), (64, 64))
    operator.cg_iterations = 60
    y = operator.forward(x)
    lam = 1e-2
    solution = operator.regularized_inverse(y, lam)
    residual = operator.adjoint(operator.forward(solution)) + lam * solution - operator.adjoint(y)
    assert float(residual.norm() / operator.adjoint(y).norm()) < 1e-4


def test_constant_field_inverse_matches_the_convolution_closed_form():
    """One eigen-PSF with a constant multiplier is a convolution: the PCG inverse (circular
    boundary, exact Fourier formula) must agree with the closed form."""
    psf = zernike_psf(torch.tensor([0.1, 0, 0.05, 0, 0, 0, 0]), 0.2, 15).double()
    y = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    operator = ProductConvolutionOperator(
        psf[None], torch.ones(1, 1, 1, 48, 48).double(), "circular"
    )
    closed = Convolution(psf, (48, 48), "circular").regularized_inverse(y, 1e-3)
    assert torch.allclose(operator.regularized_inverse(y, 1e-3), closed, atol=1e-8)


def test_conjugate_gradient_stops_at_convergence_without_nan():
    apply = lambda v: 2 * v  # noqa: E731
    rhs = torch.ones(1, 4, 4)
    out = conjugate_gradient(apply, rhs, 10, x0=rhs / 2)  # already the solution
    assert torch.isfinite(out).all() and torch.allclose(out, rhs / 2)


def test_family_file_round_trip_and_refused_as_model(family_and_report, tmp_path):
    family, report = family_and_report
    path = save_family(family, 0.2, tmp_path / "fam.safetensors", {"report": report.__dict__})
    loaded, fc, card = load_family(path)
    assert isinstance(loaded, ProductConvolution) and fc == 0.2
    assert card["sha256"] and card["report"]["num_psfs"] == 4
    assert torch.allclose(loaded.eigen_psfs, family.eigen_psfs)
    assert torch.allclose(loaded.parameter_bank, family.parameter_bank)
    with pytest.raises(ModelFileError, match="family file, not a model"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_family(tmp_path / "missing.safetensors")


def test_field_family_command_writes_family_and_card(tmp_path, capsys):
    from napari_deepblur.cli import main

    out = tmp_path / "f.safetensors"
    args = ["field-family", "--out", str(out), "--fields", "12", "--grid", "5", "--maps", "3"]
    assert main(args) == 0
    assert "K = 12" in capsys.readouterr().out
    family, fc, card = load_family(out)
    assert family.num_parameters == 12 and card["command"].startswith("deepblur field-family")
    assert main(args) == 2  # exists: refused without --overwrite
