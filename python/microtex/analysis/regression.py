"""Regression with honest error bars: repeated (grouped) K-fold of a regressor and its scores.

The regression counterpart of :mod:`.classify`: each repeat's folds cover
every sample once; R², MAE and RMSE are computed on each test fold and on the
repeat's out-of-fold predictions (the headline R²), reported as mean ± std.
With ``groups`` (specimen, source image of a tile) no group is ever on both
sides of a split, which every split checks. Anything fitted on data (a
scaler, a PCA basis) is fitted inside each training fold: pass it as part of
``estimator`` (a scikit-learn pipeline, cloned for every fold).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from microtex._validation import check_positive_int
from microtex.analysis._splits import Split, check_groups, check_split_options, repeated_kfold

__all__ = ["RegressionCVResult", "cross_validate_regression", "regression_splits"]

def regression_splits(n_samples: int, groups=None, *, n_splits: int = 5, n_repeats: int = 1,
                      random_state: int | None = 0) -> list[Split]:  # fmt: skip
    """``(repeat, fold, train indices, test indices)`` of repeated (grouped) K-fold.

    Without ``groups``: scikit-learn's ``KFold(shuffle=True)``, seeded
    ``random_state + repeat``. With ``groups``: whole groups per fold, placed
    in a random order per repeat (same seeds), each on the fold with the
    fewest samples so far, so that every repeat draws other folds whatever
    the group sizes, and the folds stay within the largest group's size of
    each other. Written here rather than taken from
    ``GroupKFold(shuffle=True)``, which scikit-learn has only from 1.6, so
    that every supported version makes the same folds. Every split is
    checked to keep each group on one side.

    Raises
    ------
    ValueError
        ``n_splits`` < 2 or more than the samples, ``groups`` of another
        length than the samples, or fewer distinct groups than ``n_splits``.

    Examples
    --------
    >>> splits = regression_splits(8, [0, 0, 1, 1, 2, 2, 3, 3], n_splits=2, n_repeats=2)
    >>> len(splits), [len(test) for _, _, _, test in splits]
    (4, [4, 4, 4, 4])
    """
    n_samples = check_positive_int("n_samples", n_samples)
    n_splits, n_repeats, seed = check_split_options(n_splits, n_repeats, random_state)
    if n_splits > n_samples:
        raise ValueError(f"n_splits={n_splits} folds need at least as many samples; "
                         f"got {n_samples}")  # fmt: skip
    if groups is not None:
        groups = check_groups(groups, n_samples, n_splits)
    return repeated_kfold(n_samples, groups=groups, n_splits=n_splits, n_repeats=n_repeats,
                          seed=seed)  # fmt: skip


def _check_targets(y) -> np.ndarray:
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("the property y must be numbers") from None
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"the property y must be a non-empty 1-D sequence, got shape {y.shape}")
    if not np.isfinite(y).all():
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"the property y has a non-finite value ({y[bad]}) at index {bad}")
    return y


def _r2(y, predicted) -> float:
    """``1 - SS_res / SS_tot``; NaN when ``y`` is constant (no variance to explain)."""
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0:
        return float("nan")
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total


def _metrics(y, predicted) -> tuple[float, float, float]:
    error = predicted - y
    return _r2(y, predicted), float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error**2)))


def _mean_std(values, key: str) -> dict:
    values = np.ravel(values)
    finite = values[np.isfinite(values)]
    return {"mean": float(np.mean(finite)) if finite.size else None,
            "std": float(np.std(finite)) if finite.size else None,
            key: [float(v) if math.isfinite(v) else None for v in values]}  # fmt: skip


@dataclasses.dataclass
class RegressionCVResult:
    """Scores of a repeated (grouped) K-fold of a regressor.

    Attributes
    ----------
    r2, mae, rmse : ndarray (n_repeats,)
        Of each repeat's out-of-fold predictions (every sample predicted once
        by the model that did not train on it): ``R² = 1 - Σ(y - ŷ)² /
        Σ(y - ȳ)²``, mean absolute and root-mean-square error. ``r2`` is the
        headline number.
    fold_r2, fold_mae, fold_rmse : ndarray (n_repeats, n_splits)
        The same on each test fold alone (R² NaN for a fold whose property is
        constant).
    predictions : ndarray (n_repeats, n_samples)
        The out-of-fold predictions.
    y : ndarray (n_samples,)
    split : {"grouped", "kfold"}
    n_splits, n_repeats : int
    seconds : float
        Fitting and predicting, all folds.
    """

    r2: np.ndarray
    mae: np.ndarray
    rmse: np.ndarray
    fold_r2: np.ndarray
    fold_mae: np.ndarray
    fold_rmse: np.ndarray
    predictions: np.ndarray
    y: np.ndarray
    split: str
    n_splits: int
    n_repeats: int
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Every score as JSON-able values: mean and std over repeats (or folds), and each value."""
        return {
            "split": self.split,
            "n_splits": self.n_splits,
            "n_repeats": self.n_repeats,
            "n_samples": int(self.y.size),
            "r2": _mean_std(self.r2, "per_repeat"),
            "mae": _mean_std(self.mae, "per_repeat"),
            "rmse": _mean_std(self.rmse, "per_repeat"),
            "fold_r2": _mean_std(self.fold_r2, "per_fold"),
            "fold_mae": _mean_std(self.fold_mae, "per_fold"),
            "fold_rmse": _mean_std(self.fold_rmse, "per_fold"),
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        return (f"R² {np.mean(self.r2):.3f} ± {np.std(self.r2):.3f}, RMSE {np.mean(self.rmse):.4g} "
                f"({self.split}, {self.n_repeats} × {self.n_splits}-fold)")  # fmt: skip


def cross_validate_regression(estimator, X, y, groups=None, *, n_splits: int = 5,
                              n_repeats: int = 1,
                              random_state: int | None = 0) -> RegressionCVResult:  # fmt: skip
    """Repeated (grouped) K-fold cross-validation of a regressor.

    Parameters
    ----------
    estimator : scikit-learn regressor or pipeline
        Cloned for every fold: everything in it (scaler, PCA) is fitted on
        the training fold only.
    X : array (n_samples, ...)
        Samples (images, fields, feature rows), indexed along the first axis.
    y : sequence of float (n_samples,)
        The property; must be finite.
    groups : sequence, optional
        Group (specimen) of each sample: folds never split one. Without it,
        plain shuffled K-fold over samples.
    n_splits, n_repeats, random_state
        As :func:`regression_splits`.

    Returns
    -------
    RegressionCVResult

    Examples
    --------
    >>> from sklearn.linear_model import LinearRegression
    >>> X = np.arange(20.0)[:, None]
    >>> result = cross_validate_regression(LinearRegression(), X, 3 * X[:, 0] + 1,
    ...                                    groups=np.arange(20) // 2, n_splits=4)
    >>> round(float(result.r2[0]), 12), result.split
    (1.0, 'grouped')
    """
    from sklearn.base import clone

    y = _check_targets(y)
    X = np.asarray(X)
    if X.ndim == 0 or len(X) != len(y):
        raise ValueError(f"X has {len(X) if X.ndim else 0} samples for {len(y)} values of y")
    splits = regression_splits(len(y), groups, n_splits=n_splits, n_repeats=n_repeats,
                               random_state=random_state)  # fmt: skip
    fold_scores = np.full((3, n_repeats, n_splits), np.nan)
    predictions = np.full((n_repeats, len(y)), np.nan)
    start = time.perf_counter()
    for repeat, fold, train, test in splits:
        model = clone(estimator).fit(X[train], y[train])
        predicted = np.asarray(model.predict(X[test]), dtype=np.float64).ravel()
        predictions[repeat, test] = predicted
        fold_scores[:, repeat, fold] = _metrics(y[test], predicted)
    repeat_scores = np.array([_metrics(y, predictions[r]) for r in range(n_repeats)]).T
    return RegressionCVResult(
        r2=repeat_scores[0], mae=repeat_scores[1], rmse=repeat_scores[2],
        fold_r2=fold_scores[0], fold_mae=fold_scores[1], fold_rmse=fold_scores[2],
        predictions=predictions, y=y, split="kfold" if groups is None else "grouped",
        n_splits=n_splits, n_repeats=n_repeats, seconds=time.perf_counter() - start,
    )  # fmt: skip


