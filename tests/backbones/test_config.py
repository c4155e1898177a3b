"""Backbone configuration, pooling heads and their options (DESIGN §3, §4)."""

from __future__ import annotations

import json

import pytest

from microtex import backbones
from microtex.backbones import BackboneConfig, Heads
from microtex.errors import UnknownLayerError

from _helpers import run_python


def test_config_validation_and_round_trip(tmp_path):
    config = BackboneConfig()
    assert config.taps == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert (config.arch, config.weights, config.block_pooling) == ("vgg19", None, "max")
    assert config.deepest_tap == "relu5_1"
    assert config.input_normalization == "caffe_bgr"
    assert BackboneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert backbones.make_config(taps="relu1_1", block_pooling="avg") == BackboneConfig(
        taps=("relu1_1",), block_pooling="avg"
    )

    user = BackboneConfig(arch="vgg16", weights=tmp_path / "w.pth", taps="block_last")
    assert user.weights == str(tmp_path / "w.pth")
    assert user.input_normalization == "imagenet"
    assert user.deepest_tap == "relu5_3"
    assert BackboneConfig.from_dict(user.to_dict()) == user

    with pytest.raises(ValueError, match="'vgg11'"):
        BackboneConfig(arch="vgg11")
    with pytest.raises(ValueError, match="'median'"):
        BackboneConfig(block_pooling="median")
    with pytest.raises(ValueError, match="only for vgg19"):
        BackboneConfig(arch="vgg16")
    with pytest.raises(UnknownLayerError, match="'relu9_9'"):
        BackboneConfig(taps="relu9_9")


def test_precision_validation_and_round_trip():
    config = BackboneConfig(taps="relu1_1", precision="fp16")
    assert config.to_dict()["precision"] == "fp16"
    assert BackboneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert backbones.make_config(taps="relu1_1", precision="fp16") == config
    # a manifest written before precision existed reads as fp32
    assert BackboneConfig.from_dict({"taps": ["relu1_1"]}).precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        BackboneConfig(precision="bf16")


def test_heads_validation_output_names_and_sizes():
    config = BackboneConfig(taps="relu2_1,relu1_1")
    assert backbones.output_names(config) == ("relu1_1", "relu2_1")
    heads = Heads()
    assert heads == Heads(pools="mean,max,gram", gram_normalization="spatial", gram_layout="triu")
    assert backbones.output_names(config, heads) == (
        "relu1_1/mean", "relu1_1/max", "relu1_1/gram",
        "relu2_1/mean", "relu2_1/max", "relu2_1/gram",
    )  # fmt: skip
    assert backbones.feature_sizes(config, heads) == {
        "relu1_1/mean": 64, "relu1_1/max": 64, "relu1_1/gram": 64 * 65 // 2,
        "relu2_1/mean": 128, "relu2_1/max": 128, "relu2_1/gram": 128 * 129 // 2,
    }  # fmt: skip
    assert backbones.feature_sizes(config, Heads(pools=("gram",), gram_layout="full")) == {
        "relu1_1/gram": 64 * 64, "relu2_1/gram": 128 * 128,
    }  # fmt: skip
    assert Heads.from_dict(heads.to_dict()) == heads
    with pytest.raises(ValueError, match="'vlad'"):
        Heads(pools=("vlad",))
    with pytest.raises(ValueError, match="'l2'"):
        Heads(gram_normalization="l2")
    with pytest.raises(ValueError, match="'tril'"):
        Heads(gram_layout="tril")


def test_import_does_not_load_torch():
    code = (
        "import sys, microtex.backbones, microtex.bundle\n"
        "microtex.backbones.BackboneConfig(); microtex.backbones.default_weights_path()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx imported'\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


def test_auto_conv_algorithm(default_config, shallow_config):
    assert backbones.auto_conv_algorithm(default_config, on_cpu=True) == "winograd"
    assert backbones.auto_conv_algorithm(default_config, on_cpu=False) == "direct"
    fp16 = BackboneConfig(precision="fp16")
    assert backbones.auto_conv_algorithm(fp16, on_cpu=True) == "direct"
    # relu1_1 and relu2_1 stop before conv2_2, the first layer with 128 input channels
    assert backbones.winograd_layers(shallow_config) == ()
    assert backbones.auto_conv_algorithm(shallow_config, on_cpu=True) == "direct"
    vgg16_last = backbones.winograd_layers(
        BackboneConfig(arch="vgg16", weights="x.pth", taps="relu5_3")
    )
    assert vgg16_last[0] == "conv2_2" and vgg16_last[-1] == "conv5_3" and len(vgg16_last) == 10


def test_resolve_conv_algorithm_keeps_a_choice_and_resolves_auto_by_device(
    default_config, monkeypatch
):
    # the one rule the featurizer and the export scripts share
    # (the device is resolved by the runtime layer, which backbones does not import)
    from microtex.engine import session
    from microtex.features.stream import graph_conv_algorithm

    def resolve(conv_algorithm, device):
        return graph_conv_algorithm(conv_algorithm, default_config, device)

    for providers, auto in (([session.CPU], "winograd"), ([session.CUDA, session.CPU], "direct")):
        monkeypatch.setattr(session, "available_providers", lambda providers=providers: providers)
        assert resolve("auto", "auto") == auto
        assert resolve("auto", "cpu") == "winograd"
        assert resolve("direct", "cpu") == "direct"
        assert resolve("winograd", "auto") == "winograd"
        assert resolve("direct", "cuda") == "direct"  # the device matters for "auto" only


def test_make_config_takes_the_deprecated_pooling_name():
    with pytest.warns(FutureWarning, match="pooling is deprecated.*use block_pooling"):
        config = backbones.make_config(taps="relu1_1", pooling="avg")
    assert config.block_pooling == "avg"
    with pytest.raises(ValueError, match="pooling='max' and block_pooling='avg' both given"):
        backbones.make_config(taps="relu1_1", pooling="max", block_pooling="avg")


def test_block_pooling_option_and_the_old_pooling_key():
    config = BackboneConfig(taps="relu1_1", block_pooling="avg")
    document = config.to_dict()
    assert document["block_pooling"] == "avg" and "pooling" not in document
    # bundles and cached files written before the rename store "pooling"
    old = {key: value for key, value in document.items() if key != "block_pooling"}
    assert BackboneConfig.from_dict({**old, "pooling": "avg"}) == config
    assert BackboneConfig.from_dict({**old, "pooling": "max", "block_pooling": "avg"}) == config
    assert backbones.BLOCK_POOLINGS == ("max", "avg")
    with pytest.raises(
        ValueError, match=r"unknown block_pooling 'min'; choose one of \['max', 'avg'\]"
    ):
        BackboneConfig(block_pooling="min")
    with pytest.raises(ValueError, match="unknown block_pooling 'min'"):
        backbones.check_trunk_options("min", "fp32")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        backbones.check_trunk_options("max", "fp8")
    with pytest.raises(TypeError):
        BackboneConfig(pooling="max")  # the dataclass field is block_pooling


def test_heads_sizes_follow_the_shared_pool_arithmetic():
    from microtex._pools import GRAPH_POOLS, n_pooled_features

    config = BackboneConfig(taps="relu3_1,relu5_1")
    for layout in ("full", "triu"):
        heads = Heads(gram_layout=layout)
        assert heads.pools == GRAPH_POOLS
        sizes = backbones.feature_sizes(config, heads)
        for name, size in sizes.items():
            tap, pool = name.split("/")
            channels = backbones.tap_channels(tap)
            assert size == n_pooled_features(pool, channels, layout=layout)
    with pytest.raises(ValueError, match="VLAD is fitted state"):
        Heads(pools="mean,vlad")
