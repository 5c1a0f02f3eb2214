"""Model files: save/load round trip, the shipped registry, clear errors on bad files."""

import copy
import dataclasses
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
    trainable_copy,
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


def test_on_the_cpu_loaded_networks_run_channels_last_with_the_same_results(tmp_path):
    model = load_model(save_model(_tiny_model(), tmp_path / "tiny.safetensors"))
    convolutions = [m for m in model.deblurring.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    standard = [copy.deepcopy(n).to(memory_format=torch.contiguous_format)
                for n in (model.identification, model.deblurring)]  # fmt: skip
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.identification(x), standard[0](x), atol=1e-5, rtol=1e-4)
        sigma = torch.full_like(x, 0.01)
        operator = model.family.operator(torch.zeros(2, 1, 7), x.shape[-2:])
        torch.testing.assert_close(
            model.deblurring(x, operator, sigma),
            standard[1](x, operator, sigma),
            atol=1e-5,
            rtol=1e-4,
        )


def test_a_model_is_moved_as_a_copy_and_never_in_place(tmp_path):
    """``to`` returns the model itself where it already is, else a model with copies of the
    networks there; the caller's model does not move (a "meta" device stands in for a GPU)."""
    model = _tiny_model()
    assert model.to("cpu") is model
    moved = model.to("meta")
    assert moved.device.type == "meta" and model.device.type == "cpu"
    assert moved.identification is not model.identification
    loaded = load_model(save_model(model, tmp_path / "tiny.safetensors"))
    first, second = loaded.to("meta"), loaded.to("meta")
    assert first.identification is second.identification  # loaded models: one copy per device
    assert first.to("cpu").identification is loaded.identification
    assert loaded.device.type == "cpu"


def test_load_model_hands_out_models_no_other_caller_can_change(tmp_path):
    """The four ways a shared model was changed behind its holder's back: another call's
    precision or device, an out-of-memory fallback's move to the CPU, training from it."""
    path = save_model(_tiny_model(), tmp_path / "tiny.safetensors")
    held = load_model(path, precision="float32")
    load_model(path, precision="auto")
    load_model(path, device="cpu", precision="auto").to("meta")  # e.g. the Identify widget
    assert held.precision == "float32" and held.device.type == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        held.precision = "bfloat16"
    assert not any(p.requires_grad for p in held.identification.parameters())
    before = {k: v.clone() for k, v in held.identification.state_dict().items()}
    trainable = trainable_copy(held.identification)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    torch.optim.SGD(trainable.parameters(), lr=1.0).zero_grad()
    with torch.no_grad():
        for p in trainable.parameters():
            p.add_(1.0)
    after = held.identification.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_model(path).card is not held.card  # cards are the holder's own too


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
