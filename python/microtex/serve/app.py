"""The HTTP service: bundles behind the KServe v2 / Triton HTTP protocol and an upload route.

Routes (``create_app``):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (ready once every model is
  loaded and has run once), ``GET /v2/models/{name}`` (metadata);
* ``POST /v2/models/{name}/infer``: KServe v2 JSON tensors, input ``image``
  FP32 ``[h, w]`` or ``[n, h, w]`` in [0, 1];
* ``POST /v1/{name}:predict``: one image file (PNG, JPEG, TIFF, BMP) as the raw
  body or as a multipart field; answers features, or class probabilities;
* a ``generator`` bundle instead answers ``POST /v1/{name}:generate`` (JSON
  ``{"condition": 3.0 or [..], "n": 4, "seed": 0, "temperature": 1.0}`` →
  base64 PNGs) and ``/v2/models/{name}/infer`` with input ``conditions`` FP32
  ``[n, n_conditions]`` (``parameters``: ``seed``, ``temperature``) → output
  ``image`` FP32 ``[n, h, w]`` in [0, 1]; at most :data:`MAX_GENERATED` images
  a request;
* ``GET /metrics``: Prometheus text.

Every request goes through the model's :class:`~microtex.serve.batcher.MicroBatcher`
(a generator's requests run one at a time: each has its own seed).
Limits: upload size (413), the decoders' pixel and byte limits (400), a bounded
queue (503 with ``Retry-After``), a request timeout (504). With a token every
route but the health checks needs ``Authorization: Bearer <token>`` (401).
Error bodies are ``{"error": message}`` and never carry paths or tracebacks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import pathlib
import re
import threading
import time
import warnings
from collections import Counter, defaultdict

import numpy as np

try:  # the serve extra; FastAPI reads the routes' annotations from this module
    from fastapi import Request
except ImportError:  # pragma: no cover - the serve extra is not installed
    raise ImportError("the service needs FastAPI: pip install 'microtex[serve]'") from None

from microtex.serve.batcher import MicroBatcher, QueueFullError

__all__ = ["MAX_GENERATED", "ServedModel", "create_app"]

#: Most images one generate request may ask for.
MAX_GENERATED = 64

log = logging.getLogger("microtex.serve")

_MODEL_ROUTE = re.compile(
    r"/v[12]/(?:models/)?(?P<name>[^/:]+)(?:/|:)(?P<route>infer|predict|generate)$"
)

#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServedModel:
    """A loaded bundle (texture featurizer, classifier or generator) with its batcher."""

    def __init__(self, name: str, path, *, max_batch_size: int, max_delay_ms: float,
                 max_queue: int):  # fmt: skip
        from microtex.bundle import load_bundle

        self.name, self.path = name, pathlib.Path(path)
        self.model = load_bundle(self.path)  # checksums verified
        self.generator = hasattr(self.model, "sample_indices")
        self.classifier = hasattr(self.model, "classes_") and hasattr(self.model, "featurizer")
        self.featurizer = self.model.featurizer if self.classifier else self.model
        self.output = ("image" if self.generator else
                       "probabilities" if self.classifier else "features")  # fmt: skip
        run = self._generate if self.generator else self._run
        self.batcher = MicroBatcher(run, max_batch_size=1 if self.generator else max_batch_size,
                                    max_delay_ms=max_delay_ms, max_queue=max_queue)  # fmt: skip

    def _run(self, batch: np.ndarray) -> np.ndarray:
        features = self.featurizer.transform(batch)
        return self.model.predict_proba_features(features) if self.classifier else features

    @staticmethod
    def generation_request(conditions: np.ndarray, seed: int, temperature: float) -> np.ndarray:
        """One generate request as the batcher carries it: ``(n, n_conditions + 2)`` float64,
        the conditions then the temperature and the seed in every row."""
        n = len(conditions)
        return np.column_stack([conditions, np.full(n, temperature), np.full(n, float(seed))])

    def _generate(self, batch: np.ndarray) -> np.ndarray:
        (request,) = batch  # one request a batch: max_batch_size is 1 for a generator
        conditions, temperature, seed = request[:, :-2], request[0, -2], int(request[0, -1])
        images = self.model.generate(conditions, len(request), seed=seed, temperature=temperature)
        return images[None]  # the batcher hands each request its row of the batch

    def warm_up(self) -> None:
        """One run at a typical size: first-run costs are paid before the service is ready."""
        if self.generator:
            middle = self.model.condition_range.mean(axis=1)
            self._generate(self.generation_request(middle[None], 0, 1.0)[None])
            return
        side = max(64, self.featurizer.pipeline_.plan.min_side)
        self._run(np.zeros((1, side, side), np.float32))

    def metadata(self) -> dict:
        if self.generator:
            side, k = self.model.image_size, len(self.model.condition_names)
            return {
                "name": self.name, "versions": ["1"], "platform": "microtex",
                "inputs": [{"name": "conditions", "datatype": "FP32", "shape": [-1, k]}],
                "outputs": [{"name": "image", "datatype": "FP32", "shape": [-1, side, side]}],
                "parameters": {"conditions": list(self.model.condition_names),
                               "training_range": self.model.condition_range.tolist(),
                               "max_images": MAX_GENERATED},
            }  # fmt: skip
        width = len(self.model.classes_) if self.classifier else self.featurizer.n_features_out_
        meta = {
            "name": self.name,
            "versions": ["1"],
            "platform": "microtex",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, -1, -1]}],
            "outputs": [{"name": self.output, "datatype": "FP32", "shape": [-1, width]}],
        }
        if self.classifier:
            meta["parameters"] = {"classes": [str(c) for c in self.model.classes_]}
        return meta


class _Metrics:
    def __init__(self):
        self.requests: Counter = Counter()  # (model, route, code)
        self.latency: dict = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.latency_sum: Counter = Counter()

    def observe(self, model: str, route: str, code: int, seconds: float) -> None:
        self.requests[(model, route, code)] += 1
        buckets = self.latency[(model, route)]
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        buckets[-1] += 1
        self.latency_sum[(model, route)] += seconds

    def text(self, models: dict) -> str:
        lines = ["# TYPE microtex_requests_total counter"]
        for (model, route, code), n in sorted(self.requests.items()):
            lines.append(f'microtex_requests_total{{model="{model}",route="{route}",'
                         f'code="{code}"}} {n}')  # fmt: skip
        lines.append("# TYPE microtex_request_seconds histogram")
        for (model, route), buckets in sorted(self.latency.items()):
            labels = f'model="{model}",route="{route}"'
            for bound, n in zip(LATENCY_BUCKETS, buckets):
                lines.append(f'microtex_request_seconds_bucket{{{labels},le="{bound}"}} {n}')
            lines.append(f'microtex_request_seconds_bucket{{{labels},le="+Inf"}} {buckets[-1]}')
            lines.append(f"microtex_request_seconds_sum{{{labels}}} "
                         f"{self.latency_sum[(model, route)]:.6f}")  # fmt: skip
            lines.append(f"microtex_request_seconds_count{{{labels}}} {buckets[-1]}")
        lines.append("# TYPE microtex_batches_total counter")
        lines.append("# TYPE microtex_queue_depth gauge")
        for name, served in sorted(models.items()):
            for size, n in sorted(served.batcher.batch_sizes.items()):
                lines.append(f'microtex_batches_total{{model="{name}",size="{size}"}} {n}')
            lines.append(f'microtex_queue_depth{{model="{name}"}} {served.batcher.queue_depth}')
        return "\n".join(lines) + "\n"


def create_app(bundles: dict, *, max_batch_size: int = 8, max_delay_ms: float = 2.0,
               max_queue: int = 64, max_upload_bytes: int = 32 << 20, timeout_s: float = 30.0,
               token: str | None = None):  # fmt: skip
    """The service's ASGI app over ``bundles`` (name -> bundle directory).

    Bundles load and warm up on a background thread when the app starts;
    ``/v2/health/ready`` says 503 until they have.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    from microtex.errors import ImageReadError, MicrotexError

    models: dict[str, ServedModel] = {}
    state = {"ready": False, "failed": None}
    metrics = _Metrics()

    def load():
        try:
            for name, path in bundles.items():
                served = ServedModel(name, path, max_batch_size=max_batch_size,
                                     max_delay_ms=max_delay_ms, max_queue=max_queue)  # fmt: skip
                served.warm_up()
                models[name] = served
            state["ready"] = True
            log.info("ready: %s", ", ".join(models))
        except Exception as exc:  # noqa: BLE001  (reported by the readiness route)
            state["failed"] = f"{type(exc).__name__}: {exc}"
            log.error("cannot load the models: %s", state["failed"])

    @asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=load, name="microtex-load", daemon=True)
        thread.start()
        yield
        for served in models.values():
            served.batcher.close()

    app = FastAPI(title="microtex", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip

    def error(code: int, message: str, headers=None):
        return JSONResponse({"error": message}, status_code=code, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if token is not None and not path.startswith("/v2/health"):
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error(401, "missing or wrong bearer token")
        start = time.perf_counter()
        response = await call_next(request)
        match = _MODEL_ROUTE.match(path)
        name, route = (match.group("name"), match.group("route")) if match else ("-", "other")
        metrics.observe(name, route, response.status_code, time.perf_counter() - start)
        return response

    def unknown(name: str):
        """The 404 answer for a model that is not served, or None."""
        if name in models:
            return None
        return error(404, f"no model {name!r}; models: {sorted(models)}")

    def oversized(n_bytes: int):
        """The 413 answer for a body of ``n_bytes``, or None."""
        if n_bytes <= max_upload_bytes:
            return None
        return error(413, f"request of {n_bytes} bytes; the limit is {max_upload_bytes}")

    def declared_oversized(request: Request):
        """413 from the Content-Length header, before a large body is read."""
        declared = request.headers.get("content-length", "")
        return oversized(int(declared)) if declared.isdigit() else None

    async def answer(served: ServedModel, images: list[np.ndarray]) -> np.ndarray:
        rows = await asyncio.wait_for(
            asyncio.gather(*(served.batcher.submit(image) for image in images)), timeout_s
        )
        return np.stack(rows)

    async def guarded(served, images):
        try:
            return await answer(served, images), None
        except QueueFullError:
            return None, error(503, "the queue is full; retry shortly", {"Retry-After": "1"})
        except asyncio.TimeoutError:
            return None, error(504, f"no answer within {timeout_s:g} s")
        except (MicrotexError, ValueError, TypeError) as exc:
            return None, error(400, str(exc))
        except Exception:  # noqa: BLE001  (never a traceback in a body)
            log.exception("inference failed")
            return None, error(500, "internal error")

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if state["ready"]:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": state["failed"]}, status_code=503)

    @app.get("/v2/models/{name}")
    async def metadata(name: str):
        return unknown(name) or models[name].metadata()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        refused = unknown(name) or declared_oversized(request)
        if refused is not None:
            return refused
        served = models[name]
        body = await request.body()
        if (refused := oversized(len(body))) is not None:
            return refused
        if served.generator:
            return await generate_tensor(name, served, body)
        try:
            document = json.loads(body)
            (tensor,) = [t for t in document["inputs"] if t["name"] == "image"]
            shape = [int(n) for n in tensor["shape"]]
            if tensor.get("datatype", "FP32") != "FP32" or not 2 <= len(shape) <= 3:
                raise ValueError("input 'image' must be FP32 of shape [h, w] or [n, h, w]")
            array = np.asarray(tensor["data"], dtype=np.float32).reshape(shape)
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, f"bad inference request: {exc}")
        images = [array] if array.ndim == 2 else list(array)
        values, failure = await guarded(served, images)
        if failure is not None:
            return failure
        return {"model_name": name, "model_version": "1", "outputs": [
            {"name": served.output, "datatype": "FP32", "shape": list(values.shape),
             "data": values.ravel().tolist()}]}  # fmt: skip

    def generation(served: ServedModel, conditions, n, seed, temperature) -> np.ndarray:
        """The batcher's request array, every value checked (ValueError names the bad one)."""
        from microtex._validation import check_int, check_positive_int, check_real

        n = check_positive_int("n", n)
        if n > MAX_GENERATED:
            raise ValueError(f"n = {n}: at most {MAX_GENERATED} images a request")
        seed = check_int("seed", seed, 0)
        if seed >= 2**53:  # carried as a float64 through the batcher
            raise ValueError(f"seed must be below 2**53, got {seed}")
        temperature = check_real("temperature", temperature, minimum=0.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = served.model.check_conditions(conditions, n)
        for warning in caught:  # extrapolation: answered, and logged
            log.warning("%s: %s", served.name, warning.message)
        return served.generation_request(rows.astype(np.float64), seed, temperature)

    async def generate_tensor(name: str, served: ServedModel, body: bytes):
        try:
            document = json.loads(body)
            found = [t for t in document["inputs"] if t["name"] == "conditions"]
            if len(found) != 1:
                names = [t.get("name") for t in document["inputs"]]
                raise ValueError(f"a generator takes one input 'conditions'; got {names}")
            (tensor,) = found
            shape = [int(n) for n in tensor["shape"]]
            if tensor.get("datatype", "FP32") != "FP32" or len(shape) != 2:
                raise ValueError("input 'conditions' must be FP32 of shape [n, n_conditions]")
            conditions = np.asarray(tensor["data"], dtype=np.float64).reshape(shape)
            parameters = document.get("parameters") or {}
            request_array = generation(served, conditions, shape[0], parameters.get("seed", 0),
                                       parameters.get("temperature", 1.0))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, f"bad inference request: {exc}")
        values, failure = await guarded(served, [request_array])
        if failure is not None:
            return failure
        images = values[0]
        return {"model_name": name, "model_version": "1", "outputs": [
            {"name": "image", "datatype": "FP32", "shape": list(images.shape),
             "data": images.ravel().tolist()}]}  # fmt: skip

    @app.post("/v1/{name}:generate")
    async def generate(name: str, request: Request):
        import base64

        from microtex.io.decode import encode_png

        refused = unknown(name) or declared_oversized(request)
        if refused is not None:
            return refused
        served = models[name]
        if not served.generator:
            return error(400, f"model {name!r} is not a generator; use :predict")
        body = await request.body()
        if (refused := oversized(len(body))) is not None:
            return refused
        try:
            document = json.loads(body)
            if not isinstance(document, dict) or "condition" not in document:
                raise ValueError('send a JSON object with "condition" (and "n", "seed", '
                                 '"temperature")')  # fmt: skip
            n, seed = document.get("n", 1), document.get("seed", 0)
            request_array = generation(served, document["condition"], n, seed,
                                       document.get("temperature", 1.0))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, f"bad generate request: {exc}")
        values, failure = await guarded(served, [request_array])
        if failure is not None:
            return failure
        pngs = [base64.b64encode(encode_png(image)).decode("ascii") for image in values[0]]
        return {"model": name, "seed": seed, "n": len(pngs),
                "condition": dict(zip(served.model.condition_names,
                                      request_array[0, :-2].tolist())),
                "images_png_base64": pngs}  # fmt: skip

    @app.post("/v1/{name}:predict")
    async def predict(name: str, request: Request):
        from microtex.io.decode import decode_bytes

        refused = unknown(name) or declared_oversized(request)
        if refused is not None:
            return refused
        served = models[name]
        if served.generator:
            return error(400, f"model {name!r} is a generator; use :generate")
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            async with request.form() as form:  # closes the spooled upload files
                files = [v for v in form.values() if hasattr(v, "read")]
                if len(files) != 1:
                    return error(400, "send one image file in the form")
                data = await files[0].read()
        else:
            data = await request.body()
        if (refused := oversized(len(data))) is not None:
            return refused
        try:
            image, _ = decode_bytes(data)
        except ImageReadError as exc:
            return error(400, exc.reason)
        values, failure = await guarded(served, [image])
        if failure is not None:
            return failure
        row = values[0]
        if served.classifier:
            classes = [str(c) for c in served.model.classes_]
            return {"model": name, "class": classes[int(np.argmax(row))],
                    "probabilities": dict(zip(classes, map(float, row)))}  # fmt: skip
        return {"model": name, "features": row.tolist()}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(models),
                                 media_type="text/plain; version=0.0.4")  # fmt: skip

    app.state.models = models
    app.state.ready = state
    return app
