"""Shared helpers for the benchmark scripts: timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from microtex._files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    import numpy as np

    info = {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        from microtex import _kernels

        info["microtex_simd"] = _kernels.simd_level()
    except ImportError:
        pass
    # NumPy's BLAS kernel: OPENBLAS_CORETYPE (set on some machines for old OpenBLAS
    # builds) can hold a current OpenBLAS to a slower kernel than the CPU supports
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    info["numpy_blas"] = [f"{i.get('internal_api')} {i.get('architecture')}" for i in blas]
    info["openblas_coretype_env"] = os.environ.get("OPENBLAS_CORETYPE")
    return info


def time_turns(funcs: dict, repeats: int = 15, warmup: int = 2, min_time: float = 0.0,
               block: int = 3, settle: float = 0.15, block_time: float = 0.0,
               min_turns: int = 1) -> dict:
    """Wall times (seconds) of each callable, measured in alternating turns: one list per turn.

    Candidates take turns, ``block`` timed calls each, until every one has
    ``repeats`` timings (and ``min_time`` has passed), so background load is
    spread evenly over them. Before each turn the machine is left idle for
    ``settle`` seconds and one untimed call is made: multi-threaded libraries
    (OpenBLAS, OpenMP, ONNX Runtime) keep their worker threads spinning for a
    while after a call returns, and without the pause those spinning threads
    would steal cores from whichever candidate runs next.

    ``block_time`` (seconds) lengthens a turn to at least that long for quick
    calls (the same rule for every candidate, from its warm-up time): after
    the idle pause a virtual machine's CPUs take a few milliseconds to come
    back to speed, which would otherwise dominate sub-millisecond calls.

    ``min_turns`` makes every candidate take at least that many turns: with
    long blocks a single turn may already hold ``repeats`` calls, and one
    10 ms window on a shared machine is a sample of its noise, not of the code.

    Turn ``i`` of every candidate ran back to back, so :func:`paired_ratio`
    can compare candidates turn by turn. The order of the candidates is
    reversed every other turn, so a drift within a turn (a core still
    coming back to speed, say) does not always favour the one that goes first.
    """
    blocks = {}
    for k, f in funcs.items():
        per_call = float("inf")
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            f()
            per_call = min(per_call, time.perf_counter() - t0)
        # the quickest warm-up call: a first call that starts a thread pool
        # or wakes sleeping workers would otherwise shrink this candidate's blocks
        blocks[k] = max(block, int(block_time / max(per_call, 1e-9)) if block_time > 0 else block)
    turns = {k: [] for k in funcs}
    start = time.perf_counter()
    while (min(sum(map(len, v)) for v in turns.values()) < repeats
           or len(turns[next(iter(turns))]) < min_turns
           or time.perf_counter() - start < min_time):
        order = list(funcs.items())
        if len(turns[order[0][0]]) % 2:
            order.reverse()
        for k, f in order:
            time.sleep(settle)
            f()
            times = []
            for _ in range(blocks[k]):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            turns[k].append(times)
    return turns


def one_call_turns(funcs: dict, turns: int, settle: float = 1.0) -> dict:
    """One timed call of each candidate per turn, in alternating order (``time_turns``'s layout).

    For calls of seconds to minutes: a warm-up call or an untimed call per turn (what
    ``time_turns`` adds for quick calls) would double the run for nothing.
    """
    out = {k: [] for k in funcs}
    for turn in range(turns):
        order = list(funcs.items())
        if turn % 2:
            order.reverse()
        for k, f in order:
            time.sleep(settle)
            t0 = time.perf_counter()
            f()
            out[k].append([time.perf_counter() - t0])
    return out


def medians(turns: dict) -> dict:
    """Median time per call of each candidate over all its turns."""
    return {k: statistics.median(t for turn in v for t in turn) for k, v in turns.items()}


def time_interleaved(funcs: dict, **kwargs) -> dict:
    """Median wall time (seconds) per call of each callable (:func:`time_turns`)."""
    return medians(time_turns(funcs, **kwargs))


def paired_ratio(turns: dict, num: str, den: str) -> float:
    """Median over turns of (``num``'s median time in the turn) / (``den``'s).

    The two ran back to back in every turn, so a slow stretch of a shared
    machine (other tenants, clock changes), which lasts longer than a turn,
    scales both and cancels in the turn's ratio; a ratio of the two overall
    medians keeps it whenever it falls unevenly on the candidates.
    """
    return statistics.median(
        statistics.median(a) / statistics.median(b) for a, b in zip(turns[num], turns[den])
    )


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2) + "\n")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
