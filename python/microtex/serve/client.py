"""A tiny client of ``microtex serve`` (standard library only: no FastAPI, no httpx).

>>> from microtex.serve.client import Client            # doctest: +SKIP
>>> client = Client("http://127.0.0.1:8000", token=None)  # doctest: +SKIP
>>> client.predict("texture", "a.png")["features"][:3]  # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import threading
import urllib.parse

import numpy as np

__all__ = ["Client", "ServiceError"]

_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
          ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp"}  # fmt: skip


class ServiceError(RuntimeError):
    """The service answered with an error: ``status`` and its ``{"error": ...}`` message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    """Calls one service.

    Parameters
    ----------
    url : str
        ``http://host:port`` of ``microtex serve``.
    token : str, optional
        The bearer token the service was started with (``--token-file``).
    timeout : float
        Seconds to wait for an answer.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://host:port or https://..., got {url!r}")
        self._parts = parts
        self._local = threading.local()  # one kept-alive connection per thread
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            kind = (http.client.HTTPSConnection if self._parts.scheme == "https"
                    else http.client.HTTPConnection)  # fmt: skip
            connection = kind(self._parts.hostname, self._parts.port, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def close(self) -> None:
        """Close the kept-alive connections of every thread."""
        with self._lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()
        self._local = threading.local()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> bytes:  # fmt: skip
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        target = self._parts.path.rstrip("/") + path
        for attempt in (0, 1):  # a kept-alive connection the server closed: once more, anew
            connection = self._connection(fresh=attempt == 1)
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                connection.close()
                if attempt:
                    raise
        if response.status >= 400:
            text = data.decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error") or text
            except ValueError:
                message = text
            raise ServiceError(response.status, message)
        return data

    def ready(self) -> bool:
        """Whether every model is loaded and warmed up."""
        try:
            self._call("GET", "/v2/health/ready")
            return True
        except ServiceError:
            return False

    def metadata(self, model: str) -> dict:
        """The model's inputs, outputs (and classes, for a classifier)."""
        return json.loads(self._call("GET", f"/v2/models/{model}"))

    def predict(self, model: str, image) -> dict:
        """Features or class probabilities of one image file (path) or encoded image (bytes)."""
        if isinstance(image, (str, os.PathLike)):
            path = pathlib.Path(image)
            data, kind = path.read_bytes(), _TYPES.get(path.suffix.lower(), "image/png")
        else:
            data, kind = bytes(image), "application/octet-stream"
        return json.loads(self._call("POST", f"/v1/{model}:predict", data, kind))

    def infer(self, model: str, images) -> np.ndarray:
        """The model's output for float32 images in [0, 1], ``(h, w)`` or ``(n, h, w)``."""
        array = np.asarray(images, dtype=np.float32)
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(array.shape),
                            "data": array.ravel().tolist()}]}  # fmt: skip
        reply = json.loads(self._call("POST", f"/v2/models/{model}/infer",
                                      json.dumps(body).encode(), "application/json"))  # fmt: skip
        (output,) = reply["outputs"]
        return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
