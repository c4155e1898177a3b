"""The one place for option checks: each raises ``ValueError`` naming the option and the value.

Callers declare what they accept next to where they use it and call these; no
module spells its own "positive integer" or "one of" test.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "MAX_IMAGE_SIDE",
    "ON_ERROR",
    "CropBottom",
    "Size",
    "check_bool",
    "check_choice",
    "check_choices",
    "check_crop_bottom",
    "check_int",
    "check_layer_weights",
    "check_non_negative_int",
    "check_on_error",
    "check_positive_int",
    "check_real",
    "check_size",
    "is_int",
    "is_real",
    "renamed",
]

#: The release that drops the old names of renamed options.
RENAMED_UNTIL = "0.3"

#: Largest side a resize may ask for: beyond any micrograph, and far beyond what fits.
MAX_IMAGE_SIDE = 65_535

CropBottom = None | int | Literal["auto"]
Size = None | int | tuple[int, int]

#: What a batch job does with a file it cannot read.
ON_ERROR: tuple[str, ...] = ("skip", "raise")


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for booleans."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """True for Python and NumPy real numbers (integers included), False for booleans.

    Strings are not numbers here, even when ``float()`` would read them.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_positive_int(
    name: str, value: Any, *, allow_none: bool = False, what: str = "a positive integer"
) -> int | None:
    """``value`` as an int >= 1 (or None when ``allow_none``).

    Examples
    --------
    >>> check_positive_int("batch_size", 8)
    8
    >>> check_positive_int("batch_size", 0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive integer, got 0
    """
    if value is None and allow_none:
        return None
    if not (is_int(value) and value >= 1):
        suffix = " or None" if allow_none else ""
        raise ValueError(f"{name} must be {what}{suffix}, got {value!r}")
    return int(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``.

    Examples
    --------
    >>> check_int("size", 4, minimum=8)
    Traceback (most recent call last):
    ...
    ValueError: size must be an integer >= 8, got 4
    """
    if not (is_int(value) and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    """``value`` as an int >= 0."""
    return check_int(name, value, 0)


def _bounds(minimum: float | None, maximum: float | None, inclusive: bool) -> str:
    """``"a finite number > 0"``, ``"a number in [0, 1]"``: what :func:`check_real` accepts."""
    if minimum is not None and maximum is not None:
        left, right = ("[", "]") if inclusive else ("(", ")")
        return f"a number in {left}{minimum:g}, {maximum:g}{right}"
    if minimum is not None:
        return f"a finite number {'>=' if inclusive else '>'} {minimum:g}"
    if maximum is not None:
        return f"a finite number {'<=' if inclusive else '<'} {maximum:g}"
    return "a finite number"


def check_real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    inclusive: bool = True,
    allow_none: bool = False,
    what: str | None = None,
) -> float | None:
    """``value`` as a finite float within the bounds (or None when ``allow_none``).

    Python and NumPy integers and floats are numbers; booleans and strings are
    not. ``minimum`` and ``maximum`` are allowed values with ``inclusive=True``
    (the default), excluded with ``inclusive=False``. ``what`` replaces the
    generated description of what is accepted (e.g. ``"a length > 0 in µm"``).

    Examples
    --------
    >>> check_real("alpha", 0, minimum=0)
    0.0
    >>> check_real("pixel_size_um", None, minimum=0, inclusive=False, allow_none=True)
    >>> check_real("denoise", -1, minimum=0, inclusive=False)
    Traceback (most recent call last):
    ...
    ValueError: denoise must be a finite number > 0, got -1
    >>> check_real("threshold", float("nan"), minimum=0, maximum=1)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be a number in [0, 1], got nan
    """
    if value is None and allow_none:
        return None
    number = float(value) if is_real(value) else math.nan
    valid = math.isfinite(number)
    if valid and minimum is not None:
        valid = number >= minimum if inclusive else number > minimum
    if valid and maximum is not None:
        valid = number <= maximum if inclusive else number < maximum
    if not valid:
        suffix = " or None" if allow_none else ""
        description = what or _bounds(minimum, maximum, inclusive)
        raise ValueError(f"{name} must be {description}{suffix}, got {value!r}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool: only ``True`` and ``False`` (NumPy's too), not truthy values.

    Examples
    --------
    >>> check_bool("periodic", "no")
    Traceback (most recent call last):
    ...
    ValueError: periodic must be True or False, got 'no'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``.

    Examples
    --------
    >>> check_choice("device", "tpu", ("auto", "cpu", "cuda"))
    Traceback (most recent call last):
    ...
    ValueError: unknown device 'tpu'; choose one of ['auto', 'cpu', 'cuda']
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value


def check_choices(
    name: str, value: str | Iterable[str], choices: Sequence[str], *, hints: dict | None = None
) -> tuple[str, ...]:
    """A non-empty tuple of distinct ``choices`` from a comma-separated string or a sequence.

    ``hints`` maps a refused value to a sentence appended to the error (e.g.
    why ``"vlad"`` cannot be pooled inside a graph).

    Examples
    --------
    >>> check_choices("pool", "mean, gram", ("mean", "max", "gram"))
    ('mean', 'gram')
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    parsed = tuple(item.strip() if isinstance(item, str) else item for item in items)
    parsed = tuple(item for item in parsed if item != "")
    if not parsed:
        raise ValueError(f"{name} must name at least one of {list(choices)}, got {value!r}")
    for item in parsed:
        if item not in choices:
            hint = (hints or {}).get(item, "")
            raise ValueError(
                f"unknown {name} {item!r}; choose from {list(choices)}{' ' + hint if hint else ''}"
            )
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"repeated {name} in {parsed!r}")
    return parsed


def renamed(old: str, new: str, old_value: Any, new_value: Any, unset: Any) -> tuple[Any, str]:
    """The value of an option renamed from ``old`` to ``new``, and the deprecation note to give.

    The old name's value is used when it was given and the new name was left
    at ``unset``; both given with different values is a ValueError. Callers
    say the note their own way (a FutureWarning, a line on stderr).

    Examples
    --------
    >>> renamed("pooling", "block_pooling", "avg", "max", unset="max")[0]
    'avg'
    """
    if new_value != unset and new_value != old_value:
        raise ValueError(
            f"{old}={old_value!r} and {new}={new_value!r} both given; {old} is the deprecated "
            f"name of {new}: give {new} only"
        )
    return old_value, f"{old} is deprecated and will be removed in {RENAMED_UNTIL}; use {new}"


def check_crop_bottom(crop_bottom: Any) -> CropBottom:
    """None, ``"auto"`` or a number of rows >= 0."""
    if crop_bottom is None or (isinstance(crop_bottom, str) and crop_bottom == "auto"):
        return crop_bottom
    if is_int(crop_bottom) and crop_bottom >= 0:
        return int(crop_bottom)
    raise ValueError(
        f"crop_bottom must be None, 'auto' or a non-negative number of rows, got {crop_bottom!r}"
    )


def check_size(size: Any, int_means: str = "short side") -> Size:
    """None, a short side or a ``(height, width)`` pair, each from 1 to `MAX_IMAGE_SIDE`.

    ``int_means`` is what an int stands for, in the message (a square side, say).
    """
    if size is None:
        return None
    if is_int(size) and size > 0:
        sides = (int(size),)
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(is_int(n) and n > 0 for n in size)
    ):
        sides = (int(size[0]), int(size[1]))
    else:
        raise ValueError(
            f"size must be None, a positive int ({int_means}) or a (height, width) pair of "
            f"positive ints, got {size!r}"
        )
    if max(sides) > MAX_IMAGE_SIDE:
        raise ValueError(f"size {size!r} is too large: sides are at most {MAX_IMAGE_SIDE} pixels")
    return sides[0] if len(sides) == 1 else sides


def check_on_error(on_error: Any) -> str:
    """``"skip"`` or ``"raise"``."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    return on_error


def check_layer_weights(layer_weights, taps: Sequence[str]) -> np.ndarray:
    """One nonnegative weight per tap, not all zero: from None (all 1), a list, or {tap: w}.

    A mapping leaves the taps it does not name at 0; a list gives the weights
    in the order of ``taps``.

    Examples
    --------
    >>> check_layer_weights({"relu3_1": 2.0}, ("relu1_1", "relu3_1")).tolist()
    [0.0, 2.0]
    """
    if layer_weights is None:
        return np.ones(len(taps))
    if isinstance(layer_weights, Mapping):
        unknown = sorted(set(layer_weights) - set(taps))
        if unknown:
            raise ValueError(f"layer_weights names unknown layer(s) {unknown}; the layers are "
                             f"{list(taps)}")  # fmt: skip
        values = [layer_weights.get(tap, 0.0) for tap in taps]
    else:
        values = list(layer_weights)
        if len(values) != len(taps):
            raise ValueError(f"layer_weights has {len(values)} values for {len(taps)} layers "
                             f"{list(taps)}")  # fmt: skip
    weights = np.array([check_real(f"layer weight of {tap}", w, minimum=0.0)
                        for tap, w in zip(taps, values)])  # fmt: skip
    if not weights.any():
        raise ValueError(f"layer_weights are all zero: {values}")
    return weights
