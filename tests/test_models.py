"""Model files: save/load round trip, the shipped registry, clear errors on bad files."""

import copy
import json
import shutil

import pytest
import torch

from napari_deepblur.models import (
    DeepBlurModel,
    ModelFileError,
    list_models,
    load_model,
    save_model,
)
from napari_deepblur.nets import (
    DeblurringConfig,
    DeblurringNetwork,
    IdentificationConfig,
    IdentificationNetwork,
)
from napari_deepblur.optics import ZernikeConvolution


def _tiny_model():
    torch.manual_seed(0)
    family = ZernikeConvolution(0.2)
    identification = IdentificationNetwork(
        IdentificationConfig(widths=(8, 8, 16, 16), spectrum_widths=(8, 16, 16), hidden=16)
    )
    deblurring = DeblurringNetwork(DeblurringConfig(iterations=2, widths=(8, 16), blocks=1))
    return DeepBlurModel(family, identification.eval(), deblurring.eval(), 0.2, name="tiny")


def test_save_load_round_trip(tmp_path):
    model = _tiny_model()
    path = save_model(model, tmp_path / "tiny.safetensors", card={"note": "test"})
    loaded = load_model(path)
    assert loaded.fc == 0.2 and loaded.family.config() == model.family.config()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["note"] == "test" and len(card["sha256"]) == 64
    x = torch.rand(2, 1, 96, 96)
    # weights are stored as float16: predictions agree to float16 precision
    torch.testing.assert_close(
        loaded.identification(x), model.identification(x), atol=2e-2, rtol=2e-2
    )


def test_on_the_cpu_the_networks_run_channels_last_with_the_same_results(tmp_path):
    model = _tiny_model()
    reference_identification = copy.deepcopy(model.identification)
    reference_deblurring = copy.deepcopy(model.deblurring)
    model.to("cpu")
    convolutions = [m for m in model.deblurring.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            model.identification(x), reference_identification(x), atol=1e-5, rtol=1e-4
        )
        sigma = torch.full_like(x, 0.01)
        operator = model.family.operator(torch.zeros(2, 1, 7), x.shape[-2:])
        torch.testing.assert_close(
            model.deblurring(x, operator, sigma),
            reference_deblurring(x, operator, sigma),
            atol=1e-5,
            rtol=1e-4,
        )
    # and the file written from channels-last weights loads back to the same networks
    loaded = load_model(save_model(model, tmp_path / "tiny.safetensors"))
    torch.testing.assert_close(
        loaded.identification(x), model.identification(x), atol=2e-2, rtol=2e-2
    )


def test_moving_a_model_where_it_already_is_keeps_its_weights_and_a_changed_layout_is_redone():
    model = _tiny_model().to("cpu")
    weights = [p.data_ptr() for p in model.deblurring.parameters()]
    model.to("cpu").eval()
    assert [p.data_ptr() for p in model.deblurring.parameters()] == weights
    model.deblurring.to(memory_format=torch.contiguous_format)  # someone moved one network
    model.identification.train()
    model.to("cpu").eval()
    convolutions = [m for m in model.deblurring.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    assert not any(m.training for m in model.identification.modules())


def test_shipped_default_model_is_listed_with_a_card():
    models = list_models()
    assert "zernike-default" in models
    card = models["zernike-default"]
    for key in ("family", "architecture", "training", "sha256"):
        assert key in card
    assert card["training"]["command"].startswith("deepblur train")
    model = load_model()
    assert model.name == "zernike-default" and model.deblurring is not None


def test_missing_model_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        load_model(tmp_path / "nothere.safetensors")
    with pytest.raises(FileNotFoundError, match="no shipped model named 'nope'"):
        load_model("nope")


def test_corrupt_model_file_is_refused_with_its_name(tmp_path):
    path = save_model(_tiny_model(), tmp_path / "m.safetensors", card={})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)
    # without a card there is no checksum; a truncated file is still refused by name
    other = tmp_path / "cut.safetensors"
    shutil.copy(path, other)
    other.write_bytes(other.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="cut.safetensors"):
        load_model(other)


def test_a_card_that_is_not_json_is_refused(tmp_path):
    path = save_model(_tiny_model(), tmp_path / "m.safetensors", card={})
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
