"""Reading micrographs: the one way images enter microtex.

Every file becomes one float32 channel in ``[0, 1]``, shape ``(height, width)``,
C-contiguous:

* 8-bit data is divided by 255, 16-bit data by 65535 (TIFF with another
  unsigned ``BitsPerSample`` ``b`` of at most 16 bits, e.g. packed 12-bit, by
  ``2**b - 1``); 1-bit (bilevel) data becomes 0.0 and 1.0.
* Colour (RGB, RGBA, palette, CMYK, ...) becomes luminance with the ITU-R 601-2
  weights of Pillow's ``"L"`` conversion, ``0.299 R + 0.587 G + 0.114 B``,
  computed in floating point so 16-bit colour keeps its precision. Files whose
  colour channels are all equal (grayscale saved as RGB or palette) give exactly
  the gray values. Alpha channels are ignored (not composited).
* Float data (and integer kinds other than those above, e.g. signed or 32-bit)
  is kept as it is when all values already lie in ``[0, 1]``; otherwise it is
  min-max scaled to ``[0, 1]`` (a constant image outside ``[0, 1]`` becomes all
  zeros). NaN or infinite values are a read error.
* TIFF ``MinIsWhite`` data is inverted so that 1.0 is always white.

Decoding uses Pillow for PNG, JPEG and BMP and `tifffile` for TIFF (first page
of a multi-page file). A TIFF that tifffile cannot decode without the optional
``imagecodecs`` package (e.g. LZW or JPEG compression) is decoded by Pillow
instead; Pillow reduces 16-bit colour to 8 bits per channel. EXIF orientation
tags are not applied: pixels are returned as stored.

A file that cannot be decoded raises `microtex.errors.ImageReadError`, never a
decoder's own exception. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left False
(its default) and every image is fully decoded inside the guarded region, so a
truncated file is an error, not a partly gray image. Warnings that decoders
emit while reading a file (e.g. Pillow's ``DecompressionBombWarning`` for very
large mosaics) are logged to the ``"microtex.io"`` logger instead of being
raised as warnings; Pillow's ``DecompressionBombError`` (above twice
``PIL.Image.MAX_IMAGE_PIXELS``) is still a read error.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from microtex.errors import ImageReadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInfo",
    "ReadFailure",
    "ImageBatch",
    "read_image",
    "read_image_with_info",
    "as_float_image",
    "detect_info_band",
    "resize_image",
    "tile",
    "prepare_image",
    "expand_paths",
    "iter_images",
    "read_images",
]

logger = logging.getLogger("microtex.io")

PathLike = str | os.PathLike
CropBottom = None | int | Literal["auto"]
Size = None | int | tuple[int, int]

#: File extensions (lower case) that `expand_paths` picks up in a directory.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Pillow format names accepted (MPO is the multi-picture flavour of JPEG).
_PILLOW_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# ITU-R 601-2 luma weights, as in Pillow's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)

# Auto-crop (detect_info_band) tuning; see its docstring.
_BAND_EXTREME = 0.1  # a pixel is "extreme" when within this of black or white
_BAND_ROW_EXTREME_FRACTION = 0.75  # clear band row: at least this fraction of extreme pixels ...
_BAND_ROW_STD = 0.02  # ... or a row standard deviation at most this
_BAND_ROW_WEAK_FRACTION = 0.5  # band-like row (e.g. blurred text): at least this fraction
_BAND_MAX_GAP = 2  # other rows tolerated inside the band and below it (at least; 0.4 % of height)
_BAND_MIN_ROWS = 3  # fewer band rows than this is no band
_BAND_BODY_ROWS = 8  # rows above the band compared with it (at least; 2 % of height)
_BAND_BODY_FRACTION = 0.2  # at most this fraction of those may look like band rows
_BAND_CONTRAST = 0.5  # band colour must cover this much more of the band than of the body


@dataclass(frozen=True)
class ImageInfo:
    """What `read_image_with_info` learned about a file.

    Attributes
    ----------
    path : str
        The file read.
    format : str
        ``"PNG"``, ``"JPEG"``, ``"TIFF"`` or ``"BMP"``.
    mode : str
        Pixel layout as decoded: a Pillow mode (``"L"``, ``"RGB"``, ``"P"``,
        ``"I;16"``, ...) or, for TIFF read by tifffile, ``"<photometric>
        <dtype>"`` such as ``"minisblack uint16"``.
    bit_depth : int
        Bits per sample of the decoded data (1, 8, 16, 32, 64).
    n_frames : int
        Pages or frames in the file; only the first is read.
    original_shape : tuple of int
        ``(height, width)`` as decoded, before cropping and resizing.
    rows_cropped : int
        Rows removed at the bottom (by an int ``crop_bottom`` or by auto-crop).
    shape : tuple of int
        ``(height, width)`` of the returned image.
    """

    path: str
    format: str
    mode: str
    bit_depth: int
    n_frames: int
    original_shape: tuple[int, int]
    rows_cropped: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class ReadFailure:
    """A file that a batch skipped (``on_error="skip"``), with the reason."""

    path: Path
    reason: str


class ImageBatch(NamedTuple):
    """Result of `read_images`: images ``(n_images, height, width)`` and what goes with them."""

    images: np.ndarray
    paths: list[Path]
    infos: list[ImageInfo]
    failures: list[ReadFailure]


# --------------------------------------------------------------------------- validation


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_crop_bottom(crop_bottom) -> CropBottom:
    if crop_bottom is None or (isinstance(crop_bottom, str) and crop_bottom == "auto"):
        return crop_bottom
    if _is_int(crop_bottom) and crop_bottom >= 0:
        return int(crop_bottom)
    raise ValueError(
        f"crop_bottom must be None, 'auto' or a non-negative number of rows, got {crop_bottom!r}"
    )


def _check_size(size) -> Size:
    if size is None:
        return None
    if _is_int(size) and size > 0:
        return int(size)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(_is_int(n) and n > 0 for n in size)
    ):
        return (int(size[0]), int(size[1]))
    raise ValueError(
        "size must be None, a positive int (short side) or a (height, width) pair of "
        f"positive ints, got {size!r}"
    )


def _check_on_error(on_error) -> str:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def as_float_image(array) -> np.ndarray:
    """Validate a 2-D image array and return it as float32 in microtex's convention.

    Parameters
    ----------
    array : array_like, shape (height, width)
        ``uint8`` (divided by 255), ``uint16`` (divided by 65535), ``bool``
        (0.0 / 1.0) or floating point (values kept as they are, not rescaled or
        clipped; microtex expects ``[0, 1]``).

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, shape ``(height, width)``. A float32 C-contiguous
        input is returned as is (no copy).

    Raises
    ------
    TypeError
        For any other dtype (signed or 32/64-bit integers, complex, object, ...).
    ValueError
        If the array is not 2-D, is empty, or holds NaN or infinite values.

    Examples
    --------
    >>> import numpy as np
    >>> as_float_image(np.array([[0, 51], [255, 102]], dtype=np.uint8))
    array([[0. , 0.2],
           [1. , 0.4]], dtype=float32)
    """
    array = np.asarray(array)
    dtype = array.dtype
    if dtype == np.uint8:
        scale = 255.0
    elif dtype == np.uint16:
        scale = 65535.0
    elif dtype == np.bool_ or dtype.kind == "f":
        scale = None
    else:
        raise TypeError(
            f"unsupported image dtype {dtype}; expected uint8, uint16, bool or floating point"
        )
    if array.ndim != 2:
        raise ValueError(
            f"expected a 2-D (height, width) image, got an array of shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"image is empty: shape {array.shape}")
    if scale is not None:
        out = array.astype(np.float32) / np.float32(scale)
    else:
        out = array.astype(np.float32, copy=False)
        if dtype.kind == "f" and not np.isfinite(out).all():
            n_nan = int(np.isnan(out).sum())
            n_inf = int(np.isinf(out).sum())
            raise ValueError(
                f"image holds non-finite values: {n_nan} NaN and {n_inf} infinite "
                f"in shape {array.shape}"
            )
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- decoding


class _UsePillow(Exception):
    """tifffile cannot handle this TIFF; let Pillow try."""


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Luma of ``(..., >=3)`` channel-last data, float32 in the data's units."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return r.astype(np.float32)
    out = r.astype(np.float32) * np.float32(_LUMA[0])
    out += g.astype(np.float32) * np.float32(_LUMA[1])
    out += b.astype(np.float32) * np.float32(_LUMA[2])
    return out


def _scale_other(data: np.ndarray, path) -> np.ndarray:
    """Float or unusual integer data: keep if in [0, 1], else min-max scale."""
    data = np.asarray(data, dtype=np.float64)
    if not np.isfinite(data).all():
        raise ImageReadError(path, "image holds NaN or infinite values")
    low, high = float(data.min()), float(data.max())
    if low >= 0.0 and high <= 1.0:
        return data.astype(np.float32)
    if high == low:
        return np.zeros(data.shape, np.float32)
    return ((data - low) / (high - low)).astype(np.float32)


def _pillow_to_gray(im: Image.Image, fmt: str, path) -> tuple[np.ndarray, int]:
    """Decoded Pillow image -> (float32 gray in [0, 1], bits per sample)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32), 1
    if mode == "L":
        return np.asarray(im).astype(np.float32) / np.float32(255), 8
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0)).astype(np.float32) / np.float32(255), 8
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.float32) / np.float32(65535), 16
    if mode == "I" and fmt == "PNG":  # 16-bit gray PNG in some Pillow versions
        return np.asarray(im).astype(np.float32) / np.float32(65535), 16
    if mode in ("I", "F"):
        return _scale_other(np.asarray(im), path), 32
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return _luminance(np.asarray(im)) / np.float32(255), 8


def _decode_pillow(path: Path) -> tuple[np.ndarray, dict]:
    with Image.open(path) as im:
        fmt = _PILLOW_FORMATS.get(im.format or "")
        if fmt is None:
            raise ImageReadError(
                path, f"unsupported format {im.format}; supported: PNG, JPEG, TIFF, BMP"
            )
        n_frames = int(getattr(im, "n_frames", 1))
        im.load()  # decode everything now: a truncated file fails here
        mode = im.mode
        gray, bits = _pillow_to_gray(im, fmt, path)
    return gray, {"format": fmt, "mode": mode, "bit_depth": bits, "n_frames": n_frames}


def _decode_tiff(path: Path) -> tuple[np.ndarray, dict]:
    import tifffile

    photometric_kind = tifffile.PHOTOMETRIC
    with tifffile.TiffFile(path) as tif:
        n_frames = len(tif.pages)
        if n_frames == 0:
            raise ImageReadError(path, "TIFF file has no readable page (truncated or corrupt)")
        page = tif.pages[0]
        photometric = page.photometric
        if photometric not in (
            photometric_kind.MINISBLACK,
            photometric_kind.MINISWHITE,
            photometric_kind.RGB,
            photometric_kind.PALETTE,
        ):
            raise _UsePillow(f"photometric {photometric!r}")
        try:
            data = page.asarray()
        except ValueError as exc:
            if "imagecodecs" in str(exc):
                raise _UsePillow(str(exc)) from exc
            raise
        axes = page.axes
        colormap = page.colormap if photometric == photometric_kind.PALETTE else None
        bits = int(page.bitspersample)

    if "S" in axes:
        data = np.moveaxis(data, axes.index("S"), -1)
    n_sample_axes = 1 if "S" in axes else 0
    while data.ndim > 2 + n_sample_axes and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2 + n_sample_axes:
        raise ImageReadError(path, f"unsupported TIFF layout: axes {axes!r}, shape {data.shape}")

    name = photometric.name.lower()
    mode = f"{name} {data.dtype}"
    if photometric == photometric_kind.PALETTE:
        if colormap is None:
            raise ImageReadError(path, "palette TIFF without a colour map")
        index = data[..., 0] if n_sample_axes else data
        rgb = np.moveaxis(colormap[:, index], 0, -1)
        scale = 65535.0 if colormap.dtype == np.uint16 else float(np.iinfo(colormap.dtype).max)
        gray = _luminance(rgb) / np.float32(scale)
    else:
        source_dtype = data.dtype
        if photometric == photometric_kind.RGB:
            if not n_sample_axes or data.shape[-1] < 3:
                raise ImageReadError(path, f"RGB TIFF with shape {data.shape}")
            data = _luminance(data)  # float32, in the data's units; alpha ignored
        elif n_sample_axes:
            data = data[..., 0]  # gray + alpha / extra samples: keep gray
        if source_dtype == np.bool_:
            gray = np.asarray(data, dtype=np.float32)
        elif source_dtype.kind == "u" and bits <= 16:
            gray = np.asarray(data, dtype=np.float32) / np.float32(2**bits - 1)
        else:
            gray = _scale_other(np.asarray(data), path)
        if photometric == photometric_kind.MINISWHITE:
            gray = 1.0 - gray
    return gray.astype(np.float32, copy=False), {
        "format": "TIFF",
        "mode": mode,
        "bit_depth": bits,
        "n_frames": n_frames,
    }


def _decode(path: Path) -> tuple[np.ndarray, dict]:
    """Decode ``path`` to float32 gray; every failure becomes ImageReadError."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access the file ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if stat.st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")

    # Decoder warnings are logged, not raised (catch_warnings swaps the global
    # filters, so a warning raised meanwhile by another thread may land here too).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with open(path, "rb") as handle:
                magic = handle.read(4)
            if magic in _TIFF_MAGIC:
                try:
                    gray, meta = _decode_tiff(path)
                except _UsePillow as why:
                    logger.debug("tifffile cannot decode %s (%s); using Pillow", path, why)
                    gray, meta = _decode_pillow(path)
            else:
                gray, meta = _decode_pillow(path)
        except (ImageReadError, MemoryError):
            raise
        except Image.UnidentifiedImageError as exc:
            raise ImageReadError(
                path, "not a PNG, JPEG, TIFF or BMP image (content not recognized)"
            ) from exc
        except Exception as exc:  # any decoder failure: corrupt, truncated, not an image
            raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
        finally:
            for item in caught:
                bomb = issubclass(item.category, Image.DecompressionBombWarning)
                logger.log(
                    logging.DEBUG if bomb else logging.WARNING,
                    "while decoding %s: %s: %s",
                    path,
                    item.category.__name__,
                    item.message,
                )

    if gray.ndim != 2 or gray.size == 0:
        raise ImageReadError(path, f"image has no pixels (shape {gray.shape})")
    return np.ascontiguousarray(gray, dtype=np.float32), meta


# --------------------------------------------------------------------------- transforms


def detect_info_band(image, *, max_fraction: float = 0.35) -> int:
    """Number of rows of an instrument info band at the bottom of an image (0 if none).

    SEM info bands (scale bar, magnification, voltage) are a strip of uniform
    black or white with text of the other colour, often bordered by lines. A
    pixel is *extreme* when it lies within 0.1 of black or white. The rule:

    1. A row is *clearly band* when at least 75 % of its pixels are extreme or
       its standard deviation is at most 0.02 (a uniform strip of any gray);
       it is *band-like* when at least 50 % are extreme (text blurred by
       downsampling) or it is clearly band.
    2. From the bottom row upwards band-like rows are collected, tolerating
       runs of up to 2 other rows (or 0.4 % of the height if more; e.g. a stray
       line of image data below the band). The band starts at the highest
       band-like row before a longer interruption and runs to the last row.
    3. It is accepted only if it holds at least 3 clearly-band rows, is at most
       ``max_fraction`` of the height, and differs sharply from the image body
       just above it (8 rows, or 2 % of the height if more): at most 20 % of
       those rows are band-like, and the band's colour (the median of the band)
       covers, within 0.1, a fraction of the band's pixels at least 0.5 larger
       than of the body's. A binary, very dark or vertically shaded image,
       whose body resembles its bottom rows, is therefore not cropped; the
       price is that a black band may be missed above a body of which more
       than about a third is near-black background.

    On the 42 MetalDAM SEM images this finds the 50-row (768-row images) and
    64-row (960-row images) bands exactly (within a row after resizing); it crops none
    of the 21 AMPIS powder and spheroidite images.

    Parameters
    ----------
    image : array_like, shape (height, width)
        Gray image as accepted by `as_float_image` (values in ``[0, 1]``).
    max_fraction : float, optional
        Largest band height as a fraction of the image height.

    Returns
    -------
    int
        Rows to remove from the bottom.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> body = rng.uniform(0.2, 0.8, size=(60, 80))
    >>> band = np.ones((12, 80)); band[4:8, 10:30] = 0.0  # white band, black "text"
    >>> detect_info_band(np.vstack([body, band]))
    12
    >>> detect_info_band(body)
    0
    """
    image = as_float_image(image)
    if not 0.0 < max_fraction < 1.0:
        raise ValueError(f"max_fraction must lie in (0, 1), got {max_fraction!r}")
    height = image.shape[0]
    limit = int(max_fraction * height)
    body_rows = max(_BAND_BODY_ROWS, round(0.02 * height))
    max_gap = max(_BAND_MAX_GAP, round(0.004 * height))
    if limit < _BAND_MIN_ROWS or height - limit < 4:
        return 0
    start = max(0, height - limit - body_rows)
    region = image[start:]
    extreme = (np.abs(region - np.float32(0.5)) >= np.float32(0.5 - _BAND_EXTREME)).mean(axis=1)
    flat = region.std(axis=1) <= _BAND_ROW_STD
    clear = (extreme >= _BAND_ROW_EXTREME_FRACTION) | flat
    band_like = (extreme >= _BAND_ROW_WEAK_FRACTION) | flat

    top, gap = height, 0
    for row in range(height - 1, height - 1 - limit, -1):
        if band_like[row - start]:
            top, gap = row, 0
        else:
            gap += 1
            if gap > max_gap:
                break
    else:
        return 0  # band-like all the way up to the limit: no distinct band
    if top == height or clear[top - start :].sum() < _BAND_MIN_ROWS:
        return 0
    body_start = max(0, top - body_rows)
    body_like = band_like[body_start - start : top - start]
    if body_like.size < 4 or body_like.mean() > _BAND_BODY_FRACTION:
        return 0
    band, body = image[top:], image[body_start:top]
    colour = np.float32(np.median(band))
    band_cover = float((np.abs(band - colour) <= _BAND_EXTREME).mean())
    body_cover = float((np.abs(body - colour) <= _BAND_EXTREME).mean())
    if band_cover - body_cover < _BAND_CONTRAST:
        return 0
    return height - top


def _resize_axis(im: Image.Image, width: int, height: int) -> Image.Image:
    if (width, height) == im.size:
        return im
    shrink = width < im.size[0] or height < im.size[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return im.resize((width, height), resample=method)


def _target_shape(shape: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple):
        return size
    height, width = shape
    if height <= width:
        return size, max(1, int(width * size / height + 0.5))
    return max(1, int(height * size / width + 0.5)), size


def resize_image(image, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a gray image; area averaging when shrinking, bilinear when enlarging.

    Each axis is resampled on its own with Pillow on an ``"F"`` (float32) image:
    an axis that shrinks uses ``Image.Resampling.BOX``, i.e. every output pixel is
    the mean of the input area it covers (fractional pixels weighted by overlap),
    which anti-aliases and keeps the mean; an axis that grows uses
    ``Image.Resampling.BILINEAR``. Both have non-negative weights, so values stay
    within the input's range and a constant image stays constant.

    Parameters
    ----------
    image : array_like, shape (height, width)
        Gray image as accepted by `as_float_image`.
    size : int or (int, int)
        An int resizes the short side to ``size`` keeping the aspect ratio (the
        long side rounded to the nearest pixel); a pair is ``(height, width)``.

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, the new shape.

    Examples
    --------
    >>> import numpy as np
    >>> checkerboard = (np.indices((8, 12)).sum(axis=0) % 2).astype(np.float32)
    >>> small = resize_image(checkerboard, 2)
    >>> small.shape, float(small.min()), float(small.max())
    ((2, 3), 0.5, 0.5)
    """
    image = as_float_image(image)
    size = _check_size(size)
    if size is None:
        raise ValueError("size must be a positive int or a (height, width) pair, got None")
    height, width = _target_shape(image.shape, size)
    if (height, width) == image.shape:
        return image.copy()
    im = Image.fromarray(image)
    im = _resize_axis(im, width, im.size[1])
    im = _resize_axis(im, width, height)
    out = np.array(im, dtype=np.float32)  # a writable C-contiguous copy
    # Weights are non-negative and sum to one; clip away float rounding beyond the range.
    return np.clip(out, image.min(), image.max(), out=out)


def tile(image, patch_size: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut an image into square patches on a regular grid.

    Patches start at rows and columns ``0, stride, 2 * stride, ...``; a patch
    that would run past the right or bottom edge is dropped, so up to
    ``patch_size - 1`` rows and columns at those edges may be left out (choose
    ``stride`` to cover them if needed).

    Parameters
    ----------
    image : array_like, shape (height, width)
        Any 2-D array; the dtype is kept.
    patch_size : int
        Side of the square patches, in pixels.
    stride : int, optional
        Step between patch origins; defaults to ``patch_size`` (no overlap).

    Returns
    -------
    patches : numpy.ndarray, shape (n_patches, patch_size, patch_size)
        C-contiguous copies, in row-major order of their origins.
    origins : numpy.ndarray of int64, shape (n_patches, 2)
        ``(row, column)`` of each patch's top-left pixel.

    Raises
    ------
    ValueError
        If the image is not 2-D, ``patch_size`` or ``stride`` is not a positive
        int, or the image is smaller than one patch.

    Examples
    --------
    >>> import numpy as np
    >>> patches, origins = tile(np.arange(30.0).reshape(5, 6), 2)
    >>> patches.shape
    (6, 2, 2)
    >>> origins[:4].tolist()
    [[0, 0], [0, 2], [0, 4], [2, 0]]
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(
            f"expected a 2-D (height, width) image, got an array of shape {image.shape}"
        )
    if not (_is_int(patch_size) and patch_size > 0):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if stride is None:
        stride = patch_size
    if not (_is_int(stride) and stride > 0):
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    height, width = image.shape
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"image of shape {image.shape} is smaller than one patch of patch_size={patch_size}"
        )
    rows = np.arange(0, height - patch_size + 1, stride)
    cols = np.arange(0, width - patch_size + 1, stride)
    windows = np.lib.stride_tricks.sliding_window_view(image, (patch_size, patch_size))
    patches = np.ascontiguousarray(windows[rows[:, None], cols[None, :]]).reshape(
        -1, patch_size, patch_size
    )
    origins = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
    return patches, origins.astype(np.int64)


# --------------------------------------------------------------------------- reading


def prepare_image(image, *, crop_bottom: CropBottom = None, size: Size = None, name: str = "image"):
    """Crop the bottom info band and resize a float image, as the readers do.

    Parameters
    ----------
    image : ndarray, shape (height, width)
        A float image in ``[0, 1]`` (e.g. from :func:`as_float_image`).
    crop_bottom : int, "auto" or None
        Rows to remove from the bottom; ``"auto"`` detects an info band
        (:func:`detect_info_band`) and logs the crop.
    size : int, (int, int) or None
        Short side, or fixed ``(height, width)``, as in :func:`resize_image`.
    name : str
        How messages refer to the image (a path, or ``"array[3]"``).

    Returns
    -------
    image : ndarray float32, C-contiguous
    rows_cropped : int

    Examples
    --------
    >>> import numpy as np
    >>> out, rows = prepare_image(np.ones((10, 8), np.float32), crop_bottom=2, size=4)
    >>> out.shape, rows
    ((4, 4), 2)
    """
    crop_bottom = _check_crop_bottom(crop_bottom)
    size = _check_size(size)
    height = image.shape[0]
    rows = 0
    if crop_bottom == "auto":
        rows = detect_info_band(image)
        if rows:
            logger.info(
                "auto-crop: removed a %d-row info band from the bottom of %s (height %d -> %d)",
                rows,
                name,
                height,
                height - rows,
            )
    elif crop_bottom is not None:
        rows = crop_bottom
        if rows >= height:
            raise ValueError(
                f"crop_bottom={rows} must be smaller than the image height {height} of {name}"
            )
    if rows:
        image = image[: height - rows]
    if size is not None:
        image = resize_image(image, size)
    return np.ascontiguousarray(image, dtype=np.float32), int(rows)


def _read(path: PathLike, crop_bottom: CropBottom, size: Size) -> tuple[np.ndarray, ImageInfo]:
    path = Path(path)
    gray, meta = _decode(path)
    original_shape = gray.shape
    gray, rows = prepare_image(gray, crop_bottom=crop_bottom, size=size, name=str(path))
    info = ImageInfo(
        path=str(path),
        original_shape=(int(original_shape[0]), int(original_shape[1])),
        rows_cropped=rows,
        shape=(int(gray.shape[0]), int(gray.shape[1])),
        **meta,
    )
    return gray, info


def read_image_with_info(
    path: PathLike, *, crop_bottom: CropBottom = None, size: Size = None
) -> tuple[np.ndarray, ImageInfo]:
    """Read one micrograph and say what was done to it.

    Same as `read_image`, plus an `ImageInfo` (format, mode, bit depth, original
    shape, rows cropped, final shape).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.full((4, 6), 51, np.uint8)).save(folder / "gray.png")
    >>> image, info = read_image_with_info(folder / "gray.png", crop_bottom=1)
    >>> info.format, info.mode, info.bit_depth, info.original_shape, info.shape
    ('PNG', 'L', 8, (4, 6), (3, 6))
    """
    crop_bottom = _check_crop_bottom(crop_bottom)
    size = _check_size(size)
    return _read(path, crop_bottom, size)


def read_image(path: PathLike, *, crop_bottom: CropBottom = None, size: Size = None) -> np.ndarray:
    """Read one micrograph as a float32 gray image in ``[0, 1]``.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG, JPEG, TIFF or BMP file (recognized by content, not by name).
        See the module docstring for how bit depths and colour are converted.
    crop_bottom : None, int or "auto", optional
        Remove rows at the bottom before resizing: an int removes that many
        (0 up to height - 1); ``"auto"`` removes an instrument info band found
        by `detect_info_band`, if any, and logs it on the ``"microtex.io"``
        logger (the count is in `read_image_with_info`'s ``rows_cropped``).
    size : None, int or (int, int), optional
        Resize (see `resize_image`): an int sets the short side keeping the
        aspect ratio, a pair sets ``(height, width)``.

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, shape ``(height, width)``, values in ``[0, 1]``.

    Raises
    ------
    microtex.errors.ImageReadError
        The file is missing, empty, truncated, corrupt, not an image or of an
        unsupported format.
    ValueError
        ``crop_bottom`` or ``size`` is not valid (including ``crop_bottom`` not
        smaller than the image height).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "gray.png"
    >>> Image.fromarray(np.full((4, 6), 51, np.uint8)).save(path)
    >>> image = read_image(path)
    >>> image.dtype, image.shape, round(float(image[0, 0]), 6)
    (dtype('float32'), (4, 6), 0.2)
    >>> read_image(path, size=2).shape
    (2, 3)
    """
    return read_image_with_info(path, crop_bottom=crop_bottom, size=size)[0]


def expand_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Turn files and directories into a list of image files.

    A directory contributes its image files (extensions in `IMAGE_EXTENSIONS`,
    any case; not recursive; hidden files, whose names start with ``"."``, are
    left out), sorted by file name. Any other path is kept as given, whatever its
    extension, even if it does not exist: reading it decides.

    Parameters
    ----------
    paths : str, os.PathLike or iterable of them
        One path or several.

    Returns
    -------
    list of pathlib.Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["b.TIF", "a.png", "notes.txt"]:
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in expand_paths(folder)]
    ['a.png', 'b.TIF']
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(
                (
                    child
                    for child in path.iterdir()
                    if child.suffix.lower() in IMAGE_EXTENSIONS
                    and not child.name.startswith(".")
                    and child.is_file()
                ),
                key=lambda child: child.name,
            )
            if not found:
                logger.warning(
                    "directory %s holds no image files (%s)", path, " ".join(IMAGE_EXTENSIONS)
                )
            out.extend(found)
        else:
            out.append(path)
    return out


def iter_images(
    paths: PathLike | Iterable[PathLike],
    *,
    crop_bottom: CropBottom = None,
    size: Size = None,
    on_error: Literal["raise", "skip"] = "raise",
    failures: list[ReadFailure] | None = None,
) -> Iterator[tuple[Path, np.ndarray, ImageInfo]]:
    """Read images one at a time, lazily.

    Options and paths are checked and directories expanded (`expand_paths`)
    when this is called; each file is decoded only when the iterator reaches it,
    so a caller can overlap decoding with other work.

    Parameters
    ----------
    paths : str, os.PathLike or iterable of them
        Files and/or directories.
    crop_bottom, size
        As in `read_image`, applied to every image.
    on_error : {"raise", "skip"}, optional
        ``"raise"``: an unreadable file raises `ImageReadError` naming it.
        ``"skip"``: it is logged as a warning (path and reason) on the
        ``"microtex.io"`` logger, appended to ``failures`` and left out.
        Invalid options (e.g. ``crop_bottom`` too large for an image) raise in
        both modes.
    failures : list, optional
        A list that receives a `ReadFailure` for every skipped file.

    Yields
    ------
    path : pathlib.Path
    image : numpy.ndarray
        As returned by `read_image`.
    info : ImageInfo

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a.png")
    >>> _ = (folder / "b.png").write_bytes(b"not an image")
    >>> failures = []
    >>> [p.name for p, image, info in iter_images(folder, on_error="skip", failures=failures)]
    ['a.png']
    >>> [f.path.name for f in failures]
    ['b.png']
    """
    crop_bottom = _check_crop_bottom(crop_bottom)
    size = _check_size(size)
    on_error = _check_on_error(on_error)
    files = expand_paths(paths)
    return _iter_files(files, crop_bottom, size, on_error, failures)


def _iter_files(files, crop_bottom, size, on_error, failures):
    for path in files:
        try:
            image, info = _read(path, crop_bottom, size)
        except ImageReadError as exc:
            if on_error == "raise":
                raise
            logger.warning("skipping %s: %s", path, exc.reason)
            if failures is not None:
                failures.append(ReadFailure(path, exc.reason))
            continue
        yield path, image, info


def read_images(
    paths: PathLike | Iterable[PathLike],
    *,
    crop_bottom: CropBottom = None,
    size: Size = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> ImageBatch:
    """Read several images into one ``(n_images, height, width)`` array.

    Parameters
    ----------
    paths, crop_bottom, size, on_error
        As in `iter_images`.

    Returns
    -------
    ImageBatch
        ``images`` (float32, C-contiguous; shape ``(0, h, w)`` when nothing was
        read, with ``(h, w)`` from ``size`` if it is a pair, else ``(0, 0)``),
        ``paths`` and ``infos`` of the images read, and ``failures`` (skipped
        files).

    Raises
    ------
    ValueError
        If the images do not all have the same shape (pass ``size=(height,
        width)`` to make them agree).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name, shape in [("a.png", (4, 6)), ("b.png", (8, 12))]:
    ...     Image.fromarray(np.zeros(shape, np.uint8)).save(folder / name)
    >>> batch = read_images(folder, size=(4, 6))
    >>> batch.images.shape, [p.name for p in batch.paths]
    ((2, 4, 6), ['a.png', 'b.png'])
    """
    failures: list[ReadFailure] = []
    images, read_paths, infos = [], [], []
    for path, image, info in iter_images(
        paths, crop_bottom=crop_bottom, size=size, on_error=on_error, failures=failures
    ):
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"images have different shapes: {read_paths[0]} is {images[0].shape}, "
                f"{path} is {image.shape}; pass size=(height, width) to resize them alike"
            )
        images.append(image)
        read_paths.append(path)
        infos.append(info)
    if images:
        stacked = np.stack(images)
    else:
        shape = _check_size(size) if isinstance(size, (tuple, list)) else (0, 0)
        stacked = np.zeros((0, *shape), np.float32)
    return ImageBatch(stacked, read_paths, infos, failures)
