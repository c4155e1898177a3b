"""Classification benchmarks: the study grid vs re-running the network per combination,
and the ONNX forest vs scikit-learn's predict_proba (one image and a thousand).

    python benchmarks/bench_classify.py [--images 24] [--size 128] [--repeats 2]

Writes benchmarks/results/classify.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, time_turns, write_results  # noqa: E402


def _dataset(n_images: int, size: int, folder: Path):
    from PIL import Image

    from microtex import marble_dataset

    data = marble_dataset(max(1, n_images // 4), size=size, seed=0)
    images, labels = data.images, data.labels
    paths = []
    for i, image in enumerate(images):
        path = folder / f"m{i:03d}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths, np.asarray([str(v) for v in labels])


def bench_grid(paths, labels, repeats: int, n_estimators: int) -> dict:
    """One study grid vs the same grid where every combination runs the network itself."""
    from sklearn.pipeline import Pipeline

    from microtex import TextureFeaturizer, featurize
    from microtex.analysis.classify import cross_validate, evaluate_features, make_forest
    from microtex.analysis.study import ALL_LAYERS, GRID_POOLS, run_study
    from microtex.backbones import PRESETS

    taps = PRESETS["block_last"]["vgg19"]
    cv = {"n_repeats": repeats, "n_splits": 3}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = run_study(paths, labels, output=out, taps="block_last", n_estimators=n_estimators,
                           n_repeats=repeats, n_words=32)  # fmt: skip
        grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_scores = {}
    for layer in ("raw", *taps, ALL_LAYERS):
        layer_taps = ",".join(taps) if layer == ALL_LAYERS else layer
        for pool in GRID_POOLS:
            if pool == "vlad":  # words fitted per fold: the network runs inside every fold
                pipeline = Pipeline([
                    ("features", TextureFeaturizer(taps=layer_taps, pool="vlad", random_state=0)),
                    ("forest", make_forest(n_estimators, 0)),
                ])  # fmt: skip
                result = cross_validate(pipeline, [str(p) for p in paths], labels, **cv)
            else:
                table = featurize(paths, taps=layer_taps, pool=pool)
                result = evaluate_features(table, labels, n_estimators=n_estimators, **cv)
            naive_scores[(layer, pool)] = float(result.f1.mean())
    naive = time.perf_counter() - t0
    grid_scores = {(r["layer"], r["pool"]): r["image_level"]["f1_macro"]["mean"]
                   for r in report["results"]}  # fmt: skip
    same = [abs(grid_scores[k] - naive_scores[k]) for k in naive_scores if k[1] != "vlad"]
    return {
        "images": len(paths),
        "combinations": len(report["results"]),
        "grid_seconds": grid,
        "grid_network_seconds": report["seconds"]["network_and_pooling"],
        "naive_seconds": naive,
        "speedup": naive / grid,
        "max_f1_difference_mean_max_gram": max(same),
    }


def bench_default_study(n_images: int, folder: Path) -> dict:
    """The study with its default settings on ``n_images`` 320x240 marble textures.

    The issue's case: 600 micrographs of ~640x480 at half resolution, within 30 minutes on
    2 cores. Textures of 4 classes are cropped from 320x320 marble images.
    """
    from PIL import Image

    from microtex import marble_dataset
    from microtex.analysis.study import run_study

    data = marble_dataset(max(1, n_images // 4), size=320, seed=1)
    paths = []
    for i, image in enumerate(data.images):
        path = folder / f"d{i:04d}.png"
        Image.fromarray(np.round(image[40:280] * 255).astype(np.uint8)).save(path)
        paths.append(path)
    t0 = time.perf_counter()
    report = run_study(paths, [str(v) for v in data.labels], output=folder / "study")
    seconds = time.perf_counter() - t0
    per_pool = {}
    for row in report["results"]:
        per_pool[row["pool"]] = per_pool.get(row["pool"], 0.0) + row["seconds"]
    return {"images": len(paths), "shape": [240, 320], "seconds": seconds,
            "network_and_pooling_seconds": report["seconds"]["network_and_pooling"],
            "cross_validation_seconds": report["seconds"]["cross_validation"],
            "seconds_per_pool": per_pool, "settings": report["settings"],
            "best": report["best"], "within_30_minutes": seconds <= 1800}  # fmt: skip


def bench_forest(n_features: int, n_train: int, n_estimators: int, rounds: int) -> dict:
    """ONNX Runtime's forest vs scikit-learn's predict_proba, for 1 row and for 1000."""
    from microtex.analysis.classify import make_forest
    from microtex.engine.export import export_forest
    from microtex.engine.session import Session

    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (n_train, n_features)).astype(np.float32)
    y = (X[:, :4].sum(axis=1) > 0).astype(int) + (X[:, 4] > 1)
    forest = make_forest(n_estimators, 0).fit(X, y)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "forest.onnx"
        path.write_bytes(export_forest(forest, n_features).SerializeToString())
        session = Session(path, device="cpu")
        rows = {}
        for n in (1, 1000):
            batch = rng.normal(0, 1, (n, n_features)).astype(np.float32)
            funcs = {
                "onnx": lambda b=batch: session.run(b, outputs=["probabilities"]),
                "sklearn": lambda b=batch: forest.predict_proba(b),
            }
            turns = time_turns(funcs, repeats=rounds, block=5 if n == 1 else 2)
            times = {k: statistics.median(t for turn in v for t in turn) for k, v in turns.items()}
            rows[n] = {"onnx_ms": 1e3 * times["onnx"], "sklearn_ms": 1e3 * times["sklearn"],
                       "speedup": times["sklearn"] / times["onnx"]}  # fmt: skip
    return {"n_features": n_features, "n_estimators": n_estimators, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="CV repeats in both grids")
    parser.add_argument("--n-estimators", type=int, default=50)
    parser.add_argument("--default-study", type=int, default=0, metavar="N",
                        help="also time the default study on N 320x240 images (600: the bar)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        paths, labels = _dataset(args.images, args.size, Path(folder))
        grid = bench_grid(paths, labels, args.repeats, args.n_estimators)
    forest = bench_forest(n_features=20_000, n_train=300, n_estimators=400, rounds=15)
    default = None
    if args.default_study:
        with tempfile.TemporaryDirectory() as folder:
            default = bench_default_study(args.default_study, Path(folder))
        print(f"default study: {default['images']} images in {default['seconds'] / 60:.1f} min "
              f"(network {default['network_and_pooling_seconds']:.0f} s; per pooling "
              f"{ {k: round(v) for k, v in default['seconds_per_pool'].items()} } s)")
    rows = [
        ["study grid vs network per combination", f"{grid['images']} images {args.size}², "
         f"{grid['combinations']} combinations", f"{grid['grid_seconds']:.1f} s",
         f"{grid['naive_seconds']:.1f} s", f"{grid['speedup']:.1f}x", ">= 5x",
         "yes" if grid["speedup"] >= 5 else "no"],
    ]  # fmt: skip
    for n, row in forest["rows"].items():
        rows.append([f"forest predict_proba, {n} row(s)", "400 trees, 20,000 features",
                     f"{row['onnx_ms']:.2f} ms (ONNX Runtime)",
                     f"{row['sklearn_ms']:.2f} ms (scikit-learn)", f"{row['speedup']:.1f}x",
                     "-", "-"])  # fmt: skip
    print(markdown_table(["measurement", "setting", "microtex", "alternative", "ratio", "bar",
                          "meets"], rows))  # fmt: skip
    path = write_results("classify", {"machine": machine(), "grid": grid, "forest": forest,
                                      "default_study": default, "settings": vars(args)})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
