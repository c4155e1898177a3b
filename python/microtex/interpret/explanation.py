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

from microtex._validation import check_choices, check_non_negative_int, check_positive_int
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


def _aligned_labels(
    labels, ids: list[str], n_inputs: int | None, n_failed: int
) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        missing = [i for i in ids if i not in labels]
        if missing:
            raise ValueError(f"no label for image {missing[0]!r} ({len(missing)} without)")
        return np.array([str(labels[i]) for i in ids])
    labels = [str(label) for label in labels]
    if n_failed or len(labels) != len(ids) or (n_inputs is not None and n_inputs != len(ids)):
        raise ValueError(
            f"{len(labels)} labels for {len(ids)} images read ({n_failed} unreadable); pass "
            "labels as a mapping from image path to label"
        )
    return np.array(labels)


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

    By block permutation importance when there is one (summed over the tap's
    poolings), else by the impurity importance summed over all the tap's
    features, else the deepest tap.
    """
    totals = dict.fromkeys(taps, 0.0)
    if blocks:
        for block in blocks:
            if block["tap"] in totals:
                totals[block["tap"]] += block["mean"]
    elif classifier.feature_importances_ is not None:
        names = classifier.featurizer.get_feature_names_out()
        for name, value in zip(names, classifier.feature_importances_):
            tap = str(name).split("/", 1)[0]
            if tap in totals:
                totals[tap] += float(value)
    else:
        return taps[-1]
    return max(taps, key=lambda tap: (totals[tap], -taps.index(tap)))


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

    Parameters
    ----------
    model : TextureClassifier or path
        A ``classifier`` bundle (``microtex train``) or its loaded model.
    images : paths or arrays
        The images to explain with (as :func:`microtex.featurize` takes them).
    output_dir : path-like
        Created; an existing non-empty folder needs ``overwrite``.
    labels : mapping of image id to label, or sequence, optional
        True classes (a sequence: one per image, in order). Without them there
        is no permutation importance and classes are the predictions.
    top : int
        Most important features drawn per importance kind.
    importance : sequence of {"impurity", "permutation"}
    tap : str, optional
        Tap of the characteristic filters; default: the one the classifier
        relies on most (block permutation importance with labels, else the
        impurity importance of all its features).
    characteristic, exemplars : int
        Filters per class, and images shown per filter.
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
    from microtex.report import montage, write_json

    started = time.perf_counter()
    classifier = _classifier(model)
    importance = check_choices("importance", importance, _importance.IMPORTANCE_KINDS)
    top = check_positive_int("top", top)
    heatmaps = check_non_negative_int("heatmaps", heatmaps)
    settings = TextureSettings() if settings is None else settings
    output = pathlib.Path(output_dir)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(output)!r} exists and is not empty; pass overwrite=True")
    featurizer = classifier.featurizer
    plan = featurizer.pipeline_.plan
    if plan.config is None:
        raise ValueError("this classifier's featurizer taps only 'raw'; there are no filters")
    config = plan.config
    if tap is not None and tap not in config.taps:
        from microtex.errors import UnknownLayerError

        raise UnknownLayerError(f"tap {tap!r} is not one of the classifier's taps {config.taps}")

    # one pass for the features; the activations pass below reads only what was readable
    failures: list = []
    ids, rows = [], []
    for batch_ids, batch in featurizer.iter_features(images, on_error=on_error, failures=failures):
        ids.extend(batch_ids)
        rows.append(batch)
    if not ids:
        from microtex.errors import NoImagesError

        raise NoImagesError("no image could be read")
    X = np.concatenate(rows)
    predicted = classifier.classes_[np.argmax(classifier.predict_proba_features(X), axis=1)]
    n_inputs = len(images) if isinstance(images, (list, tuple, np.ndarray)) else None
    truth = _aligned_labels(labels, ids, n_inputs, len(failures))
    classes = truth if truth is not None else np.asarray(predicted, dtype=str)

    permutation = None
    if "permutation" in importance and truth is not None:
        permutation = _importance.permutation_importance(
            classifier,
            X,
            truth,
            n_repeats=n_repeats,
            max_features=max_permuted,
            random_state=random_state,
        )
    output.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "bundle": str(getattr(model, "path", model)) if not hasattr(model, "featurizer") else None,
        "classes": [str(c) for c in classifier.classes_],
        "n_images": len(ids),
        "failures": [{"path": str(f.path), "reason": f.reason} for f in failures],
        "labels": "given" if truth is not None else "predicted",
        "texture_settings": settings.to_dict(),
        "backbone": config.to_dict(),
        "top_textures": {},
    }
    if truth is not None:
        index["accuracy_on_these_images"] = float(np.mean(predicted == truth))
    if permutation is not None:
        index["permutation_baseline_macro_f1"] = permutation["baseline"]
        index["permutation_features"] = len(permutation["features"])
        index["block_importance"] = _importance.block_importance(
            classifier, X, truth, n_repeats=n_repeats, random_state=random_state
        )
    elif "permutation" in importance:
        index["permutation_skipped"] = "needs labels"

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
        name = f"top_textures_{kind}.png"
        if textures:
            montage(
                [t.image for t in textures],
                [f"{r.source.describe}\n{kind} {r.importance:.3g}" for r in ranked],
                output / name,
                columns=max(len(textures), 1),
            )
        index["top_textures"][kind] = {
            "file": name if textures else None,
            "textures": [_texture_record(r, t) for r, t in zip(ranked, textures)],
        }
        if not ranked:
            index["top_textures"][kind]["note"] = (
                f"no feature with a filter has a positive {kind} importance on these images"
            )

    tap = tap or _busiest_tap(classifier, index.get("block_importance"), list(config.taps))
    weights = next((r for r in ranked_lists if r), [])
    # arrays are never skipped, so their ids are their positions in ``images``
    source = ids if not ids[0].startswith("array[") else images
    means, thumbnails, maps = [], [], []
    for position, (image_id, image, acts) in enumerate(_heatmap.activations(source, featurizer)):
        means.append(acts[tap].mean(axis=(1, 2)))
        thumbnails.append(_thumbnail(image))
        if position < heatmaps and weights:
            heat, what = _heatmap.weighted_map(acts, weights, image.shape)
            maps.append(_heatmap.HeatMap(image_id, image, heat, what))
    acts_mean = np.stack(means)

    index["characteristic"] = {"tap": tap, "classes": []}
    found = (
        _importance.characteristic_filters(
            acts_mean, classes, top=characteristic, exemplars=exemplars
        )
        if len(set(classes)) > 1
        else {}
    )
    if not found:
        index["characteristic"]["skipped"] = "needs images of at least two classes"
    for number, (name, chosen) in enumerate(found.items()):
        pictures, titles, records = [], [], []
        for c in chosen:
            texture = filter_texture(tap, c.filter, config=config, settings=settings)
            pictures.append(texture.image)
            titles.append(f"{tap} #{c.filter}\nd = {c.effect:.2f}")
            shown = [ids[i] for i in c.exemplars]
            pictures.extend(thumbnails[i] for i in c.exemplars)
            titles.extend(pathlib.Path(s).stem[-24:] for s in shown)
            pictures.extend(np.ones((8, 8), np.float32) for _ in range(exemplars - len(shown)))
            titles.extend("" for _ in range(exemplars - len(shown)))
            records.append(
                {**dataclasses.asdict(c), "exemplars": shown, "activation_texture": texture.final}
            )
        file = f"characteristic_{number}.png" if chosen else None
        if chosen:
            montage(pictures, titles, output / file, columns=1 + exemplars)
        index["characteristic"]["classes"].append({"class": name, "file": file, "filters": records})

    index["heatmaps"] = []
    for number, heat in enumerate(maps):
        file = f"heatmap_{number}.png"
        _heatmap.overlay(heat, output / file)
        index["heatmaps"].append(
            {
                "file": file,
                "image": heat.id,
                "shows": heat.what,
                "predicted": str(predicted[ids.index(heat.id)]),
            }
        )
    index["seconds"] = round(time.perf_counter() - started, 3)
    write_json(output / "index.json", index)
    _files.remove_stale_temporaries_in(output)
    return index


def _thumbnail(image: np.ndarray, side: int = 160) -> np.ndarray:
    """At most ``side`` pixels on the long side (block means), so every image can be kept."""
    step = max(1, -(-max(image.shape) // side))
    if step == 1:
        return image
    h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    return image[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
