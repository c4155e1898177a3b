"""Repeated (stratified, grouped) K-fold: the splits behind :mod:`.classify` and :mod:`.regression`.

One place for what both need: the option checks, the seeding (repeat ``r`` shuffles with
``random_state + r``), the groups, and the check that no group is on both sides of a split.
Stratification (classification) is an option.
"""

from __future__ import annotations

import numpy as np

from microtex._validation import check_non_negative_int, check_positive_int

__all__ = ["Split", "check_groups", "check_split_options", "repeated_kfold"]

#: ``(repeat, fold, train indices, test indices)``.
Split = tuple[int, int, np.ndarray, np.ndarray]


def check_split_options(n_splits, n_repeats, random_state) -> tuple[int, int, int]:
    """``(n_splits, n_repeats, seed)``: ``n_splits >= 2``, ``n_repeats >= 1``, seed 0 for None."""
    n_splits = check_positive_int("n_splits", n_splits)
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    n_repeats = check_positive_int("n_repeats", n_repeats)
    seed = 0 if random_state is None else check_non_negative_int("random_state", random_state)
    return n_splits, n_repeats, seed


def check_groups(groups, n_samples: int, n_splits: int, *, of: str = "samples") -> np.ndarray:
    """``groups`` as a 1-D array of one group per sample, with at least ``n_splits`` groups.

    ``of`` names the samples in the message (``"labels"``, ``"samples"``).
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_samples:
        raise ValueError(f"groups has {groups.size} entries for {n_samples} {of}; "
                         "give one group per sample")  # fmt: skip
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} groups cannot make n_splits={n_splits} grouped folds")
    return groups


def _grouped_folds(codes: np.ndarray, n_splits: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every group: the groups in a random order, each to the fold with fewest samples.

    The order is all the randomness there is: placing the largest groups first (as
    ``GroupKFold`` does) would leave chance only ties between equal sizes, and repeats with
    groups of different sizes would all draw the same folds. Placing each group on the
    lightest fold keeps the folds within the largest group's size of each other, and the
    first ``n_splits`` groups go to the ``n_splits`` empty folds, so that none stays empty.
    """
    sizes = np.bincount(codes)
    load = np.zeros(n_splits, np.int64)
    fold_of = np.empty(len(sizes), np.int64)
    for group in rng.permutation(len(sizes)):
        fold = int(np.argmin(load))
        fold_of[group] = fold
        load[fold] += sizes[group]
    return fold_of


def repeated_kfold(n_samples: int, *, groups: np.ndarray | None = None,
                   strata: np.ndarray | None = None, n_splits: int, n_repeats: int,
                   seed: int) -> list[Split]:  # fmt: skip
    """Every ``(repeat, fold, train, test)`` of ``n_repeats`` K-fold splits, checked.

    Arguments as :func:`check_split_options` and :func:`check_groups` return them;
    ``strata`` are class codes to stratify by. Repeat ``r`` is seeded ``seed + r``:

    ============  =========  ===============================================
    ``strata``    ``groups`` folds
    ============  =========  ===============================================
    None          None       scikit-learn's ``KFold(shuffle=True)``
    None          given      whole groups in a random order, each to the
                             fold with the fewest samples so far (written
                             here: ``GroupKFold(shuffle=True)`` is only in
                             scikit-learn >= 1.6, and every supported
                             version must make the same folds)
    given         None       ``StratifiedKFold(shuffle=True)``
    given         given      ``StratifiedGroupKFold(shuffle=True)``
    ============  =========  ===============================================

    Every split with groups is checked to keep each group on one side.
    """
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    codes = None if groups is None else np.unique(groups, return_inverse=True)[1]
    index = np.zeros(n_samples)
    splits = []
    for repeat in range(n_repeats):
        random_state = seed + repeat
        if strata is None and codes is None:
            pairs = KFold(n_splits, shuffle=True, random_state=random_state).split(index)
        elif strata is None:
            fold_of = _grouped_folds(codes, n_splits, np.random.default_rng(random_state))
            sample_fold = fold_of[codes]
            pairs = [(np.flatnonzero(sample_fold != f), np.flatnonzero(sample_fold == f))
                     for f in range(n_splits)]  # fmt: skip
        elif codes is None:
            folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
            pairs = folds.split(index, strata)
        else:
            folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)
            pairs = folds.split(index, strata, groups)
        for fold, (train, test) in enumerate(pairs):
            if groups is not None:
                shared = np.intersect1d(groups[train], groups[test])
                if shared.size:  # cannot happen by construction; checked anyway
                    raise RuntimeError(f"groups {shared[:5].tolist()} on both sides of split "
                                       f"{repeat}/{fold}")  # fmt: skip
            splits.append((repeat, fold, train, test))
    return splits
