"""The ``microtex`` command line (in-process, plus one subprocess), and the demo."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

import microtex
from microtex import synth
from microtex.cli import main
from microtex.demo import leave_one_out_1nn
from microtex.features.api import featurize
from microtex.features.texture import TextureFeaturizer
from microtex.io import FeatureTable

from _helpers import run_python

N_BLOCK_FIRST_MEAN_GRAM = 1472 + 2080 + 8256 + 32896 + 131328 + 131328  # default taps and pools


def save_png(path, image) -> pathlib.Path:
    Image.fromarray(np.round(np.asarray(image) * 255).astype(np.uint8)).save(path)
    return pathlib.Path(path)


@pytest.fixture
def image_dir(tmp_path):
    """Three 40x40 Perlin textures and one corrupt PNG (sorted: a, b, bad, c)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (k, theta, seed) in zip("abc", [(3, 0.0, 1), (6, 1.0, 2), (4, 2.0, 3)]):
        save_png(folder / f"{name}.png", synth.perlin_texture(40, k, theta, 1.5, seed=seed))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return folder


def good_files(folder):
    return [folder / f"{name}.png" for name in "abc"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def summary_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("featurized")]
    assert len(lines) == 1, out
    return lines[0]


# ------------------------------------------------------------------ featurize
@pytest.mark.torch
def test_featurize_default_backbone_npz(default_onnx, image_dir, tmp_path, capsys):
    output = tmp_path / "out" / "features.npz"
    code, out, err = run(capsys, "featurize", image_dir, "-o", output, "--no-progress")
    assert code == 0, err
    table = FeatureTable.read(output)
    assert table.features.shape == (3, N_BLOCK_FIRST_MEAN_GRAM)
    assert [pathlib.Path(i).name for i in table.ids] == ["a.png", "b.png", "c.png"]
    assert table.columns[0] == "relu1_1/mean/0" and table.columns[-1] == "relu5_1/gram/131327"
    assert np.isfinite(table.features).all() and np.abs(table.features).max() > 0
    assert "bad.png" in err and "skipped" in err and "Traceback" not in err
    line = summary_line(out)
    assert "featurized 3 images (1 skipped)" in line
    assert f"{N_BLOCK_FIRST_MEAN_GRAM} features" in line
    assert re.search(r"\d+\.\d+ images/s", line)
    assert str(output) in line
    assert sorted(p.name for p in output.parent.iterdir()) == ["features.npz"]


@pytest.mark.torch
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_featurize_taps_and_pools_to_csv_and_parquet(
    cnn_relu1, image_dir, tmp_path, capsys, suffix
):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    output = tmp_path / f"features{suffix}"
    code, out, err = run(
        capsys, "featurize", image_dir, "-o", output, "--taps", "relu1_1", "--pool", "mean,max",
        "--no-progress", "--threads", "1"
    )
    assert code == 0, err
    table = FeatureTable.read(output)
    assert table.columns == [f"relu1_1/{p}/{i}" for p in ("mean", "max") for i in range(64)]
    assert [pathlib.Path(i).name for i in table.ids] == ["a.png", "b.png", "c.png"]
    expected = (
        TextureFeaturizer(taps="relu1_1", pool="mean,max")
        .fit(None)
        .transform(good_files(image_dir))
    )
    np.testing.assert_allclose(table.features, expected, rtol=1e-5, atol=1e-7)
    assert "128 features" in summary_line(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features" + suffix, "images"]


@pytest.mark.torch
def test_featurize_precision_fp16(cnn_relu1, image_dir, tmp_path, capsys, caplog):
    output = tmp_path / "half.npz"
    argv = [
        "featurize",
        *good_files(image_dir),
        "--taps",
        "relu1_1",
        "--pool",
        "mean,gram",
        "--device",
        "cpu",
        "--no-progress",
    ]
    code, _, err = run(capsys, *argv, "-o", output, "--precision", "fp16")
    assert code == 0, err
    assert "precision='fp16' on the CPU" in caplog.text
    half = FeatureTable.read(output).features
    expected = (
        TextureFeaturizer(taps="relu1_1", pool="mean,gram", precision="fp16", device="cpu")
        .fit(None)
        .transform(good_files(image_dir))
    )
    np.testing.assert_array_equal(half, expected)
    code, _, err = run(capsys, *argv, "-o", tmp_path / "full.npz")
    assert code == 0, err
    full = FeatureTable.read(tmp_path / "full.npz").features
    assert 1e-7 < np.abs(half - full).max() / np.abs(full).max() < 5e-3


@pytest.mark.torch
def test_featurize_conv_algorithm(cnn_relu1, image_dir, tmp_path, capsys):
    argv = [
        "featurize",
        *good_files(image_dir),
        "--taps",
        "relu3_1",
        "--pool",
        "mean",
        "--device",
        "cpu",
        "--no-progress",
    ]
    tables = {}
    for algorithm in ("auto", "direct"):
        output = tmp_path / f"{algorithm}.npz"
        code, _, err = run(capsys, *argv, "-o", output, "--conv-algorithm", algorithm)
        assert code == 0, err
        tables[algorithm] = FeatureTable.read(output).features
    for algorithm, table in zip(("winograd", "direct"), tables.values()):
        expected = (
            TextureFeaturizer(taps="relu3_1", pool="mean", device="cpu", conv_algorithm=algorithm)
            .fit(None)
            .transform(good_files(image_dir))
        )
        np.testing.assert_array_equal(table, expected)
    winograd, direct = tables["auto"], tables["direct"]
    assert 0 < np.abs(winograd - direct).max() / np.abs(direct).max() < 2e-5


@pytest.fixture
def cnn_relu1(shallow_onnx):
    """Skips without torch (the relu1_1 graph is exported on first use)."""
    return shallow_onnx


def test_featurize_raw(image_dir, tmp_path, capsys):
    output = tmp_path / "raw.npz"
    code, out, err = run(
        capsys, "featurize", image_dir, "-o", output, "--raw", "--pool", "mean,gram"
    )
    assert code == 0, err
    table = FeatureTable.read(output)
    assert list(table.columns) == ["raw/mean/0", "raw/gram/0"]
    images = np.stack([np.asarray(Image.open(p), np.float64) / 255 for p in good_files(image_dir)])
    flat = images.reshape(3, -1)
    np.testing.assert_allclose(table.features[:, 0], flat.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(table.features[:, 1], (flat**2).mean(axis=1), rtol=1e-6)
    assert "featurized 3 images (1 skipped) -> 2 features" in summary_line(out)


@pytest.mark.parametrize(("size", "expected_max"), [("20", 0.25), ("20x10", 0.125), ("40", 1.0)])
def test_featurize_image_size(tmp_path, capsys, size, expected_max):
    image = np.zeros((40, 40))
    image[0, 0] = 1.0  # one white pixel: its area average shows the resize factor
    save_png(tmp_path / "dot.png", image)
    output = tmp_path / "f.csv"
    code, _, err = run(
        capsys, "featurize", tmp_path / "dot.png", "-o", output, "--raw", "--pool", "max",
        "--image-size", size
    )
    assert code == 0, err
    np.testing.assert_allclose(FeatureTable.read(output).features, [[expected_max]], rtol=1e-6)


def test_featurize_crop_bottom(tmp_path, capsys):
    image = np.full((40, 40), 0.2)
    image[-4:] = 1.0  # white info band
    save_png(tmp_path / "banded.png", image)
    results = {}
    for crop in ("0", "3", "4"):
        output = tmp_path / f"crop{crop}.npz"
        code, _, err = run(
            capsys, "featurize", tmp_path / "banded.png", "-o", output, "--raw", "--pool",
            "max,mean", "--crop-bottom", crop
        )
        assert code == 0, err
        results[crop] = FeatureTable.read(output).features[0]
    np.testing.assert_allclose(results["4"], [51 / 255, 51 / 255], rtol=1e-6)
    assert results["3"][0] == 1.0 and results["0"][0] == 1.0


@pytest.mark.parametrize("verbose", [False, True])
def test_featurize_auto_crop_is_reported(tmp_path, capsys, verbose):
    body = 0.3 + 0.4 * synth.perlin_texture(48, 4, 0.5, 1.0, seed=3)
    banded = np.concatenate([body, np.ones((6, 48))])  # a white 6-row info band
    save_png(tmp_path / "a_banded.png", banded)
    save_png(tmp_path / "b_plain.png", body)
    output = tmp_path / "f.npz"
    argv = ["featurize", tmp_path, "-o", output, "--raw", "--pool", "mean", "--crop-bottom", "auto"]
    code, _, err = run(capsys, *(["-v"] if verbose else []), *argv)
    assert code == 0, err
    listed = "" if verbose else " (microtex -v featurize ... lists them)"
    assert f"auto-crop: removed a bottom info band of 6 rows from 1 of 2 images{listed}" in err
    table = FeatureTable.read(output)
    expected = np.round(body * 255).mean() / 255
    np.testing.assert_allclose(table.features[:, 0], [expected, expected], rtol=1e-6)
    code, _, err = run(
        capsys, "featurize", tmp_path / "b_plain.png", "-o", output, "--raw", "--crop-bottom",
        "auto"
    )
    assert code == 0 and "auto-crop: no bottom info band found in 1 images" in err


def test_featurize_tiles(image_dir, tmp_path, capsys):
    output = tmp_path / "tiles.npz"
    code, out, err = run(
        capsys, "featurize", image_dir, "-o", output, "--raw", "--pool", "mean", "--tile", "16",
        "--tile-stride", "12"
    )
    assert code == 0, err
    # 40x40 images, 16-pixel tiles every 12 pixels: origins 0, 12, 24 on each axis
    assert re.search(
        r"featurized 3 images \(1 skipped\) in 27 tiles -> 1 features .* tiles/s", summary_line(out)
    )
    table = FeatureTable.read(output)
    assert table.ids[:4] == [
        f"{image_dir / 'a.png'}@{r},{c}" for r, c in [(0, 0), (0, 12), (0, 24), (12, 0)]
    ]
    image = np.asarray(Image.open(image_dir / "c.png"), np.float64) / 255
    np.testing.assert_allclose(table.features[-1, 0], image[24:40, 24:40].mean(), rtol=1e-6)
    code, _, err = run(
        capsys, "featurize", image_dir, "-o", output, "--tile", "4", "--taps", "relu4_1"
    )
    assert code == 2 and "tile=4 is smaller than 8 pixels" in err


@pytest.mark.parametrize("case", ["folder", "under-a-file", "read-only"])
def test_an_output_that_cannot_be_written_fails_before_any_work(
    image_dir, tmp_path, capsys, monkeypatch, case
):
    import os

    import microtex.features.api

    def no_work(*args, **kwargs):
        raise AssertionError("featurized before checking the output")

    monkeypatch.setattr(microtex.features.api, "featurize", no_work)
    monkeypatch.setattr(TextureFeaturizer, "fit", no_work)
    output = {"folder": tmp_path / "out.npz", "under-a-file": tmp_path / "file" / "f.npz",
              "read-only": tmp_path / "locked" / "f.npz"}[case]  # fmt: skip
    if case == "folder":
        output.mkdir()
    elif case == "under-a-file":
        output.parent.write_text("not a folder")
    else:
        output.parent.mkdir()
        real = os.access  # root may write anywhere: make this folder read-only for it too
        monkeypatch.setattr(os, "access", lambda p, mode: p != output.parent and real(p, mode))
    code, _, err = run(capsys, "featurize", image_dir, "-o", output, "--raw")
    assert code == 2 and err.startswith("microtex: error:")
    assert str(output) in err and ".tmp" not in err
    assert {"folder": "it is a folder", "under-a-file": "is a file, not a folder",
            "read-only": "is read-only"}[case] in err  # fmt: skip


def test_featurize_parquet_without_pyarrow_fails_before_any_work(
    image_dir, tmp_path, capsys, monkeypatch
):
    import sys

    import microtex.features.api

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)

    def no_work(*args, **kwargs):
        raise AssertionError("featurized before checking the output format")

    monkeypatch.setattr(microtex.features.api, "featurize", no_work)
    monkeypatch.setattr(TextureFeaturizer, "fit", no_work)
    output = tmp_path / "f.parquet"
    code, _, err = run(capsys, "featurize", image_dir, "-o", output, "--raw")
    assert code == 2
    assert "f.parquet" in err and "microtex[parquet]" in err
    assert not output.exists()


@pytest.mark.torch
def test_featurize_save_bundle_with_vlad(cnn_relu1, image_dir, tmp_path, capsys):
    output = tmp_path / "f.npz"
    bundle = tmp_path / "model"
    code, _, err = run(
        capsys, "featurize", image_dir, "-o", output, "--taps", "relu1_1", "--pool", "mean,vlad",
        "--n-words", "3", "--seed", "5", "--save-bundle", bundle
    )
    assert code == 0, err
    assert "bad.png" in err  # skipped while fitting VLAD words too
    table = FeatureTable.read(output)
    assert table.features.shape == (3, 64 + 3 * 64)
    loaded = TextureFeaturizer.load(bundle)
    assert loaded.vlad_dictionaries_["relu1_1"].shape == (3, 64)
    np.testing.assert_allclose(
        loaded.transform(good_files(image_dir)), table.features, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(np.linalg.norm(table.features[:, 64:], axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("bad_layer", ["relu9_1", "relu3_1,pool2"])
def test_featurize_unknown_layer(image_dir, tmp_path, capsys, bad_layer):
    output = tmp_path / "f.npz"
    code, _, err = run(capsys, "featurize", image_dir, "-o", output, "--taps", bad_layer)
    assert code == 2
    assert err.startswith("microtex: error: unknown layer")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "relu1_1" in err and "relu5_4" in err
    assert not output.exists()


@pytest.mark.parametrize("name", ["f.xlsx", "features", "f.npz.tmp"])
def test_featurize_bad_output_suffix(image_dir, tmp_path, capsys, name):
    output = tmp_path / name
    code, _, err = run(capsys, "featurize", image_dir, "-o", output, "--raw")
    assert code == 2
    assert err.startswith("microtex: error:") and ".parquet, .npz or .csv" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_featurize_all_inputs_bad(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"nope")
    (tmp_path / "y.png").write_bytes(b"")
    output = tmp_path / "f.npz"
    code, out, err = run(
        capsys, "featurize", tmp_path / "x.png", tmp_path / "y.png", tmp_path / "z.png", "-o",
        output, "--raw"
    )
    assert code == 1
    for name in ("x.png", "y.png", "z.png"):
        assert name in err
    assert "microtex: error: no image could be featurized" in err
    assert not output.exists() and out == ""


def test_featurize_all_inputs_bad_with_vlad(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"nope")
    output = tmp_path / "f.npz"
    code, _, err = run(
        capsys, "featurize", tmp_path / "x.png", "-o", output, "--raw", "--pool", "mean,vlad"
    )
    assert not output.exists()
    assert code == 1
    assert "microtex: skipped" in err and "x.png" in err


def test_featurize_on_error_raise(image_dir, tmp_path, capsys):
    output = tmp_path / "f.npz"
    code, _, err = run(capsys, "featurize", image_dir, "-o", output, "--raw", "--on-error", "raise")
    assert code == 2 and "bad.png" in err and err.startswith("microtex: error:")
    assert not output.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--image-size", "ten"],
        ["--crop-bottom", "-2"],
        ["--batch-size", "0"],
        ["--device", "tpu"],
        ["--precision", "fp64"],
        ["--conv-algorithm", "fft"],
        ["--pool"],
        ["--max-pixels", "0"],
        ["--max-pixels", "many"],
        ["--image-size", "100000"],
    ],
)
def test_featurize_bad_arguments_exit_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["featurize", str(tmp_path), "-o", str(tmp_path / "f.npz"), *argv])
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_version_subprocess():
    result = run_python("-m", "microtex.cli", "--version", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"microtex {microtex.__version__}"


# ------------------------------------------------------------------ demo
@pytest.mark.torch
def test_demo(default_onnx, tmp_path, capsys):
    report = tmp_path / "report"
    code, out, err = run(
        capsys, "demo", "--n-per-class", "3", "--size", "64", "-o", report, "--no-progress"
    )
    assert code == 0, err
    names = sorted(p.name for p in report.iterdir())
    assert names == ["examples.png", "features.npz", "labels.csv", "pca.png", "summary.json"]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["images"] == 12
    assert summary["features"] == N_BLOCK_FIRST_MEAN_GRAM
    assert summary["leave_one_out_1nn_accuracy"] >= 0.75
    assert summary["image_size"] == 64 and len(summary["classes"]) == 4
    assert 0 < sum(summary["pca_explained_variance_ratio"]) <= 1
    table = FeatureTable.read(report / "features.npz")
    assert table.features.shape == (12, summary["features"])
    labels = (report / "labels.csv").read_text().splitlines()
    assert labels[0] == "image,class,k,theta_deg,amplitude" and len(labels) == 13
    assert [row.split(",")[1] for row in labels[1:]] == [str(c) for c in range(4) for _ in range(3)]
    for png in ("pca.png", "examples.png"):
        path = report / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    assert "demo: 12 textures" in out and f"{N_BLOCK_FIRST_MEAN_GRAM} features" in out
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_leave_one_out_1nn_hand_made():
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert leave_one_out_1nn(X, np.array([0, 0, 0, 1])) == 0.5  # 2 and 3 are each other's nearest
    assert leave_one_out_1nn(X, np.array([0, 0, 1, 1])) == 1.0
    assert leave_one_out_1nn(X, np.array([0, 1, 0, 1])) == 0.0
    points = np.array([[0.0, 0.0], [0.0, 3.0], [4.0, 0.0], [4.0, 2.9]])
    # nearest: 0 -> 1 (3.0), 1 -> 0 (3.0), 2 -> 3 (2.9), 3 -> 2 (2.9)
    assert leave_one_out_1nn(points, ["a", "a", "b", "a"]) == 0.5
    assert leave_one_out_1nn(points, np.array(["a", "a", "b", "b"])) == 1.0


def test_save_bundle_into_a_non_bundle_folder_fails_before_writing(tmp_path, capsys):
    from PIL import Image

    from microtex.synth import perlin_texture

    image = (perlin_texture(40, 4, 0.3, 1.0, seed=0) * 255).astype("uint8")
    Image.fromarray(image).save(tmp_path / "a.png")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    output = tmp_path / "f.npz"
    code = main(
        [
            "featurize",
            str(tmp_path / "a.png"),
            "-o",
            str(output),
            "--raw",
            "--save-bundle",
            str(occupied),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "occupied" in err and "not a microtex bundle" in err
    assert not output.exists()
    assert (occupied / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is as good as a new one
    code = main(["featurize", str(tmp_path / "a.png"), "-o", str(output), "--raw",
                 "--save-bundle", str(empty), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert TextureFeaturizer.load(empty).taps_ == ("raw",)


@pytest.mark.torch
def test_deprecated_pooling_option_still_works_and_says_so(cnn_files, tmp_path, capsys):
    outputs = {}
    for option in ("--pooling", "--block-pooling"):
        output = tmp_path / f"{option.strip('-')}.npz"
        code, _, err = run(
            capsys, "featurize", *cnn_files, "-o", output, "--taps", "relu2_1", "--pool", "mean",
            option, "avg", "--no-progress"
        )
        assert code == 0, err
        assert ("--pooling is deprecated" in err) == (option == "--pooling")
        outputs[option] = FeatureTable.read(output).features
    np.testing.assert_array_equal(outputs["--pooling"], outputs["--block-pooling"])
    code, _, err = run(
        capsys, "featurize", *cnn_files, "-o", tmp_path / "max.npz", "--taps", "relu2_1",
        "--pool", "mean", "--no-progress"
    )
    assert (
        np.abs(FeatureTable.read(tmp_path / "max.npz").features - outputs["--pooling"]).max() > 1e-3
    )


@pytest.fixture
def cnn_files(shallow_onnx, image_dir):
    return good_files(image_dir)


def test_one_image_too_short_for_crop_bottom_is_skipped_not_the_run(image_dir, tmp_path, capsys):
    save_png(image_dir / "d_short.png", np.zeros((12, 40)))
    output = tmp_path / "f.npz"
    code, out, err = run(capsys, "featurize", image_dir, "-o", output, "--raw",
                         "--crop-bottom", "20", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "d_short.png: crop_bottom=20 must be smaller than the image height 12" in err
    ids = FeatureTable.read(output).ids
    assert [pathlib.Path(i).name for i in ids] == ["a.png", "b.png", "c.png"]


@pytest.mark.torch
@pytest.mark.parametrize(
    ("argv", "params"),
    [
        (["--gram-normalization", "lubbers"], {"gram_normalization": "lubbers"}),
        (["--gram-layout", "full"], {"gram_layout": "full"}),
        (["--block-pooling", "avg"], {"block_pooling": "avg"}),
        (["--image-size", "20x24"], {"image_size": (20, 24)}),
        (["--pool", "mean,vlad", "--n-words", "3", "--seed", "4"],
         {"pool": "mean,vlad", "n_words": 3, "random_state": 4}),
        (["--backbone", "vgg16", "--weights", "VGG16"], {"backbone": "vgg16", "weights": "VGG16"}),
    ],
)
def test_each_cli_option_has_the_effect_of_the_api_option(cnn, image_dir, tmp_path, capsys, argv,
                                                          params):  # fmt: skip
    # an option the CLI ignored would give the default's features, not the API option's
    from _helpers import fake_vgg16_state, save_state

    weights = save_state(fake_vgg16_state(), tmp_path / "vgg16.pth")
    argv = [str(weights) if a == "VGG16" else a for a in argv]
    params = {k: str(weights) if v == "VGG16" else v for k, v in params.items()}
    base = {"taps": "relu1_1,relu2_1", "pool": "mean,gram", "device": "cpu"}
    output = tmp_path / "f.npz"
    code, _, err = run(capsys, "featurize", *good_files(image_dir), "-o", output, "--taps",
                       base["taps"], "--pool", base["pool"], "--device", "cpu", *argv,
                       "--no-progress")  # fmt: skip
    assert code == 0, err
    cli = FeatureTable.read(output)
    api = featurize(good_files(image_dir), **{"random_state": 0, **base, **params})
    default = featurize(good_files(image_dir), **base)
    assert list(cli.columns) == api.columns
    np.testing.assert_allclose(cli.features, api.features, rtol=1e-5, atol=1e-7)
    differs = cli.features.shape != default.features.shape or not np.allclose(
        cli.features, default.features, rtol=1e-3
    )
    assert differs, "the option changed nothing"


@pytest.mark.torch
def test_max_pixels_skips_the_images_that_do_not_fit(cnn, image_dir, tmp_path, capsys):
    output = tmp_path / "f.npz"
    argv = ["featurize", *good_files(image_dir), "-o", output, "--taps", "relu1_1,relu2_1",
            "--pool", "mean", "--device", "cpu", "--no-progress"]  # fmt: skip
    code, _, err = run(capsys, *argv, "--max-pixels", "1599")  # the images are 40x40
    assert code == 1 and not output.exists()
    assert err.count("is larger than max_pixels=1,599") == 3, err
    assert "pass image_size (--image-size)" in err and "tile (--tile)" in err
    code, out, err = run(capsys, *argv, "--max-pixels", "1600")
    assert code == 0 and "featurized 3 images (0 skipped)" in out, err
    code, _, err = run(capsys, *argv, "--max-pixels", "1000", "--image-size", "40")
    assert code == 2
    assert "image_size=40 makes every image at least 1,600 pixels, more than max_pixels" in err


def test_the_engine_option_reaches_the_featurizer(image_dir, tmp_path, capsys):
    # graph and kernels give the same numbers (tested in features); only the graph refuses VLAD
    code, _, err = run(capsys, "featurize", image_dir, "-o", tmp_path / "f.npz", "--taps",
                       "relu1_1", "--pool", "mean,vlad", "--engine", "graph")  # fmt: skip
    assert code == 2 and "engine='graph' cannot compute VLAD" in err


@pytest.fixture
def cnn(shallow_onnx):
    return shallow_onnx


def test_a_skipped_file_is_reported_once(image_dir, tmp_path):
    # a real process: in-process runs under pytest log to pytest's handlers, not stderr
    result = run_python("-m", "microtex.cli", "featurize", str(image_dir), "-o",
                        str(tmp_path / "f.npz"), "--raw", "--no-progress")  # fmt: skip
    err = result.stderr
    assert result.returncode == 0 and err.count("bad.png") == 1, err
    assert err.startswith("microtex: skipped") and "not a PNG, JPEG, TIFF or BMP" in err


def test_sigterm_during_the_table_write_leaves_nothing_and_exits_130(image_dir, tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    import signal

    def killed_midway(handle, **arrays):
        handle.write(b"PK partial")
        signal.raise_signal(signal.SIGTERM)  # what a batch scheduler sends

    monkeypatch.setattr(np, "savez", killed_midway)
    out = tmp_path / "out"
    code, _, err = run(capsys, "featurize", image_dir, "-o", out / "f.npz", "--raw",
                       "--no-progress")  # fmt: skip
    assert code == 130 and "interrupted" in err
    assert list(out.iterdir()) == []  # no half-written table, no hidden temporary
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was
