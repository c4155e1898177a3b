"""argparse value types: text to the values the library's checks accept, with their messages."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from microtex._validation import (
    MAX_IMAGE_SIDE,
    check_crop_bottom,
    check_positive_int,
    check_real,
    check_size,
)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def _size_text(text: str) -> int | tuple[int, int]:
    """``N`` or ``HxW`` as an int or a pair; ValueError when it is neither."""
    if "x" in text.lower():
        height, width = text.lower().split("x")
        return int(height), int(width)
    return int(text)


def image_size(text: str):
    """``N`` (short side) or ``HxW``."""
    try:
        size = _size_text(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be N (short side) or HxW, got {text!r}"
        ) from None
    try:
        return check_size(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def square_or_pair(text: str):
    """``N`` (an N×N square) or ``HxW``: the size of an image to make."""
    try:
        size = _size_text(text)
        check_size(size)  # the same ranges as an image size
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be N (an N x N square) or HxW, each side from 1 to {MAX_IMAGE_SIDE}, "
            f"got {text!r}"
        ) from None
    return size


def crop_bottom(text: str):
    """A number of rows >= 0, or ``auto``."""
    try:
        return check_crop_bottom(_number(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def max_pixels(text: str):
    """A number of pixels >= 1, or ``auto``."""
    if text == "auto":
        return text
    try:
        return check_positive_int("max pixels", _number(text), what="a positive integer or 'auto'")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    """An integer >= 1."""
    try:
        return check_positive_int("value", _number(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def real(name: str = "value", *, minimum: float | None = None, maximum: float | None = None,
         inclusive: bool = True, words: Sequence[str] = (),
         what: str | None = None) -> Callable[[str], float | str]:  # fmt: skip
    """An argparse type: a finite number within bounds, or one of ``words`` as written.

    The bounds and the message are :func:`microtex._validation.check_real`'s; ``words`` are
    accepted names such as ``"otsu"``.
    """

    def parse(text: str) -> float | str:
        if text in words:
            return text
        try:
            value = float(text)
        except ValueError:
            value = text  # refused below, with the text in the message
        try:
            return check_real(name, value, minimum=minimum, maximum=maximum, inclusive=inclusive,
                              what=what)  # fmt: skip
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


#: A finite number > 0 (a length, a sigma).
positive_real = real(minimum=0.0, inclusive=False)


def real_list(name: str = "value", *, minimum: float | None = None) -> Callable[[str], list]:
    """An argparse type: comma-separated finite numbers, each ``>= minimum``."""
    one = real(name, minimum=minimum)

    def parse(text: str) -> list:
        values = [one(part) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{name} needs at least one number, got {text!r}")
        return values

    return parse


def int_range(text: str) -> list:
    """Integers >= 1: ``1-10``, ``2,4,8`` or a mix (``1-4,8``)."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            low_value = check_positive_int("value", _number(low))
            high_value = check_positive_int("value", _number(high)) if high else low_value
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from None
        if high_value < low_value:
            raise argparse.ArgumentTypeError(f"range {part!r} runs backwards")
        values.extend(range(low_value, high_value + 1))
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers such as 1-10 or 2,4,8; got {text!r}")
    return sorted(set(values))
