"""The study grid: one network pass per image, the grid's numbers, resuming, inflation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microtex import featurize, synth
from microtex.analysis import study as study_module
from microtex.analysis.study import run_study
from microtex.cli.main import main
from microtex.engine.session import Session


def _save(folder, name, image):
    path = folder / name
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def stripes(tmp_path):
    """12 textures of two stripe scales (40x40), 2 per specimen."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths, labels, groups = [], [], []
    for k, name in [(3, "coarse"), (10, "fine")]:
        for i in range(6):
            image = synth.perlin_texture(40, k, 0.3 * i, 1.0, seed=i + 10 * k)
            paths.append(_save(folder, f"{name}{i}.png", image))
            labels.append(name)
            groups.append(f"{name}-{i // 2}")
    return paths, np.array(labels), np.array(groups)


@pytest.mark.torch
def test_the_grid_runs_the_network_once_per_image_and_resumes(shallow_onnx, stripes, tmp_path,
                                                              monkeypatch):  # fmt: skip
    paths, labels, groups = stripes
    runs = []
    real_run = Session.run

    def counting(self, inputs, outputs=None):
        runs.append(len(inputs))
        return real_run(self, inputs, outputs)

    monkeypatch.setattr(Session, "run", counting)
    options = {"output": tmp_path / "out", "taps": ("relu1_1", "relu2_1"), "n_estimators": 8,
               "n_repeats": 2, "n_words": 4, "device": "cpu", "n_threads": 1}  # fmt: skip
    report = run_study(paths, labels, groups, **options)
    assert sum(runs) == len(paths)  # 24 combinations x 2 splits, one network pass
    layers = [(r["layer"], r["pool"]) for r in report["results"]]
    assert layers == [(layer, pool) for layer in ("raw", "relu1_1", "relu2_1", "all")
                      for pool in ("mean", "max", "gram", "vlad")]  # fmt: skip
    features = {(r["layer"], r["pool"]): r["n_features"] for r in report["results"]}
    assert features[("relu1_1", "gram")] == 64 * 65 // 2
    assert features[("relu2_1", "vlad")] == 4 * 128
    assert features[("all", "mean")] == 64 + 128 and features[("raw", "max")] == 1
    for row in report["results"]:
        assert set(row) >= {"grouped", "image_level", "inflation", "seconds"}
        assert row["grouped"]["split"] == "grouped" and row["grouped"]["n_repeats"] == 2
    cnn = [r["grouped"]["f1_macro"]["mean"] for r in report["results"] if r["layer"] != "raw"]
    assert np.mean(cnn) > 0.8  # stripe scale is what the CNN layers see
    on_disk = json.loads((tmp_path / "out" / "study.json").read_text())
    assert on_disk["results"][5]["grouped"]["f1_macro"] == report["results"][5]["grouped"][
        "f1_macro"]  # fmt: skip
    csv_lines = (tmp_path / "out" / "study.csv").read_text().splitlines()
    assert csv_lines[0].startswith("layer,pool,n_features,f1_grouped_mean") and len(csv_lines) == 17
    for name in ("f1_grid.png", "confusion_best.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"

    # a second run reads the cache: no network at all, the same numbers
    def refuse(self, inputs, outputs=None):
        raise AssertionError("the network ran again")

    monkeypatch.setattr(Session, "run", refuse)
    again = run_study(paths, labels, groups, **options)
    assert [r["grouped"]["f1_macro"] for r in again["results"]] == [
        r["grouped"]["f1_macro"] for r in report["results"]]  # fmt: skip


@pytest.mark.torch
def test_cached_vectors_equal_the_featurizers(shallow_onnx, stripes, tmp_path):
    paths, _, _ = stripes
    from microtex.features.plan import make_plan

    plan = make_plan(taps=["relu1_1", "relu2_1"], pool="mean", engine="kernels", device="cpu")
    collector = study_module._Collector(plan, tmp_path, {"x": 1}, 16, None)
    arrays = collector.image(str(paths[0]), [])
    reference = featurize(paths[:1], taps="relu1_1,relu2_1", pool="mean,max,gram", device="cpu")
    for tap in ("relu1_1", "relu2_1"):
        for pool in ("mean", "max", "gram"):
            columns = [i for i, c in enumerate(reference.columns) if c.startswith(f"{tap}/{pool}/")]
            np.testing.assert_allclose(arrays[f"{tap}/{pool}"][0], reference.features[0, columns],
                                       rtol=1e-5, atol=1e-7)  # fmt: skip
    assert arrays["relu1_1/samples"].shape == (1, 16, 64)  # 16 positions x 64 channels
    assert arrays["relu2_1/samples"].dtype == np.float16


def _specimen_images(folder, n_specimens=8, per_specimen=4, seed=0):
    """Raw images whose brightness is the specimen's; class = specimen parity (no signal)."""
    rng = np.random.default_rng(seed)
    paths, labels, groups = [], [], []
    for specimen in range(n_specimens):
        level = rng.uniform(0.1, 0.9)
        for j in range(per_specimen):
            image = np.clip(rng.normal(level, 0.005, (24, 24)), 0, 1)
            paths.append(_save(folder, f"s{specimen}-{j}.png", image))
            labels.append("ab"[specimen % 2])
            groups.append(f"S{specimen}")
    return paths, np.array(labels), np.array(groups)


def test_specimen_effects_inflate_an_image_level_split(tmp_path):
    paths, labels, groups = _specimen_images(tmp_path)
    report = run_study(paths, labels, groups, output=tmp_path / "out", taps=(),
                       pools=("mean", "max"), n_estimators=30, n_repeats=3)  # fmt: skip
    for row in report["results"]:
        assert row["image_level"]["f1_macro"]["mean"] > 0.9  # a specimen's siblings give it away
        assert row["grouped"]["f1_macro"]["mean"] < 0.7  # unseen specimens: no signal
    assert report["inflation"]["mean"] > 0.3
    assert report["settings"]["groups"] == "given"


def test_an_empty_grid_or_impossible_folds_fail_before_the_network(tmp_path, monkeypatch):
    paths, labels, groups = _specimen_images(tmp_path, n_specimens=4, per_specimen=2)

    def refuse(*args, **kwargs):
        raise AssertionError("an image was read")

    monkeypatch.setattr(study_module._Collector, "image", refuse)
    with pytest.raises(ValueError, match="the grid is empty"):
        run_study(paths, labels, output=tmp_path / "o", taps=("raw",), raw=False)
    with pytest.raises(ValueError, match="2 groups cannot make n_splits=3"):
        run_study(paths, labels, ["G1"] * 4 + ["G2"] * 4, output=tmp_path / "o", taps=())


def test_tiles_are_grouped_by_their_source_image(tmp_path):
    paths, labels, _ = _specimen_images(tmp_path, n_specimens=6, per_specimen=1)
    report = run_study(paths, labels, None, output=tmp_path / "out", taps=(), pools=("mean",),
                       tile=8, n_estimators=10, n_repeats=2)  # fmt: skip
    assert report["n_images"] == 6 and report["n_rows"] == 6 * 9
    assert report["settings"]["groups"] == "source image of each tile"
    assert report["honest_split"] == "grouped" and report["loose_split"] == "tile_level"
    assert report["inflation"]["mean"] > 0.3
    # with specimens as well: specimen, image and tile level, each its own split
    specimens = [f"S{i // 2}" for i in range(6)]
    three = run_study(paths, labels, specimens, output=tmp_path / "out3", taps=(),
                      pools=("mean",), tile=8, n_estimators=10, n_repeats=2)  # fmt: skip
    (row,) = three["results"]
    assert {"grouped", "image_level", "tile_level"} <= set(row)
    assert row["image_level"]["split"] == "grouped"  # grouped by source image
    assert row["tile_level"]["split"] == "stratified"
    header = (tmp_path / "out3" / "study.csv").read_text().splitlines()[0]
    assert "f1_image_level_mean" in header and "f1_tile_level_mean" in header


def test_the_study_command(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    paths, labels, groups = _specimen_images(data)
    rows = [f"{p.name},{y},{g}" for p, y, g in zip(paths, labels, groups)]
    (data / "labels.csv").write_text("\n".join(["path,label,specimen", *rows]) + "\n")
    code = main(["study", "--labels", str(data / "labels.csv"), "--groups", "specimen", "-o",
                 str(tmp_path / "out"), "--taps", "raw", "--pools", "mean,max", "--repeats", "2",
                 "--n-estimators", "10", "--folds", "4", "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "32 images (32 rows), 2 combinations, macro F1 (grouped split)" in out
    assert "the image-level split inflates macro F1 by +" in out
    report = json.loads((tmp_path / "out" / "study.json").read_text())
    assert report["metric"] == "macro F1" and len(report["results"]) == 2
    assert report["settings"]["n_splits"] == 4 and report["settings"]["n_estimators"] == 10
    assert report["results"][0]["grouped"]["n_splits"] == 4
    code = main(["study", "--labels", str(data / "labels.csv"), "-o", str(tmp_path / "o2"),
                 "--taps", "raw", "--no-raw", "--no-progress"])  # fmt: skip
    assert code == 2 and "the grid is empty" in capsys.readouterr().err


DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.data
@pytest.mark.torch
@pytest.mark.slow
def test_a_tile_level_split_of_real_powder_tiles_inflates_f1(tmp_path):
    # AMPIS powder: 11 SEM images of 4 samples; 256 px tiles grouped by their source image
    files = sorted((DATA / "ampis" / "powder" / "images_png").glob("Sc*.png"))
    if len(files) < 11:
        pytest.skip(f"the AMPIS powder images are not under {DATA}")
    labels = [f.name[:3] for f in files]
    report = run_study(files, labels, output=tmp_path / "out", taps=("relu2_2",),
                       pools=("mean", "gram"), raw=False, tile=256, n_estimators=40,
                       n_repeats=2, device="cpu")  # fmt: skip
    assert report["n_images"] == 11 and report["n_rows"] == 11 * 24
    for row in report["results"]:  # measured: +0.10 to +0.20 F1 with 100 trees, 3 repeats
        assert row["tile_level"]["f1_macro"]["mean"] > row["grouped"]["f1_macro"]["mean"] + 0.05


def test_a_damaged_cache_file_is_computed_again(tmp_path, caplog):
    import logging

    paths, labels, groups = _specimen_images(tmp_path, n_specimens=4, per_specimen=3)
    options = {"output": tmp_path / "out", "taps": (), "pools": ("mean",), "n_estimators": 5,
               "n_repeats": 1}  # fmt: skip
    first = run_study(paths, labels, groups, **options)
    victim = sorted((tmp_path / "out" / "cache").glob("*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING, logger="microtex.analysis"):
        again = run_study(paths, labels, groups, **options)
    assert "recomputing the damaged cache file" in caplog.text
    assert again["results"][0]["grouped"]["f1_macro"] == first["results"][0]["grouped"][
        "f1_macro"]  # fmt: skip
