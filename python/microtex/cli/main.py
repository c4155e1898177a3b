"""The ``microtex`` command line.

    microtex demo [-o DIR]
    microtex featurize IMAGES_OR_DIR... -o features.parquet|.npz|.csv [options]

Errors a user can cause print one line (``microtex: error: ...``) and exit 2;
files that cannot be read are reported and skipped (exit 0 while at least one
image was featurized, 1 when none was).
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _image_size(text: str):
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return (int(h), int(w))
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N (short side) or HxW, got {text!r}") from None


def _crop_bottom(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"crop-bottom must be a number of rows >= 0 or 'auto', got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from microtex import __version__

    parser = argparse.ArgumentParser(prog="microtex", description="Inference engine for materials micrographs.")
    parser.add_argument("--version", action="version", version=f"microtex {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="featurize built-in synthetic micrographs and write a report")
    demo.add_argument("-o", "--output", default="microtex-report", help="report folder (default: %(default)s)")
    demo.add_argument("--n-per-class", type=_positive, default=12, help="textures per class (default: %(default)s)")
    demo.add_argument("--size", type=_positive, default=128, help="texture side in pixels (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    demo.add_argument("--no-progress", action="store_true")

    f = sub.add_parser("featurize", help="texture descriptors of micrographs -> feature table")
    f.add_argument("images", nargs="+", help="image files and/or directories")
    f.add_argument("-o", "--output", required=True, help="output table: .parquet, .npz or .csv")
    f.add_argument("--backbone", default="vgg19", choices=["vgg19", "vgg16"])
    f.add_argument("--weights", default=None, help="torchvision-format VGG state dict (default: shipped VGG19)")
    f.add_argument("--taps", default="block_first",
                   help="layers: names (relu3_1,...), presets block_first|block_last|all, or 'raw'")
    f.add_argument("--pool", default="mean,gram", help="comma list of mean,max,gram,vlad (default: %(default)s)")
    f.add_argument("--pooling", default="max", choices=["max", "avg"], help="pooling between VGG blocks")
    f.add_argument("--precision", default="fp32", choices=["fp32", "fp16"],
                   help="CNN arithmetic; fp16 is for --device cuda, pooling stays fp32 (default: %(default)s)")
    f.add_argument("--conv-algorithm", default="auto", choices=["auto", "direct", "winograd"],
                   help="3x3 convolutions in the graph; auto: winograd for fp32 on the CPU, else direct")
    f.add_argument("--gram-normalization", default="spatial", choices=["spatial", "sum", "lubbers"])
    f.add_argument("--gram-layout", default="triu", choices=["triu", "full"])
    f.add_argument("--n-words", type=_positive, default=32, help="VLAD dictionary size")
    f.add_argument("--raw", action="store_true", help="featurize the untransformed image (no CNN)")
    f.add_argument("--image-size", type=_image_size, default=None, help="N (short side) or HxW")
    f.add_argument("--crop-bottom", type=_crop_bottom, default=None, help="rows of info band to drop, or 'auto'")
    f.add_argument("--tile", type=_positive, default=None,
                   help="cut each image into TILE x TILE patches, one row each (id PATH@ROW,COL)")
    f.add_argument("--tile-stride", type=_positive, default=None,
                   help="step between tiles (default: --tile, no overlap)")
    f.add_argument("--batch-size", type=_positive, default=8)
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    f.add_argument("--engine", default="auto", choices=["auto", "kernels", "graph"])
    f.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: all)")
    f.add_argument("--on-error", default="skip", choices=["skip", "raise"],
                   help="unreadable files: report and skip (default) or stop")
    f.add_argument("--seed", type=int, default=0, help="seed of the VLAD fit")
    f.add_argument("--save-bundle", default=None, help="also save the fitted featurizer as a model bundle")
    f.add_argument("--no-progress", action="store_true")
    return parser


def _demo(args) -> int:
    from microtex.demo import run_demo

    summary = run_demo(args.output, n_per_class=args.n_per_class, size=args.size, seed=args.seed,
                       device=args.device, progress=not args.no_progress and sys.stderr.isatty())
    print(f"demo: {summary['images']} textures ({len(summary['classes'])} classes, "
          f"{summary['image_size']}x{summary['image_size']}) -> {summary['features']} features "
          f"in {summary['seconds_featurize']:.1f} s ({summary['images_per_second']:.1f} images/s, {args.device})")
    print(f"demo: 2-D PCA explains {100 * sum(summary['pca_explained_variance_ratio']):.1f}% of the variance; "
          f"silhouette {summary['silhouette_pca2']:.2f}; leave-one-out 1-NN accuracy "
          f"{100 * summary['leave_one_out_1nn_accuracy']:.1f}%")
    print(f"demo: report in {args.output}/ ({', '.join(summary['files'])})")
    return 0


def _crop_report(cropped: dict, n_images: int, verbose: bool) -> str:
    """What ``--crop-bottom auto`` found, in one line."""
    if not cropped:
        return f"no bottom info band found in {n_images} images"
    rows = sorted(cropped.values())
    span = f"{rows[0]}" if rows[0] == rows[-1] else f"{rows[0]}-{rows[-1]}"
    listed = "" if verbose else " (microtex -v featurize ... lists them)"
    return f"removed a bottom info band of {span} rows from {len(rows)} of {n_images} images{listed}"


def _featurize(args) -> int:
    from microtex.featurizer import TextureFeaturizer, _tiles, featurize

    suffix = args.output.lower().rsplit(".", 1)[-1] if "." in args.output else ""
    if suffix not in ("parquet", "npz", "csv"):
        raise ValueError(f"output {args.output!r} must end in .parquet, .npz or .csv")
    if suffix == "parquet":  # before any work, not after the whole folder is featurized
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ImportError(f"output {args.output!r}: writing .parquet needs pyarrow: "
                              "pip install 'microtex[parquet]', or write .npz or .csv") from None
    featurizer = TextureFeaturizer(
        backbone=args.backbone, weights=args.weights, taps="raw" if args.raw else args.taps,
        pool=args.pool, pooling=args.pooling, precision=args.precision, conv_algorithm=args.conv_algorithm,
        gram_normalization=args.gram_normalization, gram_layout=args.gram_layout, n_words=args.n_words,
        image_size=args.image_size, crop_bottom=args.crop_bottom, batch_size=args.batch_size,
        device=args.device, engine=args.engine, n_threads=args.threads, random_state=args.seed,
    )
    from microtex.errors import NoImagesError

    if args.save_bundle:
        import pathlib

        from microtex.bundle import is_bundle

        target = pathlib.Path(args.save_bundle)
        if target.exists() and not is_bundle(target):
            raise ValueError(f"--save-bundle {str(target)!r} exists and is not a microtex bundle; "
                             "choose a new folder")

    tiles = _tiles(args.tile, args.tile_stride, featurizer)
    fit_failures: list = []
    try:
        # skips unreadable files (VLAD fit)
        featurizer._fit(args.images, args.on_error, fit_failures, tiles=tiles)
    except NoImagesError:
        for failure in fit_failures:
            print(f"microtex: skipped {failure.path}: {failure.reason}", file=sys.stderr)
        print("microtex: error: no image could be featurized", file=sys.stderr)
        return 1
    table = featurize(args.images, featurizer=featurizer, on_error=args.on_error,
                      tile=args.tile, tile_stride=args.tile_stride,
                      progress=not args.no_progress and sys.stderr.isatty())
    for failure in table.failures:
        print(f"microtex: skipped {failure.path}: {failure.reason}", file=sys.stderr)
    # with tiles a row is a patch, its id the image's followed by @row,col
    n_images = len({i.rsplit("@", 1)[0] for i in table.ids}) if tiles else len(table.ids)
    if args.crop_bottom == "auto":
        print(f"microtex: auto-crop: {_crop_report(table.cropped, n_images, args.verbose)}",
              file=sys.stderr)
    if not table.ids:
        print("microtex: error: no image could be featurized", file=sys.stderr)
        return 1
    table.write(args.output)
    if args.save_bundle:
        featurizer.save(args.save_bundle, overwrite=True)
    sessions = featurizer.__dict__.get("_sessions", {})
    where = next(iter(sessions.values())).device if sessions else "cpu"
    rate = len(table.ids) / table.seconds if table.seconds > 0 else float("nan")
    in_tiles = f" in {len(table.ids)} tiles" if tiles else ""
    print(f"featurized {n_images} images ({len(table.failures)} skipped){in_tiles} -> "
          f"{table.features.shape[1]} features in {table.seconds:.2f} s "
          f"({rate:.2f} {'tiles' if tiles else 'images'}/s, {where}) -> {args.output}")
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="microtex: %(levelname)s: %(message)s")
    from microtex.errors import MicrotexError

    try:
        if args.command == "demo":
            return _demo(args)
        return _featurize(args)
    except (MicrotexError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"microtex: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("microtex: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
