"""Gatys texture synthesis: seconds to a 256² texture on this machine, and a picture pair.

    python benchmarks/bench_synthesis.py [--threads 2] [--steps 200] [--pair-size 512]

The source is a real micrograph, an AMPIS spheroidite SEM image
(``../shared/data/ampis/spheroidite/images/train_800C-85H-Q-1_sizeRC_481_645.png``;
its info band is already cut off, ``crop_bottom="auto"`` finds none), resized to
a short side of 256 px (area averaging) and centre-cropped to 256². Then:

* **timing**: ``synthesize(source, 256, steps=--steps, seed=0, n_threads=--threads)``
  after one small warm-up synthesis (which builds the backbone and PyTorch's
  thread pool, so the time is the synthesis): wall seconds, L-BFGS iterations
  and evaluations, initial and final Gram loss per layer. No bar: the issue asks
  for the number;
* **picture pair**: the same source synthesized at ``--pair-size``² coarse to fine
  (``scales=2``: half size first), seed 0, saved next to the source as
  ``results/synthesis_pair.jpg`` (source left, synthesized texture right, JPEG
  quality 85), with its losses and seconds in the JSON (``--no-pair`` times only
  and keeps the pair record of the file it replaces, marked ``from_an_earlier_run``).

Writes ``benchmarks/results/synthesis.json``. Run it alone: two OpenMP threads
on two cores crawl whenever another process holds one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, markdown_table, write_results  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = DATA / "ampis" / "spheroidite" / "images" / "train_800C-85H-Q-1_sizeRC_481_645.png"


def load_source(path: Path, side: int) -> np.ndarray:
    """The micrograph, short side resized to ``side``, centre-cropped to ``side``²."""
    from microtex.io.read import read_image

    image = read_image(path, crop_bottom="auto", size=side)
    top = (image.shape[0] - side) // 2
    left = (image.shape[1] - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side])


def summary(result) -> dict:
    record = result.to_dict()
    record.pop("settings")
    for scale in record["scales"]:
        scale["loss_history"] = [round(v, 6) for v in scale["loss_history"]]
    return record


def save_pair(source: np.ndarray, synthesized: np.ndarray, path: Path, gap: int = 8) -> int:
    """Source (top left) and synthesized image side by side on white; the file's size in bytes."""
    from PIL import Image

    height = max(source.shape[0], synthesized.shape[0])
    canvas = np.ones((height, source.shape[1] + gap + synthesized.shape[1]), np.float32)
    canvas[: source.shape[0], : source.shape[1]] = source
    canvas[: synthesized.shape[0], source.shape[1] + gap:] = synthesized
    pixels = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=85, optimize=True)
    return path.stat().st_size


def main(argv=None) -> int:
    from microtex.interpret.synthesis import DEFAULT_STEPS, synthesize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--size", type=int, default=256, help="side of source and timed output")
    parser.add_argument("--pair-size", type=int, default=512, help="side of the pair's texture")
    parser.add_argument("--no-pair", action="store_true",
                        help="time only; keep the pair record of the last run's JSON")
    args = parser.parse_args(argv)

    source = load_source(args.source, args.size)
    began = time.perf_counter()
    synthesize(source[:32, :32], steps=2, n_threads=args.threads)  # warm-up
    warm_up = time.perf_counter() - began

    load_before = os.getloadavg()[0]
    timed = synthesize(source, args.size, steps=args.steps, seed=0, n_threads=args.threads)
    results = {
        "benchmark": "synthesis", "machine": machine(), "settings": vars(args) | {
            "source": str(args.source), "source_shape": list(source.shape)},
        "warm_up_seconds": warm_up,
        # another process on one of the two cores slows two OpenMP threads manyfold
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "timed": {"what": f"{args.size}² from seed noise, one scale, {args.steps} steps",
                  **summary(timed)},
        "synthesis_settings": timed.settings,
    }  # fmt: skip
    rows = [[tap, f"{timed.initial_loss.per_layer[tap]:.4g}", f"{value:.4g}",
             f"{timed.initial_loss.per_layer[tap] / value:.0f}×"]
            for tap, value in timed.final_loss.per_layer.items()]  # fmt: skip
    print(f"{args.size}² synthesis on {args.threads} threads: {timed.seconds:.1f} s, "
          f"{timed.iterations} iterations, {timed.evaluations} evaluations "
          f"({timed.seconds / timed.evaluations:.3f} s each); total loss "
          f"{timed.initial_loss.total:.4g} -> {timed.final_loss.total:.4g} "
          f"({timed.initial_loss.total / timed.final_loss.total:.0f}× lower)")
    print(markdown_table(["tap", "initial", "final", "drop"], rows), flush=True)

    if not args.no_pair:
        pair = synthesize(source, args.pair_size, steps=args.steps, scales=2, seed=0,
                          n_threads=args.threads)  # fmt: skip
        path = RESULTS / "synthesis_pair.jpg"
        RESULTS.mkdir(parents=True, exist_ok=True)
        size = save_pair(source, pair.image, path)
        results["pair"] = {"what": f"{args.pair_size}² coarse to fine (scales=2)",
                           "file": path.name, "jpeg_bytes": size, **summary(pair)}  # fmt: skip
        print(f"pair: {args.pair_size}² in {pair.seconds:.1f} s "
              f"({pair.iterations} iterations), loss {pair.initial_loss.total:.4g} -> "
              f"{pair.final_loss.total:.4g}; {path} ({size / 1024:.0f} KB)")
    else:
        previous = RESULTS / "synthesis.json"
        if previous.exists() and "pair" in (old := json.loads(previous.read_text())):
            results["pair"] = old["pair"] | {"from_an_earlier_run": True}
    print(f"wrote {write_results('synthesis', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
