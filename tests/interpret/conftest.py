"""A tiny two-class classifier bundle (fine vs coarse stripes) for the interpret tests."""

from __future__ import annotations

import numpy as np
import pytest
from _stripes import stripes


@pytest.fixture(scope="session")
def stripe_set():
    """16 images: 8 fine (period 4 px) then 8 coarse (period 12 px), and their labels."""
    images = stripes(4, 8, seed=1) + stripes(12, 8, seed=2)
    return np.stack(images), np.array(["fine"] * 8 + ["coarse"] * 8)


@pytest.fixture(scope="session")
def stripe_classifier(stripe_set, tmp_path_factory):
    """``(model, pipeline, path)`` of a classifier bundle (VGG19 relu1_1, relu2_1; mean, Gram)."""
    pytest.importorskip("torch")
    pytest.importorskip("skl2onnx")
    from sklearn.pipeline import Pipeline

    from microtex import TextureFeaturizer, load_bundle
    from microtex.analysis.classify import make_forest, save_classifier

    images, labels = stripe_set
    featurizer = TextureFeaturizer(taps="relu1_1,relu2_1", pool="mean,gram", device="cpu")
    pipeline = Pipeline([("features", featurizer), ("forest", make_forest(30, n_jobs=1))])
    pipeline.fit(images, labels)
    path = save_classifier(pipeline, tmp_path_factory.mktemp("clf") / "stripes")
    return load_bundle(path), pipeline, path
