"""explain / ``microtex explain``: every piece for a classifier, as PNGs and an index."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _stripes import stripes
from PIL import Image

from microtex.cli.main import main
from microtex.interpret.explanation import explain
from microtex.interpret.filters import TextureSettings

pytestmark = pytest.mark.torch
TINY = TextureSettings(size=32, steps=6)


def test_explain_writes_textures_characteristic_filters_and_heat_maps(stripe_classifier, stripe_set,
                                                                      tmp_path):  # fmt: skip
    model, _, _ = stripe_classifier
    images, labels = stripe_set
    index = explain(model, images, tmp_path / "out", labels=labels, settings=TINY, heatmaps=2,
                    n_repeats=2)  # fmt: skip
    out = tmp_path / "out"
    assert json.loads((out / "index.json").read_text()) == json.loads(json.dumps(index))
    assert index["labels"] == "given" and index["n_images"] == 16
    assert index["accuracy_on_these_images"] == 1.0
    impurity = index["top_textures"]["impurity"]
    top = np.sort(model.feature_importances_)[::-1][:3]
    assert [t["importance"] for t in impurity["textures"]] == pytest.approx(top)
    assert (out / impurity["file"]).read_bytes()[:4] == b"\x89PNG"
    for t in impurity["textures"]:
        assert t["activation_texture"] > t["activation_noise"]
    assert "permutation" in index["top_textures"]  # computed, with labels
    assert index["permutation_baseline_macro_f1"] == 1.0
    blocks = [(b["tap"], b["pool"], b["n_features"]) for b in index["block_importance"]]
    assert blocks == [("relu1_1", "mean", 64), ("relu1_1", "gram", 2080),
                      ("relu2_1", "mean", 128), ("relu2_1", "gram", 8256)]  # fmt: skip
    characteristic = index["characteristic"]
    assert characteristic["tap"] in ("relu1_1", "relu2_1")
    assert [c["class"] for c in characteristic["classes"]] == ["coarse", "fine"]
    for entry in characteristic["classes"]:
        assert (out / entry["file"]).is_file()
        members = {f"array[{i}]" for i in np.flatnonzero(labels == entry["class"])}
        for f in entry["filters"]:
            assert f["effect"] > 0 and set(f["exemplars"]) <= members
    assert [h["image"] for h in index["heatmaps"]] == ["array[0]", "array[1]"]
    assert all((out / h["file"]).is_file() for h in index["heatmaps"])
    # no labels: classes are the predictions, and there is no permutation importance
    again = explain(model, images[:6], tmp_path / "out", settings=TINY, heatmaps=0,
                    overwrite=True, importance=["impurity", "permutation"])  # fmt: skip
    assert again["labels"] == "predicted" and again["permutation_skipped"] == "needs labels"
    assert again["heatmaps"] == [] and again["characteristic"]["skipped"]  # all six are fine
    with pytest.raises(FileExistsError, match="not empty"):
        explain(model, images, tmp_path / "out", settings=TINY)


def test_the_cli_explains_a_folder_skipping_a_bad_file(stripe_classifier, tmp_path, capsys):
    _, _, bundle = stripe_classifier
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["path,label"]
    for i, (period, label) in enumerate([(4, "fine")] * 3 + [(12, "coarse")] * 3):
        image = stripes(period, 1, seed=20 + i)[0]
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    code = main(["explain", str(bundle), str(folder),
                 "-o", str(tmp_path / "report"), "--labels", str(folder / "labels.csv"),
                 "--texture-size", "32", "--steps", "4", "--heatmaps", "1",
                 "--top", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped" in captured.err and "broken.png" in captured.err
    index = json.loads((tmp_path / "report" / "index.json").read_text())
    assert index["n_images"] == 6 and index["failures"][0]["path"].endswith("broken.png")
    assert len(index["top_textures"]["impurity"]["textures"]) == 2
    assert "class coarse: " in captured.out and "class fine: " in captured.out
    assert main(["explain", str(tmp_path / "nothing"), str(folder), "-o", str(tmp_path / "x")]) == 2
