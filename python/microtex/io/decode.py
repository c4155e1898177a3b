"""Decoding image files to one float32 gray channel: the one way pixels enter microtex.

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
  follows the one float policy of microtex, the same for files and arrays
  (:func:`scale_float`): kept as it is when all values lie in ``[0, 1]``,
  otherwise min-max scaled to ``[0, 1]`` with a warning on the ``"microtex.io"``
  logger (a constant image outside ``[0, 1]`` becomes all zeros); the range it
  had is recorded in ``ImageInfo.scaled_from``. NaN or infinite values are an
  error.
* TIFF ``MinIsWhite`` data is inverted so that 1.0 is always white.

Decoding uses Pillow for PNG, JPEG and BMP and `tifffile` for TIFF (first page
of a multi-page file). A TIFF that tifffile cannot decode without the optional
``imagecodecs`` package (e.g. LZW or JPEG compression) is decoded by Pillow
instead; Pillow reduces 16-bit colour to 8 bits per channel. An EXIF
orientation tag (files Pillow decodes) is applied, so that the image is the
right way up as a viewer shows it (orientation matters for anisotropic
textures); the tag is recorded in ``ImageInfo.exif_orientation``.

Limits, the same for every decoder and checked from the header before anything
is decoded: ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (above it a
``DecompressionBombWarning`` is logged, above twice it the file is refused) and
`MAX_DECODED_BYTES` bytes of decoded samples (all channels, first page).

A file that cannot be decoded raises `microtex.errors.ImageReadError`, never a
decoder's own exception; running out of memory while decoding one is such an
error too, so that a batch reports the file and goes on.
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left False (its default) and every
image is fully decoded inside the guarded region, so a truncated file is an
error, not a partly gray image. Warnings that decoders
emit while reading a file (e.g. Pillow's ``DecompressionBombWarning`` for very
large mosaics) are logged to the ``"microtex.io"`` logger instead of being
raised as warnings; Pillow's ``DecompressionBombError`` (above twice
``PIL.Image.MAX_IMAGE_PIXELS``) is still a read error.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from microtex.errors import ImageReadError

__all__ = ["MAX_DECODED_BYTES", "as_float_image", "decode_bytes", "decode_file", "encode_png",
           "scale_float"]

logger = logging.getLogger("microtex.io")

#: Most bytes a file's decoded samples may take (checked from its header).
MAX_DECODED_BYTES = 2**31
_SAID = {"scaled": False}

# Pillow format names accepted (MPO is the multi-picture flavour of JPEG).
_PILLOW_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# ITU-R 601-2 luma weights, as in Pillow's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)
_EXIF_ORIENTATION = 0x0112  # 1 as stored; 2-8 mirrored and/or rotated


def scale_float(data, name: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """microtex's one policy for float data, the same for arrays and files.

    Values all in ``[0, 1]`` are kept as they are; otherwise the image is
    min-max scaled to ``[0, 1]`` (a constant one becomes zeros), and a warning
    naming ``name`` and the range is logged on ``"microtex.io"`` (the first
    time in a process; later ones at INFO, shown by ``microtex -v``).

    Returns
    -------
    image : numpy.ndarray
        float32, the shape of ``data``.
    scaled_from : (float, float) or None
        The range that was scaled to ``[0, 1]``, or None when kept.

    Raises
    ------
    ValueError
        ``data`` holds NaN or infinite values (the message counts them).

    Examples
    --------
    >>> scale_float(np.array([[0.0, 0.5]]), "x")[1] is None
    True
    >>> scale_float(np.array([[-1.0, 3.0]]), "x")
    (array([[0., 1.]], dtype=float32), (-1.0, 3.0))
    """
    data = np.asarray(data)
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise ValueError(
            f"{name} holds non-finite values: {n_nan} NaN and {n_inf} infinite "
            f"in shape {data.shape}"
        )
    low, high = float(data.min()), float(data.max())
    if low >= 0.0 and high <= 1.0:
        return data.astype(np.float32, copy=False), None
    level = logging.INFO if _SAID["scaled"] else logging.WARNING
    _SAID["scaled"] = True
    logger.log(
        level,
        "%s: values in [%g, %g], outside [0, 1], were min-max scaled to [0, 1]", name, low, high,
    )
    if high == low:
        return np.zeros(data.shape, np.float32), (low, high)
    wide = data.astype(np.float64)
    return ((wide - low) / (high - low)).astype(np.float32), (low, high)


def as_float_image(array, name: str = "array") -> np.ndarray:
    """Validate a 2-D image array and return it as float32 in microtex's convention.

    Parameters
    ----------
    array : array_like, shape (height, width)
        ``uint8`` (divided by 255), ``uint16`` (divided by 65535), ``bool``
        (0.0 / 1.0) or floating point (:func:`scale_float`: kept when in
        ``[0, 1]``, else min-max scaled to it with a warning, as for a float TIFF).
    name : str, optional
        What the messages call the array.

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
    elif dtype == np.bool_:
        out = array.astype(np.float32)
    else:
        out = scale_float(array, name)[0]
    return np.ascontiguousarray(out)

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


def _scale_other(data: np.ndarray, path, meta: dict) -> np.ndarray:
    """Float or unusual integer data: the float policy (`scale_float`); the range in ``meta``."""
    try:
        gray, meta["scaled_from"] = scale_float(data, str(path))
    except ValueError:
        raise ImageReadError(path, "image holds NaN or infinite values") from None
    return gray


def _pillow_to_gray(im: Image.Image, fmt: str, path, meta: dict) -> tuple[np.ndarray, int]:
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
        return _scale_other(np.asarray(im), path, meta), 32
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return _luminance(np.asarray(im)) / np.float32(255), 8


def _decode_pillow(path, source=None) -> tuple[np.ndarray, dict]:
    """Decode with Pillow; ``source`` (a file object) if given, else ``path``, which names it."""
    with Image.open(path if source is None else _rewound(source)) as im:
        fmt = _PILLOW_FORMATS.get(im.format or "")
        if fmt is None:
            raise ImageReadError(
                path, f"unsupported format {im.format}; supported: PNG, JPEG, TIFF, BMP"
            )
        n_frames = int(getattr(im, "n_frames", 1))
        # Image.open applied the pixel limit; the bytes of the decoded samples:
        _check_decoded_bytes(path, im.size, _pillow_sample_bytes(im.mode))
        im.load()  # decode everything now: a truncated file fails here
        mode = im.mode
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
        upright = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im
        extra: dict = {}
        gray, bits = _pillow_to_gray(upright, fmt, path, extra)
    meta = {"format": fmt, "mode": mode, "bit_depth": bits, "n_frames": n_frames}
    return gray, {**meta, "exif_orientation": orientation, **extra}


def _pillow_sample_bytes(mode: str) -> float:
    """Bytes per pixel of a decoded Pillow image of ``mode`` (all bands)."""
    if mode == "1":
        return 1 / 8
    if mode.startswith("I;16"):
        return 2
    if mode in ("I", "F"):
        return 4
    try:
        return Image.getmodebands(mode)
    except (KeyError, ValueError):  # a mode Pillow does not list: count 4 bytes
        return 4


def _check_decoded_bytes(path, size: tuple[int, int], bytes_per_pixel: float) -> None:
    """Refuse a file whose decoded samples would take more than `MAX_DECODED_BYTES`."""
    width, height = size
    need = int(width * height * bytes_per_pixel)
    if MAX_DECODED_BYTES and need > MAX_DECODED_BYTES:
        raise ImageReadError(
            path,
            f"decoding {width}x{height} pixels would take {need:,} bytes, more than the "
            f"limit of {MAX_DECODED_BYTES:,} (microtex.io.decode.MAX_DECODED_BYTES)",
        )


def _check_pixel_count(path, pixels: int) -> None:
    """Pillow's decompression-bomb rule, for decoders that do not apply it (tifffile).

    Checked from the header, before anything is decoded: above
    ``PIL.Image.MAX_IMAGE_PIXELS`` a DecompressionBombWarning (logged), above
    twice that an ImageReadError.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if not limit or pixels <= limit:
        return
    message = (
        f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be "
        "decompression bomb DOS attack."
    )
    if pixels > 2 * limit:
        raise ImageReadError(
            path, f"DecompressionBombError: {message} (PIL.Image.MAX_IMAGE_PIXELS sets the limit)"
        )
    warnings.warn(message, Image.DecompressionBombWarning, stacklevel=2)


def _rewound(source):
    source.seek(0)
    return source


def _decode_tiff(path, source=None) -> tuple[np.ndarray, dict]:
    import tifffile

    photometric_kind = tifffile.PHOTOMETRIC
    with tifffile.TiffFile(path if source is None else _rewound(source)) as tif:
        n_frames = len(tif.pages)
        if n_frames == 0:
            raise ImageReadError(path, "TIFF file has no readable page (truncated or corrupt)")
        page = tif.pages[0]
        width, length = int(page.imagewidth), int(page.imagelength)
        _check_pixel_count(path, width * length)
        _check_decoded_bytes(path, (width, length), page.nbytes / max(1, width * length))
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
    extra: dict = {}
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
            gray = _scale_other(np.asarray(data), path, extra)
        if photometric == photometric_kind.MINISWHITE:
            gray = 1.0 - gray
    return gray.astype(np.float32, copy=False), {
        "format": "TIFF",
        "mode": mode,
        "bit_depth": bits,
        "n_frames": n_frames,
        **extra,
    }


def decode_file(path: Path) -> tuple[np.ndarray, dict]:
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

    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open the file ({exc.strerror or exc})") from exc
    return _decode(path, magic)


def decode_bytes(data: bytes, name: str = "upload") -> tuple[np.ndarray, dict]:
    """Decode an image held in memory (an upload), as :func:`decode_file` decodes a file.

    The same formats, conversions and limits; errors are ImageReadErrors that
    call the image ``name``.
    """
    if not data:
        raise ImageReadError(name, "file is empty (0 bytes)")
    import io

    return _decode(name, bytes(data[:4]), io.BytesIO(data))


def encode_png(image) -> bytes:
    """An image in [0, 1] ``(h, w)`` as the bytes of an 8-bit gray PNG (values rounded).

    What microtex writes and answers for generated or synthetic images;
    :func:`decode_bytes` reads it back (to the nearest 1/255).

    Examples
    --------
    >>> data = encode_png(np.array([[0.0, 0.5, 1.0]]))
    >>> (decode_bytes(data)[0] * 255).round().tolist()
    [[0.0, 128.0, 255.0]]
    """
    import io

    from PIL import Image

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ValueError(f"encode_png takes a finite (h, w) image, got shape {image.shape}")
    buffer = io.BytesIO()
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(path, magic: bytes, source=None) -> tuple[np.ndarray, dict]:
    """Decode a file (``path``) or a file object (``source``, called ``path``)."""
    # Decoder warnings are logged, not raised (catch_warnings swaps the global
    # filters, so a warning raised meanwhile by another thread may land here too).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if magic in _TIFF_MAGIC:
                try:
                    gray, meta = _decode_tiff(path, source)
                except _UsePillow as why:
                    logger.debug("tifffile cannot decode %s (%s); using Pillow", path, why)
                    gray, meta = _decode_pillow(path, source)
            else:
                gray, meta = _decode_pillow(path, source)
        except ImageReadError:
            raise
        except MemoryError:  # this file's fault as far as a batch is concerned
            raise ImageReadError(path, "out of memory while decoding the image") from None
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
