"""Two-point statistics and power spectra of images, radial averages, scikit-learn transformers.

Power spectra (Lubbers et al.'s baseline descriptor): :func:`power_spectrum`
and :class:`PowerSpectrum`; definitions in :func:`power_spectrum` and
:func:`frequency_bins`. The rest of this docstring is about two-point
statistics.

Definitions (DESIGN.md §5; the conventions of PyMKS 0.4.1's
``TwoPointCorrelation``, so results can be compared): for phase fields ``a``
and ``b`` of one ``H x W`` image (indicators 0/1, or volume fractions /
probabilities in [0, 1]) and an offset ``r = (row, column)``::

    S_ab(r) = sum_x a(x) b(x + r) / norm(r)

* periodic (``periodic_boundary=True``): ``x + r`` wraps around the image,
  ``norm = H * W``;
* non-periodic: only pairs with both ends inside the image count,
  ``norm(r) = (H - |r_row|) (W - |r_col|)``, the number of valid pairs;
* with a mask ``M`` (a confidence in [0, 1] per pixel, e.g. 0 where the
  micrograph has a scale bar): ``sum_x M(x) M(x+r) a(x) b(x+r) /
  sum_x M(x) M(x+r)`` (periodic or not as above). An offset with no valid
  pair at all gives NaN.

The output is the centred window of offsets ``|r_row|, |r_col| <= c`` for a
cutoff ``c``: an array ``(2c+1, 2c+1)`` per image and correlation whose
element ``[c + r_row, c + r_col]`` is ``S_ab(r)``; ``S_ab(0)`` is the volume
fraction of ``a`` when ``a = b`` is an indicator, ``S_ab(r) = S_ba(-r)``,
and ``S_aa(r) -> V_a**2`` at distances beyond the correlation length. The
largest cutoff is ``(min(H, W) - 1) // 2`` (a larger one would make offsets
``r`` and ``r - H`` the same periodic offset); PyMKS caps a larger cutoff
silently, microtex caps it with a warning.

Data layout as PyMKS's: ``(n_samples, H, W, n_phases)`` (a one-hot
:func:`microtex.features.segment.one_hot` or probabilities), with
``correlations`` a list of phase pairs ``(i, j)``, by default ``(0, 0), (0,
1), ..., (0, n_phases - 1)``; the result is ``(n_samples, 2c+1, 2c+1,
n_correlations)``. A 2-D ``(H, W)`` or 3-D ``(n_samples, H, W)`` array is one
phase, and gives its autocorrelation ``(2c+1, 2c+1)`` or ``(n_samples, 2c+1,
2c+1)``.

The work runs in the C++ extension (``microtex._kernels.two_point``): FFTs of
each phase used, products, inverse FFTs pruned to the window, images split
across threads. Non-periodic statistics need zero padding by ``c`` only
(offsets beyond ``c`` are never read), not by PyMKS's ``2c``.
:func:`two_point_reference` is the same statistic in NumPy FFTs, kept as the
reference the kernel is tested and benchmarked against.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from microtex._validation import check_bool, check_choice, check_int
from microtex.engine.session import check_threads

__all__ = [
    "PowerSpectrum",
    "TwoPointCorrelation",
    "frequency_bins",
    "max_cutoff",
    "power_spectrum",
    "power_spectrum_reference",
    "radial_average",
    "two_point",
    "two_point_reference",
]

log = logging.getLogger("microtex.features.spectra")


def max_cutoff(height: int, width: int) -> int:
    """The largest cutoff an ``height x width`` image allows: ``(min(H, W) - 1) // 2``."""
    return (min(height, width) - 1) // 2


def _numeric_array(data, what: str) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
        or array.dtype == np.bool_
    ):
        raise TypeError(f"{what} has unsupported dtype {array.dtype}; expected a numeric array")
    return array


def _finite_float(array: np.ndarray, what: str, leading: int, trailing: int) -> np.ndarray:
    """``array`` in its compute dtype, C-contiguous, refused if a value is not finite.

    float32 and float64 keep their dtype; bool, integers and float16 become
    float32 (indicators, labels and 8/16-bit gray levels are exact in it, and it
    halves the FFT work of float64), 64-bit integers float64. ``leading`` and
    ``trailing`` axes were added to the caller's array: the index of a bad
    value is reported without them.
    """
    if 0 in array.shape:
        raise ValueError(f"{what} is empty (shape {array.shape})")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64 if array.dtype.itemsize > 4 else np.float32)
    # a finite sum means every value is finite, without a temporary the size of the
    # data; only a NaN, an infinity (or an overflowing sum) pays for the exact check
    if not np.isfinite(array.sum(dtype=np.float64)) and not np.isfinite(array).all():
        bad = [int(i) for i in np.argwhere(~np.isfinite(array))[0]]
        index = bad[leading : len(bad) - trailing]
        raise ValueError(f"{what} has a non-finite value (NaN or inf) at index {tuple(index)}")
    return np.ascontiguousarray(array)


def _check_data(data) -> tuple[np.ndarray, int]:
    """``(n, H, W, k)`` float32/float64 C-contiguous data, and the rank it came as."""
    array = _numeric_array(data, "phase data")
    rank = array.ndim
    if rank not in (2, 3, 4):
        raise ValueError(
            "phase data must be (H, W), (n_samples, H, W) or (n_samples, H, W, n_phases); "
            f"got shape {array.shape}"
        )
    array = array.reshape((1,) * (rank == 2) + array.shape + (1,) * (rank < 4))
    leading, trailing = int(rank == 2), int(rank < 4)
    return _finite_float(array, "phase data", leading, trailing), rank


def _check_pairs(correlations, n_phases: int) -> np.ndarray:
    if correlations is None:
        return np.array([(0, j) for j in range(n_phases)], dtype=np.int64)
    try:
        pairs = np.array([tuple(p) for p in correlations], dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(
            f"correlations must be pairs of phase indices, got {correlations!r}"
        ) from None
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(f"correlations must be pairs of phase indices, got {correlations!r}")
    bad = pairs[(pairs < 0) | (pairs >= n_phases)]
    if bad.size:
        raise ValueError(
            f"correlation phase index {int(bad[0])} out of range: the data has {n_phases} phase(s)"
        )
    return pairs


def _check_cutoff(cutoff, height: int, width: int) -> int:
    largest = max_cutoff(height, width)
    if cutoff is None:
        return largest
    cutoff = check_int("cutoff", cutoff, 0)
    if cutoff > largest:
        warnings.warn(
            f"cutoff {cutoff} capped at {largest}, the largest a {height}x{width} image allows "
            "((min(H, W) - 1) // 2)",
            stacklevel=4,  # the caller of two_point / two_point_reference
        )
        return largest
    return cutoff


def _check_mask(mask, n: int, height: int, width: int, dtype) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[1:] != (height, width) or mask.shape[0] not in (1, n):
        raise ValueError(f"mask must be (H, W) = ({height}, {width}) or (n_samples, H, W); "
                         f"got shape {mask.shape}")  # fmt: skip
    if not (np.issubdtype(mask.dtype, np.floating) or np.issubdtype(mask.dtype, np.integer)
            or mask.dtype == np.bool_):  # fmt: skip
        raise TypeError(f"mask has unsupported dtype {mask.dtype}")
    mask = mask.astype(dtype, copy=False)
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError(
            f"mask values must be finite and in [0, 1]; found [{np.nanmin(mask)}, "
            f"{np.nanmax(mask)}]" + (" and NaN" if np.isnan(mask).any() else "")
        )
    empty = ~mask.reshape(len(mask), -1).any(axis=1)
    if empty.any():
        which = "" if len(mask) == 1 else f" for image {int(np.flatnonzero(empty)[0])}"
        raise ValueError(f"mask is zero everywhere{which}: no pixel pair counts")
    return np.ascontiguousarray(mask)


def _check_inputs(data, correlations, cutoff, mask):
    """Every argument of :func:`two_point` checked: ``(data, rank, pairs, cutoff, mask)``."""
    array, rank = _check_data(data)
    n, height, width, n_phases = array.shape
    pairs = _check_pairs(correlations, n_phases)
    c = _check_cutoff(cutoff, height, width)
    mask = _check_mask(mask, n, height, width, array.dtype)
    return array, rank, pairs, c, mask


def _shape_output(out: np.ndarray, rank: int) -> np.ndarray:
    if rank == 2:
        return out[0, :, :, 0]
    if rank == 3:
        return out[..., 0]
    return out


def two_point(data, correlations=None, *, periodic_boundary: bool = True, cutoff: int | None = None,
              mask=None, n_threads: int | None = None) -> np.ndarray:  # fmt: skip
    """Two-point statistics ``S_ab`` of phase fields (definitions in the module docstring).

    Parameters
    ----------
    data : array_like
        ``(n_samples, H, W, n_phases)``, or one phase ``(n_samples, H, W)`` /
        ``(H, W)``. float32 and float64 are computed in their own precision;
        bool and integer data (indicators, labels) in float32.
    correlations : sequence of (int, int), optional
        Phase pairs ``(a, b)``; default ``(0, j)`` for every phase ``j``.
    periodic_boundary : bool
        Wrap offsets around the image (True) or count valid pairs only.
    cutoff : int, optional
        Half-width ``c`` of the output window; default and maximum
        :func:`max_cutoff`.
    mask : array_like, optional
        ``(H, W)`` or ``(n_samples, H, W)`` confidences in [0, 1].
    n_threads : int, optional
        Threads (default: every core): over images, or inside each transform
        when there are fewer images than threads or the images are large.
        Results agree to rounding (about 1e-7 in float32) whatever the
        threads or the batch: odd numbers of fields share complex transforms
        with the next image's.

    Returns
    -------
    numpy.ndarray
        ``(n_samples, 2c+1, 2c+1, n_correlations)`` (2-D/3-D input: without
        the axes it lacked), in the compute dtype.

    Examples
    --------
    >>> import numpy as np
    >>> phase = np.zeros((8, 8), np.float32); phase[:, :4] = 1   # vertical stripes
    >>> s2 = two_point(phase, cutoff=2)
    >>> s2[2, 2], s2[2, 2 + 2], s2[2 + 2, 2]                     # V_V, 2 columns, 2 rows
    (np.float32(0.5), np.float32(0.25), np.float32(0.5))
    """
    array, rank, pairs, c, mask = _check_inputs(data, correlations, cutoff, mask)
    from microtex.features.pooling import kernels

    out = kernels().two_point(array, pairs, bool(periodic_boundary), c, mask,
                              check_threads(n_threads))  # fmt: skip
    return _shape_output(out, rank)


def _next_smooth(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def two_point_reference(data, correlations=None, *, periodic_boundary: bool = True,
                        cutoff: int | None = None, mask=None,
                        chunk: int = 32) -> np.ndarray:  # fmt: skip
    """:func:`two_point` written with NumPy FFTs, the best NumPy formulation we know.

    Same arguments, checks and result as :func:`two_point`. Images go through
    ``numpy.fft.rfft2`` ``chunk`` at a time; each phase used is transformed
    once per image; non-periodic fields are zero-padded to a 2,3,5-smooth size
    of at least ``H + c``. It is the reference the C++ kernel is tested and
    benchmarked against.
    """
    array, rank, pairs, c, mask = _check_inputs(data, correlations, cutoff, mask)
    n, height, width, _ = array.shape
    if periodic_boundary:
        shape = (height, width)
    else:
        shape = (_next_smooth(height + c), _next_smooth(width + c))
    rows = np.arange(-c, c + 1) % shape[0]
    cols = np.arange(-c, c + 1) % shape[1]

    def correlate(fa, fb):  # the centred window of sum_x a(x) b(x + r)
        full = np.fft.irfft2(np.conj(fa) * fb, s=shape)
        return full[..., rows[:, None], cols[None, :]]

    offsets = np.arange(-c, c + 1)
    if mask is None and periodic_boundary:
        norm = np.full((2 * c + 1,) * 2, float(height * width))
    elif mask is None:
        norm = np.outer(height - np.abs(offsets), width - np.abs(offsets)).astype(float)
    else:
        spectrum = np.fft.rfft2(mask, s=shape)
        norm = correlate(spectrum, spectrum)
        largest = norm.max(axis=(1, 2), keepdims=True)
        norm = np.where(norm > 16 * np.finfo(array.dtype).eps * largest, norm, np.nan)
    out = np.empty((n, 2 * c + 1, 2 * c + 1, len(pairs)), array.dtype)
    used = sorted(set(pairs.ravel().tolist()))
    for lo in range(0, n, chunk):
        fields = array[lo : lo + chunk]
        if mask is not None:
            fields = fields * (mask if len(mask) == 1 else mask[lo : lo + chunk])[..., None]
        spectra = {p: np.fft.rfft2(fields[..., p], s=shape) for p in used}
        part_norm = norm if mask is None or len(mask) == 1 else norm[lo : lo + chunk]
        for q, (a, b) in enumerate(pairs):
            out[lo : lo + chunk, :, :, q] = correlate(spectra[a], spectra[b]) / part_norm
    return _shape_output(out, rank)


def radial_average(s2, *, cutoff: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average of centred statistics over rings of equal distance ``|r|``.

    ``s2`` is an output of :func:`two_point`: ``(2c+1, 2c+1)``, ``(n, 2c+1,
    2c+1)`` or ``(n, 2c+1, 2c+1, n_correlations)`` (a 4-D array always has its
    window on axes 1 and 2). Offsets are binned by
    ``round(|r|)``; only distances ``0 .. c`` (whole rings inside the window)
    are kept, or ``0 .. cutoff`` when given. Returns ``(distances, averages)``
    with ``averages`` of shape ``(..., c + 1)`` (the window axes replaced by
    the distance axis, which is last).
    """
    s2 = np.asarray(s2)
    # two_point's layouts: (n, w, w, n_correlations), (n, w, w), (w, w)
    axes = (1, 2) if s2.ndim == 4 else (s2.ndim - 2, s2.ndim - 1)
    if (
        s2.ndim not in (2, 3, 4)
        or s2.shape[axes[0]] != s2.shape[axes[1]]
        or (s2.shape[axes[0]] % 2 == 0)
    ):
        raise ValueError(
            "s2 must be two_point's (2c+1, 2c+1), (n, 2c+1, 2c+1) or (n, 2c+1, 2c+1, "
            f"n_correlations) output; got shape {s2.shape}"
        )
    c = (s2.shape[axes[0]] - 1) // 2
    if cutoff is not None:
        cutoff = check_int("cutoff", cutoff, 0)
        if cutoff > c:
            raise ValueError(f"cutoff {cutoff} is beyond the window's half-width {c}")
        c = cutoff
    moved = np.moveaxis(s2, axes, (-2, -1))
    half = (moved.shape[-1] - 1) // 2
    offsets = np.arange(-half, half + 1)
    distance = np.rint(np.hypot(offsets[:, None], offsets[None, :])).astype(np.int64)
    inside = distance <= c
    bins = distance[inside]
    values = moved[..., inside]
    counts = np.bincount(bins, minlength=c + 1)
    sums = np.zeros(values.shape[:-1] + (c + 1,), np.float64)
    np.add.at(sums, (..., bins), values)  # small arrays; exact sums per ring
    return np.arange(c + 1), (sums / counts).astype(s2.dtype if s2.dtype.kind == "f" else float)


# ---------------------------------------------------------------------------
# Power spectra (Lubbers et al.'s baseline descriptor)

RESCALES = ("minmax", "none")


def _check_images(images) -> tuple[np.ndarray, int]:
    """``(n, H, W)`` float32/float64 C-contiguous images, and the rank they came as."""
    array = _numeric_array(images, "images")
    if array.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (n_samples, H, W); got shape {array.shape}")
    rank = array.ndim
    array = array.reshape((1,) * (rank == 2) + array.shape)
    return _finite_float(array, "images", int(rank == 2), 0), rank


def _check_sectors(sectors) -> int | None:
    return None if sectors is None else check_int("sectors", sectors, 1)


def frequency_bins(height: int, width: int, sectors: int | None = None) -> tuple[np.ndarray, int]:
    """The bin of every frequency of an ``height x width`` shifted spectrum.

    Frequencies are measured on a square-normalized grid: index ``(i, j)`` of
    the shifted spectrum is the frequency ``q = ((i - H//2) L / H, (j - W//2) L
    / W)`` with ``L = min(H, W)``, i.e. in cycles per ``L`` pixels whatever the
    aspect (``q`` is the plain integer index for a square image). The radial
    bin is ``r = round(|q|)``, kept for ``r = 0 .. L//2`` (up to the Nyquist
    frequency of the shorter side: every bin holds frequencies along that
    side, the last one a part ring; the corners beyond are left out). With
    ``sectors = k``, ring ``r >= 1`` is split by the direction of ``q``: its
    angle ``arctan2(q_row, q_column)`` (0 for vertical stripes, whose intensity
    varies along a row; pi/2 for horizontal ones) folded into [0, pi) (a real
    image has ``S(q) = S(-q)``); sector ``s`` holds angles in ``[s pi/k,
    (s+1) pi/k)``. Ring 0 has no direction and is one bin shared by every
    sector.

    Returns ``(labels, n_labels)``: int32 ``(H, W)`` labels in ``[-1,
    n_labels)`` (-1: left out): ``r`` for rings, else ``0`` for ring 0 and
    ``1 + s (L//2) + r - 1`` for sector ``s``, ring ``r >= 1``.
    """
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    sectors = _check_sectors(sectors)
    # rounding: numpy.rint (a radius of exactly r + 1/2 goes to the even bin)
    side = min(height, width)
    n_radii = side // 2 + 1
    ky = (np.arange(height) - height // 2) * (side / height)
    kx = (np.arange(width) - width // 2) * (side / width)
    radius = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int64)
    if sectors is None:
        labels, n_labels = radius, n_radii
    else:
        angle = np.arctan2(ky[:, None], kx[None, :]) % np.pi
        # the tolerance puts a direction on a boundary (45 degrees of 4 sectors) in
        # the sector it starts, whatever the last bit of arctan2
        sector = np.floor(angle * (sectors / np.pi) + 1e-9).astype(np.int64) % sectors
        labels = np.where(radius == 0, 0, 1 + sector * (n_radii - 1) + radius - 1)
        n_labels = 1 + sectors * (n_radii - 1)
    return np.where(radius < n_radii, labels, -1).astype(np.int32), n_labels


def _bin_output(binned: np.ndarray, sectors: int | None) -> np.ndarray:
    """``(n, n_labels)`` averages as ``(n, R)`` rings or ``(n, sectors, R)``."""
    if sectors is None:
        return binned
    n = len(binned)
    out = np.empty((n, sectors, 1 + (binned.shape[1] - 1) // sectors), binned.dtype)
    out[:, :, 0] = binned[:, :1]
    out[:, :, 1:] = binned[:, 1:].reshape(n, sectors, -1)
    return out


def _rescale_parameters(array: np.ndarray, rescale: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per image ``(center, scale)`` with ``phi = (x - center) scale`` in [-1, 1], as the kernel."""
    if rescale == "none":
        return None
    low = array.min(axis=(1, 2)).astype(np.float64)
    high = array.max(axis=(1, 2)).astype(np.float64)
    spread = high - low
    scale = np.divide(2.0, spread, out=np.zeros_like(spread), where=spread > 0)
    center = ((low + high) / 2).astype(array.dtype).reshape(-1, 1, 1)
    return center, scale.astype(array.dtype).reshape(-1, 1, 1)


def power_spectrum(images, *, rescale: str = "minmax", radial: bool = False,
                   sectors: int | None = None,
                   n_threads: int | None = None) -> np.ndarray:  # fmt: skip
    """Power spectra ``S(q) = |FFT2(phi)(q)|^2 / (H W)`` of images, zero frequency centred.

    ``phi`` is each image rescaled to [-1, 1] (``rescale="minmax"``, the
    default: Lubbers et al.'s "image rescaled to [-1, 1]" read as its minimum
    to -1 and its maximum to +1; a constant image becomes 0) or taken as given
    (``"none"``, for fields already in [-1, 1]). The division by ``H W`` makes
    spectra of different sizes comparable (white noise of variance ``v`` has
    ``S ~ v`` at every ``q``) and gives Parseval's ``sum_q S(q) = sum_x
    phi(x)^2``; ``S(0) = H W mean(phi)^2``. The zero frequency sits at
    ``(H//2, W//2)``, as ``numpy.fft.fftshift`` puts it.

    Parameters
    ----------
    images : array_like
        ``(n_samples, H, W)`` or one ``(H, W)`` image, any ``H, W >= 1``.
        float32 and float64 are computed in their own precision; bool and
        integer images (8/16-bit gray levels) in float32, 64-bit integers in
        float64.
    rescale : {"minmax", "none"}
        Per-image rescaling to [-1, 1], or none.
    radial : bool
        Average ``S`` over rings ``round(|q|) = r``, ``r = 0 .. min(H, W)//2``
        (:func:`frequency_bins`: frequencies on a square-normalized grid, in
        cycles per ``min(H, W)`` pixels; the corners past the shorter side's
        Nyquist frequency are left out).
    sectors : int, optional
        Average over rings within ``sectors`` equal angular sectors of [0, pi)
        (``radial`` need not be set). Ring 0 has no direction: every sector
        holds the same ring-0 value. A (sector, ring) with no frequency (narrow
        sectors at small radii) is NaN.
    n_threads : int, optional
        Threads (default: every core): over pairs of images, or inside each
        transform for one or two images. Results agree to rounding whatever
        the threads or the batch (images share complex transforms in pairs).

    Returns
    -------
    numpy.ndarray
        ``(n_samples, H, W)``, ``(n_samples, min(H, W)//2 + 1)`` with
        ``radial``, ``(n_samples, sectors, min(H, W)//2 + 1)`` with
        ``sectors``; a 2-D image gives the same without the first axis. In the
        compute dtype: float32 keeps half the memory of float64, and a float64
        output of a float32 transform would be no more accurate (an FFT's
        rounding is relative to the image's norm: ``S(q)`` is off by about
        ``1e-7 sqrt(S(q) sum_q S)``, a few 1e-6 of the largest ``S``, more
        relative to small ones; pass float64 images where those matter).

    Examples
    --------
    >>> import numpy as np
    >>> stripes = np.cos(2 * np.pi * 4 * np.arange(16) / 16)[None, :].repeat(8, 0)  # 8 x 16
    >>> s = power_spectrum(stripes, rescale="none")  # all power at q = (0, +-4): H W / 4 each
    >>> float(s[4, 8 + 4]), float(s[4, 8 - 4]), round(float(s.sum()), 9)  # sum: sum of phi^2
    (32.0, 32.0, 64.0)
    >>> int(power_spectrum(stripes, radial=True).argmax())  # 4 cycles per 16 px = 2 per 8 px
    2
    """
    array, rank, bins, n_labels, sectors = _check_power_inputs(images, rescale, radial, sectors)
    from microtex.features.pooling import kernels

    out = kernels().power_spectrum(array, rescale == "minmax", bins, n_labels,
                                   check_threads(n_threads))  # fmt: skip
    if bins is not None:
        out = _bin_output(out, sectors)
    return out[0] if rank == 2 else out


def _check_power_inputs(images, rescale, radial, sectors):
    """Every argument of :func:`power_spectrum`: ``(array, rank, bins, n_labels, sectors)``."""
    array, rank = _check_images(images)
    check_choice("rescale", rescale, RESCALES)
    radial = check_bool("radial", radial)
    sectors = _check_sectors(sectors)
    if sectors is None and not radial:
        return array, rank, None, 0, None
    bins, n_labels = frequency_bins(*array.shape[1:], sectors)
    return array, rank, bins, n_labels, sectors


def power_spectrum_reference(images, *, rescale: str = "minmax", radial: bool = False,
                             sectors: int | None = None, chunk: int = 32,
                             rfft2=None) -> np.ndarray:  # fmt: skip
    """:func:`power_spectrum` written with NumPy FFTs, the best NumPy formulation we know.

    Same arguments, checks and result. Images go through ``numpy.fft.rfft2``
    ``chunk`` at a time (half the work of ``fft2`` on real input, which
    benchmarks/bench_spectra.py times too; the other half of the spectrum is
    the first half mirrored, ``S(-q) = S(q)``), then ``fftshift``; averages are
    one ``numpy.bincount`` per chunk over the labels of
    :func:`frequency_bins`. ``rfft2`` replaces NumPy's (the benchmark passes
    ``scipy.fft.rfft2`` with workers). It is the reference the C++ kernel is
    tested and benchmarked against.
    """
    array, rank, bins, n_labels, sectors = _check_power_inputs(images, rescale, radial, sectors)
    n, height, width = array.shape
    rescaling = _rescale_parameters(array, rescale)
    half = width // 2 + 1
    # columns past the half spectrum: S(ky, kx) = S(-ky, -kx), -ky as an index is (H - ky) % H
    mirror_rows = (-np.arange(height)) % height
    mirror_cols = (width - np.arange(half, width)) % width
    if bins is None:
        out = np.empty((n, height, width), array.dtype)
    else:
        out = np.empty((n, n_labels), array.dtype)
        keep = bins.ravel() >= 0
        labels = bins.ravel()[keep]
        counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    for lo in range(0, n, chunk):
        phi = array[lo : lo + chunk]
        if rescaling is not None:
            phi = (phi - rescaling[0][lo : lo + chunk]) * rescaling[1][lo : lo + chunk]
        spectrum = (rfft2 or np.fft.rfft2)(phi, axes=(1, 2))
        power = np.empty((len(phi), height, width), array.dtype)
        np.multiply(spectrum.real, spectrum.real, out=power[..., :half])
        power[..., :half] += spectrum.imag * spectrum.imag
        power[..., half:] = power[:, mirror_rows[:, None], mirror_cols[None, :]]
        power *= array.dtype.type(1 / (height * width))
        shifted = np.fft.fftshift(power, axes=(1, 2))
        if bins is None:
            out[lo : lo + chunk] = shifted
            continue
        m = len(phi)
        flat = shifted.reshape(m, -1)[:, keep]
        offsets = (np.arange(m)[:, None] * n_labels + labels[None, :]).ravel()
        sums = np.bincount(offsets, weights=flat.ravel(), minlength=m * n_labels)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo : lo + chunk] = sums.reshape(m, n_labels) / counts
    if bins is not None:
        out = _bin_output(out, sectors)
    return out[0] if rank == 2 else out


def _sklearn_base():
    from sklearn.base import BaseEstimator, TransformerMixin

    return BaseEstimator, TransformerMixin


class _StatelessImageTransformer:
    """scikit-learn tags of a transformer of image stacks that needs no fit."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags


class TwoPointCorrelation(_StatelessImageTransformer, *_sklearn_base()):
    """Two-point statistics as a scikit-learn transformer (PyMKS's parameters and output).

    ``transform`` takes ``(n_samples, H, W, n_phases)`` (or ``(n_samples, H,
    W)`` for one phase) and returns :func:`two_point`'s
    ``(n_samples, 2c+1, 2c+1, n_correlations)``, or with ``flatten=True``
    ``(n_samples, (2c+1)**2 * n_correlations)`` rows for the next estimator
    of a pipeline (PCA, regression). Stateless: ``fit`` only checks the data.

    Parameters
    ----------
    correlations, periodic_boundary, cutoff, n_threads
        As :func:`two_point`.
    flatten : bool
        Return one row per sample.
    """

    def __init__(self, correlations=None, periodic_boundary=True, cutoff=None, flatten=False,
                 n_threads=None):  # fmt: skip
        self.correlations = correlations
        self.periodic_boundary = periodic_boundary
        self.cutoff = cutoff
        self.flatten = flatten
        self.n_threads = n_threads

    def fit(self, X, y=None):
        array, rank = _check_data(X)
        if rank < 3:
            raise ValueError(f"X must be (n_samples, H, W[, n_phases]); got shape {np.shape(X)}")
        self.n_phases_ = array.shape[-1]
        self.image_shape_ = array.shape[1:3]
        return self

    def transform(self, X):
        X = np.asarray(X)
        if X.ndim not in (3, 4):
            raise ValueError(f"X must be (n_samples, H, W[, n_phases]); got shape {X.shape}")
        fitted = getattr(self, "image_shape_", None)
        if fitted is not None and (
            X.shape[1:3] != tuple(fitted) or (X.shape[3] if X.ndim == 4 else 1) != self.n_phases_
        ):
            raise ValueError(
                f"X has images {X.shape[1:3]} with {X.shape[3] if X.ndim == 4 else 1} phase(s); "
                f"the transformer was fitted on {tuple(fitted)} with {self.n_phases_}"
            )  # fmt: skip
        out = two_point(X, self.correlations, periodic_boundary=self.periodic_boundary,
                        cutoff=self.cutoff, n_threads=self.n_threads)  # fmt: skip
        return out.reshape(len(out), -1) if self.flatten else out


class PowerSpectrum(_StatelessImageTransformer, *_sklearn_base()):
    """Power spectra as a scikit-learn transformer: one row of features per image.

    ``transform`` takes ``(n_samples, H, W)`` images and returns
    :func:`power_spectrum`'s output flattened to ``(n_samples, n_features)``
    (full spectrum ``H * W``, rings ``R = min(H, W)//2 + 1``, sectors
    ``sectors * R``), named by :meth:`get_feature_names_out`. Stateless:
    ``fit`` only checks the data and records the image size.

    Parameters
    ----------
    rescale, radial, sectors, n_threads
        As :func:`power_spectrum`.
    """

    def __init__(self, rescale="minmax", radial=False, sectors=None, n_threads=None):
        self.rescale = rescale
        self.radial = radial
        self.sectors = sectors
        self.n_threads = n_threads

    def fit(self, X, y=None):
        array, rank = _check_images(X)
        if rank != 3:
            raise ValueError(f"X must be (n_samples, H, W); got shape {np.shape(X)}")
        self.image_shape_ = array.shape[1:]
        self.n_features_out_ = len(self.get_feature_names_out())
        return self

    def transform(self, X):
        X = np.asarray(X)
        if X.ndim != 3:
            raise ValueError(f"X must be (n_samples, H, W); got shape {X.shape}")
        fitted = getattr(self, "image_shape_", None)
        if fitted is not None and X.shape[1:] != tuple(fitted):
            raise ValueError(
                f"X has images {X.shape[1:]}; the transformer was fitted on {tuple(fitted)}"
            )
        out = power_spectrum(X, rescale=self.rescale, radial=self.radial, sectors=self.sectors,
                             n_threads=self.n_threads)  # fmt: skip
        return out.reshape(len(out), -1)

    def get_feature_names_out(self, input_features=None):
        """Names: ``power_{ky}_{kx}`` (0 centred), ``power_r{r}`` or ``power_s{s}_r{r}``."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "image_shape_")
        height, width = self.image_shape_
        rings = range(min(height, width) // 2 + 1)
        if self.sectors is not None:
            names = [f"power_s{s}_r{r}" for s in range(self.sectors) for r in rings]
        elif self.radial:
            names = [f"power_r{r}" for r in rings]
        else:
            names = [f"power_{ky}_{kx}" for ky in range(-(height // 2), height - height // 2)
                     for kx in range(-(width // 2), width - width // 2)]  # fmt: skip
        return np.asarray(names, dtype=object)
