"""Backbone graphs with conv_algorithm="winograd" (microtex.engine.winograd through export_onnx)."""

from __future__ import annotations

import numpy as np
import pytest

from microtex import backbones
from microtex.backbones import BackboneConfig, Heads
from microtex.engine.metadata import read_metadata


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_conv_algorithm_validation(tmp_path, default_config):
    with pytest.raises(ValueError, match="'fft'"):
        backbones.check_conv_algorithm("fft")
    with pytest.raises(ValueError, match="precision='fp32', not 'fp16'"):
        backbones.check_conv_algorithm("winograd", "fp16")
    backbones.check_conv_algorithm("winograd", "fp32")
    backbones.check_conv_algorithm("direct", "fp16")
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="opset >= 13, not 12"):
        backbones.export_onnx(
            default_config, tmp_path / "a.onnx", opset=12, conv_algorithm="winograd"
        )
    with pytest.raises(ValueError, match="winograd"):
        backbones.cached_onnx(BackboneConfig(precision="fp16"), conv_algorithm="winograd")
    assert not list(tmp_path.iterdir())


@pytest.mark.torch
def test_winograd_backbone_parity_and_metadata(default_config, default_onnx, image_batch):
    pytest.importorskip("torch")
    import torch

    heads = Heads()
    path = backbones.cached_onnx(default_config, heads, conv_algorithm="winograd")
    assert path != backbones.cached_onnx(default_config, heads)
    assert backbones.cached_onnx(default_config, heads, conv_algorithm="winograd") == path
    metadata = read_metadata(path)
    assert metadata["conv_algorithm"] == "winograd"
    # every 3x3 convolution from 128 input channels, up to the deepest tap relu5_1
    assert metadata["winograd_layers"] == [
        "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
        "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1",
    ]  # fmt: skip
    assert read_metadata(default_onnx)["conv_algorithm"] == "direct"
    assert backbones.winograd_layers(default_config) == tuple(metadata["winograd_layers"])

    import onnxruntime

    names = backbones.output_names(default_config, heads)
    images = image_batch  # 67x45: at every level one side is not a multiple of the 4x4 tile
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = dict(zip(names, session.run(None, {"image": images}), strict=True))
    module = backbones.build_torch_module(default_config, heads)
    with torch.no_grad():
        reference = {
            n: t.numpy() for n, t in zip(names, module(torch.from_numpy(images)), strict=True)
        }
    errors = {n: relative_error(ours[n], reference[n]) for n in names}
    assert max(errors.values()) < 2e-5, errors
    # the first two blocks are not rewritten: bit for bit the direct graph's numbers
    direct = onnxruntime.InferenceSession(
        str(backbones.cached_onnx(default_config, heads)), providers=["CPUExecutionProvider"]
    )
    direct_outputs = dict(zip(names, direct.run(None, {"image": images}), strict=True))
    np.testing.assert_array_equal(ours["relu2_1/gram"], direct_outputs["relu2_1/gram"])
    assert not np.array_equal(ours["relu3_1/gram"], direct_outputs["relu3_1/gram"])
