"""Where in a micrograph a filter fires: activation heat maps at the input resolution.

Only a forward pass is needed, so this runs the exported ONNX graph (no
PyTorch): a classifier's own graph (its featurizer reads, crops and resizes
images as it did for the prediction) or the cached export of a backbone
configuration. A tap at block b has stride 2^(b−1); its map is upsampled
bilinearly to the image, each map pixel centred on the input pixels it covers.

* one filter f: A_f, the tap's activation;
* a Gram entry (a, b): A_a · A_b, the entry's contribution at each position
  (G_ab / M is its mean);
* a VLAD entry (word k, filter f): A_f, the filter alone (which positions
  fall to word k depends on the fitted words, which this map ignores);
* a classifier's top features: Σ_i w_i · m_i / max(m_i) / Σ_i w_i over its
  ``k`` most important features, each feature's map m_i scaled to peak 1 on
  the image so that the importances w_i alone set the mix.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from microtex.backbones.config import BackboneConfig
from microtex.backbones.layers import min_image_side, tap_block
from microtex.errors import ImageTooSmallError, UnknownLayerError

__all__ = [
    "ActivationGraph",
    "HeatMap",
    "activations",
    "classifier_heatmaps",
    "feature_map",
    "filter_heatmap",
    "mean_activations",
    "overlay",
    "upsample",
    "weighted_map",
]


@dataclasses.dataclass(frozen=True)
class HeatMap:
    """A map over one image.

    Attributes
    ----------
    id : str
        The image's path or ``"array[i]"``.
    image : ndarray, shape (H, W)
        The image as the network saw it (cropped, resized), float32 in [0, 1].
    heat : ndarray, shape (H, W)
        float32, the same size.
    what : str
        What the map shows.
    """

    id: str
    image: np.ndarray
    heat: np.ndarray
    what: str


class ActivationGraph:
    """Raw activations per tap from a featurizer's graph or a backbone config's export.

    Parameters
    ----------
    source : TextureFeaturizer, BackboneConfig or None
        A fitted featurizer (its graph, taps, crop and resize), or a backbone
        configuration whose activations graph is exported on first use
        (default: the normalized VGG19, block_first).
    """

    def __init__(self, source):
        from microtex.engine.session import shared_session

        if source is None or isinstance(source, BackboneConfig):
            from microtex.backbones.vgg import cached_onnx
            from microtex.features.stream import graph_conv_algorithm

            config = BackboneConfig() if source is None else source
            self.session = shared_session(
                cached_onnx(config, conv_algorithm=graph_conv_algorithm("auto", config, "cpu")),
                device="cpu",
            )
            self.taps, self.crop_bottom, self.image_size = config.taps, None, None
        elif hasattr(source, "pipeline_"):
            plan = source.pipeline_.plan
            if plan.config is None:
                raise ValueError("this featurizer taps only 'raw'; there are no filters to map")
            self.session = source.pipeline_.session(heads=False)
            self.taps = plan.config.taps
            self.crop_bottom, self.image_size = plan.crop_bottom, plan.image_size
        else:
            raise TypeError(
                f"source must be a fitted TextureFeaturizer, a BackboneConfig or None, "
                f"not {type(source).__name__}"
            )

    def run(self, image: np.ndarray) -> dict:
        """``{tap: (C, h, w)}`` of one image as read (already cropped and resized)."""
        outputs = self.session.run(np.ascontiguousarray(image, dtype=np.float32)[None, None])
        return {tap: outputs[tap][0] for tap in self.taps}

    def check(self, taps: Sequence[str]) -> None:
        """UnknownLayerError naming a tap the graph does not output."""
        for tap in taps:
            if tap not in self.taps:
                raise UnknownLayerError(
                    f"layer {tap!r} is not an output of this graph; its taps are "
                    f"{', '.join(self.taps)}"
                )


def activations(
    images, source=None, *, on_error: str = "raise", failures: list | None = None
) -> Iterator[tuple[str, np.ndarray, dict]]:
    """``(id, image, {tap: (C, h, w) float32})`` for each image, one at a time.

    Parameters
    ----------
    images : array (n, H, W), list of 2-D arrays, or paths
        As :func:`microtex.featurize` takes them.
    source : TextureFeaturizer, BackboneConfig, ActivationGraph or None
        A fitted featurizer (e.g. ``classifier.featurizer``: its graph, taps,
        crop and resize), or a backbone configuration whose activations graph
        is exported on first use (default: the normalized VGG19, block_first),
        or an :class:`ActivationGraph` already made from one.
    on_error : {"raise", "skip"}
        ``"skip"``: unreadable files go to ``failures``.
    """
    from microtex.features.stream import iter_inputs

    graph = source if isinstance(source, ActivationGraph) else ActivationGraph(source)
    failures = [] if failures is None else failures
    deepest = graph.taps[-1]
    for image_id, image in iter_inputs(
        images, graph.crop_bottom, graph.image_size, on_error, failures
    ):
        if min(image.shape) < min_image_side(deepest):
            raise ImageTooSmallError(
                f"{image_id}: image {image.shape[0]}x{image.shape[1]} is smaller than "
                f"{min_image_side(deepest)} pixels, the least that layer {deepest} needs"
            )
        yield image_id, image, graph.run(image)


def mean_activations(images, tap: str, source=None) -> tuple[list[str], np.ndarray]:
    """``(ids, (n_images, n_filters))``: each filter's mean activation of ``tap`` on each image.

    ``source`` as for :func:`activations`; default: the normalized VGG19 up to ``tap``.
    """
    graph = ActivationGraph(BackboneConfig(taps=tap) if source is None else source)
    graph.check([tap])
    ids, rows = [], []
    for image_id, _, acts in activations(images, graph):
        ids.append(image_id)
        rows.append(acts[tap].mean(axis=(1, 2)))
    if not rows:
        raise ValueError("no images")
    return ids, np.stack(rows)


def upsample(values, shape: tuple[int, int]) -> np.ndarray:
    """A tap's (h, w) map bilinearly resized to the image's (H, W), pixel centres aligned."""
    from scipy.ndimage import zoom

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {values.shape}")
    factors = (shape[0] / values.shape[0], shape[1] / values.shape[1])
    out = zoom(values, factors, order=1, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1]].astype(np.float32)


def feature_map(acts: dict, tap: str, filters: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """A_f (one filter) or A_a·A_b (a pair) of ``tap`` at the image's resolution.

    A tap of stride s = 2^(block−1) with an (h, w) map covers the image's first
    h·s rows and w·s columns (the poolings drop odd remainders); the map is
    upsampled onto exactly those and the rest repeats the edge.
    """
    if tap not in acts:
        raise UnknownLayerError(f"layer {tap!r} is not an output; taps are {', '.join(acts)}")
    channels = acts[tap].shape[0]
    if len(filters) not in (1, 2) or not all(0 <= f < channels for f in filters):
        raise ValueError(f"filters {tuple(filters)} are not one or two of {tap}'s {channels}")
    values = acts[tap][filters[0]]
    if len(filters) == 2:
        values = values * acts[tap][filters[1]]
    stride = 2 ** (tap_block(tap) - 1)
    covered = (min(values.shape[0] * stride, shape[0]), min(values.shape[1] * stride, shape[1]))
    out = upsample(values, covered)
    pad = ((0, shape[0] - covered[0]), (0, shape[1] - covered[1]))
    return np.pad(out, pad, mode="edge") if any(p[1] for p in pad) else out


def filter_heatmap(image, layer: str, filters, source=None) -> HeatMap:
    """The activation map of one filter (or a Gram pair) of ``layer`` over one image."""
    filters = (filters,) if isinstance(filters, (int, np.integer)) else tuple(filters)
    images = [image] if isinstance(image, np.ndarray) and image.ndim == 2 else image
    graph_source = source if source is not None else BackboneConfig(taps=layer)
    for image_id, seen, acts in activations(images, graph_source):
        heat = feature_map(acts, layer, filters, seen.shape)
        what = f"{layer} " + "×".join(f"#{f}" for f in filters)
        return HeatMap(image_id, seen, heat, what)
    raise ValueError("no image")


def weighted_map(acts: dict, ranked, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    """``(map, what)``: Σ_i w_i · m_i / max(m_i) / Σ_i w_i over ranked features with filters.

    ``ranked`` is :func:`microtex.interpret.importance.rank_features`'s list.
    """
    ranked = [r for r in ranked if r.source.filters]
    if not ranked:
        raise ValueError("no ranked feature with a filter to map")
    weights = np.array([r.importance for r in ranked], dtype=np.float64)
    total = np.zeros(shape, dtype=np.float64)
    for w, r in zip(weights, ranked):
        m = feature_map(acts, r.source.tap, r.source.filters, shape)
        peak = float(m.max())
        if peak > 0:
            total += w * m / peak
    what = "importance-weighted: " + ", ".join(r.source.name for r in ranked)
    return (total / weights.sum()).astype(np.float32), what


def classifier_heatmaps(
    classifier, images, ranked, *, on_error: str = "raise", failures: list | None = None
) -> Iterator[HeatMap]:
    """The importance-weighted map (:func:`weighted_map`) of a classifier's top features.

    Images are read, cropped and resized by the classifier's featurizer.
    """
    for image_id, seen, acts in activations(
        images, classifier.featurizer, on_error=on_error, failures=failures
    ):
        heat, what = weighted_map(acts, ranked, seen.shape)
        yield HeatMap(image_id, seen, heat, what)


def overlay(heat: HeatMap, path, *, alpha: float = 0.5, title: str | None = None) -> pathlib.Path:
    """Save the image and, beside it, the image overlaid with its heat map, as a PNG."""
    from microtex.report import heat_overlay

    return heat_overlay(
        heat.image,
        heat.heat,
        path,
        alpha=alpha,
        titles=(pathlib.Path(heat.id).name, title or heat.what),
    )
