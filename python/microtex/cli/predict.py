"""``microtex predict``: classes and probabilities of images from a classifier bundle."""

from __future__ import annotations

import sys

from microtex.cli.featurize import add_batch_options, add_dataset_options, report_failures


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify images with a classifier bundle -> CSV")
    p.add_argument("bundle", help="a classifier bundle (microtex train)")
    p.add_argument("images", nargs="+", help="image files and/or directories")
    p.add_argument(
        "-o", "--output", required=True,
        help="predictions .csv: id, class, p:CLASS...; or a folder (OUT/): a sharded Parquet "
        "dataset of the p:CLASS columns that a rerun resumes",
    )  # fmt: skip
    add_batch_options(p)
    add_dataset_options(p)


def _csv(ids, classes, probabilities) -> str:
    from microtex.report import csv_text

    return csv_text(["id", "class", *(f"p:{c}" for c in classes)],
                    [[image_id, classes[int(row.argmax())], *(f"{p:.6g}" for p in row)]
                     for image_id, row in zip(ids, probabilities)])  # fmt: skip


def run(args) -> int:
    import numpy as np

    from microtex._files import atomic_write_bytes, check_can_write
    from microtex.analysis.classify import load_classifier
    from microtex.io.shards import is_dataset_target

    if is_dataset_target(args.output):
        return _run_dataset(args)

    if not args.output.lower().endswith(".csv"):
        raise ValueError(f"output {args.output!r}: predictions are written as .csv")
    check_can_write(args.output)  # before any work
    model = load_classifier(args.bundle)
    failures: list = []
    ids, parts = [], []
    for batch_ids, probabilities in model.iter_predictions(
        args.images, on_error=args.on_error, failures=failures
    ):
        ids.extend(batch_ids)
        parts.append(probabilities)
    report_failures(failures)
    if not ids:
        print("microtex: error: no image could be classified", file=sys.stderr)
        return 1
    text = _csv(ids, [str(c) for c in model.classes_], np.concatenate(parts))
    atomic_write_bytes(args.output, text.encode("utf-8", "surrogateescape"))
    print(f"classified {len(ids)} images ({len(failures)} skipped) -> {args.output}")
    return 0


def _run_dataset(args) -> int:
    """``-o FOLDER``: class probabilities shard by shard; a rerun resumes."""
    import pathlib
    import time

    import numpy as np

    from microtex._files import sha256_file
    from microtex.analysis.classify import load_classifier
    from microtex.cli.featurize import run_dataset
    from microtex.io.table import FeatureTable

    model = load_classifier(args.bundle)  # verified: its manifest's checksums cover every file
    config = {"kind": "predict", "bundle": sha256_file(pathlib.Path(args.bundle, "microtex.json"))}
    columns = [f"p:{c}" for c in model.classes_]

    def compute(paths):
        shard_start, failures, ids, parts = time.perf_counter(), [], [], []
        for batch_ids, probabilities in model.iter_predictions(
            paths, on_error=args.on_error, failures=failures
        ):
            ids.extend(batch_ids)
            parts.append(np.asarray(probabilities, np.float32))
        rows = np.concatenate(parts) if parts else np.zeros((0, len(columns)), np.float32)
        return FeatureTable(rows, columns, ids, failures, time.perf_counter() - shard_start)

    return run_dataset(args, config, compute, "classified")
