"""Export of any torch module to ONNX (microtex.engine.export), run by engine.session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from microtex.engine import export, metadata
from microtex.engine.session import Session

from _helpers import run_python


def two_in_two_out():
    """A module with two inputs and two outputs that are not a backbone's."""
    torch = pytest.importorskip("torch")

    class Mix(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5]))

        def forward(self, features, offsets):
            mixed = features * self.scale + offsets
            return mixed, mixed.sum(dim=1, keepdim=True)

    return Mix().eval()


AXES = {"features": {0: "rows"}, "offsets": {0: "rows"}, "mixed": {0: "rows"}, "total": {0: "rows"}}


def export_two_in_two_out(exporter="torchscript", **options):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    return export.export_model(
        two_in_two_out(),
        (torch.rand(5, 3), torch.rand(5, 3)),
        input_names=["features", "offsets"],
        output_names=["mixed", "total"],
        dynamic_axes=AXES,
        exporter=exporter,
        **options,
    )


@pytest.mark.torch
@pytest.mark.parametrize(
    "exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)]
)
def test_named_inputs_outputs_dynamic_axes_and_metadata(tmp_path, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    torch = pytest.importorskip("torch")
    document = metadata.build_document("mix", {"note": "test"})
    model = export_two_in_two_out(exporter, metadata=document, doc_string="a mix", opset=17)
    assert [i.name for i in model.graph.input] == ["features", "offsets"]
    assert [o.name for o in model.graph.output] == ["mixed", "total"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param != ""  # dynamic rows
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert model.doc_string == "a mix"
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert list(props) == ["microtex"] and json.loads(props["microtex"]) == document

    path = export.save_model(model, tmp_path / "sub" / "mix.onnx")
    assert path == tmp_path / "sub" / "mix.onnx" and metadata.read_metadata(path) == document
    session = Session(path, device="cpu")
    assert session.input_names == ("features", "offsets") and session.input_name == "features"
    rng = np.random.default_rng(0)
    features, offsets = rng.random((7, 3)), rng.random((7, 3), dtype=np.float32)
    outputs = session.run({"offsets": offsets, "features": features})  # float64 is converted
    with torch.no_grad():
        expected = two_in_two_out()(torch.from_numpy(features).float(), torch.from_numpy(offsets))
    np.testing.assert_allclose(outputs["mixed"], expected[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(outputs["total"], expected[1].numpy(), rtol=1e-6)
    assert list(session.run({"offsets": offsets, "features": features}, outputs=["total"])) == [
        "total"
    ]


@pytest.mark.torch
def test_session_input_checks_for_a_model_with_two_inputs(tmp_path):
    path = export.save_model(export_two_in_two_out(), tmp_path / "mix.onnx")
    session = Session(path, device="cpu")
    ok = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="has 2 inputs"):
        session.run(ok)
    with pytest.raises(ValueError, match=r"unknown: \['image'\], missing: \['offsets'\]"):
        session.run({"features": ok, "image": ok})
    with pytest.raises(
        ValueError, match=r"input 'offsets' must have shape \(rows, 3\); got \(2, 4\)"
    ):
        session.run({"features": ok, "offsets": np.zeros((2, 4), np.float32)})
    with pytest.raises(
        ValueError, match=r"input 'features' must have shape \(rows, 3\); got \(3,\)"
    ):
        session.run({"features": np.zeros(3, np.float32), "offsets": ok})


def test_export_options_are_checked_before_any_work():
    assert export.check_export_options(None, "dynamo") == export.DEFAULT_OPSET == 18
    assert export.check_export_options(13, "torchscript") == 13
    with pytest.raises(
        ValueError, match=r"unknown exporter 'jit'; choose one of \['torchscript', 'dynamo'\]"
    ):
        export.check_export_options(None, "jit")
    with pytest.raises(ValueError, match="opset must be a positive integer, got 0"):
        export.check_export_options(0, "torchscript")
    with pytest.raises(ValueError, match="unknown exporter 'jit'"):
        export.export_model(None, (), input_names=[], output_names=[], exporter="jit")


@pytest.mark.torch
def test_failed_export_raises_and_writes_nothing(tmp_path, broken_exporter):
    with pytest.raises(RuntimeError, match="exploded"):
        export_two_in_two_out()
    assert list(tmp_path.iterdir()) == []


def test_engine_imports_no_heavy_module():
    code = (
        "import sys\n"
        "import microtex.engine.cache, microtex.engine.export, microtex.engine.metadata\n"
        "import microtex.engine.winograd\n"
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


def test_missing_torch_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name in ("torch", "onnx"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(
        ImportError, match=r"ONNX export needs PyTorch: pip install 'microtex\[torch\]'"
    ):
        export.require_torch("ONNX export")
    with pytest.raises(
        ImportError, match=r"needs the onnx package: pip install 'microtex\[torch\]'"
    ):
        export.require_onnx("ONNX export")
