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


def test_the_cli_explains_the_labelled_images_skipping_a_bad_file(stripe_classifier, tmp_path,
                                                                   capsys):  # fmt: skip
    _, _, bundle = stripe_classifier
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["path,label"]
    for i, (period, label) in enumerate([(4, "fine")] * 3 + [(12, "coarse")] * 3):
        image = stripes(period, 1, seed=20 + i)[0]
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    (folder / "labels.csv").write_text("\n".join([*rows, "broken.png,fine"]) + "\n")
    code = main(["explain", str(bundle), "-o", str(tmp_path / "report"),
                 "--labels", str(folder / "labels.csv"), "--texture-size", "32", "--steps", "4",
                 "--heatmaps", "1", "--top", "2",
                 "--importance", "impurity, permutation"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped" in captured.err and "broken.png" in captured.err
    index = json.loads((tmp_path / "report" / "index.json").read_text())
    assert index["n_images"] == 6 and index["failures"][0]["path"].endswith("broken.png")
    assert len(index["top_textures"]["impurity"]["textures"]) == 2
    assert "block_importance" in index
    assert "class coarse: " in captured.out and "class fine: " in captured.out
    # a folder holding an image the labels do not name is refused before any work
    (folder / "labels.csv").write_text("\n".join(rows[:-1]) + "\n")
    code = main(["explain", str(bundle), str(folder), "-o", str(tmp_path / "again"),
                 "--labels", str(folder / "labels.csv")])  # fmt: skip
    assert code == 2 and "no label for image" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    assert main(["explain", str(tmp_path / "nothing"), str(folder), "-o", str(tmp_path / "x")]) == 2
    # every option reaches what is written
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    code = main(["explain", str(bundle), "-o", str(tmp_path / "options"),
                 "--labels", str(folder / "labels.csv"), "--tap", "relu1_1",
                 "--characteristic", "2", "--exemplars", "1", "--heatmaps", "2",
                 "--texture-size", "24", "--steps", "3", "--seed", "5", "--top", "1",
                 "--importance", "impurity", "--threads", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    index = json.loads((tmp_path / "options" / "index.json").read_text())
    assert index["texture_settings"] == {**TINY.to_dict(), "size": 24, "steps": 3, "seed": 5}
    assert index["characteristic"]["tap"] == "relu1_1" and len(index["heatmaps"]) == 2
    for entry in index["characteristic"]["classes"]:
        assert len(entry["filters"]) == 2
        assert all(len(f["exemplars"]) == 1 for f in entry["filters"])
    assert list(index["top_textures"]) == ["impurity"] and "block_importance" not in index
    assert len(index["top_textures"]["impurity"]["textures"]) == 1


def test_explain_reads_a_generator_once_and_matches_labels_however_paths_are_spelled(
    stripe_classifier, stripe_set, tmp_path, monkeypatch
):
    model, _, _ = stripe_classifier
    images, labels = stripe_set
    index = explain(model, (image for image in images[6:10]), tmp_path / "gen", settings=TINY,
                    heatmaps=1, labels=labels[6:10])  # fmt: skip
    assert index["n_images"] == 4 and len(index["heatmaps"]) == 1
    folder = tmp_path / "files"
    folder.mkdir()
    for i in (0, 1, 8, 9):
        Image.fromarray((images[i] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    by_absolute_path = {str(folder / f"{i}.png"): labels[i] for i in (0, 1, 8, 9)}
    index = explain(model, "files/../files", tmp_path / "paths", labels=by_absolute_path,
                    settings=TINY, heatmaps=0)  # fmt: skip
    assert index["labels"] == "given" and index["n_images"] == 4
    assert [c["class"] for c in index["characteristic"]["classes"]] == ["coarse", "fine"]


def test_a_class_of_one_image_gets_no_characteristic_filters_and_the_index_is_strict_json(
    stripe_classifier, stripe_set, tmp_path
):
    model, _, _ = stripe_classifier
    images, labels = stripe_set
    index = explain(model, images[[0, 8]], tmp_path / "two", labels=labels[[0, 8]],
                    settings=TINY, heatmaps=0)  # fmt: skip
    assert index["characteristic"]["classes"] == []
    assert "two images or more" in index["characteristic"]["skipped"]

    def strict(text):
        raise ValueError(f"not JSON: {text}")

    json.loads((tmp_path / "two" / "index.json").read_text(), parse_constant=strict)
    index = explain(model, images[[0, 1, 2, 8, 9]], tmp_path / "uneven",
                    labels=labels[[0, 1, 2, 8, 9]], settings=TINY, heatmaps=0)  # fmt: skip
    assert [c["class"] for c in index["characteristic"]["classes"]] == ["coarse", "fine"]
    assert all(c["filters"] and c["file"] for c in index["characteristic"]["classes"])


def test_a_failed_report_leaves_nothing_and_an_overwrite_keeps_no_old_file(
    stripe_classifier, stripe_set, tmp_path, monkeypatch
):
    from microtex.interpret import explanation

    model, _, _ = stripe_classifier
    images, labels = stripe_set
    out = tmp_path / "report"
    explain(model, images, out, labels=labels, settings=TINY, heatmaps=3)
    assert (out / "heatmap_2.png").is_file()
    explain(model, images, out, labels=labels, settings=TINY, heatmaps=1, overwrite=True)
    assert not (out / "heatmap_2.png").exists() and (out / "heatmap_0.png").is_file()

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(explanation, "filter_texture", broken)
    with pytest.raises(RuntimeError, match="renderer exploded"):
        explain(model, images, tmp_path / "new", labels=labels, settings=TINY)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(RuntimeError, match="renderer exploded"):
        explain(model, images, out, labels=labels, settings=TINY, overwrite=True)
    assert (out / "heatmap_0.png").is_file()  # the previous report is untouched
    with pytest.raises(ValueError, match="texture size 8 is smaller than 2 pixels|"
                                         "texture size 1 is smaller than 2"):  # fmt: skip
        explain(model, images, tmp_path / "x", settings=TextureSettings(size=1, steps=1))
    with pytest.raises(ValueError, match="3 labels for 16 images"):
        explain(model, images, tmp_path / "x", labels=["a", "b", "c"], settings=TINY)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["vlad", "no importances"])
def test_explain_handles_vlad_bundles_and_bundles_without_importances(stripe_set, tmp_path, kind):
    from sklearn.pipeline import Pipeline

    from microtex import TextureFeaturizer, load_bundle
    from microtex.analysis.classify import make_forest, save_classifier

    images, labels = stripe_set
    pool = "vlad" if kind == "vlad" else "mean"
    featurizer = TextureFeaturizer(taps="relu1_1", pool=pool, n_words=4, random_state=0,
                                   device="cpu")  # fmt: skip
    pipeline = Pipeline([("features", featurizer), ("forest", make_forest(10, n_jobs=1))])
    path = save_classifier(pipeline.fit(images, labels), tmp_path / "clf")
    if kind == "no importances":  # as saved by microtex before importances were stored
        manifest = json.loads((path / "microtex.json").read_text())
        del manifest["files"]["importance.npz"]
        (path / "microtex.json").write_text(json.dumps(manifest))
        (path / "importance.npz").unlink()
    model = load_bundle(path)
    index = explain(model, images, tmp_path / "out", labels=labels, settings=TINY, heatmaps=1)
    if kind == "vlad":
        textures = index["top_textures"]["impurity"]["textures"]
        assert textures and all(t["pool"] == "vlad" and t["word"] in range(4) for t in textures)
        assert len(index["heatmaps"]) == 1
    else:
        assert model.feature_importances_ is None
        assert index["top_textures"]["impurity"]["skipped"]
        assert index["characteristic"]["tap"] == "relu1_1"
