"""``microtex perlin-demo``: a generator trained on Perlin stripes follows its condition ln k.

Runs :func:`microtex.generative.demo.run_perlin_demo`: textures of k = 2, 3, 4,
6, 8 stripes per side train a VQ-VAE and a PixelCNN conditioned on ln k; k = 5
is held out; images generated for every k have their dominant wavelength
compared with the real ones'. Offline, two to three minutes on two CPU cores
(``--small``: seconds).
"""

from __future__ import annotations

import sys

from microtex.cli._types import positive


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "perlin-demo",
        help="train a generator on Perlin stripes conditioned on ln k (k = 5 held out) and "
             "compare generated and real dominant wavelengths per k -> a folder",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True,
                   help="folder for the bundle, perlin_demo.json/.csv and the plots")  # fmt: skip
    p.add_argument("--small", action="store_true",
                   help="the test-suite version (fewer textures and epochs; seconds)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs-vqvae", type=positive, default=40)
    p.add_argument("--epochs-prior", type=positive, default=40)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a generator bundle already in the output folder")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from microtex.generative.demo import run_perlin_demo

    result = run_perlin_demo(args.output, seed=args.seed, small=args.small,
                             epochs_vqvae=args.epochs_vqvae, epochs_prior=args.epochs_prior,
                             overwrite=args.overwrite,
                             progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    print("k     held-out  real λ (px)    generated λ (px)")
    for row in result["per_k"]:
        print(f"{row['k']:<5g} {'yes' if row['held_out'] else '':<9} "
              f"{row['real_mean']:6.2f} ± {row['real_std']:4.2f}  "
              f"{row['generated_mean']:6.2f} ± {row['generated_std']:4.2f}")
    print(f"Pearson r(k, generated λ) = {result['pearson_k_generated_wavelength']:.3f}; "
          f"held-out k between its neighbours: {result['held_out_between_neighbours']}; "
          f"{result['seconds']['total']:.0f} s")
    print(f"results in {args.output}/ (perlin_demo.json, perlin_demo.csv, "
          f"{', '.join(result['files']['plots'])}, generator/)")
    return 0
