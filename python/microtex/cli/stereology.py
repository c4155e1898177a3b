"""``microtex stereology``: V_V, S_V, intercepts, grain size and particles of micrographs."""

from __future__ import annotations

import argparse
import sys

from microtex._validation import ON_ERROR
from microtex.cli._types import crop_bottom, positive


def _threshold(text: str):
    """``otsu`` or a number in [0, 1]."""
    from microtex.features.segment import check_threshold

    try:
        return check_threshold(text if text == "otsu" else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"threshold must be 'otsu' or a number in [0, 1], got {text!r}"
        ) from None


def _positive_number(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    s = subparsers.add_parser(
        "stereology",
        help="stereology of micrographs (V_V, S_V, intercepts, ASTM G, particles) -> table",
        description="Segment each micrograph (Otsu by default; the bright phase is the phase "
        "of interest) and measure it: one row per image.",
    )
    s.add_argument("images", nargs="+", help="image files and/or directories")
    s.add_argument("-o", "--output", required=True, help="output table: .parquet, .npz or .csv")
    s.add_argument(
        "--pixel-size",
        type=_positive_number,
        default=None,
        metavar="UM",
        help="pixel side in µm: adds every length in µm and the ASTM E112 grain size G",
    )
    s.add_argument(
        "--threshold", type=_threshold, default="otsu", help="otsu (default) or a gray level 0..1"
    )
    s.add_argument(
        "--phase",
        default="bright",
        choices=("bright", "dark"),
        help="phase of interest: pixels above the threshold (bright, default) or not",
    )
    s.add_argument(
        "--spacing", type=positive, default=1, help="pixels between test lines (default 1)"
    )
    s.add_argument(
        "--denoise", type=_positive_number, default=None, metavar="SIGMA",
        help="Gaussian blur (pixels) before thresholding",
    )  # fmt: skip
    s.add_argument("--connectivity", type=int, default=8, choices=(4, 8), help="of particles")
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


def run(args) -> int:
    from microtex.cli.featurize import check_output, report_failures
    from microtex.errors import NoImagesError
    from microtex.features.stereology import stereology_table

    check_output(args.output)  # before any work
    try:
        table = stereology_table(
            args.images,
            crop_bottom=args.crop_bottom,
            on_error=args.on_error,
            threshold=args.threshold,
            phase=args.phase,
            spacing=args.spacing,
            pixel_size_um=args.pixel_size,
            denoise=args.denoise,
            connectivity=args.connectivity,
            exclude_border=args.exclude_border,
        )
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
