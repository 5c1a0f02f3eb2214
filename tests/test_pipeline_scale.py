"""Large images and stacks in the pipeline: streamed tiles, memory-mapped I/O, dask, planes,
cancellation and the out-of-memory fallback. Behaviour, not accuracy (the shipped model is
replaced by better ones under the same name)."""

import warnings
import weakref

import dask.array
import numpy as np
import pytest
import torch

from napari_deepblur import devices, io, pipeline
from napari_deepblur.evaluation.metrics import psf_snr_db
from napari_deepblur.models import load_model
from napari_deepblur.samples import make_blurred_sample


@pytest.fixture(scope="module")
def model():
    # float32: these tests compare tilings, not precisions (see the bfloat16 test below)
    return load_model(device="cpu", precision="float32")


@pytest.fixture(scope="module")
def sample():
    return make_blurred_sample(0, 128)["image"]


@pytest.fixture(scope="module")
def estimate(model, sample):
    return pipeline.identify(sample, model, device="cpu", augment=False)


def _mosaic(image, shape):
    block = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = [-(-n // b) for n, b in zip(shape, block.shape, strict=True)]
    return np.ascontiguousarray(np.tile(block, reps)[: shape[0], : shape[1]])


def _relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b - b.mean()))


def test_tiled_matches_untiled_just_above_the_tile_size(model, sample, estimate):
    image = _mosaic(sample, (202, 190))  # tiles of 160 px: a 2×2 grid
    whole = pipeline.deblur(image, estimate, model, device="cpu", tile_px=256)
    steps = []
    gen = pipeline.iter_deblur(image, estimate, model, device="cpu", tile_px=160)
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            tiled = stop.value
            break
    # preparing (no total yet), then the tiles count from the start of the first one
    assert steps[0].total == 0 and steps[0].message.startswith("preparing the image")
    counted = steps[1:]
    assert [p.done for p in counted] == [0, 1, 2, 3, 4] and {p.total for p in counted} == {4}
    assert counted[0].message == "deblurring tile 1 of 4"
    assert tiled.shape == image.shape and tiled.dtype == np.float32
    assert np.isfinite(tiled).all()
    assert _relative_error(tiled, whole) < 0.01


def test_deblur_into_memmaps_streams_bands(tmp_path, model, sample, estimate):
    image = (_mosaic(sample, (210, 200)) * 1000 + 100).astype(np.uint16)
    path = io.write_image(tmp_path / "in.tif", image)
    source = io.read_image(path, mmap=True).data
    assert isinstance(source, np.memmap)

    class Recorder:  # an output that records the row blocks written to it
        def __init__(self, shape):
            self.array, self.shape, self.dtype = np.zeros(shape, np.float32), shape, np.float32
            self.rows = []

        def __setitem__(self, key, value):
            self.rows.append(value.shape[0])
            self.array[key] = value

    out = Recorder(image.shape)
    pipeline.run(pipeline.iter_deblur_into(source, out, estimate, model, device="cpu", tile_px=128))
    # band by band: rows are written as soon as no later tile touches them (tiles start on
    # the network's stride, so the last one may be up to 3 px longer than tile_px)
    assert sum(out.rows) == image.shape[0] and len(out.rows) == 3 and max(out.rows) < 128 + 4
    expected = pipeline.deblur(image, estimate, model, device="cpu", tile_px=128)
    np.testing.assert_allclose(out.array, expected, atol=1e-5 * float(np.abs(expected).max()))
    # an integer output is rounded and clipped
    as_uint = np.zeros(image.shape, np.uint16)
    pipeline.run(pipeline.iter_deblur_into(source, as_uint, estimate, model, device="cpu"))
    assert as_uint.dtype == np.uint16 and as_uint.max() > 0


def test_dask_map_overlap_matches_deblur(model, sample, estimate):
    da = pytest.importorskip("dask.array")
    image = _mosaic(sample, (240, 232))
    lazy = pipeline.deblur_dask(
        da.from_array(image, chunks=128), estimate, model, chunk_px=128, device="cpu"
    )
    assert lazy.shape == image.shape and lazy.dtype == np.float32 and lazy.numblocks == (2, 2)
    result = lazy.compute(scheduler="synchronous")
    expected = pipeline.deblur(image, estimate, model, device="cpu")
    assert _relative_error(result, expected) < 0.01


def test_stack_plane_by_plane_with_shared_estimate(model, sample, estimate):
    stack = np.stack([sample, 2 * sample + 5, sample[::-1]])
    steps = []
    gen = pipeline.iter_deblur_stack(stack, estimate, model, device="cpu")
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            out = stop.value
            break
    assert out.shape == stack.shape and out.dtype == np.float32
    assert [p.done for p in steps if p.message.startswith("deblurred")] == [1, 2, 3]
    assert all(p.total == 3 for p in steps)
    for k in range(3):
        np.testing.assert_allclose(
            out[k], pipeline.deblur(stack[k], estimate, model, device="cpu"), rtol=0, atol=1e-5
        )


def test_stack_is_cancelled_by_stopping_iteration(model, sample, estimate):
    stack = np.stack([sample] * 3)
    out = np.full(stack.shape, -1.0, np.float32)
    gen = pipeline.iter_deblur_stack(stack, estimate, model, out=out, device="cpu")
    for p in gen:
        if p.message.startswith("deblurred"):
            break
    gen.close()
    assert (out[0] != -1).all() and (out[1:] == -1).all()


def test_identify_stack_modes(model, sample):
    dim = np.full_like(sample, 3.0) + 0.01 * sample  # almost no contrast
    stack = np.stack([dim, sample, dim])
    assert pipeline.representative_plane(stack) == (1,)
    shared = pipeline.run(pipeline.iter_identify_stack(stack, model, device="cpu", augment=False))
    direct = pipeline.identify(sample, model, device="cpu", augment=False)
    np.testing.assert_allclose(shared.coefficients, direct.coefficients, atol=1e-6)
    chosen = pipeline.run(
        pipeline.iter_identify_stack(stack[None], model, plane=(0, 1), augment=False)
    )
    np.testing.assert_allclose(chosen.coefficients, direct.coefficients, atol=1e-6)
    per_plane = pipeline.run(
        pipeline.iter_identify_stack(
            np.stack([sample, sample[::-1]]), model, mode="per-plane", augment=False
        )
    )
    assert isinstance(per_plane, list) and len(per_plane) == 2
    median = pipeline.run(
        pipeline.iter_identify_stack(np.stack([sample] * 3), model, mode="median", augment=False)
    )
    assert isinstance(median, pipeline.BlurEstimate) and median.psf.shape == (31, 31)
    np.testing.assert_allclose(median.coefficients, direct.coefficients, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        pipeline.run(pipeline.iter_identify_stack(stack, model, mode="best"))


def test_identify_progress_counts_tiles_of_one_image_and_planes_of_a_stack(model, sample):
    """A progress bar that moves: an image's tiles are the steps, a stack's planes are."""
    image = np.tile(sample, (2, 2))  # 256² in 4 tiles of 128 px
    steps = list(pipeline.iter_identify_stack(image, model, tile_px=128, augment=False))
    assert steps[0].total == 0 and "preparing the image" in steps[0].message
    assert {p.total for p in steps[1:]} == {4} and steps[-1].done == 4
    assert [p.done for p in steps] == sorted(p.done for p in steps)
    stack = np.stack([sample, sample[::-1], sample.T])
    steps = list(pipeline.iter_identify_stack(stack, model, mode="median", augment=False))
    assert {p.total for p in steps} == {3} and [p.done for p in steps][-1] == 3
    assert "identifying plane 1 of 3" in steps[0].message  # it said "plane (0,)"


def test_constant_planes_of_a_stack_are_copied_and_left_out_of_the_estimate(model, sample):
    blank = np.full_like(sample, 7.0)  # e.g. an empty time point
    stack = np.stack([sample, blank, sample[::-1]])
    with pytest.warns(RuntimeWarning, match=r"1 constant plane\(s\) left out.*\(1,\)"):
        per_plane = pipeline.run(
            pipeline.iter_identify_stack(stack, model, mode="per-plane", augment=False)
        )
    median_of_two = pipeline.combine_estimates([per_plane[0], per_plane[2]], model)
    np.testing.assert_allclose(per_plane[1].coefficients, median_of_two.coefficients)
    with pytest.warns(RuntimeWarning, match="left out"):
        median = pipeline.run(
            pipeline.iter_identify_stack(stack, model, mode="median", augment=False)
        )
    np.testing.assert_allclose(median.coefficients, median_of_two.coefficients, atol=1e-6)
    with pytest.warns(RuntimeWarning, match=r"plane 2 of 3 is constant"):
        out = pipeline.run(pipeline.iter_deblur_stack(stack, per_plane, model, device="cpu"))
    np.testing.assert_array_equal(out[1], blank)
    expected = pipeline.deblur(stack[2], per_plane[2], model, device="cpu")
    np.testing.assert_allclose(out[2], expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="every plane identified .* is constant"):
        pipeline.run(pipeline.iter_identify_stack(np.stack([blank] * 2), model, mode="median"))
    with pytest.raises(ValueError, match="constant"):  # the plane asked for
        pipeline.run(pipeline.iter_identify_stack(stack, model, plane=1))
    with pytest.raises(ValueError, match="constant"):  # a 2D image: nothing to return
        pipeline.run(pipeline.iter_deblur_stack(blank, per_plane[0], model, device="cpu"))


def test_nan_pixels_anywhere_are_refused_before_any_work(model, sample, estimate):
    stack = np.stack([sample, sample, sample]).astype(np.float32)
    stack[2, -1, -1] = np.inf
    stack[1, :2, 0] = np.nan
    work = pipeline.iter_deblur_stack(stack, estimate, model, device="cpu")
    with pytest.raises(
        ValueError, match=r"3 NaN or infinite pixels in 2 plane\(s\) \(\(1,\): 2, \(2,\): 1\)"
    ):
        next(work)  # before the first plane's progress: nothing was deblurred
    big = np.tile(sample.astype(np.float32), (3, 3))
    big[-1, -1] = np.nan  # in the last tile
    work = pipeline.iter_deblur_into(big, np.zeros_like(big), estimate, model, tile_px=256)
    with pytest.raises(ValueError, match=r"1 NaN or infinite pixels; replace them"):
        next(work)
    pipeline.check_finite(np.zeros((2, 8, 8), np.uint16))  # integers cannot hold NaN


def test_plane_index_and_bad_stacks():
    assert pipeline.plane_index((2, 3, 64, 64), 4) == (1, 1)
    assert pipeline.plane_index((2, 3, 64, 64), (1, 2)) == (1, 2)
    assert pipeline.plane_indices((64, 64)) == [()]
    with pytest.raises(ValueError, match="out of range"):
        pipeline.plane_index((3, 64, 64), 3)
    with pytest.raises(ValueError, match="RGB"):
        pipeline.run(pipeline.iter_identify_stack(np.zeros((64, 64, 3), np.float32)))


class _FakeGpu:
    """A GPU's memory, on a CPU-only machine. The modules given to :meth:`hold` allocate
    activations the size of their input while they run (a real tensor: when they raise, the
    error's traceback keeps it alive, as a real GPU's caching allocator keeps a failed
    forward's tensors) and raise CUDA's out-of-memory error, from inside the network as a
    real one does, when the live activations exceed ``budget_px``. With ``cpu_fallback`` the
    pipeline is told the model is not on the CPU, so that its CPU fallback applies; after
    it, the budget is unlimited (the CPU's memory)."""

    def __init__(self, monkeypatch, budget_px: int, cpu_fallback: bool = False):
        self.monkeypatch, self.budget_px = monkeypatch, budget_px
        self.live_px = self.fallbacks = 0
        if cpu_fallback:
            monkeypatch.setattr(devices, "can_fall_back_to_cpu", self._can_fall_back)

    def _can_fall_back(self, device) -> bool:
        if self.budget_px is None:  # already fallen back: this is the CPU
            return False
        self.budget_px, self.fallbacks = None, self.fallbacks + 1
        return True

    def _free(self, pixels: int) -> None:
        self.live_px -= pixels

    def hold(self, module) -> None:
        original = module.forward

        def forward(x, *args, **kwargs):
            activations = torch.empty(x.numel(), dtype=torch.uint8)
            self.live_px += x.numel()
            weakref.finalize(activations, self._free, x.numel())
            if self.budget_px is not None and self.live_px > self.budget_px:
                mib = x.numel() * 4 / 2**20
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {mib:.2f} MiB (simulated)"
                )
            return original(x, *args, **kwargs)

        self.monkeypatch.setattr(module, "forward", forward)


def test_out_of_memory_in_the_deblurring_network_retries_in_smaller_tiles(
    model, sample, estimate, monkeypatch
):
    """Raised where a real one comes from (a denoiser, inside the network), with the failed
    attempt's memory held until its error is let go: smaller tiles, for plain, stack and
    dask deblurring, and the same result (to blending)."""
    image = _mosaic(sample, (300, 300))
    expected = pipeline.deblur(image, estimate, model, device="cpu", tile_px=256)
    _FakeGpu(monkeypatch, budget_px=270 * 270).hold(model.deblurring.prox[0])
    with pytest.warns(RuntimeWarning, match="retrying with 256 px tiles"):
        plain = pipeline.deblur(image, estimate, model, device="cpu", tile_px=512)
    assert _relative_error(plain, expected) < 0.01
    with pytest.warns(RuntimeWarning, match="retrying with 256 px tiles"):
        stack = pipeline.run(pipeline.iter_deblur_stack(
            np.stack([image, image]), estimate, model, device="cpu", tile_px=512))  # fmt: skip
    assert _relative_error(stack[1], expected) < 0.01
    with pytest.warns(RuntimeWarning, match="retrying with 256 px tiles"):
        lazy = pipeline.deblur_dask(
            dask.array.from_array(image, chunks=300), estimate, model, device="cpu",
            tile_px=512,
        ).compute(scheduler="synchronous")  # fmt: skip
    assert _relative_error(lazy, expected) < 0.01
    _FakeGpu(monkeypatch, budget_px=0).hold(model.deblurring.prox[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(torch.cuda.OutOfMemoryError):  # on the CPU: nowhere to go
            pipeline.deblur(image, estimate, model, device="cpu", tile_px=128)


def test_out_of_memory_in_the_networks_goes_on_on_the_cpu(model, sample, estimate, monkeypatch):
    """When even the smallest tile or one window does not fit, the work goes on on the
    model's CPU copy, with a warning, and the result is the same."""
    image = _mosaic(sample, (300, 300))
    expected = pipeline.deblur(image, estimate, model, device="cpu", tile_px=256)
    gpu = _FakeGpu(monkeypatch, budget_px=0, cpu_fallback=True)
    gpu.hold(model.deblurring.prox[0])
    with pytest.warns(RuntimeWarning, match="even with 256 px tiles: continuing on the CPU"):
        restored = pipeline.deblur(image, estimate, model, device="cpu", tile_px=512)
    np.testing.assert_allclose(restored, expected, rtol=0, atol=1e-4 * np.ptp(expected))
    assert gpu.fallbacks == 1  # the later tiles went on with the CPU copy

    expected_estimate = pipeline.identify(image, model, device="cpu", tile_px=160)
    gpu = _FakeGpu(monkeypatch, budget_px=0, cpu_fallback=True)
    gpu.hold(model.identification)
    with pytest.warns(RuntimeWarning) as caught:
        found = pipeline.identify(image, model, device="cpu", tile_px=160)  # 2×2 tiles
    messages = [str(w.message) for w in caught]
    assert any("retrying 1 windows at a time" in m for m in messages)
    assert any("identifying: continuing on the CPU" in m for m in messages)
    np.testing.assert_allclose(found.coefficients, expected_estimate.coefficients, atol=1e-5)
    _FakeGpu(monkeypatch, budget_px=0, cpu_fallback=True).hold(model.identification)
    with pytest.warns(RuntimeWarning, match="identifying: continuing on the CPU"):
        planes = pipeline.run(
            pipeline.iter_identify_stack(
                np.stack([image, image]), model, mode="per-plane", device="cpu", tile_px=160
            )
        )
    np.testing.assert_allclose(planes[0].coefficients, expected_estimate.coefficients, atol=1e-5)


def test_out_of_memory_while_identifying_a_field_goes_on_on_the_cpu(tiny_field_model, monkeypatch):
    image = make_blurred_sample(1, 192)["image"]
    expected = pipeline.identify(image, tiny_field_model, device="cpu")
    _FakeGpu(monkeypatch, budget_px=0, cpu_fallback=True).hold(tiny_field_model.identification)
    with pytest.warns(RuntimeWarning, match="identifying: continuing on the CPU"):
        found = pipeline.identify(image, tiny_field_model, device="cpu")
    np.testing.assert_allclose(found.coefficients, expected.coefficients, atol=1e-5)


def test_device_helpers():
    assert devices.resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert devices.resolve_device("cpu").type == "cpu"
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert devices.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not devices.is_out_of_memory(ValueError("out of range"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1' was asked for but no CUDA"):
            devices.resolve_device("cuda:1")


def test_a_gpu_index_beyond_the_machines_gpus_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"'cuda:2' .* has 2 CUDA GPU\(s\): use cuda:0 … cuda:1"):
        devices.resolve_device("cuda:2")


def test_precision_helpers():
    cpu = torch.device("cpu")
    assert devices.resolve_precision(cpu, "float32") == "float32"
    native = devices.native_bfloat16(cpu)
    assert devices.resolve_precision(cpu, "auto") == ("bfloat16" if native else "float32")
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.resolve_precision(cpu, "float16")
    with pytest.raises(ValueError, match="CPU or CUDA"):
        devices.resolve_precision(torch.device("mps"), "bfloat16")
    if devices.bfloat16_available(cpu):
        with devices.inference_autocast(cpu, "bfloat16"):
            assert torch.is_autocast_enabled("cpu")
    else:  # an AVX2-only CPU: asking is a clear error, not a crash mid-run
        with pytest.raises(devices.PrecisionError, match="bfloat16 is not available"):
            devices.inference_autocast(cpu, "bfloat16")
    with devices.inference_autocast(cpu, "float32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(
    not devices.bfloat16_available(torch.device("cpu")),
    reason=str(devices.bfloat16_missing(torch.device("cpu"))),
)
def test_bfloat16_networks_agree_with_float32(model, sample):
    """The same image through both precisions: the same PSF (within 30 dB) and restoration
    (within 2 %), float32 results either way."""
    results = {}
    for precision in ("float32", "bfloat16"):
        at = model.with_precision(precision)
        estimate = pipeline.identify(sample, at, device="cpu", augment=False)
        results[precision] = estimate, pipeline.deblur(sample, estimate, at, device="cpu")
    (e32, r32), (e16, r16) = results["float32"], results["bfloat16"]
    assert e16.coefficients.dtype == np.float32 and r16.dtype == np.float32
    assert psf_snr_db(e16.psf, e32.psf) > 30
    assert _relative_error(r16, r32) < 0.02
    assert model.precision == "float32"  # the fixture's model is not changed by either


def test_bfloat16_on_a_cpu_without_it_is_a_sentence(model, sample, monkeypatch):
    """On a CPU without bfloat16 convolutions (AVX2 only: faked here on every CPU), asking
    for bfloat16 is one clear error before any work; "auto" runs in float32."""
    monkeypatch.setattr(devices, "_cpu_bfloat16_convolutions", lambda: False)
    cpu = torch.device("cpu")
    assert not devices.native_bfloat16(cpu)
    assert devices.resolve_precision(cpu, "auto") == "float32"
    for ask in (lambda: load_model(device="cpu", precision="bfloat16"),
                lambda: model.with_precision("bfloat16")):  # fmt: skip
        with pytest.raises(
            devices.PrecisionError,
            match=r"bfloat16 is not available: this CPU"
            r" \(.*\) lacks the AVX-512 .* use precision 'auto' or 'float32'",
        ):
            ask()
    auto = load_model(device="cpu", precision="auto")
    with auto.inference():
        assert not torch.is_autocast_enabled("cpu")
    assert pipeline.identify(sample, auto, device="cpu", augment=False).coefficients.shape == (7,)
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model(device="cpu", precision="half")


def test_zarr_in_and_out_match_deblur(model, sample, estimate, tmp_path):
    """A chunked zarr array on disk is read tile by tile and written band by band."""
    zarr = pytest.importorskip("zarr")
    image = (1000 + 4000 * _mosaic(sample, (200, 216))).astype(np.float32)  # camera counts
    source = zarr.create_array(tmp_path / "in.zarr", shape=image.shape, chunks=(64, 64), dtype="f4")
    source[:] = image
    out = zarr.create_array(tmp_path / "out.zarr", shape=image.shape, chunks=(64, 64), dtype="u2")
    pipeline.run(pipeline.iter_deblur_into(source, out, estimate, model, device="cpu", tile_px=128))
    expected = pipeline.deblur(image, estimate, model, device="cpu", tile_px=128)
    expected = np.clip(np.rint(expected), 0, 65535).astype(np.uint16)
    assert expected.max() > 1000
    assert np.abs(out[:].astype(np.int32) - expected.astype(np.int32)).max() <= 1
