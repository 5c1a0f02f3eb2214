"""Micro-benchmarks of the building blocks (not timed tests; run with ``deepblur bench``)."""

from __future__ import annotations

import time

import torch

from ..devices import device_name, resolve_device, synchronize
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
    ``batch``, ``size``, ``fc``, ``seconds`` (measured), ``batches``, ``device``,
    ``device_name``, ``torch_threads``, ``torch_version``.
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
        "device": str(dev),
        "device_name": device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
