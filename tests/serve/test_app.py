"""The HTTP service, in process (ASGI) and on a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from microtex import TextureFeaturizer  # noqa: E402
from microtex.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A raw-tap featurizer bundle (mean and max of the image: 2 features)."""
    folder = tmp_path_factory.mktemp("bundles") / "texture"
    images = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    TextureFeaturizer(taps="raw", pool="mean,max").fit(images).save(folder)
    return folder


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(array * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_ready(client, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the service never became ready")


@pytest.fixture
def client(bundle):
    with TestClient(create_app({"texture": bundle}, max_delay_ms=1)) as c:
        wait_ready(c)
        yield c


def test_health_metadata_and_unknown_models(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/texture").json()
    assert meta["outputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 2]}]
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404 and "no model 'nope'" in missing.json()["error"]


def test_predict_an_upload_raw_and_multipart(client):
    image = np.linspace(0, 1, 24 * 20, dtype=np.float32).reshape(24, 20)
    data = png(image)
    expected = [float(np.round(image * 255).mean() / 255), 1.0]
    raw = client.post("/v1/texture:predict", content=data, headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    np.testing.assert_allclose(raw.json()["features"], expected, rtol=1e-6)
    form = client.post("/v1/texture:predict", files={"image": ("a.png", data, "image/png")})
    np.testing.assert_allclose(form.json()["features"], expected, rtol=1e-6)


def test_v2_infer_with_json_tensors(client):
    batch = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [3, 8, 8],
                        "data": batch.ravel().tolist()}]}  # fmt: skip
    reply = client.post("/v2/models/texture/infer", json=body)
    assert reply.status_code == 200, reply.text
    (out,) = reply.json()["outputs"]
    assert out["name"] == "features" and out["shape"] == [3, 2]
    expected = np.stack([batch.mean(axis=(1, 2)), batch.max(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(np.reshape(out["data"], (3, 2)), expected, rtol=1e-5)
    bad = client.post("/v2/models/texture/infer", json={"inputs": [{"name": "x"}]})
    assert bad.status_code == 400 and "bad inference request" in bad.json()["error"]


def test_a_corrupt_or_oversized_upload_is_refused_clearly(bundle):
    with TestClient(create_app({"texture": bundle}, max_upload_bytes=1000)) as client:
        wait_ready(client)
        corrupt = client.post("/v1/texture:predict", content=b"\x89PNG\r\n\x1a\nbroken",
                              headers={"content-type": "image/png"})  # fmt: skip
        assert corrupt.status_code == 400
        assert corrupt.json() == {"error": "not a PNG, JPEG, TIFF or BMP image (content not "
                                           "recognized)"}  # fmt: skip
        big = client.post("/v1/texture:predict", content=b"\0" * 5000,
                          headers={"content-type": "image/png"})  # fmt: skip
        assert big.status_code == 413 and "limit is 1000" in big.json()["error"]
        tensor = {"inputs": [{"name": "image", "shape": [40, 40], "data": [0.5] * 1600}]}
        large = client.post("/v2/models/texture/infer", json=tensor)
        assert large.status_code == 413 and "limit is 1000" in large.json()["error"]
        assert str(bundle) not in corrupt.text + big.text  # no paths in bodies


def test_a_token_guards_every_route_but_health(bundle, tmp_path):
    with TestClient(create_app({"texture": bundle}, token="s3cret")) as client:
        wait_ready(client)
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/models/texture").status_code == 401
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/v2/models/texture", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "missing or wrong bearer "
                                                                      "token"}  # fmt: skip
        ok = client.get("/v2/models/texture", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_readiness_waits_for_the_warm_up(bundle, monkeypatch):
    from microtex.serve import app as app_module

    release = threading.Event()
    real = app_module.ServedModel.warm_up

    def slow(self):
        release.wait(10)
        real(self)

    monkeypatch.setattr(app_module.ServedModel, "warm_up", slow)
    with TestClient(create_app({"texture": bundle})) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        release.set()
        wait_ready(client)


def test_metrics_count_requests_and_batches(client):
    data = png(np.full((8, 8), 0.5, np.float32))
    for _ in range(3):
        client.post("/v1/texture:predict", content=data, headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'microtex_requests_total{model="texture",route="predict",code="200"} 3' in text
    assert 'microtex_request_seconds_count{model="texture",route="predict"} 3' in text
    assert 'microtex_queue_depth{model="texture"} 0' in text
    assert "microtex_batches_total" in text


# ---------------------------------------------------------------- a real uvicorn
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(app):
    """``app`` on a real uvicorn on 127.0.0.1 (a free port), once it is ready."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url)
    return url, server, thread


def wait_until_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture
def server(bundle):
    url, server, thread = start(create_app({"texture": bundle}, max_batch_size=8,
                                           max_delay_ms=20))  # fmt: skip
    yield url, server
    server.should_exit = True
    thread.join(10)


def test_a_full_queue_answers_503_with_retry_after(bundle):
    url, server, thread = start(create_app({"texture": bundle}, max_queue=1,
                                           max_delay_ms=400))  # fmt: skip
    replies = []

    def send():
        replies.append(httpx.post(f"{url}/v1/texture:predict",
                                  content=png(np.zeros((8, 8), np.float32)),
                                  headers={"content-type": "image/png"}, timeout=10))  # fmt: skip

    try:
        threads = [threading.Thread(target=send) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
    finally:
        server.should_exit = True
        thread.join(10)
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 503, 503]
    refused = next(r for r in replies if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]


def test_concurrent_requests_on_a_real_server_share_batches(server):
    url, _ = server
    images = [np.random.default_rng(i).random((12, 12)).astype(np.float32) for i in range(8)]
    replies = [None] * len(images)

    def send(i):
        replies[i] = httpx.post(f"{url}/v1/texture:predict", content=png(images[i]),
                                headers={"content-type": "image/png"}, timeout=10)  # fmt: skip

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for image, reply in zip(images, replies):
        assert reply.status_code == 200
        expected = np.round(image * 255) / 255
        np.testing.assert_allclose(reply.json()["features"], [expected.mean(), expected.max()],
                                   rtol=1e-5)  # fmt: skip
    text = httpx.get(f"{url}/metrics").text
    batches = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("microtex_batches_total"))  # fmt: skip
    assert batches < len(images) + 1  # the warm-up is not a batch; 8 requests, fewer batches


def test_shutdown_lets_a_request_in_flight_finish(server, monkeypatch):
    url, uvicorn_server = server
    from microtex.serve import app as app_module

    real = app_module.ServedModel._run

    def slow(self, batch):
        time.sleep(0.5)
        return real(self, batch)

    monkeypatch.setattr(app_module.ServedModel, "_run", slow)
    result = {}

    def send():
        result["reply"] = httpx.post(f"{url}/v1/texture:predict",
                                     content=png(np.zeros((8, 8), np.float32)),
                                     headers={"content-type": "image/png"}, timeout=10)  # fmt: skip

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.2)  # the request is running
    uvicorn_server.should_exit = True
    thread.join(10)
    assert result["reply"].status_code == 200
    assert result["reply"].json()["features"] == [0.0, 0.0]


# ---------------------------------------------------------------- the command
def test_the_serve_command_serves_and_stops_on_sigterm(bundle, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen(
        [sys.executable, "-m", "microtex.cli", "serve", f"tex={bundle}", "--port", str(port),
         "--token-file", str(token)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url)
        reply = httpx.post(f"{url}/v1/tex:predict", content=png(np.ones((8, 8), np.float32)),
                           headers={"content-type": "image/png", "authorization": "Bearer t0ken"},
                           timeout=10)  # fmt: skip
        assert reply.status_code == 200 and reply.json()["features"] == [1.0, 1.0]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"serving tex on http://127.0.0.1:{port}" in out


def test_serve_refuses_a_missing_bundle_before_starting(tmp_path, capsys):
    from microtex.cli.main import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "no bundle at" in capsys.readouterr().err


def test_the_python_client(server, tmp_path):
    from microtex.serve.client import Client, ServiceError

    url, _ = server
    client = Client(url)
    assert client.ready()
    assert client.metadata("texture")["outputs"][0]["shape"] == [-1, 2]
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "a.png"
    path.write_bytes(png(image))
    expected = np.round(image * 255) / 255
    np.testing.assert_allclose(client.predict("texture", path)["features"],
                               [expected.mean(), 1.0], rtol=1e-5)  # fmt: skip
    out = client.infer("texture", np.stack([image, image / 2]))
    np.testing.assert_allclose(out, [[image.mean(), 1.0], [image.mean() / 2, 0.5]], rtol=1e-5)
    with pytest.raises(ServiceError, match="HTTP 400: not a PNG, JPEG"):
        client.predict("texture", b"garbage")
    with pytest.raises(ServiceError, match="HTTP 404: no model 'nope'"):
        client.metadata("nope")
    client.close()


# ---------------------------------------------------------------- microtex bench
def test_bench_in_process_and_against_the_service(bundle, server, tmp_path, capsys):
    import json

    from microtex.cli.main import main

    output = tmp_path / "bench.json"
    code = main(["bench", str(bundle), "--sizes", "16,32", "--batch-sizes", "1,2", "--threads",
                 "1", "--runs", "3", "-o", str(output)])  # fmt: skip
    assert code == 0
    rows = json.loads(output.read_text())["rows"]
    assert [(r["size"], r["batch_size"]) for r in rows] == [(16, 1), (16, 2), (32, 1), (32, 2)]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["images_per_s"] > 0
        assert row["threads"] == 1 and row["calls"] == 3
    assert "in-process | 32 | 2 | 1" in capsys.readouterr().out

    url, _ = server
    code = main(["bench", "--url", url, "--model", "texture", "--sizes", "24",
                 "--concurrency", "1,4", "--requests", "8", "-o", str(output)])  # fmt: skip
    assert code == 0
    rows = json.loads(output.read_text())["rows"]
    assert [(r["concurrency"], r["requests"], r["errors"]) for r in rows] == [(1, 8, 0), (4, 8, 0)]
    assert code == 0 and main(["bench", "--url", url]) == 2  # --model is needed


def test_a_classifier_bundle_answers_classes_and_probabilities(tmp_path):
    from sklearn.pipeline import Pipeline

    from microtex.analysis.classify import make_forest, save_classifier

    dark = [np.full((12, 12), 0.1, np.float32) + 0.01 * i for i in range(4)]
    light = [np.full((12, 12), 0.9, np.float32) - 0.01 * i for i in range(4)]
    pipeline = Pipeline([("f", TextureFeaturizer(taps="raw", pool="mean")),
                         ("forest", make_forest(10))])  # fmt: skip
    pipeline.fit(np.stack(dark + light), ["dark"] * 4 + ["light"] * 4)
    save_classifier(pipeline, tmp_path / "clf")
    with TestClient(create_app({"clf": tmp_path / "clf"})) as client:
        wait_ready(client)
        meta = client.get("/v2/models/clf").json()
        assert meta["parameters"]["classes"] == ["dark", "light"]
        assert meta["outputs"][0]["name"] == "probabilities"
        reply = client.post("/v1/clf:predict", content=png(np.full((12, 12), 0.85, np.float32)),
                            headers={"content-type": "image/png"}).json()  # fmt: skip
        assert reply["class"] == "light" and reply["probabilities"]["light"] == pytest.approx(1.0)
