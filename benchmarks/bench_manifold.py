"""The whole ``microtex manifold grid`` default run, timed, with what it recovered.

Not a race against an alternative (no other package runs this experiment): it records how
long the default grid takes on this machine, split into making the marbles, the Gram and
power-spectrum distances and the MDS runs, and the stress / R² rows it produced, so the
README can state both. Writes ``results/manifold.json``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_manifold.py
"""

from __future__ import annotations

import sys
import tempfile
import time

from microtex.analysis import manifold_experiments as me

from _common import machine, write_results


def main() -> int:
    stamps = []

    def progress(message: str) -> None:
        stamps.append((time.perf_counter(), message))
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result = me.run_grid(folder, progress=progress)
    total = time.perf_counter() - start
    phases: dict = {}
    ends = [t for t, _ in stamps[1:]] + [start + total]
    for (t, message), end in zip(stamps, ends):
        phase = ("marbles" if "making" in message else "distances" if "distances" in message
                 else "mds")
        phases[phase] = phases.get(phase, 0.0) + (end - t)
    payload = {
        "machine": machine(),
        "command": "microtex manifold grid -o OUTDIR (defaults)",
        "parameters": result["parameters"],
        "seconds": {"total": total, **phases},
        "results": result["results"],
    }
    path = write_results("manifold", payload)
    split = ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
    print(f"manifold grid default: {total:.0f} s ({split}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
