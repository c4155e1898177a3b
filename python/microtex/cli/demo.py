"""``microtex demo``: the main job on built-in synthetic micrographs."""

from __future__ import annotations

import sys

from microtex.cli._types import positive
from microtex.engine.session import DEVICES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="featurize built-in synthetic micrographs and write a report"
    )
    parser.add_argument("-o", "--output", default="microtex-report",
                        help="report folder (default: %(default)s)")
    parser.add_argument("--n-per-class", type=positive, default=12,
                        help="textures per class (default: %(default)s)")
    parser.add_argument("--size", type=positive, default=128,
                        help="texture side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from microtex.demo import run_demo

    summary = run_demo(args.output, n_per_class=args.n_per_class, size=args.size, seed=args.seed,
                       device=args.device,
                       progress=not args.no_progress and sys.stderr.isatty())
    print(f"demo: {summary['images']} textures ({len(summary['classes'])} classes, "
          f"{summary['image_size']}x{summary['image_size']}) -> {summary['features']} features "
          f"in {summary['seconds_featurize']:.1f} s ({summary['images_per_second']:.1f} images/s, "
          f"{args.device})")
    print(f"demo: 2-D PCA explains {100 * sum(summary['pca_explained_variance_ratio']):.1f}% of "
          f"the variance; silhouette {summary['silhouette_pca2']:.2f}; leave-one-out 1-NN "
          f"accuracy {100 * summary['leave_one_out_1nn_accuracy']:.1f}%")
    print(f"demo: report in {args.output}/ ({', '.join(summary['files'])})")
    return 0
