"""``microtex study``: the layer × pooling grid of cross-validated F1 on labelled images."""

from __future__ import annotations

import sys

from microtex.backbones import ARCHITECTURES
from microtex.cli._types import crop_bottom, image_size, max_pixels, positive
from microtex.engine.session import DEVICES


def add_parser(subparsers) -> None:
    s = subparsers.add_parser(
        "study", help="which layer and pooling classify labelled images best (F1 ± std grid)"
    )
    s.add_argument("images", nargs="*",
                   help="images and/or folders to study (default: every image in --labels)")
    s.add_argument("--labels", required=True,
                   help="CSV with columns path (relative to the CSV, or absolute) and label")
    s.add_argument("-o", "--output", required=True, help="report folder")
    s.add_argument("--groups", default=None,
                   help="CSV column of each image's group (specimen): folds never split one")
    s.add_argument("--tile", type=positive, default=None, help="study TILE x TILE patches")
    s.add_argument("--tile-stride", type=positive, default=None)
    s.add_argument("--taps", default="block_last", help="layers of the grid (default block_last)")
    s.add_argument("--pools", default="mean,max,gram,vlad", help="poolings of the grid")
    s.add_argument("--no-raw", action="store_true", help="leave out the untransformed image")
    s.add_argument("--repeats", type=positive, default=10, help="repeats of K-fold CV")
    s.add_argument("--folds", type=positive, default=3, help="K")
    s.add_argument("--n-estimators", type=positive, default=100,
                   help="trees per forest (Ling et al.: 400; F1 moves by ~0.01 for 3.6x the time)")
    s.add_argument("--n-words", type=positive, default=32, help="VLAD words")
    s.add_argument("--vlad-positions", type=positive, default=512,
                   help="activation vectors per image and layer kept for VLAD")
    s.add_argument("--backbone", default="vgg19", choices=list(ARCHITECTURES))
    s.add_argument("--weights", default=None)
    s.add_argument("--image-size", type=image_size, default=None)
    s.add_argument("--crop-bottom", type=crop_bottom, default=None)
    s.add_argument("--max-pixels", type=max_pixels, default="auto")
    s.add_argument("--device", default="auto", choices=DEVICES)
    s.add_argument("--threads", type=positive, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")  # fmt: skip


def run(args) -> int:
    import os

    from microtex.analysis.study import run_study
    from microtex.io.labels import read_labels
    from microtex.io.read import expand_paths

    table = read_labels(args.labels, groups=args.groups)
    keep = range(len(table.paths))
    if args.images:
        wanted = {os.path.realpath(p) for p in expand_paths(args.images)}
        keep = [i for i, p in enumerate(table.paths) if os.path.realpath(p) in wanted]
        if not keep:
            raise ValueError(f"none of {args.images} is listed in {args.labels!r}")
    report = run_study(
        [table.paths[i] for i in keep],
        table.labels[list(keep)],
        None if table.groups is None else table.groups[list(keep)],
        output=args.output, backbone=args.backbone, weights=args.weights, taps=args.taps,
        pools=[p.strip() for p in args.pools.split(",") if p.strip()], raw=not args.no_raw,
        tile=args.tile, tile_stride=args.tile_stride, image_size=args.image_size,
        crop_bottom=args.crop_bottom, n_words=args.n_words, vlad_positions=args.vlad_positions,
        n_estimators=args.n_estimators, n_splits=args.folds, n_repeats=args.repeats,
        random_state=args.seed, device=args.device, n_threads=args.threads,
        max_pixels=args.max_pixels, progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip
    for path, reason in report["skipped"]:
        print(f"microtex: skipped {path}: {reason}", file=sys.stderr)
    honest = report["honest_split"]
    best = report["best"]
    print(f"{report['n_images']} images ({report['n_rows']} rows), "
          f"{len(report['results'])} combinations, {report['metric']} ({honest} split)")
    for row in report["results"]:
        line = (f"  {row['layer']:>8} {row['pool']:<5} {row[honest]['f1_macro']['mean']:.3f} "
                f"± {row[honest]['f1_macro']['std']:.3f}")
        if "inflation" in row:
            loose = report["loose_split"]
            line += (f"   {loose.replace('_', '-')} {row[loose]['f1_macro']['mean']:.3f} "
                     f"({row['inflation']:+.3f})")
        print(line)
    print(f"best: {best['layer']} / {best['pool']}: {best['f1_macro']['mean']:.3f} "
          f"± {best['f1_macro']['std']:.3f}")
    if "inflation" in report:
        print(f"the {report['loose_split'].replace('_', '-')} split inflates {report['metric']} by "
              f"{report['inflation']['mean']:+.3f} on average "
              f"(at most {report['inflation']['max']:+.3f})")
    print(f"report: {args.output}/ (study.json, study.csv, f1_grid.png, confusion_best.png)")
    return 0
