"""Pooling of CNN activations into fixed-length texture descriptors (DESIGN.md §4).

Every function takes a batch of activations ``(n_samples, n_channels, height,
width)`` in float32 or float64 — any memory layout, no copy is made — and
returns ``(n_samples, n_features)`` in the same dtype. The loops run in the C++
extension ``microtex._kernels`` with the GIL released, split across threads.

Definitions, with ``F`` the ``n_channels x M`` activation matrix of one sample
(``M = height * width``):

* ``mean``: ``F.mean(axis=1)``; ``max``: ``F.max(axis=1)``.
* ``gram``: ``G = F @ F.T``, normalized ``"sum"`` (as is), ``"spatial"``
  (``G / M``) or ``"lubbers"`` (``G / (2 n_channels M)``); layout ``"full"``
  (``n_channels**2`` values, row-major) or ``"triu"`` (upper triangle row-major
  with off-diagonal entries times sqrt(2), so Euclidean distances between
  ``triu`` vectors equal Frobenius distances between the full matrices).
  Sums are accumulated in float64 tile by tile.
* ``vlad``: each column of ``F`` is assigned to its nearest dictionary word
  ``c_k``; ``v_k = sum_{j -> k} (F[:, j] - c_k)``; then intra-normalization
  (L2 per word), signed square root and global L2 normalization, each
  optional. Length ``n_words * n_channels``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable

import numpy as np

__all__ = [
    "POOLS",
    "GRAM_NORMALIZATIONS",
    "GRAM_LAYOUTS",
    "mean_pool",
    "max_pool",
    "gram",
    "fit_vlad_dictionary",
    "vlad_encode",
    "n_pooled_features",
    "default_threads",
]

log = logging.getLogger("microtex.pooling")

POOLS = ("mean", "max", "gram", "vlad")
GRAM_NORMALIZATIONS = ("sum", "spatial", "lubbers")
GRAM_LAYOUTS = ("full", "triu")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


_KERNELS = None
_CPUS = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        from microtex import _kernels as module

        _KERNELS = module
    return _KERNELS


def default_threads() -> int:
    """Threads the kernels use by default.

    ``MICROTEX_NUM_THREADS`` if set (read on every call), else the CPUs this
    process may run on (read once per process).
    """
    global _CPUS
    env = os.environ.get("MICROTEX_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MICROTEX_NUM_THREADS must be an integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"MICROTEX_NUM_THREADS must be >= 1, got {value}")
        return value
    if _CPUS is None or _CPUS[0] != os.getpid():
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            count = os.cpu_count() or 1
        _CPUS = (os.getpid(), count)
    return _CPUS[1]


def _threads(n_threads: int | None) -> int:
    if n_threads is None:
        return default_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    return int(n_threads)


def _check_activations(acts, name: str = "acts") -> np.ndarray:
    """Validate a batch of activations without copying it."""
    if not isinstance(acts, np.ndarray):
        acts = np.asarray(acts)
    if acts.dtype not in _FLOATS:
        raise TypeError(
            f"{name} has unsupported dtype {acts.dtype}; expected float32 or float64 "
            "(convert explicitly, e.g. acts.astype(np.float32))"
        )
    if acts.ndim != 4:
        raise ValueError(
            f"{name} must have shape (n_samples, n_channels, height, width); got shape {acts.shape}"
        )
    n, c, h, w = acts.shape
    if n == 0:
        raise ValueError(f"{name} is an empty batch (shape {acts.shape})")
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"{name} has an empty channel or spatial axis (shape {acts.shape})")
    return acts


def _check_finite(out: np.ndarray, what: str) -> np.ndarray:
    # a finite total means every entry is finite (NaN and inf propagate); a
    # total that overflows falls through to the exact per-sample check
    if np.isfinite(out.sum()):
        return out
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"{what}: non-finite result for sample(s) {shown}; the activations contain NaN or "
            "infinite values (or overflow the dtype)"
        )
    return out


def mean_pool(acts, *, n_threads: int | None = None) -> np.ndarray:
    """Mean of each channel over all positions.

    Parameters
    ----------
    acts : ndarray, shape (n_samples, n_channels, height, width)
        float32 or float64 activations, any strides.
    n_threads : int, optional
        Threads to use (default :func:`default_threads`).

    Returns
    -------
    ndarray, shape (n_samples, n_channels)

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.pooling import mean_pool
    >>> mean_pool(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2))
    array([[1.5, 5.5]], dtype=float32)
    """
    acts = _check_activations(acts)
    out, _ = _kernels().mean_max_pool(acts, True, False, _threads(n_threads))
    return _check_finite(out, "mean_pool")


def max_pool(acts, *, n_threads: int | None = None) -> np.ndarray:
    """Maximum of each channel over all positions.

    Parameters
    ----------
    acts : ndarray, shape (n_samples, n_channels, height, width)
        float32 or float64 activations, any strides.
    n_threads : int, optional
        Threads to use (default :func:`default_threads`).

    Returns
    -------
    ndarray, shape (n_samples, n_channels)

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.pooling import max_pool
    >>> max_pool(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2))
    array([[3., 7.]], dtype=float32)
    """
    acts = _check_activations(acts)
    _, out = _kernels().mean_max_pool(acts, False, True, _threads(n_threads))
    return _check_finite(out, "max_pool")


def gram(
    acts,
    normalization: str = "spatial",
    layout: str = "triu",
    *,
    n_threads: int | None = None,
) -> np.ndarray:
    """Gram matrices ``F @ F.T`` of each sample, flattened.

    Parameters
    ----------
    acts : ndarray, shape (n_samples, n_channels, height, width)
        float32 or float64 activations, any strides.
    normalization : {"spatial", "sum", "lubbers"}
        ``"sum"``: G as is (Ling et al.); ``"spatial"``: G / M (Gatys); ``"lubbers"``:
        G / (2 n_channels M), so that plain Euclidean distances are Lubbers' d_ij.
    layout : {"triu", "full"}
        ``"full"``: ``n_channels**2`` values row-major; ``"triu"``: upper triangle
        row-major, off-diagonal entries multiplied by sqrt(2).
    n_threads : int, optional
        Threads to use (default :func:`default_threads`).

    Returns
    -------
    ndarray, shape (n_samples, n_channels**2) or (n_samples, n_channels*(n_channels+1)/2)

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.pooling import gram
    >>> acts = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 2)   # F = [[1, 2], [3, 4]]
    >>> gram(acts, normalization="sum", layout="full")
    array([[ 5., 11., 11., 25.]])
    >>> gram(acts, normalization="sum", layout="triu").round(4)
    array([[ 5.    , 15.5563, 25.    ]])
    """
    if normalization not in GRAM_NORMALIZATIONS:
        raise ValueError(
            f"unknown Gram normalization {normalization!r}; expected one of {GRAM_NORMALIZATIONS}"
        )
    if layout not in GRAM_LAYOUTS:
        raise ValueError(f"unknown Gram layout {layout!r}; expected one of {GRAM_LAYOUTS}")
    acts = _check_activations(acts)
    out = _kernels().gram(acts, normalization, layout, _threads(n_threads))
    return _check_finite(out, "gram")


def _check_dictionary(dictionary, n_channels: int, dtype: np.dtype) -> np.ndarray:
    dictionary = np.asarray(dictionary)
    if dictionary.ndim != 2:
        raise ValueError(
            f"VLAD dictionary must have shape (n_words, n_channels); got shape {dictionary.shape}"
        )
    if dictionary.shape[1] != n_channels:
        raise ValueError(
            f"VLAD dictionary has width {dictionary.shape[1]} but the activations have "
            f"{n_channels} channels"
        )
    if dictionary.shape[0] == 0:
        raise ValueError("VLAD dictionary has no words (shape {dictionary.shape})")
    if dictionary.dtype not in _FLOATS:
        raise TypeError(
            f"VLAD dictionary has unsupported dtype {dictionary.dtype}; expected float32 or float64"
        )
    if not np.isfinite(dictionary).all():
        raise ValueError("VLAD dictionary contains NaN or infinite values")
    # The dictionary is small (n_words x n_channels): matching the activations'
    # dtype here is a cheap, exact-enough conversion, not a copy of user data.
    return np.ascontiguousarray(dictionary, dtype=dtype)


def vlad_encode(
    acts,
    dictionary,
    *,
    intra_normalize: bool = True,
    signed_sqrt: bool = True,
    l2_normalize: bool = True,
    n_threads: int | None = None,
) -> np.ndarray:
    """VLAD encoding of each sample with a fitted dictionary (hard assignment).

    Parameters
    ----------
    acts : ndarray, shape (n_samples, n_channels, height, width)
        float32 or float64 activations, any strides.
    dictionary : ndarray, shape (n_words, n_channels)
        Visual words, e.g. from :func:`fit_vlad_dictionary`.
    intra_normalize, signed_sqrt, l2_normalize : bool
        Post-processing steps, applied in this order (all on by default).
    n_threads : int, optional
        Threads to use (default :func:`default_threads`).

    Returns
    -------
    ndarray, shape (n_samples, n_words * n_channels)
        Word-major: entries ``[k * n_channels:(k + 1) * n_channels]`` belong to word k.

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.pooling import vlad_encode
    >>> acts = np.array([0.0, 1.0, 9.0, 11.0]).reshape(1, 1, 1, 4)
    >>> words = np.array([[0.0], [10.0]])
    >>> vlad_encode(acts, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    array([[1., 0.]])
    """
    acts = _check_activations(acts)
    words = _check_dictionary(dictionary, acts.shape[1], acts.dtype)
    out = _kernels().vlad(
        acts, words, bool(intra_normalize), bool(signed_sqrt), bool(l2_normalize),
        _threads(n_threads),
    )
    return _check_finite(out, "vlad_encode")


def _sample_columns(batches: Iterable[np.ndarray], max_vectors: int, rng) -> np.ndarray:
    """Uniform sample of activation vectors (columns of F) from every batch."""
    batches = [_check_activations(b) for b in batches]
    if not batches:
        raise ValueError("fit_vlad_dictionary got no activations")
    channels = {b.shape[1] for b in batches}
    if len(channels) != 1:
        raise ValueError(f"activations with different channel counts: {sorted(channels)}")
    totals = np.array([b.shape[0] * b.shape[2] * b.shape[3] for b in batches])
    n_total = int(totals.sum())
    take = min(max_vectors, n_total)
    chosen = np.sort(rng.choice(n_total, size=take, replace=False))
    starts = np.concatenate([[0], np.cumsum(totals)])
    parts = []
    for b, lo, hi in zip(batches, starts[:-1], starts[1:]):
        idx = chosen[(chosen >= lo) & (chosen < hi)] - lo
        if idx.size == 0:
            continue
        n, c, h, w = b.shape
        s, rest = np.divmod(idx, h * w)
        y, x = np.divmod(rest, w)
        parts.append(b[s, :, y, x])  # (k, c)
    return np.concatenate(parts, axis=0)


def fit_vlad_dictionary(
    acts,
    n_words: int = 32,
    *,
    max_vectors: int = 100_000,
    method: str = "kmeans",
    random_state=None,
) -> np.ndarray:
    """Fit a VLAD dictionary by k-means on activation vectors.

    Parameters
    ----------
    acts : ndarray (n_samples, n_channels, height, width) or iterable of such arrays
        Activations of the fitting images (several batches may be given).
    n_words : int
        Dictionary size K (default 32, as in Ling et al.).
    max_vectors : int
        At most this many activation vectors (columns of F), drawn uniformly
        without replacement, are clustered.
    method : {"kmeans", "minibatch"}
        scikit-learn ``KMeans`` (3 initializations) or ``MiniBatchKMeans``.
    random_state : int, Generator or None
        Seed for the sampling and the clustering.

    Returns
    -------
    ndarray, shape (n_words, n_channels), dtype of the activations

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.pooling import fit_vlad_dictionary
    >>> acts = np.random.default_rng(0).random((2, 8, 10, 10)).astype(np.float32)
    >>> fit_vlad_dictionary(acts, n_words=4, random_state=0).shape
    (4, 8)
    """
    if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or n_words < 1:
        raise ValueError(f"n_words must be a positive integer, got {n_words!r}")
    if method not in ("kmeans", "minibatch"):
        raise ValueError(f"unknown k-means method {method!r}; expected 'kmeans' or 'minibatch'")
    if isinstance(max_vectors, bool) or not isinstance(max_vectors, (int, np.integer)) or max_vectors < 1:
        raise ValueError(f"max_vectors must be a positive integer, got {max_vectors!r}")
    batches = [acts] if isinstance(acts, np.ndarray) or not isinstance(acts, Iterable) else list(acts)
    rng = np.random.default_rng(random_state)
    vectors = _sample_columns(batches, max_vectors, rng)
    if not np.isfinite(vectors).all():
        raise ValueError("activations used to fit the VLAD dictionary contain NaN or infinite values")
    if vectors.shape[0] < n_words:
        raise ValueError(
            f"cannot fit {n_words} VLAD words from only {vectors.shape[0]} activation vectors"
        )
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    seed = int(rng.integers(2**31 - 1))
    if method == "kmeans":
        model = KMeans(n_clusters=n_words, n_init=3, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters=n_words, n_init=3, random_state=seed, batch_size=4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(vectors.astype(np.float64, copy=False))
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            # e.g. many identical (all-zero ReLU) vectors: fewer distinct words;
            # duplicate words are harmless for hard assignment.
            log.warning("VLAD dictionary: %s", w.message)
        else:  # pragma: no cover - re-emit anything unexpected
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return np.ascontiguousarray(model.cluster_centers_, dtype=vectors.dtype)


def n_pooled_features(pool: str, n_channels: int, *, layout: str = "triu", n_words: int = 32) -> int:
    """Length of the descriptor a pooling produces for ``n_channels`` channels.

    Examples
    --------
    >>> from microtex.pooling import n_pooled_features
    >>> n_pooled_features("gram", 64), n_pooled_features("vlad", 64, n_words=32)
    (2080, 2048)
    """
    if pool in ("mean", "max"):
        return n_channels
    if pool == "gram":
        if layout not in GRAM_LAYOUTS:
            raise ValueError(f"unknown Gram layout {layout!r}; expected one of {GRAM_LAYOUTS}")
        return n_channels * (n_channels + 1) // 2 if layout == "triu" else n_channels**2
    if pool == "vlad":
        return n_words * n_channels
    raise ValueError(f"unknown pooling {pool!r}; expected one of {POOLS}")
