"""Segmentation: Otsu's threshold (against a brute-force reference), phase indicators, one-hot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from microtex.features.segment import one_hot, otsu_threshold, segment

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def brute_force_otsu_split(values: np.ndarray) -> float:
    """The largest value of the dark class of Otsu's split, over the distinct values."""
    flat = np.sort(values.ravel().astype(np.float64))
    levels = np.unique(flat)
    best, best_level = -1.0, None
    for level in levels[:-1]:
        dark, bright = flat[flat <= level], flat[flat > level]
        w0, w1 = dark.size / flat.size, bright.size / flat.size
        variance = w0 * w1 * (dark.mean() - bright.mean()) ** 2
        if variance > best * (1 + 1e-12):
            best, best_level = variance, level
    return best_level


# --------------------------------------------------------------------------- Otsu
def test_otsu_bimodal_image_splits_halfway_between_the_modes():
    image = np.full((10, 10), 0.2, np.float32)
    image[:, 6:] = 0.7
    t = otsu_threshold(image)
    assert t == pytest.approx(0.45, abs=1e-7)
    assert (image > t).sum() == 40


def test_otsu_noisy_bimodal_image_separates_the_two_populations():
    rng = np.random.default_rng(0)
    truth = rng.random((64, 64)) < 0.3
    image = np.where(truth, 0.75, 0.25) + rng.normal(0, 0.05, truth.shape)
    image = np.clip(image, 0, 1).astype(np.float32)
    t = otsu_threshold(image)
    assert 0.4 < t < 0.6
    assert np.array_equal(image > t, truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_on_8_bit_levels_is_the_exact_split(seed):
    rng = np.random.default_rng(seed)
    levels = np.concatenate([rng.normal(70, 20, 300), rng.normal(170, 30, 200)])
    image = (np.clip(np.round(levels), 0, 255).astype(np.uint8)).reshape(20, 25)
    t = otsu_threshold(image)
    last_dark = brute_force_otsu_split(image.astype(np.float64) / 255)
    values = image.astype(np.float32) / 255
    assert np.array_equal(values > t, values > np.float32(last_dark))
    # t lies strictly between the classes, so float64 comparisons agree too
    assert np.array_equal(image / 255.0 > t, values > t)


def test_otsu_threshold_of_two_adjacent_float32_values_still_splits_them():
    high = np.float32(0.5)  # the first value of the second of 2 bins
    low = np.nextafter(high, np.float32(0))
    image = np.array([[low, high]], np.float32)
    t = otsu_threshold(image, bins=2)
    assert (image > t).tolist() == [[False, True]]
    assert (image.astype(np.float64) > t).tolist() == [[False, True]]


def test_otsu_says_when_all_values_fall_in_one_bin():
    with pytest.raises(ValueError, match=r"\(0.1 to 0.2\) falls in one of the 2 bins"):
        otsu_threshold(np.array([[0.1, 0.2]]), bins=2)


def test_otsu_refuses_a_constant_image_naming_its_value():
    with pytest.raises(ValueError, match=r"constant image \(every pixel is 0.5\)"):
        otsu_threshold(np.full((4, 4), 0.5))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.array([[0.1, np.nan]]), "1 NaN"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((2, 2, 2)), r"2-D .* shape \(2, 2, 2\)"),
    ],
)
def test_otsu_bad_images_fail_clearly(image, match):
    with pytest.raises(ValueError, match=match):
        otsu_threshold(image)


def test_otsu_bins_must_be_at_least_two():
    with pytest.raises(ValueError, match="bins must be an integer >= 2, got 1"):
        otsu_threshold(np.eye(3), bins=1)


# --------------------------------------------------------------------------- segment
def test_segment_bright_and_dark_are_complements_of_image_above_threshold():
    image = np.array([[0.1, 0.5, 0.9]], np.float32)
    assert segment(image, 0.5).tolist() == [[False, False, True]]  # strictly above
    assert segment(image, 0.5, phase="dark").tolist() == [[True, True, False]]
    mask, t = segment(image, return_threshold=True)
    assert np.array_equal(mask, image > t)


def test_segment_8_bit_image_is_scaled_before_the_threshold():
    image = np.array([[0, 100, 200]], np.uint8)
    assert segment(image, 0.5).tolist() == [[False, False, True]]  # 100/255 < 0.5 < 200/255


def test_denoise_removes_isolated_bright_pixels():
    image = np.zeros((21, 21), np.float32)
    image[5:16, 5:16] = 1.0
    image[1, 1] = image[18, 3] = 1.0  # salt
    assert segment(image, 0.5).sum() == 121 + 2
    clean = segment(image, 0.5, denoise=1.0)
    assert not clean[1, 1] and not clean[18, 3]
    assert clean[10, 10] and clean.sum() == pytest.approx(121, abs=12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1.5}, r"threshold must be 'otsu' or a number in \[0, 1\], got 1.5"),
        ({"threshold": -0.1}, "got -0.1"),
        ({"threshold": "mean"}, "got 'mean'"),
        ({"threshold": True}, "got True"),
        ({"phase": "grey"}, r"unknown phase 'grey'; choose one of \['bright', 'dark'\]"),
        ({"denoise": 0}, "denoise must be a Gaussian sigma > 0 in pixels or None, got 0"),
        ({"denoise": "1"}, "got '1'"),
        ({"threshold": np.float32(0.5), "denoise": np.bool_(True)}, "denoise must be a Gaussian"),
        ({"denoise": float("nan")}, "got nan"),
    ],
)
def test_segment_bad_options_fail_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        segment(np.eye(4), **kwargs)


def test_segment_nan_image_fails_naming_the_count():
    image = np.eye(4)
    image[0, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN and 0 infinite"):
        segment(image, 0.5)


# --------------------------------------------------------------------------- one-hot
def test_one_hot_of_a_label_image_channel_last():
    labels = np.array([[0, 1, 2], [2, 2, 0]])
    out = one_hot(labels)
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    assert np.array_equal(out.argmax(axis=-1), labels)
    assert np.array_equal(out.sum(axis=-1), np.ones((2, 3)))
    assert out[..., 2].tolist() == [[0, 0, 1], [1, 1, 0]]


def test_one_hot_batch_and_declared_phases():
    labels = np.array([[[0, 255]], [[255, 255]]], np.uint8)
    out = one_hot(labels, phases=(255, 0), dtype=bool)
    assert out.shape == (2, 1, 2, 2) and out.dtype == np.bool_
    assert out[..., 0].tolist() == [[[False, True]], [[True, True]]]
    assert one_hot(np.zeros((2, 2), int), 3).shape == (2, 2, 3)  # n_phases fixes k


def test_one_hot_accepts_whole_floats_and_bools():
    assert np.array_equal(one_hot(np.array([[0.0, 1.0]])), one_hot(np.array([[0, 1]])))
    assert one_hot(np.array([[True, False]]))[..., 1].tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.array([[0, 1, 5]]), {"n_phases": 3},
         r"labels \[5\] are not among the phases \[0, 1, 2\] \(1 pixel\)"),
        (np.array([[0, 7, 7]]), {"phases": (0, 255)}, r"labels \[7\] are not among .*\(2 pixels\)"),
        (np.array([[0.0, 0.5]]), {}, r"whole numbers, found \[0.5\]"),
        (np.array([[0.0, np.nan]]), {}, r"whole numbers, found \[nan\]"),
        (np.array([[-1, 0]]), {}, "negative values"),
        (np.zeros((0, 3), int), {}, "empty"),
        (np.zeros(3, int), {}, r"got shape \(3,\)"),
        (np.zeros((2, 2), int), {"n_phases": 2, "phases": (0, 1)}, "not both"),
        (np.zeros((2, 2), int), {"phases": (0, 0)}, "distinct"),
        (np.zeros((2, 2), int), {"phases": (0.0, 1.0)}, "integers"),
        (np.zeros((2, 2), int), {"n_phases": 0}, "n_phases must be an integer >= 1"),
    ],
)  # fmt: skip
def test_one_hot_bad_labels_fail_naming_the_values(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        one_hot(labels, **kwargs)


def test_one_hot_refuses_text_labels():
    with pytest.raises(TypeError, match="dtype <U1"):
        one_hot(np.array([["a", "b"]]))


@pytest.mark.data
def test_one_hot_of_metaldam_labels_counts_every_class():
    files = sorted((DATA / "metaldam" / "labels").glob("*.png"))[:2]
    if not files:
        pytest.skip(f"MetalDAM labels not found under {DATA}")
    from PIL import Image

    labels = np.asarray(Image.open(files[0]))
    out = one_hot(labels, 5)
    assert out.shape == (*labels.shape, 5)
    assert out.sum(axis=(0, 1)).tolist() == np.bincount(labels.ravel(), minlength=5).tolist()
