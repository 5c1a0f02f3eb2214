"""``deepblur bench --ome-zarr-px N``: an N × N uint16 OME-Zarr made from a tiled synthetic
scene (in a temporary folder, removed afterwards), identified from a sample of windows and
deblurred block by block into an OME-Zarr pyramid; time and peak memory, here or on a
local dask cluster of a given number of workers."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import omezarr
from ..devices import machine_info, resolve_device, resolve_precision
from .bench import PeakRSS, bench_image

#: The synthetic scene's pixel size (nm), written in the store; without NA and wavelength
#: the image is deblurred as sampled like the model.
SCENE_PIXEL_NM = 74.0


def make_scene(path, size: int, chunk_px: int = omezarr.DEFAULT_CHUNK_PX, seed: int = 0):
    """Write a ``size × size`` uint16 OME-Zarr at ``path``: the mirrored 512 px block of
    :func:`bench_image` repeated, written chunk by chunk (memory: one chunk), with its
    pyramid; returns the path."""
    block = bench_image(512, seed)
    lo, hi = np.percentile(block, [0.1, 99.9])
    block = np.clip((block - lo) / (hi - lo) * 4000 + 100, 0, 65535).astype(np.uint16)
    group = omezarr.create_output(path, (size, size), np.uint16, chunk_px, {"synthetic": True})
    base = group["0"]
    for top in range(0, size, chunk_px):
        for left in range(0, size, chunk_px):
            h, w = min(chunk_px, size - top), min(chunk_px, size - left)
            reps = (-(-(h + top % 512) // 512), -(-(w + left % 512) // 512))
            tile = np.tile(block, reps)[top % 512 :, left % 512 :][:h, :w]
            omezarr.write_region(base, (slice(top, top + h), slice(left, left + w)), tile, path)
    axes, scale = omezarr.ngff_axes("YX", None, SCENE_PIXEL_NM)
    omezarr.finish_output(path, group, axes, scale, chunk_px)
    return Path(path)


def bench_ome_zarr(
    size: int,
    *,
    chunk_px: int = omezarr.DEFAULT_CHUNK_PX,
    device: str = "auto",
    precision: str = "auto",
    model=None,
    workers: int | None = None,
    folder=None,
    progress=None,
) -> dict:
    """Make the scene (:func:`make_scene`), identify it from 3 × 3 windows
    (:func:`chunked.identify_large`) and deblur it into an OME-Zarr (uint16, pyramid
    included) with :func:`chunked.iter_deblur_zarr`, here (``workers`` None) or on a local
    dask cluster of ``workers`` processes (torch threads: CPUs // workers each). Returns
    seconds per stage and ``peak_rss_mb``, the largest resident memory of this process
    during identify + deblur (of the workers' processes too when on a cluster)."""
    from .. import pipeline
    from ..batch import DeblurOptions
    from ..chunked import identify_large, iter_deblur_zarr, read_any
    from ..models import load_model

    say = progress or (lambda message: None)
    dev = resolve_device(device)
    net = load_model(model, device=dev, precision=precision)
    tmp = Path(tempfile.mkdtemp(prefix="deepblur-bench-", dir=folder))
    client = cluster = None
    try:
        say(f"writing a {size}² uint16 OME-Zarr scene in {tmp}")
        start = time.perf_counter()
        src = make_scene(tmp / "scene.ome.zarr", size, chunk_px)
        make_s = time.perf_counter() - start
        image = read_any(src)
        sampling = pipeline.Sampling()
        if workers:
            from distributed import Client, LocalCluster

            from ..batch import _prepare_worker

            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                preload=["napari_deepblur._dask_worker"],
            )  # fmt: skip
            client = Client(cluster)
            threads = max(1, (os.cpu_count() or 1) // workers)
            client.run(_prepare_worker, str(net.path) if net.path else model, str(dev),
                       precision, threads)  # fmt: skip
        say("identifying from a sample of windows")
        with PeakRSS() as memory:
            start = time.perf_counter()
            estimate = pipeline.run(identify_large(image.data, net, sampling))
            identify_s = time.perf_counter() - start
            options = DeblurOptions(
                model=str(net.path) if net.path else model, device=str(dev),
                precision=precision, estimate=estimate, dtype="input",
            )  # fmt: skip
            say("deblurring block by block")
            start = time.perf_counter()
            result = pipeline.run(
                iter_deblur_zarr(src, tmp / "out.ome.zarr", options, chunk_px=chunk_px,
                                 client=client),
                lambda p: say(f"{p.message} ({time.perf_counter() - start:.0f} s)")
                if p.done % 16 == 0 or p.done == p.total
                else None,
            )  # fmt: skip
            deblur_s = time.perf_counter() - start
        worker_peak = 0.0
        if client is not None:
            worker_peak = max(client.run(PeakRSS.current_mb).values())
        return {
            "benchmark": "ome-zarr",
            "size_px": size,
            "chunk_px": chunk_px,
            "blocks": result["blocks"],
            "levels": result["levels"],
            "windows": len(pipeline.sample_windows((size, size), 1024)),
            "make_s": make_s,
            "identify_s": identify_s,
            "deblur_s": deblur_s,
            "blocks_per_s": result["blocks"] / deblur_s,
            "peak_rss_mb": memory.peak_mb,
            "rss_before_mb": memory.start_mb,
            "workers": workers or 0,
            "worker_rss_end_mb": worker_peak,
            "model": net.name,
            "precision": resolve_precision(dev, precision),
            **machine_info(dev),
        }
    finally:
        if client is not None:
            client.close()
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
