"""int8 for the CPU: static QDQ quantization of a convolutional graph, with its error brought down.

ONNX Runtime runs int8 convolutions (uint8 activations, int8 weights) on
VNNI CPUs at two to three times the float32 rate, but a naive static
quantization of VGG moves its features by several percent. Measured on real
micrographs (``benchmarks/bench_int8.py``), three corrections bring the
block_first features from 2–4.5 % (median relative error) to 0.1–1.5 %:

* **channel equalization** (before quantizing): activations are quantized per
  tensor, and a VGG layer's channels span ranges a hundred times apart, so
  most channels would get a few of the 256 levels. For a Conv → ReLU (→ pool)
  → Conv chain each middle channel c is divided by s_c (the first conv's
  weights and bias) and multiplied back in the second conv's input weights —
  exact in float, since ReLU and both poolings commute with positive scales.
  s_c is the channel's ``equalize_percentile``-th percentile on the
  calibration images over the median of those, to the power
  ``equalize_strength`` (``EQUALIZE_STRENGTH``, halfway). Where the middle
  tensor is a tap (a graph output), the power is ``TAP_STRENGTH`` and the tap
  is read back through a per-channel DequantizeLinear of the equalized
  tensor, so in float the taps keep their values.
* **error-compensating weight rounding** (GPTQ, :mod:`.weight_rounding`):
  each filter's rounding errors are spread over its other weights along the
  directions its inputs vary least on the calibration images.
* **sequential bias correction** (after): quantization shifts each
  convolution's output channels by a mean error; conv by conv in graph
  order, the mean of its output on the calibration images in the quantized
  graph (with every earlier conv already corrected) is compared with the
  float graph's, and the difference leaves its int32 bias.

Weights are int8 per output channel, activations uint8 per tensor (MinMax
over the calibration images), in ONNX's QDQ format, which ONNX Runtime fuses
into integer kernels. ``keep_float`` leaves named convolutions in float32
(mixed precision); sessions over such graphs must leave out ONNX Runtime's
``WeightBiasQuantization`` optimizer, as microtex's sessions do
(:data:`microtex.engine.session.DISABLED_OPTIMIZERS`).
Needs ``onnx`` (the torch extra).
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
from microtex.engine.export import node_attribute, require_onnx
from microtex.engine.session import DISABLED_OPTIMIZERS

__all__ = ["EQUALIZE_STRENGTH", "QUANTIZATION", "equalize_channels", "quantize_static_int8"]

log = logging.getLogger("microtex.engine.quantize")

#: A tap's channels are evened out only halfway (s_c ** 0.5): the tap itself is quantized
#: too, and full equalization coarsens its largest channels, which dominate its Gram
#: matrix; on whole MetalDAM micrographs that doubled relu4_4's Gram error (2.7 % against
#: 0.64 % halfway, 1.5 % not equalized), and the layers after the tap keep most of the gain.
TAP_STRENGTH = 0.5

#: Channels are evened out halfway, s_c ** 0.5 (SmoothQuant's migration strength): full
#: equalization fits the activations' per-tensor uint8 step to every channel but moves each
#: channel's range into the next conv's input weights, whose per-filter int8 steps must then
#: cover the few largest columns. On block_last (224² crops, relu5_4 Gram, the worst feature)
#: it moved 4.5–4.9 % at strength 1 and 3.6–3.8 % at 0.5 (two runs of bench_int8.py); in an
#: exploratory sweep 3.9 % at 0.75, 3.5 % at 0.5, 3.8 % at 0.35 and 4.3 % at 0.2.
EQUALIZE_STRENGTH = 0.5

#: What :func:`quantize_static_int8` does by default (recorded with every graph it makes).
QUANTIZATION = {
    "format": "QDQ",
    "weights": "int8, per output channel",
    "activations": "uint8, per tensor, MinMax",
    "equalize_percentile": 99.99,
    "equalize_strength": EQUALIZE_STRENGTH,
    "equalize_taps": TAP_STRENGTH,
    "weight_rounding": "gptq",
    "bias_correction": "sequential",
}
WEIGHT_ROUNDINGS = ("nearest", "gptq")
_POOLS = ("MaxPool", "AveragePool")
_RESTORE = "microtex_restore_tap/"


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
        model.SerializeToString(), options, providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def _subgraph(model, names: Sequence[str]):
    """A copy of ``model`` computing exactly the tensors ``names``: they are its outputs, and
    it keeps only the nodes (and initializers) they need.

    ONNX Runtime runs every node of a graph whatever outputs are asked for, so bias
    correction, which reads one conv's output at a time, would otherwise run the whole
    network for each of them.
    """
    onnx = require_onnx("int8 quantization")
    graph = model.graph
    producer = _producers(graph)
    needed: set[int] = set()
    pending = list(names)
    while pending:
        node = producer.get(pending.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            pending.extend(node.input)
    nodes = [node for node in graph.node if id(node) in needed]
    used = {name for node in nodes for name in node.input}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    constants = {i.name for i in graph.initializer}
    del copy.graph.node[:], copy.graph.output[:], copy.graph.initializer[:], copy.graph.input[:]
    copy.graph.node.extend(nodes)
    copy.graph.initializer.extend(i for i in graph.initializer if i.name in used)
    # every true input stays (the feeds name them); initializers listed as inputs go with them
    copy.graph.input.extend(i for i in graph.input if i.name not in constants or i.name in used)
    copy.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names
    )
    return copy


def _channel_statistics(model, feeds, names: Sequence[str], statistic) -> dict[str, np.ndarray]:
    """A per-channel statistic of each named tensor over the feeds.

    ``statistic`` is ``(per_image, combine)``: ``per_image(values, share)``
    reduces one feed's ``(channels, values)`` array as soon as it is computed
    (a 512² image's VGG activations alone take 300 MB), ``share`` being the
    feed's part of all the feeds' pixels; ``combine`` takes the list of those
    reductions.
    """
    per_image, combine = statistic
    feeds = list(feeds)
    pixels = np.array([sum(v.size for v in feed.values()) for feed in feeds], np.float64)
    session = _session(_subgraph(model, names))
    collected: dict[str, list] = {name: [] for name in names}
    for feed, share in zip(feeds, pixels / pixels.sum()):
        for name, value in zip(names, session.run(list(names), feed)):
            values = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)
            collected[name].append(per_image(values, share))
    return {name: combine(parts) for name, parts in collected.items()}


def _channel_means():
    """The ``statistic`` of :func:`_channel_statistics` giving each channel's mean (float64)
    over every value of every image (a large image weighs more than a small one)."""
    return (lambda values, share: (values.sum(axis=1, dtype=np.float64), values.shape[1]),
            lambda parts: sum(s for s, _ in parts) / sum(n for _, n in parts))  # fmt: skip


def _channel_percentiles(percentile: float):
    """The ``statistic`` of :func:`_channel_statistics` giving each channel's ``percentile``.

    The same numbers as ``np.percentile`` over all the images' values (linear
    interpolation), but each image keeps only its largest values: twice as
    many as its share of the pixels says the whole set's upper tail could
    hold, so that images of other sizes (whose tensors pooling rounds down)
    are covered too. Should an image still have been cut short (its smallest
    kept value above the result), the result is too low and a warning says so.
    """
    tail = 1 - percentile / 100

    def top(values, share):
        n = values.shape[1]
        k = min(n, int(np.ceil(2 * tail * n / share)) + 2)
        kept = np.partition(values, n - k, axis=1)[:, n - k :].copy()  # not a view of all
        return n, kept, k < n

    def combine(parts):
        total = sum(n for n, _, _ in parts)
        kept = -np.sort(-np.concatenate([t for _, t, _ in parts], axis=1), axis=1)  # descending
        position = percentile / 100 * (total - 1)  # in ascending order, as numpy counts
        below = int(np.floor(position))
        fraction = position - below
        first = total - 1 - below  # the value at ``below``, counted from the top
        short = first >= kept.shape[1]
        first = min(first, kept.shape[1] - 1)
        low, high = kept[:, first], kept[:, max(first - 1, 0)]
        step = high - low
        result = low + step * fraction if fraction < 0.5 else high - step * (1 - fraction)
        if short or any(np.any(t.min(axis=1) > low) for _, t, cut in parts if cut):
            log.warning("int8 calibration: a channel percentile is underestimated (one image "
                        "held more of the top values than was kept)")  # fmt: skip
        return result

    return top, combine


def _producers(graph) -> dict[str, Any]:
    """The node writing each tensor of ``graph``."""
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _chains(model, taps: bool = True) -> list[tuple[Any, Any, Any]]:
    """``(first conv, relu, second conv)`` of every Conv → Relu (→ pool) → Conv chain.

    The conv's output must feed only the ReLU, and the ReLU's output (and the
    pool's) only the next node; the ReLU's output may be a graph output (a
    tap) when ``taps``, the conv's and the pool's may not.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    users = _consumers(graph)

    def only_user(name, may_be_output=False):
        found = users.get(name, [])
        ok = len(found) == 1 and (may_be_output or name not in outputs)
        return found[0] if ok else None

    chains = []
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 3:
            continue
        relu = only_user(conv.output[0])
        if relu is None or relu.op_type != "Relu":
            continue
        after = only_user(relu.output[0], may_be_output=taps)
        if after is not None and after.op_type in _POOLS:
            after = only_user(after.output[0])
        if after is not None and after.op_type == "Conv" and node_attribute(after, "group", 1) == 1:
            chains.append((conv, relu, after))
    return chains


def equalize_channels(model, feeds, percentile: float = QUANTIZATION["equalize_percentile"],
                      taps: bool = True, strength: float = EQUALIZE_STRENGTH):  # fmt: skip
    """Rescale the channels inside Conv → ReLU (→ pool) → Conv chains; returns the chains' count.

    ``model`` (an ``onnx.ModelProto``, float32) is changed in place; its
    outputs are unchanged up to float rounding. With ``taps``, chains whose
    ReLU output is a graph output are equalized too (halfway, ``TAP_STRENGTH``):
    the ReLU then writes ``{tap}/equalized`` and a Mul node named
    ``microtex_restore_tap/{tap}`` scales it back into the tap. See the module
    docstring; ``strength`` is the power of the other chains' scales.
    """
    onnx = require_onnx("int8 quantization")
    from onnx import numpy_helper

    percentile = check_real("percentile", percentile, minimum=0, maximum=100, inclusive=False)
    strength = check_real("strength", strength, minimum=0, maximum=1)
    chains = _chains(model, taps)
    if not chains:
        return 0
    ranges = _channel_statistics(
        model, feeds, [relu.output[0] for _, relu, _ in chains],
        _channel_percentiles(percentile),
    )  # fmt: skip
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}

    def replace(name, array):
        initializers[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    done = 0
    for first, relu, second in chains:
        tap = relu.output[0]
        spread = ranges[tap]
        live = spread > 0
        if not live.any():
            continue
        scale = np.where(live, spread / np.median(spread[live]), 1.0)
        scale = (scale ** (TAP_STRENGTH if tap in outputs else strength)).astype(np.float32)
        weight, bias = (numpy_helper.to_array(initializers[n]) for n in first.input[1:3])
        replace(first.input[1], weight / scale[:, None, None, None])
        replace(first.input[2], bias / scale)
        following = numpy_helper.to_array(initializers[second.input[1]])
        replace(second.input[1], following * scale[None, :, None, None])
        done += 1
        if tap in outputs:
            inner = f"{tap}/equalized"
            relu.output[0] = inner
            for node in graph.node:
                node.input[:] = [inner if name == tap else name for name in node.input]
            factor = f"{tap}/channel_scale"
            graph.initializer.append(numpy_helper.from_array(scale.reshape(1, -1, 1, 1), factor))
            position = list(graph.node).index(relu) + 1
            graph.node.insert(position, onnx.helper.make_node(
                "Mul", [inner, factor], [tap], name=_RESTORE + tap))  # fmt: skip
    onnx.checker.check_model(model)
    return done


def _fold_restores(model) -> None:
    """Replace each tap's DequantizeLinear → restoring Mul by one per-channel DequantizeLinear.

    One pass over the tap instead of two; a Mul whose input is not
    dequantized (a tensor the quantizer left in float) stays.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = _producers(graph)
    for mul in [n for n in graph.node if n.op_type == "Mul" and n.name.startswith(_RESTORE)]:
        dequantize = producer.get(mul.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        factor = numpy_helper.to_array(initializers[mul.input[1]]).reshape(-1)
        tensor_scale = numpy_helper.to_array(initializers[dequantize.input[1]])
        zero = numpy_helper.to_array(initializers[dequantize.input[2]])
        if tensor_scale.size != 1 or zero.size != 1:
            continue
        tap = mul.output[0]
        scales = (float(tensor_scale.reshape(())) * factor).astype(tensor_scale.dtype)
        graph.initializer.extend([
            numpy_helper.from_array(scales, f"{tap}/dequantize_scale"),
            numpy_helper.from_array(np.full(factor.shape, zero.reshape(()), zero.dtype),
                                    f"{tap}/dequantize_zero_point"),
        ])  # fmt: skip
        node = helper.make_node(
            "DequantizeLinear",
            [dequantize.input[0], f"{tap}/dequantize_scale", f"{tap}/dequantize_zero_point"],
            [tap], name=f"{tap}/DequantizeLinear", axis=1,
        )  # fmt: skip
        graph.node.insert(list(graph.node).index(mul), node)
        graph.node.remove(mul)
    used = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer
                        if i.name.endswith("/channel_scale") and i.name not in used]:  # fmt: skip
        graph.initializer.remove(initializer)


def _round_weights(float_model, quantized, feeds) -> int:
    """GPTQ rounding of every quantized conv's int8 weights (in place); returns the convs."""
    from onnx import numpy_helper

    from microtex.engine.weight_rounding import conv_input_moments, gptq_round

    float_convs = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    float_weights = {i.name: i for i in float_model.graph.initializer}
    initializers = {i.name: i for i in quantized.graph.initializer}
    producer = _producers(quantized.graph)
    targets = []
    for node in quantized.graph.node:
        source = float_convs.get(node.name)
        dequantize = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if source is None or dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue  # not a conv, or one left in float
        if node_attribute(node, "group", 1) != 1:
            continue
        zero = initializers.get(dequantize.input[2]) if len(dequantize.input) > 2 else None
        axis = node_attribute(dequantize, "axis", 1)
        if (zero is not None and numpy_helper.to_array(zero).any()) or axis != 0:
            continue  # GPTQ keeps symmetric per-output-channel levels only
        targets.append((source, dequantize))
    if not targets:
        return 0
    weights = {c.name: numpy_helper.to_array(float_weights[c.input[1]]) for c, _ in targets}
    names = list(dict.fromkeys(c.input[0] for c, _ in targets))
    session = _session(_subgraph(float_model, names))
    moments = conv_input_moments(
        lambda feed: dict(zip(names, session.run(names, feed))), feeds,
        [c for c, _ in targets], weights,
    )  # fmt: skip
    for conv, dequantize in targets:
        weight = weights[conv.name]
        scale = numpy_helper.to_array(initializers[dequantize.input[1]])
        levels = gptq_round(weight.reshape(len(weight), -1), scale, moments[conv.name])
        name = dequantize.input[0]
        initializers[name].CopyFrom(numpy_helper.from_array(levels.reshape(weight.shape), name))
    return len(targets)


def _float_convs(model, names: Sequence[str]) -> list[str]:
    """Node names of the convs ``names`` call for: a node's name, or its layer (``conv5_1``)."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    found = []
    for name in names:
        matches = [c for c in convs if c == name or f"/{name}/" in c]
        if not matches:
            raise ValueError(f"keep_float names {name!r}, which is no convolution of the graph "
                             f"(its convolutions: {', '.join(convs)})")  # fmt: skip
        found += matches
    return found


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
    producer = _producers(quantized.graph)
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

    means = _channel_means()
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
    equalize_strength: float = EQUALIZE_STRENGTH,
    equalize_taps: bool = True,
    weight_rounding: str = QUANTIZATION["weight_rounding"],
    bias_correction: bool = True,
    keep_float: Sequence[str] = (),
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
    equalize_strength : float
        Power in [0, 1] of the equalizing scales (1: channels' percentiles
        made equal; 0: nothing done).
    equalize_taps : bool
        Equalize chains whose middle tensor is a graph output too (halfway;
        the output is scaled back).
    weight_rounding : {"gptq", "nearest"}
    bias_correction : bool
    keep_float : sequence of str
        Convolutions left in float32: node names or layer names (``"conv5_1"``).

    Returns
    -------
    (onnx.ModelProto, dict)
        The quantized graph and what was done (``QUANTIZATION`` with the
        options used, the chains equalized, the convs rounded and corrected).
    """
    onnx = require_onnx("int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from microtex._validation import check_choice

    check_choice("weight_rounding", weight_rounding, WEIGHT_ROUNDINGS)
    equalize_strength = check_real("equalize_strength", equalize_strength, minimum=0, maximum=1)
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
    floats = _float_convs(float_model, keep_float)
    with tempfile.TemporaryDirectory(prefix="microtex-int8-") as tmp:
        source, prepared, target = (pathlib.Path(tmp) / n for n in ("a.onnx", "b.onnx", "c.onnx"))
        onnx.save(float_model, source)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(prepared)
        chains = 0 if equalize_percentile is None else equalize_channels(
            model, feeds, equalize_percentile, taps=equalize_taps, strength=equalize_strength
        )
        restores = [n.name for n in model.graph.node if n.name.startswith(_RESTORE)]
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
            nodes_to_exclude=floats + restores,
        )
        quantized = onnx.load(target)
    _fold_restores(quantized)
    rounded = _round_weights(model, quantized, feeds) if weight_rounding == "gptq" else 0
    corrected = _correct_biases(model, quantized, feeds) if bias_correction else 0
    record = {
        **QUANTIZATION,
        "equalize_percentile": equalize_percentile,
        "equalize_strength": equalize_strength if equalize_percentile is not None else 0,
        "equalize_taps": TAP_STRENGTH if equalize_taps and equalize_percentile is not None else 0,
        "weight_rounding": weight_rounding,
        "bias_correction": "sequential" if bias_correction else None,
        "calibration_images": sum(len(f[input_name]) for f in feeds),
        "chains_equalized": chains,
        "convs_gptq_rounded": rounded,
        "convs_bias_corrected": corrected,
        "float_convs": floats,
    }
    log.info("int8: %d chains equalized, %d convs GPTQ-rounded, %d bias-corrected, %d float",
             chains, rounded, corrected, len(floats))  # fmt: skip
    return quantized, record
