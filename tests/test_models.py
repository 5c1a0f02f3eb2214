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


def _rewrite(path, out, *, config=None, tensors=None, metadata=None):
    """A copy of the model file ``path`` at ``out`` with its settings or tensors changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        settings = json.loads(f.metadata()["napari_deepblur"])
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if config is not None:
        config(settings)
    if tensors is not None:
        tensors(stored)
    text = metadata if metadata is not None else json.dumps(settings)
    save_file(stored, str(out), metadata={"napari_deepblur": text})
    return out


def _set(part, key, value):
    return lambda settings: settings[part].__setitem__(key, value)


def _reshape(name):
    return lambda t: t.__setitem__(name, torch.zeros(3, *t[name].shape[1:], dtype=t[name].dtype))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metadata": "[1, 2]"}, "settings .* are not a JSON object"),
        ({"config": _set("identification", "bogus", 1)}, "unknown identification setting.*'bogus'"),
        ({"config": _set("deblurring", "blocks", "2")}, "blocks = '2' is not a whole number"),
        # ~100 GB of float32 weights: refused from the settings, before any is allocated
        (
            {"config": _set("deblurring", "widths", [4096, 8192, 16384, 32768])},
            "widths = .* from 1",
        ),
        ({"config": _set("identification", "widths", [4096] * 4)}, "parameters, above the"),
        ({"config": _set("family", "noll_indices", [4, 1000000])}, "Noll indices run from 1 to 66"),
        ({"config": _set("family", "bogus", 1)}, "not hold a usable operator family"),
        (
            {"tensors": _reshape("identification.head.2.weight")},
            r"head\.2\.weight of shape \(3, 16\)",
        ),
        (
            {"tensors": lambda t: t.pop("deblurring.floor_weight")},
            "deblurring.floor_weight missing",
        ),
        (
            {"tensors": lambda t: t.__setitem__("deblurring.extra", torch.ones(1))},
            "extra unexpected",
        ),
    ],
)
def test_crafted_model_files_are_refused_with_the_file_and_the_fault(tmp_path, change, message):
    """Crafted or damaged settings and tensors gave tracebacks, and a file asking for huge
    networks tried to allocate them; a file without a card gets the same checks."""
    path = save_model(_tiny_model(), tmp_path / "tiny.safetensors")
    crafted = _rewrite(path, tmp_path / "crafted.safetensors", **change)
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(crafted)
    assert str(crafted) in str(error.value)


def test_a_card_that_is_not_a_json_object_is_refused(tmp_path):
    path = save_model(_tiny_model(), tmp_path / "m.safetensors", card={})
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="m.json is not a JSON object"):
        load_model(path)
    from napari_deepblur.models import load_family

    with pytest.raises(ModelFileError, match="m.json is not a JSON object"):
        load_family(path)


def test_model_files_need_no_torch_and_know_the_field_kind(fresh_python):
    """The docks list models and read headers before torch is imported (off napari's main
    thread): model_files must not import it, and its field kind is the family's."""
    from napari_deepblur.model_files import SPACE_VARYING_KIND
    from napari_deepblur.optics.families import ProductConvolution

    assert SPACE_VARYING_KIND == ProductConvolution.kind
    code = (
        "import sys\n"
        "from napari_deepblur.model_files import list_models, model_header\n"
        "assert 'zernike-default' in list_models()\n"
        "assert model_header('field-default') == (0.2, 'product_convolution')\n"
        "print('torch' in sys.modules)\n"
    )
    assert fresh_python(code).strip() == "False"
