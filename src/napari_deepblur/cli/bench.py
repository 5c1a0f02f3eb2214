"""``deepblur bench``: the speed of identify/deblur against Richardson–Lucy (and of PSFs)."""

from __future__ import annotations

import argparse
import json
import sys

from ..outputs import check_outputs
from .common import add_precision_argument, ints


def add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="speed benchmark of identify/deblur vs Richardson–Lucy (or: bench psf)",
        description="Without TARGET: seconds for identify and deblur per image size, "
        "Richardson–Lucy with the estimated PSF on the same images and the ratio, peak "
        "memory, images/s of 'deepblur batch', and the device. Last line: the figures as JSON. "
        "'deepblur bench psf': PSF generation throughput and accuracy.",
    )
    p.add_argument(
        "--sizes",
        type=ints,
        default=[256, 512, 2048],
        help="image sizes in px, comma-separated (default 256,512,2048; add 8192 for the "
        "tiled large image)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    add_precision_argument(p)
    p.add_argument("--model", help="shipped model name or .safetensors file")
    p.add_argument(
        "--rl-iterations", type=int, default=30, help="Richardson–Lucy iterations (0: skip)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs per size, median reported (default 5)"
    )
    p.add_argument("--batch-images", type=int, default=16, help="images in the batch run (0: skip)")
    p.add_argument("--batch-size-px", type=int, default=512, help="batch image size, px")
    p.add_argument("--workers", type=int, help="batch workers (default: min(4, CPUs))")
    p.add_argument(
        "--ome-zarr-px",
        type=int,
        help="instead: an N×N uint16 OME-Zarr of a tiled synthetic scene (in a temporary "
        "folder, removed after), identified from 3×3 windows and deblurred block by block "
        "into an OME-Zarr pyramid: time and peak memory (e.g. 32768 for a gigapixel image)",
    )
    p.add_argument("--chunk-px", type=int, default=2048, help="OME-Zarr blocks/chunks, px")
    p.add_argument("--tmp-dir", help="OME-Zarr: where the temporary stores go (default: TMPDIR)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=_run_bench)
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    q = targets.add_parser(
        "psf",
        help="PSF generation throughput (31×31, batch 256) and accuracy vs a 4× finer pupil",
    )
    q.add_argument("--batch", type=int, default=256, help="PSFs per batch (default 256)")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.add_argument(
        "--seconds", type=float, default=3.0, help="timed duration in seconds (default 3)"
    )
    q.set_defaults(func=_run_bench_psf)


def _run_bench(args: argparse.Namespace) -> int:
    import datetime

    from .. import io
    from ..evaluation.bench import bench_pipeline

    if any(n < 32 for n in args.sizes):
        raise ValueError("--sizes must be at least 32 px")
    check_outputs([args.json], args.overwrite)

    def say(message):
        if not args.quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    if args.ome_zarr_px is not None:
        return _run_bench_ome_zarr(args, say)

    r = bench_pipeline(
        args.sizes,
        device=args.device,
        precision=args.precision,
        model=args.model,
        rl_iterations=args.rl_iterations,
        repeats=args.repeats,
        batch_images=args.batch_images,
        batch_size_px=args.batch_size_px,
        batch_workers=args.workers,
        progress=say,
    )
    r["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    r["command"] = "deepblur " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    where = r["device_name"] + (f"; {r['cpu_features']}" if r["device"] == "cpu" else "")
    kernels = ", fused CPU kernels" if r["fused_cpu_kernels"] else ""
    print(
        f"device: {r['device']} ({where}), {r['precision']} networks{kernels}, "
        f"{r['torch_threads']} torch threads, model {r['model']}; times: the median of "
        f"{args.repeats} runs per size (one above 4096²)"
    )
    rl = f"RL {r['rl_iterations']} it (s)"
    print(
        f"{'size':>11} {'tiles':>5} {'identify s':>10} {'deblur s':>9} {'total s':>8} "
        f"{rl:>14} {'RL/ours':>8} {'peak RSS MB':>11}"
    )
    for row in r["sizes"]:
        rl_s = row.get("rl_s")
        rl_text = "-" if rl_s is None else f"{rl_s:.2f}" + ("*" if row["rl_extrapolated"] else "")
        ratio = "-" if rl_s is None else f"{row['rl_over_deepblur']:.1f}×"
        print(
            f"{row['size_px']:>5}×{row['size_px']:<5} {row['tiles']:>5} "
            f"{row['identify_s']:>10.3f} {row['deblur_s']:>9.3f} {row['total_s']:>8.3f} "
            f"{rl_text:>14} {ratio:>8} {row['peak_rss_mb']:>11.0f}"
        )
    dtypes = sorted({row["rl_dtype"] for row in r["sizes"] if "rl_dtype" in row})
    if dtypes:
        print(f"RL: skimage.restoration.richardson_lucy in {', '.join(dtypes)}, on the CPU")
    if any(row.get("rl_extrapolated") for row in r["sizes"]):
        print("* RL timed on a central 2048² crop and scaled by the area")
    if "batch" in r:
        b = r["batch"]
        print(
            f"batch: {b['images']} images of {b['size_px']}² on {b['workers']} dask workers: "
            f"{b['images_per_s']:.2f} images/s ({b['seconds']:.1f} s, identify + deblur + write)"
        )
    if args.json:
        text = json.dumps(r, indent=2)
        io.write_text(args.json, text)
    print(json.dumps(r))
    return 0


def _run_bench_psf(args: argparse.Namespace) -> int:
    from ..evaluation.bench import bench_psf

    r = bench_psf(batch=args.batch, device=args.device, seconds=args.seconds)
    rows = [
        ("device", f"{r['device']} ({r['device_name']}), {r['torch_threads']} torch threads"),
        ("kernels", f"{r['size']}×{r['size']}, fc {r['fc']}, batch {r['batch']}"),
        ("throughput", f"{r['psf_per_second']:,.0f} PSFs/s"),
        ("max rel. L2 error", f"{r['max_relative_l2_error']:.2e} (vs 4× finer pupil grid)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps(r))
    return 0


def _run_bench_ome_zarr(args: argparse.Namespace, say) -> int:
    """``deepblur bench --ome-zarr-px N``: :func:`evaluation.bench_zarr.bench_ome_zarr`."""
    import datetime

    from .. import io
    from ..evaluation.bench_zarr import bench_ome_zarr

    if args.ome_zarr_px < 256:
        raise ValueError("--ome-zarr-px must be at least 256")
    r = bench_ome_zarr(
        args.ome_zarr_px, chunk_px=args.chunk_px, device=args.device, precision=args.precision,
        model=args.model, workers=args.workers, folder=args.tmp_dir, progress=say,
    )  # fmt: skip
    r["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    r["command"] = "deepblur " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    where = r["device_name"] + (f"; {r['cpu_features']}" if r["device"] == "cpu" else "")
    on = f"{r['workers']} dask worker(s)" if r["workers"] else "this process"
    n = r["size_px"]
    print(f"device: {r['device']} ({where}), {r['precision']} networks, model {r['model']}")
    print(
        f"OME-Zarr {n}×{n} uint16, {r['blocks']} blocks of {r['chunk_px']}² on {on}: "
        f"scene written in {r['make_s']:.1f} s; identify ({r['windows']} windows) "
        f"{r['identify_s']:.1f} s; deblur + {r['levels']}-level pyramid {r['deblur_s']:.1f} s "
        f"({r['blocks_per_s']:.3f} blocks/s); peak RSS {r['peak_rss_mb']:.0f} MB"
        + (f" here, workers {r['worker_rss_end_mb']:.0f} MB at the end" if r["workers"] else "")
    )
    if args.json:
        io.write_text(args.json, json.dumps(r, indent=2))
    print(json.dumps(r))
    return 0
