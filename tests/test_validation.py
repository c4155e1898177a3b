"""The shared option checks: one message format for every option of the package."""

from __future__ import annotations

import re

import numpy as np
import pytest

from microtex._validation import (
    check_bool,
    check_choice,
    check_choices,
    check_crop_bottom,
    check_int,
    check_positive_int,
    check_real,
    check_size,
    renamed,
)


def test_integers():
    assert check_positive_int("n", np.int64(3)) == 3 and type(check_positive_int("n", 3)) is int
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=f"n must be a positive integer, got {bad!r}"):
            check_positive_int("n", bad)
    assert check_positive_int("n", None, allow_none=True) is None
    with pytest.raises(ValueError, match="n must be a positive integer or None, got 0"):
        check_positive_int("n", 0, allow_none=True)
    assert check_int("size", 8, 8) == 8
    with pytest.raises(ValueError, match="size must be an integer >= 8, got 7"):
        check_int("size", 7, 8)


def test_reals():
    assert check_real("alpha", np.float32(0.5), minimum=0) == 0.5
    assert type(check_real("alpha", np.int64(2))) is float and check_real("t", 1, maximum=1) == 1
    assert check_real("alpha", 0, minimum=0) == 0.0  # inclusive by default
    with pytest.raises(ValueError, match="sigma must be a finite number > 0, got 0"):
        check_real("sigma", 0, minimum=0, inclusive=False)
    for bad in ("0.5", True, np.bool_(False), None, float("nan"), float("inf"), [1.0], 1j):
        message = f"x must be a finite number, got {re.escape(repr(bad))}"
        with pytest.raises(ValueError, match=message):
            check_real("x", bad)
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\], got 1.5"):
        check_real("threshold", 1.5, minimum=0, maximum=1)
    with pytest.raises(ValueError, match=r"f must be a number in \(0, 1\), got 1"):
        check_real("f", 1, minimum=0, maximum=1, inclusive=False)
    with pytest.raises(ValueError, match="t must be a finite number <= 2, got 3"):
        check_real("t", 3, maximum=2)
    assert check_real("pixel_size_um", None, minimum=0, allow_none=True) is None
    with pytest.raises(ValueError, match="pixel_size_um must be a length > 0 in µm or None, got"):
        check_real(
            "pixel_size_um",
            -1,
            minimum=0,
            inclusive=False,
            allow_none=True,
            what="a length > 0 in µm",
        )


def test_bools():
    assert check_bool("periodic", np.bool_(True)) is True and check_bool("p", False) is False
    for bad in ("no", 1, 0, None, np.array([True])):
        with pytest.raises(ValueError, match="periodic must be True or False, got"):
            check_bool("periodic", bad)


def test_choices():
    assert check_choice("device", "cpu", ("auto", "cpu")) == "cpu"
    with pytest.raises(ValueError, match=r"unknown device \['cpu'\]; choose one of"):
        check_choice("device", ["cpu"], ("auto", "cpu"))
    assert check_choices("pool", ["gram", " mean"], ("mean", "gram")) == ("gram", "mean")
    with pytest.raises(ValueError, match=r"unknown pool 'vlad'; choose from \[.mean.\] \(fitted\)"):
        check_choices("pool", "mean,vlad", ("mean",), hints={"vlad": "(fitted)"})
    with pytest.raises(ValueError, match="repeated pool"):
        check_choices("pool", "mean,mean", ("mean",))
    with pytest.raises(ValueError, match="pool must name at least one of"):
        check_choices("pool", " , ", ("mean",))


def test_preprocessing_options():
    assert check_crop_bottom("auto") == "auto" and check_crop_bottom(np.int32(4)) == 4
    assert check_size([3, 4]) == (3, 4) and check_size(5) == 5 and check_size(None) is None
    for bad in (-1, "top", 1.5):
        with pytest.raises(ValueError, match="crop_bottom"):
            check_crop_bottom(bad)
    for bad in (0, (3, 0), (1, 2, 3), "5"):
        with pytest.raises(ValueError, match="size must be"):
            check_size(bad)


def test_renamed_option():
    assert renamed("pooling", "block_pooling", "avg", "max", unset="max") == (
        "avg",
        "pooling is deprecated and will be removed in 0.3; use block_pooling",
    )
    assert renamed("--pooling", "--block-pooling", "avg", "avg", unset=None)[0] == "avg"
    with pytest.raises(ValueError, match="pooling='avg' and block_pooling='max' both given"):
        renamed("pooling", "block_pooling", "avg", "max", unset=None)
