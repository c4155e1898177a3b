"""argparse value types: they turn text into what the library's checks accept."""

from __future__ import annotations

import argparse


def image_size(text: str):
    """``N`` (short side) or ``HxW``."""
    try:
        if "x" in text.lower():
            height, width = text.lower().split("x")
            return (int(height), int(width))
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be N (short side) or HxW, got {text!r}"
        ) from None


def crop_bottom(text: str):
    """A number of rows >= 0, or ``auto``."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"crop-bottom must be a number of rows >= 0 or 'auto', got {text!r}"
        )
    return value


def positive(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
