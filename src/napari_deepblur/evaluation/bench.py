"""Micro-benchmarks of the building blocks (not timed tests; run with ``deepblur bench``)."""

from __future__ import annotations

import statistics
import time

import torch

from ..devices import machine_info, resolve_device, resolve_precision, synchronize
from ..nets import fused
from ..optics.psf import default_pupil_samples, zernike_psf
from ..optics.zernike import DEFAULT_NOLL_INDICES

#: The benchmark's PSF family: 31×31 kernels at fc 0.2 cycles/pixel, Noll 4–10,
#: coefficients uniform in ±0.15 waves RMS (the training range).
BENCH_SIZE = 31
BENCH_FC = 0.2
BENCH_GAMMA_MAX = 0.15


def bench_psf(batch: int = 256, device: str = "cpu", seconds: float = 3.0, seed: int = 0) -> dict:
    """Throughput and accuracy of :func:`~napari_deepblur.optics.zernike_psf`.

    Throughput: batches of ``batch`` 31×31 PSFs (fc 0.2 cycles/pixel, Noll 4–10, γ uniform in
    ±0.15 waves RMS, float32) are generated repeatedly for about ``seconds`` seconds of wall
    time after one warm-up batch (which also builds the cached pupil tables); on CUDA the
    device is synchronised before reading the clock.

    Accuracy: one batch is compared with the same PSFs computed in float64 on a 4× finer
    pupil grid (``pupil_samples = 4 · default_pupil_samples``); the error is the maximum over
    the batch of ``‖h − h_ref‖₂ / ‖h_ref‖₂``.

    Returns a JSON-serialisable dict: ``psf_per_second``, ``max_relative_l2_error``,
    ``batch``, ``size``, ``fc``, ``seconds`` (measured), ``batches`` and where it ran
    (:func:`~napari_deepblur.devices.machine_info`).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    k = len(DEFAULT_NOLL_INDICES)
    gamma = ((torch.rand(batch, k, generator=gen) * 2 - 1) * BENCH_GAMMA_MAX).to(dev)

    def one_batch() -> torch.Tensor:
        return zernike_psf(gamma, BENCH_FC, BENCH_SIZE)

    with torch.no_grad():
        psf = one_batch()  # warm-up: caches, allocator, kernels
        synchronize(dev)
        n_batches = 0
        start = time.perf_counter()
        while True:
            one_batch()
            n_batches += 1
            synchronize(dev)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break

        fine = 4 * default_pupil_samples(BENCH_SIZE, BENCH_FC)
        ref = zernike_psf(gamma.double(), BENCH_FC, BENCH_SIZE, pupil_samples=fine)
        err = torch.linalg.vector_norm(psf.double() - ref, dim=(-2, -1))
        err = err / torch.linalg.vector_norm(ref, dim=(-2, -1))

    return {
        "benchmark": "psf",
        "psf_per_second": n_batches * batch / elapsed,
        "max_relative_l2_error": float(err.max()),
        "batch": batch,
        "size": BENCH_SIZE,
        "fc": BENCH_FC,
        "seconds": elapsed,
        "batches": n_batches,
        **machine_info(dev),
    }


# -- the pipeline speed benchmark (``deepblur bench``) -------------------------------------------
#: Image sizes (px a side) timed by default; 8192 (tiled) is opt-in: ``--sizes …,8192``.
BENCH_SIZES = (256, 512, 2048)
#: Above this many pixels Richardson–Lucy is timed on a central 2048² crop and scaled by area.
RL_MAX_PX = 4096 * 4096


class PeakRSS:
    """Context manager sampling this process's resident memory (``/proc/self/statm``) every
    ``interval_s`` in a thread: ``peak_mb`` and ``start_mb`` after the block. Falls back to
    ``resource.getrusage`` (the process's lifetime peak) where /proc is missing."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.start_mb = self.peak_mb = 0.0

    @staticmethod
    def current_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            import os

            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __enter__(self):
        import threading

        self.start_mb = self.peak_mb = self.current_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval_s):
                self.peak_mb = max(self.peak_mb, self.current_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())
        return False


def bench_image(size: int, seed: int = 0):
    """A ``size × size`` float32 test image: the synthetic sample (256 px, known blur,
    noise) mirrored into a seamless 512 px block and repeated (generating a large scene
    directly takes minutes)."""
    import numpy as np

    from ..samples import make_blurred_sample

    a = make_blurred_sample(seed, 256)["image"]
    block = np.block([[a, a[:, ::-1]], [a[::-1], a[::-1, ::-1]]])
    reps = -(-size // block.shape[0])
    return np.ascontiguousarray(np.tile(block, (reps, reps))[:size, :size], dtype=np.float32)


def _time(dev, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and its wall time in seconds (GPU work on ``dev`` included)."""
    synchronize(dev)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    synchronize(dev)
    return value, time.perf_counter() - start


def _median_time(repeats: int, dev, fn, *args, **kwargs):
    """``fn``'s last value and the median of ``repeats`` wall times (:func:`_time`)."""
    runs = [_time(dev, fn, *args, **kwargs) for _ in range(max(1, repeats))]
    return runs[-1][0], statistics.median(seconds for _, seconds in runs)


def bench_pipeline(
    sizes=BENCH_SIZES,
    *,
    device: str = "auto",
    precision: str = "auto",
    model=None,
    rl_iterations: int = 30,
    repeats: int = 5,
    batch_images: int = 16,
    batch_size_px: int = 512,
    batch_workers: int | None = None,
    seed: int = 0,
    progress=None,
) -> dict:
    """Seconds for :func:`pipeline.identify` and :func:`pipeline.deblur` per image size, the
    same image deconvolved by Richardson–Lucy (``rl_iterations``, with the estimated PSF) and
    the ratio, peak memory, and images/s of ``deepblur batch`` on a local dask cluster.

    Each size is timed ``repeats`` times after a warm-up at 256 px and the median is
    reported (once only above :data:`RL_MAX_PX` pixels); default settings: identification
    averaged over 8 flips, tiles of 1024 px, the networks at ``precision`` (recorded as
    ``precision``: "float32" or "bfloat16"). Images: :func:`bench_image`. RL:
    :func:`skimage.restoration.richardson_lucy` itself (``num_iter=rl_iterations``,
    ``clip=False``) on the same float32 image, which it deconvolves in float32 (recorded as
    ``rl_dtype``; float64 takes twice as long), on the CPU; above :data:`RL_MAX_PX` pixels it
    is timed on a central 2048² crop and scaled by the area (``rl_extrapolated``).
    ``peak_rss_mb``: the largest resident memory of this process during identify + deblur (it
    includes the model and earlier allocations that stay mapped). Batch: ``batch_images``
    TIFFs of ``batch_size_px`` px through :func:`napari_deepblur.batch.iter_batch` (identify +
    deblur + write), cluster start-up excluded. Returns a JSON-serialisable dict.
    """
    import tempfile

    import numpy as np
    from skimage.restoration import richardson_lucy

    from .. import pipeline
    from ..models import load_model

    say = progress or (lambda message: None)
    dev = resolve_device(device)
    net = load_model(model, device=dev, precision=precision)
    warm = bench_image(256, seed)
    pipeline.deblur(warm, pipeline.identify(warm, net, device=dev), net, device=dev)
    rows = []
    for size in sizes:
        image = bench_image(int(size), seed)
        say(f"{size}² identify + deblur")
        runs = repeats if image.size <= RL_MAX_PX else 1
        with PeakRSS() as memory:
            estimate, t_identify = _median_time(
                runs, dev, pipeline.identify, image, net, device=dev
            )
            _, t_deblur = _median_time(runs, dev, pipeline.deblur, image, estimate, net, device=dev)
        row = {
            "size_px": int(size),
            "tiles": max(1, len(estimate.tiles)),
            "identify_s": t_identify,
            "deblur_s": t_deblur,
            "total_s": t_identify + t_deblur,
            "repeats": runs,
            "peak_rss_mb": memory.peak_mb,
            "rss_before_mb": memory.start_mb,
        }
        if rl_iterations:
            say(f"{size}² Richardson–Lucy ({rl_iterations} iterations)")
            extrapolated = image.size > RL_MAX_PX
            crop = image
            if extrapolated:
                c = (size - 2048) // 2
                crop = image[c : c + 2048, c : c + 2048]
            crop = np.clip(crop, 0, None)  # RL needs a nonnegative image
            deconvolved, t_rl = _median_time(
                runs, dev, richardson_lucy, crop, estimate.psf, num_iter=rl_iterations, clip=False
            )
            t_rl *= image.size / crop.size
            row.update(
                rl_s=t_rl,
                rl_dtype=str(deconvolved.dtype),
                rl_extrapolated=extrapolated,
                rl_over_deepblur=t_rl / row["total_s"],
            )
        rows.append(row)
        del image
    result = {
        "benchmark": "pipeline",
        "model": net.name,
        **machine_info(dev),
        "fused_cpu_kernels": dev.type == "cpu" and fused.available(),
        "precision": resolve_precision(dev, precision),
        "rl_iterations": rl_iterations,
        "sizes": rows,
    }
    if batch_images:
        from .. import io
        from ..batch import DeblurOptions, iter_batch

        say(f"batch: {batch_images} images of {batch_size_px}² on a local dask cluster")
        with tempfile.TemporaryDirectory() as tmp:
            inputs = []
            for k in range(batch_images):
                image = bench_image(batch_size_px, seed + k)
                inputs.append(io.write_image(f"{tmp}/img{k:03d}.tif", image))
            options = DeblurOptions(
                model=str(net.path) if net.path else None, device=str(dev), precision=precision
            )
            done = pipeline.run(iter_batch(inputs, f"{tmp}/out", options, workers=batch_workers))
        if done.failed:
            raise RuntimeError(f"batch benchmark failed: {done.failed[0]}")
        result["batch"] = {
            "images": batch_images,
            "size_px": batch_size_px,
            "workers": done.workers,
            "seconds": done.seconds,
            "images_per_s": len(done.done) / done.seconds,
        }
    return result
