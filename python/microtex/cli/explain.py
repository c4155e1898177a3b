"""``microtex explain BUNDLE IMAGES -o OUTDIR``: what a classifier looks at, as PNGs and JSON."""

from __future__ import annotations

import sys

from microtex.cli._types import positive


def _non_negative(text: str) -> int:
    return 0 if text.strip() == "0" else positive(text)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="a classifier's most important and characteristic textures and heat "
                        "maps over images -> PNGs + index.json (needs the torch extra)",
    )
    p.add_argument("bundle", help="classifier bundle (microtex train)")
    p.add_argument("images", nargs="*", help="image files or folders (default: --labels' images)")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--labels", default=None,
                   help="CSV with columns path and label: true classes (permutation importance, "
                        "characteristic textures by true class); without it classes are predicted")
    p.add_argument("--top", type=positive, default=3, help="most important features drawn")
    p.add_argument("--importance", default="impurity,permutation",
                   help="impurity, permutation or both (comma-separated)")
    p.add_argument("--tap", default=None,
                   help="layer of the characteristic textures (default: the most important)")
    p.add_argument("--characteristic", type=positive, default=3, help="filters per class")
    p.add_argument("--exemplars", type=positive, default=3, help="images shown per filter")
    p.add_argument("--heatmaps", type=_non_negative, default=4,
                   help="images that get a heat map (the first ones)")
    p.add_argument("--texture-size", type=positive, default=128, help="texture side in pixels")
    p.add_argument("--steps", type=positive, default=192, help="gradient steps per texture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive, default=None, help="PyTorch threads")
    p.add_argument("--overwrite", action="store_true")  # fmt: skip


def run(args) -> int:
    from microtex.interpret._torch import torch_threads
    from microtex.interpret.explanation import explain
    from microtex.interpret.filters import TextureSettings

    labels, images = None, list(args.images)
    if args.labels:
        from microtex.io.labels import read_labels

        table = read_labels(args.labels)
        labels = {str(path): label for path, label in zip(table.paths, table.labels)}
        images = images or [str(path) for path in table.paths]
    if not images:
        raise ValueError("no images: give image files or folders, or --labels")
    settings = TextureSettings(size=args.texture_size, steps=args.steps, seed=args.seed)
    with torch_threads(args.threads):
        index = explain(args.bundle, images, args.output, labels=labels, top=args.top,
                        importance=[k.strip() for k in args.importance.split(",")], tap=args.tap,
                        characteristic=args.characteristic, exemplars=args.exemplars,
                        heatmaps=args.heatmaps, settings=settings, overwrite=args.overwrite,
                        random_state=args.seed)  # fmt: skip
    for failure in index["failures"]:
        print(f"microtex: skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
    for kind, entry in index["top_textures"].items():
        for t in entry.get("textures", []):
            print(f"{kind}: {t['feature']} = {t['describe']}, importance {t['importance']:.3g}")
    for block in index.get("block_importance", []):
        print(f"block {block['tap']}/{block['pool']}: macro F1 drops {block['mean']:.3f} "
              f"± {block['std']:.3f} when shuffled")
    for entry in index["characteristic"]["classes"]:
        shown = ", ".join(f"#{f['filter']} (d={f['effect']:.2f})" for f in entry["filters"])
        print(f"class {entry['class']}: {index['characteristic']['tap']} {shown or 'none'}")
    print(f"{index['n_images']} images, {index['seconds']:.0f} s; report: {args.output}/index.json")
    return 0
