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
    p.add_argument("images", nargs="+",
                   help="image files or folders, typical of what you will featurize")
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
    featurizer = featurizer_from_args(args)
    failures: list = []
    featurizer.fit(args.images, on_error=args.on_error, failures=failures)
    report_failures(failures)
    featurizer.save(args.output, overwrite=args.overwrite)
    report = featurizer.int8_report_
    where = "held-out" if report["held_out"] else "calibration (too few to hold any out)"
    print(f"int8 calibrated on {report['calibration_images']} images; error against float32 on "
          f"{report['test_images']} {where} images (median / max relative):")
    for feature, error in report["relative_error"].items():
        print(f"  {feature:16s} {100 * error['median']:6.2f} % / {100 * error['max']:6.2f} %")
    if "nearest_neighbour_agreement" in report:
        print(f"nearest neighbour unchanged for {100 * report['nearest_neighbour_agreement']:.0f} %"
              " of the images")
    verdict = "within" if report["within_tolerance"] else "OUTSIDE"
    print(f"worst median {report['worst']['feature']} {100 * report['worst']['median']:.2f} %: "
          f"{verdict} the {100 * report['tolerance']:.0f} % tolerance; bundle: {args.output}")
    if report["cpu_vnni"] is False:
        print("microtex: warning: this CPU has no VNNI: int8 gains little here", file=sys.stderr)
    return 0
