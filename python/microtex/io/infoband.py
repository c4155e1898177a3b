"""Finding the instrument info band (scale bar, magnification) at the bottom of a micrograph.

:func:`detect_info_band` is what ``crop_bottom="auto"`` uses; the rule and its
tuning constants are below, next to each other.
"""

from __future__ import annotations

import numpy as np

from microtex.io.decode import as_float_image

__all__ = ["detect_info_band"]

# Tuning of detect_info_band; see its docstring.
_BAND_EXTREME = 0.1  # a pixel is "extreme" when within this of black or white
_BAND_ROW_EXTREME_FRACTION = 0.75  # clear band row: at least this fraction of extreme pixels ...
_BAND_ROW_STD = 0.02  # ... or a row standard deviation at most this
_BAND_ROW_WEAK_FRACTION = 0.5  # band-like row (e.g. blurred text): at least this fraction
_BAND_MAX_GAP = 2  # other rows tolerated inside the band and below it (at least; 0.4 % of height)
_BAND_MIN_ROWS = 3  # fewer band rows than this is no band
_BAND_BODY_ROWS = 8  # rows above the band compared with it (at least; 2 % of height)
_BAND_BODY_FRACTION = 0.2  # at most this fraction of those may look like band rows
_BAND_CONTRAST = 0.5  # band colour must cover this much more of the band than of the body


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

    Validation (``tests/io/test_infoband.py``): it finds the bands of the 42
    MetalDAM SEM images to within a row and crops none of the 21 AMPIS images.

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
