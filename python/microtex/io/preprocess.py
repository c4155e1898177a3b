"""Pre-processing float gray images: crop the info band, resize, cut into patches."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from microtex._validation import (
    CropBottom,
    Size,
    check_crop_bottom,
    check_positive_int,
    check_size,
)
from microtex.errors import ImageTooSmallError
from microtex.io.decode import as_float_image
from microtex.io.infoband import detect_info_band

__all__ = ["prepare_image", "resize_image", "tile"]

logger = logging.getLogger("microtex.io")


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
    size = check_size(size)
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
    patch_size = check_positive_int("patch_size", patch_size, what="a positive int")
    if stride is None:
        stride = patch_size
    stride = check_positive_int("stride", stride, what="a positive int")
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
    crop_bottom = check_crop_bottom(crop_bottom)
    size = check_size(size)
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
            raise ImageTooSmallError(
                f"crop_bottom={rows} must be smaller than the image height {height} of {name}"
            )
    if rows:
        image = image[: height - rows]
    if size is not None:
        image = resize_image(image, size)
    return np.ascontiguousarray(image, dtype=np.float32), int(rows)
