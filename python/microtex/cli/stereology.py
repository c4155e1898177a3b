"""``microtex stereology``: V_V, S_V, intercepts, grain size and particles of micrographs."""

from __future__ import annotations

import inspect
import sys

from microtex._validation import ON_ERROR
from microtex.cli._types import crop_bottom, positive, positive_real, real
from microtex.features.segment import PHASES
from microtex.features.stereology import CONNECTIVITIES, measure

#: ``otsu`` or a gray level in [0, 1], as :func:`microtex.features.segment.segment` takes it.
_threshold = real("threshold", minimum=0.0, maximum=1.0, words=("otsu",),
                  what="'otsu' or a number in [0, 1]")  # fmt: skip


def _defaults() -> dict:
    """:func:`~microtex.features.stereology.measure`'s defaults: written there once, shown here."""
    return {name: p.default for name, p in inspect.signature(measure).parameters.items()}


def add_parser(subparsers) -> None:
    d = _defaults()
    s = subparsers.add_parser(
        "stereology",
        help="stereology of micrographs (V_V, S_V, intercepts, ASTM G, particles) -> table",
        description="Segment each micrograph (Otsu by default; the bright phase is the phase "
        "of interest) and measure it: one row per image. Among the columns: mean_intercept "
        "and d_f (the same number: the mean intercept of the phase of interest, Noguchi & "
        "Inoue's mean free path d_f when that phase is the ferrite) and mean_free_path "
        "(Fullman's lambda: the mean intercept of the OTHER phase, the edge-to-edge distance "
        "between regions of the phase of interest). Conventions: the docstring of "
        "microtex.features.stereology.",
    )
    s.add_argument("images", nargs="+", help="image files and/or directories")
    s.add_argument(
        "-o", "--output", required=True,
        help="output table: .parquet, .npz or .csv; or a folder (OUT/): a sharded Parquet "
        "dataset that a rerun resumes",
    )  # fmt: skip
    s.add_argument(
        "--pixel-size",
        type=positive_real,
        default=d["pixel_size_um"],
        metavar="UM",
        help="pixel side in µm: adds every length in µm and the ASTM E112 grain size G",
    )
    s.add_argument(
        "--threshold",
        type=_threshold,
        default=d["threshold"],
        help=f"otsu or a gray level 0..1 (default {d['threshold']})",
    )
    s.add_argument(
        "--phase",
        default=d["phase"],
        choices=PHASES,
        help=f"phase of interest: pixels above the threshold (bright) or not (default "
        f"{d['phase']})",
    )
    s.add_argument(
        "--spacing",
        type=positive,
        default=d["spacing"],
        help=f"pixels between test lines (default {d['spacing']})",
    )
    s.add_argument(
        "--denoise", type=positive_real, default=d["denoise"], metavar="SIGMA",
        help="Gaussian blur (pixels) before thresholding",
    )  # fmt: skip
    s.add_argument(
        "--connectivity",
        type=int,
        default=d["connectivity"],
        choices=CONNECTIVITIES,
        help=f"of particles (default {d['connectivity']})",
    )
    s.add_argument(
        "--exclude-border", action="store_true", help="leave particles touching the border out"
    )
    s.add_argument(
        "--crop-bottom", type=crop_bottom, default=None, help="rows of info band to drop, or 'auto'"
    )
    s.add_argument(
        "--on-error",
        default="skip",
        choices=ON_ERROR,
        help="unreadable or unmeasurable images: report and skip (default) or stop",
    )
    from microtex.cli.featurize import add_dataset_options

    add_dataset_options(s)


def run(args) -> int:
    from microtex.cli.featurize import check_output, report_failures
    from microtex.errors import NoImagesError
    from microtex.features.stereology_table import stereology_table
    from microtex.io.shards import is_dataset_target

    if is_dataset_target(args.output):
        return _run_dataset(args)
    check_output(args.output)  # before any work
    try:
        table = stereology_table(args.images, **_options(args))
    except NoImagesError as exc:
        report_failures(exc.failures)
        print("microtex: error: no image could be measured", file=sys.stderr)
        return 1
    report_failures(table.failures)
    if not table.ids:
        print("microtex: error: no image could be measured", file=sys.stderr)
        return 1
    table.write(args.output)
    print(
        f"measured {len(table.ids)} images ({len(table.failures)} skipped) -> "
        f"{len(table.columns)} numbers in {table.seconds:.2f} s -> {args.output}"
    )
    return 0


def _options(args) -> dict:
    return {"crop_bottom": args.crop_bottom, "on_error": args.on_error,
            "threshold": args.threshold, "phase": args.phase, "spacing": args.spacing,
            "pixel_size_um": args.pixel_size, "denoise": args.denoise,
            "connectivity": args.connectivity, "exclude_border": args.exclude_border}  # fmt: skip


def _run_dataset(args) -> int:
    """``-o FOLDER``: measure shard by shard into a dataset; a rerun resumes."""
    from microtex.cli.featurize import run_dataset
    from microtex.errors import NoImagesError
    from microtex.features.stereology_table import stereology_table
    from microtex.io.table import FeatureTable

    options = _options(args)
    config = {"kind": "stereology", **{k: v for k, v in options.items() if k != "on_error"}}
    empty = stereology_table([], **{k: v for k, v in options.items() if k != "crop_bottom"})

    def compute(paths):
        try:
            return stereology_table(paths, **options)
        except NoImagesError as exc:  # a shard of bad files: no rows, its failures recorded
            return FeatureTable(empty.features, empty.columns, [], exc.failures)

    return run_dataset(args, config, compute, "measured")
