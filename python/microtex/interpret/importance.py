"""Which textures drive a classifier, and which characterize each class.

A classifier bundle's features are named ``"{tap}/{pool}/{index}"``
(:func:`microtex.features.plan.feature_names`); :func:`feature_source` maps a
name back to what in the network made it:

* ``mean`` and ``max``: filter ``index`` of ``tap``;
* ``gram``: the filter pair ``(a, b)`` of the entry G_ab — ``index = a·N + b``
  for the ``"full"`` layout, the ``index``-th entry of the row-major upper
  triangle (a <= b) for ``"triu"``;
* ``vlad``: word ``index // N`` and filter ``index % N`` (word-major);
* tap ``raw``: the untransformed image, no filter.

Importance comes two ways. **Impurity** (mean decrease in impurity, Ling et
al.'s choice) is what scikit-learn computed when the forest was trained; the
bundle stores it. **Permutation** importance is the drop in macro F1 when one
feature's column is shuffled among the given images, with the forest run by
ONNX Runtime: honest on held-out images, optimistic on the training images.
With many redundant features one column rarely matters alone;
:func:`block_importance` shuffles a whole ``(tap, pool)`` block at once.

**Characteristic** filters of a class are those whose mean activation differs
most between the class and the rest, by the standardized difference
d = (μ_class − μ_rest) / s_pooled.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from microtex._validation import check_choice, check_positive_int
from microtex.backbones.layers import tap_channels
from microtex.features.plan import RAW_TAP

__all__ = [
    "IMPORTANCE_KINDS",
    "CharacteristicFilter",
    "FeatureSource",
    "RankedFeature",
    "block_importance",
    "characteristic_filters",
    "feature_source",
    "feature_sources",
    "permutation_importance",
    "rank_features",
    "split_features",
    "split_name",
]

IMPORTANCE_KINDS = ("impurity", "permutation")


@dataclasses.dataclass(frozen=True)
class FeatureSource:
    """What in the network made one feature column.

    Attributes
    ----------
    name : str
        ``"{tap}/{pool}/{index}"``.
    tap, pool : str
    index : int
    filters : tuple of int
        One filter (mean, max, VLAD), a pair (Gram), none (tap ``raw``).
    word : int or None
        The VLAD word.
    """

    name: str
    tap: str
    pool: str
    index: int
    filters: tuple[int, ...]
    word: int | None = None

    @property
    def describe(self) -> str:
        """``"relu3_1 filters 12×40 (gram)"``, ``"relu2_1 filter 5, word 3 (vlad)"``."""
        if not self.filters:
            return f"the image itself ({self.pool})"
        what = (
            "filters " + "×".join(map(str, self.filters))
            if len(self.filters) == 2
            else (f"filter {self.filters[0]}")
        )
        word = f", word {self.word}" if self.word is not None else ""
        return f"{self.tap} {what}{word} ({self.pool})"


@functools.lru_cache(maxsize=8)
def _triu(channels: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(channels)


def split_name(name) -> tuple[str, str, int]:
    """``(tap, pool, index)`` of a feature name ``"{tap}/{pool}/{index}"``.

    Examples
    --------
    >>> split_name("relu3_1/gram/17")
    ('relu3_1', 'gram', 17)
    """
    try:
        tap, pool, index = str(name).rsplit("/", 2)
        return tap, pool, int(index)
    except ValueError:
        raise ValueError(f"feature name {name!r} is not '{{tap}}/{{pool}}/{{index}}'") from None


def feature_source(name: str, gram_layout: str = "triu") -> FeatureSource:
    """The (layer, filter) behind a feature name; ValueError naming a name that cannot be.

    Examples
    --------
    >>> feature_source("relu1_1/gram/1").filters
    (0, 1)
    >>> feature_source("relu1_1/gram/64").filters   # row 1 starts after row 0's 64 entries
    (1, 1)
    >>> feature_source("relu1_1/gram/65", gram_layout="full").filters
    (1, 1)
    >>> feature_source("relu2_1/vlad/300").word, feature_source("relu2_1/vlad/300").filters
    (2, (44,))
    """
    check_choice("gram_layout", gram_layout, ("triu", "full"))
    tap, pool, index = split_name(name)
    try:
        channels = 1 if tap == RAW_TAP else tap_channels(tap)
    except (ValueError, KeyError):
        raise ValueError(f"feature name {name!r} names no layer ({tap!r})") from None
    sizes = {
        "mean": channels,
        "max": channels,
        "vlad": None,
        "gram": channels * channels if gram_layout == "full" else channels * (channels + 1) // 2,
    }
    if pool not in sizes:
        raise ValueError(f"feature name {name!r} has unknown pooling {pool!r}")
    if index < 0 or (sizes[pool] is not None and index >= sizes[pool]):
        raise ValueError(f"feature name {name!r}: {tap}/{pool} has {sizes[pool]} features")
    word = None
    if tap == RAW_TAP:
        filters: tuple[int, ...] = ()
        word = index // channels if pool == "vlad" else None
    elif pool in ("mean", "max"):
        filters = (index,)
    elif pool == "vlad":
        word, filters = divmod(index, channels)[0], (index % channels,)
    elif gram_layout == "full":
        filters = divmod(index, channels)
    else:
        rows, cols = _triu(channels)
        filters = (int(rows[index]), int(cols[index]))
    return FeatureSource(str(name), tap, pool, index, tuple(int(f) for f in filters), word)


def feature_sources(names: Sequence[str], gram_layout: str = "triu") -> list[FeatureSource]:
    """:func:`feature_source` of every name."""
    return [feature_source(name, gram_layout) for name in names]


# ------------------------------------------------------------------------------- importance


def split_features(forest_path) -> np.ndarray:
    """Sorted indices of the features any tree of a forest ONNX graph splits on.

    A feature no tree splits on changes no prediction, so its permutation
    importance is exactly 0; only these need permuting.
    """
    from microtex.engine.export import require_onnx

    onnx = require_onnx("reading the forest's splits")
    model = onnx.load(str(forest_path))
    used: set[int] = set()
    for node in model.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            attributes = {a.name: a for a in node.attribute}
            ids = list(attributes["nodes_featureids"].ints)
            modes = [m.decode() for m in attributes["nodes_modes"].strings]
            used.update(i for i, mode in zip(ids, modes) if mode != "LEAF")
    if not used:
        raise ValueError(f"{str(forest_path)!r} holds no tree ensemble with splits")
    return np.array(sorted(used), dtype=np.int64)


def _macro_f1(codes: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(
        f1_score(codes, predicted, labels=np.arange(n_classes), average="macro", zero_division=0)
    )


def _label_codes(classifier, labels) -> np.ndarray:
    classes = [str(c) for c in classifier.classes_]
    position = {c: i for i, c in enumerate(classes)}
    labels = [str(label) for label in labels]
    unknown = sorted(set(labels) - set(position))
    if unknown:
        raise ValueError(f"label(s) {unknown} are not among the classifier's classes {classes}")
    return np.array([position[label] for label in labels])


def _permutation_drops(
    classifier, X: np.ndarray, codes: np.ndarray, groups, n_repeats: int, random_state: int
) -> tuple[float, np.ndarray]:
    """Baseline macro F1 and its drop (groups × repeats) when each group's columns are shuffled.

    A group's columns are shuffled with one permutation of the rows, so
    their relations to each other survive and only their relation to the
    label is broken.
    """
    n_classes = len(classifier.classes_)

    def score(rows) -> float:
        predicted = np.argmax(classifier.predict_proba_features(rows), axis=1)
        return _macro_f1(codes, predicted, n_classes)

    baseline = score(X)
    rng = np.random.default_rng(random_state)
    work = X.copy()
    drops = np.zeros((len(groups), n_repeats))
    for i, columns in enumerate(groups):
        columns = np.asarray(columns)
        for r in range(n_repeats):
            work[:, columns] = X[np.ix_(rng.permutation(len(X)), columns)]
            drops[i, r] = baseline - score(work)
        work[:, columns] = X[:, columns]
    return baseline, drops


def _checked_features(classifier, features, labels) -> tuple[np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(features, dtype=np.float32)
    codes = _label_codes(classifier, labels)
    if X.ndim != 2 or X.shape[0] != len(codes):
        raise ValueError(f"features must be (n_images={len(codes)}, n_features), got {X.shape}")
    if len(codes) < 2:
        raise ValueError("permutation importance needs at least two images")
    return X, codes


def block_importance(
    classifier, features, labels, *, n_repeats: int = 5, random_state: int = 0
) -> list[dict]:
    """Permutation importance of each ``(tap, pool)`` block of features as a whole.

    With hundreds of thousands of redundant features, shuffling one column
    rarely moves a forest's vote; shuffling a whole block (all of relu3_1's
    Gram entries, say) says which layer and pooling the classifier relies on.

    Returns
    -------
    list of dict
        ``{"tap", "pool", "n_features", "mean", "std"}`` per block in
        feature order (drop in macro F1 from ``baseline`` and its spread
        over ``n_repeats``), plus ``"baseline"`` in every entry.
    """
    X, codes = _checked_features(classifier, features, labels)
    n_repeats = check_positive_int("n_repeats", n_repeats)
    names = classifier.featurizer.get_feature_names_out()
    keys = [split_name(name)[:2] for name in names]
    blocks: dict[tuple, list[int]] = {}
    for index, key in enumerate(keys):
        blocks.setdefault(key, []).append(index)
    baseline, drops = _permutation_drops(
        classifier, X, codes, list(blocks.values()), n_repeats, random_state
    )
    return [
        {
            "tap": tap,
            "pool": pool,
            "n_features": len(columns),
            "baseline": baseline,
            "mean": float(d.mean()),
            "std": float(d.std()),
        }
        for ((tap, pool), columns), d in zip(blocks.items(), drops)
    ]


def permutation_importance(
    classifier,
    features,
    labels,
    *,
    candidates=None,
    n_repeats: int = 5,
    max_features: int = 100,
    random_state: int = 0,
) -> dict:
    """Drop in macro F1 when one feature column is shuffled, mean and std over repeats.

    Parameters
    ----------
    classifier : TextureClassifier
        A loaded ``classifier`` bundle; its forest runs in ONNX Runtime.
    features : array, shape (n_images, n_features)
        The bundle's features of the images (``classifier.featurizer``).
    labels : sequence of str
        The images' true classes.
    candidates : sequence of int, optional
        Features to permute; default: the ``max_features`` features the
        forest splits on with the highest impurity importance (all features
        it splits on, by index, for a bundle without stored importances).
        Every other feature has permutation importance 0 by construction.
    n_repeats : int
    max_features : int
    random_state : int

    Returns
    -------
    dict
        ``"baseline"`` (macro F1 on the unshuffled features), ``"features"``
        (indices permuted), ``"mean"`` and ``"std"`` (drop per feature, same
        order), ``"n_repeats"``.
    """
    X, codes = _checked_features(classifier, features, labels)
    n_repeats = check_positive_int("n_repeats", n_repeats)
    max_features = check_positive_int("max_features", max_features)
    if candidates is None:
        used = split_features(classifier.forest_path)
        if classifier.feature_importances_ is not None:
            order = np.lexsort((used, -classifier.feature_importances_[used]))
            used = used[order]
        candidates = used[:max_features]
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 1 or np.any((candidates < 0) | (candidates >= X.shape[1])):
        raise ValueError(f"candidates must be feature indices in 0..{X.shape[1] - 1}")
    baseline, drops = _permutation_drops(
        classifier, X, codes, [[j] for j in candidates], n_repeats, random_state
    )
    return {
        "baseline": baseline,
        "features": candidates,
        "mean": drops.mean(axis=1),
        "std": drops.std(axis=1),
        "n_repeats": n_repeats,
    }


@dataclasses.dataclass(frozen=True)
class RankedFeature:
    """A feature, where it comes from, and its importance."""

    source: FeatureSource
    importance: float
    spread: float | None = None  # std over permutation repeats


def rank_features(
    classifier, importance="impurity", *, k: int = 3, permutation=None, renderable: bool = True
) -> list[RankedFeature]:
    """The ``k`` most important features of a classifier, mapped to (layer, filter).

    Parameters
    ----------
    classifier : TextureClassifier
    importance : {"impurity", "permutation"}
        ``"permutation"`` needs ``permutation``, the result of
        :func:`permutation_importance`.
    k : int
    renderable : bool
        Skip features of the ``raw`` tap (they have no filter to draw).
    """
    check_choice("importance", importance, IMPORTANCE_KINDS)
    k = check_positive_int("k", k)
    names = classifier.featurizer.get_feature_names_out()
    layout = classifier.featurizer.pipeline_.plan.gram_layout
    if importance == "impurity":
        values = classifier.feature_importances_
        if values is None:
            raise ValueError(
                "this classifier bundle stores no impurity importances (saved by an older "
                "microtex); use importance='permutation' with labelled images, or train it again"
            )
        indices, spreads = np.arange(len(values)), None
    else:
        if permutation is None:
            raise ValueError(
                "importance='permutation' needs permutation=permutation_importance(...)"
            )
        indices, values, spreads = permutation["features"], permutation["mean"], permutation["std"]
    order = np.lexsort((indices, -np.asarray(values)))
    ranked: list[RankedFeature] = []
    for position in order:
        source = feature_source(names[indices[position]], layout)
        if renderable and not source.filters:
            continue
        if values[position] <= 0:
            break
        spread = None if spreads is None else float(spreads[position])
        ranked.append(RankedFeature(source, float(values[position]), spread))
        if len(ranked) == k:
            break
    return ranked


# --------------------------------------------------------------------- characteristic filters


@dataclasses.dataclass(frozen=True)
class CharacteristicFilter:
    """A filter that sets one class apart.

    Attributes
    ----------
    filter : int
    effect : float
        Standardized difference d = (μ_class − μ_rest) / s_pooled of the
        filter's mean activation.
    mean_class, mean_rest : float
    exemplars : tuple of int
        Indices of the class's images with the highest activation of the filter.
    """

    filter: int
    effect: float
    mean_class: float
    mean_rest: float
    exemplars: tuple[int, ...]


def _effects(acts: np.ndarray, inside: np.ndarray) -> np.ndarray:
    a, b = acts[inside], acts[~inside]
    n_a, n_b = len(a), len(b)
    var_a = a.var(axis=0, ddof=1) if n_a > 1 else np.zeros(acts.shape[1])
    var_b = b.var(axis=0, ddof=1) if n_b > 1 else np.zeros(acts.shape[1])
    dof = max(n_a + n_b - 2, 1)
    pooled = np.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / dof)
    difference = a.mean(axis=0) - b.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(pooled > 0, difference / pooled, np.sign(difference) * np.inf)
    return np.where(difference == 0, 0.0, effect)


def characteristic_filters(
    activations, labels, *, top: int = 3, exemplars: int = 3, min_images: int = 1
) -> dict[str, list[CharacteristicFilter]]:
    """Per class, the filters whose mean activation is highest relative to the other classes.

    Parameters
    ----------
    activations : array, shape (n_images, n_filters)
        Mean activation of each filter of one tap on each image
        (``"{tap}/mean/*"`` features, or :func:`microtex.interpret.heatmap.mean_activations`).
    labels : sequence, length n_images
        At least two classes.
    top : int
        Filters per class, largest positive d first (ties by filter index).
    exemplars : int
        Images per filter, most activated first.
    min_images : int
        A class with fewer images, or with fewer outside it, is left out (one
        image has no spread: d would only say how it differs from the rest).

    Returns
    -------
    dict of str to list of CharacteristicFilter
        Keyed by class (sorted); a class has fewer than ``top`` entries when
        fewer filters are higher in it than in the rest. ``effect`` is infinite
        for a filter constant within both groups and different between them.
    """
    acts = np.asarray(activations, dtype=np.float64)
    labels = np.asarray([str(label) for label in labels])
    if acts.ndim != 2 or acts.shape[0] != len(labels) or acts.shape[0] == 0:
        raise ValueError(
            f"activations must be (n_images={len(labels)}, n_filters), got shape {acts.shape}"
        )
    if not np.all(np.isfinite(acts)):
        raise ValueError("activations contain NaN or infinity")
    top = check_positive_int("top", top)
    exemplars = check_positive_int("exemplars", exemplars)
    min_images = check_positive_int("min_images", min_images)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"characteristic filters need at least two classes; all are {classes}")
    result: dict[str, list[CharacteristicFilter]] = {}
    for name in classes:
        inside = labels == name
        if min(inside.sum(), (~inside).sum()) < min_images:
            continue
        effect = _effects(acts, inside)
        order = np.lexsort((np.arange(acts.shape[1]), -effect))
        members = np.flatnonzero(inside)
        chosen = []
        for f in order[:top]:
            if not effect[f] > 0:
                break
            best = members[np.lexsort((members, -acts[members, f]))][:exemplars]
            chosen.append(
                CharacteristicFilter(
                    int(f),
                    float(effect[f]),
                    float(acts[inside, f].mean()),
                    float(acts[~inside, f].mean()),
                    tuple(int(i) for i in best),
                )
            )
        result[str(name)] = chosen
    return result
