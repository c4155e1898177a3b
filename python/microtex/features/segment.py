"""Gray micrographs to phases: Otsu's threshold, a binary phase indicator, k-phase one-hot.

Conventions (DESIGN.md §6): images are 2-D gray arrays as
:func:`microtex.io.as_float_image` accepts them (``uint8``, ``uint16``, ``bool``
or float in ``[0, 1]``; they are converted to float32 in ``[0, 1]`` first).
A pixel **brighter than the threshold** (``image > threshold``) belongs to the
*bright* phase, every other pixel to the *dark* phase; the bright (white) phase
is the phase of interest unless ``phase="dark"`` is asked for. :func:`as_phase` checks a
phase image given as such (bool, or numbers that are all 0 or 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from microtex._validation import check_choice, check_int, check_real, is_int
from microtex.io.decode import as_float_image

__all__ = ["PHASES", "as_phase", "one_hot", "otsu_threshold", "segment"]

#: Which side of the threshold is the phase of interest.
PHASES: tuple[str, ...] = ("bright", "dark")


def _check_threshold(threshold) -> str | float:
    """``"otsu"`` or a real number in ``[0, 1]`` (returned as float)."""
    if isinstance(threshold, str) and threshold == "otsu":
        return threshold
    return check_real("threshold", threshold, minimum=0.0, maximum=1.0,
                      what="'otsu' or a number in [0, 1]")  # fmt: skip


def _check_sigma(denoise) -> float | None:
    """None or a finite Gaussian sigma > 0 (pixels)."""
    return check_real("denoise", denoise, minimum=0.0, inclusive=False, allow_none=True,
                      what="a Gaussian sigma > 0 in pixels")  # fmt: skip


def otsu_threshold(image, bins: int = 256) -> float:
    """Otsu's threshold of a gray image: the split that maximizes the between-class variance.

    The values are counted in ``bins`` equal bins over ``[0, 1]`` (bin ``i``
    holds ``i / bins <= v < (i + 1) / bins``; 1.0 falls in the last bin). For
    each split between bin ``k`` and ``k + 1`` that leaves both classes
    non-empty, the between-class variance ``w0 * w1 * (m0 - m1)**2`` is
    computed from the pixel counts ``w`` and the class means ``m`` of the bin
    centres, and the first split with the largest variance is kept. With 256
    bins every level of an 8-bit image has a bin of its own and the centres are
    an affine function of the levels, which leaves the criterion's maximum
    where it is: the split is Otsu's exact one for 8-bit data.

    The value returned lies halfway between the brightest pixel of the dark
    class and the darkest pixel of the bright class (rounded in float32 towards
    the dark one), so that ``image > threshold`` gives exactly the bright class
    of that split, whether ``image`` is float32 or float64.

    Parameters
    ----------
    image : array_like, shape (height, width)
        Gray image (see :func:`microtex.io.as_float_image`).
    bins : int, optional
        Number of histogram bins, at least 2.

    Returns
    -------
    float
        The threshold; pixels ``> threshold`` are the bright phase.

    Raises
    ------
    ValueError
        The image is not 2-D, is empty, holds NaN or infinite values, or is
        constant (it has no split; pass a number as threshold instead).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[0.2, 0.2, 0.7], [0.2, 0.7, 0.7]])
    >>> t = otsu_threshold(image)
    >>> round(t, 6), int((image > t).sum())
    (0.45, 3)
    """
    bins = check_int("bins", bins, 2)
    values = as_float_image(image, "image")
    flat = values.ravel()
    # uint16 indices convert several times faster than intp ones
    kind = np.uint16 if bins <= np.iinfo(np.uint16).max else np.intp
    index = np.minimum((flat * np.float32(bins)).astype(kind), bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    sums = counts * (np.arange(bins) + 0.5) / bins  # each bin's pixels at its centre
    w0, s0 = np.cumsum(counts)[:-1], np.cumsum(sums)[:-1]
    w1, s1 = counts.sum() - w0, sums.sum() - s0
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        low, high = float(flat.min()), float(flat.max())
        if low == high:
            raise ValueError(
                f"Otsu's threshold is undefined for a constant image (every pixel is {low:.6g}); "
                "pass a number as threshold"
            )
        raise ValueError(
            f"Otsu's threshold is undefined: every pixel ({low:.6g} to {high:.6g}) falls in one "
            f"of the {bins} bins; pass more bins or a number as threshold"
        )
    # w0 w1 (m0 - m1)^2 = (s0 w1 - s1 w0)^2 / (w0 w1): the same value across empty bins
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(valid, (s0 * w1 - s1 * w0) ** 2 / (w0 * w1), -1.0)
    split = int(np.argmax(between))
    # the brightest dark pixel and the darkest bright one lie in the non-empty bins next to
    # the split: looking only there is exact and reads a few pixels, not the image
    filled = np.flatnonzero(counts)
    last_dark = filled[filled <= split][-1]
    first_bright = filled[filled > split][0]
    low = np.float32(flat[index == last_dark].max())
    high = np.float32(flat[index == first_bright].min())
    middle = np.float32(low + (high - low) / np.float32(2))
    return float(middle if low <= middle < high else low)


def _smooth(image, sigma: float) -> np.ndarray:
    """Gaussian blur (``scipy.ndimage.gaussian_filter``, mirrored edges) kept in ``[0, 1]``."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(np.asarray(image, np.float32), sigma, mode="reflect")
    return np.clip(blurred, 0.0, 1.0, out=blurred)


def segment(image, threshold: str | float = "otsu", *, phase: str = "bright",
            denoise: float | None = None, return_threshold: bool = False):  # fmt: skip
    """Binary phase indicator of a gray image.

    Parameters
    ----------
    image : array_like, shape (height, width)
        Gray image (see :func:`microtex.io.as_float_image`: ``uint8`` /
        ``uint16`` are scaled to ``[0, 1]``, ``bool`` is 0.0 / 1.0, float
        outside ``[0, 1]`` is min-max scaled with a logged warning).
    threshold : "otsu" or float in [0, 1], optional
        Pixels ``> threshold`` are the bright phase; ``"otsu"`` uses
        :func:`otsu_threshold` of the (denoised) image.
    phase : {"bright", "dark"}, optional
        The phase returned as True: ``image > threshold`` or its complement.
    denoise : float, optional
        Standard deviation (pixels) of a Gaussian blur applied before
        thresholding (and before Otsu), to keep single noisy pixels from
        becoming particles; None (default) leaves the image as it is.
    return_threshold : bool, optional
        Also return the threshold used (Otsu's, when asked for).

    Returns
    -------
    numpy.ndarray of bool, shape (height, width)
        True where the pixel belongs to ``phase``.
    float
        The threshold, only with ``return_threshold``.

    Raises
    ------
    ValueError
        The image is not 2-D, is empty or holds NaN; ``threshold`` is not
        ``"otsu"`` or a number in ``[0, 1]``; ``phase`` is unknown; ``denoise``
        is not a positive number; Otsu on a constant image.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    >>> segment(image).astype(int).tolist()
    [[0, 1], [1, 0]]
    >>> segment(image, 0.85, phase="dark").astype(int).tolist()
    [[1, 0], [1, 1]]
    """
    threshold = _check_threshold(threshold)
    check_choice("phase", phase, PHASES)
    sigma = _check_sigma(denoise)
    values = as_float_image(image, "image")
    if sigma is not None:
        values = _smooth(values, sigma)
    if threshold == "otsu":
        threshold = otsu_threshold(values)
    bright = values > np.float32(threshold)
    mask = bright if phase == "bright" else ~bright
    return (mask, threshold) if return_threshold else mask


def as_phase(phase, name: str = "phase image") -> np.ndarray:
    """A binary phase image as a bool array; anything else is a clear error.

    ``bool`` arrays are taken as they are; numeric arrays must hold only 0 and 1.

    Raises
    ------
    ValueError
        Not 2-D, empty, or values other than 0 and 1 (the message lists them).
    TypeError
        A dtype that is neither bool nor numeric.

    Examples
    --------
    >>> import numpy as np
    >>> as_phase(np.array([[0, 1]], np.uint8)).tolist()
    [[False, True]]
    >>> as_phase(np.array([[0, 255]], np.uint8))
    Traceback (most recent call last):
    ...
    ValueError: phase image must be binary (bool, or only 0 and 1); found values [255]
    """
    array = np.asarray(phase)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (height, width), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be bool or numeric 0/1, got dtype {array.dtype}")
    other = (array != 0) & (array != 1)
    if other.any():
        found = np.unique(array[other])
        shown = ", ".join(f"{v:g}" for v in found[:8].tolist())
        more = ", ..." if found.size > 8 else ""
        raise ValueError(
            f"{name} must be binary (bool, or only 0 and 1); found values [{shown}{more}]"
        )
    return array == 1


def one_hot(labels, n_phases: int | None = None, *, phases: Sequence[int] | None = None,
            dtype=np.float32) -> np.ndarray:  # fmt: skip
    """k-phase one-hot encoding of integer label images, channel last.

    The layout is PyMKS's discretized microstructure ``(n_samples, n_x, n_y,
    n_state)``: channel ``c`` is 1 where the label equals the ``c``-th phase.

    Parameters
    ----------
    labels : array_like of int, shape (height, width) or (n_images, height, width)
        Label images (e.g. the MetalDAM label PNGs, values 0 to 4). Float
        arrays are accepted when every value is a whole number.
    n_phases : int, optional
        The phases are ``0, 1, ..., n_phases - 1``. By default, ``max(labels) + 1``
        (a batch in which the highest phase is missing then has fewer channels:
        pass ``n_phases`` for a fixed layout).
    phases : sequence of int, optional
        The label value of each channel, in channel order (e.g. ``(0, 255)``
        for a mask saved as black and white); instead of ``n_phases``.
    dtype : numpy dtype, optional
        Of the result (default float32, ready for FFT-based statistics).

    Returns
    -------
    numpy.ndarray, shape labels.shape + (k,)

    Raises
    ------
    ValueError
        Labels that are empty, not 2-D or 3-D, not whole numbers, negative
        (with the default phases), or outside the declared phases (the message
        names them); both ``n_phases`` and ``phases`` given; repeated phases.
    TypeError
        Labels of a non-numeric dtype.

    Examples
    --------
    >>> import numpy as np
    >>> one_hot(np.array([[0, 2], [1, 2]]))[..., 2].astype(int).tolist()
    [[0, 1], [0, 1]]
    >>> one_hot(np.array([[0, 255]]), phases=(0, 255)).shape
    (1, 2, 2)
    """
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"labels must be integers, got an array of dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(
            "labels must be an image (height, width) or a batch (n_images, height, width), "
            f"got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"labels are empty: shape {array.shape}")
    if array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.round(array))
        if not whole.all():
            bad = np.unique(array[~whole])
            raise ValueError(f"labels must be whole numbers, found {_listed(bad)}")
        array = array.astype(np.int64)
    if n_phases is not None and phases is not None:
        raise ValueError("give n_phases or phases, not both")
    if phases is not None:
        values = np.asarray(list(phases))
        if values.ndim != 1 or values.size == 0 or not all(is_int(v) for v in values.tolist()):
            raise ValueError(f"phases must be a non-empty sequence of integers, got {phases!r}")
        if np.unique(values).size != values.size:
            raise ValueError(f"phases must be distinct, got {phases!r}")
    else:
        if n_phases is None:
            low = int(array.min())
            if low < 0:
                raise ValueError(
                    f"labels hold negative values (e.g. {low}); declare the phases with phases="
                )
            n_phases = int(array.max()) + 1
        values = np.arange(check_int("n_phases", n_phases, 1))
    out = array[..., None] == values
    unmatched = ~out.any(axis=-1)
    if unmatched.any():
        bad = np.unique(array[unmatched])
        n_pixels = int(unmatched.sum())
        raise ValueError(
            f"labels {_listed(bad)} are not among the phases {values.tolist()} "
            f"({n_pixels} pixel{'s' if n_pixels != 1 else ''})"
        )
    return out.astype(dtype)


def _listed(values: np.ndarray, most: int = 8) -> str:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:most].tolist())
    return f"[{shown}{', ...' if values.size > most else ''}]"
