"""Mean, max and Gram pooling of CNN activations; VLAD is in :mod:`.vlad`.

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
"""

from __future__ import annotations

import functools

import numpy as np

from microtex._pools import GRAM_LAYOUTS, GRAM_NORMALIZATIONS, POOLS, n_pooled_features
from microtex._validation import check_choice
from microtex.engine.session import check_threads, default_threads

__all__ = [
    "FLOATS",
    "GRAM_LAYOUTS",
    "GRAM_NORMALIZATIONS",
    "POOLS",
    "check_activations",
    "check_finite",
    "default_threads",
    "gram",
    "kernels",
    "max_pool",
    "mean_pool",
    "n_pooled_features",
]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@functools.cache
def kernels():
    """The compiled extension ``microtex._kernels`` (imported on first use)."""
    from microtex import _kernels

    return _kernels


def check_activations(acts, name: str = "acts") -> np.ndarray:
    """A batch of activations ``(n, c, h, w)`` in float32 or float64, checked, never copied."""
    if not isinstance(acts, np.ndarray):
        acts = np.asarray(acts)
    if acts.dtype not in FLOATS:
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


def check_finite(out: np.ndarray, what: str) -> np.ndarray:
    """``out`` if every entry is finite, else ValueError naming the samples that are not."""
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
    """Mean of each channel over all positions: ``(n_samples, n_channels)``.

    ``acts`` is ``(n_samples, n_channels, height, width)``, float32 or float64,
    any strides (every pooling here takes it so); ``n_threads`` defaults to
    :func:`default_threads`.

    Examples
    --------
    >>> import numpy as np
    >>> acts = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> mean_pool(acts), max_pool(acts)
    (array([[1.5, 5.5]], dtype=float32), array([[3., 7.]], dtype=float32))
    """
    return _mean_max(acts, "mean", n_threads)


def max_pool(acts, *, n_threads: int | None = None) -> np.ndarray:
    """Maximum of each channel over all positions; arguments and example as :func:`mean_pool`."""
    return _mean_max(acts, "max", n_threads)


def _mean_max(acts, pool: str, n_threads: int | None) -> np.ndarray:
    acts = check_activations(acts)
    mean, maximum = kernels().mean_max_pool(
        acts, pool == "mean", pool == "max", check_threads(n_threads)
    )
    return check_finite(mean if pool == "mean" else maximum, f"{pool}_pool")


def gram(
    acts,
    normalization: str = "spatial",
    layout: str = "triu",
    *,
    n_threads: int | None = None,
) -> np.ndarray:
    """Gram matrices ``F @ F.T`` of each sample, flattened; ``acts`` as in :func:`mean_pool`.

    Parameters
    ----------
    normalization : {"spatial", "sum", "lubbers"}
        ``"sum"``: G as is (Ling et al.); ``"spatial"``: G / M (Gatys); ``"lubbers"``:
        G / (2 n_channels M), so that plain Euclidean distances are Lubbers' d_ij.
    layout : {"triu", "full"}
        ``"full"``: ``n_channels**2`` values row-major; ``"triu"``: upper triangle
        row-major, off-diagonal entries multiplied by sqrt(2).
    n_threads : int, optional
        Threads (default :func:`default_threads`).

    Returns
    -------
    ndarray, shape (n_samples, n_channels**2) or (n_samples, n_channels*(n_channels+1)/2)

    Examples
    --------
    >>> import numpy as np
    >>> acts = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 2)   # F = [[1, 2], [3, 4]]
    >>> gram(acts, normalization="sum", layout="full")
    array([[ 5., 11., 11., 25.]])
    >>> gram(acts, normalization="sum", layout="triu").round(4)
    array([[ 5.    , 15.5563, 25.    ]])
    """
    check_choice("Gram normalization", normalization, GRAM_NORMALIZATIONS)
    check_choice("Gram layout", layout, GRAM_LAYOUTS)
    acts = check_activations(acts)
    out = kernels().gram(acts, normalization, layout, check_threads(n_threads))
    return check_finite(out, "gram")
