"""Helpers shared by the test modules: NumPy (float64) references, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter that imports what this one does."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True,
                          env=env, timeout=timeout)


def reference_gram(acts, normalization: str = "spatial", layout: str = "triu") -> np.ndarray:
    """Gram features of activations (n, c, h, w) as DESIGN.md §4 defines them."""
    n, c = np.shape(acts)[:2]
    F = np.asarray(acts, dtype=np.float64).reshape(n, c, -1)
    M = F.shape[2]
    G = F @ F.transpose(0, 2, 1)
    G = G / {"sum": 1.0, "spatial": M, "lubbers": 2.0 * c * M}[normalization]
    if layout == "full":
        return G.reshape(n, c * c)
    rows, cols = np.triu_indices(c)
    return G[:, rows, cols] * np.where(rows == cols, 1.0, np.sqrt(2.0))
