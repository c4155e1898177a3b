"""Two-point statistics of phase fields, their radial averages, and a scikit-learn transformer.

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

from microtex._validation import check_int
from microtex.engine.session import check_threads

__all__ = [
    "TwoPointCorrelation",
    "max_cutoff",
    "radial_average",
    "two_point",
    "two_point_reference",
]

log = logging.getLogger("microtex.features.spectra")


def max_cutoff(height: int, width: int) -> int:
    """The largest cutoff an ``height x width`` image allows: ``(min(H, W) - 1) // 2``."""
    return (min(height, width) - 1) // 2


def _check_data(data) -> tuple[np.ndarray, int]:
    """``(n, H, W, k)`` float32/float64 C-contiguous data, and the rank it came as."""
    array = np.asarray(data)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
        or array.dtype == np.bool_
    ):
        raise TypeError(f"phase data has unsupported dtype {array.dtype}; expected a numeric array")
    rank = array.ndim
    if rank == 2:
        array = array[None, :, :, None]
    elif rank == 3:
        array = array[..., None]
    elif rank != 4:
        raise ValueError(
            "phase data must be (H, W), (n_samples, H, W) or (n_samples, H, W, n_phases); "
            f"got shape {array.shape}"
        )
    if 0 in array.shape:
        raise ValueError(f"phase data is empty (shape {array.shape})")
    if array.dtype not in (np.float32, np.float64):
        # indicators and labels: exact in float32, which halves the FFT work of float64
        array = array.astype(np.float64 if array.dtype.itemsize > 4 else np.float32)
    # a finite sum means every value is finite, without a temporary the size of the
    # data; only a NaN, an infinity (or an overflowing sum) pays for the exact check
    if not np.isfinite(array.sum(dtype=np.float64)) and not np.isfinite(array).all():
        bad = [int(i) for i in np.argwhere(~np.isfinite(array))[0]]
        index = {2: bad[1:3], 3: bad[:3], 4: bad}[rank]
        raise ValueError(f"phase data has a non-finite value (NaN or inf) at index {tuple(index)}")
    return np.ascontiguousarray(array), rank


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


def _sklearn_base():
    from sklearn.base import BaseEstimator, TransformerMixin

    return BaseEstimator, TransformerMixin


class TwoPointCorrelation(*_sklearn_base()):
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags
