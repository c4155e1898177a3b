"""What block_last's deepest Gram feature costs in int8 speed on 224² images, and what moves it.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_int8_frontier.py

block_last's relu5_4 Gram on 224² images is the one feature over issue 21's
2 % bar (``bench_int8.py``). This measures the trade between its error and
int8's speed, on the same 20 calibrating and 30 held-out real 224² crops as
``bench_int8.py``:

* **int8 with whole blocks kept in float32** (``keep_float``, direct
  convolutions, as ``float_layers`` gives them): none, block 1, 2 or 5 (what
  the speed bars leave room for), blocks 1 and 5, 4–5 and 3–5; per tap, for
  mean and Gram pooling, the median relative error against the float32
  direct graph, and the speed at batch 1 and 8 in alternating turns, paired
  against the float32 Winograd graph microtex runs;
* **int8 weights with uint16 activations** (no equalization), for what the
  weights alone cost (ONNX Runtime runs such a graph in float32);
* **float32's own sensitivity**: the float32 graph on the held-out crops with
  ±½ gray level of uniform noise (what re-quantizing an image to 8 bits
  changes) and with Gaussian noise of one gray level, against the same graph
  on the crops as they are.

Bars (issue 21): ≥ 1.6× at batch 1 and ≥ 2× at batch 8; 2 % median error.
Writes benchmarks/results/int8_frontier.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import BARS, SIDE, TOLERANCE, OrtRunner, cpu_flags, images, paired_speeds  # noqa: E402

from _common import machine, markdown_table, write_results  # noqa: E402

FEATURE = "relu5_4/gram"
#: The same int8 weights with activations in uint16 (no equalization: nothing to even out),
#: to measure what the weights alone cost; ONNX Runtime has no 16-bit convolution on the CPU
#: and runs this graph in float32.
WEIGHTS_ONLY = "int8 weights, uint16 activations"
#: Blocks left in float32. Direct float32 convolutions cost about 1.3x the Winograd baseline's
#: time per multiply-add and int8 about 0.35x, so at batch 8 the 2x bar leaves room for about
#: 15 % of the multiply-adds in float32: block 1 (10 %), block 2 (14 %) or block 5 (9.5 %)
#: alone; the rest show the trade beyond that.
KEPT = {"all int8": (), "block 1 float32": (1,), "block 2 float32": (2,),
        "block 5 float32": (5,), "blocks 1 and 5 float32": (1, 5), "blocks 4-5 float32": (4, 5),
        "blocks 3-5 float32": (3, 4, 5), WEIGHTS_ONLY: ()}  # fmt: skip
LAYERS = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4}  # convolutions per block of VGG19


@contextlib.contextmanager
def _uint16_activations():
    """quantize_static_int8 with ONNX Runtime's quantizer told to use uint16 activations."""
    import onnxruntime.quantization as quantization

    original = quantization.quantize_static

    def patched(*args, **kwargs):
        kwargs["activation_type"] = quantization.QuantType.QUInt16
        kwargs["extra_options"] = {**(kwargs.get("extra_options") or {}), "UseQDQContribOps": True}
        return original(*args, **kwargs)

    quantization.quantize_static = patched
    try:
        yield
    finally:
        quantization.quantize_static = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    import onnx

    from microtex.backbones import BackboneConfig, cached_onnx
    from microtex.engine.quantize import quantize_static_int8
    from microtex.engine.session import default_threads
    from microtex.features.int8 import pooled_features, relative_errors

    threads = default_threads()
    pool, source = images()
    calibration, held = pool[:20], pool[20:]
    config = BackboneConfig(taps="block_last")
    direct = cached_onnx(config, conv_algorithm="direct")
    winograd = cached_onnx(config, conv_algorithm="winograd")
    reference = pooled_features(OrtRunner(direct, threads), held, config.taps)

    def errors(run, inputs=held):
        found = relative_errors(pooled_features(run, inputs, config.taps), reference)
        return {k: round(v["median"], 5) for k, v in found.items() if not k.endswith("/max")}

    rng = np.random.default_rng(0)
    float32 = OrtRunner(direct, threads)
    dithered = [np.clip(x + rng.uniform(-0.5, 0.5, x.shape) / 255, 0, 1).astype(np.float32)
                for x in held]  # fmt: skip
    noisy = [np.clip(x + rng.normal(0, 1, x.shape) / 255, 0, 1).astype(np.float32) for x in held]
    sensitivity = {"float32, ±½ gray level uniform noise": errors(float32, dithered),
                   "float32, Gaussian noise of 1 gray level": errors(float32, noisy)}  # fmt: skip

    tmp = Path(tempfile.mkdtemp(prefix="bench-int8-frontier-"))
    graphs, accuracy, seconds = {}, {}, {}
    for name, blocks in KEPT.items():
        kept = [f"conv{b}_{i}" for b in blocks for i in range(1, LAYERS[b] + 1)]
        kept += ["input_conv"] if 1 in blocks else []  # the image then enters in float32
        started = time.perf_counter()
        if name == WEIGHTS_ONLY:
            with _uint16_activations():
                model, _ = quantize_static_int8(str(direct), calibration, equalize_percentile=None)
        else:
            model, _ = quantize_static_int8(str(direct), calibration, keep_float=kept)
        seconds[name] = round(time.perf_counter() - started, 1)
        graphs[name] = tmp / f"{len(graphs)}.onnx"
        onnx.save(model, graphs[name])
        accuracy[name] = errors(OrtRunner(graphs[name], threads))
        print(f"{name}: {FEATURE} {100 * accuracy[name][FEATURE]:.2f} %", flush=True)

    speed = {}
    base = "float32 Winograd"
    for batch in (1, 8):
        x = np.random.default_rng(batch).random((batch, 1, SIDE, SIDE), dtype=np.float32)
        runners = {base: OrtRunner(winograd, threads),
                   **{name: OrtRunner(path, threads) for name, path in graphs.items()}}
        speed[f"batch {batch}"] = paired_speeds(runners, x, base, args.repeats)

    rows, frontier = [], []
    for name in KEPT:
        b1, b8 = (speed[f"batch {b}"][name]["speedup"] for b in (1, 8))
        worst = max(accuracy[name], key=accuracy[name].get)
        meets = {"speed": b1 >= BARS["batch 1"] and b8 >= BARS["batch 8"],
                 "accuracy": accuracy[name][worst] <= TOLERANCE}  # fmt: skip
        frontier.append({"variant": name, "speedup_batch_1": b1, "speedup_batch_8": b8,
                         FEATURE: accuracy[name][FEATURE], "worst": worst, **meets})  # fmt: skip
        rows.append([name, f"{b1:.2f}× / {b8:.2f}×", f"{100 * accuracy[name][FEATURE]:.2f} %",
                     f"{worst} {100 * accuracy[name][worst]:.2f} %", meets["speed"],
                     meets["accuracy"]])  # fmt: skip
    for name, found in sensitivity.items():
        rows.append([name, "–", f"{100 * found[FEATURE]:.2f} %", "–", "–", "–"])
    print(markdown_table(["block_last, 224²", "× float32 (b1 / b8)", FEATURE, "worst feature",
                          "speed bars", "2 % bar"], rows))  # fmt: skip
    both = [f["variant"] for f in frontier if f["speed"] and f["accuracy"]]
    payload = {"machine": machine(), "cpu_flags": cpu_flags(), "threads": threads,
               "images": f"{source}: 20 calibrate, {len(held)} measure", "frontier": frontier,
               "accuracy": accuracy, "float32_sensitivity": sensitivity, "speed": speed,
               "calibration_seconds": seconds, "meets_both_bars": both}  # fmt: skip
    path = write_results("int8_frontier", payload)
    print(f"\nwrote {path}; variants meeting both bars: {both or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
