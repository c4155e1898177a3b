"""Filter textures: activation maximization raises its filter, is cached, and checks its input."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from microtex.backbones import BackboneConfig
from microtex.errors import UnknownLayerError
from microtex.interpret import filters as filters_module
from microtex.interpret.filters import (
    TextureSettings,
    filter_texture,
    texture_grid,
    top_filters,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

FAST = TextureSettings(size=48, steps=40)


@functools.cache
def _module(layer: str):
    from microtex.backbones.vgg import build_torch_module

    return build_torch_module(BackboneConfig(taps=layer))


def _acts(layer: str, image: np.ndarray):
    with torch.no_grad():
        return _module(layer)(torch.from_numpy(image)[None, None])[0][0]


def _channel_means(layer: str, image: np.ndarray) -> np.ndarray:
    """Each filter's mean activation of ``layer`` on ``image``, from a module built here."""
    return _acts(layer, image).mean(dim=(1, 2)).numpy().astype(np.float64)


@pytest.mark.parametrize(("layer", "target"), [("relu2_1", 10), ("relu3_1", 77)])
def test_the_ascent_raises_its_filter_several_fold_and_more_than_another(layer, target):
    texture = filter_texture(layer, target, settings=FAST, cache=False)
    before, after = _channel_means(layer, texture.noise), _channel_means(layer, texture.image)
    gain = after[target] / before[target]
    assert gain > 4
    # what the texture reports is what an independent forward pass measures
    assert texture.final == pytest.approx(after[target], rel=1e-4)
    assert texture.start == pytest.approx(before[target], rel=1e-4)
    other = int(np.random.default_rng(7).choice(np.delete(np.arange(len(after)), target)))
    assert gain > (after[other] + 1e-6) / (before[other] + 1e-6)
    # on the texture the target is among the layer's most active filters
    assert np.sum(after > after[target]) < len(after) // 10
    assert texture.image.shape == (48, 48) and texture.image.dtype == np.float32
    assert 0 <= texture.image.min() and texture.image.max() <= 1 and texture.image.std() > 0.05


def test_a_gram_pair_raises_the_mean_product_of_its_two_filters():
    texture = filter_texture("relu2_1", (3, 40), settings=FAST, cache=False)
    assert texture.label == "relu2_1 #3×#40"
    assert texture.gain > 4
    acts = _acts("relu2_1", texture.image)
    assert texture.final == pytest.approx(float((acts[3] * acts[40]).mean()), rel=1e-4)


def test_the_pixel_parametrization_also_works():
    settings = TextureSettings(size=48, steps=40, parametrization="pixel", learning_rate=0.05)
    assert filter_texture("relu2_1", 10, settings=settings, cache=False).gain > 4


def test_textures_are_seeded_and_cached_per_backbone_and_settings(monkeypatch, tmp_path):
    FAST = TextureSettings(size=32, steps=8)  # noqa: N806
    first = filter_texture("relu1_1", 5, settings=FAST, cache_dir=tmp_path)
    again = filter_texture("relu1_1", 5, settings=FAST, cache=False)
    np.testing.assert_array_equal(first.image, again.image)  # the same seed, the same texture

    def fail(*args):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(filters_module, "_render", fail)
    cached = filter_texture("relu1_1", 5, settings=FAST, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.image, first.image)
    assert cached.final == first.final
    with pytest.raises(AssertionError, match="rendered although cached"):  # another seed
        filter_texture("relu1_1", 5, settings=TextureSettings(size=32, steps=8, seed=1),
                       cache_dir=tmp_path)  # fmt: skip
    with pytest.raises(AssertionError, match="rendered although cached"):  # another backbone
        filter_texture("relu1_1", 5, settings=FAST, cache_dir=tmp_path,
                       config=BackboneConfig(block_pooling="avg", taps="relu1_1"))  # fmt: skip
    # a damaged cached file is rendered again, not read
    monkeypatch.undo()
    (damaged,) = (tmp_path / "textures").glob("*.npz")
    damaged.write_bytes(damaged.read_bytes()[:-20])
    redone = filter_texture("relu1_1", 5, settings=FAST, cache_dir=tmp_path)
    np.testing.assert_array_equal(redone.image, first.image)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: filter_texture("relu9_1", 0), UnknownLayerError, "unknown layer 'relu9_1'"),
        (lambda: filter_texture("relu1_1", 64), ValueError, "filter 64 is not one of relu1_1's 64"),
        (lambda: filter_texture("relu1_1", (1, 2, 3)), ValueError, "one filter or a pair"),
        (lambda: filter_texture("relu5_1", 0, settings=TextureSettings(size=8)), ValueError,
         "size 8 is smaller than 16 pixels"),
        (lambda: TextureSettings(parametrization="wavelet"), ValueError, "wavelet"),
        (lambda: TextureSettings(steps=0), ValueError, "steps"),
        (lambda: TextureSettings(jitter=-1), ValueError, "jitter"),
    ],
)  # fmt: skip
def test_bad_requests_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_settings_are_stored_as_plain_numbers_so_numpy_values_key_the_cache(tmp_path):
    settings = TextureSettings(size=np.int64(16), steps=np.int32(2), decay=0, seed=np.uint8(1))
    assert settings == TextureSettings(size=16, steps=2, decay=0.0, seed=1)
    assert type(settings.size) is int and type(settings.decay) is float
    texture = filter_texture("relu1_1", np.int64(3), settings=settings, cache_dir=tmp_path)
    assert texture.filters == (3,) and texture.image.shape == (16, 16)


@pytest.mark.parametrize("change", [{"jitter": 0}, {"decay": 0.5}, {"learning_rate": 0.01}])
def test_each_regularizer_setting_changes_the_texture(change):
    base = TextureSettings(size=24, steps=6)
    changed = TextureSettings(**{**base.to_dict(), **change})
    a = filter_texture("relu1_1", 5, settings=base, cache=False).image
    b = filter_texture("relu1_1", 5, settings=changed, cache=False).image
    assert np.abs(a - b).max() > 1e-3


def test_top_filters_ranks_by_mean_activation():
    acts = np.array([[0.0, 3.0, 1.0, 3.0], [0.0, 1.0, 1.5, 1.0]])
    assert top_filters(acts, 3).tolist() == [1, 3, 2]  # means 2, 2, 1.25: a tie goes by index
    with pytest.raises(ValueError, match="NaN"):
        top_filters(np.array([[np.nan]]))


def test_a_layer_grid_draws_the_filters_most_active_on_the_images(tmp_path):
    from _stripes import stripes

    from microtex.interpret.filters import layer_grid

    images = stripes(4, 3, size=40)
    tiny = TextureSettings(size=16, steps=2)
    path, textures = layer_grid("relu1_1", tmp_path / "top.png", images=images, k=3, settings=tiny)
    means = np.mean([_channel_means("relu1_1", image) for image in images], axis=0)
    assert [t.filters[0] for t in textures] == list(np.argsort(-means, kind="stable")[:3])
    assert path.read_bytes()[:4] == b"\x89PNG"
    _, chosen = layer_grid("relu1_1", tmp_path / "chosen.png", filters=[5, (1, 2)], settings=tiny)
    assert [t.filters for t in chosen] == [(5,), (1, 2)]
    with pytest.raises(ValueError, match="give filters, or images"):
        layer_grid("relu1_1", tmp_path / "none.png")


def test_a_texture_grid_is_a_png(tmp_path):
    texture = filter_texture("relu1_1", 0, settings=TextureSettings(size=16, steps=2), cache=False)
    path = texture_grid([texture, texture], tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="1 titles for 2 textures"):
        texture_grid([texture, texture], tmp_path / "x.png", titles=["a"])
