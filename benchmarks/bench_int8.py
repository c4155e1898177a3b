"""int8 on the CPU: speed and accuracy against float32 and OpenVINO, on the same graph.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_int8.py

For each tap preset (``block_first``, ``block_last``) of the default VGG19:

* the float32 graph is exported twice, direct (the reference and what gets
  quantized) and Winograd (what microtex runs on the CPU today);
* ``engine.quantize.quantize_static_int8`` calibrates its int8 graph on 20
  images, and on the same: last version's (channels fully equalized), a
  naive one (no equalization, nearest rounding, no bias
  correction), for block_last one with block 5 kept in float32, and one
  calibrated on the built-in textures instead;
* **accuracy** on 30 held-out images: per tap and pooling (mean, max, Gram), the
  relative error ‖f − f₃₂‖ / ‖f₃₂‖ of each image's feature vector, median and
  max over the images, for each int8 graph and for OpenVINO's bf16 (the
  direct float graph with ``INFERENCE_PRECISION_HINT=bf16``) and int8 (our
  QDQ graph) runs;
* **speed** at 224², batch 1 and 8, in alternating turns on all cores
  (``_common.time_turns``), ratios paired against the float32 Winograd graph;
* **accuracy on whole micrographs**: the same for the micrographs at their
  size (645×484 to 1280×896; 20 calibrate, the rest measure), as a featurizer
  with ``image_size=None`` reads them, where the deepest taps average 6–23×
  more positions than at 224².

Images: AMPIS spheroidite crops and MetalDAM crops from ``../shared/data``
when it exists (real micrographs calibrate and test int8 honestly), else
Perlin textures. Bars (issue 21): int8 ≥ 2× float32 Winograd at batch 8 and
≥ 1.6× at batch 1 on a VNNI CPU, ahead of OpenVINO bf16 and int8; Gram and
mean within 2 % median relative error at every tap.
Writes benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, medians, paired_ratio, time_turns, write_results  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIDE = 224
BARS = {"batch 8": 2.0, "batch 1": 1.6}
TOLERANCE = 0.02


def whole_micrographs() -> list[np.ndarray]:
    """Every AMPIS spheroidite and the first 30 MetalDAM micrographs (info band cropped),
    shuffled with seed 0; [] without the data."""
    from microtex import read_image

    paths = sorted((DATA / "ampis" / "spheroidite" / "images").glob("*.png"))
    paths += sorted((DATA / "metaldam" / "images").glob("*.jpg"))[:30]
    whole = [read_image(p, crop_bottom="auto" if p.suffix == ".jpg" else None) for p in paths]
    order = np.random.default_rng(0).permutation(len(whole))
    return [whole[i].astype(np.float32) for i in order]


def images(n: int = 50) -> tuple[list[np.ndarray], str]:
    from microtex import read_image, synth

    crops = []
    spheroidite = sorted((DATA / "ampis" / "spheroidite" / "images").glob("*.png"))
    metaldam = sorted((DATA / "metaldam" / "images").glob("*.jpg"))[:10]
    for path in spheroidite:
        image = read_image(path)
        crops += [image[r : r + SIDE, c : c + SIDE] for r, c in ((0, 0), (200, 300), (250, 400))]
    for path in metaldam:
        image = read_image(path, crop_bottom="auto")
        crops += [image[r : r + SIDE, c : c + SIDE] for r, c in ((100, 100), (400, 300))]
    if len(crops) >= n:
        order = np.random.default_rng(0).permutation(len(crops))
        return [crops[i].astype(np.float32) for i in order[:n]], "spheroidite + MetalDAM crops"
    textures = [synth.perlin_texture(SIDE, k=k, theta=0.4 * i, amplitude=2.0, seed=i)
                for i, k in enumerate(np.linspace(4, 24, n))]  # fmt: skip
    return [t.astype(np.float32) for t in textures], "Perlin textures"


def cpu_flags() -> list[str]:
    """The vector and int8 flags of the CPU (what int8 speed depends on)."""
    from microtex.features.int8 import cpu_flags as all_flags

    return sorted(f for f in all_flags() or [] if "vnni" in f or f.startswith(("avx512", "amx")))


class OrtRunner:
    def __init__(self, path, threads):
        import onnxruntime as ort

        from microtex.engine.session import DISABLED_OPTIMIZERS

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(  # as microtex's sessions (block 5 kept float)
            str(path), options, providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch):
        return dict(zip(self.names, self.session.run(None, {"image": batch})))


class OpenVinoRunner:
    def __init__(self, path, threads, precision, shape=None):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        if shape is not None:
            model.reshape({"image": list(shape)})
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": precision}  # fmt: skip
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.names = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, batch):
        result = self.request.infer({"image": batch})
        return {name: result[output] for name, output in zip(self.names, self.compiled.outputs)}


def paired_speeds(runners: dict, batch: np.ndarray, base: str, repeats: int) -> dict:
    """Each runner on ``batch`` in alternating turns: images/s and the speed-up paired
    against ``base``'s turns."""
    funcs = {name: (lambda r=r: r(batch)) for name, r in runners.items()}
    turns = time_turns(funcs, repeats=repeats, warmup=2, block=1, settle=0.3)
    return {
        name: {"images_per_s": round(len(batch) / t, 2),
               "speedup": round(paired_ratio(turns, base, name), 3)}
        for name, t in medians(turns).items()
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--taps", default="block_first,block_last")
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    import onnx

    from microtex.backbones import BackboneConfig, cached_onnx
    from microtex.engine.quantize import quantize_static_int8
    from microtex.engine.session import default_threads
    from microtex.features.int8 import calibration_textures, pooled_features, relative_errors

    threads = default_threads()
    pool, source = images()
    calibration, held = pool[:20], pool[20:]
    try:
        import openvino

        openvino_version = openvino.__version__
    except ImportError:
        openvino_version = None
    payload = {"machine": machine(), "cpu_flags": cpu_flags(), "threads": threads,
               "images": source, "openvino": openvino_version, "presets": {}}  # fmt: skip
    failed = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    for preset in args.taps.split(","):
        config = BackboneConfig(taps=preset)
        direct = cached_onnx(config, conv_algorithm="direct")
        winograd = cached_onnx(config, conv_algorithm="winograd")
        block5 = [f"conv5_{i}" for i in range(1, 5)] if preset == "block_last" else None
        variants = {
            "int8 (microtex)": {},
            "int8 (last version: channels fully equalized)": {"equalize_strength": 1.0},
            "int8 (naive)": {"weight_rounding": "nearest", "equalize_percentile": None,
                             "bias_correction": False},
        }  # fmt: skip
        if block5:
            variants["int8, block 5 in float32"] = {"keep_float": block5}
        sources = {name: calibration for name in variants}
        variants["int8, built-in textures"] = {}
        sources["int8, built-in textures"] = calibration_textures(len(calibration))
        graphs, records = {}, {}
        for name, options in variants.items():
            started = time.perf_counter()
            model, records[name] = quantize_static_int8(str(direct), sources[name], **options)
            records[name]["seconds"] = round(time.perf_counter() - started, 1)
            graphs[name] = tmp / f"{preset}-{len(graphs)}.onnx"
            onnx.save(model, graphs[name])
        ours = graphs["int8 (microtex)"]

        reference = pooled_features(OrtRunner(direct, threads), held, config.taps)

        def errors(run, reference=reference, taps=config.taps, held=held):
            return relative_errors(pooled_features(run, held, taps), reference)

        accuracy = {name: errors(OrtRunner(path, threads)) for name, path in graphs.items()}
        if openvino_version:
            accuracy["OpenVINO bf16"] = errors(OpenVinoRunner(direct, threads, "bf16"))
            accuracy["OpenVINO int8 (our QDQ graph)"] = errors(OpenVinoRunner(ours, threads, "f32"))
        full = whole_micrographs()
        full_accuracy, full_records = {}, {}
        if len(full) > 25:
            full_reference = pooled_features(OrtRunner(direct, threads), full[20:], config.taps)
            for name in ["int8 (microtex)"] + (["int8, block 5 in float32"] if block5 else []):
                started = time.perf_counter()
                model, record = quantize_static_int8(str(direct), full[:20], **variants[name])
                full_records[name] = {**record, "seconds": round(time.perf_counter() - started, 1)}
                path = tmp / f"{preset}-full-{len(full_accuracy)}.onnx"
                onnx.save(model, path)
                full_accuracy[name] = errors(OrtRunner(path, threads), full_reference,
                                             held=full[20:])  # fmt: skip
        speed = {}
        for batch in (1, 8):
            x = np.random.default_rng(batch).random((batch, 1, SIDE, SIDE), dtype=np.float32)
            runners = {"float32 Winograd (ORT)": OrtRunner(winograd, threads),
                       "int8 (microtex, ORT)": OrtRunner(ours, threads)}  # fmt: skip
            if block5:
                runners["int8, block 5 float32 (ORT)"] = OrtRunner(
                    graphs["int8, block 5 in float32"], threads)
            if openvino_version:
                runners["OpenVINO bf16"] = OpenVinoRunner(direct, threads, "bf16", x.shape)
                runners["OpenVINO int8"] = OpenVinoRunner(ours, threads, "f32", x.shape)
            speed[f"batch {batch}"] = paired_speeds(runners, x, "float32 Winograd (ORT)",
                                                    args.repeats)  # fmt: skip
        payload["presets"][preset] = {
            "quantization": records, "accuracy": accuracy, "speed": speed,
            "accuracy_whole": {"images": f"{len(full) - 20} held-out whole micrographs, "
                                         "20 calibrate", "quantization": full_records,
                             **full_accuracy},
        }  # fmt: skip
        ours_acc = accuracy["int8 (microtex)"]
        barred = [k for k in ours_acc if not k.endswith("/max")]  # the bar is mean and Gram
        worst = max(barred, key=lambda k: ours_acc[k]["median"])
        print(f"\n{preset}: worst median error {worst} {ours_acc[worst]['median']:.4f}")
        rows = [[k, round(v["median"], 5), round(v["max"], 5)] for k, v in ours_acc.items()]
        print(markdown_table(["feature", "median rel. error", "max"], rows))
        whole = {f"{k}, whole micrographs": v for k, v in full_accuracy.items()}
        for name, errs in {**accuracy, **whole}.items():
            worst_k = max((k for k in errs if not k.endswith("/max")),
                          key=lambda k: errs[k]["median"])  # fmt: skip
            print(f"  {name}: worst {worst_k} {errs[worst_k]['median']:.4f}")
        for label, entries in speed.items():
            rows = [[k, v["images_per_s"], v["speedup"]] for k, v in entries.items()]
            headers = ["candidate", "images/s", "× float32 Winograd"]
            print(f"{label}:\n" + markdown_table(headers, rows))
            mine = entries["int8 (microtex, ORT)"]["speedup"]
            if mine < BARS[label]:
                failed.append(f"{preset} {label}: {mine}x < {BARS[label]}x")
            for rival in ("OpenVINO bf16", "OpenVINO int8"):
                if rival in entries and entries[rival]["speedup"] >= mine:
                    failed.append(f"{preset} {label}: {rival} is as fast")
        if ours_acc[worst]["median"] > TOLERANCE:
            failed.append(f"{preset}: {worst} median error {ours_acc[worst]['median']:.4f}")
    payload["bars_missed"] = failed
    path = write_results("int8", payload)
    print(f"\nwrote {path}; bars missed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
