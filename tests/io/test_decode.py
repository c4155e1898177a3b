"""Tests of microtex.io: decoding, conversion to float gray, crop, resize, tiling, batches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from microtex import io
from microtex.errors import ImageReadError

tifffile = pytest.importorskip("tifffile")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG_SEED = 20240611


def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _texture(shape=(64, 80), seed=RNG_SEED) -> np.ndarray:
    """Random mid-gray texture in [0.15, 0.85], float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.15, 0.85, size=shape).astype(np.float32)


def _with_band(body: np.ndarray, rows: int, colour: float, text: float) -> np.ndarray:
    """Append an info band of ``rows`` rows: border line, uniform colour, a line of "text"."""
    width = body.shape[1]
    band = np.full((rows, width), colour, np.float32)
    band[0] = text  # border line
    rng = np.random.default_rng(1)
    for row in range(rows // 3, rows // 3 + 4):  # "text": sparse glyph pixels
        band[row, rng.choice(width, width // 5, replace=False)] = text
    return np.vstack([body, band])


# --------------------------------------------------------------------------- values


def test_gray_png_exact_value(tmp_path):
    array = np.full((5, 7), 51, np.uint8)
    array[0, 0], array[1, 1] = 0, 255
    image = io.read_image(_save(array, tmp_path / "gray.png"))
    assert image.dtype == np.float32 and image.shape == (5, 7)
    assert image.flags.c_contiguous
    assert image[2, 2] == np.float32(0.2)
    assert image[0, 0] == 0.0 and image[1, 1] == 1.0


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16bit_exact_values(tmp_path, suffix):
    array = np.array([[0, 1000, 65535], [32768, 1, 65534]], np.uint16)
    path = tmp_path / f"gray16{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        _save(array, path)  # Pillow writes mode I;16 as a 16-bit PNG
    image, info = io.read_image_with_info(path)
    np.testing.assert_allclose(image, array / 65535.0, rtol=1e-7, atol=0)
    assert image[0, 2] == 1.0
    assert image[0, 1] == np.float32(1000 / 65535)
    assert image[1, 2] < 1.0  # 16-bit precision kept, not rounded to 8 bits
    assert info.bit_depth == 16


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_rgb_becomes_luminance(tmp_path, suffix):
    array = np.zeros((3, 4, 3), np.uint8)
    array[0, :, 0] = 255  # red
    array[1, :, 1] = 255  # green
    array[2, :, 2] = 255  # blue
    array[:, 3] = 255  # white column
    path = tmp_path / f"rgb{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array, photometric="rgb")
    else:
        _save(array, path)
    image = io.read_image(path)
    np.testing.assert_allclose(image[:, 0], [0.299, 0.587, 0.114], rtol=1e-6)
    np.testing.assert_allclose(image[:, 3], 1.0, rtol=1e-6)


def test_grayscale_saved_as_rgb_equals_gray(tmp_path):
    gray = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    from_gray = io.read_image(_save(gray, tmp_path / "g.png"))
    from_rgb = io.read_image(_save(rgb, tmp_path / "rgb.png"))
    np.testing.assert_array_equal(from_rgb, from_gray)


def test_rgb_16bit_tiff_keeps_precision(tmp_path):
    array = np.zeros((2, 2, 3), np.uint16)
    array[0, 0] = (1000, 1000, 1000)
    array[0, 1] = (65535, 0, 0)
    array[1, 0] = (0, 0, 65535)
    array[1, 1] = (1, 2, 3)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, array, photometric="rgb")
    image = io.read_image(path)
    expected = (array.astype(float) @ np.array([0.299, 0.587, 0.114])) / 65535
    np.testing.assert_allclose(image, expected, rtol=1e-6)


def test_rgba_and_la_ignore_alpha(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 5, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    np.testing.assert_array_equal(
        io.read_image(_save(rgba, tmp_path / "rgba.png")),
        io.read_image(_save(rgb, tmp_path / "rgb.png")),
    )
    gray = rgb[..., 0]
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha[..., 0])])
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "la.png"), io.read_image(_save(gray, tmp_path / "l.png"))
    )


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_matches_rgb_equivalent(tmp_path, transparency):
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (9, 11), dtype=np.uint8)
    im = Image.frombytes("P", (11, 9), index.tobytes())
    im.putpalette(palette.ravel().tolist())
    kwargs = {"transparency": 0} if transparency else {}
    im.save(tmp_path / "p.png", **kwargs)
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
    rgb_equivalent = palette[index]
    image, info = io.read_image_with_info(tmp_path / "p.png")
    assert info.mode == "P"
    np.testing.assert_array_equal(image, io.read_image(_save(rgb_equivalent, tmp_path / "e.png")))


def test_palette_tiff(tmp_path):
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = 65535  # index 1 -> white
    colormap[0, 2] = 65535  # index 2 -> red
    index = np.array([[0, 1, 2]], np.uint8)
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, index, photometric="palette", colormap=colormap)
    np.testing.assert_allclose(io.read_image(path), [[0.0, 1.0, 0.299]], rtol=1e-6)


def test_multipage_tiff_reads_first_page(tmp_path):
    pages = np.stack([np.full((4, 6), 1000 * (i + 1), np.uint16) for i in range(3)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, pages, photometric="minisblack")
    image, info = io.read_image_with_info(path)
    assert image.shape == (4, 6)
    np.testing.assert_allclose(image, 1000 / 65535, rtol=1e-7)
    assert info.n_frames == 3 and info.format == "TIFF"


def test_planar_rgb_and_miniswhite_tiff(tmp_path):
    planar = np.zeros((3, 2, 2), np.uint8)
    planar[0] = 255  # red plane
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(io.read_image(tmp_path / "planar.tif"), 0.299, rtol=1e-6)
    white_is_zero = np.array([[0, 255, 51]], np.uint8)
    tifffile.imwrite(tmp_path / "mw.tif", white_is_zero, photometric="miniswhite")
    np.testing.assert_allclose(io.read_image(tmp_path / "mw.tif"), [[1.0, 0.0, 0.8]], rtol=1e-6)


def test_float_tiff_kept_or_min_max_scaled(tmp_path):
    inside = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    tifffile.imwrite(tmp_path / "in.tif", inside)
    np.testing.assert_array_equal(io.read_image(tmp_path / "in.tif"), inside)
    outside = np.array([[-2.0, 0.0], [2.0, 6.0]], np.float64)
    tifffile.imwrite(tmp_path / "out.tif", outside)
    np.testing.assert_allclose(io.read_image(tmp_path / "out.tif"), [[0, 0.25], [0.5, 1]])
    bad = inside.copy()
    bad[0, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(ImageReadError, match="NaN"):
        io.read_image(tmp_path / "nan.tif")


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    # tifffile needs the optional imagecodecs package for LZW; Pillow decodes it.
    array = (np.arange(48, dtype=np.uint16) * 1365).reshape(6, 8)
    path = _save(array, tmp_path / "lzw16.tif", compression="tiff_lzw")
    image, info = io.read_image_with_info(path)
    np.testing.assert_allclose(image, array / 65535.0, rtol=1e-7)
    assert info.format == "TIFF" and info.bit_depth == 16


def test_jpeg_and_bmp(tmp_path):
    array = np.full((16, 16), 128, np.uint8)
    image, info = io.read_image_with_info(_save(array, tmp_path / "a.jpg", quality=95))
    np.testing.assert_allclose(image, 128 / 255, atol=2 / 255)
    assert info.format == "JPEG"
    np.testing.assert_array_equal(
        io.read_image(_save(array, tmp_path / "a.bmp")), np.float32(128) / np.float32(255)
    )


def test_format_recognized_by_content_not_name(tmp_path):
    path = _save(np.full((3, 3), 51, np.uint8), tmp_path / "really_a_png.tif", format="PNG")
    image, info = io.read_image_with_info(path)
    assert info.format == "PNG" and image[0, 0] == np.float32(0.2)


def test_image_info(tmp_path):
    path = _save(np.zeros((40, 30, 3), np.uint8), tmp_path / "rgb.png")
    image, info = io.read_image_with_info(path, crop_bottom=4, size=(9, 6))
    assert info == io.ImageInfo(
        path=str(path),
        format="PNG",
        mode="RGB",
        bit_depth=8,
        n_frames=1,
        original_shape=(40, 30),
        rows_cropped=4,
        shape=(9, 6),
    )
    assert image.shape == (9, 6)


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
    path = _save(np.zeros(shape, np.uint8), tmp_path / "z.png")
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
    image = io.resize_image(_texture((10, 12)), (37, 41))
    assert image.shape == (37, 41)
    assert image.min() >= 0.15 - 1e-6 and image.max() <= 0.85 + 1e-6


# --------------------------------------------------------------------------- cropping


def test_crop_bottom_int(tmp_path):
    array = (np.arange(20 * 6, dtype=np.uint8)).reshape(20, 6)
    path = _save(array, tmp_path / "ramp.png")
    image, info = io.read_image_with_info(path, crop_bottom=5)
    np.testing.assert_array_equal(image, array[:15] / np.float32(255))
    assert info.rows_cropped == 5 and info.original_shape == (20, 6)
    assert io.read_image(path, crop_bottom=0).shape == (20, 6)


@pytest.mark.parametrize(("colour", "text"), [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_auto_crop_finds_synthetic_band(tmp_path, caplog, colour, text):
    body = _texture((100, 120))
    array = _with_band(body, 14, colour, text)
    path = _save((array * 255).round().astype(np.uint8), tmp_path / "band.png")
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
    array = _with_band(_texture((300, 400)), 40, 1.0, 0.0)
    small = io.resize_image(array, (113, 150))  # band -> 40 * 113 / 340 = 13.3 rows
    assert abs(io.detect_info_band(small) - 40 * 113 / 340) <= 1.5


def test_auto_crop_leaves_band_free_images_alone(tmp_path, caplog):
    rng = np.random.default_rng(2)
    yy, xx = np.indices((128, 128))
    marble = 0.5 + 0.5 * np.cos(2 * np.pi * (xx + 6 * np.sin(yy / 9.0)) / 16.0)
    binary = (np.cos(xx / 3.0) * np.cos(yy / 4.0) > 0).astype(np.float32)
    gradient = np.clip(yy / 127.0 + rng.normal(0, 0.05, yy.shape), 0, 1)
    for array in (_texture((128, 128)), marble, binary, gradient, np.full((50, 50), 0.3)):
        assert io.detect_info_band(array) == 0
    path = _save((marble * 255).astype(np.uint8), tmp_path / "marble.png")
    with caplog.at_level(logging.INFO, logger="microtex.io"):
        image, info = io.read_image_with_info(path, crop_bottom="auto")
    assert info.rows_cropped == 0 and image.shape == (128, 128)
    assert not [r for r in caplog.records if r.name == "microtex.io"]


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


# --------------------------------------------------------------------------- errors


def _valid_png(tmp_path) -> bytes:
    rng = np.random.default_rng(0)
    path = _save(rng.integers(0, 256, (64, 64), dtype=np.uint8), tmp_path / "valid.png")
    return path.read_bytes()


def _valid_jpeg(tmp_path) -> bytes:
    rng = np.random.default_rng(0)
    path = _save(rng.integers(0, 256, (64, 64), dtype=np.uint8), tmp_path / "valid.jpg")
    return path.read_bytes()


def _valid_tiff(tmp_path) -> bytes:
    tifffile.imwrite(tmp_path / "valid.tif", np.ones((64, 64), np.uint16))
    return (tmp_path / "valid.tif").read_bytes()


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("truncated.png", lambda t: _valid_png(t)[: len(_valid_png(t)) // 2]),
        ("truncated.jpg", lambda t: _valid_jpeg(t)[: len(_valid_jpeg(t)) // 2]),
        ("truncated.tif", lambda t: _valid_tiff(t)[: len(_valid_tiff(t)) // 2]),
        ("text.png", lambda t: b"this is a text file, not an image\n"),
        ("empty.png", lambda t: b""),
        ("missing.png", None),
    ],
)
def test_unreadable_files_raise_image_read_error(tmp_path, name, make):
    path = tmp_path / name
    if make is not None:
        path.write_bytes(make(tmp_path))
    with pytest.raises(ImageReadError) as caught:
        io.read_image(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path) and caught.value.reason
    assert isinstance(caught.value, OSError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_directory_and_unsupported_format(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        io.read_image(tmp_path)
    _save(np.zeros((4, 4), np.uint8), tmp_path / "a.gif")
    with pytest.raises(ImageReadError, match="GIF"):
        io.read_image(tmp_path / "a.gif")


def test_large_image_warning_is_logged_and_bomb_is_an_error(tmp_path, monkeypatch, caplog):
    path = _save(np.zeros((20, 20), np.uint8), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 px: warning, not error
    with caplog.at_level(logging.DEBUG, logger="microtex.io"):
        assert io.read_image(path).shape == (20, 20)
    assert any("DecompressionBomb" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: error
    with pytest.raises(ImageReadError, match="big.png"):
        io.read_image(path)


@pytest.mark.parametrize("value", [-1, 1.5, "top", "AUTO", True, 20, 25])
def test_bad_crop_bottom(tmp_path, value):
    path = _save(np.zeros((20, 6), np.uint8), tmp_path / "z.png")
    with pytest.raises(ValueError, match=str(value)):
        io.read_image(path, crop_bottom=value)


@pytest.mark.parametrize("value", [0, -3, 2.5, "big", (10,), (0, 5), (4, 5, 6), True])
def test_bad_size(tmp_path, value):
    path = _save(np.zeros((20, 6), np.uint8), tmp_path / "z.png")
    with pytest.raises(ValueError, match="size") as caught:
        io.read_image(path, size=value)
    assert repr(value) in str(caught.value)


# --------------------------------------------------------------------------- as_float_image


def test_as_float_image_conversions():
    np.testing.assert_array_equal(
        io.as_float_image(np.array([[0, 51, 255]], np.uint8)), np.float32([[0, 0.2, 1]])
    )
    out = io.as_float_image(np.array([[0, 1000, 65535]], np.uint16))
    assert out[0, 1] == np.float32(1000 / 65535) and out[0, 2] == 1.0
    floats = np.array([[0.25, 0.5]], np.float64)
    out = io.as_float_image(floats)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, floats)
    np.testing.assert_array_equal(io.as_float_image(np.eye(2, dtype=bool)), np.eye(2))
    fortran = np.asfortranarray(np.zeros((3, 4), np.float32))
    assert io.as_float_image(fortran).flags.c_contiguous


def test_as_float_image_errors():
    with pytest.raises(ValueError, match="NaN"):
        io.as_float_image(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\(2, 3, 3\)"):
        io.as_float_image(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(0, 4\)"):
        io.as_float_image(np.zeros((0, 4)))
    for dtype in (np.complex64, object, np.int64):
        with pytest.raises(TypeError, match=np.dtype(dtype).name):
            io.as_float_image(np.zeros((2, 2), dtype))


# --------------------------------------------------------------------------- batches


def _folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    _save(np.full((8, 10), 51, np.uint8), folder / "b.PNG")
    _save(np.full((8, 10), 102, np.uint8), folder / "a.png")
    tifffile.imwrite(folder / "c.TIFF", np.full((8, 10), 65535, np.uint16))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "sub.png").mkdir()
    return folder


def test_expand_paths(tmp_path):
    folder = _folder(tmp_path)
    assert [p.name for p in io.expand_paths(folder)] == ["a.png", "b.PNG", "c.TIFF"]
    extra = tmp_path / "extra.bmp"
    mixed = io.expand_paths([extra, str(folder), folder / "notes.txt"])
    assert mixed == [
        extra,
        folder / "a.png",
        folder / "b.PNG",
        folder / "c.TIFF",
        folder / "notes.txt",
    ]
    assert io.expand_paths(str(extra)) == [extra]
    assert io.expand_paths([]) == []


def test_iter_images_skip_reports_bad_file(tmp_path, caplog):
    folder = _folder(tmp_path)
    bad = folder / "ab_truncated.png"
    bad.write_bytes(_valid_png(tmp_path)[:100])
    failures: list[io.ReadFailure] = []
    with caplog.at_level(logging.WARNING, logger="microtex.io"):
        results = list(io.iter_images(folder, on_error="skip", failures=failures))
    assert [p.name for p, _, _ in results] == ["a.png", "b.PNG", "c.TIFF"]
    assert [float(img[0, 0]) for _, img, _ in results] == pytest.approx([0.4, 0.2, 1.0])
    assert [f.path for f in failures] == [bad] and failures[0].reason
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in r.getMessage() and failures[0].reason in r.getMessage() for r in warned)


def test_iter_images_raise_names_bad_file_and_is_lazy(tmp_path):
    folder = _folder(tmp_path)
    bad = folder / "ab_text.png"
    bad.write_text("not an image")
    stream = io.iter_images(folder, on_error="raise")
    path, image, info = next(stream)
    assert path.name == "a.png"
    with pytest.raises(ImageReadError, match="ab_text.png"):
        next(stream)
    lazy = io.iter_images([tmp_path / "missing.png"])  # nothing read until iterated
    with pytest.raises(ImageReadError, match="missing.png"):
        next(lazy)


def test_iter_images_checks_options_eagerly(tmp_path):
    with pytest.raises(ValueError, match="ignore"):
        io.iter_images([tmp_path], on_error="ignore")
    with pytest.raises(ValueError, match="-2"):
        io.iter_images([tmp_path], crop_bottom=-2)


def test_read_images_stacks(tmp_path):
    folder = _folder(tmp_path)
    batch = io.read_images(folder)
    assert batch.images.shape == (3, 8, 10) and batch.images.dtype == np.float32
    assert batch.images.flags.c_contiguous
    np.testing.assert_allclose(batch.images[:, 0, 0], [0.4, 0.2, 1.0], rtol=1e-6)
    assert [p.name for p in batch.paths] == ["a.png", "b.PNG", "c.TIFF"]
    assert [i.format for i in batch.infos] == ["PNG", "PNG", "TIFF"]
    assert batch.failures == []


def test_read_images_shape_mismatch_and_resize(tmp_path):
    folder = _folder(tmp_path)
    _save(np.zeros((9, 10), np.uint8), folder / "d.png")
    (folder / "e.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"d\.png.*size="):
        io.read_images(folder, on_error="skip")
    batch = io.read_images(folder, size=(4, 5), on_error="skip")
    assert batch.images.shape == (4, 4, 5)
    assert [f.path.name for f in batch.failures] == ["e.png"]
    with pytest.raises(ImageReadError, match="e.png"):
        io.read_images(folder, size=(4, 5))
    empty = io.read_images([folder / "e.png"], size=(4, 5), on_error="skip")
    assert empty.images.shape == (0, 4, 5) and len(empty.failures) == 1


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
