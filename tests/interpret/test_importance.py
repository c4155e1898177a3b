"""Feature names back to filters, permutation and impurity importance, characteristic filters."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from microtex.features import pooling
from microtex.features.plan import feature_names
from microtex.features.vlad import vlad_encode
from microtex.interpret.importance import (
    block_importance,
    characteristic_filters,
    feature_source,
    feature_sources,
    permutation_importance,
    rank_features,
    split_features,
)


@pytest.fixture(scope="module")
def acts():
    """Random activations of a 64-filter tap (relu1_1) on two images."""
    return np.random.default_rng(3).random((2, 64, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("layout", ["triu", "full"])
def test_every_gram_feature_maps_to_the_filter_pair_whose_product_it_is(acts, layout):
    names = feature_names(("relu1_1",), ("gram",), layout, 32)
    values = pooling.gram(acts, "spatial", layout)
    flat = acts.reshape(2, 64, -1).astype(np.float64)
    direct = np.einsum("nam,nbm->nab", flat, flat) / flat.shape[2]
    sources = feature_sources(names, layout)
    pairs = [s.filters for s in sources]
    assert len(set(pairs)) == len(names)  # no two features claim one entry
    for source, column in zip(sources, values.T):
        a, b = source.filters
        scale = np.sqrt(2) if layout == "triu" and a != b else 1.0
        np.testing.assert_allclose(column, scale * direct[:, a, b], rtol=2e-5)
        assert (a <= b) or layout == "full"


def test_mean_and_max_features_map_to_their_filter(acts):
    for pool, reduce in (("mean", np.mean), ("max", np.max)):
        names = feature_names(("relu1_1",), (pool,), "triu", 32)
        values = pooling.mean_pool(acts) if pool == "mean" else pooling.max_pool(acts)
        for source, column in zip(feature_sources(names), values.T):
            (f,) = source.filters
            np.testing.assert_allclose(column, reduce(acts[:, f], axis=(1, 2)), rtol=1e-5)


def test_vlad_features_map_to_word_and_filter(acts):
    words = np.random.default_rng(4).random((3, 64)).astype(np.float32)
    values = vlad_encode(acts, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    columns = acts.reshape(2, 64, -1).transpose(0, 2, 1)  # (n, m, c)
    nearest = np.argmin(((columns[:, :, None, :] - words) ** 2).sum(-1), axis=2)
    names = feature_names(("relu1_1",), ("vlad",), "triu", 3)
    seen = set()
    for source, column in zip(feature_sources(names), values.T):
        (f,), k = source.filters, source.word
        seen.add((k, f))
        direct = [(columns[i][nearest[i] == k, f] - words[k, f]).sum() for i in range(2)]
        np.testing.assert_allclose(column, direct, rtol=1e-4, atol=1e-5)
    assert len(seen) == 3 * 64


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("relu1_1/gram/2080", "relu1_1/gram has 2080 features"),
        ("relu1_1/mean/-1", "relu1_1/mean has 64 features"),
        ("relu1_1/median/0", "unknown pooling 'median'"),
        ("relu9_9/mean/0", "names no layer ('relu9_9')"),
        ("mean/0", "is not '{tap}/{pool}/{index}'"),
    ],
)
def test_names_that_name_no_feature_are_refused(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        feature_source(name)


def test_raw_features_have_no_filter():
    source = feature_source("raw/gram/0")
    assert source.filters == () and source.describe == "the image itself (gram)"


# ------------------------------------------------------------------ importance on a real forest
class _Forest:
    """The parts of a TextureClassifier permutation importance uses, over a plain forest."""

    def __init__(self, forest, path):
        self.forest, self.forest_path = forest, path
        self.classes_ = forest.classes_
        self.feature_importances_ = forest.feature_importances_
        # features 0-5 a tap's mean block, 6-11 its Gram block
        names = [f"relu1_1/mean/{i}" for i in range(6)] + [f"relu1_1/gram/{i}" for i in range(6)]
        self.featurizer = SimpleNamespace(get_feature_names_out=lambda: np.array(names))

    def predict_proba_features(self, X):
        return self.forest.predict_proba(X)


@pytest.fixture(scope="module")
def one_signal_forest(tmp_path_factory):
    """A forest on 12 features of which only feature 3 carries the class, and its ONNX file."""
    pytest.importorskip("skl2onnx")
    from microtex.analysis.classify import make_forest
    from microtex.engine.export import export_forest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 12)).astype(np.float32)
    y = np.where(X[:, 3] > 0, "b", "a")
    forest = make_forest(25, n_jobs=1, max_depth=3).fit(X, y)
    path = tmp_path_factory.mktemp("forest") / "forest.onnx"
    path.write_bytes(export_forest(forest, 12).SerializeToString())
    return _Forest(forest, path), X, y


def test_split_features_are_the_features_the_trees_split_on(one_signal_forest):
    model, _, _ = one_signal_forest
    expected = sorted({int(f) for tree in model.forest.estimators_
                       for f in tree.tree_.feature if f >= 0})  # fmt: skip
    assert split_features(model.forest_path).tolist() == expected


def test_permutation_importance_finds_the_one_informative_feature(one_signal_forest):
    from sklearn.inspection import permutation_importance as sklearn_permutation

    model, X, y = one_signal_forest
    result = permutation_importance(model, X, y, n_repeats=8)
    assert result["baseline"] == pytest.approx(1.0)
    best = result["features"][np.argmax(result["mean"])]
    assert best == 3 and result["mean"].max() > 0.3
    others = result["mean"][result["features"] != 3]
    assert np.all(others < 0.1)
    # the same quantity as scikit-learn's (another shuffle, so close, not equal)
    reference = sklearn_permutation(model.forest, X, y, scoring="f1_macro", n_repeats=8,
                                    random_state=0)  # fmt: skip
    assert result["mean"].max() == pytest.approx(reference.importances_mean[3], abs=0.08)
    with pytest.raises(ValueError, match=r"label\(s\) \['c'\] are not among"):
        permutation_importance(model, X, np.where(y == "a", "c", y))


def test_block_importance_shuffles_a_tap_and_pooling_at_once(one_signal_forest):
    model, X, y = one_signal_forest
    mean_block, gram_block = block_importance(model, X, y, n_repeats=6)
    assert [mean_block[k] for k in ("tap", "pool", "n_features")] == ["relu1_1", "mean", 6]
    assert mean_block["mean"] > 0.3 and mean_block["baseline"] == pytest.approx(1.0)
    assert gram_block["pool"] == "gram" and abs(gram_block["mean"]) < 0.05


@pytest.mark.torch
def test_a_bundle_carries_its_impurity_importances_and_ranks_them(stripe_classifier):
    model, pipeline, _ = stripe_classifier
    expected = pipeline.named_steps["forest"].feature_importances_
    np.testing.assert_array_equal(model.feature_importances_, expected)
    ranked = rank_features(model, "impurity", k=4)
    names = model.featurizer.get_feature_names_out()
    top = [names[i] for i in np.argsort(-expected, kind="stable")[:4]]
    assert [r.source.name for r in ranked] == top
    assert [r.importance for r in ranked] == pytest.approx(np.sort(expected)[::-1][:4])
    with pytest.raises(ValueError, match="needs permutation="):
        rank_features(model, "permutation")


# --------------------------------------------------------------------- characteristic filters
def test_characteristic_filters_are_the_largest_standardized_differences():
    rng = np.random.default_rng(1)
    acts = rng.normal(1.0, 0.1, (20, 6))
    labels = np.array(["a"] * 10 + ["b"] * 10)
    acts[:10, 4] += 1.0  # filter 4 fires in class a
    acts[10:, 1] += 0.5  # filter 1 in class b
    found = characteristic_filters(acts, labels, top=2, exemplars=2)
    assert [c.filter for c in found["a"]][0] == 4 and [c.filter for c in found["b"]][0] == 1
    first = found["a"][0]
    a, b = acts[:10, 4], acts[10:, 4]
    pooled = np.sqrt((9 * a.var(ddof=1) + 9 * b.var(ddof=1)) / 18)
    assert first.effect == pytest.approx((a.mean() - b.mean()) / pooled)
    assert first.mean_class == pytest.approx(a.mean())
    assert first.mean_rest == pytest.approx(b.mean())
    assert list(first.exemplars) == list(np.argsort(-a)[:2])
    with pytest.raises(ValueError, match="at least two classes"):
        characteristic_filters(acts, ["a"] * 20)
    # a class of one image is left out when two are required
    three = np.array(["a"] * 10 + ["b"] * 9 + ["c"])
    assert sorted(characteristic_filters(acts, three, min_images=2)) == ["a", "b"]
    assert sorted(characteristic_filters(acts, three)) == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"\(n_images=3, n_filters\)"):
        characteristic_filters(acts, ["a", "b", "a"])


@pytest.mark.torch
def test_characteristic_filters_of_stripes_match_a_direct_torch_computation(stripe_set):
    """Fine vs coarse stripes: the ONNX path picks the filters a torch pass and plain numpy pick."""
    torch = pytest.importorskip("torch")
    from microtex.backbones import BackboneConfig
    from microtex.backbones.vgg import build_torch_module
    from microtex.interpret.heatmap import mean_activations

    images, labels = stripe_set
    ids, acts = mean_activations(images, "relu2_1")
    module = build_torch_module(BackboneConfig(taps="relu2_1"))
    with torch.no_grad():
        direct = module(torch.from_numpy(images)[:, None])[0].mean(dim=(2, 3)).double().numpy()
    np.testing.assert_allclose(acts, direct, rtol=1e-3, atol=1e-4)
    found = characteristic_filters(acts, labels, top=5)
    for name in ("fine", "coarse"):
        inside = labels == name
        a, b = direct[inside], direct[~inside]
        with np.errstate(invalid="ignore"):  # filters silent on every image: 0 / 0
            d = (a.mean(0) - b.mean(0)) / np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2)
        assert [c.filter for c in found[name]] == list(np.argsort(-np.nan_to_num(d))[:5])
        assert all(c.effect > 2 for c in found[name])  # the stripe scale is a strong signal
