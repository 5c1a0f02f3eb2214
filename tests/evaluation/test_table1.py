"""The table1 benchmark end to end with a tiny trained model (n=2, 128 px, two levels)."""

import json

import numpy as np
import pytest

from napari_deepblur.evaluation.table1 import (
    FAMILY,
    LEVELS,
    ROWS,
    draw_pair,
    format_table,
    run_table1,
    write_results,
)
from napari_deepblur.evaluation.testimages import (
    MICROSCOPY_IMAGES,
    SKIMAGE_IMAGES,
    fit_to_size,
    load_test_images,
)

SIZE = 128
RUN = dict(n=2, seed=3, size=SIZE, levels=("L0", "L2"), device="cpu", rl_validation=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from napari_deepblur.models import load_model
    from napari_deepblur.training.run import TrainOptions, train_model

    path = train_model(
        TrainOptions(
            out=tmp_path_factory.mktemp("tiny"),
            identification_steps=4,
            deblurring_steps=2,
            bank_size=8,
            batch_size=4,
            deblurring_batch_size=2,
            crop=96,
            quiet=True,
            device="cpu",
        )
    )
    return load_model(path, device="cpu")


@pytest.fixture(scope="module")
def images():
    return load_test_images(size=SIZE)[:3]


@pytest.fixture(scope="module")
def result(model, images):
    steps = []
    out = run_table1(model, images, progress=steps.append, **RUN)
    return out, steps


def test_default_test_images():
    images = load_test_images(size=64)
    names = [name for name, _ in images]
    assert len(images) == len(SKIMAGE_IMAGES) + len(MICROSCOPY_IMAGES)
    assert "camera" in names and "bpae_actin_400" in names
    for _, image in images:
        assert image.shape == (64, 64) and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1


def test_fit_to_size_crops_and_pads():
    image = np.arange(20.0).reshape(4, 5)
    assert fit_to_size(image, 2).tolist() == [[6.0, 7.0], [11.0, 12.0]]
    padded = fit_to_size(image, 11)  # more than one reflection
    assert padded.shape == (11, 11)
    assert set(np.unique(padded)) <= set(image.ravel())


def test_images_from_a_folder(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "b.tif", np.arange(100, dtype=np.uint16).reshape(10, 10))
    tifffile.imwrite(tmp_path / "a.tif", np.random.default_rng(0).random((70, 50, 3)))
    images = load_test_images(tmp_path, size=32)
    assert [name for name, _ in images] == ["a", "b"]
    assert all(im.shape == (32, 32) and im.min() >= 0 and im.max() <= 1 for _, im in images)


def test_pairs_share_gamma_across_levels_and_noise_matches_the_level(images):
    clean = draw_pair(images, 1, "L0", seed=3)
    noisy = draw_pair(images, 1, "H2", seed=3)
    np.testing.assert_array_equal(clean["gamma"], noisy["gamma"])
    assert np.abs(clean["gamma"]).max() <= FAMILY.parameter_scale
    np.testing.assert_allclose(clean["psf"].sum(), 1.0, rtol=1e-6)
    alpha, beta = LEVELS["H2"]
    residual = noisy["y"] - clean["y"]
    expected = np.sqrt(alpha * np.clip(clean["y"], 0, None) + beta**2)
    assert np.std(residual / expected) == pytest.approx(1.0, abs=0.05)
    other = draw_pair(images, 1, "H2", seed=4)
    assert not np.array_equal(other["y"], noisy["y"])


def test_structure(result):
    out, steps = result
    assert list(out["results"]) == ["L0", "L2"]
    for level in ("L0", "L2"):
        rows = out["results"][level]
        assert list(rows) == list(ROWS)
        for row, metrics in rows.items():
            assert metrics["ssim"]["n"] == 2 and np.isfinite(metrics["ssim"]["mean"])
            assert ("psf_snr_db" in metrics) == (row not in ("y", "oracle"))
        assert {"seconds_identify", "seconds_deblur"} <= set(rows["Deep-Blur (ours)"])
        assert set(out["rl_iterations"][level]) == {"estimated", "airy"}
    # the Airy PSF is the same for every pair: its PSF SNR is one value per γ, equal in both rows
    airy = [
        out["values"]["L0"][r]["psf_snr_db"]
        for r in ("no identification: DN", "no identification: RL")
    ]
    assert airy[0] == airy[1]
    assert len(out["pairs"]) == 2 and len(out["pairs"][0]["gamma"]) == 7
    assert out["model"]["sha256"] and out["machine"]["cpu_count"]
    assert set(out["seconds_per_image"]) == {"identify", "deblur"}
    assert steps[-1].done == steps[-1].total == 2 * (2 + 1)
    table = format_table(out)
    assert "Deep-Blur (ours)" in table and "PSF SNR" in table and "L2" in table


def test_every_row_sees_the_same_y(images, model):
    # the y row scores draw_pair's y: recomputing it gives the recorded SSIM exactly
    from napari_deepblur.evaluation.metrics import ssim

    pair = draw_pair(images, 0, "L2", seed=3)
    out = run_table1(model, images, rows=("y",), **{**RUN, "levels": ("L2",), "n": 1})
    assert out["values"]["L2"]["y"]["ssim"][0] == ssim(pair["y"], pair["x"])
    assert out["rl_iterations"] == {}


def test_deterministic(result, model, images):
    again = run_table1(model, images, **RUN)
    first = result[0]
    for level, rows in first["values"].items():
        for row, metrics in rows.items():
            for metric, values in metrics.items():
                if not metric.startswith("seconds"):
                    assert again["values"][level][row][metric] == values, (level, row, metric)
    assert again["rl_iterations"] == first["rl_iterations"]


def test_write_results(result, tmp_path):
    out, _ = result
    json_path, csv_path = write_results(out, tmp_path)
    loaded = json.loads(json_path.read_text())
    assert loaded["parameters"]["n"] == 2 and loaded["results"]["L0"]["y"]["ssim"]["n"] == 2
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "level,alpha,beta,row,metric,mean,std,n"
    assert any(line.startswith("L2,0.005,0.075,Deep-Blur (ours),psf_snr_db,") for line in lines)
    with pytest.raises(FileExistsError):
        write_results(out, tmp_path)


def test_cli(model, tmp_path, capsys):
    import argparse

    from napari_deepblur.cli.evaluate import add_evaluate_parser

    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    folder = tmp_path / "images"
    folder.mkdir()
    import tifffile

    tifffile.imwrite(folder / "x.tif", load_test_images(size=96)[0][1])
    args = parser.parse_args(
        ["evaluate", "--model", str(model.path), "--images", str(folder), "--n", "1",
         "--size", "96", "--levels", "L1", "--out", str(tmp_path / "out"), "--device", "cpu",
         "--quiet"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "L1" in capsys.readouterr().out
    assert (tmp_path / "out" / "table1.csv").exists()


def test_cli_records_the_table_in_the_model_card(model, tmp_path, capsys):
    import shutil

    from napari_deepblur.cli import main
    from napari_deepblur.models import load_model

    copy = tmp_path / "copy.safetensors"
    shutil.copy(model.path, copy)
    shutil.copy(model.path.with_suffix(".json"), copy.with_suffix(".json"))
    argv = ["evaluate", "--model", str(copy), "--n", "1", "--size", "96", "--levels", "L0",
            "--device", "cpu", "--precision", "float32", "--quiet", "--record-in-card"]  # fmt: skip
    assert main(argv) == 0
    card = json.loads(copy.with_suffix(".json").read_text())
    recorded = card["benchmarks"]["table1"]
    assert recorded["command"] == "deepblur " + " ".join(argv)
    assert recorded["precision"] == "float32"
    assert recorded["n"] == 1 and "L0" in recorded["results"]
    assert recorded["machine"]["device"] == "cpu"
    load_model(copy)  # the weights' checksum still matches
