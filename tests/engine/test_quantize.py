"""int8: equalization is exact in float, GPTQ rounding lowers the output error, the QDQ graph
stays close to float32, and a conv kept in float runs right."""

from __future__ import annotations

import numpy as np
import pytest

from microtex import synth
from microtex.features import pooling

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")
from microtex.engine.quantize import (  # noqa: E402
    EQUALIZE_STRENGTH,
    equalize_channels,
    quantize_static_int8,
)

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def float_graph(shallow_onnx):
    return onnx.load(str(shallow_onnx))


@pytest.fixture(scope="module")
def textures():
    """12 calibration and 8 held-out Perlin textures of 48², as (1, 1, 48, 48) batches."""
    images = [
        synth.perlin_texture(48, k=k, theta=0.3 * s, amplitude=2.0, seed=s)
        for s, k in enumerate([3, 5, 7, 9, 11] * 4)
    ]
    return [im[None, None].astype(np.float32) for im in images[:12]], images[12:]


def _features(model, images):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = {}
    for image in images:
        feed = {"image": image[None, None].astype(np.float32)}
        for output, acts in zip(session.get_outputs(), session.run(None, feed)):
            out.setdefault(f"{output.name}/mean", []).append(pooling.mean_pool(acts)[0])
            out.setdefault(f"{output.name}/gram", []).append(pooling.gram(acts)[0])
    return {k: np.stack(v) for k, v in out.items()}


def _median_errors(model, reference, images):
    got = _features(model, images)
    return {k: float(np.median(np.linalg.norm(got[k] - v, axis=1) / np.linalg.norm(v, axis=1)))
            for k, v in reference.items()}  # fmt: skip


def test_equalization_evens_the_channels_and_leaves_the_outputs(float_graph, textures):
    calibration, held = textures
    model = onnx.ModelProto()
    model.CopyFrom(float_graph)
    from onnx.shape_inference import infer_shapes

    model = infer_shapes(model)
    untouched = onnx.ModelProto()
    untouched.CopyFrom(model)
    feeds = [{"image": c} for c in calibration]
    # conv1_1 -> relu1_1 (a tap) -> conv1_2, and conv1_2 -> pool -> conv2_1
    assert equalize_channels(model, feeds) == 2
    assert equalize_channels(untouched, feeds, taps=False) == 1
    restores = [n for n in model.graph.node if n.op_type == "Mul"]
    assert [n.output[0] for n in restores] == ["relu1_1"]
    before = _features(float_graph, held)
    for equalized in (model, untouched):
        after = _features(equalized, held)
        assert set(after) == set(before)
        for key in before:
            np.testing.assert_allclose(after[key], before[key], rtol=2e-4, atol=1e-5)


def test_equalizing_strength_is_the_power_of_the_channel_scales(float_graph, textures):
    """conv1_2 -> pool -> conv2_1: conv1_2's filters are divided by s_c ** strength."""
    from onnx import numpy_helper

    calibration, _ = textures
    feeds = [{"image": c} for c in calibration]

    def conv1_2_ratio(strength):
        model = onnx.ModelProto()
        model.CopyFrom(float_graph)
        before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        equalize_channels(model, feeds, taps=False, strength=strength)
        (conv,) = [n for n in model.graph.node if n.op_type == "Conv" and "conv1_2" in n.name]
        after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        weight = conv.input[1]
        live = np.abs(before[weight]).reshape(len(before[weight]), -1).max(axis=1) > 0
        ratio = before[weight].reshape(len(before[weight]), -1)[live, 0] / after[weight].reshape(
            len(after[weight]), -1)[live, 0]  # fmt: skip
        return ratio

    full, half, none = conv1_2_ratio(1.0), conv1_2_ratio(0.5), conv1_2_ratio(0.0)
    assert np.ptp(np.log(full)) > 1.0  # the channels' ranges differ by more than e
    np.testing.assert_allclose(half, np.sqrt(full), rtol=1e-5)
    np.testing.assert_allclose(none, 1.0, rtol=1e-6)

    def tap_scale(strength):  # the tap relu1_1 keeps TAP_STRENGTH whatever the chains get
        model = onnx.ModelProto()
        model.CopyFrom(float_graph)
        equalize_channels(model, feeds, strength=strength)
        (scale,) = [i for i in model.graph.initializer if i.name == "relu1_1/channel_scale"]
        return numpy_helper.to_array(scale)

    np.testing.assert_array_equal(tap_scale(1.0), tap_scale(0.5))
    assert np.ptp(np.log(tap_scale(0.5))) > 0.5


def test_quantize_passes_the_equalizing_strength_on(float_graph, textures):
    from onnx import numpy_helper

    calibration, _ = textures

    def weights(strength):
        options = {"weight_rounding": "nearest", "bias_correction": False}
        model, record = quantize_static_int8(float_graph, calibration,
                                             equalize_strength=strength, **options)  # fmt: skip
        assert record["equalize_strength"] == strength
        return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    half, full, default = weights(0.5), weights(1.0), weights(EQUALIZE_STRENGTH)
    assert half.keys() == full.keys()
    assert any(not np.array_equal(half[k], full[k]) for k in half)
    assert all(np.array_equal(half[k], default[k]) for k in half)


@pytest.mark.parametrize(
    ("percentile", "sizes"),
    [(99.99, [40_000] * 20), (99.9, [1000] * 3), (50.0, [64] * 4), (0.5, [300] * 2),
     (99.99, [7]), (99.99, [40_000] * 19 + [9_000]), (99.9, [500, 80_000, 3_000])],
)  # fmt: skip
@pytest.mark.parametrize("ties", [False, True])
def test_channel_percentiles_keep_only_the_tail_and_match_numpy(percentile, sizes, ties, caplog):
    from microtex.engine.quantize import _channel_percentiles

    rng = np.random.default_rng(7)
    parts = [rng.standard_exponential((6, size)).astype(np.float32) for size in sizes]
    if len(sizes) > 1:
        parts[-1][2] *= 100  # one channel's peaks all in the last image, whatever its size
    if ties:
        parts = [np.round(p, 1) for p in parts]
    per_image, combine = _channel_percentiles(percentile)
    shares = np.array(sizes) / sum(sizes)
    reduced = [per_image(p, share) for p, share in zip(parts, shares)]
    expected = np.percentile(np.concatenate(parts, axis=1), percentile, axis=1)
    np.testing.assert_array_equal(combine(reduced), expected.astype(np.float32))
    assert "underestimated" not in caplog.text
    for n, kept, cut in reduced:
        assert kept.base is None  # its own small array, not a view holding the whole tensor
        assert cut == (kept.shape[1] < n)
    if percentile > 99 and min(sizes) >= 1000:
        assert all(cut for _, _, cut in reduced)


def test_channel_percentiles_warn_when_an_image_was_cut_short(caplog):
    from microtex.engine.quantize import _channel_percentiles

    rng = np.random.default_rng(8)
    small, large = rng.random((1, 2_000)), rng.random((1, 20_000))
    small[0, :500] += 10  # the top 1 % of all 22 000 values (220) lies in the small image
    per_image, combine = _channel_percentiles(99.0)
    truth = np.percentile(np.concatenate([small, large], axis=1), 99.0, axis=1)
    got = combine([per_image(small, 2 / 22), per_image(large, 20 / 22)])
    np.testing.assert_array_equal(got, truth)
    assert "underestimated" not in caplog.text
    # told it holds nearly every pixel, the small image keeps 2 * 1 % * 2000 + 2 = 42 of 220
    got = combine([per_image(small, 0.999), per_image(large, 0.001)])
    assert got[0] < truth[0] and "underestimated" in caplog.text


def test_subgraph_keeps_only_what_the_named_tensors_need(float_graph, textures):
    """Bias correction reads one conv at a time; ONNX Runtime would run the whole graph."""
    from onnx import helper

    from microtex.engine.quantize import _session, _subgraph

    calibration, _ = textures
    nodes = list(float_graph.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    target = nodes[convs[1]].output[0]  # conv1_2's output
    # initializers also listed as inputs (older exporters): the pruned ones must go too
    legacy = onnx.ModelProto()
    legacy.CopyFrom(float_graph)
    legacy.graph.input.extend(
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in float_graph.graph.initializer
    )
    for model in (float_graph, legacy):
        pruned = _subgraph(model, [target])
        assert [n.name for n in pruned.graph.node] == [n.name for n in nodes[: convs[1] + 1]]
        assert [o.name for o in pruned.graph.output] == [target]
        weights = {n.input[1] for n in pruned.graph.node if n.op_type == "Conv"}
        assert weights <= {i.name for i in pruned.graph.initializer}
        assert nodes[convs[2]].input[1] not in {i.name for i in pruned.graph.initializer}
        constants = {i.name for i in pruned.graph.initializer}
        assert {i.name for i in pruned.graph.input} - constants == {"image"}
        whole = onnx.ModelProto()
        whole.CopyFrom(float_graph)
        whole.graph.output.append(
            helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
        feed = {"image": calibration[0]}
        got, expected = (_session(m).run([target], feed)[0] for m in (pruned, whole))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_int8_graph_is_within_two_percent_and_bias_correction_helps(float_graph, textures):
    calibration, held = textures
    reference = _features(float_graph, held)
    quantized, record = quantize_static_int8(float_graph, calibration)
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and "Conv" in ops and "Mul" not in ops
    assert record["chains_equalized"] == 2 and record["convs_bias_corrected"] == 4
    assert record["convs_gptq_rounded"] == 4 and record["float_convs"] == []
    assert record["calibration_images"] == 12
    # the equalized tap relu1_1 comes back through one per-channel DequantizeLinear
    (tap,) = [n for n in quantized.graph.node if n.output[0] == "relu1_1"]
    assert tap.op_type == "DequantizeLinear"
    assert [a.i for a in tap.attribute if a.name == "axis"] == [1]
    errors = _median_errors(quantized, reference, held)
    assert max(errors.values()) < 0.01, errors
    plain, _ = quantize_static_int8(
        float_graph, calibration, bias_correction=False, equalize_percentile=None,
        weight_rounding="nearest",
    )  # fmt: skip
    plain_errors = _median_errors(plain, reference, held)
    better = [key for key in errors if errors[key] < plain_errors[key]]
    assert len(better) >= len(errors) - 1, (errors, plain_errors)
    assert errors["relu2_1/gram"] < 0.5 * plain_errors["relu2_1/gram"], (errors, plain_errors)
    assert 0 < min(plain_errors.values())  # quantization does change the features


def test_gptq_rounding_lowers_the_layer_output_error(float_graph, textures):
    """Each correction on its own: GPTQ beats nearest rounding on every tap of held-out images."""
    calibration, held = textures
    reference = _features(float_graph, held)
    common = {"equalize_percentile": None, "bias_correction": False}
    gptq, record = quantize_static_int8(float_graph, calibration, **common)
    nearest, _ = quantize_static_int8(float_graph, calibration, weight_rounding="nearest", **common)
    assert record["convs_gptq_rounded"] == 4
    ours, theirs = (_median_errors(m, reference, held) for m in (gptq, nearest))
    assert all(ours[key] < theirs[key] for key in ours), (ours, theirs)


def test_a_conv_kept_in_float_runs_as_float_in_microtex_sessions(float_graph, textures, tmp_path):
    """ONNX Runtime's WeightBiasQuantization would re-quantize it; microtex's sessions leave
    that optimizer out, so the optimized session gives the unoptimized graph's numbers."""
    import onnxruntime as ort

    from microtex.engine.session import Session

    calibration, held = textures
    quantized, record = quantize_static_int8(float_graph, calibration, keep_float=["conv1_2"])
    assert record["float_convs"] == ["/conv1_2/Conv"] and record["convs_gptq_rounded"] == 3
    initializers = {i.name for i in quantized.graph.initializer}
    (conv,) = [n for n in quantized.graph.node if n.name == "/conv1_2/Conv"]
    assert conv.input[1] in initializers  # float weights, no DequantizeLinear
    path = tmp_path / "mixed.onnx"
    onnx.save(quantized, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ours = Session(path, device="cpu", n_threads=1)
    for image in held[:3]:
        batch = image[None, None].astype(np.float32)
        expected = dict(zip(ours.output_names, plain.run(None, {"image": batch})))
        got = ours.run(batch)
        for name, value in expected.items():  # fused integer kernels round a few values apart
            assert np.linalg.norm(got[name] - value) < 1e-3 * np.linalg.norm(value), name
    errors = _median_errors(quantized, _features(float_graph, held), held)
    assert max(errors.values()) < 0.01, errors


def test_gptq_with_uncorrelated_inputs_is_nearest_rounding():
    from microtex.engine.weight_rounding import gptq_round

    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.2, (6, 40))
    scale = np.abs(weight).max(axis=1) / 127
    moment = np.diag(rng.uniform(0.5, 2.0, 40))
    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)
    np.testing.assert_array_equal(gptq_round(weight, scale, moment, block=16), nearest)


def test_gptq_levels_stay_in_the_symmetric_range_and_dead_inputs_are_harmless():
    from microtex.engine.weight_rounding import gptq_round

    rng = np.random.default_rng(4)
    inputs = rng.normal(size=(2000, 30)) @ rng.normal(size=(30, 30))
    inputs[:, [3, 17]] = 0  # inputs that never fire
    weight = rng.normal(0, 0.1, (8, 30))
    scale = np.abs(weight).max(axis=1) / 127
    levels = gptq_round(weight, scale, inputs.T @ inputs, block=7)
    assert np.abs(levels.astype(int)).max() <= 127
    live = np.ones(30, bool)
    live[[3, 17]] = False
    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)
    error = np.linalg.norm(inputs @ (weight - levels * scale[:, None]).T)
    assert error < np.linalg.norm(inputs @ (weight - nearest * scale[:, None]).T)
    assert np.isfinite(levels[:, ~live]).all()


def test_gptq_lowers_the_output_error_of_correlated_inputs():
    from microtex.engine.weight_rounding import gptq_round

    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(64, 64)) * np.linspace(1, 0.05, 64)
    seen, unseen = (rng.normal(size=(n, 64)) @ mixing.T for n in (4000, 4000))
    weight = rng.normal(0, 0.1, (16, 64))
    scale = np.abs(weight).max(axis=1) / 127
    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)
    levels = gptq_round(weight, scale, seen.T @ seen, block=24)
    assert levels.dtype == np.int8 and np.abs(levels.astype(int) - nearest).max() <= 2

    def error(q):
        return np.linalg.norm(unseen @ (weight - q * scale[:, None]).T)

    assert error(levels) < 0.6 * error(nearest), (error(levels), error(nearest))


@pytest.mark.parametrize(
    ("pads", "strides", "dilations"),
    [([1, 1, 1, 1], [1, 1], [1, 1]), ([0, 2, 1, 0], [2, 1], [1, 2])],
)
def test_conv_input_moments_are_those_of_every_receptive_field(pads, strides, dilations):
    from onnx import helper

    from microtex.engine.weight_rounding import conv_input_moments

    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 9, 8)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=pads, strides=strides,
                            dilations=dilations)  # fmt: skip
    weight = np.zeros((4, 3, 3, 2), np.float32)
    got = conv_input_moments(lambda feed: feed, [{"x": x}], [conv], {"c": weight},
                             positions=10_000)["c"]  # fmt: skip
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    expected = np.zeros((18, 18))
    for image in padded:
        for r in range(0, padded.shape[2] - 2 * dilations[0], strides[0]):
            for c in range(0, padded.shape[3] - dilations[1], strides[1]):
                field = image[:, r : r + 3 * dilations[0] : dilations[0],
                              c : c + 2 * dilations[1] : dilations[1]].ravel()  # fmt: skip
                expected += np.outer(field, field)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bad_options_are_named(float_graph, textures):
    calibration, _ = textures
    with pytest.raises(ValueError, match="keep_float names 'conv9_9'"):
        quantize_static_int8(float_graph, calibration, keep_float=["conv9_9"])
    with pytest.raises(ValueError, match="weight_rounding"):
        quantize_static_int8(float_graph, calibration, weight_rounding="stochastic")
    with pytest.raises(ValueError, match="equalize_strength must be a number in \\[0, 1\\], got 2"):
        quantize_static_int8(float_graph, calibration, equalize_strength=2)


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ([], "at least one calibration image"),
        ([np.full((16, 16), np.nan)], "calibration image 0 has NaN"),
        ([np.zeros((2, 3, 16, 16))], r"calibration image 0 must be \(height, width\)"),
    ],
)
def test_bad_calibration_is_named(float_graph, calibration, message):
    with pytest.raises(ValueError, match=message):
        quantize_static_int8(float_graph, calibration)


def test_a_graph_without_node_names_is_corrected_conv_by_conv():
    """Bias correction pairs convolutions by name; unnamed ones get names first."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, initializers, x = [], [], "image"
    for i, (cin, cout) in enumerate([(1, 8), (8, 8), (8, 8)]):
        weight = rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
        w = numpy_helper.from_array(weight, f"w{i}")
        b = numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"b{i}")
        initializers += [w, b]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "unnamed",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, None, None])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    images = [rng.random((24, 24)).astype(np.float32) for _ in range(12)]
    import onnxruntime as ort

    def outputs(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.stack([session.run(None, {"image": im[None, None]})[0] for im in images])

    reference = outputs(model)
    quantized, record = quantize_static_int8(model, images)
    assert record["convs_bias_corrected"] == 3 and all(not n.name for n in model.graph.node)
    error = np.linalg.norm(outputs(quantized) - reference) / np.linalg.norm(reference)
    assert error < 0.05
