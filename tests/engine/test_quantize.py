"""int8: channel equalization is exact in float, and the QDQ graph stays close to float32."""

from __future__ import annotations

import numpy as np
import pytest

from microtex import synth
from microtex.features import pooling

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")
from microtex.engine.quantize import equalize_channels, quantize_static_int8  # noqa: E402

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
    assert equalize_channels(model, [{"image": c} for c in calibration]) == 1  # conv1_2 -> conv2_1
    before, after = _features(float_graph, held), _features(model, held)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=2e-4, atol=1e-5)


def test_the_int8_graph_is_within_two_percent_and_bias_correction_helps(float_graph, textures):
    calibration, held = textures
    reference = _features(float_graph, held)
    quantized, record = quantize_static_int8(float_graph, calibration)
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and "Conv" in ops
    assert record["chains_equalized"] == 1 and record["convs_bias_corrected"] == 4
    assert record["calibration_images"] == 12
    errors = _median_errors(quantized, reference, held)
    assert max(errors.values()) < 0.02, errors
    plain, _ = quantize_static_int8(float_graph, calibration, bias_correction=False,
                                    equalize_percentile=None)  # fmt: skip
    plain_errors = _median_errors(plain, reference, held)
    assert errors["relu2_1/mean"] < plain_errors["relu2_1/mean"]
    assert 0 < min(plain_errors.values())  # quantization does change the features


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
