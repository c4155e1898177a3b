"""Tests of microtex.io.preprocess: resize, crop by a number of rows, tiling."""

from __future__ import annotations

import numpy as np
import pytest

from microtex import io

from _io_helpers import save, texture

# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((60, 90), 30, (30, 45)),
        ((90, 60), 30, (45, 30)),
        ((61, 61), 20, (20, 20)),
        ((60, 90), 120, (120, 180)),
        ((60, 90), (17, 100), (17, 100)),
        ((60, 90), [20, 10], (20, 10)),
    ],
)
def test_resize_shapes(tmp_path, shape, size, expected):
    path = save(np.zeros(shape, np.uint8), tmp_path / "z.png")
    image = io.read_image(path, size=size)
    assert image.shape == expected and image.dtype == np.float32 and image.flags.c_contiguous


@pytest.mark.parametrize("size", [7, 100, (13, 200), (200, 13)])
def test_resize_keeps_constant(size):
    image = io.resize_image(np.full((30, 40), 0.7, np.float32), size)
    np.testing.assert_allclose(image, 0.7, rtol=1e-6)


def test_resize_checkerboard_averages_to_half():
    checkerboard = (np.indices((32, 48)).sum(axis=0) % 2).astype(np.float32)
    half = io.resize_image(checkerboard, 16)
    assert half.shape == (16, 24)
    np.testing.assert_allclose(half, 0.5, atol=1e-6)
    odd = io.resize_image(checkerboard, (10, 15))  # non-integer factor 3.2
    assert abs(float(odd.mean()) - 0.5) < 0.02
    assert 0.0 <= odd.min() and odd.max() <= 1.0


def test_resize_upsampling_stays_in_range():
    image = io.resize_image(texture((10, 12)), (37, 41))
    assert image.shape == (37, 41)
    assert image.min() >= 0.15 - 1e-6 and image.max() <= 0.85 + 1e-6


# --------------------------------------------------------------------------- cropping


def test_crop_bottom_int(tmp_path):
    array = (np.arange(20 * 6, dtype=np.uint8)).reshape(20, 6)
    path = save(array, tmp_path / "ramp.png")
    image, info = io.read_image_with_info(path, crop_bottom=5)
    np.testing.assert_array_equal(image, array[:15] / np.float32(255))
    assert info.rows_cropped == 5 and info.original_shape == (20, 6)
    assert io.read_image(path, crop_bottom=0).shape == (20, 6)


# --------------------------------------------------------------------------- tiling


def test_tile_shapes_and_origins():
    image = np.arange(10 * 13, dtype=np.float32).reshape(10, 13)
    patches, origins = io.tile(image, 4)
    assert patches.shape == (6, 4, 4) and patches.dtype == np.float32
    assert origins.tolist() == [[0, 0], [0, 4], [0, 8], [4, 0], [4, 4], [4, 8]]
    for patch, (row, col) in zip(patches, origins, strict=True):
        np.testing.assert_array_equal(patch, image[row : row + 4, col : col + 4])
    patches, origins = io.tile(image, 4, stride=3)  # rows 0,3,6; cols 0,3,6,9
    assert patches.shape == (12, 4, 4)
    assert origins[-1].tolist() == [6, 9]
    assert patches.flags.c_contiguous
    one, origin = io.tile(image[:4, :4], 4)
    assert one.shape == (1, 4, 4) and origin.tolist() == [[0, 0]]


def test_tile_errors():
    with pytest.raises(ValueError, match=r"\(5, 30\).*patch_size=8"):
        io.tile(np.zeros((5, 30)), 8)
    with pytest.raises(ValueError, match="patch_size"):
        io.tile(np.zeros((5, 5)), 0)
    with pytest.raises(ValueError, match="stride"):
        io.tile(np.zeros((5, 5)), 2, stride=-1)
    with pytest.raises(ValueError, match=r"\(2, 5, 5\)"):
        io.tile(np.zeros((2, 5, 5)), 2)
