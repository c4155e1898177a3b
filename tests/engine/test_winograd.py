"""The Winograd F(4×4, 3×3) graph pass (microtex.engine.winograd) on small ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest

from microtex.engine import winograd

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def conv_model(weight, bias=None, *, weight_is_input=False, opset=18, **attributes):
    """A one-Conv ONNX model: x -> Conv(weight, bias) -> y."""
    attributes.setdefault("pads", [1, 1, 1, 1])
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    node = helper.make_node("Conv", inputs, ["y"], name="the_conv", **attributes)
    initializers = [] if weight_is_input else [numpy_helper.from_array(weight, "w")]
    channels = weight.shape[1] * attributes.get("group", 1)
    graph_inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, "h", "w"])
    ]
    if weight_is_input:
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, weight.shape))
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "b"))
    graph = helper.make_graph(
        [node],
        "conv",
        graph_inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[0], None, None])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run(model, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


def direct_conv(x, weight, bias):
    """Zero-padded 3×3 correlation in float64, the definition the rewrite must reproduce."""
    n, _, h, w = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, weight.shape[0], h, w))
    for u in range(3):
        for v in range(3):
            patch = padded[:, :, u : u + h, v : v + w]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, u, v].astype(np.float64))
    return out + (0 if bias is None else bias.reshape(1, -1, 1, 1))


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_matrices_give_the_valid_correlation():
    bt, g, at = winograd.winograd_matrices()
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, taps = rng.standard_normal(6), rng.standard_normal(3)
        expected = np.correlate(d, taps, mode="valid")  # 4 outputs
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "shape",
    [(1, 8, 16, 16), (3, 8, 13, 7), (2, 8, 1, 1), (1, 8, 5, 30), (2, 8, 4, 9)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_rewritten_conv_matches_direct_convolution(shape, with_bias):
    rng = np.random.default_rng(1)
    out_channels, in_channels = 16, shape[1]
    weight = rng.standard_normal((out_channels, in_channels, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32) if with_bias else None
    x = rng.random(shape, dtype=np.float32)
    model = conv_model(weight, bias)
    before = run(model, x)
    replaced = winograd.rewrite(model, min_channels=8)
    assert [node.name for node in replaced] == ["the_conv"]
    assert "MatMul" in {node.op_type for node in model.graph.node}
    assert not {"w", "b"} & {t.name for t in model.graph.initializer}  # old weights dropped
    onnx.checker.check_model(model)
    after = run(model, x)
    expected = direct_conv(x, weight, bias)
    assert after.shape == expected.shape == before.shape
    assert relative_error(after, expected) < 2e-6
    assert relative_error(before, expected) < 2e-6


@pytest.mark.parametrize(
    "case",
    [
        {"strides": [2, 2]},
        {"dilations": [2, 2]},
        {"pads": [0, 0, 0, 0]},
        {"group": 2},
        "too_few_channels",
        "fp16",
        "weight_is_input",
        "kernel_1x1",
    ],
    ids=str,
)
def test_rewrite_leaves_other_convolutions_alone(case):
    in_channels = 4 if case == "too_few_channels" else 8
    grouped = isinstance(case, dict) and "group" in case
    shape = (8, in_channels // 2 if grouped else in_channels)
    kernel = (1, 1) if case == "kernel_1x1" else (3, 3)
    weight = np.ones(shape + kernel, np.float16 if case == "fp16" else np.float32)
    attributes = dict(case) if isinstance(case, dict) else {}
    if case == "kernel_1x1":
        attributes["pads"] = [0, 0, 0, 0]
    model = conv_model(weight, weight_is_input=case == "weight_is_input", **attributes)
    before = model.SerializeToString()
    # each case is eligible but for its one difference (the group case has 4 channels per group)
    assert winograd.rewrite(model, min_channels=4 if grouped else 8) == []
    assert model.SerializeToString() == before


def test_rewrite_in_a_graph_with_shared_weights_and_several_consumers():
    """Two convolutions share one weight; one output is read twice and is a graph output."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="first", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w"], ["c2"], name="second", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r1", "w"], ["c3"], name="strided", strides=[2, 2]),
        helper.make_node("Add", ["c2", "c1"], ["y"]),
    ]
    shape = ["n", 8, "h", "w"]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ["y", "c1", "c3"]]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        outputs,
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = rng.random((2, 8, 11, 6), dtype=np.float32)
    import onnxruntime

    def run_all(m):
        session = onnxruntime.InferenceSession(
            m.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"x": x})

    before = run_all(model)
    assert [n.name for n in winograd.rewrite(model, min_channels=8)] == ["first", "second"]
    assert "w" in {t.name for t in model.graph.initializer}  # still read by the strided conv
    assert "b" not in {t.name for t in model.graph.initializer}
    after = run_all(model)
    for a, b in zip(after, before, strict=True):
        assert relative_error(a, b) < 2e-6
    strided = [n for n in model.graph.node if n.name == "strided"]
    assert len(strided) == 1 and strided[0].op_type == "Conv"  # left as it was
    # a second pass rewrites nothing more and clashes with no name
    assert winograd.rewrite(model, min_channels=8) == []
    # an overridable initializer (also a graph input) is not baked in
    model = conv_model(weight, bias)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, weight.shape))
    assert winograd.rewrite(model, min_channels=8) == []
    with pytest.raises(ValueError, match="opset >= 13, not 12"):
        winograd.rewrite(conv_model(weight, bias, opset=12), min_channels=8)


def test_new_names_avoid_existing_ones():
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    model = conv_model(weight)
    # a value already named like the rewrite's first prefix
    model.graph.node.append(helper.make_node("Identity", ["y"], ["winograd0/U"]))
    model.graph.output.append(
        helper.make_tensor_value_info("winograd0/U", TensorProto.FLOAT, ["n", 8, "h", "w"])
    )
    x = rng.random((1, 8, 9, 9), dtype=np.float32)
    before = run(model, x)
    assert len(winograd.rewrite(model, min_channels=8)) == 1
    names = [t.name for t in model.graph.initializer]
    assert "winograd0_2/U" in names and "winograd0/U" not in names
    onnx.checker.check_model(model)
    assert relative_error(run(model, x), before) < 2e-6
