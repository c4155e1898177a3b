"""``microtex evaluate-generated``: generated micrographs against real ones, condition by condition.

Reads the real micrographs and their conditions from a conditions CSV (the one
``microtex train-vqvae`` reads), groups the images by condition, generates ``-n`` images
for each condition and writes :func:`microtex.generative.evaluate.evaluate_generated`'s
report to ``-o``: V_f, d_f and particle size of real patches and generated images (means,
standard deviations, Wasserstein distances, box plots), a texture distance, and PCA plots
of the encoder outputs and of the codebook.
"""

from __future__ import annotations

import sys

from microtex.cli._types import crop_bottom, positive, real
from microtex.engine.session import DEVICES
from microtex.features.segment import PHASES
from microtex.generative.evaluate import DEFAULT_TEXTURE_TAPS, LATENT_POOLINGS, STATISTICS

_threshold = real("threshold", minimum=0.0, maximum=1.0, words=("otsu",),
                  what="'otsu' or a number in [0, 1]")  # fmt: skip


def add_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "evaluate-generated",
        help="compare a generator's images with real micrographs per condition (V_f, d_f, "
             "particle size, texture, latent PCA) -> a report folder",
    )  # fmt: skip
    e.add_argument("bundle", help="a generator bundle")
    e.add_argument("--conditions", required=True,
                   help="CSV with a path column and the condition columns (as for "
                        "train-vqvae): the real images and their conditions")  # fmt: skip
    e.add_argument("--columns", default=None,
                   help="the CSV's condition columns in the generator's order, comma-separated "
                        "(default: the generator's condition names)")  # fmt: skip
    e.add_argument("--image-dir", default=None,
                   help="folder that relative paths in the CSV are relative to (default: the "
                        "CSV's folder)")  # fmt: skip
    e.add_argument("-n", "--number", type=positive, default=64,
                   help="images generated per condition (default 64)")
    e.add_argument("-o", "--output", required=True, help="the report folder")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--crop-bottom", type=crop_bottom, default=None,
                   help="rows to remove at the bottom of each real image, or auto (SEM info "
                        "band)")  # fmt: skip
    e.add_argument("--stride", type=positive, default=None,
                   help="step between the real images' patches (default: the generator's "
                        "image size, no overlap)")  # fmt: skip
    e.add_argument("--threshold", type=_threshold, default="otsu",
                   help="otsu (per image, default) or a gray level 0..1")
    e.add_argument("--phase", default="bright", choices=PHASES,
                   help="phase of interest: above the threshold (bright, default) or not")
    e.add_argument("--spacing", type=positive, default=1,
                   help="pixels between test lines for d_f (I_u, default 1)")
    e.add_argument("--texture", default="frechet", choices=["frechet", "none"],
                   help="Fréchet distance of VGG19 mean activations (default), or none")
    e.add_argument("--taps", default=DEFAULT_TEXTURE_TAPS,
                   help=f"VGG19 layers of the texture features (default {DEFAULT_TEXTURE_TAPS})")
    e.add_argument("--latent-pooling", default="mean", choices=LATENT_POOLINGS,
                   help="encoder outputs per image for the PCA: mean over positions (default) "
                        "or every position")  # fmt: skip
    e.add_argument("--batch-size", type=positive, default=64)
    e.add_argument("--threads", type=positive, default=None)
    e.add_argument("--device", default="auto", choices=DEVICES)
    e.add_argument("--overwrite", action="store_true", help="replace an existing report folder")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary_line(entry: dict) -> str:
    """One condition's V_f, d_f and texture distance, real vs generated, in one line."""
    seen = {True: " (in training)", False: " (not in training)", None: ""}[entry["in_training"]]
    parts = []
    for name in STATISTICS[:2]:
        s = entry["statistics"][name]
        parts.append(f"{name} real {_number(s['real']['mean'])} ± {_number(s['real']['std'])}, "
                     f"generated {_number(s['generated']['mean'])} ± "
                     f"{_number(s['generated']['std'])} (W {_number(s['wasserstein'])})")
    if entry["texture"] is not None:
        parts.append(f"texture FD {_number(entry['texture']['frechet'])}")
    return f"{entry['label']}{seen}: " + "; ".join(parts)


def run(args) -> int:
    import pathlib

    from microtex.cli.featurize import report_failures
    from microtex.generative.evaluate import evaluate_generated, read_images_by_condition
    from microtex.generative.sample import load_generator

    output = pathlib.Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"output {str(output)!r} exists; pass --overwrite to replace it")
    generator = load_generator(args.bundle, device=args.device, n_threads=args.threads)
    names = list(generator.condition_names)
    columns = names if args.columns is None else [c.strip() for c in args.columns.split(",")]
    if len(columns) != len(names):
        raise ValueError(f"--columns names {len(columns)} column(s) {columns}; the generator "
                         f"takes {len(names)} condition(s): {names}")  # fmt: skip
    groups, failures = read_images_by_condition(args.conditions, columns,
                                                image_dir=args.image_dir,
                                                crop_bottom=args.crop_bottom)  # fmt: skip
    report_failures(failures)
    if not groups:
        print(f"microtex: error: no image listed in {args.conditions!r} could be read",
              file=sys.stderr)  # fmt: skip
        return 1
    n_images = sum(len(images) for images in groups.values())
    print(f"{n_images} real images in {len(groups)} conditions ({len(failures)} skipped); "
          f"generating {args.number} per condition", file=sys.stderr)  # fmt: skip
    featurizer = None
    if args.texture == "frechet":
        from microtex.features.texture import TextureFeaturizer

        featurizer = TextureFeaturizer(taps=args.taps, pool="mean", device=args.device,
                                       n_threads=args.threads).fit(next(iter(groups.values())))
    result = evaluate_generated(
        generator, groups, n_generated=args.number, seed=args.seed, temperature=args.temperature,
        output=output, overwrite=args.overwrite, threshold=args.threshold, phase=args.phase,
        spacing=args.spacing, texture=args.texture, featurizer=featurizer,
        patch_stride=args.stride, latent_pooling=args.latent_pooling,
        batch_size=args.batch_size,
    )  # fmt: skip
    for entry in result["conditions"]:
        print(summary_line(entry))
    if not result["codebook_pca"]["available"]:
        print(f"microtex: no codebook PCA: {result['codebook_pca']['reason']}", file=sys.stderr)
    print(f"report -> {output}/")
    return 0
