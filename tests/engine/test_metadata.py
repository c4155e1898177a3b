"""The metadata document of exported models (microtex.engine.metadata)."""

from __future__ import annotations

import json

import pytest

import microtex
from microtex.engine import metadata
from microtex.engine.session import Session
from microtex.errors import BundleError


def tiny_model(props=None):
    """A one-Identity ONNX model with ``props`` as metadata_props."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, props or {})
    return model


def test_build_document_adds_kind_and_version():
    document = metadata.build_document("vqvae", {"opset": 18, "kind": "ignored"})
    assert document == {"opset": 18, "kind": "vqvae", "microtex_version": microtex.__version__}
    json.dumps(document)
    for bad in ("", None):
        with pytest.raises(ValueError, match="kind"):
            metadata.build_document(bad, {})


def test_attach_and_read_back(tmp_path):
    model = tiny_model({"producer_note": "kept", metadata.METADATA_KEY: "{old}"})
    document = metadata.build_document("forest", {"n_trees": 3})
    assert metadata.attach(model, document) is model
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert props["producer_note"] == "kept"
    assert json.loads(props["microtex"]) == document
    assert len(model.metadata_props) == 2  # the old microtex entry was replaced
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    assert metadata.read_metadata(path) == document
    session = Session(path, device="cpu")
    assert metadata.parse_session_metadata(session) == document
    assert metadata.parse_metadata(session.metadata(), path) == document


def test_read_metadata_errors(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        metadata.read_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00junk")
    with pytest.raises(BundleError, match="junk.onnx"):
        metadata.read_metadata(junk)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(tiny_model().SerializeToString())
    with pytest.raises(BundleError, match="bare.onnx.*has no 'microtex' metadata"):
        metadata.read_metadata(bare)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_model({"microtex": "{not json"}).SerializeToString())
    with pytest.raises(BundleError, match="corrupt.onnx.*corrupt microtex metadata"):
        metadata.read_metadata(corrupt)


def test_parse_metadata_names_the_source():
    with pytest.raises(BundleError, match="'a.onnx' has no 'microtex' metadata"):
        metadata.parse_metadata({}, "a.onnx")
    with pytest.raises(BundleError, match="'b.onnx' has corrupt microtex metadata"):
        metadata.parse_metadata({"microtex": "]"}, "b.onnx")
