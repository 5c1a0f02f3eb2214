"""``deepblur batch`` on dask.distributed: a real two-worker LocalCluster (threads, to stay
fast), skipping finished outputs, recording failures, and the same through a scheduler
address from the command line."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_deepblur import batch, cli, io, pipeline
from napari_deepblur.samples import make_blurred_sample


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        image = make_blurred_sample(k, 96)["image"]
        io.write_image(folder / f"img{k}.tif", image, pixel_size_nm=74.0)
    return folder


def test_batch_on_two_workers_skips_finished(cluster, inputs, tmp_path):
    from distributed import Client

    out = tmp_path / "out"
    options = batch.DeblurOptions(device="cpu", tile_px=1024)
    with Client(cluster) as client:
        steps = []
        gen = batch.iter_batch([inputs], out, options, client=client)
        while True:
            try:
                steps.append(next(gen))
            except StopIteration as stop:
                result = stop.value
                break
        assert result.workers == 2 and len(result.done) == 3 and not result.failed
        assert [p.done for p in steps] == [1, 2, 3]
        for k in range(3):
            image = io.read_image(out / f"img{k}.tif")
            assert image.data.shape == (96, 96) and image.data.dtype == np.float32
            assert json.loads((out / f"img{k}.json").read_text())["estimate"]["coefficients"]
        # a re-run skips the finished files; a new broken input fails alone
        (inputs / "broken.tif").write_text("not a tiff")
        gen = batch.iter_batch([inputs], out, options, client=client)
        result = _drain(gen)
    assert len(result.skipped) == 3 and len(result.done) == 0
    assert len(result.failed) == 1 and "not a readable TIFF" in result.failed[0][1]
    assert not (out / "broken.tif").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_batch_cli_with_scheduler_address(cluster, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", str(inputs / "img0.tif"), str(inputs / "img1.tif"), "--out", str(out)]
    argv += ["--scheduler", cluster.scheduler_address, "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    assert "2 deblurred, 0 skipped" in capsys.readouterr().out
    assert cli.main(argv) == 0  # everything is done: nothing to submit
    assert "0 deblurred, 2 skipped" in capsys.readouterr().out


def test_warnings_on_workers_are_reported_per_file(cluster, inputs, tmp_path, capsys):
    image = io.read_image(inputs / "img0.tif").data
    stack = np.stack([image, np.full_like(image, 0.25)])  # an empty second plane
    io.write_image(inputs / "stack.tif", stack, axes="ZYX", pixel_size_nm=74.0)
    out = tmp_path / "out"
    argv = ["batch", str(inputs / "stack.tif"), str(inputs / "img1.tif"), "--out", str(out)]
    argv += ["--scheduler", cluster.scheduler_address, "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"deepblur: warning: {inputs / 'stack.tif'}: plane 2 of 2 is constant: "
        "copied unchanged (it shows no structure to deblur)"
    ]
    np.testing.assert_array_equal(io.read_image(out / "stack.tif").data[1], stack[1])


def test_batch_jobs_errors(inputs, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        batch.batch_jobs([inputs / "nope.tif"], tmp_path / "out")
    other = tmp_path / "other"
    other.mkdir()
    (other / "img0.tif").write_bytes((inputs / "img0.tif").read_bytes())
    with pytest.raises(ValueError, match="both be written"):
        batch.batch_jobs([inputs, other], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .tif"):
        batch.batch_jobs([empty], tmp_path / "out")


def test_batch_jobs_take_each_file_once_and_skip_hidden_files_and_folders(inputs, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cell.tif").write_bytes((inputs / "img0.tif").read_bytes())
    (folder / "._cell.tif").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (folder / "sub.tif").mkdir()
    jobs = batch.batch_jobs([folder / "cell.tif", folder], tmp_path / "out")
    assert jobs == [(folder / "cell.tif", tmp_path / "out" / "cell.tif")]


def test_batch_keeps_the_users_json_and_refuses_bad_options(cluster, inputs, tmp_path):
    from distributed import Client

    out = tmp_path / "done"
    out.mkdir()
    notes = out / "img0.json"  # where the estimate of img0.tif would go
    notes.write_text('{"my": "notes"}')
    options = batch.DeblurOptions(device="cpu")
    with Client(cluster) as client:
        jobs = batch.iter_batch([inputs / "img0.tif"], out, options, client=client)
        result = pipeline.run(jobs)
    assert result.failed and "img0.json already exists" in result.failed[0][1]
    assert notes.read_text() == '{"my": "notes"}' and [p.name for p in out.iterdir()] == [
        "img0.json"
    ]
    for bad in ({"tile_px": 0}, {"strength": float("nan")}, {"optics": {"fc": 0.3}}):
        with pytest.raises(ValueError):
            pipeline.run(batch.iter_batch([inputs], tmp_path / "out", batch.DeblurOptions(**bad)))
    assert not (tmp_path / "out").exists()


def test_unfinished_outputs_are_cleaned_up(tmp_path):
    src, dst = tmp_path / "a.tif", tmp_path / "out" / "a.tif"
    dst.parent.mkdir()
    partial = dst.parent / ".a.tif.1234abcd.partial"
    partial.write_bytes(b"half")
    dst.with_suffix(".json").write_text(json.dumps({"input": str(src), "estimate": {}}))
    other_src, other_dst = tmp_path / "b.tif", dst.parent / "b.tif"
    other_dst.with_suffix(".json").write_text('{"my": "notes"}')
    batch._remove_unfinished([(src, dst), (other_src, other_dst)], batch.BatchResult())
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.json"]


def test_ctrl_c_stops_a_batch_on_worker_processes_cleanly(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group): exit code 130, one line,
    no worker tracebacks, finished outputs complete and nothing half-written left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("distributed")
    folder = tmp_path / "in"
    folder.mkdir()
    image = make_blurred_sample(0, 256)["image"]
    for k in range(16):
        io.write_image(folder / f"img{k:02d}.tif", image, pixel_size_nm=74.0)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_deepblur.cli", "batch", str(folder)]
    proc = subprocess.Popen(
        [*command, "--out", str(out), "--workers", "2", "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*.tif")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    text = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text, text
    finished = sorted(p.stem for p in out.glob("*.tif"))
    assert 0 < len(finished) < 16
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.tif" for s in finished] + [f"{s}.json" for s in finished]
    )


def test_two_batches_on_one_scheduler_and_a_run_killed_before_its_tiff(cluster, inputs, tmp_path):
    """Same file names in two batches sharing a scheduler: each writes its own outputs. A
    run killed between the estimate and the TIFF (SIGKILL, a cluster's time limit) leaves the
    estimate: the next run redoes that file instead of refusing it; another file's JSON
    of that name is still never replaced."""
    from distributed import Client

    others = tmp_path / "others"
    others.mkdir()
    for k in range(3):
        image = make_blurred_sample(10 + k, 96)["image"]
        io.write_image(others / f"img{k}.tif", image, pixel_size_nm=74.0)
    options = batch.DeblurOptions(device="cpu")
    with Client(cluster) as client:
        first = batch.iter_batch([inputs], tmp_path / "a", options, client=client)
        next(first)  # submitted, one file done, the others still held by this batch
        second = _drain(batch.iter_batch([others], tmp_path / "b", options, client=client))
        _drain(first)
        assert len(second.done) == 3
        for k in range(3):
            mine = io.read_image(tmp_path / "b" / f"img{k}.tif").metadata["deblurred_from"]
            assert mine == f"img{k}.tif"
        restored = io.read_image(tmp_path / "b" / "img0.tif").data
        assert not np.allclose(restored, io.read_image(tmp_path / "a" / "img0.tif").data)

        (tmp_path / "b" / "img1.tif").unlink()  # killed before the rename: the estimate stays
        (tmp_path / "b" / "img2.tif").unlink()
        (tmp_path / "b" / "img2.json").write_text(json.dumps({"input": "someone else's"}))
        again = _drain(batch.iter_batch([others], tmp_path / "b", options, client=client))
    assert [Path(d["output"]).name for d in again.done] == ["img1.tif"]
    assert len(again.failed) == 1 and "img2.json already exists" in again.failed[0][1]


def test_a_rerun_redoes_an_output_whose_estimate_is_gone(cluster, inputs, tmp_path):
    """A finished TIFF without its estimate (deleted) is redone, not skipped for good; a
    TIFF that is not this input's output is still never replaced."""
    from distributed import Client

    out = tmp_path / "out"
    out.mkdir()
    options = batch.DeblurOptions(device="cpu")
    foreign = out / "img2.tif"
    io.write_image(foreign, np.zeros((8, 8), np.float32))  # the user's own file
    with Client(cluster) as client:
        first = _drain(batch.iter_batch([inputs], out, options, client=client))
        assert len(first.done) == 2 and first.skipped == [str(foreign)]
        (out / "img0.json").unlink()
        again = _drain(batch.iter_batch([inputs], out, options, client=client))
    assert [Path(d["output"]).name for d in again.done] == ["img0.tif"]
    assert sorted(Path(p).name for p in again.skipped) == ["img1.tif", "img2.tif"]
    assert json.loads((out / "img0.json").read_text())["estimate"]["coefficients"]
    assert io.read_image(foreign).data.shape == (8, 8) and not (out / "img2.json").exists()


@pytest.mark.slow
def test_two_batches_on_one_folder_keep_every_estimate(tmp_path):
    """Two ``deepblur batch`` processes on one folder lost every estimate: the run that
    found an output finished by the other deleted its JSON. Each output is claimed by one
    run, the other leaves it (busy or done) and cleans up only what it wrote."""
    import subprocess
    import sys

    pytest.importorskip("distributed")
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(6):
        io.write_image(folder / f"img{k}.tif", make_blurred_sample(k, 96)["image"])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_deepblur.cli", "batch", str(folder), "--out"]
    command += [str(out), "--workers", "1", "--device", "cpu", "--quiet"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    texts = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], texts
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"img{k}.tif" for k in range(6)] + [f"img{k}.json" for k in range(6)])
    done = sum(int(text.split(" deblurred")[0].split()[-1]) for text, _ in texts)
    assert done == 6, texts  # each file once
