"""The shared option checks: one message format for every option of the package."""

from __future__ import annotations

import numpy as np
import pytest

from microtex._validation import (
    check_choice,
    check_choices,
    check_crop_bottom,
    check_int,
    check_positive_int,
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
