"""Images the io tests write: random textures and small valid files to corrupt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RNG_SEED = 20240611


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def texture(shape=(64, 80), seed=RNG_SEED) -> np.ndarray:
    """Random mid-gray texture in [0.15, 0.85], float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.15, 0.85, size=shape).astype(np.float32)


def valid_bytes(tmp_path: Path, suffix: str) -> bytes:
    """A valid 64x64 random 8-bit image file's bytes (``.png`` or ``.jpg``)."""
    rng = np.random.default_rng(0)
    path = save(rng.integers(0, 256, (64, 64), dtype=np.uint8), tmp_path / f"valid{suffix}")
    return path.read_bytes()
