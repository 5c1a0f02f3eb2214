"""Files in, files out: :func:`iter_deblur_file` (what ``deepblur deblur`` runs) and the dask
batch (:func:`iter_batch`, ``deepblur batch``).

Both go through :func:`pipeline.iter_identify_stack` / :func:`pipeline.iter_deblur_stack`
(one way through). Images are read memory-mapped and written into a memory-mapped temporary
TIFF that is renamed when complete (:func:`io.create_image`), so memory stays bounded for
large images, an interrupted run leaves no TIFF that looks finished, and a batch re-run skips
the files whose output exists.

The batch runs on ``dask.distributed``: a ``LocalCluster`` by default, or any scheduler
address (``tcp://host:8786``). One task per file; no home-made job queue.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import formats, notices
from .devices import resolve_precision
from .omezarr import is_unfinished, is_zarr
from .optics import Microscope
from .outputs import (
    OutputBusyError,
    OutputExistsError,
    check_free_space,
    check_new,
    claim_output,
)
from .pipeline import DEFAULT_TILE_PX, BlurEstimate, Progress, Sampling

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class DeblurOptions:
    """How to deblur each file (picklable: shipped to dask workers).

    ``optics``: the optics given (pipeline keywords: ``fc`` or ``pixel_size_nm``, ``na``,
    ``wavelength_nm``, ``refractive_index``; None values are ignored), completed from each
    file's pixel size and metadata into its sampling by :func:`image_sampling`.
    ``estimate``: a shared estimate (one, or one per plane) instead of identifying each
    file. ``mode``/``plane``: how stacks are identified (see
    :func:`pipeline.iter_identify_stack`). ``dtype``: "float32" or "input" (the input's
    dtype, rounded and clipped). ``torch_threads``: set in the worker before running.
    """

    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    estimate: BlurEstimate | list[BlurEstimate] | None = None
    mode: str = "plane"
    plane: int | tuple[int, ...] | None = None
    noise: float | dict | None = None
    strength: float = 1.0
    optics: dict = field(default_factory=dict)
    dtype: str = "float32"
    tile_px: int = DEFAULT_TILE_PX
    overwrite: bool = False
    estimate_json: bool = True
    torch_threads: int | None = None


def check_options(options: DeblurOptions) -> None:
    """ValueError for options that no file can make valid (tile size, strength, noise, an
    explicit fc), so that a batch refuses them once instead of failing every file."""
    from . import pipeline
    from .optics.microscope import check_fc

    pipeline.check_tile_px(options.tile_px)
    pipeline.check_noise_and_strength(options.noise, options.strength)
    if options.optics.get("fc") is not None:
        check_fc(options.optics["fc"])


def image_sampling(
    image, optics: dict | None = None, channel: int | None = None
) -> tuple[Sampling, str]:
    """The :class:`~napari_deepblur.pipeline.Sampling` of an
    :class:`~napari_deepblur.io.ImageData`, and where it came from (a short text): the one
    place a file's sampling is resolved.

    ``fc`` given wins. Otherwise NA, wavelength and pixel size come from ``optics`` (the
    pipeline's keywords; None values are ignored) where given, else from the file (its pixel
    size; NA, wavelength and refractive index from the optics our TIFFs carry in their
    metadata, or the objective's NA and the emission wavelength an OME-TIFF states: read as
    :func:`~napari_deepblur.formats.known_optics` reads them for napari). Partial optics
    that cannot be completed are an error; nothing at all means "sampled like the model" (an
    unknown sampling). ``channel``: the sampling of that channel, at its own emission
    wavelength where the file states one per channel.
    """
    optics = {k: v for k, v in (optics or {}).items() if v is not None}
    explicit = any(k in optics for k in ("pixel_size_nm", "na", "wavelength_nm"))
    if "fc" in optics:
        if explicit:
            raise ValueError("give either --fc or the optics (NA, wavelength, pixel size)")
        return Sampling.of(fc=optics["fc"]), f"fc {optics['fc']} cycles/pixel (given)"
    stored = formats.known_optics(image.metadata, channel=channel).known()
    for key, value in ((image.metadata or {}).get("optics") or {}).items():
        if key in ("na", "wavelength_nm") and value is not None:
            stored.setdefault(key, value)  # not positive: the checks below say so
    if explicit or ("na" in stored and "wavelength_nm" in stored):

        def first(*values):  # the first value given (0 included: the optics then say it is wrong)
            return next((v for v in values if v is not None), None)

        merged = {
            "pixel_size_nm": first(
                optics.get("pixel_size_nm"), image.pixel_size_nm, stored.get("pixel_size_nm")
            ),
            "na": first(optics.get("na"), stored.get("na")),
            "wavelength_nm": first(optics.get("wavelength_nm"), stored.get("wavelength_nm")),
        }
        missing = [k for k, v in merged.items() if v is None]
        if missing:
            flags = ", ".join("--" + k.replace("_", "-") for k in missing)
            raise ValueError(
                f"incomplete optics: {flags} missing (the file has no value for them); "
                "give NA, wavelength and pixel size together, or --fc"
            )
        index = first(optics.get("refractive_index"), stored.get("refractive_index"))
        sampling = Sampling.of(**merged, refractive_index=index)
        immersion = Microscope.from_dict(sampling.optics).immersion
        source = "given" if explicit else "from the file"
        text = (
            f"NA {merged['na']}, {merged['wavelength_nm']} nm, "
            f"{merged['pixel_size_nm']:.4g} nm pixels, {immersion} immersion ({source})"
        )
        return sampling, text
    if image.pixel_size_nm:
        return Sampling(), (
            f"assumed sampled like the model (the file gives {image.pixel_size_nm:.4g} nm pixels "
            "but no NA or wavelength: give --na and --wavelength-nm to use them)"
        )
    return Sampling(), "assumed sampled like the model (no optics given or stored in the file)"


def stack_sampling(image, optics: dict | None = None, mode: str | None = None):
    """:func:`image_sampling` for a stack: a :class:`~napari_deepblur.pipeline.Sampling`
    shared by its planes, or, for channels that state their own emission wavelengths (an
    OME-TIFF) when no wavelength or ``fc`` is given, a function giving each plane (its index
    over the leading axes) the sampling of its channel; and a short text. Identified plane
    by plane (``mode`` ``"per-plane"``) over channels taken with one wavelength, it warns
    that they are."""
    sampling, text = image_sampling(image, optics)
    axes, shape = image.axes or "", tuple(image.data.shape)
    channels = shape[axes.index("C")] if "C" in axes and len(axes) == len(shape) else 1
    if channels == 1:
        return sampling, text
    given = {k for k, v in (optics or {}).items() if v is not None}
    wavelengths = formats.channel_wavelengths_nm(image.metadata)
    stated = len(wavelengths) == channels and all(wavelengths)
    if stated and sampling.known and not given & {"wavelength_nm", "fc"}:
        per_channel = [image_sampling(image, optics, channel=c)[0] for c in range(channels)]
        if len({s.fc for s in per_channel}) > 1:
            axis = axes.index("C")
            listed = ", ".join(f"{w:g}" for w in wavelengths)
            return (
                lambda index: per_channel[index[axis]],
                f"{text}; each channel at its own emission wavelength instead ({listed} nm)",
            )
        return sampling, text  # the channels state one wavelength
    if mode == "per-plane":
        notices.warn(
            f"each of the {channels} channels gets its own estimate, but all are taken as "
            "imaged with the same optics (one emission wavelength); a channel imaged at "
            "another wavelength gets a PSF of the wrong width. Give each channel's "
            "wavelength in the file (OME Channel EmissionWavelength), or save each channel "
            "as its own file with its --wavelength-nm",
            RuntimeWarning,
        )
    return sampling, text


def check_image_axes(image, path, mode: str | None = None) -> None:
    """Refuse RGB and other sample-interleaved images with a message that says what to do;
    and, when ``mode`` (how a stack is identified) shares one estimate over the planes, a
    stack whose planes are channels (imaged at different wavelengths)."""
    axes = image.axes or ""
    channels = (
        image.data.shape[axes.index("C")] if "C" in axes and len(axes) == image.data.ndim else 1
    )
    if mode in ("plane", "median") and channels > 1:
        raise ValueError(
            f"{path} has {channels} channels (axes {axes}): one estimate for all its planes "
            "would mix channels imaged at different wavelengths. Save each channel as its own "
            "file and give its emission wavelength (--wavelength-nm), or identify every plane "
            "on its own, all with the same optics (identify --all-planes; deblur and batch "
            "--per-plane)"
        )
    if "S" in axes or (image.data.ndim == 3 and image.data.shape[-1] in (3, 4)):
        raise ValueError(
            f"{path} is an RGB(A) image (axes {axes or '?'}, shape {tuple(image.data.shape)}); "
            "Deep-Blur needs one fluorescence channel per plane: save the channels as a "
            "grayscale stack (C, Y, X)"
        )
    if image.data.ndim < 2 or min(image.data.shape[-2:]) < 16:
        raise ValueError(
            f"{path} has shape {tuple(image.data.shape)}: expected planes (…, Y, X) of at "
            "least 16×16 px"
        )


def _unfinished(sidecar: Path, input_path: Path) -> bool:
    """Whether ``sidecar`` is the estimate of an unfinished run on ``input_path`` (written
    before the TIFF, whose rename marks the file finished: a run killed in between, or a
    deleted output to redo), which a new run may replace."""
    written_for = formats.output_estimate_input(sidecar)
    return written_for is not None and Path(written_for).resolve() == input_path.resolve()


def estimate_missing(input_path, output_path) -> bool:
    """Whether ``output_path`` is a finished output of ``input_path`` (by its metadata)
    whose estimate ``<output stem>.json`` is gone: a batch redoes it (the estimate is
    written first, so only a deletion loses it)."""
    from . import io

    output_path = Path(output_path)
    if not output_path.is_file() or output_path.with_suffix(".json").exists():
        return False
    try:
        _, metadata = io.read_header(output_path)
    except ValueError:
        return False
    return metadata.get("deblurred_from") == Path(input_path).name


def iter_deblur_file(
    input_path, output_path, options: DeblurOptions | None = None
) -> Generator[Progress, None, dict]:
    """Identify (unless ``options.estimate``) and deblur one TIFF (2D or a stack) into
    ``output_path``, plane by plane and tile by tile, yielding :class:`Progress`.

    With ``options.estimate_json`` the estimate is written beside the output as
    ``<output stem>.json`` (before the TIFF, whose rename marks the file finished); an
    output whose estimate is missing (:func:`estimate_missing`) is then redone. The output
    is claimed for the whole run (:func:`~napari_deepblur.outputs.claim_output`: another
    run writing it is an :class:`~napari_deepblur.outputs.OutputBusyError`; the temporary
    files a killed run left are removed). Returns ``{"input", "output", "seconds",
    "shape", "estimate"}``.
    """
    options = options or DeblurOptions()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"the output must be a .tif or .tiff file: {output_path}")
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"the output would replace the input {input_path}; choose another path")
    if not output_path.parent.is_dir():
        raise FileNotFoundError(f"the output folder {output_path.parent} does not exist")
    sidecar = output_path.with_suffix(".json") if options.estimate_json else None
    if sidecar is not None and sidecar.resolve() == input_path.resolve():
        raise ValueError(f"the estimate {sidecar} would replace the input; choose another path")
    with claim_output(output_path, also=[sidecar] if sidecar is not None else []):
        return (yield from _deblur_claimed(input_path, output_path, sidecar, options))


def _deblur_claimed(input_path: Path, output_path: Path, sidecar: Path | None, options):
    """:func:`iter_deblur_file` once the output is claimed."""
    from . import io, pipeline
    from .models import load_model

    start = time.perf_counter()
    redo = sidecar is not None and estimate_missing(input_path, output_path)
    overwrite = options.overwrite or redo
    check_new(output_path, overwrite)
    if sidecar is not None:
        check_new(sidecar, options.overwrite or _unfinished(sidecar, input_path))
    check_options(options)
    if options.torch_threads:
        import torch

        torch.set_num_threads(options.torch_threads)
    image = io.read_image(input_path, mmap=True)
    check_image_axes(image, input_path, None if options.estimate is not None else options.mode)
    data = image.data
    dtype = np.float32 if options.dtype == "float32" else data.dtype
    check_free_space(output_path, int(np.prod(data.shape)) * np.dtype(dtype).itemsize)
    sampling, _ = stack_sampling(
        image, options.optics, None if options.estimate is not None else options.mode
    )
    model = load_model(options.model, device=options.device, precision=options.precision)
    estimate = options.estimate
    prepared: dict = {}  # the planes identify prepares, deblurred without preparing them again
    if estimate is None:
        estimate = yield from pipeline.iter_identify_stack(
            data,
            model,
            mode=options.mode,
            plane=options.plane,
            device=options.device,
            sampling=sampling,
            tile_px=options.tile_px,
            prepared=prepared,
        )
    summary = formats.estimate_json(estimate)
    if sidecar is not None:
        formats.write_output_estimate(sidecar, estimate, input_path)
    axes = image.axes if image.axes and len(image.axes) == data.ndim else None
    metadata = {
        "deblurred_from": input_path.name,
        "model": model.name,
        "precision": resolve_precision(model.device, model.precision),  # of the networks
        "strength": options.strength,
        "estimate": summary,
        **formats.kept_channel_metadata(image.metadata),
    }
    try:
        with io.create_image(
            output_path,
            data.shape,
            dtype,
            pixel_size_nm=image.pixel_size_nm,
            metadata=metadata,
            overwrite=overwrite,
            axes=axes,
            stack_steps=image.stack_steps,
        ) as out:
            yield from pipeline.iter_deblur_stack(
                data,
                estimate,
                model,
                out=out,
                noise=options.noise,
                strength=options.strength,
                device=options.device,
                tile_px=options.tile_px,
                sampling=sampling,
                prepared=prepared,
            )
    except BaseException:
        if sidecar is not None:  # no estimate left behind for an output that was not written
            sidecar.unlink(missing_ok=True)
        raise
    return {
        "input": str(input_path),
        "output": str(output_path),
        "seconds": time.perf_counter() - start,
        "shape": list(data.shape),
        "estimate": summary,
    }


def deblur_file(input_path, output_path, options: DeblurOptions | None = None) -> dict:
    """:func:`iter_deblur_file` run to the end (the dask task); the pipeline's warnings
    are returned with the result (``"warnings"``: messages) rather than raised on the worker."""
    from . import notices
    from .pipeline import run

    with notices.collect() as messages:
        result = run(iter_deblur_file(input_path, output_path, options))
    return {**result, "warnings": messages}


# -- batch -------------------------------------------------------------------------------------
def batch_jobs(inputs: Sequence, out_dir) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs: each input TIFF (folders: their ``*.tif``/``*.tiff``
    files, sorted, hidden ones such as macOS's ``._name.tif`` left out) → ``out_dir/<same
    name>.tif``, each OME-Zarr store (``*.zarr``, given or in a folder) → ``out_dir/<same
    name>.ome.zarr``; a file given twice (also through its folder) is done once. Missing inputs
    and clashing names are errors."""
    out_dir = Path(out_dir)
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and is_zarr(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if not p.name.startswith(".")
                and (
                    (p.suffix.lower() in TIFF_SUFFIXES and p.is_file())
                    or (p.suffix.lower() == ".zarr" and p.is_dir())
                )
            )
            if not found:
                raise FileNotFoundError(f"no .tif/.tiff files or .zarr stores in the folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    jobs, seen = [], {}
    once: dict[Path, Path] = {}  # each file once, as first given
    for path in files:
        once.setdefault(path.resolve(), path)
    for path in once.values():
        if is_zarr(path):
            out = out_dir / (path.name.removesuffix(".zarr").removesuffix(".ome") + ".ome.zarr")
        else:
            out = out_dir / (path.stem + ".tif")
        if out in seen:
            raise ValueError(f"{path} and {seen[out]} would both be written to {out}")
        if out.resolve() == path.resolve():
            raise ValueError(f"the output {out} would replace the input; choose another --out")
        seen[out] = path
        jobs.append((path, out))
    return jobs


@dataclass
class BatchResult:
    """What a batch did: outputs written, outputs already there (or finished meanwhile by
    another run), outputs left to another run writing them now (``busy``), failures (with
    the error message) and warnings (input, message; e.g. a constant plane copied unchanged);
    ``seconds``: wall time of the processing (cluster start excluded)."""

    done: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warned: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    scheduler: str = ""


def _prepare_worker(model, device, precision, torch_threads, dask_worker=None) -> None:
    """Run once on each dask worker before the files: threads, then the model (cached).
    Without ``torch_threads`` (a worker of someone else's cluster), its CPUs are shared
    between its task threads, each running one file (torch's default, every CPU for each,
    would oversubscribe them)."""
    import torch

    from .models import load_model

    if not torch_threads and dask_worker is not None:
        tasks = getattr(getattr(dask_worker, "state", dask_worker), "nthreads", 1) or 1
        torch_threads = max(1, (os.cpu_count() or 1) // tasks)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    load_model(model, device=device, precision=precision)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def iter_batch(
    inputs: Sequence,
    out_dir,
    options: DeblurOptions | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    client=None,
    task=None,
) -> Generator[Progress, None, BatchResult]:
    """Deblur many TIFFs on dask, one task per file, yielding :class:`Progress` per file.

    ``scheduler``: a ``dask.distributed`` scheduler address; default a ``LocalCluster`` of
    ``workers`` single-threaded workers (``processes=False``: threads in this process), each
    running torch on ``cpu_count // workers`` threads. ``client``: an existing
    ``distributed.Client`` to use instead. Outputs that exist are skipped unless
    ``options.overwrite``. A failing file is recorded in :attr:`BatchResult.failed` and the
    others go on. Stopping the iteration cancels the files not yet done (and removes their
    temporary files). ``task``: what runs each file (default :func:`deblur_file`; the
    command line gives :func:`~napari_deepblur.chunked.deblur_any`, which also writes
    OME-Zarr outputs).
    """
    options = options or DeblurOptions()
    task = task or deblur_file
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write in the output folder {out_dir} (no permission, or a read-only disk)"
        )
    check_options(options)
    jobs = batch_jobs(inputs, out_dir)
    result = BatchResult()
    todo = []
    for src, dst in jobs:
        redo = options.estimate_json and estimate_missing(src, dst)
        if dst.exists() and not options.overwrite and not redo and not is_unfinished(dst):
            result.skipped.append(str(dst))
        else:
            todo.append((src, dst))
    if not todo:
        return result

    from distributed import Client, LocalCluster, as_completed

    own = []
    try:
        if client is None:
            if scheduler:
                try:
                    client = Client(scheduler, timeout="30s")
                except (OSError, TimeoutError) as exc:
                    raise ValueError(
                        f"could not connect to the dask scheduler at {scheduler}: {exc}"
                    ) from None
            else:
                workers = workers or _default_workers()
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=processes,
                    dashboard_address=":0",  # any free port: no warning when 8787 is taken
                    silence_logs=logging.CRITICAL,  # failures are reported per file below
                    preload=["napari_deepblur._dask_worker"] if processes else [],
                )
                own.append(cluster)
                client = Client(cluster)
                if options.torch_threads is None:
                    threads = max(1, (os.cpu_count() or 1) // workers)
                    options = DeblurOptions(**{**options.__dict__, "torch_threads": threads})
            own.insert(0, client)
        # import torch and load the model on every worker now (a bad --model fails here, once)
        client.run(
            _prepare_worker, options.model, options.device, options.precision, options.torch_threads
        )
        result.workers = len(client.scheduler_info().get("workers", {}))
        result.scheduler = str(client.scheduler.address)
        out_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        batch_id = uuid.uuid4().hex[:8]  # two batches on one scheduler must not share tasks
        futures = {
            client.submit(
                task, src.absolute(), dst.absolute(), options,  # for remote workers too
                pure=False, key=f"deblur-{batch_id}-{i}-{src.name}",
            ): (src, dst)
            for i, (src, dst) in enumerate(todo)
        }  # fmt: skip
        try:
            for k, future in enumerate(as_completed(futures), 1):
                src, dst = futures[future]
                error = future.exception() if future.status == "error" else None
                if isinstance(error, OutputBusyError):
                    result.busy.append(str(dst))
                    message = f"{src.name}: being written by another run"
                elif isinstance(error, OutputExistsError) and _finished_meanwhile(
                    src, dst, options
                ):
                    result.skipped.append(str(dst))
                    message = f"{src.name}: done meanwhile by another run"
                elif error is not None:
                    result.failed.append((str(src), f"{type(error).__name__}: {error}"))
                    message = f"{src.name} failed"
                else:
                    result.done.append(future.result())
                    result.warned += [(str(src), w) for w in result.done[-1]["warnings"]]
                    message = f"{src.name} → {dst}"
                yield Progress(k, len(todo), message)
        finally:
            client.cancel(list(futures))
        result.seconds = time.perf_counter() - start
    finally:
        try:
            for thing in own:
                thing.close()
        finally:
            _remove_unfinished(todo, result)
    return result


def _finished_meanwhile(src: Path, dst: Path, options: DeblurOptions) -> bool:
    """Whether a file failed only because its output appeared after the batch started (an
    output that exists is checked before its estimate, so this names the output)."""
    return not options.overwrite and dst.exists() and not estimate_missing(src, dst)


def _remove_unfinished(todo, result: BatchResult) -> None:
    """What workers stopped mid-file (interrupt, cancel) could not clean up themselves: the
    temporary files of outputs not done, and the estimates they wrote beside them. Only
    outputs nobody is writing (:func:`~napari_deepblur.outputs.claim_output`): another
    run's are left to it."""
    finished = {Path(d["output"]).resolve() for d in result.done}
    for src, dst in todo:
        if dst.resolve() in finished:
            continue
        sidecar = dst.with_suffix(".json")
        try:
            with claim_output(dst, also=[sidecar]):  # removes the temporary files
                if not dst.exists() and _unfinished(sidecar, src):  # else not ours: kept
                    sidecar.unlink(missing_ok=True)
        except OSError:  # busy (another run writes it: its files are its own), or gone
            continue
