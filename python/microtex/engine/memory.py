"""How much memory this machine gives the process, and whether an error means it ran out.

The featurizer sizes its network inputs from :func:`memory_budget` (see
``max_pixels`` in :func:`microtex.features.plan.make_plan`) and reports a batch
that still runs out (:func:`is_out_of_memory`) per file instead of ending a job.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUDGET_FRACTION", "format_bytes", "is_out_of_memory", "machine_memory", "memory_budget"]

#: Share of the machine's memory one network input may plan to use; the rest is
#: for decoding ahead, the growing feature table, the OS and other processes.
BUDGET_FRACTION = 0.5

# Phrases ONNX Runtime (CPU and CUDA allocators) and NumPy use when an allocation fails.
_OOM_PHRASES = (
    "failed to allocate", "bad_alloc", "out of memory", "unable to allocate", "alloc_failed"
)


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 or v1), if it has one."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "none"
            return int(text)
    return None


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or its cgroup's limit if lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        total = 8 << 30
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def memory_budget() -> int:
    """Bytes one network input may plan to use: `BUDGET_FRACTION` of `machine_memory`."""
    return int(machine_memory() * BUDGET_FRACTION)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (MemoryError, or ONNX Runtime's own)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, Exception) and any(phrase in text for phrase in _OOM_PHRASES)


def format_bytes(n: float) -> str:
    """``n`` bytes in readable units.

    Examples
    --------
    >>> format_bytes(3 * 2**30), format_bytes(512 * 2**20), format_bytes(2048)
    ('3.0 GB', '512 MB', '2 KB')
    """
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if unit == "GB" else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"
