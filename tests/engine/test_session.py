"""ONNX Runtime sessions and execution providers (microtex.engine.session)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from microtex.engine import session as runtime
from microtex.engine.session import CPU, CUDA, Session, resolve_device
from microtex.errors import DeviceError

LOGGER = "microtex.engine.session"


@pytest.fixture
def no_cuda(monkeypatch):
    """ONNX Runtime as the CPU wheel installs it (no CUDA provider)."""
    monkeypatch.setattr(runtime, "available_providers", lambda: ["AzureExecutionProvider", CPU])


@pytest.fixture
def with_cuda(monkeypatch):
    """ONNX Runtime as onnxruntime-gpu installs it (CUDA provider listed)."""
    monkeypatch.setattr(runtime, "available_providers", lambda: [CUDA, CPU])


# ------------------------------------------------------------------ resolve_device
@pytest.mark.parametrize("fixture", ["no_cuda", "with_cuda"])
def test_cpu_is_cpu_provider_only(request, fixture):
    request.getfixturevalue(fixture)
    assert resolve_device("cpu") == [CPU]


def test_auto_without_cuda_falls_back_to_cpu_and_logs_it_once(no_cuda, caplog, monkeypatch):
    monkeypatch.setitem(runtime._SAID, "no cuda", False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert resolve_device("auto") == [CPU]
        assert resolve_device("auto") == [CPU]  # every session resolves it: one line in all
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 1 and "CUDA" in messages[0] and "CPU" in messages[0], messages


def test_auto_with_cuda_prefers_cuda_then_cpu(with_cuda, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        providers = resolve_device("auto")
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [CUDA, CPU]
    assert providers[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert not [r for r in caplog.records if r.name == LOGGER]  # no fallback logged
    assert resolve_device("cuda") == providers


def test_cuda_without_provider_is_a_device_error_naming_onnxruntime_gpu(no_cuda):
    with pytest.raises(DeviceError, match="onnxruntime-gpu") as info:
        resolve_device("cuda")
    assert "CUDAExecutionProvider" in str(info.value)


def test_cuda_on_this_machine():
    """The real provider list: CPU wheel -> DeviceError; GPU wheel -> CUDA first."""
    if CUDA in runtime.available_providers():
        assert resolve_device("cuda")[0][0] == CUDA
    else:
        with pytest.raises(DeviceError, match="onnxruntime-gpu"):
            resolve_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "CPU", "", None, "cuda:0"])
def test_unknown_device_names_it(bad):
    with pytest.raises(ValueError, match="unknown device") as info:
        resolve_device(bad)
    assert repr(bad) in str(info.value)


# ------------------------------------------------------------------ Session
@pytest.fixture
def batch(rng):
    return rng.random((3, 1, 20, 26), dtype=np.float32)


@pytest.mark.torch
def test_session_runs_shallow_graph(shallow_onnx, shallow_config, batch):
    session = Session(shallow_onnx, device="cpu")
    assert session.device == "cpu" and session.providers == [CPU]
    assert session.input_name == "image"
    assert session.output_names == ("relu1_1", "relu2_1") == shallow_config.taps
    outputs = session.run(batch)
    assert list(outputs) == ["relu1_1", "relu2_1"]
    assert outputs["relu1_1"].shape == (3, 64, 20, 26)
    assert outputs["relu2_1"].shape == (3, 128, 10, 13)  # after one 2x2 max pooling
    for value in outputs.values():
        assert value.dtype == np.float32
        assert value.min() >= 0.0  # post-ReLU taps
        assert value.max() > 0.0
    # one output only, by name
    only = session.run(batch, outputs=["relu2_1"])
    assert list(only) == ["relu2_1"]
    np.testing.assert_array_equal(only["relu2_1"], outputs["relu2_1"])
    # float64 and non-contiguous input are converted, with the same result
    np.testing.assert_allclose(
        session.run(np.asfortranarray(batch.astype(np.float64)))["relu1_1"],
        outputs["relu1_1"],
        rtol=1e-6,
        atol=1e-6,
    )
    # each image alone gives its own row of the batch
    alone = session.run(batch[1:2])["relu1_1"]
    np.testing.assert_allclose(alone[0], outputs["relu1_1"][1], rtol=1e-5, atol=1e-5)
    assert str(shallow_onnx) in repr(session)


@pytest.mark.torch
def test_session_metadata_holds_microtex_json(shallow_onnx):
    metadata = Session(shallow_onnx, device="cpu").metadata()
    document = json.loads(metadata["microtex"])
    assert document["config"]["taps"] == ["relu1_1", "relu2_1"]
    assert document["config"]["arch"] == "vgg19"
    assert document["output_names"] == ["relu1_1", "relu2_1"]
    assert document["input_name"] == "image"
    assert document["heads"] is None


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(2, 20, 26), (2, 3, 20, 26), (20, 26), (1, 2, 1, 20, 26)])
def test_session_wrong_input_shape_names_it(shallow_onnx, shape):
    session = Session(shallow_onnx, device="cpu")
    with pytest.raises(ValueError, match="height, width") as info:
        session.run(np.zeros(shape, np.float32))
    assert str(shape) in str(info.value)


@pytest.mark.torch
def test_session_intra_op_threads(shallow_onnx, batch):
    one = Session(shallow_onnx, device="cpu", n_threads=1)
    two = Session(shallow_onnx, device="cpu", n_threads=2)
    assert one._session.get_session_options().intra_op_num_threads == 1
    assert two._session.get_session_options().intra_op_num_threads == 2
    a, b = one.run(batch), two.run(batch)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_session_workers_stop_spinning_between_runs(shallow_onnx):
    # pooling and decoding run between inferences on the CPU; ONNX Runtime's
    # workers must not keep spinning on the cores after Run() returns
    options = Session(shallow_onnx, device="cpu", n_threads=2)._session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(RuntimeError):  # spinning within a run keeps ONNX Runtime's default
        options.get_session_config_entry("session.intra_op.allow_spinning")


@pytest.mark.torch
def test_session_default_threads_follow_microtex_num_threads(shallow_onnx, monkeypatch):
    monkeypatch.setenv("MICROTEX_NUM_THREADS", "1")
    session = Session(shallow_onnx, device="cpu")
    assert session._session.get_session_options().intra_op_num_threads == 1


@pytest.mark.torch
def test_session_cuda_without_provider_is_a_device_error(shallow_onnx, no_cuda):
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        Session(shallow_onnx, device="cuda")


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_session_cuda_listed_but_unusable(shallow_onnx, with_cuda, caplog, batch):
    """A CUDA provider that does not start: "auto" runs on the CPU (logged), "cuda" refuses."""
    if CUDA in runtime._ort().get_available_providers():
        pytest.skip("CUDA is really available here")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        session = Session(shallow_onnx, device="auto")
    assert session.device == "cpu" and CUDA not in session.providers
    assert any("CPU" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert session.run(batch)["relu1_1"].shape == (3, 64, 20, 26)
    with pytest.raises(DeviceError, match="could not start CUDA"):
        Session(shallow_onnx, device="cuda")


def test_session_unknown_device_fails_before_reading_the_file(tmp_path):
    with pytest.raises(ValueError, match="'tpu'"):
        Session(tmp_path / "missing.onnx", device="tpu")
