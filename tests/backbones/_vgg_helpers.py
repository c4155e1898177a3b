"""Helpers of the backbone tests: golden layer lists, NumPy references, torch/ONNX runs."""

from __future__ import annotations

import pathlib

import numpy as np

from microtex import backbones

from _helpers import (  # noqa: F401  (shared with the CLI tests)
    TORCHVISION_VGG16_CONVS,
    VGG16_CONV_SHAPES,
    fake_vgg16_state,
    reference_gram,
    save_state,
)

EXPORT_DIR = pathlib.Path(__file__).resolve().parents[2] / "export"

VGG16_LAYERS = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3",
)  # fmt: skip
VGG19_LAYERS = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4",
)  # fmt: skip
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def max_relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def reference_pool(activation, pool, normalization="spatial", layout="triu"):
    """DESIGN §4 in NumPy (float64), from an (n, c, h, w) activation."""
    activation = np.asarray(activation, dtype=np.float64)
    features = activation.reshape(*activation.shape[:2], -1)
    if pool == "mean":
        return features.mean(axis=2)
    if pool == "max":
        return features.max(axis=2)
    return reference_gram(activation, normalization, layout)


def ort_session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_both(config, heads, path, images):
    """(onnx outputs, torch outputs) as dicts name -> array."""
    import torch

    session = ort_session(path)
    names = [output.name for output in session.get_outputs()]
    assert tuple(names) == backbones.output_names(config, heads)
    onnx_outputs = dict(zip(names, session.run(None, {"image": images}), strict=True))
    module = build_module(config, heads)
    with torch.no_grad():
        torch_outputs = {
            n: t.numpy() for n, t in zip(names, module(torch.from_numpy(images)), strict=True)
        }
    return onnx_outputs, torch_outputs


_MODULES: dict = {}


def build_module(config, heads=None):
    key = (config, heads)
    if key not in _MODULES:
        _MODULES[key] = backbones.build_torch_module(config, heads)
    return _MODULES[key]
