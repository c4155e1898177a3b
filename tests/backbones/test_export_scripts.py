"""The export scripts: export/export_backbone.py and export/validate_onnx.py."""

from __future__ import annotations

import argparse
import runpy

import pytest

from microtex.engine.metadata import read_metadata

from _vgg_helpers import EXPORT_DIR


def scripts() -> tuple[dict, dict]:
    """The namespaces of export_backbone.py and validate_onnx.py."""
    return tuple(runpy.run_path(str(EXPORT_DIR / name))
                 for name in ("export_backbone.py", "validate_onnx.py"))  # fmt: skip


@pytest.mark.torch
def test_export_scripts(tmp_path, capsys):
    pytest.importorskip("torch")
    export, validate = scripts()
    out = tmp_path / "relu1_1.onnx"
    assert export["main"](["--taps", "relu1_1", "--heads", "mean,gram", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "relu1_1/gram" in printed
    assert read_metadata(out)["heads"]["pools"] == ["mean", "gram"]

    assert (
        validate["main"](
            ["--taps", "relu1_1,relu1_2", "--heads", "mean,max,gram", "--sizes", "19x23"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "relu1_2/gram" in table and "max rel. error" in table

    half = tmp_path / "relu1_2_fp16.onnx"
    assert export["main"](["--taps", "relu1_2", "--precision", "fp16", "-o", str(half)]) == 0
    capsys.readouterr()
    assert read_metadata(half)["config"]["precision"] == "fp16"
    assert (
        validate["main"](
            ["--onnx", str(half), "--taps", "relu1_2", "--precision", "fp16", "--sizes", "19x23"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "precision=fp16" in table and "tolerance 5e-03): ok" in table
    # the fp16 file against the fp32 module at the fp32 tolerance: the check can fail
    assert validate["main"](["--onnx", str(half), "--taps", "relu1_2", "--sizes", "19x23"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.torch
def test_export_script_writes_a_winograd_graph(tmp_path, capsys):
    pytest.importorskip("torch")
    export, validate = scripts()
    out = tmp_path / "w.onnx"
    arguments = ["--taps", "relu3_1", "--conv-algorithm", "winograd"]
    assert export["main"]([*arguments, "-o", str(out)]) == 0
    assert read_metadata(out)["winograd_layers"] == ["conv2_2", "conv3_1"]
    capsys.readouterr()
    assert validate["main"]([*arguments, "--onnx", str(out), "--sizes", "21x34"]) == 0
    table = capsys.readouterr().out
    assert "conv_algorithm=winograd" in table and "tolerance 1e-04): ok" in table


@pytest.mark.torch
def test_block_pooling_option_and_its_deprecated_alias(tmp_path, capsys):
    pytest.importorskip("torch")
    export, validate = scripts()
    new, old = tmp_path / "new.onnx", tmp_path / "old.onnx"
    assert export["main"](["--taps", "relu2_1", "--block-pooling", "avg", "-o", str(new)]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert export["main"](["--taps", "relu2_1", "--pooling", "avg", "-o", str(old)]) == 0
    assert "--pooling is deprecated and will be removed in 0.3; use --block-pooling" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="--pooling='max' and --block-pooling='avg' both given"):
        export["block_pooling"](
            argparse.Namespace(deprecated_pooling="max", block_pooling="avg")
        )
    for path in (new, old):
        assert read_metadata(path)["config"]["block_pooling"] == "avg"
    assert validate["main"](["--taps", "relu2_1", "--pooling", "avg", "--sizes", "19x23"]) == 0
    captured = capsys.readouterr()
    assert "block_pooling=avg" in captured.out and "deprecated" in captured.err
    with pytest.raises(SystemExit):
        export["main"](["--block-pooling", "min"])
    assert "invalid choice: 'min'" in capsys.readouterr().err
