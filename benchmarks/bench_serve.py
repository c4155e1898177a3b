"""The service against the same bundle in-process: latency overhead, batching gain, a soak.

    python benchmarks/bench_serve.py [--soak-s 120]

A texture-featurizer bundle (VGG19 block_first taps, mean pooling: 1472 features) is served
by ``microtex serve`` in its own process on 127.0.0.1; this process is the client.

* latency at concurrency 1, 224² PNG uploads: service p50/p99 vs ``transform`` in-process
  (bar: p50 overhead <= 5 ms);
* throughput at concurrency 8: ``--max-batch-size 8`` vs ``1`` (bar: >= 1.3x images/s);
* a soak at steady load (concurrency 2): no error, resident memory growth <= 10 %.

Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, write_results  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``microtex serve`` in a child process."""

    def __init__(self, bundle: Path, *extra: str):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "microtex.cli", "serve", f"tex={bundle}", "--port",
                   str(self.port), *extra]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        from microtex.serve.client import Client

        self.client = Client(self.url)
        deadline = time.monotonic() + 120
        while not self._ready():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the service did not start: {self.process.stderr.read()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return self.client.ready()
        except OSError:
            return False

    def rss(self) -> int:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(text.split("VmRSS:")[1].split()[0]) * 1024

    def stop(self) -> None:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def _load(client, data: bytes, concurrency: int, seconds: float) -> dict:
    """Requests from ``concurrency`` threads for ``seconds``: latencies and errors."""
    from microtex.serve.bench import load

    result = load(client, "tex", data, concurrency, seconds=seconds)
    result["latencies"] = result.pop("times")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-s", type=float, default=120.0)
    parser.add_argument("--latency-s", type=float, default=20.0)
    parser.add_argument("--throughput-s", type=float, default=20.0)
    parser.add_argument("--max-delay-ms", default="2", help="the service's batching delay")
    args = parser.parse_args(argv)
    os.environ.setdefault("MICROTEX_NUM_THREADS", str(len(os.sched_getaffinity(0))))

    from microtex import TextureFeaturizer
    from microtex.io.decode import decode_bytes
    from microtex.serve.bench import percentiles, upload

    data = upload(224)
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "tex"
        featurizer = TextureFeaturizer(pool="mean").fit(np.zeros((1, 32, 32), np.float32))
        featurizer.save(bundle)
        # in-process: decode + transform, as the service does per request
        for _ in range(5):
            featurizer.transform(decode_bytes(data)[0][None])
        local = []
        stop = time.monotonic() + args.latency_s
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            featurizer.transform(decode_bytes(data)[0][None])
            local.append(time.perf_counter() - t0)
        in_process = percentiles(local)

        service = Service(bundle, "--max-batch-size", "8", "--max-delay-ms", args.max_delay_ms)
        try:
            _load(service.client, data, 1, 3)  # warm
            latency = _load(service.client, data, 1, args.latency_s)
            batched = _load(service.client, data, 8, args.throughput_s)
            rss_before = service.rss()
            soak = _load(service.client, data, 2, args.soak_s)
            rss_after = service.rss()
        finally:
            service.stop()
        unbatched_service = Service(bundle, "--max-batch-size", "1")
        try:
            _load(unbatched_service.client, data, 8, 3)
            unbatched = _load(unbatched_service.client, data, 8, args.throughput_s)
        finally:
            unbatched_service.stop()

    served = percentiles(latency["latencies"])
    overhead = served["p50_ms"] - in_process["p50_ms"]
    gain = batched["images_per_s"] / unbatched["images_per_s"]
    growth = rss_after / rss_before - 1
    rows = [
        ["latency p50 / p99, concurrency 1, 224²", f"{served['p50_ms']:.1f} / "
         f"{served['p99_ms']:.1f} ms (service)", f"{in_process['p50_ms']:.1f} / "
         f"{in_process['p99_ms']:.1f} ms (in-process)", f"+{overhead:.1f} ms p50", "<= 5 ms",
         "yes" if overhead <= 5 else "no"],
        ["throughput, concurrency 8", f"{batched['images_per_s']:.1f} images/s (batch <= 8)",
         f"{unbatched['images_per_s']:.1f} images/s (batch 1)", f"{gain:.2f}x", ">= 1.3x",
         "yes" if gain >= 1.3 else "no"],
        [f"soak {args.soak_s:.0f} s, concurrency 2", f"{soak['requests']} requests, "
         f"{soak['errors']} errors", f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB",
         f"{100 * growth:+.1f} %", "0 errors, <= 10 %",
         "yes" if soak["errors"] == 0 and growth <= 0.10 else "no"],
    ]  # fmt: skip
    print(markdown_table(["measurement", "microtex serve", "reference", "difference", "bar",
                          "meets"], rows))  # fmt: skip
    for result in (latency, batched, soak, unbatched):
        result.pop("latencies")
    path = write_results("serve", {
        "machine": machine(), "in_process": in_process, "service": served,
        "overhead_p50_ms": overhead, "batched": batched, "unbatched": unbatched,
        "batching_gain": gain, "soak": soak, "rss_before": rss_before, "rss_after": rss_after,
        "rss_growth": growth, "settings": vars(args),
    })  # fmt: skip
    print(f"\nwrote {path}")
    return 0 if overhead <= 5 and gain >= 1.3 and soak["errors"] == 0 and growth <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
