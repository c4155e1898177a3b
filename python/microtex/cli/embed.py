"""``microtex embed IMAGES -o OUTDIR``: a map of a data set by metric MDS of texture distances."""

from __future__ import annotations

import sys

from microtex.cli._types import crop_bottom, image_size, positive


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embed a folder of images (Gram or power-spectrum distances) or a feature "
                      "table by metric MDS -> scatter, thumbnail map and CSV",
    )
    p.add_argument("inputs", nargs="+",
                   help="image files or folders, or one feature table (.npz/.csv/.parquet)")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--descriptor", choices=("gram", "spectrum"), default="gram",
                   help="VGG19 Gram vectors (default) or power spectra")
    p.add_argument("--radial", action="store_true", help="radially averaged power spectra")
    p.add_argument("--dims", type=positive, default=2, help="embedding dimensions (default 2)")
    p.add_argument("--color-by", default=None, metavar="CSV:COLUMN",
                   help="colour points by a column of a CSV with a path column")
    p.add_argument("--image-size", type=image_size, default=None,
                   help="resize: N (short side) or HxW")
    p.add_argument("--crop-bottom", type=crop_bottom, default=None,
                   help="rows of info band to remove, or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--no-progress", action="store_true")  # fmt: skip


def run(args) -> int:
    from microtex.analysis.manifold import run_embed

    summary = run_embed(args.inputs, args.output, descriptor=args.descriptor,
                        n_components=args.dims, color_by=args.color_by,
                        image_size=args.image_size, crop_bottom=args.crop_bottom,
                        radial=args.radial, seed=args.seed, n_threads=args.threads,
                        progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    for skipped in summary["skipped"]:
        print(f"microtex: skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    print(f"{summary['n_items']} items, {summary['descriptor']} distances, metric MDS in "
          f"{summary['n_components']} D: Kruskal stress {summary['stress']:.3f}; "
          f"{summary['seconds']:.0f} s")
    print(f"report: {args.output}/ ({', '.join(summary['files'])})")
    return 0
