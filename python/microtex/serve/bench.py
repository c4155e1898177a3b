"""Latency and throughput on the user's machine: in-process, or against a running service.

Like ``onnxruntime_perf_test`` or Triton's ``perf_analyzer``: for every image size ×
batch size × thread count, a warm-up and then timed calls, reported as p50/p90/p99
latency and images/s; against ``microtex serve`` (``url``), uploads of each image size
at each concurrency.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

__all__ = ["bench_in_process", "bench_service", "load", "percentiles", "upload"]


def percentiles(seconds) -> dict:
    """p50/p90/p99 of call times, in milliseconds.

    Examples
    --------
    >>> percentiles([0.001, 0.002, 0.003])["p50_ms"]
    2.0
    """
    values = np.sort(np.asarray(seconds, dtype=np.float64)) * 1e3
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 90, 99)}


def _texture(size: int, seed: int = 0) -> np.ndarray:
    from microtex.synth import perlin_texture

    return perlin_texture(size, 6, 0.5, 1.0, seed=seed)


def _with_threads(featurizer, n_threads: int):
    """``featurizer`` running its network and kernels on ``n_threads`` (a fresh pipeline)."""
    from microtex.features.stream import TexturePipeline

    pipeline = featurizer.pipeline_
    featurizer.pipeline_ = TexturePipeline(
        dataclasses.replace(pipeline.plan, n_threads=n_threads), pipeline.dictionaries,
        pipeline.onnx_path,
    )  # fmt: skip
    return featurizer


def bench_in_process(model, *, sizes=(224,), batch_sizes=(1,), threads=(None,), runs: int = 20,
                     warmup: int = 3) -> list[dict]:  # fmt: skip
    """Time ``model`` (a TextureFeaturizer or TextureClassifier) on synthetic textures.

    Returns one row per size × batch size × threads: ``latency`` percentiles of a
    call on the whole batch, and ``images_per_s``.
    """
    classifier = hasattr(model, "featurizer") and hasattr(model, "classes_")
    featurizer = model.featurizer if classifier else model
    rows = []
    for n_threads in threads:
        _with_threads(featurizer, n_threads)
        run = model.predict_proba if classifier else featurizer.transform
        for size in sizes:
            for batch_size in batch_sizes:
                batch = np.stack([_texture(size, seed) for seed in range(batch_size)])
                for _ in range(warmup):
                    run(batch)
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    run(batch)
                    times.append(time.perf_counter() - t0)
                rows.append({"mode": "in-process", "size": size, "batch_size": batch_size,
                             "threads": n_threads or "all", "device": featurizer.pipeline_.device(),
                             "calls": runs, **percentiles(times),
                             "images_per_s": batch_size * runs / sum(times)})  # fmt: skip
    return rows


def upload(size: int, seed: int = 0) -> bytes:
    """A ``size`` x ``size`` synthetic texture as PNG bytes: what a benchmark uploads."""
    from microtex.io.decode import encode_png

    return encode_png(_texture(size, seed))


def bench_service(url: str, model: str, *, sizes=(224,), concurrency=(1,), requests: int = 40,
                  warmup: int = 3, token: str | None = None) -> list[dict]:  # fmt: skip
    """Upload textures to a running ``microtex serve``: ``requests`` per concurrency level."""
    from microtex.serve.client import Client

    rows = []
    with Client(url, token=token) as client:
        rows = _bench_service(client, model, sizes, concurrency, requests, warmup)
    return rows


def _bench_service(client, model, sizes, concurrency, requests, warmup) -> list[dict]:
    rows = []
    for size in sizes:
        data = upload(size)
        for _ in range(warmup):
            client.predict(model, data)
        for level in concurrency:
            result = load(client, model, data, level, requests=max(1, requests // level) * level)
            times = result.pop("times")
            rows.append({"mode": "service", "size": size, "concurrency": level, **result,
                         **(percentiles(times) if times else {})})  # fmt: skip
    return rows


def load(client, model: str, data: bytes, concurrency: int, *, requests: int | None = None,
         seconds: float | None = None) -> dict:  # fmt: skip
    """Upload ``data`` from ``concurrency`` threads: ``requests`` in all, or for ``seconds``.

    Returns ``times`` (seconds per answered request), ``requests``, ``errors``,
    ``first_error`` and ``images_per_s``.
    """
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = None if seconds is None else time.monotonic() + seconds
    per_thread = None if requests is None else max(1, requests // concurrency)

    def worker():
        done = 0
        while (per_thread is None or done < per_thread) and (
            deadline is None or time.monotonic() < deadline
        ):
            done += 1
            t0 = time.perf_counter()
            try:
                client.predict(model, data)
            except Exception as exc:  # noqa: BLE001  (counted and reported)
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                times.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return {"times": times, "requests": len(times), "errors": len(errors),
            "first_error": errors[:1], "images_per_s": len(times) / elapsed}  # fmt: skip
