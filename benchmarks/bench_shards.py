"""Sharded datasets and the Ray runner vs today's in-memory ``featurize``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_shards.py \
        [--images 1000] [--size 64] [--shard-size 100] [--turns 3]

``--images`` random 8-bit PNGs of ``--size``² (written once to a temporary folder),
block_first taps, mean + Gram, on the CPU. Each call featurizes every file from disk:

* in-memory: ``featurize(folder, n_threads=2)`` (one ONNX Runtime session, 2 threads);
* sharded local: ``featurize_dataset(folder, OUT, shard_size=..., overwrite=True)``, the same
  work plus a Parquet shard and a manifest rewrite per shard (bar: >= 0.95x in-memory);
* Ray: ``featurize_ray`` on a local ``ray.init(num_cpus=2)``, 2 actors x 1 thread (each call
  starts its actors and loads the bundle: the per-job start-up is part of it);
* resume when everything is done: ``featurize_dataset`` on the finished folder (checksums of
  every shard verified, nothing computed).

Calls take turns (order swapped every other turn, an idle pause before each); ratios are
paired: the median over turns of the two back-to-back times. The local pair runs before Ray
starts (its raylet and GCS would otherwise share the 2 cores); Ray is then paired with the
in-memory run again. Start-up costs: ``ray.init`` and a Ray job of 2 images.

Writes benchmarks/results/shards.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine,
    markdown_table,
    medians,
    one_call_turns,
    paired_ratio,
    write_results,
)

PARAMS = {"taps": "block_first", "pool": ("mean", "gram"), "device": "cpu"}


def write_images(folder: Path, n_images: int, size: int) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
            folder / f"{i:05d}.png"
        )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()

    import ray

    from microtex.distributed import featurize_ray
    from microtex.features.api import featurize, featurize_dataset
    from microtex.io import read_features

    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    folder = write_images(work / "images", args.images, args.size)
    local_out, ray_out = work / "local", work / "ray"
    n = args.images

    def in_memory():
        return featurize(folder, n_threads=2, **PARAMS)

    def sharded():
        featurize_dataset(folder, local_out, shard_size=args.shard_size, overwrite=True,
                          n_threads=2, **PARAMS)  # fmt: skip

    reference = in_memory()  # warm: the export is cached, the session open
    sharded()
    local = one_call_turns({"in_memory": in_memory, "sharded_local": sharded}, args.turns,
                           settle=0.5)
    resume = []
    for _ in range(5):
        start = time.perf_counter()
        featurize_dataset(folder, local_out, shard_size=args.shard_size, n_threads=2, **PARAMS)
        resume.append(time.perf_counter() - start)

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - start

    def on_ray():
        featurize_ray(folder, ray_out, shard_size=args.shard_size, overwrite=True,
                      num_workers=2, threads_per_worker=1, **PARAMS)  # fmt: skip

    two = work / "two"
    two.mkdir()
    for name in sorted(folder.iterdir())[:2]:
        (two / name.name).write_bytes(name.read_bytes())
    job_startup = []
    for _ in range(2):
        start = time.perf_counter()
        featurize_ray(two, work / "two-out", overwrite=True, num_workers=2,
                      threads_per_worker=1, **PARAMS)  # fmt: skip
        job_startup.append(time.perf_counter() - start)
    on_ray()  # warm: worker processes imported microtex and onnxruntime
    with_ray = one_call_turns({"in_memory": in_memory, "ray": on_ray}, args.turns, settle=0.5)
    ray.shutdown()

    same_local = read_features(local_out)
    same_ray = read_features(ray_out)
    identical = {
        "sharded_local": same_local.ids == reference.ids
        and bool(np.array_equal(same_local.features, reference.features)),
        "ray": same_ray.ids == reference.ids
        and bool(np.array_equal(same_ray.features, reference.features)),
    }
    rate = {k: n / v for k, v in medians({**local, "ray": with_ray["ray"]}).items()}
    ratios = {
        "sharded_local_vs_in_memory": 1 / paired_ratio(local, "sharded_local", "in_memory"),
        "ray_vs_in_memory": 1 / paired_ratio(with_ray, "ray", "in_memory"),
    }
    payload = {
        "machine": machine(),
        "setup": {"images": n, "size": args.size, "shard_size": args.shard_size,
                  "turns": args.turns, **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in PARAMS.items()},
                  "in_memory_threads": 2, "ray": "2 actors x 1 thread, ray.init(num_cpus=2)"},
        "images_per_s": rate,
        "seconds": {"local_turns": local, "ray_turns": with_ray, "resume_all_done": resume,
                    "ray_init": ray_init_s, "ray_job_of_2_images": job_startup},
        "ratios": ratios,
        "bar": {"sharded_local_vs_in_memory": 0.95},
        "met": ratios["sharded_local_vs_in_memory"] >= 0.95,
        "identical_rows": identical,
    }  # fmt: skip
    path = write_results("shards", payload)
    print(markdown_table(
        ["candidate", "images/s", "vs in-memory (paired)"],
        [["in-memory featurize, 2 threads", f"{rate['in_memory']:.1f}", "1"],
         [f"sharded local, shards of {args.shard_size}", f"{rate['sharded_local']:.1f}",
          f"{ratios['sharded_local_vs_in_memory']:.3f} (bar >= 0.95)"],
         ["Ray, 2 actors x 1 thread", f"{rate['ray']:.1f}", f"{ratios['ray_vs_in_memory']:.3f}"]],
    ))  # fmt: skip
    print(f"ray.init {ray_init_s:.2f} s; a Ray job of 2 images {min(job_startup):.2f} s; "
          f"resume when all {n} are done {statistics.median(resume) * 1000:.1f} ms; "
          f"identical rows {identical} -> {path}")
    return 0 if payload["met"] and all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
