"""Distance matrices of feature vectors: pairwise Euclidean distances, in memory or streamed.

A texture manifold starts from the distances between the feature vectors of
all images (DESIGN.md §7: metric MDS on precomputed distances). Gram vectors
are long (VGG19's: ~350,000 features), so a table of a few thousand of them
may not fit in memory; :func:`pairwise_distances` then reads it from a
``.npy`` file (or a :class:`numpy.memmap`) in row blocks.

Definition: ``D[i, j] = ||x_i - y_j||``, computed as ``sqrt(max(||x_i||^2 +
||y_j||^2 - 2 x_i . y_j, 0))`` in the C++ extension
(``microtex._kernels.pairwise_sq_distances``): float32 features are
multiplied and summed in float32 over chunks of 256 features, and the chunk
sums are added in float64; float64 features in float64 throughout. The norms
are the same sums as the dot products, so equal rows are exactly 0 apart and
the diagonal of ``pairwise_distances(X)`` is exactly 0. Like every
``|x|^2 + |y|^2 - 2 x.y`` formulation (scikit-learn's, a BLAS one) it loses
relative accuracy on distances much smaller than the vectors' norms: the
absolute error of a squared distance is about ``1e-6 (||x||^2 + ||y||^2)``
in float32 and ``1e-15 (||x||^2 + ||y||^2)`` in float64.
"""

from __future__ import annotations

import os

import numpy as np

from microtex._validation import check_positive_int
from microtex.engine.memory import memory_budget
from microtex.engine.session import check_threads
from microtex.io.table import FeatureTable

__all__ = ["pairwise_distances"]

#: The least memory a streamed computation plans with when ``memory_limit`` is
#: not given: what is left of the budget after the result, but not less than this.
MIN_STREAM_BYTES = 64 << 20


def _open(data, name: str) -> np.ndarray:
    """``data`` as a 2-D array (a memmap for files), its dtype checked, not converted."""
    if isinstance(data, FeatureTable):
        data = data.features
    elif isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not path.endswith(".npy"):
            raise ValueError(f"{name} must be an array or the path of a .npy file, got {path!r}")
        data = np.load(path, mmap_mode="r")
    elif not isinstance(data, np.ndarray):
        data = np.asarray(data)
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)
            or data.dtype == np.bool_):  # fmt: skip
        raise TypeError(
            f"{name} has unsupported dtype {data.dtype}; expected real numbers (float32, float64, "
            "integers or bool)"
        )
    if data.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_vectors, n_features); got shape {data.shape}")
    if 0 in data.shape:
        raise ValueError(f"{name} is empty (shape {data.shape})")
    return data


def _compute_dtype(*dtypes) -> np.dtype:
    """float32 when every input is float32 (or float16), else float64.

    Integers and bool go to float64, which holds them exactly up to 2**53;
    float32 products would round counts above 2**24.
    """
    small = (np.dtype(np.float32), np.dtype(np.float16))
    return np.dtype(np.float32 if all(d in small for d in dtypes) else np.float64)


def _load(data: np.ndarray, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
    """Rows ``[lo, hi)`` in memory, C-contiguous, in ``dtype`` (a view when they already are)."""
    rows = data[lo:hi]
    if isinstance(rows, np.memmap):
        return np.array(rows, dtype=dtype, order="C")  # read now, not page by page in the kernel
    return np.ascontiguousarray(rows, dtype=dtype)


def _in_memory(data: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``data`` can go to the kernel as it is: in memory, ``dtype``, C-contiguous."""
    return not isinstance(data, np.memmap) and data.dtype == dtype and data.flags.c_contiguous


def _sq_distances(a: np.ndarray, b: np.ndarray | None, names: tuple[str, str],
                  offsets: tuple[int, int], n_threads: int) -> np.ndarray:  # fmt: skip
    """The kernel on two loaded row blocks; a non-finite input is reported by its index in X / Y."""
    from microtex.features.pooling import kernels

    try:
        return kernels().pairwise_sq_distances(a, b, n_threads)
    except ValueError:
        # the kernel found a non-finite norm: name the value (only on this path)
        for block, name, offset in ((a, names[0], offsets[0]), (b, names[1], offsets[1])):
            if block is None:
                continue
            bad = np.argwhere(~np.isfinite(block))
            if bad.size:
                row, column = (int(i) for i in bad[0])
                raise ValueError(
                    f"{name} has a non-finite value ({block[row, column]}) at index "
                    f"({row + offset}, {column})"
                ) from None
        for block, name, offset in ((a, names[0], offsets[0]), (b, names[1], offsets[1])):
            if block is None:
                continue
            norms = np.einsum("ij,ij->i", block, block)
            if not np.isfinite(norms).all():
                row = int(np.flatnonzero(~np.isfinite(norms))[0])
                raise ValueError(
                    f"{name} row {row + offset} has values too large to square in {block.dtype} "
                    f"(largest |value| {np.abs(block[row]).max()}); pass float64 features"
                ) from None
        raise


def pairwise_distances(X, Y=None, *, squared: bool = False, n_threads: int | None = None,
                       memory_limit: int | None = None) -> np.ndarray:  # fmt: skip
    """Euclidean distances between the rows of ``X`` (and of ``Y``).

    Parameters
    ----------
    X : array_like, numpy.memmap, str, os.PathLike or microtex.io.FeatureTable
        ``(n_x, n_features)`` feature vectors, one per row, or the path of a
        ``.npy`` file holding them (opened memory-mapped, read in row blocks),
        or a feature table (its ``features``). float32 is computed with
        float32 products (see the module docstring), float64 in float64;
        float16 as float32; integers and bool as float64.
    Y : same kinds as X, optional
        ``(n_y, n_features)``. None (or ``X`` itself): the distances between
        the rows of ``X``, a symmetric matrix with an exact 0 diagonal,
        computed for ``i <= j`` only. X and Y of different dtypes are both
        computed in float64.
    squared : bool
        Return squared distances (no square root).
    n_threads : int, optional
        Threads (default: every core, or ``MICROTEX_NUM_THREADS``).
    memory_limit : int, optional
        Bytes of feature rows held in memory at once (the result, ``n_x *
        n_y * 8`` bytes, comes on top). Inputs in memory that need no
        conversion are used in place; otherwise, when the converted rows
        exceed this, they are loaded and computed in row blocks ``(I, J)``
        that do fit (at least one row each), visiting only ``I <= J`` in
        the symmetric case. Default: the memory budget of
        :func:`microtex.engine.memory.memory_budget` less the result.

    Returns
    -------
    numpy.ndarray
        ``(n_x, n_y)`` float64.

    Raises
    ------
    TypeError
        Complex, object, string or other non-real data.
    ValueError
        Not 2-D, empty, different numbers of features, a non-finite value
        (named with its index), or float32 values whose squares overflow.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0, 0], [3, 4], [6, 8]], dtype=np.float32)
    >>> pairwise_distances(X)
    array([[ 0.,  5., 10.],
           [ 5.,  0.,  5.],
           [10.,  5.,  0.]])
    >>> pairwise_distances(X, [[0, 4]], squared=True).ravel()
    array([16.,  9., 52.])
    """
    x = _open(X, "X")
    symmetric = Y is None or Y is X
    y = x if symmetric else _open(Y, "Y")
    if y.shape[1] != x.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of features; got shapes {x.shape} and {y.shape}"
        )
    threads = check_threads(n_threads)
    dtype = _compute_dtype(x.dtype, y.dtype)
    n_x, n_y, n_features = x.shape[0], y.shape[0], x.shape[1]
    if memory_limit is None:
        memory_limit = max(memory_budget() - n_x * n_y * 8, MIN_STREAM_BYTES)
    memory_limit = check_positive_int("memory_limit", memory_limit)

    row_bytes = n_features * dtype.itemsize
    loaded = [d for d in ((x,) if symmetric else (x, y)) if not _in_memory(d, dtype)]
    if sum(len(d) for d in loaded) * row_bytes <= memory_limit:
        block = max(n_x, n_y)  # one call: everything fits (or already is) in memory
    else:
        block = max(1, memory_limit // (2 * row_bytes))
    out = np.empty((n_x, n_y)) if block < max(n_x, n_y) else None
    names = ("X", "X" if symmetric else "Y")
    for i0 in range(0, n_x, block):
        i1 = min(i0 + block, n_x)
        a = _load(x, i0, i1, dtype)
        for j0 in range(i0 if symmetric else 0, n_y, block):
            j1 = min(j0 + block, n_y)
            if symmetric and j0 == i0:
                d = _sq_distances(a, None, names, (i0, i0), threads)
            else:
                d = _sq_distances(a, _load(y, j0, j1, dtype), names, (i0, j0), threads)
            if out is None:  # the whole matrix in one call
                out = d
                continue
            out[i0:i1, j0:j1] = d
            if symmetric and j0 != i0:
                out[j0:j1, i0:i1] = d.T
    return out if squared else np.sqrt(out, out=out)
