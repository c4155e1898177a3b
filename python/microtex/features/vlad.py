"""VLAD: a fitted dictionary of activation vectors and the encoding against it.

Each column of ``F`` (one activation vector per position) is assigned to its
nearest dictionary word ``c_k``; ``v_k = sum_{j -> k} (F[:, j] - c_k)``; then
intra-normalization (L2 per word), signed square root and global L2
normalization, each optional. Length ``n_words * n_channels``. The
dictionary is fitted state: it is saved with the model, never refitted
silently.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import numpy as np

from microtex._validation import check_choice, check_positive_int
from microtex.engine.session import check_threads
from microtex.features.pooling import FLOATS, check_activations, check_finite, kernels

__all__ = ["KMEANS_METHODS", "fit_vlad_dictionary", "vlad_encode"]

log = logging.getLogger("microtex.features.vlad")

#: scikit-learn ``KMeans`` (3 initializations) or ``MiniBatchKMeans``.
KMEANS_METHODS: tuple[str, ...] = ("kmeans", "minibatch")


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
        raise ValueError(f"VLAD dictionary has no words (shape {dictionary.shape})")
    if dictionary.dtype not in FLOATS:
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

    ``acts`` is ``(n_samples, n_channels, height, width)`` as for every pooling
    (:func:`microtex.features.pooling.mean_pool`).

    Parameters
    ----------
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
    >>> acts = np.array([0.0, 1.0, 9.0, 11.0]).reshape(1, 1, 1, 4)
    >>> words = np.array([[0.0], [10.0]])
    >>> vlad_encode(acts, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    array([[1., 0.]])
    """
    acts = check_activations(acts)
    words = _check_dictionary(dictionary, acts.shape[1], acts.dtype)
    out = kernels().vlad(
        acts,
        words,
        bool(intra_normalize),
        bool(signed_sqrt),
        bool(l2_normalize),
        check_threads(n_threads),
    )
    return check_finite(out, "vlad_encode")


def _sample_columns(batches: Iterable[np.ndarray], max_vectors: int, rng) -> np.ndarray:
    """Uniform sample of activation vectors (columns of F) from every batch."""
    batches = [check_activations(b) for b in batches]
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
    >>> acts = np.random.default_rng(0).random((2, 8, 10, 10)).astype(np.float32)
    >>> fit_vlad_dictionary(acts, n_words=4, random_state=0).shape
    (4, 8)
    """
    n_words = check_positive_int("n_words", n_words)
    check_choice("k-means method", method, KMEANS_METHODS)
    max_vectors = check_positive_int("max_vectors", max_vectors)
    batches = (
        [acts] if isinstance(acts, np.ndarray) or not isinstance(acts, Iterable) else list(acts)
    )
    rng = np.random.default_rng(random_state)
    vectors = _sample_columns(batches, max_vectors, rng)
    if not np.isfinite(vectors).all():
        raise ValueError(
            "activations used to fit the VLAD dictionary contain NaN or infinite values"
        )
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
