"""``-o FOLDER/``: featurize, stereology and predict write a sharded dataset a rerun resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from microtex.cli.main import main
from microtex.io import read_features
from microtex.io.shards import MANIFEST_FILE

pytest.importorskip("pyarrow")


@pytest.fixture
def images(tmp_path):
    """Five 24 x 24 textures (bright squares of growing size) and a corrupt file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        image = np.full((24, 24), 30, np.uint8)
        image[4 : 8 + 2 * i, 4 : 8 + 2 * i] = 220
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "7-bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return folder


def test_featurize_to_a_folder_resumes_and_matches_the_table_file(images, tmp_path, capsys):
    out = tmp_path / "features"
    argv = ["featurize", str(images), "--raw", "--pool", "mean,gram", "--no-progress",
            "--shard-size", "2"]  # fmt: skip
    assert main([*argv, "-o", f"{out}/"]) == 0
    first = capsys.readouterr()
    assert "featurized 5 rows (1 skipped) in 3 shards (3 written now, 0 kept)" in first.out
    assert "7-bad.png" in first.err
    assert main([*argv, "-o", str(tmp_path / "one.parquet")]) == 0
    capsys.readouterr()
    (out / "part-00001.parquet").unlink()
    assert main([*argv, "-o", str(out)]) == 0  # no trailing slash: an existing folder
    assert "(1 written now, 2 kept)" in capsys.readouterr().out
    table, reference = read_features(out), read_features(tmp_path / "one.parquet")
    assert table.ids == reference.ids and table.columns == reference.columns
    np.testing.assert_array_equal(table.features, reference.features)
    assert main([*argv[:3], "--pool", "mean", *argv[5:], "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another configuration (params.pool: ['mean', 'gram'] -> ['mean'])" in err
    assert "--overwrite" in err
    assert main([*argv[:3], "--pool", "mean", *argv[5:], "-o", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert read_features(out).columns == ["raw/mean/0"]


def test_stereology_to_a_folder_equals_the_table_file(images, tmp_path, capsys):
    argv = ["stereology", str(images), "--pixel-size", "0.5", "--shard-size", "4"]
    assert main([*argv, "-o", f"{tmp_path / 'st'}/"]) == 0
    assert main([*argv, "-o", str(tmp_path / "st.npz")]) == 0
    table, reference = read_features(tmp_path / "st"), read_features(tmp_path / "st.npz")
    assert table.ids == reference.ids and table.columns == reference.columns
    np.testing.assert_array_equal(table.features, reference.features)
    manifest = json.loads((tmp_path / "st" / MANIFEST_FILE).read_text())
    assert manifest["config"]["pixel_size_um"] == 0.5
    assert [f["path"].rsplit("/", 1)[-1] for f in manifest["shards"]["1"]["failures"]] == [
        "7-bad.png"]  # fmt: skip


def test_predict_to_a_folder_holds_the_csvs_probabilities(images, tmp_path, capsys):
    pytest.importorskip("skl2onnx")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(
        f"images/{i}.png,{'small' if i < 3 else 'large'}\n" for i in range(5)))  # fmt: skip
    bundle = tmp_path / "model"
    assert main(["train", "--labels", str(labels), "-o", str(bundle), "--raw", "--pool", "mean",
                 "--n-estimators", "5", "--cv-repeats", "0", "--no-progress"]) == 0  # fmt: skip
    assert main(["predict", str(bundle), str(images), "-o", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 0  # fmt: skip
    assert main(["predict", str(bundle), str(images), "-o", f"{tmp_path / 'p'}/",
                 "--shard-size", "3", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()]
    table = read_features(tmp_path / "p")
    assert table.columns == rows[0][2:] and table.ids == [r[0] for r in rows[1:]]
    np.testing.assert_allclose(table.features, [[float(v) for v in r[2:]] for r in rows[1:]],
                               atol=1e-6)  # fmt: skip


def test_a_folder_the_cli_made_resumes_from_the_api_and_back(images, tmp_path, capsys):
    from microtex.features.api import featurize_dataset

    out = tmp_path / "features"
    argv = ["featurize", str(images), "--raw", "--pool", "mean,gram", "--no-progress",
            "--shard-size", "2", "-o", f"{out}/"]  # fmt: skip
    assert main(argv) == 0
    (out / "part-00002.parquet").unlink()
    # the same job spelled the API's way: a tuple of pools, device "auto", no seed
    job = featurize_dataset(images, out, shard_size=2, taps="raw", pool=("mean", "gram"))
    assert job.done and len(read_features(out).ids) == 5
    (out / "part-00000.parquet").unlink()
    capsys.readouterr()
    assert main([*argv, "--device", "cpu"]) == 0  # "auto" is the CPU here
    assert "(1 written now, 2 kept)" in capsys.readouterr().out
