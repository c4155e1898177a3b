"""``microtex train``: fit a featurizer and a random forest on labelled images; save a bundle."""

from __future__ import annotations

import sys

from microtex.cli._types import positive
from microtex.cli.featurize import (
    add_batch_options,
    add_featurizer_options,
    featurizer_from_args,
    report_failures,
)


def add_parser(subparsers) -> None:
    t = subparsers.add_parser(
        "train", help="fit featurizer + random forest on labelled images -> classifier bundle"
    )
    t.add_argument("--labels", required=True,
                   help="CSV with columns path (relative to the CSV, or absolute) and label")
    t.add_argument("-o", "--output", required=True, help="the classifier bundle to write")
    t.add_argument("--groups", default=None,
                   help="CSV column of each image's group (specimen); cross-validation never "
                        "splits a group")  # fmt: skip
    t.add_argument("--n-estimators", type=positive, default=400, help="trees in the forest")
    t.add_argument("--study", default=None,
                   help="study.json of microtex study: its F1 ± std for this featurizer's "
                        "layer and pooling goes into the bundle")
    t.add_argument("--cv-repeats", type=int, default=3,
                   help="repeats of 3-fold cross-validation for the bundle's F1 (0: none)")
    add_featurizer_options(t)
    add_batch_options(t)


def run(args) -> int:
    import numpy as np
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    from microtex.analysis.classify import (
        cross_validate,
        cv_splits,
        make_forest,
        save_classifier,
    )
    from microtex.bundle import check_target
    from microtex.engine.export import require_skl2onnx
    from microtex.errors import NoImagesError
    from microtex.features.api import featurize
    from microtex.io.labels import read_labels

    require_skl2onnx("microtex train")  # before the work, not when saving after it
    if args.cv_repeats < 0:
        raise ValueError(f"--cv-repeats must be 0 or more, got {args.cv_repeats}")
    check_target(args.output, overwrite=True)  # before the work, not after it
    study = _study_row(args.study, args) if args.study else None
    labels = read_labels(args.labels, groups=args.groups)
    if args.cv_repeats:  # folds that cannot be made fail now, not after the network pass
        cv_splits(labels.labels, labels.groups, n_repeats=1, random_state=args.seed)
    featurizer = featurizer_from_args(args)
    paths = [str(p) for p in labels.paths]
    try:
        featurizer.fit(paths, on_error=args.on_error)
        table = featurize(paths, featurizer=featurizer, on_error=args.on_error,
                          progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    except NoImagesError as exc:
        report_failures(exc.failures)
        print("microtex: error: no image could be featurized", file=sys.stderr)
        return 1
    report_failures(table.failures)
    row_of = {path: i for i, path in enumerate(paths)}
    kept = np.array([row_of[i] for i in table.ids], dtype=np.int64)
    y = labels.labels[kept]
    groups = None if labels.groups is None else labels.groups[kept]
    if len(set(y.tolist())) < 2:
        print("microtex: error: the images read are all of one class", file=sys.stderr)
        return 1
    forest = make_forest(args.n_estimators, args.seed, n_jobs=args.threads)
    counts = {str(c): int((y == c).sum()) for c in sorted(set(y.tolist()))}
    training = {"n_images": len(y), "n_skipped": len(table.failures), "counts": counts}
    if args.cv_repeats:
        try:  # skipped files may have left too few of a class for the folds
            cv_splits(y, groups, n_repeats=1, random_state=args.seed)
        except ValueError as exc:
            print(f"microtex: warning: no cross-validation: {exc}", file=sys.stderr)
            args.cv_repeats = 0
    if args.cv_repeats:
        if featurizer.pipeline_.needs_fit():  # VLAD words are refitted inside every fold
            estimator = Pipeline([("features", clone(featurizer)), ("forest", forest)])
            X = [paths[i] for i in kept]
        else:  # per-image features: the table's rows are what every fold would compute
            estimator, X = forest, table.features
        result = cross_validate(estimator, X, y, groups, n_repeats=args.cv_repeats,
                                random_state=args.seed)  # fmt: skip
        training["cross_validation"] = result.summary()
        print(f"cross-validated {result}", file=sys.stderr)
    if study is not None:
        training["study"] = study
    forest.fit(table.features, y)
    pipeline = Pipeline([("features", featurizer), ("forest", forest)])
    save_classifier(pipeline, args.output, training=training, overwrite=True)
    print(f"trained on {len(y)} images ({len(table.failures)} skipped), "
          f"{len(training['counts'])} classes, {featurizer.n_features_out_} features -> "
          f"{args.output}")  # fmt: skip
    return 0


def _study_row(path: str, args) -> dict:
    """The study's numbers for the layer and pooling this featurizer computes."""
    import json
    import pathlib

    try:
        report = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        rows, honest = report["results"], report["honest_split"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--study {path!r} is not a microtex study.json ({exc})") from None
    taps = [t.strip() for t in ("raw" if args.raw else args.taps).split(",") if t.strip()]
    pools = [p.strip() for p in args.pool.split(",") if p.strip()]
    study_taps = report.get("settings", {}).get("taps", [])
    layer = taps[0] if len(taps) == 1 else ("all" if sorted(taps) == sorted(study_taps) else None)
    match = [r for r in rows if r["layer"] == layer and [r["pool"]] == pools]
    if not match:
        raise ValueError(
            f"--study {path!r} has no row for taps {args.taps!r} with pool {args.pool!r}; "
            "train one layer (or all the study's layers) with one pooling"
        )
    return {"file": str(path), "layer": layer, "pool": pools[0], "split": honest,
            "f1_macro": match[0][honest]["f1_macro"], "metric": report.get("metric")}
