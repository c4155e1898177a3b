"""A generator bundle behind the service: :generate and the KServe infer route."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from microtex import load_bundle  # noqa: E402
from microtex.serve.app import MAX_GENERATED, create_app  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def generator_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from microtex.generative.export import save_generator

    from _helpers import tiny_generator_models

    vqvae, prior = tiny_generator_models()
    path = tmp_path_factory.mktemp("served") / "steel"
    return save_generator(path, vqvae, prior, condition_names=["ln_t"],
                          condition_range=[[2.0, 4.5]])  # fmt: skip


@pytest.fixture
def client(generator_bundle):
    with TestClient(create_app({"steel": generator_bundle}, max_delay_ms=1)) as c:
        deadline = time.monotonic() + 30
        while c.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.02)
        yield c


def test_generate_answers_the_bundles_images_for_the_seed(client, generator_bundle):
    reply = client.post("/v1/steel:generate", json={"condition": 3.0, "n": 3, "seed": 7})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["n"] == 3 and body["condition"] == {"ln_t": 3.0} and body["seed"] == 7
    images = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
                       for data in body["images_png_base64"]])  # fmt: skip
    expected = load_bundle(generator_bundle).generate(3.0, 3, seed=7)
    np.testing.assert_array_equal(images, np.round(expected * 255).astype(np.uint8))
    meta = client.get("/v2/models/steel").json()
    assert meta["inputs"][0]["name"] == "conditions" and meta["outputs"][0]["shape"] == [-1, 32, 32]
    assert meta["parameters"]["conditions"] == ["ln_t"]


def test_the_infer_route_takes_a_condition_per_image(client, generator_bundle):
    body = {"inputs": [{"name": "conditions", "datatype": "FP32", "shape": [2, 1],
                        "data": [2.5, 4.0]}], "parameters": {"seed": 3}}  # fmt: skip
    reply = client.post("/v2/models/steel/infer", json=body)
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    images = np.asarray(output["data"], np.float32).reshape(output["shape"])
    expected = load_bundle(generator_bundle).generate([[2.5], [4.0]], 2, seed=3)
    np.testing.assert_allclose(images, expected, atol=1e-6)


@pytest.mark.parametrize(("body", "message"), [
    ({"condition": float("nan")}, None),
    ({"condition": [1.0, 2.0]}, "this generator takes 1"),
    ({"condition": 3.0, "n": MAX_GENERATED + 1}, f"at most {MAX_GENERATED} images"),
    ({"condition": 3.0, "seed": -1}, "seed"),
    ({"condition": 3.0, "temperature": -0.5}, "temperature"),
    ({"n": 2}, 'JSON object with "condition"'),
])  # fmt: skip
def test_bad_generate_requests_get_400_naming_the_value(client, body, message):
    if message is None:  # NaN is not JSON: sent as text
        reply = client.post("/v1/steel:generate", content=b'{"condition": NaN}',
                            headers={"content-type": "application/json"})  # fmt: skip
        message = "'ln_t' is nan"
    else:
        reply = client.post("/v1/steel:generate", json=body)
    assert reply.status_code == 400 and message in reply.json()["error"], reply.text


def test_routes_of_the_other_kinds_are_refused(client):
    reply = client.post("/v1/steel:predict", content=b"x", headers={"content-type": "image/png"})
    assert reply.status_code == 400 and "is a generator; use :generate" in reply.json()["error"]
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}
    reply = client.post("/v2/models/steel/infer", json=body)
    assert reply.status_code == 400 and "conditions" in reply.json()["error"]
    metrics = client.get("/metrics").text
    assert 'route="generate"' in metrics or 'route="predict"' in metrics
