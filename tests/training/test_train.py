"""Small real training runs: the loss goes down, checkpoints resume, the CLI writes a model."""

import json

import torch

from napari_deepblur.nets import IdentificationConfig, IdentificationNetwork
from napari_deepblur.optics import ZernikeConvolution
from napari_deepblur.training.data import BlurredBatches, NoiseRange, make_image_bank
from napari_deepblur.training.losses import identification_loss
from napari_deepblur.training.train import LoopConfig, train_identification


def _setup(seed=0):
    family = ZernikeConvolution(0.2, parameter_scale=0.15)
    bank = make_image_bank(32, 112, seed=seed, workers=1)
    data = BlurredBatches(family, bank, crop=96, noise=NoiseRange(0.0, 0.0, 1.0), seed=seed)
    valid = BlurredBatches(family, bank, crop=96, noise=NoiseRange(0.0, 0.0, 1.0), seed=99)
    return family, data, valid


def test_sign_invariant_loss_is_zero_for_the_flipped_even_terms():
    family = ZernikeConvolution(0.2)
    gamma = family.sample_parameters(4, torch.Generator().manual_seed(0))
    flipped = family.equivalent_parameters(gamma)[1]
    loss = identification_loss(flipped / family.parameter_scale, gamma, family)
    assert float(loss) < 1e-6
    assert float(identification_loss(-gamma / family.parameter_scale, gamma, family)) > 0.01


def test_a_short_identification_run_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    family, data, valid = _setup()
    net = IdentificationNetwork(
        IdentificationConfig(widths=(8, 16, 16, 32), spectrum_widths=(8, 16, 32), hidden=32)
    )
    fixed = valid.sample(32)

    def loss_now():
        from napari_deepblur.training.train import identification_inputs

        net.eval()
        with torch.no_grad():
            y_n, *_ = identification_inputs(fixed.y)
            return float(identification_loss(net(y_n), fixed.gamma, family))

    before = loss_now()
    cfg = LoopConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, validate_every=30)
    history = train_identification(
        net, family, 0.2, data, valid, cfg, tmp_path / "ckpt.pt", quiet=True
    )
    after = loss_now()
    assert after < 0.8 * before, (before, after)
    assert [h["step"] for h in history] == [30, 60]
    # resuming from the checkpoint continues at step 60 and does not redo work
    again = train_identification(
        net, family, 0.2, data, valid, cfg, tmp_path / "ckpt.pt", quiet=True
    )
    assert again[-1]["step"] == 60


def test_cli_train_writes_a_loadable_model_with_its_card(tmp_path):
    from napari_deepblur.cli import main
    from napari_deepblur.models import load_model

    out = tmp_path / "run"
    code = main(
        [
            "train", "--out", str(out), "--identification-steps", "3",
            "--deblurring-steps", "2", "--batch-size", "4", "--deblurring-batch-size", "2",
            "--bank-size", "64", "--crop", "96", "--device", "cpu", "--quiet",
            "--deblurring-widths", "8,16",
        ]
    )  # fmt: skip
    assert code == 0
    model = load_model(out / "model.safetensors")
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["identification_steps"] == 3
    assert card["training"]["deblurring_steps"] == 2
    assert card["training"]["command"].startswith("deepblur train")
    assert card["training"]["seed"] == 0 and card["sha256"]
    assert model.identification.config.training_px == 96
    assert model.deblurring.config.widths == (8, 16)
    assert card["architecture"]["deblurring"]["widths"] == [8, 16]


def test_the_identification_sees_the_same_normalised_image_as_the_deblurring():
    from napari_deepblur.training.train import identification_inputs, network_inputs

    y = 100 + 50 * torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    y_n, low, scale = identification_inputs(y)
    y_n_full, sigma, low_full, scale_full = network_inputs(y, 0.2)
    assert y_n.shape == (3, 1, 64, 64) and sigma.shape == y_n.shape
    torch.testing.assert_close(y_n, y_n_full)
    torch.testing.assert_close((low, scale), (low_full, scale_full))
    # normalised by a robust range: the bulk of the pixels lies in [0, 1]
    assert 0.9 < float(((y_n >= 0) & (y_n <= 1)).float().mean()) <= 1


def test_training_from_a_shipped_model_leaves_it_unchanged(tmp_path):
    """Fine-tuning starts from copies: the shipped model's shared, frozen networks (and
    what every other holder of it runs) are the same after a training step."""
    from napari_deepblur.models import load_model
    from napari_deepblur.training.run import TrainOptions, train_model

    shipped = load_model("zernike-default")
    before = {k: v.clone() for k, v in shipped.identification.state_dict().items()}
    path = train_model(
        TrainOptions(
            out=tmp_path,
            stage="identification",
            identification_from="zernike-default",
            identification_steps=1,
            batch_size=2,
            lr=1.0,  # a step that would show
            bank_size=64,
            device="cpu",
            quiet=True,
        )
    )
    trained = load_model(path).identification.state_dict()
    after = load_model("zernike-default").identification.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.allclose(before[k].float(), trained[k].float(), atol=1e-2)
               for k in before if before[k].is_floating_point())  # fmt: skip
    assert not any(p.requires_grad for p in shipped.identification.parameters())


def test_fine_tuning_the_last_layers_on_real_and_synthetic_images(tmp_path):
    """``--train-layers`` trains only those layers (frozen batch norms keep their
    statistics) and ``--images … --real-fraction`` mixes real crops with synthetic scenes."""
    import numpy as np
    import pytest
    import tifffile

    from napari_deepblur.models import load_model
    from napari_deepblur.training.run import TrainOptions, train_model
    from napari_deepblur.training.train import freeze_all_but

    folders = [tmp_path / "natural", tmp_path / "microscopy"]
    rng = np.random.default_rng(0)
    for folder in folders:
        folder.mkdir()
        tifffile.imwrite(folder / "a.tif", rng.random((150, 170)).astype(np.float32))
    bank = make_image_bank(8, 64, seed=0, folder=folders, real_fraction=0.5, workers=1)
    real, synthetic = bank[:4].float(), bank[4:].float()
    assert real.std() > 0.2 and bank.shape == (8, 64, 64)  # uniform noise crops
    assert not torch.equal(synthetic, make_image_bank(4, 64, seed=1, workers=1).float())
    with pytest.raises(ValueError, match="no layer named nope"):
        freeze_all_but(IdentificationNetwork(), ["nope"])

    path = train_model(
        TrainOptions(
            out=tmp_path / "run",
            stage="identification",
            identification_from="zernike-default",
            identification_steps=2,
            batch_size=4,
            lr=1.0,
            bank_size=64,
            images=tuple(folders),
            real_fraction=0.5,
            train_layers=("image_stages.3", "head"),
            device="cpu",
            quiet=True,
        )
    )
    trained = load_model(path)
    shipped = load_model("zernike-default").identification.state_dict()
    changed = {
        ".".join(name.split(".")[:2])
        for name, value in trained.identification.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, shipped[name])
    }
    assert changed == {"image_stages.3", "head.0", "head.2"}  # statistics of the rest kept
    data = trained.card["training"]["data"]["images"]
    assert data.startswith("50% crops of") and "synthetic:mixed" in data
