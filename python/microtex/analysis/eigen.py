"""Eigen-microstructures: PCA of standardized fields (images or two-point statistics).

The modes of an ensemble of microstructure fields, their explained variance
and each field's scores (the low-dimensional coordinates the MKS pipeline
regresses on), with a figure of the leading modes and of the explained
variance.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from microtex._validation import check_positive_int

__all__ = ["EigenMicrostructures", "eigen_microstructures", "plot_eigen_microstructures"]


@dataclasses.dataclass
class EigenMicrostructures:
    """PCA of standardized fields (:func:`eigen_microstructures`).

    Attributes
    ----------
    components : ndarray (n_components, *field_shape)
        The modes (unit norm over the standardized field, largest entry
        positive), in order of explained variance.
    explained_variance_ratio : ndarray (n_components,)
        Each mode's share of the standardized fields' total variance.
    scores : ndarray (n_samples, n_components)
        Each field's coordinates along the modes.
    mean, scale : ndarray field_shape
        The per-position mean and standard deviation the fields were
        standardized by (``scale`` 1 where a position does not vary, or when
        not standardized).
    """

    components: np.ndarray
    explained_variance_ratio: np.ndarray
    scores: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def summary(self) -> dict[str, Any]:
        """The explained variance as JSON-able values."""
        ratio = [float(v) for v in self.explained_variance_ratio]
        return {"n_components": len(ratio), "explained_variance_ratio": ratio,
                "cumulative": [float(v) for v in np.cumsum(ratio)],
                "field_shape": list(self.mean.shape)}  # fmt: skip


def eigen_microstructures(fields, n_components: int = 4, *,
                          standardize: bool = True) -> EigenMicrostructures:  # fmt: skip
    """Eigen-microstructures: PCA of fields standardized position by position.

    Every position (pixel of an image, offset of an S2 map) is standardized
    over the ensemble: ``z = (x - mean) / std`` (``std`` taken as 1 where it is
    0; with ``standardize=False`` only centred), and the ``(n_samples,
    n_positions)`` matrix of ``z`` is decomposed by a full SVD (scikit-learn's
    ``PCA``, deterministic). Each mode's sign is fixed so that its largest
    entry is positive.

    Parameters
    ----------
    fields : array (n_samples, ...)
        Images ``(n, H, W)``, S2 maps ``(n, 2c+1, 2c+1[, n_corr])``, or any
        fields of one shape; at least 2, finite.
    n_components : int
        Modes kept, at most ``min(n_samples, n_positions)``.
    standardize : bool
        Divide by the per-position standard deviation (True) or only centre.

    Returns
    -------
    EigenMicrostructures

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> mode = np.tile([1.0, -1.0], (4, 2)) / 4                   # a +-1 pattern, unit norm
    >>> fields = rng.normal(size=(50, 1, 1)) * mode + 0.01 * rng.normal(size=(50, 4, 4))
    >>> eigen = eigen_microstructures(fields, n_components=2)
    >>> bool(abs(np.sum(eigen.components[0] * mode)) > 0.99), eigen.scores.shape
    (True, (50, 2))
    """
    from sklearn.decomposition import PCA

    fields = np.asarray(fields, dtype=np.float64)
    if fields.ndim < 2 or len(fields) < 2:
        raise ValueError(f"fields must be (n_samples >= 2, ...), got shape {fields.shape}")
    if not np.isfinite(fields).all():
        bad = np.argwhere(~np.isfinite(fields))[0]
        raise ValueError(f"fields have a non-finite value at index {tuple(int(i) for i in bad)}")
    shape = fields.shape[1:]
    matrix = fields.reshape(len(fields), -1)
    n_components = check_positive_int("n_components", n_components)
    largest = min(matrix.shape)
    if n_components > largest:
        raise ValueError(f"n_components={n_components} is more than min(n_samples, n_positions) "
                         f"= {largest}")  # fmt: skip
    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0) if standardize else np.ones(matrix.shape[1])
    scale[scale == 0] = 1.0
    z = (matrix - mean) / scale
    pca = PCA(n_components, svd_solver="full").fit(z)
    components = pca.components_.copy()
    signs = np.sign(components[np.arange(n_components), np.argmax(np.abs(components), axis=1)])
    components *= signs[:, None]
    return EigenMicrostructures(
        components=components.reshape((n_components, *shape)),
        explained_variance_ratio=pca.explained_variance_ratio_.copy(),
        scores=pca.transform(z) * signs,
        mean=mean.reshape(shape),
        scale=scale.reshape(shape),
    )


def plot_eigen_microstructures(
    result: EigenMicrostructures, output, *, prefix: str = "eigen", n_modes: int = 4,
    title: str = "",
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``{prefix}_modes.png`` (the leading modes) and ``{prefix}_variance.png``.

    Modes are drawn on a diverging colour scale symmetric about 0 (one per
    mode; for fields with a trailing correlation axis, the first correlation),
    titled with their share of the variance; the variance figure shows each
    mode's share (bars) and the cumulative share (line). Returns the two paths.
    """
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    n_modes = min(check_positive_int("n_modes", n_modes), len(result.components))
    ratio = result.explained_variance_ratio
    fig, axes = plt.subplots(1, n_modes, figsize=(2.4 * n_modes, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        mode = result.components[i]
        while mode.ndim > 2:
            mode = mode[..., 0]
        if mode.ndim == 1:
            mode = mode[None, :]
        limit = float(np.abs(mode).max()) or 1.0
        ax.imshow(mode, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"mode {i + 1} ({100 * ratio[i]:.1f}%)", fontsize="small")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize="small")
    modes = _save(fig, output / f"{prefix}_modes.png")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    k = np.arange(1, len(ratio) + 1)
    ax.bar(k, ratio, color="tab:blue", label="each mode")
    ax.plot(k, np.cumsum(ratio), "o-", color="tab:orange", label="cumulative")
    ax.set_xlabel("mode")
    ax.set_ylabel("share of the variance")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False, fontsize="small")
    if title:
        ax.set_title(title, fontsize="small")
    variance = _save(fig, output / f"{prefix}_variance.png")
    return modes, variance


