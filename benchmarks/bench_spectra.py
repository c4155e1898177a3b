"""Two-point statistics: microtex's C++ kernel vs the NumPy FFT formulation vs PyMKS 0.4.1.

    python benchmarks/bench_spectra.py [--images 1000] [--size 256] [--repeats 3]

Two-phase one-hot images ``(n, size, size, 2)`` float32, PyMKS's default
correlations ``(0, 0), (0, 1)``, in two settings: periodic with the largest
cutoff (PyMKS's default) and non-periodic with cutoff 32. Each candidate gets
the same array; times are paired turns (``_common.time_turns``); memory is
the peak resident memory above the start of the call (``VmHWM`` after
clearing it), outputs included. PyMKS is skipped when not installed.
Writes benchmarks/results/spectra.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, paired_ratio, time_turns, write_results  # noqa: E402


def two_phase_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Thresholded smoothed noise (volume fraction ~0.5), one-hot ``(n, size, size, 2)``."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)
    kernel = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) * (2 * np.pi * 4.0) ** 2 / 2)
    out = np.empty((n, size, size, 2), np.float32)
    for i in range(n):
        field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * kernel).real
        out[i, ..., 0] = field > 0
    out[..., 1] = 1 - out[..., 0]
    return out


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_in_child(candidate: str, n: int, size: int, kw: dict, queue) -> None:
    # imports and thread pools are not the call's memory: made by a tiny call first
    _candidates(two_phase_images(1, 16), {**kw, "cutoff": 3})[candidate]()
    data = two_phase_images(n, size)
    func = _candidates(data, kw)[candidate]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
    except OSError:
        queue.put(-1)
        return
    before = _status("VmRSS")
    result = func()
    queue.put(_status("VmHWM") - before)
    del result


def peak_bytes(candidate: str, n: int, size: int, kw: dict) -> int:
    """Peak resident memory of one call above the memory before it, in a fresh process.

    A fresh process, because memory an earlier call freed stays resident in
    the allocator's arenas and would hide the next call's peak.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_in_child, args=(candidate, n, size, kw, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


PAIRS = [(0, 0), (0, 1)]


def _candidates(data, kw: dict) -> dict:
    from microtex.features.spectra import two_point, two_point_reference

    funcs = {
        "microtex": lambda: two_point(data, PAIRS, **kw),
        "microtex 1 thread": lambda: two_point(data, PAIRS, n_threads=1, **kw),
        "numpy": lambda: two_point_reference(data, PAIRS, **kw),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pymks import TwoPointCorrelation as PyMKS
    except ImportError:
        return funcs

    def pymks():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(PyMKS(correlations=PAIRS, **kw).transform(data))

    funcs["pymks"] = pymks
    return funcs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from microtex.features.spectra import max_cutoff, two_point, two_point_reference

    data = two_phase_images(args.images, args.size)
    pairs = PAIRS
    settings = {
        "periodic, cutoff max": {"periodic_boundary": True,
                                 "cutoff": max_cutoff(args.size, args.size)},
        "non-periodic, cutoff 32": {"periodic_boundary": False, "cutoff": 32},
    }  # fmt: skip
    results = {"machine": machine(), "images": args.images, "size": args.size,
               "correlations": pairs, "settings": {}}  # fmt: skip
    rows = []
    for name, kw in settings.items():
        funcs = _candidates(data, kw)
        has_pymks = "pymks" in funcs
        check = two_point_reference(data[:8], pairs, **kw)
        error = float(np.abs(two_point(data[:8], pairs, **kw) - check).max())
        if has_pymks:
            error_pymks = float(np.abs(funcs["pymks"]()[:8] - check).max())
        turns = time_turns(funcs, repeats=args.repeats, warmup=1, block=1, settle=0.5)
        times = {k: statistics.median(t for turn in v for t in turn) for k, v in turns.items()}
        memory = {k: peak_bytes(k, args.images, args.size, kw) for k in funcs}
        rivals = [k for k in ("numpy", "pymks") if k in funcs]
        fastest = min(rivals, key=lambda k: times[k])
        entry = {
            "seconds": times,
            "images_per_s": {k: args.images / t for k, t in times.items()},
            "peak_memory_mb": {k: m / 2**20 for k, m in memory.items()},
            "speedup_vs_numpy": paired_ratio(turns, "numpy", "microtex"),
            "speedup_vs_fastest_rival": paired_ratio(turns, fastest, "microtex"),
            "fastest_rival": fastest,
            "max_abs_difference_vs_numpy": error,
            "bar": 1.5,
        }
        if has_pymks:
            entry["speedup_vs_pymks"] = paired_ratio(turns, "pymks", "microtex")
            entry["max_abs_difference_pymks_vs_numpy"] = error_pymks
        entry["met"] = entry["speedup_vs_fastest_rival"] >= 1.5
        results["settings"][name] = entry
        for k in funcs:
            rows.append([name, k, f"{times[k]:.2f}", f"{args.images / times[k]:.0f}",
                         f"{memory[k] / 2**20:.0f}",
                         f"{paired_ratio(turns, k, 'microtex'):.2f}"])  # fmt: skip
        print(markdown_table(["setting", "candidate", "s", "images/s", "peak MB",
                              "time / microtex"], rows[-len(funcs):]), flush=True)  # fmt: skip
    # one micrograph-sized image, one phase: what a user measuring one SEM image runs
    image = two_phase_images(1, 1024)[0, :768, :, 0]
    single = {}
    for name, kw in {"one 768x1024 image, periodic, cutoff max": {"periodic_boundary": True},
                     "one 768x1024 image, non-periodic, cutoff 64": {"periodic_boundary": False,
                                                                     "cutoff": 64}}.items():
        funcs = {"microtex": lambda kw=kw: two_point(image, **kw),
                 "numpy": lambda kw=kw: two_point_reference(image, **kw)}  # fmt: skip
        turns = time_turns(funcs, repeats=15, warmup=2, block=3, settle=0.2)
        times = {k: statistics.median(t for turn in v for t in turn) for k, v in turns.items()}
        single[name] = {"seconds": times,
                        "speedup_vs_numpy": paired_ratio(turns, "numpy", "microtex")}  # fmt: skip
        rows.append([name, "microtex / numpy", f"{times['microtex'] * 1e3:.1f} / "
                     f"{times['numpy'] * 1e3:.1f} ms", "", "",
                     f"{single[name]['speedup_vs_numpy']:.2f}"])  # fmt: skip
        print(markdown_table(["setting", "candidate", "time", "", "", "numpy / microtex"],
                             rows[-1:]), flush=True)  # fmt: skip
    results["single_image"] = single
    path = write_results("spectra", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
