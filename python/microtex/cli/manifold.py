"""``microtex manifold angle|grid|sweep``: Lubbers et al.'s marble experiments, as reports.

Gram (VGG19) vs power-spectrum descriptors of Perlin marbles, embedded by
metric MDS (:mod:`microtex.analysis.manifold_experiments`): how well the
stripe angle comes back (``angle``), how stress and the linear recoverability
of k and A grow with the embedding dimension (``grid``), and which noise
field, image size and layer weights let A be recovered (``sweep``). Every
command writes JSON, CSV and PNG plots to ``-o OUTDIR``; the defaults finish
on two CPU cores in minutes, ``--full`` runs the paper's sizes.
"""

from __future__ import annotations

import dataclasses
import sys

from microtex.cli._types import int_range, positive, positive_real, real, real_list

_FULL = {
    "angle": {"n_angles": 100, "trials": 10,
              "amplitudes": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]},
    "grid": {"levels": 10, "n_init": 4},
}  # fmt: skip


def _texture_options(p) -> None:
    from microtex.analysis.manifold_experiments import GRID_DEFAULTS

    p.add_argument("--size", type=positive, default=None,
                   help=f"image side in pixels (default {GRID_DEFAULTS.size})")
    p.add_argument("--noise-scale", type=real("noise scale", minimum=0.0), default=None,
                   help=f"RMS of the Perlin displacement field in image sides (default "
                        f"{GRID_DEFAULTS.noise_scale:g})")
    p.add_argument("--base-frequency", type=positive, default=None,
                   help=f"lattice cells per side of the coarsest noise octave (default "
                        f"{GRID_DEFAULTS.base_frequency})")
    p.add_argument("--octaves", type=positive, default=None,
                   help=f"noise octaves (default {GRID_DEFAULTS.octaves})")
    weights = GRID_DEFAULTS.layer_weights
    p.add_argument("--layer-weights", type=real_list("layer weight", minimum=0.0), default=None,
                   help="w_l of relu1_1..relu5_1, comma-separated (default: "
                        f"{'all 1' if weights is None else ','.join(map(str, weights))})")
    p.add_argument("--descriptors", default="gram,spectrum",
                   help="gram, spectrum or both (default both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--full", action="store_true", help="the paper's sizes (slow)")
    p.add_argument("--no-progress", action="store_true")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "manifold", help="texture manifolds of Perlin marbles: Gram vs power spectrum, MDS "
                         "(angle, grid and noise-sweep experiments) -> report folders",
    )
    commands = p.add_subparsers(dest="experiment", required=True)
    angle = commands.add_parser("angle", help="angle RMSE and 2-D stress vs noise amplitude A")
    angle.add_argument("-o", "--output", required=True, help="report folder")
    angle.add_argument("--amplitudes", type=real_list("amplitude", minimum=0.0), default=None,
                       help="noise amplitudes A (default 0,1,2,3,4,6)")
    angle.add_argument("--n", type=positive, default=None, dest="n_angles",
                       help="images per rotation family, theta_i = i pi / n (default 48)")
    angle.add_argument("--k", type=positive_real, default=15.0, help="stripes per side")
    angle.add_argument("--trials", type=positive, default=None, help="seeded trials (default 3)")
    _texture_options(angle)
    grid = commands.add_parser("grid", help="stress and R² of k and A vs embedding dimension")
    grid.add_argument("-o", "--output", required=True, help="report folder")
    grid.add_argument("--levels", type=positive, default=None,
                      help="values of each of theta, k, A (levels**3 images; default 8, "
                           "--full 10)")
    grid.add_argument("--dims", type=int_range, default=list(range(1, 11)),
                      help="embedding dimensions D (default 1-10)")
    _texture_options(grid)
    sweep = commands.add_parser("sweep", help="the grid over noise fields, image sizes and "
                                              "layer weights: where is A recoverable?")
    sweep.add_argument("-o", "--output", required=True, help="report folder")
    sweep.add_argument("--levels", type=positive, default=6,
                       help="values of each of theta, k, A per grid (default 6)")
    sweep.add_argument("--dims", type=int_range, default=list(range(1, 11)),
                       help="embedding dimensions D (default 1-10)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--threads", type=positive, default=None)
    sweep.add_argument("--no-progress", action="store_true")


def _setting(args):
    from microtex.analysis.manifold_experiments import GRID_DEFAULTS

    changes = {name: getattr(args, name) for name in ("noise_scale", "base_frequency", "octaves")
               if getattr(args, name) is not None}  # fmt: skip
    if args.size is not None:
        changes["size"] = args.size
    if args.layer_weights is not None:
        changes["layer_weights"] = tuple(args.layer_weights)
    return dataclasses.replace(GRID_DEFAULTS, **changes)


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def run(args) -> int:
    from microtex.analysis import manifold_experiments as me

    if args.experiment == "sweep":
        result = me.run_sweep(args.output, levels=args.levels, dims=args.dims, seed=args.seed,
                              n_threads=args.threads, progress=_progress(args))  # fmt: skip
        print(f"{'setting':<80} {'D':>3} {'R²(k)':>7} {'R²(A)':>7}")
        for i, run_ in enumerate(result["runs"]):
            at = next(r for r in run_["results"]["gram"] if r["D"] == run_["score_D"])
            mark = "  <- best" if i == result["best"] else ""
            print(f"{run_['label']:<80} {at['D']:>3} {at['r2_k']:>7.3f} "
                  f"{at['r2_amplitude']:>7.3f}{mark}")
        print(f"report: {args.output}/ ({', '.join(result['files'])})")
        return 0
    options = {"setting": _setting(args), "descriptors": args.descriptors,
               "seed": args.seed, "n_threads": args.threads, "progress": _progress(args)}
    full = _FULL[args.experiment] if args.full else {}
    if args.experiment == "angle":
        for name in ("amplitudes", "n_angles", "trials"):
            value = getattr(args, name)
            if value is not None:
                options[name] = value
            elif name in full:
                options[name] = full[name]
        result = me.run_angle(args.output, k=args.k, **options)
        print(f"{'descriptor':<10} {'A':>5} {'RMSE (deg)':>14} {'stress':>14}")
        for descriptor, rows in result["results"].items():
            for r in rows:
                print(f"{descriptor:<10} {r['amplitude']:>5g} "
                      f"{r['rmse_degrees']['mean']:>7.2f} ± {r['rmse_degrees']['std']:<4.2f} "
                      f"{r['stress']['mean']:>7.3f} ± {r['stress']['std']:<5.3f}")
    else:
        levels = args.levels if args.levels is not None else full.get("levels", 8)
        if args.full:
            options["n_init"] = full["n_init"]
        result = me.run_grid(args.output, levels=levels, dims=args.dims, **options)
        print(f"{result['parameters']['n_images']} marbles; {'descriptor':<10} "
              f"{'D':>3} {'stress':>7} {'R²(k)':>7} {'R²(A)':>7}")
        for descriptor, rows in result["results"].items():
            for r in rows:
                print(f"  {descriptor:<10} {r['D']:>3} {r['stress']:>7.3f} {r['r2_k']:>7.3f} "
                      f"{r['r2_amplitude']:>7.3f}")
    print(f"report: {args.output}/ ({', '.join(result['files'])}); {result['seconds']:.0f} s")
    return 0
