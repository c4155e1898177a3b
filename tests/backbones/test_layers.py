"""Layer names, presets and taps of the VGG backbones (DESIGN §3)."""

from __future__ import annotations

import pytest

from microtex import backbones
from microtex.errors import UnknownLayerError

from _vgg_helpers import VGG16_LAYERS, VGG19_LAYERS


def test_layer_names_golden():
    assert backbones.layer_names("vgg16") == VGG16_LAYERS
    assert backbones.layer_names("vgg19") == VGG19_LAYERS
    assert backbones.ARCHITECTURES == {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}


def test_presets_golden():
    presets = backbones.PRESETS
    assert presets["block_last"]["vgg16"] == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    assert presets["block_last"]["vgg19"] == ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
    for arch in ("vgg16", "vgg19"):
        assert presets["block_first"][arch] == (
            "relu1_1",
            "relu2_1",
            "relu3_1",
            "relu4_1",
            "relu5_1",
        )
        names = backbones.layer_names(arch)
        assert presets["all"][arch] == tuple(n for n in names if n.startswith("relu"))
        for preset in ("block_first", "block_last", "all"):
            assert backbones.resolve_taps(arch, preset) == presets[preset][arch]


def test_resolve_taps_order_dedup_and_comma_strings():
    assert backbones.resolve_taps("vgg19", "relu2_1,relu1_1") == ("relu1_1", "relu2_1")
    assert backbones.resolve_taps("vgg19", " relu3_1 , conv1_1,,relu3_1 ") == ("conv1_1", "relu3_1")
    assert backbones.resolve_taps("vgg16", ["relu5_3", "block_first", "conv2_2"]) == (
        "relu1_1", "relu2_1", "conv2_2", "relu3_1", "relu4_1", "relu5_1", "relu5_3",
    )  # fmt: skip
    assert (
        backbones.resolve_taps("vgg19", ("block_last",)) == backbones.PRESETS["block_last"]["vgg19"]
    )


@pytest.mark.parametrize("bad", ["relu3_4", "relu6_1", "conv1", "Relu1_1", ""])
def test_unknown_layer_names_the_value_and_lists_valid_names(bad):
    # relu3_4 exists in VGG19 only
    with pytest.raises(UnknownLayerError) as info:
        backbones.resolve_taps("vgg16", ["relu1_1", bad] if bad else bad)
    message = str(info.value)
    if bad:
        assert repr(bad) in message
        assert ", ".join(VGG16_LAYERS) in message
        assert "block_first" in message and "block_last" in message and "all" in message
    else:
        assert "no taps" in message


def test_tap_channels():
    assert [backbones.tap_channels(f"relu{b}_1") for b in range(1, 6)] == [64, 128, 256, 512, 512]
    assert backbones.tap_channels("conv3_4") == 256
    for bad in ("relu0_1", "relu6_1", "pool1", "relu1_5"):
        with pytest.raises(UnknownLayerError, match=repr(bad)):
            backbones.tap_channels(bad)


def test_tap_block_and_min_image_side():
    blocks = {name: int(name[4]) for name in VGG19_LAYERS}
    assert {name: backbones.tap_block(name) for name in VGG19_LAYERS} == blocks
    # the deepest tap of a block sees one position at 2**(block - 1) pixels (four 2x2 poolings)
    assert [backbones.min_image_side(f"relu{b}_1") for b in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backbones.min_image_side("conv5_4") == 16
    for bad in ("relu0_1", "relu6_1", "pool1", None):
        with pytest.raises(UnknownLayerError, match=repr(bad)):
            backbones.tap_block(bad)
        with pytest.raises(UnknownLayerError, match=repr(bad)):
            backbones.min_image_side(bad)


def test_forward_plan_pools_between_blocks_and_stops_at_the_deepest_tap():
    from microtex.backbones.layers import conv_shapes, forward_plan

    steps = forward_plan("vgg16", "relu5_3")
    assert [name for kind, name in steps if kind == "pool"] == ["pool1", "pool2", "pool3", "pool4"]
    assert [name for kind, name in steps if kind != "pool"] == list(VGG16_LAYERS)
    assert forward_plan("vgg19", "conv1_2")[-1] == ("conv", "conv1_2")
    assert list(conv_shapes("vgg16")) == list(VGG16_LAYERS[::2])
    with pytest.raises(UnknownLayerError, match="'relu3_4'"):
        forward_plan("vgg16", "relu3_4")
