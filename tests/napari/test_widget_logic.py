"""The widgets' headless twins and helpers (no viewer, no Qt), and the reader/writer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deepblur import _napari as logic
from napari_deepblur._napari import RunState


def test_logic_module_imports_no_gui(fresh_python):
    code = (
        "import sys, napari_deepblur._napari, napari_deepblur._reader, "
        "napari_deepblur._writer; "
        "print([m for m in sys.modules if m.split('.')[0] in ('napari', 'magicgui', 'qtpy')])"
    )
    assert fresh_python(code).strip() == "[]"


def test_run_state_machine():
    s = logic.RunStateMachine()
    seen = []
    s.connect(seen.append)
    assert s.state == RunState.IDLE and not s.busy
    s.set(RunState.RUNNING)
    assert s.busy
    with pytest.raises(RuntimeError, match="running to running"):
        s.set(RunState.RUNNING)  # no second job
    s.set(RunState.CANCELLING)
    assert s.busy
    s.set(RunState.IDLE)
    s.set(RunState.RUNNING)
    s.set(RunState.DONE)
    assert seen == [
        RunState.RUNNING,
        RunState.CANCELLING,
        RunState.IDLE,
        RunState.RUNNING,
        RunState.DONE,
    ]


def test_optics_from_layer():
    sample = {"optics": {"na": 1.4, "wavelength_nm": 520, "pixel_size_nm": 74, "fc": 0.2}}
    o = logic.known_optics(sample, (1.0, 1.0), ("pixel", "pixel"))
    assert o.complete and (o.na, o.wavelength_nm, o.pixel_size_nm) == (1.4, 520, 74)
    # pixel size from the scale in µm; NA and λ unknown
    o = logic.known_optics({}, (0.1, 0.065), ("micrometer", "micrometer"))
    assert o.pixel_size_nm == pytest.approx(65) and not o.complete and o.kwargs() == {}
    # no units: the scale says nothing
    assert logic.known_optics(None, (1.0, 1.0), None).pixel_size_nm is None
    assert "Nyquist" in logic.fc_text(logic.KnownOptics(1.4, 520, 200), 0.2)
    assert "fc = 0.199" in logic.fc_text(logic.KnownOptics(1.4, 520, 74), 0.2)


def test_check_layer_and_messages():
    with pytest.raises(logic.UserError, match="Labels"):
        logic.check_layer("Labels", shape=(64, 64))
    with pytest.raises(logic.UserError, match="Split RGB"):
        logic.check_layer("Image", rgb=True, shape=(64, 64, 3))
    with pytest.raises(logic.UserError, match="too small"):
        logic.check_layer("Image", shape=(5, 20, 20))
    logic.check_layer("Image", shape=(3, 64, 64))
    import torch

    message = logic.user_message(torch.cuda.OutOfMemoryError("CUDA out of memory"), "Deblur")
    assert message.startswith("Deblur failed: the GPU ran out of memory") and "cpu" in message
    assert "report it" in logic.user_message(KeyError("x"), "Deblur")
    assert logic.plane_index((3, 4, 64, 64), (2.4, 7.0, 10.0, 10.0)) == (2, 3)
    assert logic.plane_index((64, 64), None) == ()


def test_a_missing_file_is_about_a_model_only_when_it_is():
    folder = FileNotFoundError(2, "No such file or directory", "/no/folder/x.psf.tif")
    message = logic.user_message(folder, "Export PSF")
    assert "Check the path." in message and "model" not in message
    from napari_deepblur.models import ModelNotFoundError, load_model

    with pytest.raises(ModelNotFoundError) as missing:  # the type tells, not the text
        load_model("/models/mine.safetensors")
    assert "choose a shipped model" in logic.user_message(missing.value, "Identify blur")


def test_is_psf_of_matches_the_image_exactly():
    def psf(source, **stack):
        return {"format": logic.PSF_FORMAT, "source": source, **stack}

    assert logic.is_psf_of(psf("cell"), "cell")
    # images whose names start the same are other images
    assert not logic.is_psf_of(psf("cell 2"), "cell")
    assert not logic.is_psf_of(psf("cell [1]"), "cell")  # napari names a copy "cell [1]"
    assert logic.is_psf_of(psf("cell [1]"), "cell [1]")
    # a stack's PSFs record their planes
    plane = psf("cell [1]", stack_mode="plane", planes=[[1]])
    assert logic.is_psf_of(plane, "cell") and not logic.is_psf_of(plane, "cell [1]")
    median = psf("cell median", stack_mode="median", planes=[[0], [1]])
    assert logic.is_psf_of(median, "cell") and not logic.is_psf_of(median, "cell median")
    assert not logic.is_psf_of({"source": "cell"}, "cell")  # not a PSF


def test_coefficient_rows_and_summary():
    estimate = {
        "coefficients": [0.1, -0.3],
        "noll_indices": [4, 7],
        "uncertainty": [0.01, 0.02],
        "noise": {"alpha": 0.01, "beta": 0.02},
        "model": "m",
        "fc": 0.2,
    }
    rows = logic.coefficient_rows(estimate)
    assert [r["aberration"] for r in rows] == ["defocus", "vertical coma"]
    half = "█" * (logic.BAR_WIDTH // 2)  # 0.1 waves: half of the full bar (0.2 waves)
    assert rows[0]["bar"] == half and rows[1]["bar"].endswith("▸")
    text = logic.summary_text(estimate)
    assert "0.316 waves RMS" in text and "aberrated" in text and "α = 0.01" in text


def test_headless_identify_and_deblur(small_sample):
    """The widgets' twins: the same layers as in napari, without a viewer."""
    data, kwargs = small_sample
    before = data.copy()
    geometry = logic.layer_geometry(kwargs["scale"], (0.0, 0.0), kwargs["units"])
    optics = logic.known_optics(kwargs["metadata"])
    result = logic.identify_layers(
        logic.IdentifyRequest(
            data, "raw", optics=optics, device="cpu", augment=False, geometry=geometry
        )
    )
    [(psf, psf_kwargs, kind)] = result.layers
    assert kind == "image" and psf.shape == (31, 31)
    assert psf_kwargs["name"] == "raw PSF" and psf_kwargs["units"] == ("nm", "nm")
    assert psf_kwargs["translate"] == (0.0, (128 + 8) * 74.0)  # right of the image
    md = psf_kwargs["metadata"]
    assert logic.is_psf_metadata(md) and md["optics"]["pixel_size_nm"] == 74

    estimate = logic.estimate_from_psf_layer(psf, md)
    np.testing.assert_allclose(estimate.coefficients, result.estimate.coefficients)
    out = logic.deblur_layers(
        logic.DeblurRequest(data, "raw", estimate=estimate, device="cpu", geometry=geometry)
    )
    [(restored, out_kwargs, _)] = out.layers
    assert restored.shape == data.shape and out_kwargs["name"] == "raw deblurred"
    np.testing.assert_array_equal(data, before)

    # a bare PSF (no coefficients, no estimate) with its sampling works too
    bare = logic.estimate_from_psf_layer(psf, {"format": logic.PSF_FORMAT, "fc": 0.2})
    assert bare.noll_indices == () and bare.fc == 0.2
    with pytest.raises(logic.UserError, match="sampling"):
        logic.estimate_from_psf_layer(psf, {})


def test_headless_identify_stack(small_sample, monkeypatch):
    """A stack: the current plane, or the median over all planes (progress in planes,
    stopping between planes, the planes used in the metadata)."""
    data, _ = small_sample
    stack = np.stack([data, data[::-1]])
    before = stack.copy()
    one = logic.identify_layers(
        logic.IdentifyRequest(stack, "s", plane=(1,), device="cpu", augment=False)
    )
    [(_, one_kwargs, _)] = one.layers
    assert one_kwargs["name"] == "s [1] PSF"
    assert one_kwargs["metadata"]["planes"] == [[1]]
    assert one_kwargs["metadata"]["stack_mode"] == "plane"

    request = logic.IdentifyRequest(
        stack, "s", plane=(1,), stack_mode="median", device="cpu", augment=False
    )
    job = logic.iter_identify_layers(request)
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(job))
    result = stop.value.value
    assert {s.total for s in steps if s.total} == {2} and steps[-1].done == 2
    assert steps[0].message == "loading the model" and steps[0].total == 0  # before work counts
    [(psf, kwargs, _)] = result.layers
    assert psf.shape == (31, 31) and kwargs["name"] == "s median PSF"
    assert kwargs["metadata"]["planes"] == [[0], [1]]
    assert kwargs["metadata"]["stack_mode"] == "median"
    np.testing.assert_array_equal(stack, before)

    # cancelling = no longer iterating: stopped after the first plane, the second is never read
    from napari_deepblur import pipeline

    calls = []
    real = pipeline._stacks.identify_plane  # what the stack loop runs on each plane

    def counting(image, *args, **kwargs):
        calls.append(image.shape)
        return (yield from real(image, *args, **kwargs))

    monkeypatch.setattr(pipeline._stacks, "identify_plane", counting)
    job = logic.iter_identify_layers(request)
    step = next(job)
    while step.done < 1:
        step = next(job)
    job.close()
    assert len(calls) == 1
    with pytest.raises(ValueError, match="stack_mode"):
        logic.identify_layers(logic.IdentifyRequest(stack, "s", stack_mode="best"))


def test_psf_map_layer_data(small_sample):
    data, _ = small_sample
    result = logic.identify_layers(
        logic.IdentifyRequest(
            np.tile(data, (3, 3)), "big", device="cpu", augment=False, tile_px=128
        )
    )
    psf, psf_map = result.layers
    mosaic, kwargs, _ = psf_map
    assert mosaic.shape == (93, 93) and mosaic.max() == pytest.approx(1.0)
    assert kwargs["metadata"]["grid"] == [3, 3] and kwargs["blending"] == "additive"
    # the centre cell's centre lies over the image centre
    centre = np.asarray(kwargs["translate"]) + 46 * np.asarray(kwargs["scale"])
    np.testing.assert_allclose(centre, (191.5, 191.5), atol=1.0)


def test_writer_reader_roundtrip(tmp_path, small_sample):
    from napari_deepblur._reader import is_psf_file, napari_get_reader
    from napari_deepblur._writer import write_psf_layer
    from napari_deepblur.io import to_jsonable, write_image

    data, kwargs = small_sample
    result = logic.identify_layers(
        logic.IdentifyRequest(
            data,
            "raw",
            optics=logic.known_optics(kwargs["metadata"]),
            device="cpu",
            augment=False,
        )
    )
    psf, psf_kwargs, _ = result.layers[0]
    written = write_psf_layer(str(tmp_path / "x.psf.tif"), psf, psf_kwargs)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["x.psf.tif", "x.psf.json"]
    for path in written:
        reader = napari_get_reader(path)
        assert reader is not None
        [(back, back_kwargs, kind)] = reader(path)
        assert kind == "image" and back_kwargs["name"] == "x"
        np.testing.assert_allclose(back, psf, rtol=1e-6, atol=1e-9)
        assert back_kwargs["scale"] == (74.0, 74.0)
        for key, value in to_jsonable(psf_kwargs["metadata"]).items():
            assert back_kwargs["metadata"][key] == value
    # a plain TIFF is not ours: napari's own reader takes it
    plain = write_image(tmp_path / "plain.tif", data)
    assert not is_psf_file(plain) and napari_get_reader(str(plain)) is None
    assert napari_get_reader(str(tmp_path / "missing.psf.tif")) is None


def test_headless_identify_with_refinement_on_a_noise_free_image():
    """The Identify widget's "Refine on the image" reaches the pipeline and the summary."""
    from napari_deepblur.evaluation.table1 import draw_pair
    from napari_deepblur.evaluation.testimages import load_test_images

    pair = draw_pair(load_test_images(size=256), 2, "L0", 0, 1)
    result = logic.identify_layers(
        logic.IdentifyRequest(pair["y"], "raw", device="cpu", augment=False, refine=True)
    )
    assert result.estimate.refined
    assert "Refined on the image" in logic.summary_text(result.estimate.to_dict())
