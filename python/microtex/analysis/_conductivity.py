"""Effective conductivity of a multi-phase image by a finite-volume (resistor network) solve.

The model: every pixel is a square cell of side 1 (and unit depth) with the
conductivity ``sigma`` of its phase. Neighbouring cells are joined through
their shared face by the series resistance of two half cells, ``1/(2 a) +
1/(2 b)``, that is a conductance ``2 a b / (a + b)`` (the harmonic mean of the
two conductivities). The two faces across the field are electrodes: the
first (left for ``axis=1``, top for ``axis=0``) at potential 1, the last at
potential 0, each joined to its adjacent cells through a half cell
(conductance ``2 sigma``); the other two faces are insulating. Kirchhoff's
current law at every cell centre gives a symmetric positive definite sparse
system ``A phi = b`` for the centre potentials, solved directly (SuperLU,
``scipy.sparse.linalg.spsolve``; a 64 x 64 image takes milliseconds). With
``I`` the current through the sample, ``L`` its length along the field and
``w`` its width across it::

    sigma_eff = I L / (w * 1)       (unit potential drop)

For an image of uniform ``sigma`` this is ``sigma`` exactly; for layers
parallel to the field (rows of one phase each, ``axis=1``) it is the
arithmetic mean of the rows' ``sigma``, for layers across the field the
harmonic mean, both exactly: a layer of cells in series adds ``1/sigma`` per
cell, whole half cells included. For any image ``sigma_eff`` lies between the
Wiener bounds (harmonic mean <= ``sigma_eff`` <= arithmetic mean of the
pixels' ``sigma``): the network's energy with a linear trial potential and
with a uniform trial current bounds it from above and below.
"""

from __future__ import annotations

import numpy as np

from microtex._validation import is_int

__all__ = ["effective_conductivity"]


def _check_conductivities(conductivities) -> np.ndarray:
    values = np.asarray(conductivities, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"conductivities must be one value per phase, got {conductivities!r}")
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"conductivities must be finite and > 0, got {conductivities!r}")
    return values


def _check_labels(image, n_phases: int) -> np.ndarray:
    labels = np.asarray(image)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"image must be a non-empty 2-D array of phase labels, got {labels.shape}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.int64)
    elif np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ValueError("image must hold integer phase labels; found a non-integer value")
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"image has unsupported dtype {labels.dtype}; expected phase labels")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_phases:
        bad = low if low < 0 else high
        raise ValueError(
            f"phase label {bad} has no conductivity: {n_phases} conductivities for phases "
            f"0..{n_phases - 1}"
        )
    return labels


def effective_conductivity(image, conductivities=(1.0, 10.0), *, axis: int = 1) -> float:
    """Effective conductivity of a phase-label image along ``axis`` (model in the module doc).

    Parameters
    ----------
    image : array_like (height, width)
        Phase labels ``0 .. n_phases - 1`` (bool, integer, or integer-valued float).
    conductivities : sequence of float
        Conductivity of each phase, > 0 (default: phase 0 at 1, phase 1 at 10).
    axis : {1, 0}
        Direction of the applied field: 1 along the rows (electrodes on the
        left and right faces), 0 along the columns (top and bottom).

    Returns
    -------
    float
        ``sigma_eff = I L / w`` for a unit potential drop, in the units of
        ``conductivities``.

    Examples
    --------
    >>> layers = np.array([[0, 0, 0], [1, 1, 1]])      # one row of each phase
    >>> round(effective_conductivity(layers, (1.0, 3.0), axis=1), 12)   # arithmetic mean
    2.0
    >>> round(effective_conductivity(layers, (1.0, 3.0), axis=0), 12)   # harmonic mean
    1.5
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    sigma_of = _check_conductivities(conductivities)
    if not (is_int(axis) and axis in (0, 1)):
        raise ValueError(f"axis must be 0 (field along the columns) or 1 (along the rows), "
                         f"got {axis!r}")
    labels = _check_labels(image, len(sigma_of))
    sigma = sigma_of[labels]
    if axis == 0:  # a field along the columns is a field along the rows of the transpose
        sigma = sigma.T
    height, width = sigma.shape
    index = np.arange(height * width).reshape(height, width)
    # conductances between neighbours along the field (horizontal) and across it
    along = 2.0 * sigma[:, :-1] * sigma[:, 1:] / (sigma[:, :-1] + sigma[:, 1:])
    across = 2.0 * sigma[:-1, :] * sigma[1:, :] / (sigma[:-1, :] + sigma[1:, :])
    first, last = 2.0 * sigma[:, 0], 2.0 * sigma[:, -1]  # half cells to the electrodes
    diagonal = np.zeros((height, width))
    diagonal[:, :-1] += along
    diagonal[:, 1:] += along
    diagonal[:-1, :] += across
    diagonal[1:, :] += across
    diagonal[:, 0] += first
    diagonal[:, -1] += last
    rows = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    cols = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    values = -np.concatenate([along.ravel(), across.ravel()])
    n = height * width
    matrix = sparse.coo_matrix(
        (np.concatenate([values, values, diagonal.ravel()]),
         (np.concatenate([rows, cols, np.arange(n)]), np.concatenate([cols, rows, np.arange(n)]))),
        shape=(n, n),
    ).tocsc()  # fmt: skip
    source = np.zeros((height, width))
    source[:, 0] = first  # the electrode at potential 1 feeds the first column
    potential = spsolve(matrix, source.ravel()).reshape(height, width)
    current = float(np.sum(first * (1.0 - potential[:, 0])))
    return current * width / height
