"""Stripe textures of a known period for the interpret tests."""

from __future__ import annotations

import numpy as np


def stripes(period: float, n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """``n`` sinusoidal stripe images of one period, random orientation and phase, light noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    images = []
    for _ in range(n):
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
        image = 0.5 + 0.4 * wave + rng.normal(0, 0.03, (size, size))
        images.append(np.clip(image, 0, 1).astype(np.float32))
    return images
