"""The HTTP service: bundles behind the KServe v2 / Triton HTTP protocol and an upload route.

Routes (``create_app``):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (ready once every model is
  loaded and has run once), ``GET /v2/models/{name}`` (metadata);
* ``POST /v2/models/{name}/infer``: KServe v2 JSON tensors, input ``image``
  FP32 ``[h, w]`` or ``[n, h, w]`` in [0, 1];
* ``POST /v1/{name}:predict``: one image file (PNG, JPEG, TIFF, BMP) as the raw
  body or as a multipart field; answers features, or class probabilities;
* ``GET /metrics``: Prometheus text.

Every request goes through the model's :class:`~microtex.serve.batcher.MicroBatcher`.
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
from collections import Counter, defaultdict

import numpy as np

try:  # the serve extra; FastAPI reads the routes' annotations from this module
    from fastapi import Request
except ImportError:  # pragma: no cover - the serve extra is not installed
    raise ImportError("the service needs FastAPI: pip install 'microtex[serve]'") from None

from microtex.serve.batcher import MicroBatcher, QueueFullError

__all__ = ["ServedModel", "create_app"]

log = logging.getLogger("microtex.serve")

_MODEL_ROUTE = re.compile(r"/v[12]/(?:models/)?(?P<name>[^/:]+)(?:/|:)(?P<route>infer|predict)$")

#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServedModel:
    """A loaded bundle (texture featurizer or classifier) with its batcher."""

    def __init__(self, name: str, path, *, max_batch_size: int, max_delay_ms: float,
                 max_queue: int):  # fmt: skip
        from microtex.bundle import load_bundle

        self.name, self.path = name, pathlib.Path(path)
        self.model = load_bundle(self.path)  # checksums verified
        self.classifier = hasattr(self.model, "classes_") and hasattr(self.model, "featurizer")
        self.featurizer = self.model.featurizer if self.classifier else self.model
        self.output = "probabilities" if self.classifier else "features"
        self.batcher = MicroBatcher(self._run, max_batch_size=max_batch_size,
                                    max_delay_ms=max_delay_ms, max_queue=max_queue)  # fmt: skip

    def _run(self, batch: np.ndarray) -> np.ndarray:
        features = self.featurizer.transform(batch)
        return self.model.predict_proba_features(features) if self.classifier else features

    def warm_up(self) -> None:
        """One run at a typical size: first-run costs are paid before the service is ready."""
        side = max(64, self.featurizer.pipeline_.plan.min_side)
        self._run(np.zeros((1, side, side), np.float32))

    def metadata(self) -> dict:
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

    @app.post("/v1/{name}:predict")
    async def predict(name: str, request: Request):
        from microtex.io.decode import decode_bytes

        refused = unknown(name) or declared_oversized(request)
        if refused is not None:
            return refused
        served = models[name]
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
