"""TIFF / OME-TIFF I/O with pixel size (nm) and JSON metadata (images in and out; the PSF
files and estimates are :mod:`napari_deepblur.formats`).

Images are ``(…, Y, X)`` as stored. Pixel sizes are in nanometres (``pixel_size_nm``).
Writes are atomic (temporary ``.<name>.<id>.partial`` file in the same folder, then
``os.replace``), refuse to overwrite unless ``overwrite=True``, never replace what is not a
regular file (a device, a pipe), and make a disk that cannot take them (full, over quota,
read-only) an :class:`~napari_deepblur.outputs.OutputDiskError` naming the path
(:mod:`~napari_deepblur.outputs`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import notices
from .outputs import (
    DISK_ERRNOS,
    check_free_space,
    check_new,
    disk_error,
    remove_partial_files,  # noqa: F401 - io.remove_partial_files, as before
    reserve_blocks,
)

if TYPE_CHECKING:  # imported where used: the docks import this module, tifffile costs ~80 ms
    import tifffile

__all__ = [
    "ImageData",
    "atomic_write",
    "create_image",
    "json_text",
    "read_header",
    "read_image",
    "to_jsonable",
    "unit_to_nm",
    "write_image",
    "write_text",
]

_OUR_FORMAT = "napari-deepblur"
_BIGTIFF_BYTES = 2**31 - 2**26  # switch to BigTIFF a little below the 4 GB / 2 GB limits
# Length unit → nanometres.
_UNIT_NM = {
    "nm": 1.0,
    "nanometer": 1.0,
    "µm": 1e3,
    "μm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "\\u00b5m": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "å": 0.1,
    "angstrom": 0.1,
}
# OME time unit → seconds.
_UNIT_S = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "min": 60.0, "h": 3600.0}
# TIFF ResolutionUnit → nanometres per unit (1 = none: no physical size).
_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays (and tuples, Paths) to plain JSON types, recursively.

    Raises ``TypeError`` for objects that have no JSON form.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"metadata value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


def json_text(obj: Any, what: str, indent: int | None = 2) -> str:
    """``obj`` as strict JSON (after :func:`to_jsonable`): ValueError naming ``what`` and
    the first offending entry when it holds NaN or infinite numbers, which JSON cannot
    hold (Python would write ``NaN``, which other programs fail to read)."""
    obj = to_jsonable(obj)
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        where = _non_finite_entry(obj)
        raise ValueError(
            f"{what} holds a NaN or infinite number{f' ({where})' if where else ''}, which "
            "JSON cannot hold: it was not written"
        ) from None


def _non_finite_entry(obj: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite float in ``obj`` (JSON types), or None."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return prefix or "the value"
    if isinstance(obj, dict):
        items = obj.items()
    else:
        items = enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        found = _non_finite_entry(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


@dataclass
class ImageData:
    """An image read from disk.

    ``data``: array as stored (dtype kept, ``(…, Y, X)``); ``pixel_size_nm``: lateral pixel
    size in nm or None if unknown; ``axes``: tifffile's series axes (e.g. "YX", "TZCYX", "YXS"
    for RGB); ``metadata``: the JSON metadata written by :func:`write_image`, if any;
    ``stack_steps``: an ImageJ file's Z step in nm and frame interval in s (``{"spacing",
    "finterval"}``), carried over to outputs written as ImageJ hyperstacks.
    """

    data: np.ndarray
    pixel_size_nm: float | None = None
    axes: str = ""
    metadata: dict = field(default_factory=dict)
    stack_steps: dict = field(default_factory=dict)


def unit_to_nm(unit: Any) -> float | None:
    """Nanometres per length ``unit`` (a name or abbreviation as TIFF, OME, ImageJ or napari's
    pint write it, or a pint unit), or None when it is not a known length unit.

    >>> unit_to_nm("micron"), unit_to_nm("nm"), unit_to_nm("pixel")
    (1000.0, 1.0, None)
    """
    if unit is None:
        return None
    return _UNIT_NM.get(str(unit).strip().lower().replace("\\u00b5", "µ"))


def _imagej_stack_steps(tif: tifffile.TiffFile) -> dict:
    """An ImageJ file's Z step (converted to nm; dropped when its unit is unknown) and frame
    interval (s)."""
    imagej = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    steps = {"finterval": float(imagej["finterval"])} if "finterval" in imagej else {}
    unit_nm = unit_to_nm(imagej.get("unit"))
    if "spacing" in imagej and unit_nm is not None:
        steps["spacing"] = float(imagej["spacing"]) * unit_nm
    return steps


def _our_stack_steps(tif: tifffile.TiffFile) -> dict:
    """The Z step (nm) and frame interval (s) our JSON holds for a stack written neither as
    an ImageJ hyperstack nor as an OME-TIFF (e.g. CZYX, which ImageJ cannot order)."""
    description = _json_description(_our_description(tif.pages.first)) or {}
    steps = description.get("stack_steps") if description.get("format") == _OUR_FORMAT else None
    return {k: float(v) for k, v in (steps or {}).items() if k in _STACK_STEPS}


def _our_description(page) -> str | None:
    """Our JSON: in the private tag of an ImageJ hyperstack, else the ImageDescription."""
    tag = page.tags.get(_OUR_TAG)
    return tag.value if tag is not None else page.description


def _json_description(description: str | None) -> dict | None:
    if not description or not description.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(description)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _ome_root(tif: tifffile.TiffFile) -> ET.Element | None:
    """The OME-XML of an OME-TIFF, parsed; None for other TIFFs or unreadable XML."""
    if not (tif.is_ome and tif.ome_metadata):
        return None
    try:
        return ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return None


def _ome_pixels(tif: tifffile.TiffFile) -> dict:
    """The attributes of the first OME ``Pixels`` element (sizes, physical sizes), or {}."""
    root = _ome_root(tif)
    if root is None:
        return {}
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    return {} if pixels is None else dict(pixels.attrib)


def _ome_optics(tif: tifffile.TiffFile) -> dict:
    """``na`` (the first Objective's LensNA) and ``wavelength_nm`` (the first Channel's
    EmissionWavelength, OME's default unit nm) of an OME-TIFF, where it states them; with
    several channels that all state one, ``channel_wavelengths_nm`` too (in channel order:
    channels imaged at different wavelengths have different PSFs); {}."""
    root = _ome_root(tif)
    if root is None:
        return {}
    found: dict[str, float] = {}
    emissions: list[float | None] = []
    images = 0
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        images += tag == "Image"
        try:
            if tag == "Objective" and "LensNA" in element.attrib and "na" not in found:
                found["na"] = float(element.attrib["LensNA"])
            elif tag == "Channel" and images <= 1:  # the first image's (the series read)
                emissions.append(_ome_emission_nm(element.attrib))
        except ValueError:
            continue
    stated = [w for w in emissions if w is not None]
    if stated:
        found["wavelength_nm"] = stated[0]
    optics: dict = {k: v for k, v in found.items() if math.isfinite(v) and v > 0}
    if len(emissions) > 1 and len(stated) == len(emissions):
        optics["channel_wavelengths_nm"] = stated
    return optics


def _ome_emission_nm(channel: dict) -> float | None:
    """A Channel's EmissionWavelength in nm (OME's default unit), or None when absent,
    not a positive number or in an unknown unit."""
    scale = unit_to_nm(channel.get("EmissionWavelengthUnit", "nm"))
    try:
        value = float(channel["EmissionWavelength"]) * scale if scale is not None else None
    except (KeyError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _ome_length_nm(pixels: dict, name: str) -> float | None:
    """An OME physical size (``PhysicalSizeX``, ``PhysicalSizeZ``) in nm (OME's default unit
    is µm), or None when absent or in an unknown unit."""
    scale = unit_to_nm(pixels.get(f"{name}Unit", "µm"))
    if name not in pixels or scale is None:
        return None
    return float(pixels[name]) * scale


def _ome_stack_steps(pixels: dict) -> dict:
    """An OME-TIFF's Z step (nm) and frame interval (s), as :func:`_imagej_stack_steps`."""
    steps = {}
    spacing = _ome_length_nm(pixels, "PhysicalSizeZ")
    if spacing is not None:
        steps["spacing"] = spacing
    seconds = _UNIT_S.get(pixels.get("TimeIncrementUnit", "s"))
    if "TimeIncrement" in pixels and seconds is not None:
        steps["finterval"] = float(pixels["TimeIncrement"]) * seconds
    return steps


def _x_resolution(page: Any) -> float | None:
    """XResolution (pixels per unit) of a TIFF page, or None."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    return num / den if num and den else None


def _pixel_size_nm(tif: tifffile.TiffFile, description: dict | None) -> float | None:
    """Pixel size (nm): our JSON (whose null means unknown: ImageJ's header then holds its
    default of 1 unit) > OME PhysicalSizeX > ImageJ unit + XResolution > TIFF tags."""
    if description and description.get("pixel_size_nm") is not None:
        return float(description["pixel_size_nm"])
    if description and description.get("format") == _OUR_FORMAT and "pixel_size_nm" in description:
        return None
    px = _ome_length_nm(_ome_pixels(tif), "PhysicalSizeX")
    if px is not None:
        return px
    page = tif.pages.first
    xres = _x_resolution(page)
    if tif.is_imagej:
        scale = unit_to_nm((tif.imagej_metadata or {}).get("unit"))
        if scale is not None and xres:
            return scale / xres
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    if xres and unit in _RESUNIT_NM and not (xres == 1 and unit_tag is None):
        return _RESUNIT_NM[unit] / xres
    return None


def read_image(path: str | os.PathLike, *, mmap: bool = False) -> ImageData:
    """Read a (OME-/ImageJ-) TIFF with its pixel size (nm), axes and our JSON metadata.

    ``mmap=True``: ``data`` is a read-only memory map of the file when the TIFF allows it
    (uncompressed, contiguous, as :func:`write_image` and :func:`create_image` write), else
    a zarr array when zarr is installed (tiled/compressed TIFFs read chunk by chunk), else
    the array in memory. Large images then cost no memory until their tiles are read.
    """
    import tifffile

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = _lazy_data(path) if mmap else None
            if data is None:
                data = series.asarray()
            axes = series.axes
            if len(tif.series) > 1:
                notices.warn(
                    f"{path.name} holds {len(tif.series)} image series (positions, or "
                    f"thumbnails); only the first, {tuple(series.shape)} {series.axes}, is "
                    "read: save each series as a file of its own to process the others"
                )
            pixel_size_nm, metadata = _header(tif)
            stack_steps = (
                _imagej_stack_steps(tif)
                or _ome_stack_steps(_ome_pixels(tif))
                or _our_stack_steps(tif)
            )
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError) as exc:
        raise ValueError(f"not a readable TIFF: {path} ({exc})") from exc
    return ImageData(data, pixel_size_nm, axes, metadata, stack_steps)


def read_header(path: str | os.PathLike) -> tuple[float | None, dict]:
    """The pixel size (nm, or None) and our JSON metadata of a TIFF, as :func:`read_image`
    gives them, without reading its pixels (milliseconds: e.g. for the optics of a napari
    layer opened by another reader). ValueError when it is not a readable TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _header(tif)
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError) as exc:
        raise ValueError(f"not a readable TIFF: {path} ({exc})") from exc


def read_axes(path: str | os.PathLike) -> tuple[str, tuple[int, ...]]:
    """The axes (tifffile's, e.g. "CYX", "TZCYX": from the OME-XML or ImageJ metadata) and
    shape of a TIFF's first series, without reading its pixels; ``("", ())`` when it is not
    a readable TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return str(series.axes), tuple(int(n) for n in series.shape)
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError):
        return "", ()


def _header(tif: tifffile.TiffFile) -> tuple[float | None, dict]:
    description = _json_description(_our_description(tif.pages.first))
    pixel_size_nm = _pixel_size_nm(tif, description)
    if description is None:
        metadata = {}
    elif description.get("format") == _OUR_FORMAT:
        metadata = description.get("metadata") or {}
    else:  # someone else's JSON description (e.g. tifffile's "shaped"): keep it, minus shape
        metadata = {k: v for k, v in description.items() if k != "shape"}
    for key, value in _ome_optics(tif).items():  # NA and emission of an OME-TIFF
        metadata.setdefault(key, value)
    return pixel_size_nm, metadata


def _lazy_data(path: Path) -> Any:
    """A memory map (or zarr array) of the first series, or None when neither is possible."""
    import tifffile

    try:
        return tifffile.memmap(path, series=0, mode="r")
    except (ValueError, OSError, TypeError):
        pass
    try:
        import zarr
    except ImportError:
        return None
    try:
        array = _SettledZarr(zarr.open(tifffile.imread(path, aszarr=True), mode="r"))
        array[tuple(-1 for _ in array.shape)]  # a truncated file fails here, not mid-run
        return array
    except Exception:  # noqa: BLE001 - any zarr failure: read into memory instead
        return None


class _SettledZarr:
    """A zarr array whose failing reads first let its other chunk reads end. zarr reads the
    chunks of a slice concurrently on its own event loop, and when one fails (a damaged
    tile) the others go on; a program that ends then, as the command line does after its
    one-line error, would print a "Task was destroyed but it is pending!" and a traceback
    for each of them."""

    def __init__(self, array):
        self._array = array

    def __getattr__(self, name: str) -> Any:  # shape, dtype, ndim, …
        if name == "_array":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self._array, name)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[...], dtype)

    def __getitem__(self, key) -> Any:
        try:
            return self._array[key]
        except Exception:
            _settle_zarr_reads()
            raise


def _settle_zarr_reads(timeout_s: float = 10.0) -> None:
    """Wait (at most ``timeout_s``) for the tasks on zarr's event loop to end."""

    async def the_others() -> None:
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current]
        await asyncio.gather(*others, return_exceptions=True)

    try:
        from zarr.core.sync import sync

        sync(the_others(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - another zarr version: its messages, if any, stay
        pass


#: Room kept for a TIFF's header and tags beside its pixels, in bytes.
_HEADER_BYTES = 1 << 16


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` on a hidden temporary file next to ``path``, then rename it.
    A full or read-only disk is an :class:`~napari_deepblur.outputs.OutputDiskError` naming
    ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise disk_error(exc, path) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`); returns the path."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


#: A private TIFF tag (65000–65535 are free for private use) holding our JSON description
#: when the ImageDescription holds ImageJ's hyperstack header instead.
_OUR_TAG = 65117
#: ImageJ hyperstacks: the axes order Fiji expects, and the dtypes it reads.
_IMAGEJ_AXES = "TZCYX"
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)
#: ImageJ's Z step (nm, in our files) and frame interval (s), kept from input to output.
_STACK_STEPS = ("spacing", "finterval")


def _imagej_axes(axes: str | None, dtype, nbytes: int) -> bool:
    """True when a stack with ``axes`` can be an ImageJ hyperstack (so that Fiji shows its
    Z/T/C sliders): axes in ImageJ's order (e.g. "ZYX", "TZCYX"), an ImageJ dtype, < 4 GB."""
    if not axes or len(axes) < 3 or not axes.endswith("YX") or nbytes >= _BIGTIFF_BYTES:
        return False
    order = [_IMAGEJ_AXES.find(a) for a in axes]
    in_order = all(0 <= a < b for a, b in zip(order, order[1:]))  # noqa: B905
    return in_order and np.dtype(dtype) in [np.dtype(d) for d in _IMAGEJ_DTYPES]


def is_ome_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an OME-TIFF (``….ome.tif``/``….ome.tiff``): written with OME-XML."""
    return Path(path).name.lower().endswith((".ome.tif", ".ome.tiff"))


def _ome_axes(axes: str) -> str:
    """``axes`` as OME-XML can name them (each of T, Z, C, Y, X, S and tifffile's Q at most
    once): the others (I: the pages of a plain multi-page TIFF, L, V, M…, a second Q) become
    unused ones of Q, T, Z, C. Our JSON keeps the real axes."""
    spare = [a for a in "QTZC" if a not in axes]
    named: list[str] = []
    for axis in axes:
        if axis in "TZCYXSQ" and axis not in named:
            named.append(axis)
        elif spare:
            named.append(spare.pop(0))
        else:
            raise ValueError(f"an OME-TIFF cannot hold axes {axes!r}: name the output .tif")
    return "".join(named)


def _tiff_options(
    shape,
    dtype,
    pixel_size_nm: float | None,
    metadata: dict | None,
    axes: str | None,
    stack_steps: dict | None = None,
    ome: bool = False,
) -> dict[str, Any]:
    """The ``tifffile`` keyword arguments of our TIFFs: our JSON description (in the
    ImageDescription; for OME-TIFFs (``ome``) OME-XML there, for stacks that can be ImageJ
    hyperstacks ImageJ's header there, and then our JSON in the private tag
    :data:`_OUR_TAG`; ``stack_steps``: the Z step (nm) and frame interval (s), in their
    header and in our JSON), the resolution tags, BigTIFF when large."""
    if pixel_size_nm is not None and not float(pixel_size_nm) > 0:
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    description: dict[str, Any] = {
        "format": _OUR_FORMAT,
        "shape": list(shape),
        "pixel_size_nm": None if pixel_size_nm is None else float(pixel_size_nm),
        "metadata": to_jsonable(metadata or {}),
    }
    if axes is not None:
        if len(axes) != len(shape):
            raise ValueError(f"axes {axes!r} do not match data of shape {tuple(shape)}")
        description["axes"] = axes
    steps = {k: float(v) for k, v in (stack_steps or {}).items() if k in _STACK_STEPS}
    if steps and len(shape) > 2:
        description["stack_steps"] = steps
    text = json.dumps(description)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    options: dict[str, Any] = {"photometric": "minisblack", "bigtiff": nbytes > _BIGTIFF_BYTES}
    if ome:
        ome_axes = _ome_axes(axes or "Q" * (len(shape) - 2) + "YX"[-len(shape) :])
        ome_pixels: dict[str, Any] = {"axes": ome_axes}
        if pixel_size_nm is not None:
            for name in ("PhysicalSizeX", "PhysicalSizeY"):
                ome_pixels.update({name: float(pixel_size_nm), f"{name}Unit": "nm"})
        if "spacing" in steps and "Z" in (axes or ""):
            ome_pixels.update(PhysicalSizeZ=float(steps["spacing"]), PhysicalSizeZUnit="nm")
        if "finterval" in steps and "T" in (axes or ""):
            ome_pixels.update(TimeIncrement=float(steps["finterval"]), TimeIncrementUnit="s")
        if ome_axes.endswith("S"):
            options["photometric"] = "rgb"
        return dict(
            options, ome=True, metadata=ome_pixels, extratags=[(_OUR_TAG, "s", 0, text, True)]
        )
    if _imagej_axes(axes, dtype, nbytes):
        options.update(
            imagej=True,
            metadata={
                "axes": axes,
                # of the pixel size and the Z step ("spacing"): none when neither is known,
                # so that Fiji shows pixels, not 1 nm
                **({"unit": "nm"} if pixel_size_nm is not None or "spacing" in steps else {}),
                **steps,
            },
            extratags=[(_OUR_TAG, "s", 0, text, True)],
        )
        if pixel_size_nm is not None:  # ImageJ: pixels per unit (nm)
            options["resolution"] = (1 / float(pixel_size_nm), 1 / float(pixel_size_nm))
        return options
    options.update(description=text, metadata=None)
    if pixel_size_nm is not None:
        ppcm = 1e7 / float(pixel_size_nm)
        options.update(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
    return options


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    pixel_size_nm: float | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
    axes: str | None = None,
    stack_steps: dict | None = None,
) -> Path:
    """Write ``data`` (…, Y, X) to a TIFF with pixel size (nm) and JSON metadata; returns path.

    The ImageDescription is JSON: ``{"format": "napari-deepblur", "shape", "pixel_size_nm",
    "metadata", ["axes"], ["stack_steps"]}``; the resolution tags hold ``1e7 /
    pixel_size_nm`` pixels per centimetre (ResolutionUnit CENTIMETER) so Fiji and others see
    the pixel size. A path ending in ``.ome.tif``/``.ome.tiff`` gets an OME-TIFF (OME-XML
    with the axes, pixel size, Z step and frame interval); other stacks that ImageJ can hold
    are ImageJ hyperstacks (:func:`_tiff_options`; ``stack_steps``: their Z step in nm and
    frame interval in s). Atomic; refuses to overwrite an existing file unless
    ``overwrite=True``; BigTIFF above ~2 GB.
    """
    path = Path(path)
    data = np.asarray(data)
    check_new(path, overwrite)
    options = _tiff_options(
        data.shape, data.dtype, pixel_size_nm, metadata, axes, stack_steps, is_ome_name(path)
    )
    check_free_space(path, data.nbytes + _HEADER_BYTES)

    def write(tmp: Path) -> None:
        import tifffile

        tifffile.imwrite(tmp, data, **options)

    atomic_write(path, write)
    return path


@contextmanager
def create_image(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: Any = np.float32,
    *,
    pixel_size_nm: float | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
    axes: str | None = None,
    stack_steps: dict | None = None,
) -> Iterator[np.memmap]:
    """A new TIFF to fill piece by piece: yields a writable ``numpy.memmap`` of ``shape``.

    The file is written as :func:`write_image` writes it (same description and resolution
    tags, uncompressed, BigTIFF above ~2 GB) but into a hidden temporary file, renamed to
    ``path`` only when the ``with`` block ends without error; on an error or an interrupt the
    temporary file is removed, so ``path`` exists only when complete. Refuses to overwrite
    unless ``overwrite=True``.

        with io.create_image("out.tif", (8192, 8192), np.float32) as out:
            out[:100] = ...
    """
    path = Path(path)
    shape = tuple(int(n) for n in shape)
    check_new(path, overwrite)
    options = _tiff_options(
        shape, dtype, pixel_size_nm, metadata, axes, stack_steps, is_ome_name(path)
    )
    check_free_space(path, int(np.prod(shape)) * np.dtype(dtype).itemsize + _HEADER_BYTES)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        try:
            array = _new_memmap(tmp, shape, dtype, options)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            raise disk_error(exc, path) from exc
        yield array
        array.flush()
        del array
        check_new(path, overwrite)  # appeared meanwhile (another process)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_memmap(tmp: Path, shape, dtype, options: dict) -> np.memmap:
    """``tifffile.memmap`` of a new file, with the file's blocks reserved
    (:func:`~napari_deepblur.outputs.reserve_blocks`) before it is mapped."""
    import tifffile

    dtype = np.dtype(dtype)
    offset, _ = tifffile.imwrite(
        tmp,
        shape=shape,
        dtype=dtype,
        align=tifffile.TIFF.ALLOCATIONGRANULARITY,
        returnoffset=True,
        **options,
    )
    reserve_blocks(tmp)
    return np.memmap(tmp, dtype, "r+", offset, shape, "C")
