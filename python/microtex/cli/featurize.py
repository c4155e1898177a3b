"""``microtex featurize``: texture descriptors of micrographs into a feature table."""

from __future__ import annotations

import sys

from microtex._validation import ON_ERROR, renamed
from microtex.backbones import ARCHITECTURES, BLOCK_POOLINGS, CONV_ALGORITHMS
from microtex.cli._types import crop_bottom, image_size, max_pixels, positive
from microtex.engine.session import DEVICES
from microtex.features.plan import ENGINES, FEATURIZER_PRECISIONS
from microtex.features.pooling import GRAM_LAYOUTS, GRAM_NORMALIZATIONS, POOLS


def add_parser(subparsers) -> None:
    f = subparsers.add_parser(
        "featurize", help="texture descriptors of micrographs -> feature table"
    )
    f.add_argument("images", nargs="+", help="image files and/or directories")
    f.add_argument(
        "-o", "--output", required=True,
        help="output table: .parquet, .npz or .csv; or a folder (OUT/): a sharded Parquet "
        "dataset that a rerun resumes",
    )  # fmt: skip
    add_featurizer_options(f)
    f.add_argument(
        "--tile",
        type=positive,
        default=None,
        help="cut each image into TILE x TILE patches, one row each (id PATH@ROW,COL)",
    )
    f.add_argument(
        "--tile-stride",
        type=positive,
        default=None,
        help="step between tiles (default: --tile, no overlap)",
    )
    add_batch_options(f)
    add_dataset_options(f)
    add_runner_options(f)
    f.add_argument(
        "--save-bundle", default=None, help="also save the fitted featurizer as a model bundle"
    )


def add_featurizer_options(f) -> None:
    """The options that make a TextureFeaturizer (featurize, train)."""
    f.add_argument("--backbone", default="vgg19", choices=list(ARCHITECTURES))
    f.add_argument(
        "--weights",
        default=None,
        help="torchvision-format VGG state dict (default: the shipped VGG19)",
    )
    f.add_argument(
        "--taps",
        default="block_first",
        help="layers: names (relu3_1,...), presets block_first|block_last|all, or 'raw'",
    )
    f.add_argument(
        "--pool",
        default="mean,gram",
        help=f"comma list of {','.join(POOLS)} (default: %(default)s)",
    )
    f.add_argument(
        "--block-pooling",
        default=None,
        choices=BLOCK_POOLINGS,
        help="pooling between VGG blocks (default: max)",
    )
    f.add_argument(
        "--pooling",
        default=None,
        choices=BLOCK_POOLINGS,
        dest="old_pooling",
        help="deprecated name of --block-pooling",
    )
    f.add_argument(
        "--precision",
        default="fp32",
        choices=FEATURIZER_PRECISIONS,
        help="CNN arithmetic; fp16 is for --device cuda; int8 for the CPU, calibrated on the "
        "first 20 images (microtex calibrate makes a reusable bundle); pooling stays fp32",
    )
    f.add_argument(
        "--float-layers",
        default="",
        help="with --precision int8: comma list of convolutions kept in float32, e.g. "
        "conv5_1,conv5_2,conv5_3,conv5_4 (slower, closer to float32)",
    )
    f.add_argument(
        "--conv-algorithm",
        default="auto",
        choices=["auto", *CONV_ALGORITHMS],
        help="3x3 convolutions in the graph; auto: winograd for fp32 on the CPU",
    )
    f.add_argument("--gram-normalization", default="spatial", choices=GRAM_NORMALIZATIONS)
    f.add_argument("--gram-layout", default="triu", choices=GRAM_LAYOUTS)
    f.add_argument("--n-words", type=positive, default=32, help="VLAD dictionary size")
    f.add_argument("--raw", action="store_true", help="featurize the untransformed image (no CNN)")
    f.add_argument("--image-size", type=image_size, default=None, help="N (short side) or HxW")
    f.add_argument(
        "--crop-bottom", type=crop_bottom, default=None, help="rows of info band to drop, or 'auto'"
    )
    f.add_argument("--batch-size", type=positive, default=8)
    f.add_argument(
        "--max-pixels",
        type=max_pixels,
        default="auto",
        help="most pixels in one network input; larger images are skipped "
        "(default auto: what half of this machine's memory holds)",
    )
    f.add_argument("--device", default="auto", choices=DEVICES)
    f.add_argument("--engine", default="auto", choices=ENGINES)
    f.add_argument("--threads", type=positive, default=None, help="CPU threads (default: all)")
    f.add_argument("--seed", type=int, default=0, help="seed of the VLAD fit (and the forest)")


def add_batch_options(f) -> None:
    """What a batch command does with bad files, and its progress bar."""
    f.add_argument(
        "--on-error",
        default="skip",
        choices=ON_ERROR,
        help="unreadable files: report and skip (default) or stop",
    )
    f.add_argument("--no-progress", action="store_true")


def add_dataset_options(f) -> None:
    """How a command writes a sharded dataset when its output is a folder."""
    f.add_argument(
        "--shard-size", type=positive, default=1000,
        help="images per shard of a dataset folder (default %(default)s)",
    )  # fmt: skip
    f.add_argument(
        "--overwrite", action="store_true",
        help="start a dataset folder over even if it holds another job's shards",
    )  # fmt: skip


def add_runner_options(f) -> None:
    """Where the work runs: this process, or a Ray cluster (into a dataset folder).

    Named ``--runner``, not ``--engine``: ``--engine`` already says where pooling runs.
    """
    f.add_argument(
        "--runner", default="local", choices=["local", "ray"],
        help="run here (default) or on Ray Data workers (needs -o OUT_DIR/ and the ray extra)",
    )  # fmt: skip
    f.add_argument(
        "--address", default=None,
        help="Ray cluster address (ray start --head prints it; default: a local instance)",
    )  # fmt: skip
    f.add_argument(
        "--num-workers", type=positive, default=None,
        help="Ray actors (default: the cluster's CPUs / --threads-per-worker)",
    )  # fmt: skip
    f.add_argument(
        "--threads-per-worker", type=positive, default=1,
        help="CPUs of each Ray actor and its ONNX Runtime threads (default %(default)s)",
    )  # fmt: skip
    f.add_argument(
        "--gpus-per-worker", type=float, default=0,
        help="GPUs of each Ray actor; above 0 the actors run on CUDA (default %(default)s)",
    )  # fmt: skip


def run_dataset(args, config: dict, compute, verb: str) -> int:
    """``-o FOLDER`` of a command whose shards are ``compute(paths) -> FeatureTable``.

    Opens (or resumes) the job over ``args.images``, holds the folder's lock
    while it runs, and reports; what ``predict`` and ``stereology`` share.
    """
    import time

    from microtex.features.api import dataset_inputs
    from microtex.io.shards import ShardedJob, run_sharded

    start = time.perf_counter()
    with ShardedJob(args.output, dataset_inputs(args.images), config, args.shard_size,
                    overwrite=args.overwrite) as job:  # fmt: skip
        new_shards = len(job.pending())
        run_sharded(job, compute)
    report_dataset(job, verb, new_shards, time.perf_counter() - start)
    return 0 if job.n_rows() else 1


def report_dataset(job, verb: str, new_shards: int, seconds: float) -> None:
    """Failures and one summary line of a finished dataset job."""
    report_failures(job.failures())
    print(
        f"{verb} {job.n_rows()} rows ({len(job.failures())} skipped) in {job.n_shards} shards "
        f"({new_shards} written now, {job.n_shards - new_shards} kept) in {seconds:.2f} s "
        f"-> {job.directory}"
    )


def featurizer_from_args(args):
    """The (unfitted) TextureFeaturizer that :func:`add_featurizer_options`' options ask for."""
    from microtex.features.texture import TextureFeaturizer

    block_pooling = args.block_pooling or "max"
    if args.old_pooling is not None:
        block_pooling, note = renamed(
            "--pooling", "--block-pooling", args.old_pooling, args.block_pooling, unset=None
        )
        print(f"microtex: warning: {note}", file=sys.stderr)
    # the options named as the featurizer's parameters pass through as they are
    same = ("backbone", "weights", "pool", "precision", "conv_algorithm", "gram_normalization",
            "gram_layout", "n_words", "image_size", "crop_bottom", "batch_size", "device",
            "engine", "max_pixels")  # fmt: skip
    return TextureFeaturizer(
        **{name: getattr(args, name) for name in same},
        float_layers=tuple(n.strip() for n in args.float_layers.split(",") if n.strip()),
        taps="raw" if args.raw else args.taps,
        block_pooling=block_pooling,
        n_threads=args.threads,
        random_state=args.seed,
    )


def check_output(path) -> None:
    """Refuse an output table that cannot be written, before any work."""
    from microtex.io.table import check_writable

    try:
        check_writable(path)
    except (ValueError, ImportError) as exc:
        raise type(exc)(f"output {path!r}: {exc}") from None


def report_failures(failures) -> None:
    for failure in failures:
        print(f"microtex: skipped {failure.path}: {failure.reason}", file=sys.stderr)


def _crop_report(cropped: dict, n_images: int, verbose: bool) -> str:
    """What ``--crop-bottom auto`` found, in one line."""
    if not cropped:
        return f"no bottom info band found in {n_images} images"
    rows = sorted(cropped.values())
    span = f"{rows[0]}" if rows[0] == rows[-1] else f"{rows[0]}-{rows[-1]}"
    listed = "" if verbose else " (microtex -v featurize ... lists them)"
    return (
        f"removed a bottom info band of {span} rows from {len(rows)} of {n_images} images{listed}"
    )


def run(args) -> int:
    from microtex.bundle import check_target
    from microtex.errors import NoImagesError
    from microtex.features.api import featurize
    from microtex.io.shards import is_dataset_target

    if is_dataset_target(args.output):
        return _run_dataset(args)
    if args.runner == "ray":
        raise ValueError(
            f"--runner ray writes a dataset folder: pass -o OUT_DIR/, not {args.output!r}"
        )
    check_output(args.output)  # before any work, not after the whole folder is featurized
    featurizer = featurizer_from_args(args)
    if args.save_bundle:  # before the work, not after it
        check_target(args.save_bundle, overwrite=True)
    tiles = {"tile": args.tile, "tile_stride": args.tile_stride}
    try:  # fit reads images only to fit VLAD words, skipping unreadable ones
        featurizer.fit(args.images, on_error=args.on_error, **tiles)
        table = featurize(
            args.images,
            featurizer=featurizer,
            on_error=args.on_error,
            progress=not args.no_progress and sys.stderr.isatty(),
            **tiles,
        )
    except NoImagesError as exc:
        report_failures(exc.failures)
        print("microtex: error: no image could be featurized", file=sys.stderr)
        return 1
    report_failures(table.failures)
    # with tiles a row is a patch, its id the image's followed by @row,col
    n_images = len({i.rsplit("@", 1)[0] for i in table.ids}) if args.tile else len(table.ids)
    if args.crop_bottom == "auto":
        print(
            f"microtex: auto-crop: {_crop_report(table.cropped, n_images, args.verbose)}",
            file=sys.stderr,
        )
    if not table.ids:
        print("microtex: error: no image could be featurized", file=sys.stderr)
        return 1
    table.write(args.output)
    if args.save_bundle:
        featurizer.save(args.save_bundle, overwrite=True)
    rate = len(table.ids) / table.seconds if table.seconds > 0 else float("nan")
    unit = "tiles" if args.tile else "images"
    in_tiles = f" in {len(table.ids)} tiles" if args.tile else ""
    print(
        f"featurized {n_images} images ({len(table.failures)} skipped){in_tiles} -> "
        f"{table.features.shape[1]} features in {table.seconds:.2f} s "
        f"({rate:.2f} {unit}/s, {featurizer.pipeline_.device()}) -> {args.output}"
    )
    return 0


def _run_dataset(args) -> int:
    """``-o FOLDER``: featurize shard by shard into a dataset; a rerun resumes it."""
    import time

    from microtex.features.api import featurize_dataset
    from microtex.io.shards import ShardedJob

    if args.save_bundle:
        raise ValueError(
            "--save-bundle is not taken with a dataset folder; a job whose features need a fit "
            f"(VLAD) keeps its bundle in {args.output}/_state/featurizer"
        )
    start = time.perf_counter()
    pending_before: list = []

    def note(job: ShardedJob) -> None:
        pending_before.extend(job.pending())

    common = {"shard_size": args.shard_size, "overwrite": args.overwrite,
              "on_error": args.on_error, "featurizer": featurizer_from_args(args),
              "on_open": note}  # fmt: skip
    if args.runner == "ray":
        from microtex.distributed.ray import featurize_ray

        if args.tile:
            raise ValueError("--tile is not taken with --runner ray; run it locally")
        job = featurize_ray(
            args.images, args.output, address=args.address, num_workers=args.num_workers,
            threads_per_worker=args.threads_per_worker, gpus_per_worker=args.gpus_per_worker,
            **common,
        )  # fmt: skip
    else:
        job = featurize_dataset(
            args.images, args.output, progress=not args.no_progress and sys.stderr.isatty(),
            tile=args.tile, tile_stride=args.tile_stride, **common,
        )  # fmt: skip
    report_dataset(job, "featurized", len(pending_before), time.perf_counter() - start)
    return 0 if job.n_rows() else 1
