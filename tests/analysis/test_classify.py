"""Classification: grouped CV, its metrics, in-fold fitting, the ONNX forest, the bundle."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from microtex import TextureFeaturizer, load_bundle, synth
from microtex.analysis import classify
from microtex.analysis.classify import (
    cross_validate,
    cv_splits,
    evaluate_features,
    make_forest,
    save_classifier,
)
from microtex.errors import BundleError


def specimen_set(n_specimens=12, per_specimen=8, n_features=20, class_signal=0.0, seed=0):
    """Features dominated by a per-specimen offset; two classes, half the specimens each."""
    rng = np.random.default_rng(seed)
    specimen = np.repeat(np.arange(n_specimens), per_specimen)
    label = np.where(specimen % 2 == 0, "a", "b")
    offsets = rng.normal(0, 1.0, (n_specimens, n_features))
    X = offsets[specimen] + rng.normal(0, 0.05, (len(specimen), n_features))
    X[:, 0] += class_signal * (label == "b")
    return X.astype(np.float32), label, specimen


# ---------------------------------------------------------------- splits
def test_grouped_splits_never_put_a_group_on_both_sides_and_cover_every_sample():
    X, y, groups = specimen_set(n_specimens=14, per_specimen=5)
    splits = cv_splits(y, groups, n_splits=3, n_repeats=4, random_state=7)
    assert len(splits) == 12
    for repeat in range(4):
        tests = [test for r, _, _, test in splits if r == repeat]
        assert sorted(np.concatenate(tests).tolist()) == list(range(len(y)))
    for _, _, train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == {"a", "b"}  # stratified as far as groups allow
    # repeats shuffle differently
    assert not all(np.array_equal(splits[i][3], splits[i + 3][3]) for i in range(3))


@pytest.mark.parametrize(
    ("y", "groups", "message"),
    [
        (["a"] * 6, None, "at least two classes; every label is 'a'"),
        (["a"] * 6 + ["b"] * 2, None, "class 'b' has 2 samples, fewer than n_splits=3"),
        (["a", "b"] * 4, [1, 1, 1, 1, 2, 2, 2, 2], "2 groups cannot make n_splits=3"),
        (["a", "b"] * 4, [1, 2], "groups has 2 entries for 8 labels"),
    ],
)
def test_splits_that_cannot_be_made_are_refused(y, groups, message):
    with pytest.raises(ValueError, match=message):
        cv_splits(y, groups)


# ---------------------------------------------------------------- metrics
def test_a_separable_set_scores_one_and_shuffled_labels_score_chance():
    rng = np.random.default_rng(1)
    y = np.repeat(["x", "y", "z"], 20)
    X = rng.normal(0, 1, (60, 6)) + 10 * (y == "y")[:, None] + 20 * (y == "z")[:, None]
    result = evaluate_features(X, y, n_estimators=25, n_repeats=3)
    assert result.f1.tolist() == [1.0, 1.0, 1.0]
    assert result.balanced_accuracy.min() == 1.0 and result.pr_auc.min() == 1.0
    assert result.confusion.sum(axis=0).tolist() == [[60, 0, 0], [0, 60, 0], [0, 0, 60]]
    shuffled = rng.permutation(y)
    chance = evaluate_features(rng.normal(0, 1, (60, 6)), shuffled, n_estimators=25, n_repeats=5)
    assert 0.1 < chance.f1.mean() < 0.55  # 1/3 expected
    summary = chance.summary()
    assert summary["metric"] == "macro F1" and len(summary["f1_macro"]["per_repeat"]) == 5
    json.dumps(summary)  # every number is JSON-able


def test_metrics_agree_with_a_hand_count():
    # a fixed "classifier": predicts class a for every sample
    from sklearn.dummy import DummyClassifier

    y = np.array(["a"] * 6 + ["b"] * 3)
    result = cross_validate(DummyClassifier(strategy="constant", constant=0), np.zeros((9, 1)),
                            y, n_repeats=1)  # fmt: skip
    # class a: precision 6/9, recall 1, F1 0.8; class b: 0 -> macro F1 0.4
    assert result.f1[0] == pytest.approx(0.4)
    assert result.precision[0].tolist() == pytest.approx([6 / 9, 0.0])
    assert result.recall[0].tolist() == [1.0, 0.0]
    assert result.balanced_accuracy[0] == pytest.approx(0.5)
    assert result.confusion[0].tolist() == [[6, 0], [3, 0]]


def test_a_patch_level_split_inflates_f1_where_specimens_differ():
    X, y, groups = specimen_set()
    image_level = evaluate_features(X, y, n_estimators=50, n_repeats=3)
    grouped = evaluate_features(X, y, groups, n_estimators=50, n_repeats=3)
    assert image_level.f1.mean() > 0.95  # each specimen's other images give it away
    assert grouped.f1.mean() < 0.75  # unseen specimens: no class signal at all
    assert grouped.split == "grouped" and image_level.split == "stratified"


# ---------------------------------------------------------------- fitted inside the fold
def _vlad_images(seed=0):
    """Raw-intensity textures whose value distribution depends on the specimen."""
    rng = np.random.default_rng(seed)
    images, labels, groups = [], [], []
    for specimen in range(8):
        centre = rng.uniform(0.1, 0.9)
        for _ in range(4):
            images.append(np.clip(rng.normal(centre, 0.05, (16, 16)), 0, 1).astype(np.float32))
            labels.append("ab"[specimen % 2])
            groups.append(specimen)
    return np.stack(images), np.array(labels), np.array(groups)


def test_vlad_words_are_fitted_on_the_training_fold_only(monkeypatch):
    from microtex.features.stream import TexturePipeline

    images, y, groups = _vlad_images()
    fitted_on = []
    real_fit = TexturePipeline.fit_vlad

    def spy(self, X, *args, **kwargs):
        fitted_on.append({float(np.asarray(x).mean()) for x in X})
        return real_fit(self, X, *args, **kwargs)

    monkeypatch.setattr(TexturePipeline, "fit_vlad", spy)
    featurizer = TextureFeaturizer(taps="raw", pool="vlad", n_words=4, random_state=0)
    pipeline = Pipeline([("features", featurizer), ("forest", make_forest(20))])
    in_fold = cross_validate(pipeline, images, y, groups, n_repeats=2)
    means = np.array([float(x.mean()) for x in images])
    splits = cv_splits(y, groups, n_repeats=2)
    assert len(fitted_on) == len(splits)
    for seen, (_, _, train, _) in zip(fitted_on, splits):
        assert seen == set(means[train].tolist())  # never a test image
    # fitted on every image once, then cross-validated: the leak changes the numbers
    monkeypatch.setattr(TexturePipeline, "fit_vlad", real_fit)
    on_all = TextureFeaturizer(taps="raw", pool="vlad", n_words=4, random_state=0).fit(images)
    leaked = evaluate_features(on_all.transform(images), y, groups, n_estimators=20,
                               n_repeats=2)  # fmt: skip
    assert not np.allclose(in_fold.f1, leaked.f1) or not np.allclose(
        in_fold.pr_auc, leaked.pr_auc)  # fmt: skip


# ---------------------------------------------------------------- the ONNX forest
def test_the_onnx_forest_splits_exactly_as_scikit_learn(tmp_path):
    from microtex.engine.export import export_forest
    from microtex.engine.session import Session

    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (200, 8)).astype(np.float32)
    y = np.array(["p", "q", "r"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    forest = RandomForestClassifier(60, random_state=0).fit(X, y)
    # inputs on, just below and just above every threshold the trees use
    probes = []
    for tree in forest.estimators_[:10]:
        inner = tree.tree_.feature >= 0
        for feature, t in zip(tree.tree_.feature[inner], tree.tree_.threshold[inner]):
            for value in (np.float32(t), np.nextafter(np.float32(t), np.float32(-9)),
                          np.nextafter(np.float32(t), np.float32(9))):  # fmt: skip
                row = X[len(probes) % len(X)].copy()
                row[feature] = value
                probes.append(row)
    probes = np.concatenate([X, np.array(probes)])
    onnx_path = tmp_path / "forest.onnx"
    onnx_path.write_bytes(export_forest(forest, 8).SerializeToString())
    out = Session(onnx_path, device="cpu").run(probes)
    expected = forest.predict_proba(probes)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6, rtol=0)
    assert (forest.classes_[out["probabilities"].argmax(1)] == forest.predict(probes)).all()
    assert out["label"].tolist() == forest.predict(probes).tolist()


def test_a_forest_chained_to_a_feature_graph_reads_its_outputs_in_the_given_order(tmp_path):
    import onnx
    from onnx import helper

    from microtex.engine.export import DEFAULT_OPSET, chain_forest, export_forest
    from microtex.engine.metadata import read_metadata
    from microtex.engine.session import Session

    float_ = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])], "f",
        [helper.make_tensor_value_info("x", float_, ["batch", 4])],
        [helper.make_tensor_value_info(n, float_, ["batch", 4]) for n in ("a", "b")])
    features = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
    rng = np.random.default_rng(5)
    X = rng.normal(0, 1, (300, 4)).astype(np.float32)
    y = (X[:, 1] > 0.2).astype(int) + 2 * (X[:, 3] < -0.4)
    columns = np.concatenate([-X, np.maximum(X, 0)], axis=1)  # b, then a
    forest = RandomForestClassifier(30, random_state=0).fit(columns, y)
    chained = chain_forest(features, ["b", "a"], export_forest(forest, 8))
    path = tmp_path / "chained.onnx"
    path.write_bytes(chained.SerializeToString())
    out = Session(path, device="cpu").run(X)
    np.testing.assert_allclose(out["probabilities"], forest.predict_proba(columns), atol=1e-6)
    assert read_metadata(path)["kind"] == "chain"
    with pytest.raises(ValueError, match=r"feature outputs \['c'\] are not outputs"):
        chain_forest(features, ["a", "c"], export_forest(forest, 8))


# ---------------------------------------------------------------- the bundle
@pytest.fixture
def textures():
    images, labels = [], []
    for k, name in [(4, "coarse"), (12, "fine")]:
        for seed in range(6):
            images.append(synth.perlin_texture(48, k, 0.3, 1.0, seed=seed + k))
            labels.append(name)
    return np.stack(images).astype(np.float32), np.array(labels)


@pytest.mark.torch
def test_a_classifier_bundle_round_trips(shallow_onnx, textures, tmp_path):
    images, labels = textures
    featurizer = TextureFeaturizer(taps="relu1_1,relu2_1", pool="mean,gram", device="cpu")
    pipeline = Pipeline([("features", featurizer), ("forest", make_forest(30))])
    pipeline.fit(images, labels)
    path = save_classifier(pipeline, tmp_path / "clf", training={"counts": {"coarse": 6}})
    model = load_bundle(path)
    assert isinstance(model, classify.TextureClassifier)
    assert model.classes_.tolist() == ["coarse", "fine"]
    assert model.training == {"counts": {"coarse": 6}}
    manifest = json.loads((path / "microtex.json").read_text())["config"]
    assert manifest["feature_blocks"] == [
        {"tap": "relu1_1", "pool": "mean", "count": 64},
        {"tap": "relu1_1", "pool": "gram", "count": 2080},
        {"tap": "relu2_1", "pool": "mean", "count": 128},
        {"tap": "relu2_1", "pool": "gram", "count": 8256},
    ]
    np.testing.assert_allclose(model.predict_proba(images), pipeline.predict_proba(images),
                               atol=1e-6)  # fmt: skip
    assert model.predict(images).tolist() == pipeline.predict(images).tolist()
    # tampering is caught at load
    forest_file = path / "forest.onnx"
    forest_file.write_bytes(forest_file.read_bytes()[:-10])
    with pytest.raises(BundleError, match="checksum mismatch for 'forest.onnx'"):
        load_bundle(path)


def test_save_classifier_wants_a_fitted_two_step_pipeline(tmp_path):
    with pytest.raises(TypeError, match="Pipeline\\(TextureFeaturizer, forest classifier\\)"):
        save_classifier(make_forest(3), tmp_path / "x")


def test_save_classifier_refuses_a_forest_fitted_on_other_columns(tmp_path):
    images = np.random.default_rng(0).random((6, 16, 16), dtype=np.float32)
    featurizer = TextureFeaturizer(taps="raw", pool="mean,max").fit(images)
    forest = make_forest(3).fit(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="fitted on 3 features, the featurizer makes 2"):
        save_classifier(Pipeline([("f", featurizer), ("forest", forest)]), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_class_confined_to_one_group_is_warned_about(caplog):
    y = ["a"] * 4 + ["b"] * 4
    groups = [1, 1, 1, 1, 2, 2, 3, 3]  # every 'a' in group 1
    with caplog.at_level(logging.WARNING, logger="microtex.analysis"):
        cv_splits(y, groups, n_splits=3, n_repeats=1)
    assert "class 'a' has all its samples in one group" in caplog.text
