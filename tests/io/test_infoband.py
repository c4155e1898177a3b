"""Tests of microtex.io.infoband: auto-crop of instrument info bands, synthetic and real."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from microtex import io

from _io_helpers import save, texture

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _with_band(body: np.ndarray, rows: int, colour: float, text: float) -> np.ndarray:
    """Append an info band of ``rows`` rows: border line, uniform colour, a line of "text"."""
    width = body.shape[1]
    band = np.full((rows, width), colour, np.float32)
    band[0] = text  # border line
    rng = np.random.default_rng(1)
    for row in range(rows // 3, rows // 3 + 4):  # "text": sparse glyph pixels
        band[row, rng.choice(width, width // 5, replace=False)] = text
    return np.vstack([body, band])


# --------------------------------------------------------------------------- cropping


@pytest.mark.parametrize(("colour", "text"), [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_auto_crop_finds_synthetic_band(tmp_path, caplog, colour, text):
    body = texture((100, 120))
    array = _with_band(body, 14, colour, text)
    path = save((array * 255).round().astype(np.uint8), tmp_path / "band.png")
    with caplog.at_level(logging.INFO, logger="microtex.io"):
        image, info = io.read_image_with_info(path, crop_bottom="auto")
    assert info.rows_cropped == 14
    assert image.shape == (100, 120)
    messages = [r.getMessage() for r in caplog.records if r.name == "microtex.io"]
    assert any("14" in m and str(path) in m for m in messages), messages


def test_auto_crop_band_on_dark_texture():
    # like the AMPIS powder images: a quarter of the pixels near-black background
    rng = np.random.default_rng(5)
    body = np.where(rng.random((120, 160)) < 0.25, 0.05, rng.uniform(0.3, 0.9, (120, 160)))
    assert io.detect_info_band(_with_band(body, 10, 0.0, 1.0)) == 10
    assert io.detect_info_band(_with_band(body, 10, 1.0, 0.0)) == 10
    assert io.detect_info_band(body) == 0


def test_auto_crop_after_downsampling_within_a_row():
    array = _with_band(texture((300, 400)), 40, 1.0, 0.0)
    small = io.resize_image(array, (113, 150))  # band -> 40 * 113 / 340 = 13.3 rows
    assert abs(io.detect_info_band(small) - 40 * 113 / 340) <= 1.5


def test_auto_crop_leaves_band_free_images_alone(tmp_path, caplog):
    rng = np.random.default_rng(2)
    yy, xx = np.indices((128, 128))
    marble = 0.5 + 0.5 * np.cos(2 * np.pi * (xx + 6 * np.sin(yy / 9.0)) / 16.0)
    binary = (np.cos(xx / 3.0) * np.cos(yy / 4.0) > 0).astype(np.float32)
    gradient = np.clip(yy / 127.0 + rng.normal(0, 0.05, yy.shape), 0, 1)
    for array in (texture((128, 128)), marble, binary, gradient, np.full((50, 50), 0.3)):
        assert io.detect_info_band(array) == 0
    path = save((marble * 255).astype(np.uint8), tmp_path / "marble.png")
    with caplog.at_level(logging.INFO, logger="microtex.io"):
        image, info = io.read_image_with_info(path, crop_bottom="auto")
    assert info.rows_cropped == 0 and image.shape == (128, 128)
    assert not [r for r in caplog.records if r.name == "microtex.io"]


# --------------------------------------------------------------------------- real data


@pytest.mark.data
def test_auto_crop_on_real_micrographs():
    metaldam = sorted((DATA / "metaldam" / "images").glob("*.jpg"))
    spheroidite = sorted((DATA / "ampis" / "spheroidite" / "images").glob("*.png"))
    if not metaldam or not spheroidite:
        pytest.skip(f"real micrographs not found under {DATA}")
    for path in metaldam:  # 1024 x 768 (50-row band) or 1280 x 960 (64-row band)
        image, info = io.read_image_with_info(path, crop_bottom="auto")
        expected = {768: 50, 960: 64}.get(info.original_shape[0])
        assert info.rows_cropped > 0, path
        if expected is not None:
            assert abs(info.rows_cropped - expected) <= 2, (path, info.rows_cropped)
    powder = sorted((DATA / "ampis" / "powder" / "images_png").glob("*.png"))
    for path in spheroidite + powder:
        image, info = io.read_image_with_info(path, crop_bottom="auto")
        assert info.rows_cropped == 0, path
        assert image.shape == info.original_shape


@pytest.mark.parametrize(("lines", "expected"), [(0, 14), (1, 14), (2, 0), (3, 0)])
def test_band_like_rows_in_the_body_above_decide_at_the_20_percent_rule(lines, expected):
    # the 8 body rows just above the band are compared with it: one band-like row
    # among them (12.5 %) still allows the crop, two (25 %) are more than 20 %
    body = texture((100, 120))
    band_top = body.shape[0]
    for row in range(band_top - 8, band_top - 8 + lines):  # far enough not to join the band
        body[row] = 0.0  # a black line: band-like
    assert io.detect_info_band(_with_band(body, 14, 1.0, 0.0)) == expected
