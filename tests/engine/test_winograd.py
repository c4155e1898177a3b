"""The Winograd F(4×4, 3×3) rewrite of exported graphs (microtex._winograd) and its use."""

from __future__ import annotations

import numpy as np
import pytest
from microtex import _winograd, backbones
from microtex.backbones import BackboneConfig, Heads

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper


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
    bt, g, at = _winograd.winograd_matrices()
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
    replaced = _winograd.rewrite(model, min_channels=8)
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
    assert _winograd.rewrite(model, min_channels=4 if grouped else 8) == []
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
    assert [n.name for n in _winograd.rewrite(model, min_channels=8)] == ["first", "second"]
    assert "w" in {t.name for t in model.graph.initializer}  # still read by the strided conv
    assert "b" not in {t.name for t in model.graph.initializer}
    after = run_all(model)
    for a, b in zip(after, before):
        assert relative_error(a, b) < 2e-6
    strided = [n for n in model.graph.node if n.name == "strided"]
    assert len(strided) == 1 and strided[0].op_type == "Conv"  # left as it was
    # a second pass rewrites nothing more and clashes with no name
    assert _winograd.rewrite(model, min_channels=8) == []
    # an overridable initializer (also a graph input) is not baked in
    model = conv_model(weight, bias)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, weight.shape))
    assert _winograd.rewrite(model, min_channels=8) == []
    with pytest.raises(ValueError, match="opset >= 13, not 12"):
        _winograd.rewrite(conv_model(weight, bias, opset=12), min_channels=8)


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
    assert len(_winograd.rewrite(model, min_channels=8)) == 1
    names = [t.name for t in model.graph.initializer]
    assert "winograd0_2/U" in names and "winograd0/U" not in names
    onnx.checker.check_model(model)
    assert relative_error(run(model, x), before) < 2e-6


def test_conv_algorithm_validation(tmp_path, default_config):
    with pytest.raises(ValueError, match="'fft'"):
        backbones.check_conv_algorithm("fft")
    with pytest.raises(ValueError, match="precision='fp32', not 'fp16'"):
        backbones.check_conv_algorithm("winograd", "fp16")
    backbones.check_conv_algorithm("winograd", "fp32")
    backbones.check_conv_algorithm("direct", "fp16")
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="opset >= 13, not 12"):
        backbones.export_onnx(
            default_config, tmp_path / "a.onnx", opset=12, conv_algorithm="winograd"
        )
    with pytest.raises(ValueError, match="winograd"):
        backbones.cached_onnx(BackboneConfig(precision="fp16"), conv_algorithm="winograd")
    assert not list(tmp_path.iterdir())


@pytest.mark.torch
def test_winograd_backbone_parity_and_metadata(default_config, default_onnx, image_batch):
    pytest.importorskip("torch")
    import torch

    heads = Heads()
    path = backbones.cached_onnx(default_config, heads, conv_algorithm="winograd")
    assert path != backbones.cached_onnx(default_config, heads)
    assert backbones.cached_onnx(default_config, heads, conv_algorithm="winograd") == path
    metadata = backbones.read_onnx_metadata(path)
    assert metadata["conv_algorithm"] == "winograd"
    # every 3x3 convolution from 128 input channels, up to the deepest tap relu5_1
    assert metadata["winograd_layers"] == [
        "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
        "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1",
    ]  # fmt: skip
    assert backbones.read_onnx_metadata(default_onnx)["conv_algorithm"] == "direct"
    assert backbones.winograd_layers(default_config) == tuple(metadata["winograd_layers"])

    import onnxruntime

    names = backbones.output_names(default_config, heads)
    images = image_batch  # 67x45: at every level one side is not a multiple of the 4x4 tile
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = dict(zip(names, session.run(None, {"image": images})))
    module = backbones.build_torch_module(default_config, heads)
    with torch.no_grad():
        reference = {n: t.numpy() for n, t in zip(names, module(torch.from_numpy(images)))}
    errors = {n: relative_error(ours[n], reference[n]) for n in names}
    assert max(errors.values()) < 2e-5, errors
    # the first two blocks are not rewritten: bit for bit the direct graph's numbers
    direct = onnxruntime.InferenceSession(
        str(backbones.cached_onnx(default_config, heads)), providers=["CPUExecutionProvider"]
    )
    direct_outputs = dict(zip(names, direct.run(None, {"image": images})))
    np.testing.assert_array_equal(ours["relu2_1/gram"], direct_outputs["relu2_1/gram"])
    assert not np.array_equal(ours["relu3_1/gram"], direct_outputs["relu3_1/gram"])


@pytest.mark.torch
def test_export_script_writes_a_winograd_graph(tmp_path, capsys):
    pytest.importorskip("torch")
    import pathlib
    import runpy

    export_dir = pathlib.Path(__file__).resolve().parents[1] / "export"
    export = runpy.run_path(str(export_dir / "export_backbone.py"))
    validate = runpy.run_path(str(export_dir / "validate_onnx.py"))
    out = tmp_path / "w.onnx"
    arguments = ["--taps", "relu3_1", "--conv-algorithm", "winograd"]
    assert export["main"]([*arguments, "-o", str(out)]) == 0
    assert backbones.read_onnx_metadata(out)["winograd_layers"] == ["conv2_2", "conv3_1"]
    capsys.readouterr()
    assert validate["main"]([*arguments, "--onnx", str(out), "--sizes", "21x34"]) == 0
    table = capsys.readouterr().out
    assert "conv_algorithm=winograd" in table and "tolerance 1e-04): ok" in table


def test_auto_conv_algorithm(default_config, shallow_config):
    assert backbones.auto_conv_algorithm(default_config, on_cpu=True) == "winograd"
    assert backbones.auto_conv_algorithm(default_config, on_cpu=False) == "direct"
    fp16 = BackboneConfig(precision="fp16")
    assert backbones.auto_conv_algorithm(fp16, on_cpu=True) == "direct"
    # relu1_1 and relu2_1 stop before conv2_2, the first layer with 128 input channels
    assert backbones.winograd_layers(shallow_config) == ()
    assert backbones.auto_conv_algorithm(shallow_config, on_cpu=True) == "direct"
    vgg16_last = backbones.winograd_layers(
        BackboneConfig(arch="vgg16", weights="x.pth", taps="relu5_3")
    )
    assert vgg16_last[0] == "conv2_2" and vgg16_last[-1] == "conv5_3" and len(vgg16_last) == 10


def test_resolve_conv_algorithm_keeps_a_choice_and_resolves_auto_by_device(default_config, monkeypatch):
    # the one rule the featurizer and the export scripts share
    from microtex import runtime

    for providers, auto in (([runtime.CPU], "winograd"), ([runtime.CUDA, runtime.CPU], "direct")):
        monkeypatch.setattr(runtime, "available_providers", lambda providers=providers: providers)
        assert backbones.resolve_conv_algorithm("auto", default_config, "auto") == auto
        assert backbones.resolve_conv_algorithm("auto", default_config, "cpu") == "winograd"
        assert backbones.resolve_conv_algorithm("direct", default_config, "cpu") == "direct"
        assert backbones.resolve_conv_algorithm("winograd", default_config, "auto") == "winograd"
