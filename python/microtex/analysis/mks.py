"""Structure–property regression: the MKS pipeline and an offline structure–property study.

The Materials Knowledge System (MKS) homogenization pipeline (Kalidindi and
co-workers; PyMKS) regresses a property on the two-point statistics of a
microstructure::

    phase image --S2--> (2c+1)^2 n_corr statistics --standardize--> --PCA--> k scores
                --polynomial of degree d--> --least squares--> property

:func:`mks_pipeline` builds it as one scikit-learn ``Pipeline``, so that
cross-validation (:func:`~.regression.cross_validate_regression`, re-exported
here) clones it for every fold and the scaler and the PCA basis are fitted
on the training fold only. :func:`~.eigen.eigen_microstructures` (PCA of
standardized images or S2 maps) and :func:`effective_conductivity` (a
property by a resistor-network solve, :mod:`._conductivity`) are re-exported
too. :func:`run_mks` is the study behind ``microtex mks``: two-phase
specimens of known statistics cut into patches, the patches' effective
conductivity and the specimens' generating parameters regressed on S2
(the MKS pipeline) and on CNN texture features, each scored with a grouped
(by specimen) and a patch-level split to show what the latter inflates.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time

import numpy as np

from microtex import _files, synth
from microtex._validation import (
    check_choice,
    check_choices,
    check_non_negative_int,
    check_positive_int,
    check_real,
)
from microtex.analysis._conductivity import _check_conductivities, effective_conductivity
from microtex.analysis.eigen import (
    EigenMicrostructures,
    eigen_microstructures,
    plot_eigen_microstructures,
)
from microtex.analysis.regression import (
    RegressionCVResult,
    cross_validate_regression,
    regression_splits,
)

__all__ = [
    "METHODS",
    "SPLITS",
    "TARGETS",
    "EigenMicrostructures",
    "RegressionCVResult",
    "cross_validate_regression",
    "effective_conductivity",
    "eigen_microstructures",
    "mks_pipeline",
    "plot_eigen_microstructures",
    "regression_head",
    "regression_splits",
    "run_mks",
]

log = logging.getLogger("microtex.analysis")


def regression_head(n_components: int = 5, degree: int = 1, alpha: float = 0.0, *,
                    svd_solver: str = "full", random_state: int | None = 0) -> list:  # fmt: skip
    """The steps after the features: ``StandardScaler → PCA → PolynomialFeatures → regressor``.

    ``(name, estimator)`` pairs for a scikit-learn ``Pipeline``. The scaler
    makes every feature unit-variance before PCA (otherwise the few largest
    features would set the basis). PCA keeps ``n_components`` whitened
    scores (unit variance each: the polynomial's terms are then on one scale
    and a ridge penalty treats every score alike; least squares predicts the
    same with or without whitening). ``PolynomialFeatures(degree,
    include_bias=False)`` is left out for ``degree=1``. The regressor is
    ``LinearRegression`` for ``alpha=0`` (the MKS papers' least squares on a
    few PC scores, which PCA has made uncorrelated) and ``Ridge(alpha)``
    otherwise (for many scores or a high degree). ``svd_solver`` and
    ``random_state`` go to ``PCA``: ``"full"`` (exact) suits the hundreds of
    S2 features; ``"randomized"`` (seeded, so deterministic) is many times
    faster for thousands of features (CNN Gram matrices) and as accurate for
    a few leading components.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    n_components = check_positive_int("n_components", n_components)
    degree = check_positive_int("degree", degree)
    alpha = check_real("alpha", alpha, minimum=0.0)
    svd_solver = check_choice("svd_solver", svd_solver, ("full", "randomized"))
    pca = PCA(n_components, whiten=True, svd_solver=svd_solver, random_state=random_state)
    steps: list = [("scale", StandardScaler()), ("pca", pca)]
    if degree > 1:
        steps.append(("polynomial", PolynomialFeatures(degree, include_bias=False)))
    steps.append(("regress", LinearRegression() if alpha == 0 else Ridge(alpha)))
    return steps


def mks_pipeline(cutoff: int | None = None, n_components: int = 5, degree: int = 1, *,
                 periodic_boundary: bool = True, correlations=None, alpha: float = 0.0,
                 n_threads: int | None = None):  # fmt: skip
    """The MKS homogenization pipeline: ``S2 → standardize → PCA → polynomial → regression``.

    Parameters
    ----------
    cutoff : int, optional
        Half-width ``c`` of the S2 window (default: the largest the images
        allow, see :func:`microtex.features.spectra.two_point`).
    n_components : int
        PCA scores kept.
    degree : int
        Degree of the polynomial of the scores (1: linear).
    periodic_boundary : bool
        Periodic S2 (images that tile, such as periodic simulations) or
        non-periodic (tiles cut from a larger micrograph).
    correlations : sequence of (int, int), optional
        Phase pairs, as :func:`~microtex.features.spectra.two_point`.
    alpha : float
        0: least squares; > 0: ridge regression of that strength.
    n_threads : int, optional
        Threads of the S2 kernel.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``two_point`` (:class:`~microtex.features.spectra.TwoPointCorrelation`
        with ``flatten=True``), then :func:`regression_head`'s. It takes
        ``(n, H, W)`` phase indicators or ``(n, H, W, n_phases)`` one-hot
        (or probability) fields.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = (rng.random((30, 16, 16)) < rng.uniform(0.2, 0.8, (30, 1, 1))).astype(np.uint8)
    >>> y = images.mean(axis=(1, 2))                   # volume fraction = S2(0)
    >>> model = mks_pipeline(cutoff=2, n_components=6).fit(images, y)
    >>> [name for name, _ in model.steps]
    ['two_point', 'scale', 'pca', 'regress']
    >>> bool(model.score(images, y) > 0.99)                 # R² on the training images
    True
    """
    from sklearn.pipeline import Pipeline

    from microtex.features.spectra import TwoPointCorrelation

    features = TwoPointCorrelation(correlations, periodic_boundary, cutoff, flatten=True,
                                   n_threads=n_threads)  # fmt: skip
    return Pipeline([("two_point", features), *regression_head(n_components, degree, alpha)])


# ---------------------------------------------------------------- the structure–property study
#: What :func:`run_mks` regresses: the patch's effective conductivity (a property of the
#: patch itself) and the generating parameters of its specimen (shared by its patches).
TARGETS: tuple[str, ...] = ("conductivity", "correlation_length", "volume_fraction")
#: The featurizations compared: S2 (the MKS pipeline) and CNN texture features.
METHODS: tuple[str, ...] = ("mks", "cnn")
#: Grouped by specimen (the honest score), and over patches ignoring specimens.
SPLITS: tuple[str, ...] = ("grouped", "patch_level")


def _check_range(name: str, value, **bounds) -> tuple[float, float]:
    """A ``(low, high)`` pair to draw from: each end :func:`check_real` with ``bounds``,
    ``low < high`` (equal ends would give every specimen the same value: a constant target)."""
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    low = check_real(f"{name} low", low, **bounds)
    high = check_real(f"{name} high", high, **bounds)
    if not low < high:
        raise ValueError(f"{name} must have low < high, got {value!r}")
    return low, high


def _specimens(n_specimens, patches_per_specimen, size, lengths, fractions, seed):
    """Patches ``(n, size, size)`` uint8, their specimen, and each specimen's parameters.

    Specimen ``s`` draws its correlation length and volume fraction uniformly
    from the ranges and is one periodic :func:`~microtex.synth.two_phase_field`
    of ``rows x columns`` patches (``rows = ceil(sqrt(p))``), cut into tiles
    in row-major order of which the first ``patches_per_specimen`` are kept.
    """
    rng = np.random.default_rng(seed)
    rows = math.ceil(math.sqrt(patches_per_specimen))
    columns = math.ceil(patches_per_specimen / rows)
    params = {"correlation_length": rng.uniform(*lengths, n_specimens),
              "volume_fraction": rng.uniform(*fractions, n_specimens),
              "seed": rng.integers(0, 2**31 - 1, n_specimens)}  # fmt: skip
    patches = []
    for s in range(n_specimens):
        field = synth.two_phase_field((rows * size, columns * size),
                                      params["correlation_length"][s],
                                      params["volume_fraction"][s], int(params["seed"][s]))
        tiles = field.reshape(rows, size, columns, size).transpose(0, 2, 1, 3)
        tiles = tiles.reshape(-1, size, size)
        patches.append(tiles[:patches_per_specimen])
    groups = np.repeat(np.arange(n_specimens), patches_per_specimen)
    return np.concatenate(patches), groups, params


def _cnn_features(patches, taps, pool, n_threads) -> tuple[np.ndarray, int]:
    from microtex.features.texture import TextureFeaturizer

    featurizer = TextureFeaturizer(taps=taps, pool=pool, device="cpu", n_threads=n_threads)
    try:
        features = featurizer.fit(None).transform(patches.astype(np.float32))
    except ImportError as exc:  # the graph is exported from PyTorch on first use
        raise ImportError(f"{exc}; or leave the CNN comparison out (cnn=False, "
                          "microtex mks --no-cnn)") from None  # fmt: skip
    return features, features.shape[1]


def _scatter_chart(results: list[dict], cv: dict, groups, targets, methods, path):
    """Predicted (out-of-fold, first repeat) against true: a row per target, a panel per method
    and split, points coloured by specimen."""
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    columns = [(m, s) for m in methods for s in SPLITS]
    fig, axes = plt.subplots(len(targets), len(columns), squeeze=False,
                             figsize=(2.9 * len(columns), 2.8 * len(targets)))  # fmt: skip
    for i, target in enumerate(targets):
        for j, (method, split) in enumerate(columns):
            ax, result = axes[i][j], cv[target, method, split]
            row = next(r for r in results
                       if (r["target"], r["method"], r["split"]) == (target, method, split))
            ax.scatter(result.y, result.predictions[0], s=6, c=groups, cmap="tab20",
                       linewidths=0)  # fmt: skip
            low, high = float(result.y.min()), float(result.y.max())
            ax.plot([low, high], [low, high], "k-", linewidth=0.8)
            ax.set_title(f"{method}, {split.replace('_', '-')}: R² {row['r2_mean']:.3f}",
                         fontsize="small")  # fmt: skip
            ax.tick_params(labelsize="x-small")
            if j == 0:
                ax.set_ylabel(f"predicted {target.replace('_', ' ')}", fontsize="small")
            if i == len(targets) - 1:
                ax.set_xlabel("true", fontsize="small")
    return _save(fig, path)


def _csv(results: list[dict]) -> str:
    header = ["target", "method", "split", "n_features", "r2_mean", "r2_std", "mae_mean",
              "rmse_mean", "fold_r2_mean", "fold_r2_std", "inflation"]  # fmt: skip
    from microtex.report import csv_text

    return csv_text(header, [[row[k] for k in header] for row in results])


def run_mks(
    output,
    *,
    n_specimens: int = 16,
    patches_per_specimen: int = 25,
    size: int = 64,
    seed: int = 0,
    correlation_length_range: tuple[float, float] = (1.5, 6.0),
    volume_fraction_range: tuple[float, float] = (0.25, 0.75),
    conductivities: tuple[float, float] = (1.0, 10.0),
    cutoff: int = 12,
    n_components: int = 6,
    degree: int = 2,
    alpha: float = 0.0,
    cnn: bool = True,
    cnn_taps=("relu1_1", "relu2_1"),
    cnn_pool=("mean", "gram"),
    cnn_alpha: float = 1.0,
    targets=TARGETS,
    n_splits: int = 4,
    n_repeats: int = 5,
    eigen_components: int = 8,
    n_threads: int | None = None,
) -> dict:
    """The offline structure–property study: S2+PCA and CNN features, grouped vs patch split.

    ``n_specimens`` two-phase specimens (:func:`~microtex.synth.two_phase_field`,
    phase 1 the pixels of largest field value), each with a correlation
    length and a volume fraction drawn uniformly from the ranges, are cut into
    ``patches_per_specimen`` patches of ``size`` x ``size`` pixels. Each patch's
    property is its effective conductivity along the rows
    (:func:`effective_conductivity`, phase 0 and phase 1 at
    ``conductivities``); its specimen's correlation length and volume
    fraction are regressed too (``targets``). Two models, each under repeated
    K-fold grouped by specimen and repeated K-fold over patches:

    * ``mks``: :func:`mks_pipeline` on the patches' phase-1 indicators
      (non-periodic S2: a patch does not tile), ``n_components`` PCA scores,
      a polynomial of ``degree``, least squares (``alpha``);
    * ``cnn``: :class:`~microtex.features.texture.TextureFeaturizer` features
      of the patches as images in [0, 1] (``cnn_taps`` pooled by
      ``cnn_pool``), then the same :func:`regression_head` with
      ``Ridge(cnn_alpha)`` (thousands of Gram features).

    The patch-level split puts sibling patches, which share the specimen's
    parameters, on both sides of a split; ``inflation`` is its mean R² minus
    the grouped mean R². Eigen-microstructures of the standardized patches
    and of their S2 maps show what the PCA sees.

    Parameters
    ----------
    output : path
        Folder of the report: ``mks.json`` (configuration, specimens, every
        score, timings), ``mks.csv`` (a row per target × method × split),
        ``predicted_vs_true.png``, ``eigen_images_{modes,variance}.png``,
        ``eigen_s2_{modes,variance}.png`` and ``patches.png``.
    n_specimens, patches_per_specimen, size, seed
        The data set (deterministic given ``seed``).
    correlation_length_range, volume_fraction_range
        Uniform ranges ``(low, high)``, ``low < high``, of the specimens' parameters
        (pixels, > 0; fraction of phase 1, in [0, 1]).
    conductivities
        Of phase 0 and phase 1.
    cutoff, n_components, degree, alpha
        The MKS pipeline; ``n_components`` and ``degree`` also the CNN head's.
    cnn, cnn_taps, cnn_pool, cnn_alpha
        Whether to run the CNN comparison (it needs the VGG19 graph, exported
        by PyTorch on first use), its layers, poolings and ridge strength.
    targets : sequence of str
        From :data:`TARGETS`.
    n_splits, n_repeats
        K and the repeats of both splits (seeded by ``seed``).
    eigen_components : int
        Modes of the eigen-microstructure analyses.
    n_threads : int, optional
        Threads of the S2 kernel and the network.

    Returns
    -------
    dict
        The report, as written to ``mks.json``.
    """
    from sklearn.pipeline import Pipeline

    from microtex.features.spectra import max_cutoff, two_point
    from microtex.report import montage, write_json

    start = time.perf_counter()
    n_specimens = check_positive_int("n_specimens", n_specimens)
    patches_per_specimen = check_positive_int("patches_per_specimen", patches_per_specimen)
    size = check_positive_int("size", size)
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    lengths = _check_range("correlation_length_range", correlation_length_range, minimum=0.0,
                           inclusive=False)  # fmt: skip
    fractions = _check_range("volume_fraction_range", volume_fraction_range, minimum=0.0,
                             maximum=1.0)  # fmt: skip
    cutoff = check_positive_int("cutoff", cutoff)
    if cutoff > max_cutoff(size, size):
        raise ValueError(f"cutoff {cutoff} is too large for {size}x{size} patches "
                         f"(at most {max_cutoff(size, size)})")  # fmt: skip
    targets = check_choices("targets", targets, TARGETS)
    if len(_check_conductivities(conductivities)) != 2:
        raise ValueError(f"conductivities must be two values (phase 0, phase 1), "
                         f"got {conductivities!r}")  # fmt: skip
    seed = check_non_negative_int("seed", seed)
    n_repeats = check_positive_int("n_repeats", n_repeats)
    eigen_components = check_positive_int("eigen_components", eigen_components)
    n_patches = n_specimens * patches_per_specimen
    if eigen_components > min(n_patches, (2 * cutoff + 1) ** 2):
        raise ValueError(f"eigen_components={eigen_components} is more than the "
                         f"{min(n_patches, (2 * cutoff + 1) ** 2)} modes the patches' S2 maps "
                         "have")  # fmt: skip
    methods = METHODS if cnn else METHODS[:1]
    # folds that cannot be made fail now, before any work
    regression_splits(n_patches, np.repeat(np.arange(n_specimens), patches_per_specimen),
                      n_splits=n_splits, n_repeats=1)  # fmt: skip
    mks_model = mks_pipeline(cutoff, n_components, degree, periodic_boundary=False, alpha=alpha,
                             n_threads=n_threads)  # fmt: skip
    cnn_model = Pipeline(regression_head(n_components, degree, cnn_alpha, svd_solver="randomized",
                                         random_state=seed))  # fmt: skip
    seconds: dict[str, float] = {}

    began = time.perf_counter()
    patches, groups, params = _specimens(n_specimens, patches_per_specimen, size, lengths,
                                         fractions, seed)  # fmt: skip
    seconds["fields"] = time.perf_counter() - began
    features = {"mks": patches}
    n_features = {"mks": (2 * cutoff + 1) ** 2}
    if cnn:
        began = time.perf_counter()
        features["cnn"], n_features["cnn"] = _cnn_features(patches, cnn_taps, cnn_pool, n_threads)
        seconds["cnn_features"] = time.perf_counter() - began
    began = time.perf_counter()
    conductivity = np.array([effective_conductivity(p, conductivities, axis=1) for p in patches])
    seconds["conductivity"] = time.perf_counter() - began
    values = {"conductivity": conductivity,
              "correlation_length": params["correlation_length"][groups],
              "volume_fraction": params["volume_fraction"][groups]}  # fmt: skip

    began = time.perf_counter()
    cv, results = {}, []
    models = {"mks": mks_model, "cnn": cnn_model}
    for target in targets:
        for method in methods:
            pair = {}
            for split in SPLITS:
                result = cross_validate_regression(
                    models[method], features[method], values[target],
                    groups if split == "grouped" else None, n_splits=n_splits,
                    n_repeats=n_repeats, random_state=seed,
                )  # fmt: skip
                cv[target, method, split] = pair[split] = result
            inflation = float(np.mean(pair["patch_level"].r2) - np.mean(pair["grouped"].r2))
            for split, result in pair.items():
                summary = result.summary()
                results.append({
                    "target": target, "method": method, "split": split,
                    "n_features": n_features[method],
                    "r2_mean": summary["r2"]["mean"], "r2_std": summary["r2"]["std"],
                    "mae_mean": summary["mae"]["mean"], "rmse_mean": summary["rmse"]["mean"],
                    "fold_r2_mean": summary["fold_r2"]["mean"],
                    "fold_r2_std": summary["fold_r2"]["std"],
                    "inflation": inflation, "scores": summary,
                })  # fmt: skip
            log.info("%s / %s: R² grouped %.3f, patch-level %.3f", target, method,
                     np.mean(pair["grouped"].r2), np.mean(pair["patch_level"].r2))
    seconds["cross_validation"] = time.perf_counter() - began

    began = time.perf_counter()
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    s2 = two_point(patches, periodic_boundary=False, cutoff=cutoff, n_threads=n_threads)
    eigen = {}
    for name, fields in (("images", patches), ("s2", s2)):
        result = eigen_microstructures(fields, eigen_components)
        scores = result.scores
        eigen[name] = {**result.summary(), "score_correlations": {
            target: [float(np.corrcoef(scores[:, k], values[target])[0, 1])
                     for k in range(scores.shape[1])] for target in TARGETS}}  # fmt: skip
        what = "patches (standardized per pixel)" if name == "images" else "S2 of the patches"
        plot_eigen_microstructures(result, output, prefix=f"eigen_{name}",
                                   title=f"eigen-microstructures of the {what}")  # fmt: skip
    seconds["eigen_microstructures"] = time.perf_counter() - began

    report = {
        "settings": {
            "n_specimens": n_specimens, "patches_per_specimen": patches_per_specimen,
            "size": size, "seed": seed, "correlation_length_range": list(lengths),
            "volume_fraction_range": list(fractions), "conductivities": list(conductivities),
            "conductivity_axis": "along the rows (electrodes on the left and right faces)",
            "cutoff": cutoff, "periodic_boundary": False, "n_components": n_components,
            "degree": degree, "alpha": alpha, "cnn": bool(cnn),
            "cnn_taps": list(cnn_taps) if not isinstance(cnn_taps, str) else cnn_taps,
            "cnn_pool": list(cnn_pool) if not isinstance(cnn_pool, str) else cnn_pool,
            "cnn_alpha": cnn_alpha, "targets": list(targets), "methods": list(methods),
            "n_splits": n_splits, "n_repeats": n_repeats, "eigen_components": eigen_components,
        },
        "n_patches": int(len(patches)),
        "specimens": [{"correlation_length": float(params["correlation_length"][s]),
                       "volume_fraction": float(params["volume_fraction"][s]),
                       "seed": int(params["seed"][s])} for s in range(n_specimens)],
        "property": {"conductivity": {"min": float(conductivity.min()),
                                      "max": float(conductivity.max()),
                                      "mean": float(conductivity.mean())}},
        "results": results,
        "inflation": {
            f"{r['target']}/{r['method']}": r["inflation"] for r in results
            if r["split"] == "grouped"
        },
        "inflation_is": "mean R² with a patch-level split minus mean R² with a split grouped by "
                        "specimen: what letting a specimen's patches sit on both sides of a "
                        "split adds to the score",
        "eigen_microstructures": eigen,
    }  # fmt: skip
    shown = [patches[s * patches_per_specimen] for s in range(min(n_specimens, 8))]
    titles = [f"l={params['correlation_length'][s]:.1f} V={params['volume_fraction'][s]:.2f}"
              for s in range(len(shown))]  # fmt: skip
    montage([p.astype(np.float32) for p in shown], titles, output / "patches.png")
    _scatter_chart(results, cv, groups, targets, methods, output / "predicted_vs_true.png")
    seconds["total"] = time.perf_counter() - start
    report["seconds"] = seconds
    write_json(output / "mks.json", report)
    _files.atomic_write_text(output / "mks.csv", _csv(results))
    return report
