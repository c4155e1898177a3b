"""export-triton: the config parses as Triton's ModelConfig; the ONNX gives the features."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from microtex import TextureFeaturizer
from microtex.cli.main import main
from microtex.engine.session import Session


def model_config_pb2():
    tritonclient = pytest.importorskip("tritonclient")
    # the module file alone: tritonclient.grpc's package imports grpcio, not needed here
    path = pathlib.Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
def test_a_repository_triton_can_read_that_gives_the_bundles_features(shallow_onnx, tmp_path,
                                                                      capsys):  # fmt: skip
    from google.protobuf import text_format

    images = np.random.default_rng(0).random((3, 40, 48), dtype=np.float32)
    featurizer = TextureFeaturizer(taps="relu1_1,relu2_1", pool="mean,gram", device="cpu",
                                   gram_layout="full").fit(images)  # fmt: skip
    featurizer.save(tmp_path / "tex")
    code = main(["export-triton", str(tmp_path / "tex"), "-o", str(tmp_path / "repo"),
                 "--max-batch-size", "4", "--instances", "2", "--tensorrt-fp16"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "repo" / "tex" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2().ModelConfig())
    assert config.name == "tex" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4 and config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [o.name for o in config.output] == ["relu1_1/mean", "relu1_1/gram", "relu2_1/mean",
                                                "relu2_1/gram"]  # fmt: skip
    assert [list(o.dims) for o in config.output] == [[64], [64 * 64], [128], [128 * 128]]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    code = main(["export-triton", str(tmp_path / "tex"), "-o", str(tmp_path / "repo"), "--name",
                 "cpu-tex", "--kind", "cpu", "--max-queue-delay-us", "500"])  # fmt: skip
    assert code == 0
    other = text_format.Parse((tmp_path / "repo" / "cpu-tex" / "config.pbtxt").read_text(),
                              model_config_pb2().ModelConfig())  # fmt: skip
    assert other.name == "cpu-tex" and other.dynamic_batching.max_queue_delay_microseconds == 500
    assert other.instance_group[0].kind == other.instance_group[0].KIND_CPU
    assert not other.optimization.execution_accelerators.gpu_execution_accelerator
    session = Session(tmp_path / "repo" / "tex" / "1" / "model.onnx", device="cpu")
    outputs = session.run(images[:, None])
    from_graph = np.concatenate([outputs[o.name] for o in config.output], axis=1)
    np.testing.assert_allclose(from_graph, featurizer.transform(images), rtol=1e-4, atol=1e-6)


@pytest.mark.torch
def test_a_classifier_bundle_is_one_graph_giving_the_bundles_probabilities(tmp_path, capsys):
    from google.protobuf import text_format
    from sklearn.pipeline import Pipeline

    from microtex import load_bundle
    from microtex.analysis.classify import make_forest, save_classifier

    rng = np.random.default_rng(1)
    images = rng.random((12, 32, 32), dtype=np.float32)
    images[6:] = np.repeat(np.repeat(images[6:, ::4, ::4], 4, axis=1), 4, axis=2)  # coarser
    labels = ["fine"] * 6 + ["coarse"] * 6
    featurizer = TextureFeaturizer(taps="relu1_1,relu2_1", pool="max,gram", device="cpu")
    pipeline = Pipeline([("f", featurizer), ("forest", make_forest(25))]).fit(images, labels)
    save_classifier(pipeline, tmp_path / "clf")
    code = main(["export-triton", str(tmp_path / "clf"), "-o", str(tmp_path / "repo")])
    assert code == 0, capsys.readouterr().err
    root = tmp_path / "repo" / "clf"
    config = text_format.Parse((root / "config.pbtxt").read_text(),
                               model_config_pb2().ModelConfig())  # fmt: skip
    (output,) = config.output
    assert output.name == "probabilities" and list(output.dims) == [2]
    assert output.label_filename == "labels.txt"
    assert (root / "labels.txt").read_text().split() == ["coarse", "fine"]
    test = rng.random((4, 32, 32), dtype=np.float32)
    test[2:] = np.repeat(np.repeat(test[2:, ::4, ::4], 4, axis=1), 4, axis=2)
    session = Session(root / "1" / "model.onnx", device="cpu")
    from_graph = session.run(test[:, None], outputs=["probabilities"])["probabilities"]
    expected = load_bundle(tmp_path / "clf").predict_proba(test)
    np.testing.assert_allclose(from_graph, expected, atol=1e-6)
    assert list(np.array(["coarse", "fine"])[from_graph.argmax(1)]) == ["fine"] * 2 + ["coarse"] * 2


def test_raw_and_vlad_bundles_are_refused(tmp_path, capsys):
    images = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)
    featurizer = TextureFeaturizer(taps="raw", pool="mean").fit(images)
    featurizer.save(tmp_path / "raw")
    assert main(["export-triton", str(tmp_path / "raw"), "-o", str(tmp_path / "r")]) == 2
    assert "needs CNN taps only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_other_bundle_kinds_are_refused(tmp_path, capsys):
    from microtex import bundle

    bundle.save_bundle(tmp_path / "other", {"x.json": b"{}"}, {}, kind="something-else")
    assert main(["export-triton", str(tmp_path / "other"), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "takes a 'texture-featurizer' or 'classifier' bundle; this one holds a " in err
    assert not (tmp_path / "r").exists()
