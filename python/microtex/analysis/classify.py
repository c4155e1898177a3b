"""Classification with honest error bars: repeated (grouped) K-fold and its metrics.

The protocol is Ling et al.'s: a random forest of 400 trees, 10 repeats of
stratified 3-fold cross-validation, macro F1 as mean ± std over the repeats.
Each repeat's folds cover every sample once; its metrics are computed on those
out-of-fold predictions. With ``groups`` (specimen, sample, source image of a
tile) the folds are stratified *and* grouped: no group is ever on both sides of
a split, which every split checks. Anything fitted on data (a VLAD dictionary,
a scaler, a feature selection) is fitted inside each training fold: pass it as
part of ``estimator`` (a scikit-learn pipeline, cloned for every fold) or
compute the fold's features with ``fold_features``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from microtex._validation import check_positive_int
from microtex.analysis._splits import Split, check_groups, check_split_options, repeated_kfold
from microtex.engine.session import default_threads

__all__ = [
    "BUNDLE_KIND",
    "METRIC",
    "CVResult",
    "TextureClassifier",
    "cross_validate",
    "cv_splits",
    "evaluate_features",
    "load_classifier",
    "make_forest",
    "save_classifier",
]

log = logging.getLogger("microtex.analysis")

#: What every report calls its headline number.
METRIC = "macro F1"


def make_forest(n_estimators: int = 400, random_state: int | None = 0, n_jobs: int | None = None,
                **params):  # fmt: skip
    """Ling et al.'s classifier: a seeded random forest (400 trees), on every core."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=check_positive_int("n_estimators", n_estimators),
        random_state=random_state,
        n_jobs=default_threads() if n_jobs is None else n_jobs,
        **params,
    )


def _labels(y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)`` of labels; ValueError for fewer than two classes."""
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {y.shape}")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"classification needs at least two classes; every label is {classes[0].item()!r}"
        )
    return classes, codes


def cv_splits(y, groups=None, *, n_splits: int = 3, n_repeats: int = 10,
              random_state: int | None = 0) -> list[Split]:  # fmt: skip
    """``(repeat, fold, train indices, test indices)`` of repeated stratified (grouped) K-fold.

    Each repeat shuffles with its own seed (``random_state + repeat``). With
    ``groups`` the folds come from scikit-learn's ``StratifiedGroupKFold``
    (classes balanced as far as whole groups allow); every split is checked to
    keep each group on one side.

    Raises
    ------
    ValueError
        Fewer than two classes, a class with fewer samples than ``n_splits``
        (ungrouped), or fewer groups than ``n_splits``; the message names it.

    Examples
    --------
    >>> y = ["a"] * 6 + ["b"] * 6
    >>> groups = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    >>> splits = cv_splits(y, groups, n_splits=3, n_repeats=2)
    >>> len(splits), sorted(len(test) for _, _, _, test in splits[:3])
    (6, [4, 4, 4])
    """
    n_splits, n_repeats, seed = check_split_options(n_splits, n_repeats, random_state)
    classes, codes = _labels(y)
    if groups is None:
        counts = np.bincount(codes)
        if counts.min() < n_splits:
            rare = classes[int(np.argmin(counts))].item()
            raise ValueError(
                f"class {rare!r} has {counts.min()} samples, fewer than n_splits={n_splits}"
            )
    else:
        groups = check_groups(groups, len(codes), n_splits, of="labels")
        lonely = [c.item() for i, c in enumerate(classes) if len(np.unique(groups[codes == i])) < 2]
        if lonely:  # never in training when tested: F1 0 for it, macro F1 capped
            log.warning("class %s has all its samples in one group: a grouped split never "
                        "trains on it when it tests it", ", ".join(map(repr, lonely)))
    return repeated_kfold(len(codes), groups=groups, strata=codes, n_splits=n_splits,
                          n_repeats=n_repeats, seed=seed)  # fmt: skip


@dataclasses.dataclass
class CVResult:
    """Metrics of a repeated cross-validation, one value per repeat.

    Attributes
    ----------
    classes : list of str
    f1 : ndarray (n_repeats,)
        Macro F1 of each repeat's out-of-fold predictions: the headline number.
    balanced_accuracy, pr_auc : ndarray (n_repeats,)
        Balanced accuracy; PR-AUC (average precision, one class against the
        rest, averaged over classes) from the out-of-fold probabilities.
    precision, recall : ndarray (n_repeats, n_classes)
    confusion : ndarray (n_repeats, n_classes, n_classes)
        Rows: true class, columns: predicted.
    split : {"stratified", "grouped"}
    n_splits, n_repeats : int
    seconds : float
        Fitting and predicting, all folds.
    """

    classes: list[str]
    f1: np.ndarray
    balanced_accuracy: np.ndarray
    pr_auc: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    confusion: np.ndarray
    split: str
    n_splits: int
    n_repeats: int
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Every number as plain JSON-able values: means and stds over repeats, and each repeat."""

        def mean_std(values):
            return {"mean": float(np.mean(values)), "std": float(np.std(values)),
                    "per_repeat": [float(v) for v in np.ravel(values)]}  # fmt: skip

        return {
            "metric": METRIC,
            "split": self.split,
            "n_splits": self.n_splits,
            "n_repeats": self.n_repeats,
            "classes": list(self.classes),
            "f1_macro": mean_std(self.f1),
            "balanced_accuracy": mean_std(self.balanced_accuracy),
            "pr_auc_macro": mean_std(self.pr_auc),
            "precision": {c: mean_std(self.precision[:, i]) for i, c in enumerate(self.classes)},
            "recall": {c: mean_std(self.recall[:, i]) for i, c in enumerate(self.classes)},
            "confusion": self.confusion.sum(axis=0).tolist(),  # summed over the repeats
            "confusion_is": f"counts summed over {self.n_repeats} repeats (rows: true class)",
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        return (f"{METRIC} {np.mean(self.f1):.3f} ± {np.std(self.f1):.3f} ({self.split}, "
                f"{self.n_repeats} × {self.n_splits}-fold)")  # fmt: skip


def _take(X, index: np.ndarray):
    if isinstance(X, np.ndarray):
        return X[index]
    return [X[i] for i in index]


def cross_validate(
    estimator,
    X,
    y,
    groups=None,
    *,
    n_splits: int = 3,
    n_repeats: int = 10,
    random_state: int | None = 0,
    fold_features: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]] | None = None,
) -> CVResult:
    """Repeated stratified (grouped) K-fold of a classifier; see the module docstring.

    Parameters
    ----------
    estimator : scikit-learn classifier (or pipeline)
        Cloned for every fold, so that everything in it is fitted on the
        training fold only.
    X : array or sequence
        Samples (feature rows, images, paths); indexed per fold.
    y : sequence
        Class labels.
    groups : sequence, optional
        Group of each sample; a group is never split between train and test.
    n_splits, n_repeats, random_state
        As in :func:`cv_splits`.
    fold_features : callable, optional
        ``fold_features(train, test) -> (X_train, X_test)`` computes a fold's
        features from the indices (e.g. VLAD with words fitted on ``train``);
        ``X`` is then not indexed.

    Returns
    -------
    CVResult
    """
    import time

    from sklearn.base import clone
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    classes, codes = _labels(y)
    splits = cv_splits(codes, groups, n_splits=n_splits, n_repeats=n_repeats,
                       random_state=random_state)  # fmt: skip
    n, k = len(codes), len(classes)
    f1, balanced, pr_auc = np.zeros(n_repeats), np.zeros(n_repeats), np.zeros(n_repeats)
    precision, recall = np.zeros((n_repeats, k)), np.zeros((n_repeats, k))
    confusion = np.zeros((n_repeats, k, k), np.int64)
    start = time.perf_counter()
    predicted = np.zeros(n, np.int64)
    proba = np.zeros((n, k))
    for repeat, fold, train, test in splits:
        if fold == 0:
            predicted[:], proba[:] = -1, 0.0
        if fold_features is not None:
            X_train, X_test = fold_features(train, test)
        else:
            X_train, X_test = _take(X, train), _take(X, test)
        model = clone(estimator).fit(X_train, codes[train])
        columns = np.asarray(model.classes_, dtype=np.int64)  # classes seen in training
        fold_proba = np.asarray(model.predict_proba(X_test))
        proba[np.ix_(test, columns)] = fold_proba
        predicted[test] = columns[np.argmax(fold_proba, axis=1)]
        if fold == n_splits - 1:
            f1[repeat] = f1_score(codes, predicted, average="macro", labels=range(k),
                                  zero_division=0)
            balanced[repeat] = balanced_accuracy_score(codes, predicted)
            p, r, _, _ = precision_recall_fscore_support(
                codes, predicted, labels=range(k), zero_division=0
            )
            precision[repeat], recall[repeat] = p, r
            onehot = np.eye(k)[codes]
            pr_auc[repeat] = float(np.mean(
                [average_precision_score(onehot[:, c], proba[:, c]) for c in range(k)]
            ))  # fmt: skip
            confusion[repeat] = confusion_matrix(codes, predicted, labels=range(k))
            log.info("repeat %d: %s %.3f", repeat + 1, METRIC, f1[repeat])
    return CVResult(
        classes=[str(c) for c in classes],
        f1=f1,
        balanced_accuracy=balanced,
        pr_auc=pr_auc,
        precision=precision,
        recall=recall,
        confusion=confusion,
        split="stratified" if groups is None else "grouped",
        n_splits=n_splits,
        n_repeats=n_repeats,
        seconds=time.perf_counter() - start,
    )


def evaluate_features(features, y, groups=None, *, n_estimators: int = 400,
                      random_state: int | None = 0, columns: Sequence[int] | None = None,
                      **cv) -> CVResult:  # fmt: skip
    """Random-forest cross-validation of a feature table (or an ``(n, f)`` array).

    ``columns`` selects feature columns; ``cv`` are :func:`cross_validate`'s
    keywords (``n_splits``, ``n_repeats``).

    Examples
    --------
    >>> X = np.r_[np.zeros((6, 2)), np.ones((6, 2))]
    >>> result = evaluate_features(X, ["a"] * 6 + ["b"] * 6, n_estimators=5, n_repeats=2)
    >>> float(result.f1.mean())
    1.0
    """
    X = np.asarray(getattr(features, "features", features))
    if X.ndim != 2:
        raise ValueError(f"features must be (n_samples, n_features), got shape {X.shape}")
    if columns is not None:
        X = X[:, np.asarray(columns)]
    forest = make_forest(n_estimators, random_state)
    return cross_validate(forest, X, y, groups, random_state=random_state, **cv)


# ---------------------------------------------------------------- the deployable classifier
BUNDLE_KIND = "classifier"
_FEATURIZER_FILES = ("backbone.onnx", "state.npz")
# the forest's impurity importances, which its ONNX graph cannot give back
_IMPORTANCE_FILE = "importance.npz"


def _feature_blocks(names) -> list[dict]:
    """Column names ``"{tap}/{pool}/{i}"`` as runs ``{"tap", "pool", "count"}``, in order.

    Examples
    --------
    >>> _feature_blocks(["raw/mean/0", "relu1_1/gram/0", "relu1_1/gram/1"])
    [{'tap': 'raw', 'pool': 'mean', 'count': 1}, {'tap': 'relu1_1', 'pool': 'gram', 'count': 2}]
    """
    blocks: list[dict] = []
    for name in names:
        tap, pool, _ = str(name).rsplit("/", 2)
        if blocks and (blocks[-1]["tap"], blocks[-1]["pool"]) == (tap, pool):
            blocks[-1]["count"] += 1
        else:
            blocks.append({"tap": tap, "pool": pool, "count": 1})
    return blocks


def _feature_names_digest(names) -> str:
    from microtex._files import sha256_bytes

    return sha256_bytes("\n".join(map(str, names)).encode())


class TextureClassifier:
    """A fitted texture featurizer and random forest, both run by ONNX Runtime.

    Made by :func:`load_classifier` (or ``microtex.load_bundle``) from a
    ``classifier`` bundle that :func:`save_classifier` wrote; nothing of
    scikit-learn's runs at prediction time: the featurizer's graph and kernels
    compute the features, the forest's ONNX graph the probabilities.

    Attributes
    ----------
    featurizer : microtex.TextureFeaturizer
    classes_ : numpy.ndarray of str
        Column order of the probabilities.
    training : dict
        What the bundle says about its training data (counts per class,
        cross-validated scores), as saved.
    feature_importances_ : numpy.ndarray or None
        The forest's impurity importance of each feature (mean decrease in
        impurity, summing to 1), as scikit-learn computed it at training;
        None for bundles saved without it.
    """

    def __init__(self, featurizer, forest_path, classes, training=None, n_threads=None,
                 feature_importances=None):  # fmt: skip
        from microtex.engine.session import shared_session

        self.featurizer = featurizer
        self.classes_ = np.asarray(classes)
        self.training = dict(training or {})
        self.forest_path = forest_path
        self.forest = shared_session(forest_path, device="cpu", n_threads=n_threads)
        self.feature_importances_ = feature_importances

    def predict_proba_features(self, features) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` float32 of feature rows."""
        X = np.ascontiguousarray(features, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.featurizer.n_features_out_:
            raise ValueError(
                f"features must be (n, {self.featurizer.n_features_out_}), got shape {X.shape}"
            )
        return self.forest.run(X, outputs=["probabilities"])["probabilities"]

    def iter_predictions(self, images, *, on_error="raise", failures=None, **read):
        """``(ids, probabilities)`` batch by batch, as :meth:`TextureFeaturizer.iter_features`."""
        for ids, rows in self.featurizer.iter_features(
            images, on_error=on_error, failures=failures, **read
        ):
            yield ids, self.predict_proba_features(rows)

    def predict_proba(self, images) -> np.ndarray:
        """Class probabilities of images (arrays or paths); a bad file raises."""
        parts = [p for _, p in self.iter_predictions(images)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)), np.float32)

    def predict(self, images) -> np.ndarray:
        """The most probable class of each image."""
        return self.classes_[np.argmax(self.predict_proba(images), axis=1)]

    @classmethod
    def from_bundle(cls, opened) -> TextureClassifier:
        """The classifier of an opened, verified bundle; any problem is a BundleError."""
        from microtex import bundle
        from microtex.errors import BundleError
        from microtex.features.texture import TextureFeaturizer

        where = f"bundle {str(opened.path)!r}"
        config = opened.config
        try:
            featurizer_config, classes = config["featurizer"], list(config["classes"])
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{where} has no {exc} in its classifier manifest") from None
        files = {k: v for k, v in opened.files.items() if k in _FEATURIZER_FILES}
        featurizer = TextureFeaturizer.from_bundle(
            dataclasses.replace(opened, config=featurizer_config, files=files)
        )
        digest = _feature_names_digest(featurizer.get_feature_names_out())
        if config.get("feature_names_sha256") != digest:
            raise BundleError(f"{where}: the forest's feature names do not match the featurizer's")
        importances = None
        if _IMPORTANCE_FILE in opened.files:
            importances = bundle.load_npz(opened.file(_IMPORTANCE_FILE)).get("impurity")
            if (
                importances is None
                or importances.shape != (featurizer.n_features_out_,)
                or not np.all(np.isfinite(importances) & (importances >= 0))
            ):
                raise BundleError(
                    f"{where}: {_IMPORTANCE_FILE} does not hold one finite, nonnegative impurity "
                    f"importance per feature ({featurizer.n_features_out_})"
                )
        try:
            model = cls(featurizer, opened.file("forest.onnx"), classes, config.get("training"),
                        feature_importances=importances)  # fmt: skip
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001  (ONNX Runtime's own exception types)
            raise BundleError(f"{where}: cannot open forest.onnx: {exc}") from None
        outputs = model.forest.run(np.zeros((1, featurizer.n_features_out_), np.float32),
                                   outputs=["probabilities"])["probabilities"]  # fmt: skip
        if outputs.shape[1] != len(classes):
            raise BundleError(
                f"{where}: forest.onnx gives {outputs.shape[1]} probabilities for "
                f"{len(classes)} classes"
            )
        return model


def save_classifier(pipeline, directory, *, training: dict | None = None,
                    overwrite: bool = False):  # fmt: skip
    """Save a fitted ``Pipeline(TextureFeaturizer, RandomForestClassifier)`` as a bundle.

    The bundle holds the featurizer's graph (and VLAD words), the forest as
    ONNX (:func:`microtex.engine.export.export_forest`, no scikit-learn needed
    to run it), the forest's impurity importances (``importance.npz``, for
    :mod:`microtex.interpret`) and a manifest with the class names, a digest of the feature
    names and ``training`` (e.g. counts per class and cross-validated F1).

    Returns
    -------
    pathlib.Path
        The bundle directory.
    """
    from microtex import bundle
    from microtex.engine.export import export_forest
    from microtex.engine.metadata import build_document

    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2:
        raise TypeError(
            "save_classifier takes a fitted Pipeline(TextureFeaturizer, forest classifier); "
            f"got {type(pipeline).__name__}"
        )
    featurizer, forest = steps[0][1], steps[1][1]
    if getattr(forest, "n_features_in_", None) != featurizer.n_features_out_:
        raise ValueError(
            f"the forest was fitted on {getattr(forest, 'n_features_in_', None)} features, the "
            f"featurizer makes {featurizer.n_features_out_}"
        )
    files, featurizer_config = featurizer.bundle_parts()
    classes = [str(c) for c in forest.classes_]
    n_features = featurizer.n_features_out_
    onnx_model = export_forest(forest, n_features, metadata=build_document(
        "forest", {"classes": classes, "n_features": n_features}))  # fmt: skip
    files["forest.onnx"] = onnx_model.SerializeToString()
    importances = getattr(forest, "feature_importances_", None)
    if importances is not None:
        files[_IMPORTANCE_FILE] = bundle.npz_bytes(
            {"impurity": np.asarray(importances, dtype=np.float64)}
        )
    config = {
        "featurizer": featurizer_config,
        "classes": classes,
        "n_features": n_features,
        # the names are "{tap}/{pool}/{i}" over these runs; the digest checks them at load
        "feature_blocks": _feature_blocks(featurizer.get_feature_names_out()),
        "feature_names_sha256": _feature_names_digest(featurizer.get_feature_names_out()),
        "forest": {"type": type(forest).__name__,
                   "params": {k: v for k, v in forest.get_params().items()
                              if isinstance(v, (int, float, str, bool, type(None)))}},
        "training": dict(training or {}),
    }  # fmt: skip
    return bundle.save_bundle(directory, files, config, kind=BUNDLE_KIND, overwrite=overwrite)


def load_classifier(directory) -> TextureClassifier:
    """Load a ``classifier`` bundle (checksums, kind and shapes verified)."""
    from microtex import bundle

    return TextureClassifier.from_bundle(bundle.open_bundle(directory, kind=BUNDLE_KIND))


def _register() -> None:
    from microtex import bundle

    bundle.register_kind(BUNDLE_KIND, TextureClassifier.from_bundle)


_register()
