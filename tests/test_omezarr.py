"""OME-Zarr in and out: metadata kept, a pyramid ome-zarr's reader opens, block-by-block
writing that a killed run resumes, and bad stores as sentences."""

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest

from napari_deepblur import batch, chunked, cli, formats, omezarr, outputs, pipeline
from napari_deepblur.samples import make_blurred_sample

zarr = pytest.importorskip("zarr")
writer = pytest.importorskip("ome_zarr.writer")

_WINDOW = {"min": 0, "max": 65535, "start": 0, "end": 4000}
CHANNELS = [
    {"label": "actin", "color": "00FF00", "window": _WINDOW},
    {"label": "dna", "color": "0000FF", "window": _WINDOW},
]
#: No NA or wavelength: the images are taken as sampled like the model (not resampled).
OPTICS: dict = {}


def _plane(seed: int, size: int = 288) -> np.ndarray:
    image = make_blurred_sample(seed, size)["image"]
    return (np.clip(image, 0, None) * 3000).astype(np.uint16)


def _store(path: Path, data: np.ndarray, chunks=64, pixel_um=0.074, unit="micrometer") -> Path:
    """An OME-Zarr image written by ome-zarr-py, as other tools write them."""
    axes = "cyx"[-data.ndim :]
    group = zarr.open_group(str(path), mode="w")
    writer.write_image(
        data, group, axes=axes, scale={"y": pixel_um, "x": pixel_um},
        axes_units={"y": unit, "x": unit} if unit else None, scale_factors=[2],
        storage_options={"chunks": (1,) * (data.ndim - 2) + (chunks, chunks)},
    )  # fmt: skip
    if data.ndim == 3:
        writer.add_metadata(group, {"omero": {"channels": CHANNELS[: data.shape[0]]}})
    return path


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return digest.hexdigest()


def _options(**kw):
    return batch.DeblurOptions(device="cpu", dtype="input", optics=dict(OPTICS), **kw)


def test_round_trip_keeps_metadata_and_writes_a_readable_pyramid(tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    stack = np.stack([_plane(0), _plane(1)])
    src = _store(tmp_path / "in.ome.zarr", stack)
    before = _tree_digest(src)
    out = tmp_path / "out.ome.zarr"
    # channels are not planes: one estimate for both only when given (here the first's)
    given = formats.write_estimate_json(
        tmp_path / "actin.json", pipeline.identify(stack[0], device="cpu")
    )
    argv = ["deblur", str(src), "-o", str(out), "--chunk-px", "144", "--dtype", "input",
            "--estimate", str(given), "--device", "cpu", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "2 pyramid level(s)" in capsys.readouterr().out
    assert _tree_digest(src) == before  # the input is only read
    node = next(iter(Reader(parse_url(str(out)))()))
    assert [tuple(level.shape) for level in node.data] == [(2, 288, 288), (2, 144, 144)]
    assert node.metadata["channel_names"] == ["actin", "dna"]
    image = omezarr.read_ome_zarr(out)
    assert image.axes == "CYX" and image.pixel_size_nm == pytest.approx(74.0)
    assert [a.get("unit") for a in image.metadata["ome_zarr"]["axes"]] == [
        None, "micrometer", "micrometer"]  # fmt: skip
    assert image.metadata["deblurred_from"] == "in.ome.zarr"
    assert image.data.dtype == np.uint16 and not (out / omezarr.STATE_DIR).exists()
    # each plane as the in-memory pipeline deblurs it (blocks blend like tiles)
    estimate = formats.estimate_from_json(image.metadata["estimate"])
    for c in range(2):
        expected = pipeline.deblur(stack[c], estimate, device="cpu")
        expected = np.clip(np.rint(expected), 0, 65535)  # as stored in uint16
        got = np.asarray(image.data[c][:, :], np.float32)
        assert np.linalg.norm(got - expected) < 0.02 * np.linalg.norm(expected)
    # a finished output is refused, then replaced with --overwrite
    assert cli.main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0


def test_a_killed_run_resumes_without_redoing_its_blocks(tmp_path, monkeypatch):
    src = _store(tmp_path / "in.ome.zarr", _plane(2))
    whole = tmp_path / "whole.ome.zarr"
    pipeline.run(chunked.iter_deblur_zarr(src, whole, _options(), chunk_px=144))
    real, calls = chunked.deblur_block, []

    def killed_after_two(job, estimate, setup, block, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a killed run stops: between two blocks
        calls.append(block)
        return real(job, estimate, setup, block, **kw)

    out = tmp_path / "out.ome.zarr"
    monkeypatch.setattr(chunked, "deblur_block", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(chunked.iter_deblur_zarr(src, out, _options(), chunk_px=144))
    assert len(list((out / omezarr.STATE_DIR / "done").iterdir())) == 2
    with pytest.raises(omezarr.NotOmeZarrError, match="unfinished output of deepblur"):
        omezarr.read_ome_zarr(out)
    first, calls[:] = list(calls), []

    def counted(job, estimate, setup, block, **kw):
        calls.append(block)
        return real(job, estimate, setup, block, **kw)

    monkeypatch.setattr(chunked, "deblur_block", counted)
    result = pipeline.run(chunked.iter_deblur_zarr(src, out, _options(), chunk_px=144))
    assert result["resumed"] and result["blocks"] == 4
    assert len(calls) == 2 and not set(calls) & set(first)  # only the blocks not done
    a, b = (omezarr.read_ome_zarr(p).data for p in (out, whole))
    np.testing.assert_array_equal(a[:, :], b[:, :])


def test_bad_stores_are_sentences(tmp_path, monkeypatch):
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("data", shape=(64, 64), dtype="uint16")
    with pytest.raises(omezarr.NotOmeZarrError, match="a zarr group but not an OME-Zarr image"):
        omezarr.read_ome_zarr(tmp_path / "plain.zarr")
    with pytest.raises(FileNotFoundError, match="OME-Zarr store not found"):
        omezarr.read_ome_zarr(tmp_path / "none.ome.zarr")
    bare = _store(tmp_path / "bare.ome.zarr", _plane(0, 64), pixel_um=1.0, unit=None)
    with pytest.warns(RuntimeWarning, match="no physical pixel size .* sampled like the model"):
        assert omezarr.read_ome_zarr(bare).pixel_size_nm is None
    unitless = _store(tmp_path / "unitless.ome.zarr", _plane(0, 64), pixel_um=0.074, unit=None)
    with pytest.warns(RuntimeWarning, match=r"without a unit: micrometres are assumed"):
        assert omezarr.read_ome_zarr(unitless).pixel_size_nm == pytest.approx(74.0)
    tiny = _store(tmp_path / "tiny.ome.zarr", _plane(0, 192), chunks=32)
    with pytest.warns(RuntimeWarning, match=r"chunks of 32×32 px, smaller than the tile overlap"):
        pipeline.run(chunked.iter_deblur_zarr(tiny, tmp_path / "o.ome.zarr", _options(),
                                              chunk_px=192))  # fmt: skip
    with pytest.raises(ValueError, match="output chunks must be at least 128 px"):
        pipeline.run(chunked.iter_deblur_zarr(tiny, tmp_path / "p.ome.zarr", _options(),
                                              chunk_px=64))  # fmt: skip
    assert not (tmp_path / "p.ome.zarr").exists()
    import shutil

    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: free._replace(free=1000))
    needs = r"not enough space on .*: the output q.ome.zarr needs 0\.1 MB, 0\.0 MB free"
    with pytest.raises(outputs.OutputDiskError, match=needs):  # before identifying
        pipeline.run(chunked.iter_deblur_zarr(tiny, tmp_path / "q.ome.zarr", _options()))
    assert not (tmp_path / "q.ome.zarr").exists()


@pytest.mark.parametrize(
    "code, says",
    [(errno.ENOSPC, "the disk is full while writing"), (errno.EROFS, "file system is read-only")],
)
def test_a_full_or_read_only_disk_is_one_line_and_the_input_is_untouched(
    tmp_path, monkeypatch, capsys, code, says
):
    import zarr.storage._local as local

    src = _store(tmp_path / "in.ome.zarr", _plane(3))
    before = _tree_digest(src)
    out = tmp_path / "out.ome.zarr"
    real = local._put

    def failing(path, value, *args, **kwargs):
        if str(path).startswith(str(out)) and "/0/c/" in str(path):  # the deblurred chunks
            raise OSError(code, "disk")
        return real(path, value, *args, **kwargs)

    monkeypatch.setattr(local, "_put", failing)
    argv = ["deblur", str(src), "-o", str(out), "--chunk-px", "144", "--device", "cpu",
            "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepblur: error: ") and says in err and str(out) in err
    assert _tree_digest(src) == before
    assert isinstance(outputs.disk_error(OSError(code, "x"), out), outputs.OutputDiskError)


def test_blocks_on_a_dask_cluster_and_in_a_batch_give_the_same_store(tmp_path):
    """The OME-Zarr path on a two-worker LocalCluster (each worker opens the stores and the
    model by path) writes what this process writes; ``deepblur batch`` takes OME-Zarr
    inputs (OUT/<name>.ome.zarr) beside TIFFs, and resumes an unfinished one."""
    distributed = pytest.importorskip("distributed")
    src = _store(tmp_path / "in.ome.zarr", _plane(4))
    here = tmp_path / "here.ome.zarr"
    pipeline.run(chunked.iter_deblur_zarr(src, here, _options(), chunk_px=144))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        there = tmp_path / "there.ome.zarr"
        result = pipeline.run(
            chunked.iter_deblur_zarr(src, there, _options(), chunk_px=144, client=client)
        )
        assert result["blocks"] == 4
        a, b = (omezarr.read_ome_zarr(p).data for p in (here, there))
        np.testing.assert_array_equal(a[:, :], b[:, :])
        out = tmp_path / "batch"
        done = pipeline.run(
            batch.iter_batch([src], out, _options(), client=client, task=chunked.deblur_any)
        )
    assert not done.failed and len(done.done) == 1
    assert omezarr.read_ome_zarr(out / "in.ome.zarr").data.shape == (288, 288)


def test_a_large_plane_is_identified_from_windows_across_the_field():
    """3 × 3 windows (corners, edges, centre), each read on its own; windows with no
    structure (background around a specimen) are left out, with a warning."""
    windows = pipeline.sample_windows((4096, 5000), 1024)
    assert len(windows) == 9
    assert (windows[0][0].start, windows[0][1].start) == (0, 0)
    assert (windows[-1][0].stop, windows[-1][1].stop) == (4096, 5000)
    assert (windows[4][0].start, windows[4][1].start) == (1536, 1988)
    assert len(pipeline.sample_windows((600, 600), 1024)) == 1
    scan = np.zeros((900, 900), np.float32)
    scan[320:580, 320:580] = make_blurred_sample(0, 260)["image"]  # structure in the middle
    reads = []

    class Recorded:
        shape, dtype = scan.shape, scan.dtype

        def __getitem__(self, key):
            reads.append(scan[key].shape)
            return scan[key]

    with pytest.warns(RuntimeWarning, match="8 of 9 sampled windows have no structure"):
        est = pipeline.run(
            pipeline.iter_identify_sampled(Recorded(), window_px=256, device="cpu", augment=False)
        )
    assert len(est.coefficients) == 7 and reads == [(256, 256)] * 9
