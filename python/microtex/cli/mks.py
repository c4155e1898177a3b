"""``microtex mks``: S2+PCA vs CNN features on two-phase specimens, grouped vs patch-level CV."""

from __future__ import annotations

import inspect

from microtex.cli._types import positive


def _defaults() -> dict:
    """:func:`~microtex.analysis.mks.run_mks`'s defaults: written there once, shown here."""
    from microtex.analysis.mks import run_mks

    return {name: p.default for name, p in inspect.signature(run_mks).parameters.items()}


def add_parser(subparsers) -> None:
    d = _defaults()
    s = subparsers.add_parser(
        "mks", help="structure-property regression on synthetic two-phase specimens: the MKS "
                    "pipeline (S2+PCA) vs CNN features, grouped vs patch-level CV",
    )
    s.add_argument("-o", "--output", required=True, help="report folder")
    s.add_argument("--specimens", type=positive, default=d["n_specimens"],
                   help=f"specimens (default {d['n_specimens']})")
    s.add_argument("--patches", type=positive, default=d["patches_per_specimen"],
                   help=f"patches per specimen (default {d['patches_per_specimen']})")
    s.add_argument("--size", type=positive, default=d["size"],
                   help=f"patch side in pixels (default {d['size']})")
    s.add_argument("--seed", type=int, default=d["seed"])
    s.add_argument("--cutoff", type=positive, default=d["cutoff"],
                   help=f"half-width of the S2 window in pixels (default {d['cutoff']})")
    s.add_argument("--components", type=positive, default=d["n_components"],
                   help=f"PCA scores regressed on (default {d['n_components']})")
    s.add_argument("--degree", type=positive, default=d["degree"],
                   help=f"degree of the polynomial of the scores (default {d['degree']})")
    s.add_argument("--folds", type=positive, default=d["n_splits"],
                   help=f"K of the K-fold splits (default {d['n_splits']})")
    s.add_argument("--repeats", type=positive, default=d["n_repeats"],
                   help=f"repeats of K-fold CV (default {d['n_repeats']})")
    s.add_argument("--no-cnn", action="store_true",
                   help="leave out the CNN features (they need the VGG19 graph, exported by "
                        "PyTorch on first use)")
    s.add_argument("--threads", type=positive, default=None)  # fmt: skip


def run(args) -> int:
    from microtex.analysis.mks import SPLITS, run_mks

    report = run_mks(
        args.output, n_specimens=args.specimens, patches_per_specimen=args.patches,
        size=args.size, seed=args.seed, cutoff=args.cutoff, n_components=args.components,
        degree=args.degree, cnn=not args.no_cnn, n_splits=args.folds, n_repeats=args.repeats,
        n_threads=args.threads,
    )  # fmt: skip
    print(f"{len(report['specimens'])} specimens, {report['n_patches']} patches: R² of "
          f"out-of-fold predictions, mean of {args.repeats} repeats of {args.folds}-fold CV")
    print(f"  {'target':<19} {'method':<6} {'grouped':>8} {'patch-level':>12} {'inflation':>10}")
    rows = {(r["target"], r["method"], r["split"]): r for r in report["results"]}
    for target in report["settings"]["targets"]:
        for method in report["settings"]["methods"]:
            grouped, loose = (rows[target, method, split] for split in SPLITS)
            print(f"  {target:<19} {method:<6} {grouped['r2_mean']:>8.3f} "
                  f"{loose['r2_mean']:>12.3f} {grouped['inflation']:>+10.3f}")
    print(f"report: {args.output}/ (mks.json, mks.csv, predicted_vs_true.png, "
          "eigen_*_modes.png, eigen_*_variance.png, patches.png); "
          f"{report['seconds']['total']:.0f} s")
    return 0
