"""``explain``: everything :mod:`microtex.interpret` can say about a classifier, as files.

For a ``classifier`` bundle and a set of images it writes, into one folder:

* ``top_textures_<importance>.png``: the textures of the classifier's most
  important features (impurity, and permutation when labels are given);
* ``characteristic_<i>.png``: per class, the filters that set it apart (at one
  tap), each with the images that show it most;
* ``heatmap_<i>.png``: for the first images, the importance-weighted map of the
  top features over the image;
* ``index.json``: what each file shows, with every number behind it, and
  with labels the permutation importance of each ``(tap, pool)`` block.

Without labels the classes of the characteristic filters are the classifier's
predictions, and there is no permutation importance (it needs true labels).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from microtex._validation import (
    check_choices,
    check_non_negative_int,
    check_on_error,
    check_positive_int,
)
from microtex.backbones.layers import min_image_side
from microtex.features.plan import RAW_TAP
from microtex.features.stream import input_list
from microtex.interpret import heatmap as _heatmap
from microtex.interpret import importance as _importance
from microtex.interpret.filters import TextureSettings, filter_texture

__all__ = ["explain"]

log = logging.getLogger("microtex.interpret")


def _classifier(model):
    from microtex import bundle

    if isinstance(model, (str, os.PathLike)):
        model = bundle.load_bundle(model)
    if not (hasattr(model, "featurizer") and hasattr(model, "forest_path")):
        raise TypeError(f"explain needs a classifier bundle, not {type(model).__name__}")
    return model


def _input_ids(inputs: list, files: bool) -> list[str]:
    """The ids the images will be read under: each file's path, or ``array[i]``."""
    return [str(x) for x in inputs] if files else [f"array[{i}]" for i in range(len(inputs))]


def _label_table(labels, inputs: list, files: bool) -> dict[str, str] | None:
    """``{id: label}`` for every image that will be read, checked before any is read.

    A mapping from paths matches files however their paths are spelled
    (relative, absolute, through ``..``); a sequence gives one label per image
    in input order.
    """
    if labels is None:
        return None
    ids = _input_ids(inputs, files)
    if isinstance(labels, Mapping):
        key = os.path.realpath if files else str
        table = {key(os.fspath(k)): str(v) for k, v in labels.items()}
        missing = [i for i in ids if key(i) not in table]
        if missing:
            raise ValueError(f"no label for image {missing[0]!r} ({len(missing)} without one)")
        return {i: table[key(i)] for i in ids}
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a mapping from image path to label, or a sequence")
    labels = [str(label) for label in labels]
    if len(labels) != len(ids):
        raise ValueError(f"{len(labels)} labels for {len(ids)} images")
    return dict(zip(ids, labels))


def _texture_record(ranked, texture) -> dict[str, Any]:
    source = ranked.source
    return {
        "feature": source.name,
        "tap": source.tap,
        "pool": source.pool,
        "filters": list(source.filters),
        "word": source.word,
        "describe": source.describe,
        "importance": ranked.importance,
        "importance_std": ranked.spread,
        "activation_noise": texture.start,
        "activation_texture": texture.final,
    }


def _busiest_tap(classifier, blocks: list | None, taps: Sequence[str]) -> str:
    """The tap the classifier relies on most (ties: the earlier tap).

    By block permutation importance when some block has a positive one
    (summed over the tap's poolings), else by the impurity importance summed
    over all the tap's features, else the deepest tap.
    """
    totals = dict.fromkeys(taps, 0.0)
    if blocks and any(block["mean"] > 0 for block in blocks):
        for block in blocks:
            if block["tap"] in totals:
                totals[block["tap"]] += block["mean"]
    elif classifier.feature_importances_ is not None:
        names = classifier.featurizer.get_feature_names_out()
        for name, value in zip(names, classifier.feature_importances_):
            tap = _importance.split_name(name)[0]
            if tap in totals:
                totals[tap] += float(value)
    else:
        return taps[-1]
    return max(taps, key=lambda tap: (totals[tap], -taps.index(tap)))


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded effect (zero spread in both groups) is written null."""
    return float(value) if np.isfinite(value) else None


def explain(
    model,
    images,
    output_dir,
    *,
    labels=None,
    top: int = 3,
    importance: Sequence[str] = ("impurity", "permutation"),
    tap: str | None = None,
    characteristic: int = 3,
    exemplars: int = 3,
    heatmaps: int = 4,
    settings: TextureSettings | None = None,
    n_repeats: int = 5,
    max_permuted: int = 100,
    on_error: str = "skip",
    overwrite: bool = False,
    random_state: int = 0,
) -> dict[str, Any]:
    """Write the textures, characteristic filters and heat maps of a classifier.

    Every argument (and every label) is checked before an image is read; the
    images are read once; the report is written into a temporary folder that
    becomes ``output_dir`` only when complete, so a failure leaves nothing
    half-written and an overwritten report keeps no file of the old one.

    Parameters
    ----------
    model : TextureClassifier or path
        A ``classifier`` bundle (``microtex train``) or its loaded model.
    images : paths or arrays
        The images to explain with (as :func:`microtex.featurize` takes them).
    output_dir : path-like
        The report folder; an existing non-empty one needs ``overwrite``.
    labels : mapping of image path to label, or sequence, optional
        True classes (a sequence: one per image, in input order). Without them
        there is no permutation importance and classes are the predictions.
    top : int
        Most important features drawn per importance kind.
    importance : sequence of {"impurity", "permutation"}
    tap : str, optional
        Tap of the characteristic filters; default: the one the classifier
        relies on most (block permutation importance with labels, else the
        impurity importance of all its features).
    characteristic, exemplars : int
        Filters per class, and images shown per filter. A class needs at least
        two images (and two outside it) to have characteristic filters.
    heatmaps : int
        Images that get a heat map (the first ones read; 0: none).
    settings : TextureSettings, optional
        How textures are rendered (cached across runs).
    n_repeats, max_permuted, random_state
        Of :func:`~microtex.interpret.importance.permutation_importance`.
    on_error : {"skip", "raise"}
        ``"skip"``: an unreadable file is reported in the index and left out.
    overwrite : bool

    Returns
    -------
    dict
        The index (also written as ``index.json``).
    """
    from microtex import _files
    from microtex.errors import NoImagesError, UnknownLayerError
    from microtex.report import montage, write_json

    started = time.perf_counter()
    classifier = _classifier(model)
    importance = check_choices("importance", importance, _importance.IMPORTANCE_KINDS)
    top = check_positive_int("top", top)
    characteristic = check_positive_int("characteristic", characteristic)
    exemplars = check_positive_int("exemplars", exemplars)
    heatmaps = check_non_negative_int("heatmaps", heatmaps)
    n_repeats = check_positive_int("n_repeats", n_repeats)
    max_permuted = check_positive_int("max_permuted", max_permuted)
    on_error = check_on_error(on_error)
    settings = TextureSettings() if settings is None else settings
    featurizer = classifier.featurizer
    plan = featurizer.pipeline_.plan
    if plan.config is None:
        raise ValueError("this classifier's featurizer taps only 'raw'; there are no filters")
    config = plan.config
    if tap is not None and tap not in config.taps:
        raise UnknownLayerError(f"tap {tap!r} is not one of the classifier's taps {config.taps}")
    if settings.size < min_image_side(config.deepest_tap):
        raise ValueError(
            f"texture size {settings.size} is smaller than {min_image_side(config.deepest_tap)} "
            f"pixels, the least that layer {config.deepest_tap} needs"
        )
    output = pathlib.Path(output_dir)
    if output.exists():
        if not output.is_dir():
            raise FileExistsError(f"{str(output)!r} exists and is not a folder")
        if any(output.iterdir()) and not overwrite:
            raise FileExistsError(f"{str(output)!r} exists and is not empty; pass overwrite=True")
    inputs, files = input_list(images)
    label_of = _label_table(labels, inputs, files)

    # one pass: the features (pooled by the featurizer's kernels from the same
    # activations), each tap's mean per filter, thumbnails, the heat-map images
    failures: list = []
    ids, rows, thumbnails, kept = [], [], [], []
    means: dict[str, list] = {t: [] for t in config.taps}
    graph = _heatmap.ActivationGraph(featurizer)
    for image_id, image, acts in _heatmap.activations(
        inputs, graph, on_error=on_error, failures=failures
    ):
        outputs = {t: a[None] for t, a in acts.items()}
        if plan.raw:
            outputs[RAW_TAP] = image[None, None]
        rows.append(featurizer.pipeline_.pool(outputs)[0])
        for t, a in acts.items():
            means[t].append(a.mean(axis=(1, 2)))
        ids.append(image_id)
        thumbnails.append(_thumbnail(image))
        if len(kept) < heatmaps:
            kept.append((image_id, image))
    if not ids:
        raise NoImagesError("no image could be read")
    X = np.stack(rows)
    predicted = classifier.classes_[np.argmax(classifier.predict_proba_features(X), axis=1)]
    truth = None if label_of is None else np.array([label_of[i] for i in ids])
    classes = truth if truth is not None else np.asarray(predicted, dtype=str)

    index: dict[str, Any] = {
        "bundle": None if hasattr(model, "featurizer") else os.fspath(model),
        "classes": [str(c) for c in classifier.classes_],
        "n_images": len(ids),
        "failures": [{"path": str(f.path), "reason": f.reason} for f in failures],
        "labels": "given" if truth is not None else "predicted",
        "texture_settings": settings.to_dict(),
        "backbone": config.to_dict(),
        "top_textures": {},
    }
    permutation = None
    if truth is not None:
        index["accuracy_on_these_images"] = float(np.mean(predicted == truth))
        if "permutation" in importance:
            permutation = _importance.permutation_importance(
                classifier,
                X,
                truth,
                n_repeats=n_repeats,
                max_features=max_permuted,
                random_state=random_state,
            )
            index["permutation_baseline_macro_f1"] = permutation["baseline"]
            index["permutation_features"] = len(permutation["features"])
            index["block_importance"] = _importance.block_importance(
                classifier, X, truth, n_repeats=n_repeats, random_state=random_state
            )
    elif "permutation" in importance:
        index["permutation_skipped"] = "needs labels"

    with _files.atomic_directory(output, replace=output.exists()) as staging:
        ranked_lists = []
        for kind in importance:
            if kind == "impurity" and classifier.feature_importances_ is None:
                index["top_textures"]["impurity"] = {
                    "skipped": "the bundle stores no impurity importances"
                }
                continue
            if kind == "permutation" and permutation is None:
                continue
            ranked = _importance.rank_features(classifier, kind, k=top, permutation=permutation)
            ranked_lists.append(ranked)
            textures = [
                filter_texture(r.source.tap, r.source.filters, config=config, settings=settings)
                for r in ranked
            ]
            entry: dict[str, Any] = {
                "file": None,
                "textures": [_texture_record(r, t) for r, t in zip(ranked, textures)],
            }
            if textures:
                entry["file"] = f"top_textures_{kind}.png"
                titles = [f"{r.source.describe}\n{kind} {r.importance:.3g}" for r in ranked]
                montage(
                    [t.image for t in textures],
                    titles,
                    staging / entry["file"],
                    columns=len(textures),
                )
            else:
                entry["note"] = (
                    f"no feature with a filter has a positive {kind} importance on these images"
                )
            index["top_textures"][kind] = entry

        tap = tap or _busiest_tap(classifier, index.get("block_importance"), list(config.taps))
        index["characteristic"] = {"tap": tap, "classes": []}
        found = (
            _importance.characteristic_filters(
                np.stack(means[tap]), classes, top=characteristic, exemplars=exemplars, min_images=2
            )
            if len(set(classes)) > 1
            else {}
        )
        if not found:
            index["characteristic"]["skipped"] = (
                "needs at least two classes, each with two images or more"
            )
        for number, (name, chosen) in enumerate(found.items()):
            pictures, titles, records = [], [], []
            for c in chosen:
                texture = filter_texture(tap, c.filter, config=config, settings=settings)
                shown = [ids[i] for i in c.exemplars]
                blank = exemplars - len(shown)
                pictures += [texture.image, *(thumbnails[i] for i in c.exemplars)]
                pictures += [np.ones((8, 8), np.float32)] * blank
                titles += [f"{tap} #{c.filter}\nd = {c.effect:.2f}"]
                titles += [pathlib.Path(s).stem[-24:] for s in shown] + [""] * blank
                record = {**dataclasses.asdict(c), "effect": _finite(c.effect), "exemplars": shown}
                records.append({**record, "activation_texture": texture.final})
            file = f"characteristic_{number}.png" if chosen else None
            if chosen:
                montage(pictures, titles, staging / file, columns=1 + exemplars)
            index["characteristic"]["classes"].append(
                {"class": name, "file": file, "filters": records}
            )
        for name in sorted(set(classes) - set(found)) if found else ():
            index["characteristic"]["classes"].append(
                {"class": name, "file": None, "filters": [], "note": "fewer than two images"}
            )

        index["heatmaps"] = []
        weights = next((r for r in ranked_lists if r), [])
        if kept and not weights:
            index["heatmaps_skipped"] = "no ranked feature to weight (no importances)"
        for number, (image_id, image) in enumerate(kept if weights else ()):
            heat, what = _heatmap.weighted_map(graph.run(image), weights, image.shape)
            file = f"heatmap_{number}.png"
            _heatmap.overlay(_heatmap.HeatMap(image_id, image, heat, what), staging / file)
            index["heatmaps"].append(
                {
                    "file": file,
                    "image": image_id,
                    "shows": what,
                    "predicted": str(predicted[ids.index(image_id)]),
                }
            )
        index["seconds"] = round(time.perf_counter() - started, 3)
        write_json(staging / "index.json", index)
    return index


def _thumbnail(image: np.ndarray, side: int = 160) -> np.ndarray:
    """At most ``side`` pixels on the long side (block means), so every image can be kept."""
    step = max(1, -(-max(image.shape) // side))
    if step == 1:
        return image
    h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    return image[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
