"""The study grid: which layer and which pooling classify a labelled set best, and how surely.

Ling et al.'s layer × featurization figure as a command: every tap of a
preset (``block_last``: the last ReLU of each VGG block) alone and all of them
together, × mean, max, Gram and VLAD pooling, plus the same poolings of the
untransformed image, each scored by repeated (grouped) cross-validation of a
random forest (:mod:`microtex.analysis.classify`).

Every image passes the network once. What a fold cannot change is computed
then and cached: mean, max and Gram vectors of every tap. VLAD needs words fitted
on the training fold, so ``vlad_positions`` activation vectors per image and
tap (all of them for layers with fewer positions) are cached instead; each
fold fits its words on the training images' vectors and encodes every image
from its cached vectors. The cache lives in ``OUTDIR/cache``, one file per
image, written atomically: a killed study resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
import warnings
from collections.abc import Sequence

import numpy as np

from microtex import _files, bundle
from microtex.analysis.classify import METRIC, cross_validate, cv_splits, make_forest
from microtex.errors import BundleError
from microtex.features import pooling
from microtex.features.plan import RAW_TAP, check_tiles, make_plan
from microtex.features.stream import TexturePipeline
from microtex.features.vlad import fit_vlad_dictionary, vlad_encode

__all__ = ["ALL_LAYERS", "GRID_POOLS", "run_study"]

log = logging.getLogger("microtex.analysis")

#: The poolings of the grid, in the figure's order.
GRID_POOLS: tuple[str, ...] = ("mean", "max", "gram", "vlad")
#: The row of the grid that concatenates every CNN layer.
ALL_LAYERS = "all"
_FIXED_POOLS = ("mean", "max", "gram")
_CACHE_VERSION = 1


def _cache_key(path: str, settings: dict) -> str:
    stat = pathlib.Path(path).stat()
    text = json.dumps([_CACHE_VERSION, path, stat.st_size, stat.st_mtime_ns, settings],
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _pool_batch(acts: np.ndarray, rng: np.random.Generator, positions: int, threads):
    """Fold-independent vectors and the VLAD sample of one tap's activations (n, c, h, w)."""
    n, c, h, w = acts.shape
    pooled = {
        "mean": pooling.mean_pool(acts, n_threads=threads),
        "max": pooling.max_pool(acts, n_threads=threads),
        "gram": pooling.gram(acts, "spatial", "triu", n_threads=threads),
    }
    k = min(positions, h * w)
    flat = acts.reshape(n, c, h * w)
    samples = np.stack([flat[i][:, np.sort(rng.choice(h * w, k, replace=False))].T
                        for i in range(n)])  # fmt: skip
    return pooled, samples.astype(np.float16)


class _Collector:
    """Runs the network over the study's images once, caching per image."""

    def __init__(self, plan, cache: pathlib.Path, settings: dict, positions: int, tiles):
        self.pipeline = TexturePipeline(plan)
        self.cache, self.settings = cache, settings
        self.positions, self.tiles = positions, tiles

    def image(self, path: str, failures: list) -> dict | None:
        """The cached arrays of one image (all its tiles), computing them if needed."""
        target = self.cache / f"{_cache_key(path, self.settings)}.npz"
        if target.exists():
            try:
                return bundle.load_npz(target)
            except BundleError:  # a damaged cache file: compute it again
                log.warning("recomputing the damaged cache file %s", target)
        plan = self.pipeline.plan
        seed = int(hashlib.sha256(os.fsencode(path)).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        arrays: dict[str, list] = {}
        ids: list[str] = []
        for batch_ids, outputs in self.pipeline.outputs(
            [path], on_error="skip", failures=failures, tiles=self.tiles
        ):
            ids.extend(batch_ids)
            for tap in plan.taps:
                pooled, samples = _pool_batch(outputs[tap], rng, self.positions, plan.n_threads)
                for pool, values in pooled.items():
                    arrays.setdefault(f"{tap}/{pool}", []).append(values)
                arrays.setdefault(f"{tap}/samples", []).append(samples)
        if not ids:
            return None
        result = {key: np.concatenate(parts) for key, parts in arrays.items()}
        result["ids"] = np.asarray(ids)
        bundle.save_npz(target, result)
        return result


class _VladFolds:
    """VLAD codes of a fold from cached vectors, words fitted on its training images only.

    The words of a (tap, training set) are fitted once and reused by every row
    of the grid that needs them (the tap alone and all taps together).
    """

    def __init__(self, samples_of: dict, n_words: int, max_vectors: int, seed: int, threads):
        self.samples_of, self.n_words, self.max_vectors = samples_of, n_words, max_vectors
        self.seed, self.threads = seed, threads
        self.words: dict = {}

    def _words(self, tap: str, train: np.ndarray) -> np.ndarray:
        key = (tap, hashlib.sha256(train.tobytes()).hexdigest())
        if key not in self.words:
            samples = self.samples_of[tap]
            fit = np.concatenate([samples[i] for i in train])  # (k, c) float16
            rng = np.random.default_rng(self.seed)
            if len(fit) > self.max_vectors:  # draw first: cast only what k-means sees
                fit = fit[np.sort(rng.choice(len(fit), self.max_vectors, replace=False))]
            self.words[key] = fit_vlad_dictionary(
                fit.astype(np.float32).T[None, :, None, :], self.n_words,
                max_vectors=self.max_vectors, random_state=self.seed,
            )  # fmt: skip
        return self.words[key]

    def __call__(self, taps: Sequence[str], train: np.ndarray, test: np.ndarray):
        parts = []
        for tap in taps:
            words, samples = self._words(tap, train), self.samples_of[tap]

            def encode(index, words=words, samples=samples):
                return np.asarray([
                    vlad_encode(samples[i].astype(np.float32).T[None, :, None, :], words,
                                n_threads=self.threads)[0]
                    for i in index
                ])  # fmt: skip

            parts.append((encode(train), encode(test)))
        return (np.concatenate([p[0] for p in parts], axis=1),
                np.concatenate([p[1] for p in parts], axis=1))  # fmt: skip


def _bar_chart(results: list[dict], layers: list[str], pools: list[str], splits: list[str],
               path):  # fmt: skip
    """Ling's figure: F1 ± std per layer, one bar per pooling; one panel per split."""
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(splits), figsize=(0.6 + 1.3 * len(layers) * len(splits), 3.8),
                             squeeze=False, sharey=True)  # fmt: skip
    width = 0.8 / len(pools)
    for ax, split in zip(axes[0], splits):
        for j, pool in enumerate(pools):
            means, stds, xs = [], [], []
            for i, layer in enumerate(layers):
                row = next(r for r in results if r["layer"] == layer and r["pool"] == pool)
                xs.append(i + (j - (len(pools) - 1) / 2) * width)
                means.append(row[split]["f1_macro"]["mean"])
                stds.append(row[split]["f1_macro"]["std"])
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=pool)
        ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
        ax.set_ylim(0, 1.12)
        ax.set_title(f"{split.replace('_', '-')} split", fontsize="medium")
    axes[0][0].set_ylabel(f"{METRIC} (mean ± std over repeats)")
    axes[0][0].legend(ncols=len(pools), fontsize="small", loc="upper left", frameon=False)
    return _save(fig, path)


def _confusion_chart(summary: dict, title: str, path):
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    matrix = np.asarray(summary["confusion"])
    classes = summary["classes"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(classes), 1.2 + 0.6 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize="small")
    return _save(fig, path)


def run_study(
    paths: Sequence,
    labels: Sequence,
    groups: Sequence | None = None,
    *,
    output,
    backbone: str = "vgg19",
    weights=None,
    taps="block_last",
    pools: Sequence[str] = GRID_POOLS,
    raw: bool = True,
    tile: int | None = None,
    tile_stride: int | None = None,
    image_size=None,
    crop_bottom=None,
    n_words: int = 32,
    vlad_positions: int = 512,
    vlad_max_vectors: int = 25_000,
    n_estimators: int = 100,
    n_splits: int = 3,
    n_repeats: int = 10,
    random_state: int = 0,
    device: str = "auto",
    n_threads: int | None = None,
    max_pixels="auto",
    progress: bool = False,
) -> dict:
    """Run the study grid on labelled images and write its report into ``output``.

    Parameters
    ----------
    paths, labels : sequences of equal length
        Image files and their classes.
    groups : sequence, optional
        Each image's group (specimen, sample, ...): folds never split a group,
        and the grid is also scored with an image-level split to show the
        inflation that split causes. With ``tile`` and no ``groups``, each
        tile's source image is its group.
    output : path
        Folder of the report: ``study.json`` (every number), ``study.csv``,
        ``f1_grid.png`` (one panel per split), ``confusion_best.png`` and the
        activation cache ``cache/``.
    taps, pools, raw
        The grid: each tap alone and all together (``"all"``) × ``pools``,
        plus the untransformed image (``"raw"``) when ``raw``.
    tile, tile_stride, image_size, crop_bottom, backbone, weights, device,
    n_threads, max_pixels
        As for :func:`microtex.featurize`.
    n_words, vlad_positions, vlad_max_vectors
        VLAD words; activation vectors per image and tap kept for VLAD; and
        of those, the most a fold's k-means clusters (drawn uniformly).
    n_estimators, n_splits, n_repeats, random_state
        The forest and the cross-validation (:func:`~.classify.cross_validate`).
        100 trees, not Ling's 400: on the AMPIS powder tiles 400 trees moved
        the grid's F1 by at most 0.012 (within the repeats' std) at 3.6× the
        time, and the forests are most of a study's time.

    Returns
    -------
    dict
        The report, as written to ``study.json``.
    """
    from microtex.report import write_json

    start = time.perf_counter()
    output = pathlib.Path(output)
    paths = [str(p) for p in paths]
    labels = np.asarray(labels)
    if len(paths) != len(labels) or (groups is not None and len(groups) != len(paths)):
        raise ValueError("paths, labels and groups must have one entry per image")
    pools = [p for p in GRID_POOLS if p in set(pools)]
    if not pools:
        raise ValueError(f"pools must name some of {list(GRID_POOLS)}")
    plan = make_plan(backbone=backbone, weights=weights,
                     taps=[*(["raw"] if raw else []), *([taps] if isinstance(taps, str) else taps)],
                     pool="mean", engine="kernels", image_size=image_size,
                     crop_bottom=crop_bottom, device=device, n_threads=n_threads,
                     max_pixels=max_pixels, n_words=n_words)  # fmt: skip
    tiles = check_tiles(tile, tile_stride, plan)
    if not raw and not plan.cnn_taps:
        raise ValueError("the grid is empty: name taps, or keep the raw image (raw=True)")
    # folds that cannot be made fail now, not after the network pass (the tile-level
    # split is of tiles, whose counts only the images tell)
    if tiles is None:
        checks = [None] + ([groups] if groups is not None else [])
    else:
        checks = [groups if groups is not None else paths]
    for check_groups in checks:
        with warnings.catch_warnings():  # scikit-learn's notes on image counts: rows differ
            warnings.simplefilter("ignore", UserWarning)
            cv_splits(labels, check_groups, n_splits=n_splits, n_repeats=1,
                      random_state=random_state)  # fmt: skip
    settings = {"backbone": None if plan.config is None else plan.config.to_dict(),
                "raw": raw, "tiles": tiles, "image_size": plan.image_size,
                "crop_bottom": plan.crop_bottom, "positions": vlad_positions}  # fmt: skip
    cache = output / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    collector = _Collector(plan, cache, settings, vlad_positions, tiles)

    # ---- one network pass (or a cache hit) per image
    failures: list = []
    per_image, kept = [], []
    iterator = range(len(paths))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, unit="img", desc="network", leave=False)
    for i in iterator:
        arrays = collector.image(paths[i], failures)
        if arrays is not None:
            per_image.append(arrays)
            kept.append(i)
    if not kept:
        raise ValueError(f"no image of the study could be read; the first: {failures[0].reason}")
    featurize_seconds = time.perf_counter() - start
    counts = [len(a["ids"]) for a in per_image]
    item_image = np.repeat(np.asarray(kept), counts)  # the source image of every row
    y = labels[item_image]
    if groups is not None:
        item_groups = np.asarray(groups)[item_image]
    elif tiles is not None:
        item_groups = np.asarray(paths)[item_image]
    else:
        item_groups = None

    def stacked(key):
        return np.concatenate([a[key] for a in per_image]).astype(np.float32)

    samples_of = {tap: [s for a in per_image for s in a[f"{tap}/samples"]] for tap in plan.taps}
    cnn_taps = list(plan.cnn_taps)
    layers = ([RAW_TAP] if raw else []) + cnn_taps + ([ALL_LAYERS] if len(cnn_taps) > 1 else [])
    # the split that ignores groups: of images, or of tiles (a tile's siblings in training)
    loose = "tile_level" if tiles is not None else "image_level"
    splits = {"grouped": item_groups} if item_groups is not None else {}
    if tiles is not None and groups is not None:  # tiles of a specimen's images: three levels
        splits["image_level"] = np.asarray(paths)[item_image]
    splits[loose] = None

    # ---- the grid
    forest = make_forest(n_estimators, random_state, n_jobs=n_threads)
    vlad_folds = _VladFolds(samples_of, n_words, vlad_max_vectors, random_state, n_threads)
    results = []
    combos = [(layer, pool) for layer in layers for pool in pools]
    if progress:
        from tqdm import tqdm

        combos = tqdm(combos, unit="combination", desc="grid", leave=False)
    for layer, pool in combos:
        members = cnn_taps if layer == ALL_LAYERS else [layer]
        row = {"layer": layer, "pool": pool}
        began = time.perf_counter()
        for split, split_groups in splits.items():
            if pool == "vlad":

                def fold_features(train, test, members=members):
                    return vlad_folds(members, train, test)

                X = None
                row["n_features"] = sum(n_words * samples_of[t][0].shape[1] for t in members)
            else:
                X = np.concatenate([stacked(f"{t}/{pool}") for t in members], axis=1)
                fold_features = None
                row["n_features"] = int(X.shape[1])
            result = cross_validate(forest, X, y, split_groups, n_splits=n_splits,
                                    n_repeats=n_repeats, random_state=random_state,
                                    fold_features=fold_features)  # fmt: skip
            row[split] = result.summary()
        if "grouped" in row:
            row["inflation"] = (row[loose]["f1_macro"]["mean"]
                                - row["grouped"]["f1_macro"]["mean"])  # fmt: skip
        row["seconds"] = time.perf_counter() - began
        results.append(row)
        log.info("%s/%s: %s", layer, pool, {s: round(row[s]["f1_macro"]["mean"], 3)
                                            for s in splits})  # fmt: skip

    honest = "grouped" if "grouped" in splits else loose
    best = max(results, key=lambda r: r[honest]["f1_macro"]["mean"])
    report = {
        "metric": METRIC,
        "honest_split": honest,
        "loose_split": loose,
        "settings": {**settings, "taps": cnn_taps, "pools": pools, "n_words": n_words,
                     "vlad_max_vectors": vlad_max_vectors,
                     "n_estimators": n_estimators, "n_splits": n_splits, "n_repeats": n_repeats,
                     "random_state": random_state,
                     "groups": "given" if groups is not None else
                               ("source image of each tile" if tiles else None)},  # fmt: skip
        "n_images": len(kept),
        "n_rows": int(len(y)),
        "skipped": [[str(f.path), f.reason] for f in failures],
        "classes": sorted({str(c) for c in y}),
        "counts": {str(c): int((y == c).sum()) for c in sorted(set(y.tolist()))},
        "seconds": {"network_and_pooling": featurize_seconds,
                    "cross_validation": time.perf_counter() - start - featurize_seconds},
        "results": results,
        "best": {"layer": best["layer"], "pool": best["pool"],
                 "f1_macro": best[honest]["f1_macro"]},  # fmt: skip
    }
    if "grouped" in splits:
        report["inflation"] = {
            "mean": float(np.mean([r["inflation"] for r in results])),
            "max": float(max(r["inflation"] for r in results)),
            "statement": f"macro F1 with a {loose.replace('_', '-')} split minus macro F1 "
                         "with a grouped split, averaged over the grid: what letting one "
                         "group's rows sit on both sides of a split adds to the score",
        }  # fmt: skip
    write_json(output / "study.json", report)
    _files.atomic_write_text(output / "study.csv", _csv(results, list(splits)))
    _bar_chart(results, layers, pools, list(splits), output / "f1_grid.png")
    title = f"{best['layer']} / {best['pool']} ({honest} split, summed over {n_repeats} repeats)"
    _confusion_chart(best[honest], title, output / "confusion_best.png")
    return report


def _csv(results: list[dict], splits: list[str]) -> str:
    header = ["layer", "pool", "n_features"]
    for split in splits:
        header += [f"f1_{split}_mean", f"f1_{split}_std"]
    if "grouped" in splits:
        header.append("inflation")
    rows = []
    for row in results:
        values = [row["layer"], row["pool"], row["n_features"]]
        for split in splits:
            f1 = row[split]["f1_macro"]
            values += [f"{f1['mean']:.4f}", f"{f1['std']:.4f}"]
        if "grouped" in splits:
            values.append(f"{row['inflation']:.4f}")
        rows.append(values)
    from microtex.report import csv_text

    return csv_text(header, rows)
