"""Tests of microtex.io.decode: files and arrays to float32 gray, decoder errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image, ImageFile

from microtex import io
from microtex.errors import ImageReadError

from _io_helpers import save, valid_bytes

tifffile = pytest.importorskip("tifffile")


# --------------------------------------------------------------------------- values


def test_gray_png_exact_value(tmp_path):
    array = np.full((5, 7), 51, np.uint8)
    array[0, 0], array[1, 1] = 0, 255
    image = io.read_image(save(array, tmp_path / "gray.png"))
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
        save(array, path)  # Pillow writes mode I;16 as a 16-bit PNG
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
        save(array, path)
    image = io.read_image(path)
    np.testing.assert_allclose(image[:, 0], [0.299, 0.587, 0.114], rtol=1e-6)
    np.testing.assert_allclose(image[:, 3], 1.0, rtol=1e-6)


def test_grayscale_saved_as_rgb_equals_gray(tmp_path):
    gray = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    from_gray = io.read_image(save(gray, tmp_path / "g.png"))
    from_rgb = io.read_image(save(rgb, tmp_path / "rgb.png"))
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
        io.read_image(save(rgba, tmp_path / "rgba.png")),
        io.read_image(save(rgb, tmp_path / "rgb.png")),
    )
    gray = rgb[..., 0]
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha[..., 0])])
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "la.png"), io.read_image(save(gray, tmp_path / "l.png"))
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
    np.testing.assert_array_equal(image, io.read_image(save(rgb_equivalent, tmp_path / "e.png")))


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
    path = save(array, tmp_path / "lzw16.tif", compression="tiff_lzw")
    image, info = io.read_image_with_info(path)
    np.testing.assert_allclose(image, array / 65535.0, rtol=1e-7)
    assert info.format == "TIFF" and info.bit_depth == 16


def test_jpeg_and_bmp(tmp_path):
    array = np.full((16, 16), 128, np.uint8)
    image, info = io.read_image_with_info(save(array, tmp_path / "a.jpg", quality=95))
    np.testing.assert_allclose(image, 128 / 255, atol=2 / 255)
    assert info.format == "JPEG"
    np.testing.assert_array_equal(
        io.read_image(save(array, tmp_path / "a.bmp")), np.float32(128) / np.float32(255)
    )


def test_format_recognized_by_content_not_name(tmp_path):
    path = save(np.full((3, 3), 51, np.uint8), tmp_path / "really_a_png.tif", format="PNG")
    image, info = io.read_image_with_info(path)
    assert info.format == "PNG" and image[0, 0] == np.float32(0.2)


# --------------------------------------------------------------------------- errors


def _valid_tiff(tmp_path) -> bytes:
    tifffile.imwrite(tmp_path / "valid.tif", np.ones((64, 64), np.uint16))
    return (tmp_path / "valid.tif").read_bytes()


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("truncated.png", lambda t: valid_bytes(t, ".png")[: len(valid_bytes(t, ".png")) // 2]),
        ("truncated.jpg", lambda t: valid_bytes(t, ".jpg")[: len(valid_bytes(t, ".jpg")) // 2]),
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
    save(np.zeros((4, 4), np.uint8), tmp_path / "a.gif")
    with pytest.raises(ImageReadError, match="GIF"):
        io.read_image(tmp_path / "a.gif")


def test_large_image_warning_is_logged_and_bomb_is_an_error(tmp_path, monkeypatch, caplog):
    path = save(np.zeros((20, 20), np.uint8), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 px: warning, not error
    with caplog.at_level(logging.DEBUG, logger="microtex.io"):
        assert io.read_image(path).shape == (20, 20)
    assert any("DecompressionBomb" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: error
    with pytest.raises(ImageReadError, match="big.png"):
        io.read_image(path)


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


def test_the_decompression_bomb_rule_holds_for_tiff_too(tmp_path, monkeypatch, caplog):
    # tifffile has no pixel limit of its own: the header is checked before decoding
    import tifffile

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((20, 20), np.uint16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 px: warning, not error
    with caplog.at_level(logging.DEBUG, logger="microtex.io"):
        assert io.read_image(path).shape == (20, 20)
    assert any("DecompressionBomb" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: error
    decoded = []
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: decoded.append(1))
    with pytest.raises(ImageReadError, match=r"big.tif.*400 pixels.*limit of 100"):
        io.read_image(path)
    assert decoded == []  # refused from the header


@pytest.mark.parametrize(("orientation", "upright"), [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
    (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1]),
])  # fmt: skip
def test_exif_orientation_is_applied_and_recorded(tmp_path, orientation, upright):
    stored = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4  # distinct values, not square
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "tilted.png"
    Image.fromarray(stored).save(path, exif=exif)
    image, info = io.read_image_with_info(path)
    np.testing.assert_array_equal(image, upright(stored).astype(np.float32) / 255)
    assert info.exif_orientation == orientation and info.original_shape == image.shape


# --------------------------------------------------------------------------- limits


def test_the_byte_limit_holds_for_every_decoder_before_decoding(tmp_path, monkeypatch):
    import tifffile

    from microtex.io import decode

    rgba16 = tmp_path / "rgba16.tif"  # 20 x 20 x 4 samples x 2 bytes = 3200 bytes
    tifffile.imwrite(rgba16, np.zeros((20, 20, 4), np.uint16), photometric="rgb",
                     extrasamples=["unassalpha"])  # fmt: skip
    rgba8 = save(np.zeros((20, 20, 4), np.uint8), tmp_path / "rgba8.png")  # 1600 bytes
    gray = save(np.zeros((20, 20), np.uint8), tmp_path / "gray.png")  # 400 bytes
    monkeypatch.setattr(decode, "MAX_DECODED_BYTES", 1000)
    decoded = []
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: decoded.append(1))
    with pytest.raises(ImageReadError, match=r"rgba16.tif.*20x20 pixels would take 3,200 bytes, "
                                             r"more than the limit of 1,000"):  # fmt: skip
        io.read_image(rgba16)
    assert decoded == []  # refused from the header
    with pytest.raises(ImageReadError, match=r"rgba8.png.*1,600 bytes"):
        io.read_image(rgba8)
    assert io.read_image(gray).shape == (20, 20)


def test_out_of_memory_while_decoding_is_that_files_read_error(tmp_path, monkeypatch):
    from microtex.io import decode

    good = save(np.zeros((8, 8), np.uint8), tmp_path / "a.png")
    big = save(np.zeros((9, 9), np.uint8), tmp_path / "b.png")
    real = decode._pillow_to_gray

    def starved(im, *args):
        if im.size == (9, 9):
            raise MemoryError
        return real(im, *args)

    monkeypatch.setattr(decode, "_pillow_to_gray", starved)
    with pytest.raises(ImageReadError, match=r"b.png': out of memory while decoding"):
        io.read_image(big)
    batch = io.read_images([big, good], on_error="skip")
    assert [p.name for p in batch.paths] == ["a.png"]
    assert batch.failures[0].reason == "out of memory while decoding the image"


# --------------------------------------------------------------------------- float policy


def test_float_data_is_treated_alike_as_an_array_and_as_a_file(tmp_path, caplog, monkeypatch):
    # one policy: in [0, 1] kept, otherwise min-max scaled, with a warning, in every path
    import tifffile

    from microtex.io import decode

    monkeypatch.setitem(decode._SAID, "scaled", False)
    data = np.random.default_rng(3).uniform(-3.0, 40.0, (24, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    with caplog.at_level(logging.INFO, logger="microtex.io"):
        from_array = io.as_float_image(data)
        from_file, info = io.read_image_with_info(tmp_path / "f.tif")
    np.testing.assert_array_equal(from_array, from_file)
    assert from_array.min() == 0.0 and from_array.max() == 1.0
    assert info.scaled_from == (float(data.min()), float(data.max()))
    levels = [r.levelname for r in caplog.records if "min-max scaled" in r.getMessage()]
    assert levels == ["WARNING", "INFO"]  # said once loudly, then for -v
    assert "f.tif: values in [-2.9" in caplog.text
    # featurizing the array and the file gives the same rows
    from microtex import featurize

    rows = featurize(data[None], taps="raw", pool="mean,max,gram").features
    np.testing.assert_array_equal(
        rows, featurize(tmp_path / "f.tif", taps="raw", pool="mean,max,gram").features
    )
    inside = np.float64([[0.0, 0.5], [0.25, 1.0]])
    assert io.as_float_image(inside).tolist() == inside.tolist()
    assert io.read_image_with_info(save(np.zeros((2, 2), np.uint8), tmp_path / "z.png"))[
        1].scaled_from is None  # fmt: skip


def test_encode_png_is_what_decode_bytes_reads_back():
    import numpy as np
    import pytest

    from microtex.io.decode import decode_bytes, encode_png

    image = np.linspace(0, 1, 12).reshape(3, 4)
    decoded, _ = decode_bytes(encode_png(image))
    np.testing.assert_allclose(decoded, np.round(image * 255) / 255, atol=1e-7)
    with pytest.raises(ValueError, match=r"finite \(h, w\) image, got shape \(2, 2, 2\)"):
        encode_png(np.zeros((2, 2, 2)))
