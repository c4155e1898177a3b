"""Heat maps: the ONNX activations at the input resolution, where the texture is."""

from __future__ import annotations

import numpy as np
import pytest
from _stripes import stripes

from microtex.backbones import BackboneConfig
from microtex.errors import UnknownLayerError
from microtex.interpret.heatmap import (
    activations,
    classifier_heatmaps,
    feature_map,
    filter_heatmap,
    overlay,
    upsample,
)
from microtex.interpret.importance import rank_features

pytestmark = pytest.mark.torch


def test_upsampling_centres_each_map_pixel_on_the_pixels_it_covers():
    np.testing.assert_allclose(upsample([[0.0, 1.0]], (1, 4))[0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(upsample(np.full((3, 5), 2.0), (12, 20)), 2.0)
    assert upsample(np.zeros((3, 5)), (13, 21)).shape == (13, 21)
    with pytest.raises(ValueError, match="2-D"):
        upsample(np.zeros(3), (3, 3))


def test_onnx_activations_match_the_torch_module():
    torch = pytest.importorskip("torch")
    from microtex.backbones.vgg import build_torch_module

    image = stripes(6, 1, size=40)[0]
    ((image_id, seen, acts),) = list(activations([image], BackboneConfig(taps="relu1_1,relu2_1")))
    assert image_id == "array[0]" and seen.shape == (40, 40)
    module = build_torch_module(BackboneConfig(taps="relu1_1,relu2_1"))
    with torch.no_grad():
        direct = [t[0].numpy() for t in module(torch.from_numpy(image)[None, None])]
    np.testing.assert_allclose(acts["relu1_1"], direct[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(acts["relu2_1"], direct[1], rtol=1e-4, atol=2e-4)


def test_a_filter_map_lights_up_where_its_texture_is():
    """Left half stripes, right half flat gray: a stripe filter's map is high on the left only."""
    image = np.full((64, 64), 0.5, dtype=np.float32)
    image[:, :32] = stripes(4, 1, size=64, seed=5)[0][:, :32]
    ((_, _, acts),) = list(activations([image], BackboneConfig(taps="relu2_1")))
    left, right = acts["relu2_1"][:, 4:-4, 2:12], acts["relu2_1"][:, 4:-4, 20:30]
    f = int(np.argmax(left.mean(axis=(1, 2)) - right.mean(axis=(1, 2))))
    heat = filter_heatmap(image, "relu2_1", f)
    assert heat.heat.shape == (64, 64) and heat.what == f"relu2_1 #{f}"
    np.testing.assert_allclose(heat.heat, feature_map(acts, "relu2_1", (f,), (64, 64)))
    assert heat.heat[8:-8, 4:24].mean() > 5 * heat.heat[8:-8, 40:60].mean()
    pair = feature_map(acts, "relu2_1", (f, f), (64, 64))
    np.testing.assert_allclose(pair, upsample(acts["relu2_1"][f] ** 2, (64, 64)), rtol=1e-5)
    with pytest.raises(UnknownLayerError, match="'relu3_1' is not an output"):
        feature_map(acts, "relu3_1", (0,), (64, 64))
    with pytest.raises(ValueError, match="not one or two of relu2_1's 128"):
        feature_map(acts, "relu2_1", (128,), (64, 64))


def test_a_classifier_map_is_its_top_features_weighted_by_importance(stripe_classifier, tmp_path):
    model, _, _ = stripe_classifier
    ranked = rank_features(model, "impurity", k=3)
    image = stripes(4, 1, size=48, seed=9)[0]
    (heat,) = list(classifier_heatmaps(model, [image], ranked))
    ((_, _, acts),) = list(activations([image], model.featurizer))
    expected = np.zeros((48, 48))
    for r in ranked:
        m = feature_map(acts, r.source.tap, r.source.filters, (48, 48))
        expected += r.importance * m / m.max()
    np.testing.assert_allclose(heat.heat, expected / sum(r.importance for r in ranked), rtol=1e-5)
    assert 0 <= heat.heat.min() and heat.heat.max() <= 1
    path = overlay(heat, tmp_path / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UnknownLayerError, match="'relu3_1' is not an output of this graph"):
        from microtex.interpret.heatmap import mean_activations

        mean_activations([image], "relu3_1", model.featurizer)


def test_a_map_covers_exactly_the_pixels_its_tap_sees_on_odd_sizes():
    """relu3_1 has stride 4: on a 50 x 37 image its 12 x 9 map covers 48 x 36 pixels."""
    acts = {"relu3_1": np.random.default_rng(0).random((256, 12, 9)).astype(np.float32)}
    heat = feature_map(acts, "relu3_1", (3,), (50, 37))
    assert heat.shape == (50, 37)
    np.testing.assert_allclose(heat[:48, :36], upsample(acts["relu3_1"][3], (48, 36)))
    np.testing.assert_array_equal(heat[48:, :36], np.repeat(heat[47:48, :36], 2, axis=0))
    np.testing.assert_array_equal(heat[:, 36], heat[:, 35])
