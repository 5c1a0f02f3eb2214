"""Tests for TIFF I/O with pixel size and metadata, and atomic writes."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_deepblur import io, outputs


def _partials(folder):
    return [p for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize(
    "data",
    [
        np.arange(30 * 40, dtype=np.uint16).reshape(30, 40),
        np.random.default_rng(0).random((3, 16, 20)).astype(np.float32),
    ],
)
def test_round_trip(tmp_path, data):
    meta = {"na": np.float32(1.4), "noll": np.arange(4, 11), "name": "x", "nested": {"a": [1, 2]}}
    path = io.write_image(tmp_path / "img.tif", data, pixel_size_nm=65.0, metadata=meta)
    img = io.read_image(path)
    assert img.data.dtype == data.dtype
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size_nm == pytest.approx(65.0)
    assert img.metadata == {
        "na": pytest.approx(1.4),
        "noll": list(range(4, 11)),
        "name": "x",
        "nested": {"a": [1, 2]},
    }
    assert img.axes.endswith("YX") and len(img.axes) == data.ndim
    # Other tools see the pixel size through the resolution tags (pixels per centimetre).
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e7 / 65.0, rel=1e-6)
        assert int(page.tags["ResolutionUnit"].value) == 3
    assert _partials(tmp_path) == []


def test_write_axes(tmp_path):
    data = np.zeros((2, 3, 8, 9), np.uint8)
    io.write_image(tmp_path / "a.tif", data, axes="TZYX")
    assert io.read_image(tmp_path / "a.tif").axes == "TZYX"
    with pytest.raises(ValueError, match="axes"):
        io.write_image(tmp_path / "b.tif", data, axes="YX")


def test_ome_pixel_size_in_um(tmp_path):
    path = tmp_path / "ome.ome.tif"
    data = np.ones((2, 8, 9), np.uint16)
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.108, "PhysicalSizeXUnit": "µm"}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    img = io.read_image(path)
    assert img.pixel_size_nm == pytest.approx(108.0)
    assert img.axes == "ZYX"
    assert img.metadata == {}


def test_ome_tif_names_get_ome_xml_with_pixel_size_z_step_and_frame_interval(tmp_path):
    """A user who names the output ….ome.tif gets an OME-TIFF (Bio-Formats, QuPath, OMERO
    read its sizes), written whole or piece by piece, and our metadata back."""
    data = np.arange(2 * 3 * 8 * 9, dtype=np.uint16).reshape(2, 3, 8, 9)
    steps = {"spacing": 300.0, "finterval": 2.5}
    path = io.write_image(
        tmp_path / "out.ome.tif", data, pixel_size_nm=74.0, metadata={"k": 1}, axes="TZYX",
        stack_steps=steps,
    )  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and not tif.is_imagej and tif.series[0].axes == "TZYX"
        for attribute in ('PhysicalSizeX="74.0"', 'PhysicalSizeXUnit="nm"',
                          'PhysicalSizeZ="300.0"', 'TimeIncrement="2.5"'):  # fmt: skip
            assert attribute in tif.ome_metadata
    back = io.read_image(path, mmap=True)
    assert back.axes == "TZYX" and back.pixel_size_nm == 74.0 and back.metadata == {"k": 1}
    assert back.stack_steps == steps
    np.testing.assert_array_equal(back.data, data)
    with io.create_image(tmp_path / "big.OME.TIFF", (3, 8, 9), np.float32, axes="ZYX") as out:
        out[:] = 5
    with tifffile.TiffFile(tmp_path / "big.OME.TIFF") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX" and tif.asarray().min() == 5
    # axes OME has no name for: a plain multi-page TIFF's pages (I), tifffile's QQYX, RGB
    for axes, shape in (("IYX", (2, 8, 9)), ("QQYX", (2, 2, 8, 9)), (None, (2, 2, 8, 9)),
                        ("YXS", (8, 9, 3))):  # fmt: skip
        out = io.write_image(
            tmp_path / "any.ome.tif", np.ones(shape, np.uint8), axes=axes, stack_steps=steps,
            overwrite=True,
        )  # fmt: skip
        with tifffile.TiffFile(out) as tif:
            assert tif.is_ome and tif.series[0].shape == shape
            assert "PhysicalSizeZ" not in tif.ome_metadata  # no Z axis: no Z step
        np.testing.assert_array_equal(io.read_image(out).data, 1)
    # someone else's OME-TIFF: its Z step in µm and its interval in ms
    meta = {"axes": "TZYX", "PhysicalSizeZ": 0.5, "TimeIncrement": 40, "TimeIncrementUnit": "ms"}
    tifffile.imwrite(tmp_path / "theirs.ome.tif", data, ome=True, metadata=meta)
    read = io.read_image(tmp_path / "theirs.ome.tif").stack_steps
    assert read == pytest.approx({"spacing": 500.0, "finterval": 0.04})


def test_imagej_hyperstack(tmp_path):
    path = tmp_path / "ij.tif"
    data = np.zeros((2, 3, 2, 8, 9), np.uint16)  # T Z C Y X
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"unit": "um", "axes": "TZCYX"},
    )
    img = io.read_image(path)
    assert img.axes == "TZCYX"
    assert img.data.shape == data.shape
    assert img.pixel_size_nm == pytest.approx(250.0)


def test_stacks_are_written_as_imagej_hyperstacks_when_imagej_can_read_them(tmp_path):
    """Fiji then shows the T/Z/C sliders and the pixel size; our metadata stays readable."""
    data = np.arange(2 * 3 * 2 * 8 * 9, dtype=np.float32).reshape(2, 3, 2, 8, 9)
    path = io.write_image(
        tmp_path / "h.tif", data, pixel_size_nm=74.0, metadata={"k": 1}, axes="TZCYX"
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZCYX"
        assert tif.imagej_metadata["unit"] == "nm"
        assert tif.pages.first.tags["XResolution"].value == (1, 74)  # pixels per nm
    back = io.read_image(path, mmap=True)
    assert back.axes == "TZCYX" and back.pixel_size_nm == 74.0 and back.metadata == {"k": 1}
    np.testing.assert_array_equal(back.data, data)
    with io.create_image(tmp_path / "z.tif", (3, 8, 9), np.uint16, axes="ZYX") as out:
        out[:] = 5
    assert tifffile.TiffFile(tmp_path / "z.tif").is_imagej
    steps = {"spacing": 250.0, "finterval": 2.5}
    for dtype, axes in ((np.float64, "ZYX"), (np.float32, "QYX"), (np.float32, "CZYX")):
        path = io.write_image(
            tmp_path / "o.tif", np.zeros((2,) * (len(axes) - 2) + (8, 9), dtype), axes=axes,
            pixel_size_nm=50.0, overwrite=True, stack_steps=steps,
        )  # fmt: skip
        assert not tifffile.TiffFile(path).is_imagej  # ImageJ cannot hold these
        back = io.read_image(path)
        assert back.pixel_size_nm == 50.0 and back.stack_steps == steps  # from our JSON


def test_plain_resolution_tags(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(
        path, np.zeros((4, 4), np.uint8), resolution=(25400.0, 25400.0), resolutionunit="INCH"
    )
    assert io.read_image(path).pixel_size_nm == pytest.approx(1000.0)
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))  # no unit: unknown pixel size
    assert io.read_image(path).pixel_size_nm is None


def test_refuses_overwrite(tmp_path):
    path = tmp_path / "x.tif"
    io.write_image(path, np.zeros((4, 4), np.uint8))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        io.write_image(path, np.ones((4, 4), np.uint8))
    assert io.read_image(path).data.max() == 0
    io.write_image(path, np.ones((4, 4), np.uint8), overwrite=True)
    assert io.read_image(path).data.max() == 1


def test_bad_metadata_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        io.write_image(tmp_path / "x.tif", np.zeros((4, 4)), metadata={"f": object()})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "x.tif"
    io.write_image(path, np.zeros((4, 4), np.uint8))
    real = tifffile.imwrite

    def broken(file, data, **kwargs):
        real(file, data[: len(data) // 2], **kwargs)  # a truncated file on disk, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        io.write_image(path, np.ones((4, 4), np.uint8), overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        io.write_image(tmp_path / "new.tif", np.ones((4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]
    monkeypatch.undo()
    np.testing.assert_array_equal(io.read_image(path).data, np.zeros((4, 4), np.uint8))


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.tif"):
        io.read_image(tmp_path / "nothere.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff at all")
    with pytest.raises(ValueError, match="not a readable TIFF.*bad.tif"):
        io.read_image(bad)


def test_read_image_memory_mapped(tmp_path):
    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    path = io.write_image(tmp_path / "img.tif", data, pixel_size_nm=80.0, axes="ZYX")
    img = io.read_image(path, mmap=True)
    assert isinstance(img.data, np.memmap) and img.data.shape == data.shape
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size_nm == pytest.approx(80.0) and img.axes == "ZYX"
    # a compressed TIFF cannot be mapped: it is read (zarr when installed, else into memory)
    tifffile.imwrite(tmp_path / "zip.tif", data[0], compression="zlib")
    np.testing.assert_array_equal(
        np.asarray(io.read_image(tmp_path / "zip.tif", mmap=True).data[:]), data[0]
    )


def test_create_image_is_atomic(tmp_path):
    path = tmp_path / "out.tif"
    with io.create_image(path, (3, 20, 30), np.float32, pixel_size_nm=65.0, axes="ZYX") as out:
        assert not path.exists() and len(_partials(tmp_path)) == 1
        out[1] = 7.0
    img = io.read_image(path)
    assert img.data.dtype == np.float32 and img.data[1].min() == 7 and img.data[0].max() == 0
    assert img.pixel_size_nm == pytest.approx(65.0) and not _partials(tmp_path)
    with pytest.raises(FileExistsError, match="exists"):
        with io.create_image(path, (2, 2), np.float32):
            pass
    # an error inside the block: no file, no partial file
    other = tmp_path / "other.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with io.create_image(other, (20, 30), np.uint16) as out:
            out[:10] = 1
            raise RuntimeError("boom")
    assert not other.exists() and not _partials(tmp_path)


def test_strict_json_refuses_nan_and_names_the_entry():
    assert json.loads(io.json_text({"a": [1.0, 2]}, "x")) == {"a": [1.0, 2]}
    with pytest.raises(ValueError, match=r"the estimate holds a NaN .* \(noise\.beta\)"):
        io.json_text({"noise": {"alpha": 0.0, "beta": float("nan")}}, "the estimate")
    with pytest.raises(ValueError, match=r"\(coefficients\.1\)"):
        io.json_text({"coefficients": np.array([0.0, np.inf])}, "the estimate")


# --- faults: full disks, special files, concurrent and killed writers -------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_sentence_and_leaves_no_file(tmp_path, monkeypatch):
    """Free space is checked before writing; a disk that fills up meanwhile fails when the
    output's blocks are reserved (posix_fallocate), not with a SIGBUS when its memory map
    writes into a hole; small files (JSON) name their path too."""
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: free._replace(free=5_000_000))
    big = tmp_path / "big.tif"
    needs = r"not enough space on .*: the output big.tif needs 16\.8 MB, 5\.0 MB free"
    with pytest.raises(outputs.OutputDiskError, match=needs):
        with io.create_image(big, (2048, 2048), np.float32):
            pass
    with pytest.raises(outputs.OutputDiskError, match="needs 16.8 MB"):
        io.write_image(big, np.zeros((2048, 2048), np.float32))
    monkeypatch.undo()
    if hasattr(os, "posix_fallocate"):
        monkeypatch.setattr(os, "posix_fallocate", _no_space)
        with pytest.raises(outputs.OutputDiskError, match=f"the disk is full while writing {big}$"):
            with io.create_image(big, (256, 256), np.float32) as out:
                out[:] = 1.0
    monkeypatch.setattr(tifffile, "imwrite", _no_space)
    with pytest.raises(outputs.OutputDiskError) as error:
        io.write_image(big, np.zeros((8, 8), np.float32))
    assert str(error.value) == f"the disk is full while writing {big}"
    assert error.value.errno == errno.ENOSPC
    monkeypatch.setattr(Path, "write_text", _no_space)
    with pytest.raises(outputs.OutputDiskError, match=r"full while writing .*\.json"):
        io.atomic_write(tmp_path / "e.json", lambda tmp: tmp.write_text("{}"))
    assert list(tmp_path.iterdir()) == []


def test_special_files_are_never_replaced(tmp_path):
    """As root, ``--overwrite`` once renamed a new file over ``/dev/full``: a device, a
    pipe or a folder in the way is refused, ``overwrite`` or not."""
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is not a regular file"):
            io.write_image(fifo, np.zeros((4, 4), np.uint8), overwrite=overwrite)
        with pytest.raises(FileExistsError, match="is not a regular file"):
            with io.create_image(fifo, (4, 4), overwrite=overwrite):
                pass
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        io.write_image(tmp_path / "folder.tif", np.zeros((4, 4)), overwrite=True)


def test_an_image_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not an image file"):
        io.read_image(tmp_path)


def test_a_stack_without_pixel_size_comes_back_without_one(tmp_path):
    """An ImageJ hyperstack's header holds 1 unit per pixel by default: it is not our pixel
    size (an output read back as 1 nm pixels was then 'too small' to identify)."""
    path = io.write_image(tmp_path / "z.tif", np.zeros((3, 32, 32), np.float32), axes="ZYX")
    assert io.read_image(path).pixel_size_nm is None
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and "unit" not in tif.imagej_metadata  # Fiji: pixels, not nm
    steps = io.write_image(
        tmp_path / "s.tif",
        np.zeros((3, 32, 32), np.float32),
        axes="ZYX",
        stack_steps={"spacing": 300.0},
    )
    image = io.read_image(steps)
    assert image.pixel_size_nm is None and image.stack_steps["spacing"] == 300.0


def test_one_writer_claims_an_output(tmp_path):
    out = tmp_path / "out.tif"
    with outputs.claim_output(out):
        assert (tmp_path / ".out.tif.lock").exists()
        with pytest.raises(outputs.OutputBusyError, match="being written by another run"):
            with outputs.claim_output(out):
                pass
    assert list(tmp_path.iterdir()) == []  # the lock file goes with the claim
    with outputs.claim_output(out):  # free again
        pass


_HOLD = """
import sys, time
from pathlib import Path
from napari_deepblur import outputs
out = Path(sys.argv[1])
with outputs.claim_output(out):
    (out.parent / ".out.tif.live0001.partial").touch()
    print("claimed", flush=True)
    time.sleep(120)
"""


def test_a_live_writers_partial_files_are_kept_a_killed_ones_removed(tmp_path):
    """Another process writing the output holds its claim: its temporary file stays. Killed
    with SIGKILL (no clean-up), its claim ends with it, and the next writer removes what
    it left (a 4096² float32 output leaves 67 MB)."""
    out = tmp_path / "out.tif"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        live = tmp_path / ".out.tif.live0001.partial"
        with pytest.raises(outputs.OutputBusyError):
            with outputs.claim_output(out):
                pass
        assert live.exists()
    finally:
        holder.kill()  # SIGKILL: no finally block runs in it
        holder.wait()
    stale_json = tmp_path / ".out.json.dead0002.partial"
    stale_json.write_text("{")
    with outputs.claim_output(out, also=[out.with_suffix(".json")]):
        assert not live.exists() and not stale_json.exists()
    assert list(tmp_path.iterdir()) == []


_READ_DAMAGED = """
import sys
from napari_deepblur import io, outputs
data = io.read_image(sys.argv[1], mmap=True).data
try:
    data[:]
except Exception as exc:
    print(type(exc).__name__, file=sys.stderr)
"""


def test_a_damaged_compressed_tiff_leaves_no_pending_zarr_reads(tmp_path):
    """zarr reads the tiles of a slice concurrently: one damaged tile failed the read and
    left the others pending, each printed at exit ("Task was destroyed but it is
    pending!" and a traceback) after the one-line error."""
    pytest.importorskip("zarr")
    image = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        damaged = [(page.dataoffsets[i], page.databytecounts[i]) for i in (3, 20, 40)]
    with open(path, "r+b") as f:
        for offset, count in damaged:
            f.seek(offset)
            f.write(b"\xff" * count)
    done = subprocess.run(
        [sys.executable, "-c", _READ_DAMAGED, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr.splitlines() == ["error"], done.stderr  # zlib.error, and nothing else
