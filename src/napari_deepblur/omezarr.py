"""OME-Zarr (NGFF) images in and out, through ome-zarr-py (``pip install
napari-deepblur[ome-zarr]``) and zarr ≥ 3.

Reading (:func:`read_ome_zarr`) opens the first multiscale image of a store lazily (nothing
is read until a region is sliced) with its axes, units, physical pixel size (nm), Z step
and frame interval and its channels (``omero``). Writing (:func:`create_output`,
:func:`finish_output`) makes the full-resolution array ``0`` first, which the caller fills
chunk by chunk, then the pyramid (each level half the previous, 2×2 means, read and written
chunk by chunk) and last the NGFF metadata: a store without its ``multiscales`` is not
finished and no reader takes it for an image.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import notices
from .io import ImageData, unit_to_nm
from .outputs import DISK_ERRNOS, OutputExistsError, disk_error

#: Our bookkeeping inside an output store while it is written (ignored by NGFF readers).
STATE_DIR = ".deepblur"
#: Our own metadata (the estimate, the model, the input) in the image group's attributes.
OUR_KEY = "napari-deepblur"
#: Chunks of the arrays we write, px a side (Y, X; one plane deep).
DEFAULT_CHUNK_PX = 2048
#: The pyramid stops at the first level that fits in one chunk.
_SPACE = ("z", "y", "x")
_NGFF_UNITS = {1.0: "nanometer", 1e3: "micrometer", 1e6: "millimeter"}


class NotOmeZarrError(ValueError):
    """A path that is a zarr store, or a folder, but not an OME-Zarr image."""


def is_zarr(path) -> bool:
    """Whether ``path`` names a zarr store: a ``.zarr`` name, or a folder holding zarr's
    ``zarr.json`` (v3) or ``.zgroup`` / ``.zattrs`` (v2)."""
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / n).is_file() for n in ("zarr.json", ".zgroup", ".zattrs"))


def is_unfinished(path) -> bool:
    """Whether ``path`` is an output store of ours that a run has not finished (a run
    given it again resumes it)."""
    return (Path(path) / STATE_DIR / "run.json").is_file()


def _zarr():
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr comes with ome-zarr
        raise ImportError(
            "OME-Zarr needs zarr and ome-zarr: pip install 'napari-deepblur[ome-zarr]'"
        ) from exc
    return zarr


def _ome_attrs(attrs: dict) -> dict:
    """The NGFF attributes of a group: under ``"ome"`` (v0.5) or at the top (≤ v0.4)."""
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs


@dataclass
class OmeImage:
    """What an OME-Zarr image says of itself. ``axes``: NGFF axes (dicts with ``name``,
    ``type``, ``unit`` when given); ``scale``: the physical size of a full-resolution pixel
    along each axis (in the axis' unit); ``channels``: the ``omero`` channels, if any;
    ``ours``: our metadata (an output of ours), if any; ``levels``: the pyramid's paths."""

    axes: list[dict]
    scale: list[float]
    channels: list[dict] | None
    ours: dict
    levels: list[str]
    version: str | None


def read_metadata(path) -> tuple[Any, OmeImage]:
    """``(group, OmeImage)`` of the OME-Zarr image at ``path`` (read-only); a
    :class:`NotOmeZarrError` sentence for a zarr group that is not an OME image (a plate,
    a bioformats2raw container: name one of its images), FileNotFoundError when absent."""
    zarr = _zarr()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OME-Zarr store not found: {path}")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr's own errors vary by version
        raise NotOmeZarrError(f"{path} is not a zarr group ({type(exc).__name__}: {exc})") from exc
    attrs = dict(group.attrs)
    ome = _ome_attrs(attrs)
    if attrs.get(OUR_KEY, {}).get("unfinished"):
        raise NotOmeZarrError(
            f"{path} is an unfinished output of deepblur (a run was stopped): run the same "
            "command again to finish it"
        )
    multiscales = ome.get("multiscales")
    if not multiscales:
        hint = ""
        if "plate" in ome or "well" in ome:
            hint = ": it is an HCS plate or well; give the path of one of its images"
        elif "bioformats2raw.layout" in ome:
            hint = f": it is a bioformats2raw container; give one of its images, e.g. {path / '0'}"
        raise NotOmeZarrError(
            f"{path} is a zarr group but not an OME-Zarr image (its attributes have no "
            f"'multiscales'){hint}"
        )
    image = multiscales[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in image.get("axes", "tczyx")]
    datasets = image["datasets"]
    scale = [1.0] * len(axes)
    for transforms in (
        datasets[0].get("coordinateTransformations", []),
        image.get("coordinateTransformations", []),
    ):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [s * float(f) for s, f in zip(scale, t["scale"], strict=True)]
    levels = [d["path"] for d in datasets]
    return group, OmeImage(
        axes,
        scale,
        (ome.get("omero") or {}).get("channels"),
        attrs.get(OUR_KEY) or {},
        levels,
        ome.get("version") or image.get("version"),
    )


class LazyStack:
    """An array ``(…, Y, X)`` read only where it is sliced: ``stack[plane_index]`` (a tuple
    of ints over the leading axes) is a :class:`LazyStack` of that plane; other keys read
    their region as a NumPy array. Pipeline functions slice their planes, tiles and
    subsamples from it, never the whole."""

    def __init__(self, array, index: tuple[int, ...] = ()):
        self._array, self._index = array, tuple(index)
        self.shape = tuple(array.shape[len(self._index) :])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._array.chunks[len(self._index) :])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if (
            self.ndim > 2
            and len(key) == self.ndim - 2
            and all(isinstance(k, int | np.integer) for k in key)
        ):
            return LazyStack(self._array, self._index + tuple(int(k) for k in key))
        return np.asarray(self._array[self._index + key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[...], dtype)


def read_ome_zarr(path) -> ImageData:
    """The full-resolution image of an OME-Zarr store as :class:`~napari_deepblur.io.
    ImageData`: ``data`` a :class:`LazyStack` (read where sliced), ``axes`` its NGFF axes
    as letters (``"CZYX"``), ``pixel_size_nm`` from the ``x`` scale and unit,
    ``stack_steps`` the Z step (nm) and frame interval (s), ``metadata`` ours (when it is an
    output of ours) plus ``"ome_zarr"``: axes, scale, channels. A scale without a unit is
    taken in micrometres and a missing scale as no pixel size, with a warning each."""
    path = Path(path)
    group, meta = read_metadata(path)
    names = [a["name"].lower() for a in meta.axes]
    if names[-2:] != ["y", "x"]:
        raise NotOmeZarrError(
            f"{path} has axes {''.join(names).upper()}: expected its last two to be Y and X"
        )
    array = group[meta.levels[0]]
    units: dict[str, float | None] = {}
    for axis, name in zip(meta.axes, names, strict=True):
        unit = axis.get("unit")
        units[name] = unit_to_nm(unit) if unit and name in _SPACE else None
    pixel_size_nm = None
    x_scale = meta.scale[-1]
    if units.get("x"):
        pixel_size_nm = x_scale * units["x"]
    elif x_scale != 1.0:
        pixel_size_nm = x_scale * 1e3
        notices.warn(
            f"{path.name} gives its pixel size ({x_scale:g}) without a unit: "
            "micrometres are assumed",
            stacklevel=2,
        )
    else:
        notices.warn(
            f"{path.name} gives no physical pixel size (its scale is 1, without a "
            "unit): none is assumed, so the image is taken as sampled like the model "
            "unless its optics are given (--pixel-size-nm, --na, --wavelength-nm)",
            stacklevel=2,
        )
    if pixel_size_nm is not None and abs(meta.scale[-2] / x_scale - 1) > 0.01:
        notices.warn(
            f"{path.name} has pixels of {meta.scale[-2]:g} × {x_scale:g} (Y × X): "
            "the X size is used",
            stacklevel=2,
        )
    steps = {}
    if "z" in names and units.get("z"):
        steps["spacing"] = meta.scale[names.index("z")] * units["z"]
    if "t" in names:
        t_unit = meta.axes[names.index("t")].get("unit")
        factor = {"second": 1.0, "millisecond": 1e-3, "minute": 60.0, "hour": 3600.0}.get(t_unit)
        if factor:
            steps["finterval"] = meta.scale[names.index("t")] * factor
    metadata = dict(meta.ours)
    metadata["ome_zarr"] = {"axes": meta.axes, "scale": meta.scale, "channels": meta.channels}
    return ImageData(LazyStack(array), pixel_size_nm, "".join(names).upper(), metadata, steps)


def input_chunks_warning(data, overlap_px: int, path) -> None:
    """Warn when an input's Y/X chunks are smaller than the tile overlap: each block then
    reads many tiny chunks (correct, but slow); rechunking the input helps."""
    chunks = getattr(data, "chunks", None)
    if chunks:  # dask gives each axis' chunk sizes
        chunks = [max(c) if isinstance(c, tuple) else c for c in chunks]
    if chunks and min(chunks[-2:]) < overlap_px:
        notices.warn(
            f"{Path(path).name} is stored in chunks of {chunks[-2]}×{chunks[-1]} px, smaller "
            f"than the tile overlap ({overlap_px} px): it is read correctly but slowly; "
            "rewrite it with larger chunks (e.g. 1024 px) for speed",
            RuntimeWarning,
            stacklevel=2,
        )


def _level_shapes(shape, chunk_px: int) -> list[tuple[int, ...]]:
    """The shapes of the pyramid's levels: Y and X halved until a level fits in a chunk."""
    shapes = [tuple(shape)]
    while max(shapes[-1][-2:]) > chunk_px and min(shapes[-1][-2:]) >= 2:
        *lead, h, w = shapes[-1]
        shapes.append((*lead, -(-h // 2), -(-w // 2)))
    return shapes


def create_output(path, shape, dtype, chunk_px: int, metadata: dict, overwrite: bool = False):
    """A new zarr group at ``path`` with its full-resolution array ``0`` (chunks of one
    plane × ``chunk_px``², filled with 0) and ``metadata`` as ours, marked unfinished. An
    existing store is an :class:`OutputExistsError` unless ``overwrite`` (then it is
    removed first: only a zarr store is)."""
    zarr = _zarr()
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise OutputExistsError(path)
        if not is_zarr(path) or not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a zarr store: it is not replaced")
        shutil.rmtree(path)
    try:
        group = zarr.open_group(str(path), mode="w-")
        group.attrs[OUR_KEY] = {**metadata, "unfinished": True}
        chunks = (1,) * (len(shape) - 2) + (chunk_px, chunk_px)
        group.create_array("0", shape=tuple(shape), chunks=chunks, dtype=dtype, fill_value=0)
    except OSError as exc:
        _raise_disk(exc, path)
        raise
    return group


def _raise_disk(exc: OSError, path) -> None:
    """A full disk, a quota or a read-only file system as the sentence naming ``path``."""
    if exc.errno in DISK_ERRNOS:
        raise disk_error(exc, Path(path)) from exc


def write_region(array, key, block: np.ndarray, path) -> None:
    """``array[key] = block`` (rounded and clipped to an integer dtype), a full disk or a
    read-only store as an :class:`~napari_deepblur.outputs.OutputDiskError`."""
    dtype = np.dtype(array.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        block = np.clip(np.rint(block), info.min, info.max)
    try:
        array[key] = block.astype(dtype, copy=False)
    except OSError as exc:
        _raise_disk(exc, path)
        raise


def _downsample(block: np.ndarray) -> np.ndarray:
    """2×2 means of the last two axes (an odd edge row or column is its own mean)."""
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    block = np.pad(block.astype(np.float32), pad, mode="edge")
    return block.reshape(*block.shape[:-2], block.shape[-2] // 2, 2, block.shape[-1] // 2, 2).mean(
        axis=(-3, -1)
    )


def finish_output(
    path,
    group,
    axes: list[dict],
    scale: list[float],
    chunk_px: int,
    channels: list[dict] | None = None,
) -> list[str]:
    """Write the pyramid of ``group`` (array ``0`` filled) chunk by chunk, then the NGFF
    multiscales metadata (``axes`` with their units, full-resolution ``scale``), the
    ``omero`` channels when given, and remove the unfinished mark. Returns the levels'
    paths."""
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    base = group["0"]
    shapes = _level_shapes(base.shape, chunk_px)
    chunks = base.chunks
    try:
        for level in range(1, len(shapes)):
            src = group[str(level - 1)]
            if str(level) in group:
                del group[str(level)]
            dst = group.create_array(
                str(level), shape=shapes[level], chunks=chunks, dtype=base.dtype, fill_value=0
            )
            lead = [range(n) for n in shapes[level][:-2]]
            for index in np.ndindex(*[len(r) for r in lead]):
                for top in range(0, shapes[level][-2], chunk_px):
                    for left in range(0, shapes[level][-1], chunk_px):
                        rows = slice(2 * top, 2 * (top + chunk_px))
                        cols = slice(2 * left, 2 * (left + chunk_px))
                        small = _downsample(np.asarray(src[index + (rows, cols)]))
                        key = index + (
                            slice(top, top + small.shape[-2]),
                            slice(left, left + small.shape[-1]),
                        )
                        write_region(dst, key, small, path)
        datasets = []
        for level in range(len(shapes)):
            factor = [1.0] * (len(axes) - 2) + [2.0**level, 2.0**level]
            datasets.append(
                {
                    "path": str(level),
                    "coordinateTransformations": [
                        {
                            "type": "scale",
                            "scale": [float(s * f) for s, f in zip(scale, factor, strict=True)],
                        }
                    ],
                }
            )
        ours = dict(group.attrs[OUR_KEY])
        ours.pop("unfinished", None)
        write_multiscales_metadata(group, datasets, axes=axes, name=Path(path).name)
        if channels:
            add_metadata(group, {"omero": {"channels": channels}})
        group.attrs[OUR_KEY] = ours
    except OSError as exc:
        _raise_disk(exc, path)
        raise
    return [d["path"] for d in datasets]


def ngff_axes(
    axes_letters: str,
    source_axes: list[dict] | None,
    pixel_size_nm: float | None,
    stack_steps: dict | None = None,
) -> tuple[list[dict], list[float]]:
    """NGFF axes (with types and units) and the full-resolution scale for an output of
    axes ``axes_letters`` (e.g. ``"CZYX"``): the input's own axes when it was an OME-Zarr
    (``source_axes``), else space axes in micrometres from ``pixel_size_nm`` and the Z step
    (``stack_steps["spacing"]``, nm), time in seconds."""
    names = [a.lower() for a in axes_letters]
    steps = stack_steps or {}
    axes, scale = [], []
    by_name = {a["name"].lower(): a for a in (source_axes or [])}
    for name in names:
        if name in by_name:
            axes.append(dict(by_name[name]))
        elif name in _SPACE:
            axes.append({"name": name, "type": "space", "unit": "micrometer"})
        elif name == "t":
            axes.append({"name": name, "type": "time", "unit": "second"})
        elif name == "c":
            axes.append({"name": name, "type": "channel"})
        else:
            axes.append({"name": name})
        axis = axes[-1]
        to_nm = unit_to_nm(axis.get("unit")) if axis.get("unit") and name in _SPACE else None
        if name in ("y", "x") and pixel_size_nm:
            scale.append(pixel_size_nm / (to_nm or 1e3))
            axis.setdefault("unit", "micrometer")
        elif name == "z" and steps.get("spacing"):
            scale.append(steps["spacing"] / (to_nm or 1e3))
        elif name == "t" and steps.get("finterval"):
            scale.append(float(steps["finterval"]) if axis.get("unit") == "second" else 1.0)
        else:
            scale.append(1.0)
    return axes, scale
