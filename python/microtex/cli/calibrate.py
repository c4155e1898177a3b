"""``microtex calibrate IMAGES -o BUNDLE``: an int8 featurizer calibrated on your images."""

from __future__ import annotations

import sys

from microtex.cli.featurize import (
    add_batch_options,
    add_featurizer_options,
    featurizer_from_args,
    report_failures,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="quantize the network to int8 on your images (the first 20; the next "
                          "10 measure the error) -> featurizer bundle with its accuracy report",
    )
    p.add_argument("images", nargs="*",
                   help="image files or folders, typical of what you will featurize "
                        "(default: --labels' images, else built-in synthetic textures)")
    p.add_argument("--labels", default=None,
                   help="CSV with columns path and label: also compare float32 and int8 "
                        "features downstream (random-forest macro F1 on the same CV splits)")
    p.add_argument("--groups", default=None, help="CSV column of each image's group (specimen)")
    p.add_argument("--cv-repeats", type=int, default=3, help="repeats of 3-fold CV (--labels)")
    p.add_argument("-o", "--output", required=True, help="the featurizer bundle to write")
    p.add_argument("--overwrite", action="store_true")
    add_featurizer_options(p)
    add_batch_options(p)
    p.set_defaults(precision="int8")  # fmt: skip


def run(args) -> int:
    from microtex.bundle import check_target

    if args.precision != "int8":
        raise ValueError(f"calibrate makes int8 bundles; --precision {args.precision} needs none")
    check_target(args.output, overwrite=args.overwrite)  # before the work, not after it
    images, labels = list(args.images), None
    if args.groups and not args.labels:
        raise ValueError("--groups names a column of --labels; give --labels too")
    if args.labels:
        from microtex.analysis.classify import cv_splits
        from microtex.io.labels import read_labels

        if args.cv_repeats < 1:
            raise ValueError(f"--cv-repeats must be 1 or more, got {args.cv_repeats}")
        labels = read_labels(args.labels, groups=args.groups)
        # folds that cannot be made fail now, not after the calibration
        cv_splits(labels.labels, labels.groups, n_repeats=1, random_state=args.seed)
        images = images or [str(path) for path in labels.paths]
    featurizer = featurizer_from_args(args)
    failures: list = []
    featurizer.fit(images or None, on_error=args.on_error, failures=failures)
    report_failures(failures)
    report = featurizer.int8_report_
    if labels is not None:
        report["downstream"] = _downstream(featurizer, labels, args)
    featurizer.save(args.output, overwrite=args.overwrite)
    where = "held-out" if report["held_out"] else "calibration (too few to hold any out)"
    what = " built-in texture" if report.get("calibration") == "built-in textures" else ""
    print(f"int8 calibrated on {report['calibration_images']}{what} images; error against "
          f"float32 on {report['test_images']} {where}{what} images (median / max relative):")
    if what:
        print("microtex: note: calibrating on images like the ones you will featurize is more "
              "accurate (microtex calibrate IMAGES)", file=sys.stderr)
    noise = report["float32_noise"]["relative_error"]
    print("  (and, as a yardstick, the median change of float32 under Gaussian noise of one "
          "8-bit gray level)")
    for feature, error in report["relative_error"].items():
        print(f"  {feature:16s} {100 * error['median']:6.2f} % / {100 * error['max']:6.2f} %"
              f"   ({100 * noise[feature]['median']:.2f} %)")
    if "nearest_neighbour_agreement" in report:
        print(f"nearest neighbour unchanged for {100 * report['nearest_neighbour_agreement']:.0f} %"
              " of the images")
    verdict = "within" if report["within_tolerance"] else "OUTSIDE"
    print(f"worst median {report['worst']['feature']} {100 * report['worst']['median']:.2f} %: "
          f"{verdict} the {100 * report['tolerance']:.0f} % tolerance; bundle: {args.output}")
    if "downstream" in report:
        d = report["downstream"]
        print(f"random forest on {d['n_images']} labelled images, {d['splits']}: macro F1 "
              f"{d['f1_float32']:.3f} ± {d['f1_float32_std']:.3f} (float32) vs "
              f"{d['f1_int8']:.3f} ± {d['f1_int8_std']:.3f} (int8); the same nearest neighbour "
              f"for {100 * d['nearest_neighbour_agreement']:.0f} %")
    if report["cpu_vnni"] is False:
        print("microtex: warning: this CPU has no VNNI: int8 gains little here", file=sys.stderr)
    return 0


def _downstream(featurizer, labels, args) -> dict:
    """float32 vs int8 features of the labelled images: forest macro F1 on the same splits."""
    import numpy as np

    from microtex.analysis.classify import evaluate_features
    from microtex.analysis.distances import pairwise_distances

    paths = [str(p) for p in labels.paths]
    float32 = type(featurizer)(**{**featurizer.params_, "precision": "fp32",
                                  "conv_algorithm": "direct"})  # fmt: skip
    float32.fit(paths, on_error=args.on_error)
    tables = {}
    for name, model in (("float32", float32), ("int8", featurizer)):
        rows = {}
        for batch_ids, batch in model.iter_features(paths, on_error=args.on_error):
            rows.update(zip(batch_ids, batch))
        tables[name] = rows
    # the images both read, in the labels' order (a path listed twice counts once)
    ids = [p for p in dict.fromkeys(paths) if p in tables["int8"] and p in tables["float32"]]
    row = {p: i for i, p in reversed(list(enumerate(paths)))}
    keep = [row[p] for p in ids]
    y = labels.labels[keep]
    groups = None if labels.groups is None else labels.groups[keep]
    tables = {name: (ids, np.stack([rows[p] for p in ids])) for name, rows in tables.items()}
    scores = {name: evaluate_features(X, y, groups, n_estimators=100, n_repeats=args.cv_repeats,
                                      random_state=args.seed).summary()["f1_macro"]
              for name, (_, X) in tables.items()}  # fmt: skip
    nearest = {}
    for name, (_, X) in tables.items():
        distances = pairwise_distances(X)
        np.fill_diagonal(distances, np.inf)
        nearest[name] = np.argmin(distances, axis=1)
    split = "grouped " if groups is not None else ""
    return {
        "n_images": len(y),
        "splits": f"{args.cv_repeats} x {split}3-fold CV, 100 trees, seed {args.seed}",
        "f1_float32": scores["float32"]["mean"], "f1_float32_std": scores["float32"]["std"],
        "f1_int8": scores["int8"]["mean"], "f1_int8_std": scores["int8"]["std"],
        "nearest_neighbour_agreement": float(np.mean(nearest["float32"] == nearest["int8"])),
    }  # fmt: skip
