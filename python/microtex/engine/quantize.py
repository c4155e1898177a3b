"""int8 for the CPU: static QDQ quantization of a convolutional graph, with its error brought down.

ONNX Runtime runs int8 convolutions (uint8 activations, int8 weights) on
VNNI CPUs at two to three times the float32 rate, but a naive static
quantization of VGG moves its features by several percent: activations are
quantized per tensor, and a VGG layer's channels span ranges a hundred times
apart, so most channels get a few of the 256 levels. Measured on real
micrographs (``benchmarks/bench_int8.py``), two corrections bring the
block_first features from 2–4.5 % (median relative error) to 0.3–2 %:

* **channel equalization** (before quantizing): for a Conv → ReLU (→ pool) →
  Conv chain whose middle tensor is not an output, each middle channel c is
  divided by s_c (the first conv's weights and bias) and multiplied back in
  the second conv's input weights — exact in float, since ReLU and both
  poolings commute with positive scales. s_c is the channel's
  ``equalize_percentile``-th percentile on the calibration images over the
  median of those, so every channel spans about the same range and uses all
  256 levels. Outputs (taps) are never rescaled.
* **sequential bias correction** (after): quantization shifts each
  convolution's output channels by a mean error; conv by conv in graph
  order, the mean of its output on the calibration images in the quantized
  graph (with every earlier conv already corrected) is compared with the
  float graph's, and the difference leaves its int32 bias.

Weights are int8 per output channel, activations uint8 per tensor (MinMax
over the calibration images), in ONNX's QDQ format, which ONNX Runtime fuses
into integer kernels. Needs ``onnx`` (the torch extra).
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from microtex._validation import check_real
from microtex.engine.export import require_onnx

__all__ = ["QUANTIZATION", "equalize_channels", "quantize_static_int8"]

log = logging.getLogger("microtex.engine.quantize")

#: What :func:`quantize_static_int8` does by default (recorded with every graph it makes).
QUANTIZATION = {
    "format": "QDQ",
    "weights": "int8, per output channel",
    "activations": "uint8, per tensor, MinMax",
    "equalize_percentile": 99.99,
    "bias_correction": "sequential",
}
_POOLS = ("MaxPool", "AveragePool")


def _calibration(images: Iterable[np.ndarray], input_name: str) -> list[dict[str, np.ndarray]]:
    feeds = []
    for i, image in enumerate(images):
        batch = np.asarray(image, dtype=np.float32)
        if batch.ndim == 2:
            batch = batch[None, None]
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(
                f"calibration image {i} must be (height, width) or (n, 1, height, width), "
                f"got shape {batch.shape}"
            )
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"calibration image {i} has NaN or infinite pixels")
        feeds.append({input_name: np.ascontiguousarray(batch)})
    if not feeds:
        raise ValueError("quantization needs at least one calibration image")
    return feeds


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _with_outputs(model, names: Sequence[str]):
    onnx = require_onnx("int8 quantization")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return copy


def _channel_statistics(model, feeds, names: Sequence[str], reduce) -> dict[str, np.ndarray]:
    """``reduce(list of (channels, values) arrays)`` of each named tensor over the feeds."""
    session = _session(_with_outputs(model, names))
    collected: dict[str, list] = {name: [] for name in names}
    for feed in feeds:
        for name, value in zip(names, session.run(list(names), feed)):
            collected[name].append(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1))
    return {name: reduce(parts) for name, parts in collected.items()}


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _chains(model) -> list[tuple[Any, str, Any]]:
    """``(first conv, middle tensor, second conv)`` of every Conv → Relu (→ pool) → Conv chain.

    The middle tensor (the ReLU's or the pool's output) and the ReLU's output
    must feed nothing else and be no graph output.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    users = _consumers(graph)

    def only_user(name):
        found = users.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs else None

    chains = []
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 3:
            continue
        relu = only_user(conv.output[0])
        if relu is None or relu.op_type != "Relu":
            continue
        middle = relu.output[0]
        after = only_user(middle)
        if after is not None and after.op_type in _POOLS:
            middle = after.output[0]
            after = only_user(middle)
        group = next((a.i for a in after.attribute if a.name == "group"), 1) if after else None
        if after is not None and after.op_type == "Conv" and group == 1:
            chains.append((conv, relu.output[0], after))
    return chains


def equalize_channels(model, feeds, percentile: float = QUANTIZATION["equalize_percentile"]):
    """Rescale the channels inside Conv → ReLU (→ pool) → Conv chains; returns the chains' count.

    ``model`` (an ``onnx.ModelProto``, float32) is changed in place; its
    outputs are unchanged up to float rounding. See the module docstring.
    """
    onnx = require_onnx("int8 quantization")
    from onnx import numpy_helper

    percentile = check_real("percentile", percentile, minimum=0, maximum=100, inclusive=False)
    chains = _chains(model)
    if not chains:
        return 0
    ranges = _channel_statistics(
        model,
        feeds,
        [relu_out for _, relu_out, _ in chains],
        lambda parts: np.percentile(np.concatenate(parts, axis=1), percentile, axis=1),
    )
    initializers = {i.name: i for i in model.graph.initializer}

    def replace(name, array):
        initializers[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    for first, relu_out, second in chains:
        spread = ranges[relu_out]
        live = spread > 0
        if not live.any():
            continue
        scale = np.where(live, spread / np.median(spread[live]), 1.0)
        weight, bias = (numpy_helper.to_array(initializers[n]) for n in first.input[1:3])
        replace(first.input[1], weight / scale[:, None, None, None])
        replace(first.input[2], bias / scale)
        following = numpy_helper.to_array(initializers[second.input[1]])
        replace(second.input[1], following * scale[None, :, None, None])
    onnx.checker.check_model(model)
    return len(chains)


class _Reader:
    """onnxruntime's CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def _correct_biases(float_model, quantized, feeds) -> int:
    """Sequential bias correction of a QDQ model (in place); returns the convs corrected."""
    from onnx import numpy_helper

    float_convs = {n.name: n.output[0] for n in float_model.graph.node if n.op_type == "Conv"}
    initializers = {i.name: i for i in quantized.graph.initializer}
    producer = {out: node for node in quantized.graph.node for out in node.output}
    targets = []
    for node in quantized.graph.node:
        if node.op_type != "Conv" or node.name not in float_convs or len(node.input) < 3:
            continue
        dequantize = producer.get(node.input[2])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue  # a convolution left in float
        targets.append((node, dequantize.input[0], dequantize.input[1]))
    if not targets:
        return 0

    def means(parts):
        return np.mean([p.mean(axis=1, dtype=np.float64) for p in parts], axis=0)

    reference = _channel_statistics(float_model, feeds, list(float_convs.values()), means)
    for node, bias_name, scale_name in targets:
        measured = _channel_statistics(quantized, feeds, [node.output[0]], means)[node.output[0]]
        shift = measured - reference[float_convs[node.name]]
        scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float64)
        bias = numpy_helper.to_array(initializers[bias_name]).astype(np.int64)
        corrected = np.clip(bias - np.round(shift / scale), -(2**31), 2**31 - 1)
        initializers[bias_name].CopyFrom(
            numpy_helper.from_array(corrected.astype(np.int32), bias_name)
        )
    return len(targets)


def quantize_static_int8(
    float_model,
    calibration: Iterable[np.ndarray],
    *,
    input_name: str = "image",
    equalize_percentile: float | None = QUANTIZATION["equalize_percentile"],
    bias_correction: bool = True,
):
    """A QDQ int8 copy of a float32 convolutional graph, calibrated on images.

    Parameters
    ----------
    float_model : onnx.ModelProto or path
        The float32 graph (e.g. a backbone exported with direct convolutions).
    calibration : iterable of arrays
        Images ``(height, width)`` or batches ``(n, 1, height, width)`` in
        [0, 1], as the graph takes them; 20 or more real ones calibrate well.
    input_name : str
    equalize_percentile : float or None
        Percentile of each channel that channel equalization evens out (None:
        no equalization).
    bias_correction : bool

    Every convolution is quantized: leaving one in float32 (mixed precision)
    made ONNX Runtime 1.32's graph optimizer produce features 30 % off on
    VGG19 (a float conv between QDQ convs; correct with optimizations off), so
    the accuracy comes from equalization and bias correction instead.

    Returns
    -------
    (onnx.ModelProto, dict)
        The quantized graph and what was done (``QUANTIZATION`` with the
        options used, the chains equalized and the convs corrected).
    """
    onnx = require_onnx("int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = _calibration(calibration, input_name)
    if isinstance(float_model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(float_model)
        float_model = copy
    else:
        float_model = onnx.load(os.fspath(float_model))
    # bias correction pairs float and quantized convs by node name: make names unique
    seen: set[str] = set()
    for i, node in enumerate(float_model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}_microtex"
        seen.add(node.name)
    with tempfile.TemporaryDirectory(prefix="microtex-int8-") as tmp:
        source, prepared, target = (pathlib.Path(tmp) / n for n in ("a.onnx", "b.onnx", "c.onnx"))
        onnx.save(float_model, source)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(prepared)
        chains = 0 if equalize_percentile is None else equalize_channels(
            model, feeds, equalize_percentile
        )
        onnx.save(model, prepared)
        quantize_static(
            str(prepared),
            str(target),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(target)
    corrected = _correct_biases(model, quantized, feeds) if bias_correction else 0
    record = {
        **QUANTIZATION,
        "equalize_percentile": equalize_percentile,
        "bias_correction": "sequential" if bias_correction else None,
        "calibration_images": sum(len(f[input_name]) for f in feeds),
        "chains_equalized": chains,
        "convs_bias_corrected": corrected,
    }
    log.info("int8: %d chains equalized, %d convs bias-corrected", chains, corrected)
    return quantized, record
