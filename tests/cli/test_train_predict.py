"""``microtex train`` and ``microtex predict`` end to end on generated images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from microtex import load_bundle, synth
from microtex.cli.main import main


@pytest.fixture
def labelled(tmp_path):
    """16 textures of two stripe scales, 2 per specimen, a labels CSV and one corrupt file."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["path,label,specimen"]
    for k, name in [(4, "coarse"), (12, "fine")]:
        for i in range(8):
            image = synth.perlin_texture(48, k, 0.2 * i, 1.0, seed=i + 10 * k)
            Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{name}{i}.png")
            rows.append(f"images/{name}{i}.png,{name},{name}-{i // 2}")
    (folder / "zz-bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.mark.torch
def test_train_then_predict(shallow_onnx, labelled, capsys):
    bundle = labelled / "model"
    code = main(["train", "--labels", str(labelled / "labels.csv"), "--groups", "specimen",
                 "-o", str(bundle), "--taps", "relu1_1,relu2_1", "--n-estimators", "40",
                 "--cv-repeats", "2", "--device", "cpu", "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "trained on 16 images (0 skipped), 2 classes" in out
    assert "cross-validated macro F1" in err and "grouped, 2 × 3-fold" in err
    manifest = json.loads((bundle / "microtex.json").read_text())
    training = manifest["config"]["training"]
    assert training["counts"] == {"coarse": 8, "fine": 8}
    assert training["cross_validation"]["split"] == "grouped"
    assert manifest["config"]["classes"] == ["coarse", "fine"]

    output = labelled / "preds.csv"
    code = main(["predict", str(bundle), str(labelled / "images"), "-o", str(output),
                 "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "classified 16 images (1 skipped)" in out and "zz-bad.png" in err
    rows = list(csv.DictReader(output.read_text().splitlines()))
    assert [r["id"].split("/")[-1] for r in rows][:2] == ["coarse0.png", "coarse1.png"]
    model = load_bundle(bundle)
    paths = [r["id"] for r in rows]
    probabilities = model.predict_proba(paths)
    np.testing.assert_allclose([[float(r["p:coarse"]), float(r["p:fine"])] for r in rows],
                               probabilities, atol=1e-5)  # fmt: skip
    assert [r["class"] for r in rows] == model.predict(paths).tolist()
    # the training images' own labels come back
    assert sum(r["class"] == r["id"].split("/")[-1].rstrip("0123456789.png") for r in rows) == 16


def test_train_refuses_a_bad_labels_file_before_any_work(labelled, capsys):
    (labelled / "one.csv").write_text("path,label\nimages/coarse0.png,x\nimages/fine0.png,x\n")
    code = main(["train", "--labels", str(labelled / "one.csv"), "-o", str(labelled / "m"),
                 "--raw"])  # fmt: skip
    assert code == 2
    assert "every image is labelled 'x'" in capsys.readouterr().err
    assert not (labelled / "m").exists()


def test_predict_refuses_what_is_not_a_classifier_bundle(labelled, capsys):
    from microtex import TextureFeaturizer

    TextureFeaturizer(taps="raw").fit(np.zeros((1, 8, 8), np.float32)).save(labelled / "f")
    code = main(["predict", str(labelled / "f"), str(labelled / "images"), "-o",
                 str(labelled / "p.csv")])  # fmt: skip
    assert code == 2
    assert "holds a 'texture-featurizer', not a 'classifier'" in capsys.readouterr().err
    assert not (labelled / "p.csv").exists()


def test_train_without_skl2onnx_fails_before_any_work(labelled, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_skl2onnx(name, *args, **kwargs):
        if name.startswith("skl2onnx"):
            raise ImportError("No module named 'skl2onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skl2onnx)
    code = main(["train", "--labels", str(labelled / "labels.csv"), "-o", str(labelled / "m"),
                 "--raw"])  # fmt: skip
    assert code == 2
    assert "microtex train needs skl2onnx: pip install 'microtex[onnx]'" in capsys.readouterr().err
    assert not (labelled / "m").exists()


def test_train_carries_the_studys_f1_for_its_layer_and_pooling(labelled, capsys):
    study = {"metric": "macro F1", "honest_split": "grouped",
             "settings": {"taps": ["relu1_2", "relu2_2"]},
             "results": [{"layer": "raw", "pool": "gram",
                          "grouped": {"f1_macro": {"mean": 0.61, "std": 0.04}}},
                         {"layer": "raw", "pool": "mean",
                          "grouped": {"f1_macro": {"mean": 0.5, "std": 0.1}}}]}  # fmt: skip
    (labelled / "study.json").write_text(json.dumps(study))
    code = main(["train", "--labels", str(labelled / "labels.csv"), "-o", str(labelled / "m"),
                 "--raw", "--pool", "gram", "--study", str(labelled / "study.json"),
                 "--cv-repeats", "0", "--n-estimators", "5", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((labelled / "m" / "microtex.json").read_text())
    carried = manifest["config"]["training"]["study"]
    assert carried["f1_macro"] == {"mean": 0.61, "std": 0.04} and carried["split"] == "grouped"
    code = main(["train", "--labels", str(labelled / "labels.csv"), "-o", str(labelled / "m2"),
                 "--raw", "--pool", "max", "--study", str(labelled / "study.json")])  # fmt: skip
    assert code == 2 and "has no row for taps" in capsys.readouterr().err
