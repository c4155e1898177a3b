"""Pairwise distances: microtex's C++ kernel vs SciPy's pdist, scikit-learn and NumPy GEMMs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_pairwise.py [--vectors 1000] [--features 350000]

The full distance matrix of ``--vectors`` feature vectors of ``--features``
float32 features (uniform in [0, 1), like nonnegative Gram features; 350,000 is
the size of a VGG19 Gram vector), then of the same vectors in float64. Every
candidate returns the (n, n) float64 Euclidean distances:

* ``microtex``: ``analysis.distances.pairwise_distances`` (and on one thread);
* ``scipy pdist``: ``squareform(pdist(X))`` (differences, float64);
* ``sklearn``: ``sklearn.metrics.pairwise_distances(X)`` (float32 input: its
  float64 upcast in chunks; float64 input: one ``X @ X.T``);
* ``numpy float64 GEMM``: ``Z = X.astype(float64)``, ``Z @ Z.T`` and the norms
  from its diagonal; ``numpy float32 GEMM``: the same in float32 (OpenBLAS's
  sgemm sums all features in float32: reported with its error, no bar).

The fast candidates take paired turns (``_common.time_turns``); SciPy and
scikit-learn's float32 path take a minute or two per call, so they are timed in
``--slow-turns`` turns of one call each, each turn next to one microtex call
(the ratio with them is paired over those turns). Errors are the largest
relative error of a distance over the first ``--check-rows`` vectors against
``pdist`` of the float64 values. Writes benchmarks/results/pairwise.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine,
    markdown_table,
    one_call_turns,
    paired_ratio,
    time_turns,
    write_results,
)

BAR = 3.0  # speedup of microtex over the faster of SciPy and scikit-learn (float32 input)


def feature_vectors(n: int, n_features: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, n_features), np.float32)
    for i in range(0, n, 64):  # no float64 temporary of the whole table
        out[i:i + 64] = rng.random((min(64, n - i), n_features), dtype=np.float32)
    return out


def gemm_distances(x: np.ndarray, dtype) -> np.ndarray:
    z = np.asarray(x, dtype)
    gram = z @ z.T
    norms = np.diag(gram).astype(np.float64)
    d = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(d, 0, out=d)
    return np.sqrt(d, out=d)


def candidates(x: np.ndarray) -> tuple[dict, dict]:
    """(fast, slow) candidates on ``x``: name -> callable giving (n, n) distances."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.metrics import pairwise_distances as sklearn_distances

    from microtex.analysis.distances import pairwise_distances

    fast = {
        "microtex": lambda: pairwise_distances(x),
        "microtex 1 thread": lambda: pairwise_distances(x, n_threads=1),
        "numpy float64 GEMM": lambda: gemm_distances(x, np.float64),
    }
    slow = {"scipy pdist": lambda: squareform(pdist(x))}
    if x.dtype == np.float32:
        fast["numpy float32 GEMM"] = lambda: gemm_distances(x, np.float32)
        slow["sklearn"] = lambda: sklearn_distances(x)
    else:
        fast["sklearn"] = lambda: sklearn_distances(x)
    return fast, slow


def accuracy(x: np.ndarray, rows: int) -> dict:
    """Largest relative error of each candidate's distances on the first ``rows`` vectors."""
    from scipy.spatial.distance import pdist, squareform

    sub = np.ascontiguousarray(x[:rows])
    exact = squareform(pdist(sub.astype(np.float64)))
    off = ~np.eye(rows, dtype=bool)
    fast, slow = candidates(sub)
    return {k: float(np.max(np.abs(f()[off] - exact[off]) / exact[off]))
            for k, f in {**fast, **slow}.items()}  # fmt: skip


def measure(x: np.ndarray, args) -> dict:
    fast, slow = candidates(x)
    turns = time_turns(fast, repeats=args.repeats, warmup=1, block=1, settle=0.5)
    slow_turns = one_call_turns({"microtex": fast["microtex"], **slow}, args.slow_turns)
    seconds = {k: statistics.median(t for turn in v for t in turn) for k, v in turns.items()}
    seconds.update({k: statistics.median(t[0] for t in v) for k, v in slow_turns.items()
                    if k != "microtex"})  # fmt: skip
    speedup = {k: paired_ratio(turns, k, "microtex") for k in fast if k != "microtex"}
    speedup.update({k: paired_ratio(slow_turns, k, "microtex") for k in slow})
    rivals = ["scipy pdist", "sklearn"]
    best = min(rivals, key=lambda k: seconds[k])
    return {
        "seconds": seconds,
        "microtex_seconds_next_to_slow_rivals": [t[0] for t in slow_turns["microtex"]],
        "turns": {"fast": args.repeats, "slow": args.slow_turns},
        "speedup_paired": speedup,  # rival time / microtex time
        "speedup_of_medians": {k: seconds[k] / seconds["microtex"] for k in seconds},
        "best_of_scipy_sklearn": best,
        "speedup_vs_best_of_scipy_sklearn": speedup[best],
        "max_relative_error": accuracy(x, args.check_rows),
    }


def avx512_tile() -> bool:
    """Whether the kernel runs its AVX-512 tile here (the CPU has it and it is not turned off)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    off = os.environ.get("MICROTEX_NO_AVX512", "")
    return " avx512f" in flags and off in ("", "0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1000)
    parser.add_argument("--features", type=int, default=350_000)
    parser.add_argument("--repeats", type=int, default=3, help="turns of the fast candidates")
    parser.add_argument("--slow-turns", type=int, default=2, help="turns of SciPy and sklearn")
    parser.add_argument("--check-rows", type=int, default=64)
    args = parser.parse_args(argv)

    x32 = feature_vectors(args.vectors, args.features)
    results = {
        "benchmark": "pairwise", "machine": machine(), "settings": vars(args),
        "avx512_tile": avx512_tile(), "bar": BAR, "inputs": {},
        "note": "every candidate timed on the full matrix (no subset scaled by pair count); "
                "speedups are rival time / microtex time, paired per turn",
    }  # fmt: skip
    for name, make in (("float32", lambda: x32), ("float64", lambda: x32.astype(np.float64))):
        x = make()
        entry = measure(x, args)
        if name == "float32":
            entry["met"] = entry["speedup_vs_best_of_scipy_sklearn"] >= BAR
        results["inputs"][name] = entry
        rows = [[k, f"{s:.2f}", f"{entry['speedup_paired'].get(k, 1.0):.2f}",
                 f"{entry['max_relative_error'][k]:.1e}"]
                for k, s in sorted(entry["seconds"].items(), key=lambda kv: kv[1])]  # fmt: skip
        print(f"\n{name}: {args.vectors} vectors x {args.features} features")
        print(markdown_table(["candidate", "s", "time / microtex (paired)", "max rel. error"],
                             rows), flush=True)  # fmt: skip
        del x
    path = write_results("pairwise", results)
    met = results["inputs"]["float32"]["met"]
    print(f"\nfloat32 speedup over {results['inputs']['float32']['best_of_scipy_sklearn']}: "
          f"{results['inputs']['float32']['speedup_vs_best_of_scipy_sklearn']:.1f}x "
          f"(bar {BAR}x, {'met' if met else 'MISSED'})\nwrote {path}")  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
