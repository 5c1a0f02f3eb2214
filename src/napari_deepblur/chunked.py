"""Deblur into an OME-Zarr store block by block, resumably, in this process or on a
``dask.distributed`` cluster: what ``deepblur deblur IN OUT.ome.zarr`` runs.

The plane is cut into blocks of the output's chunks (``chunk_px`` px a side, on the
network's stride); each block is read with a margin of its neighbours' pixels as deep as
the tile overlap (:func:`pipeline.block_margin`), deblurred tile by tile
(:func:`pipeline.deblur_region`) and written as whole chunks; then an empty record
``.deepblur/done/<plane>_<row>_<col>`` is written. A run that is killed leaves the store
marked unfinished with its estimate and intensity range in ``.deepblur/run.json``; the same
command run again keeps the blocks that have their record (written after their data, so a
half-written block has none), does the others with the same estimate and range, and so
gives the result of an uninterrupted run. The pyramid and the NGFF metadata are written
last (:func:`omezarr.finish_output`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Generator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import formats, io, omezarr
from .batch import DeblurOptions, check_image_axes, check_options, stack_sampling
from .outputs import OutputExistsError, check_free_space, claim_output
from .pipeline import DEFAULT_TILE_PX, Progress

_STATE = omezarr.STATE_DIR
#: Planes larger than this many pixels are identified from a sample of windows.
SAMPLED_IDENTIFY_PX = 4096 * 4096


def read_any(path) -> io.ImageData:
    """An input image, lazily: an OME-Zarr store (:func:`omezarr.read_ome_zarr`) or a TIFF
    (memory-mapped, :func:`io.read_image`)."""
    if omezarr.is_zarr(path):
        return omezarr.read_ome_zarr(path)
    return io.read_image(path, mmap=True)


def _blocks(shape, chunk_px: int) -> list[tuple[tuple[int, ...], int, int]]:
    """``(plane index, top, left)`` of every block, plane by plane, row by row."""
    h, w = shape[-2:]
    return [
        (index, top, left)
        for index in np.ndindex(*shape[:-2])
        for top in range(0, h, chunk_px)
        for left in range(0, w, chunk_px)
    ]


def _done_path(out: Path, block) -> Path:
    index, top, left = block
    name = "_".join(str(i) for i in (*index, top, left))
    return out / _STATE / "done" / name


def identify_large(
    data,
    model,
    sampling,
    *,
    plane=None,
    mode: str = "plane",
    tile_px: int = DEFAULT_TILE_PX,
    augment: bool = True,
):
    """Generator: the estimate of a (lazy) stack ``data``, read plane by plane
    (:func:`pipeline.iter_identify_stack`); planes larger than :data:`SAMPLED_IDENTIFY_PX`
    are identified from a sample of windows (:func:`pipeline.iter_identify_sampled`) on the
    chosen plane (``plane``, else the representative one), never read whole."""
    from . import pipeline

    h, w = data.shape[-2:]
    if h * w <= SAMPLED_IDENTIFY_PX:
        return (
            yield from pipeline.iter_identify_stack(
                data,
                model,
                mode=mode,
                plane=plane,
                sampling=sampling,
                tile_px=tile_px,
                augment=augment,
            )
        )
    if mode != "plane":
        raise ValueError(
            f"planes of {h}×{w} px are identified on one plane, from a sample of windows: "
            "choose the plane with --plane instead of --all-planes or --per-plane"
        )
    if data.ndim > 2:
        index = (
            pipeline.plane_index(data.shape, plane)
            if plane is not None
            else pipeline.representative_plane(data)
        )
        data = data[index]
    return (
        yield from pipeline.iter_identify_sampled(
            data, model, sampling=sampling, window_px=tile_px, augment=augment
        )
    )


def iter_deblur_zarr(
    input_path,
    output_path,
    options: DeblurOptions | None = None,
    *,
    chunk_px: int = omezarr.DEFAULT_CHUNK_PX,
    client=None,
    image: io.ImageData | None = None,
    sampling=None,
) -> Generator[Progress, None, dict]:
    """Identify (unless ``options.estimate``) and deblur ``input_path`` (OME-Zarr or TIFF)
    into the OME-Zarr store ``output_path``, block by block (``client``: a
    ``dask.distributed`` client to spread the blocks on; each worker opens the stores and
    the model file by path: they must see the same file system), yielding
    :class:`Progress`. An unfinished output of the same input is resumed; a finished one
    is refused unless ``options.overwrite``. ``image``: the input already open (a napari
    layer's array; ``input_path`` then only names it, and blocks run in this process);
    ``sampling``: the input's (or a function of the plane index), instead of
    :func:`batch.stack_sampling`'s. Returns
    ``{"input", "output", "seconds", "shape", "estimate", "blocks", "resumed", "levels"}``."""
    options = options or DeblurOptions()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"the output would replace the input {input_path}; choose another path")
    if not output_path.parent.is_dir():
        raise FileNotFoundError(f"the output folder {output_path.parent} does not exist")
    with claim_output(output_path):
        return (
            yield from _deblur_claimed(
                input_path, output_path, options, chunk_px, client, image, sampling
            )
        )


def _record(output_path: Path) -> dict | None:
    try:
        return json.loads((output_path / _STATE / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _deblur_claimed(input_path, output_path, options, chunk_px, client, image, sampling):
    from . import pipeline
    from .models import load_model

    start = time.perf_counter()
    check_options(options)
    given = image is not None
    image = image if given else read_any(input_path)
    check_image_axes(image, input_path, None if options.estimate is not None else options.mode)
    data = image.data
    record = _record(output_path) if output_path.is_dir() else None
    resumed = (
        record is not None
        and record.get("input") == (str(input_path) if given else str(input_path.resolve()))
        and not options.overwrite
    )
    if output_path.exists() and not resumed and not options.overwrite:
        raise OutputExistsError(output_path)  # before identifying
    model = load_model(options.model, device=options.device, precision=options.precision)
    if sampling is None:
        sampling, _ = stack_sampling(image, options.optics)
    sampling_of = sampling if callable(sampling) else (lambda index: sampling)
    if resumed:
        chunk_px = record["chunk_px"]
        estimate = formats.estimate_from_json(record["estimate"])
        setups = {tuple(k): pipeline.DeblurSetup(**s) for k, s in record["setups"]}
        group = omezarr._zarr().open_group(str(output_path), mode="r+")
    else:
        dtype = np.float32 if options.dtype == "float32" else data.dtype
        # the full resolution and a third more for the pyramid, before compression
        nbytes = int(np.prod(data.shape)) * np.dtype(dtype).itemsize
        check_free_space(output_path, nbytes * 4 // 3)
        estimate = options.estimate
        if estimate is None:
            if callable(sampling):  # (channels: refused before, by check_image_axes)
                raise ValueError("channels imaged at different wavelengths: give an estimate")
            estimate = yield from identify_large(
                data,
                model,
                sampling,
                plane=options.plane,
                mode=options.mode,
                tile_px=options.tile_px,
            )
        if isinstance(estimate, list):
            raise ValueError("an OME-Zarr output is deblurred with one estimate for all planes")
        planes = list(np.ndindex(*data.shape[:-2]))
        zoom = max(sampling_of(index).zoom(model.fc) for index in planes)  # the widest margin
        depth, align = pipeline.block_margin(data.shape[-2:], zoom, options.tile_px, model)
        chunk_px = _check_chunk_px(chunk_px, depth, align)
        omezarr.input_chunks_warning(data, pipeline.TILE_OVERLAP_PX, input_path)
        setups = {}
        for index in planes:
            plane = data[index] if index else data
            plane_sampling = sampling_of(index).for_deblurring(estimate)
            setups[index] = pipeline.deblur_setup(
                plane, estimate, model, plane_sampling, options.noise, options.strength
            )
        metadata = {
            "deblurred_from": input_path.name,
            "model": model.name,
            "strength": options.strength,
            "estimate": formats.estimate_json(estimate),
            **formats.kept_channel_metadata(image.metadata),
        }
        group = omezarr.create_output(
            output_path, data.shape, dtype, chunk_px, metadata, overwrite=options.overwrite
        )
        record = {
            "input": str(input_path) if given else str(input_path.resolve()),
            "chunk_px": chunk_px,
            "estimate": formats.estimate_json(estimate),
            "setups": [[list(k), asdict(s)] for k, s in setups.items()],
            "tile_px": options.tile_px,
        }
        (output_path / _STATE / "done").mkdir(parents=True)
        io.write_text(output_path / _STATE / "run.json", io.json_text(record, "the run record"))
    blocks = _blocks(data.shape, chunk_px)
    todo = [b for b in blocks if not _done_path(output_path, b).exists()]
    job = {
        "input": str(input_path),
        "output": str(output_path),
        "chunk_px": chunk_px,
        "model": _model_ref(options.model),
        "device": options.device,
        "precision": options.precision,
        "tile_px": options.tile_px,
    }
    done = len(blocks) - len(todo)
    label = f"{'resumed: ' if resumed else ''}{done} of {len(blocks)} block(s) done"
    yield Progress(done, len(blocks) + 1, label)
    for _ in _run_blocks(todo, job, estimate, setups, model, client, data):
        done += 1
        yield Progress(done, len(blocks) + 1, f"deblurred block {done} of {len(blocks)}")
    if "ome_zarr" in (image.metadata or {}):
        axes, scale = image.metadata["ome_zarr"]["axes"], image.metadata["ome_zarr"]["scale"]
        channels = image.metadata["ome_zarr"].get("channels")
    else:
        axes, scale = omezarr.ngff_axes(
            image.axes if image.axes and len(image.axes) == data.ndim else "TCZYX"[-data.ndim :],
            None,
            image.pixel_size_nm,
            image.stack_steps,
        )
        channels = None
    levels = omezarr.finish_output(output_path, group, axes, scale, chunk_px, channels)
    shutil.rmtree(output_path / _STATE, ignore_errors=True)
    yield Progress(len(blocks) + 1, len(blocks) + 1, f"wrote {len(levels)} pyramid level(s)")
    return {
        "input": str(input_path),
        "output": str(output_path),
        "seconds": time.perf_counter() - start,
        "shape": list(data.shape),
        "estimate": formats.estimate_json(estimate),
        "blocks": len(blocks),
        "resumed": resumed,
        "levels": len(levels),
    }


def _model_ref(model: str | None) -> str | None:
    """The model as workers load it: a shipped name (or None) as given, a file by its
    absolute path (the workers must see it there)."""
    if model is not None and Path(model).is_file():
        return str(Path(model).resolve())
    return model


def _check_chunk_px(chunk_px: int, depth: int, align: int) -> int:
    """``chunk_px`` rounded up to the network's stride; a ValueError below twice the
    block margin (blocks would then be mostly margin)."""
    if (
        isinstance(chunk_px, bool)
        or not isinstance(chunk_px, int | np.integer)
        or (chunk_px < 2 * depth)
    ):
        raise ValueError(
            f"the output chunks must be at least {2 * depth} px (twice the tile overlap), got "
            f"{chunk_px!r}"
        )
    return -(-int(chunk_px) // align) * align


def _run_blocks(todo, job, estimate, setups, model, client, data):
    """Deblur the blocks ``todo`` here or on ``client``'s workers; yields once per block."""
    if client is None:
        for block in todo:
            deblur_block(job, estimate, setups[block[0]], block, model=model, data=data)
            yield block
        return
    from distributed import as_completed

    futures = [
        client.submit(deblur_block, job, estimate, setups[b[0]], b, pure=False) for b in todo
    ]
    for future in as_completed(futures):
        future.result()
        yield future


def deblur_block(job: dict, estimate, setup, block, model=None, data=None) -> None:
    """Deblur one block of ``job["input"]`` into ``job["output"]`` (arguments light enough
    to ship to a dask worker, which opens the stores and loads the model itself), then
    write its record."""
    from . import pipeline
    from .models import as_model

    if model is None:
        model = as_model(job["model"], job["device"], job["precision"])
    if data is None:
        data = read_any(job["input"]).data
    index, top, left = block
    plane = data[index] if index else data
    h, w = plane.shape
    chunk_px = job["chunk_px"]
    depth, align = pipeline.block_margin((h, w), setup.zoom, job["tile_px"], model)
    bottom, right = min(h, top + chunk_px), min(w, left + chunk_px)
    # a short last block reads further back, so that it is deblurred as wide as the others
    r0 = max(0, min(top - depth, bottom - chunk_px - depth) // align * align)
    c0 = max(0, min(left - depth, right - chunk_px - depth) // align * align)
    r1, c1 = min(h, top + chunk_px + depth), min(w, left + chunk_px + depth)
    x = np.asarray(plane[r0:r1, c0:c1])
    result, _ = pipeline.deblur_region(x, setup, estimate, model, job["tile_px"], (r0, c0))
    out = omezarr._zarr().open_array(str(Path(job["output"]) / "0"), mode="r+")
    key = tuple(index) + (slice(top, bottom), slice(left, right))
    omezarr.write_region(
        out, key, result[top - r0 : bottom - r0, left - c0 : right - c0], job["output"]
    )
    done = _done_path(Path(job["output"]), block)
    done.touch()


def deblur_any(input_path, output_path, options: DeblurOptions | None = None) -> dict:
    """A batch task (:func:`batch.iter_batch`): an OME-Zarr output is written block by
    block here (:func:`iter_deblur_zarr`), a TIFF by :func:`batch.deblur_file`."""
    from . import notices
    from .batch import deblur_file
    from .pipeline import run

    if not omezarr.is_zarr(output_path):
        return deblur_file(input_path, output_path, options)
    with notices.collect() as messages:
        result = run(iter_deblur_zarr(input_path, output_path, options))
    return {**result, "warnings": messages}
