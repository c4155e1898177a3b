"""Paths to images: files, folders, lazy or stacked batches; each decoded, cropped, resized."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from microtex._validation import CropBottom, Size, check_crop_bottom, check_on_error, check_size
from microtex.errors import ImageReadError, ImageTooSmallError
from microtex.io.decode import decode_file
from microtex.io.preprocess import prepare_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageBatch",
    "ImageInfo",
    "ReadFailure",
    "SKIPPED_FILE",
    "expand_paths",
    "iter_images",
    "read_image",
    "read_image_with_info",
    "read_images",
    "report_skip",
]

logger = logging.getLogger("microtex.io")

PathLike = str | os.PathLike

#: File extensions (lower case) that `expand_paths` picks up in a directory.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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
    exif_orientation : int
        The file's EXIF orientation tag (1: as stored; 2-8 were applied).
    scaled_from : (float, float) or None
        For float (or signed, 32-bit) data outside ``[0, 1]``: the range that
        was min-max scaled to ``[0, 1]`` (:func:`microtex.io.decode.scale_float`).
    """

    path: str
    format: str
    mode: str
    bit_depth: int
    n_frames: int
    original_shape: tuple[int, int]
    rows_cropped: int
    shape: tuple[int, int]
    exif_orientation: int = 1
    scaled_from: tuple[float, float] | None = None


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


def _read(path: PathLike, crop_bottom: CropBottom, size: Size) -> tuple[np.ndarray, ImageInfo]:
    path = Path(path)
    gray, meta = decode_file(path)
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
    crop_bottom = check_crop_bottom(crop_bottom)
    size = check_size(size)
    return _read(path, crop_bottom, size)


def read_image(path: PathLike, *, crop_bottom: CropBottom = None, size: Size = None) -> np.ndarray:
    """Read one micrograph as a float32 gray image in ``[0, 1]``.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG, JPEG, TIFF or BMP file (recognized by content, not by name).
        See :mod:`microtex.io.decode` for how bit depths and colour are converted.
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
    left out), sorted by file name; a link among them is kept even when it is
    broken, so that reading reports it. Any other path is kept as given, whatever
    its extension, even if it does not exist: reading it decides.

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
                    # a broken link is kept, so that reading reports it
                    and (child.is_file() or child.is_symlink())
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
        A file too small for the options (``crop_bottom`` not smaller than its
        height) is skipped the same way; invalid options raise in both modes.
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
    crop_bottom = check_crop_bottom(crop_bottom)
    size = check_size(size)
    on_error = check_on_error(on_error)
    files = expand_paths(paths)
    return _iter_files(files, crop_bottom, size, on_error, failures)


#: Attribute marking the log record of a skipped file: batch commands report the
#: files in ``failures`` themselves and leave such records out of their log.
SKIPPED_FILE = "skipped_file"


def report_skip(failures: list | None, path, reason: str, log: logging.Logger = logger) -> None:
    """Log a file a batch skips (a warning marked `SKIPPED_FILE`) and add it to ``failures``."""
    log.warning("skipping %s: %s", path, reason, extra={SKIPPED_FILE: True})
    if failures is not None:
        failures.append(ReadFailure(path, reason))


def _iter_files(files, crop_bottom, size, on_error, failures):
    for path in files:
        try:
            image, info = _read(path, crop_bottom, size)
        except (ImageReadError, ImageTooSmallError) as exc:
            if on_error == "raise":
                raise
            report_skip(failures, path, getattr(exc, "reason", str(exc)))
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
        shape = check_size(size) if isinstance(size, (tuple, list)) else (0, 0)
        stacked = np.zeros((0, *shape), np.float32)
    return ImageBatch(stacked, read_paths, infos, failures)
