"""``microtex generate``: new micrographs for a processing condition from a generator bundle."""

from __future__ import annotations

from microtex.cli._types import positive


def add_parser(subparsers) -> None:
    g = subparsers.add_parser("generate", help="sample micrographs for a condition from a "
                                               "generator bundle -> a folder of PNGs")  # fmt: skip
    g.add_argument("bundle", help="a generator bundle")
    g.add_argument("--condition", required=True,
                   help="the condition value(s), comma-separated in the bundle's order "
                        "(e.g. 3.0, or 800,3.2); values between training conditions are fine, "
                        "values outside their range warn")  # fmt: skip
    g.add_argument("-n", "--number", type=positive, default=16, help="images (default 16)")
    g.add_argument("-o", "--output", required=True, help="folder for the PNGs and generated.json")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature of the prior (default 1; 0 takes the likeliest)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=positive, default=64)
    g.add_argument("--sampler", default="cached", choices=["cached", "naive"],
                   help="cached: the C++ sampler (default); naive: one PixelCNN pass per "
                        "position (the reference, for checking)")
    g.add_argument("--threads", type=positive, default=None)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _condition(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--condition {text!r}: expected numbers separated by commas") from None


def run(args) -> int:
    import json
    import pathlib
    import time

    import numpy as np

    from microtex import _files
    from microtex.generative.sample import load_generator
    from microtex.io.decode import encode_png

    output = pathlib.Path(args.output)
    if output.exists() and not args.overwrite:
        raise ValueError(f"output {str(output)!r} exists; pass --overwrite to replace it")
    condition = _condition(args.condition)
    generator = load_generator(args.bundle, device=args.device, n_threads=args.threads)
    conditions = generator.check_conditions(condition, args.number)  # before any work
    start = time.perf_counter()
    indices = generator.sample_indices(conditions, args.number, temperature=args.temperature,
                                       seed=args.seed, batch_size=args.batch_size,
                                       sampler=args.sampler)  # fmt: skip
    images = generator.decode(indices)
    seconds = time.perf_counter() - start
    with _files.atomic_directory(output, replace=args.overwrite) as staging:
        for i, image in enumerate(images):
            (staging / f"generated_{i:05d}.png").write_bytes(encode_png(image))
        np.savez(staging / "indices.npz", indices=indices)
        manifest = {
            "bundle": str(pathlib.Path(args.bundle).resolve()),
            "condition": dict(zip(generator.condition_names, condition)),
            "n": args.number, "seed": args.seed, "temperature": args.temperature,
            "sampler": args.sampler, "seconds": round(seconds, 3),
        }  # fmt: skip
        (staging / "generated.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{args.number} images for {manifest['condition']} in {seconds:.1f} s -> {output}/")
    return 0
