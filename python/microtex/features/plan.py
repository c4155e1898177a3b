"""A texture featurization's configuration: checked once, stored in bundles, named in columns.

:class:`TexturePlan` is what :class:`~microtex.features.texture.TextureFeaturizer`'s
parameters mean once checked (:func:`make_plan`); :func:`feature_names` names the
columns, and :func:`bundle_document` / :func:`params_from_bundle` are the
featurizer's part of a bundle manifest.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from microtex._pools import GRAM_LAYOUTS, GRAM_NORMALIZATIONS, GRAPH_POOLS, POOLS, n_pooled_features
from microtex._validation import (
    check_choice,
    check_choices,
    check_crop_bottom,
    check_positive_int,
    check_size,
)
from microtex.backbones import (
    BackboneConfig,
    check_conv_algorithm,
    check_trunk_options,
    min_image_side,
    tap_channels,
)
from microtex.engine.session import DEVICES

__all__ = [
    "ENGINES",
    "RAW_TAP",
    "TexturePlan",
    "bundle_document",
    "check_tiles",
    "feature_names",
    "make_plan",
    "params_from_bundle",
]

RAW_TAP = "raw"
#: Where mean/max/Gram pooling runs: C++ kernels on the activations, or heads in the graph.
ENGINES: tuple[str, ...] = ("auto", "kernels", "graph")


@dataclasses.dataclass(frozen=True)
class TexturePlan:
    """A checked texture-featurization configuration (see :func:`make_plan`)."""

    taps: tuple[str, ...]  # "raw" first, then CNN taps in forward order
    pools: tuple[str, ...]
    config: BackboneConfig | None  # None when only "raw" is tapped
    gram_normalization: str = "spatial"
    gram_layout: str = "triu"
    n_words: int = 32
    vlad_max_vectors: int = 100_000
    intra_normalize: bool = True
    signed_sqrt: bool = True
    l2_normalize: bool = True
    image_size: Any = None
    crop_bottom: Any = None
    batch_size: int = 8
    device: str = "auto"
    engine: str = "auto"
    conv_algorithm: str = "auto"
    n_threads: int | None = None

    @property
    def raw(self) -> bool:
        return RAW_TAP in self.taps

    @property
    def cnn_taps(self) -> tuple[str, ...]:
        return self.config.taps if self.config is not None else ()

    @property
    def min_side(self) -> int:
        """Smallest image side the deepest tap still sees one position of."""
        return min_image_side(self.cnn_taps[-1]) if self.cnn_taps else 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.taps, self.pools, self.gram_layout, self.n_words)


def make_plan(
    *,
    backbone: str = "vgg19",
    weights=None,
    taps="block_first",
    pool=("mean", "gram"),
    block_pooling: str = "max",
    precision: str = "fp32",
    conv_algorithm: str = "auto",
    gram_normalization: str = "spatial",
    gram_layout: str = "triu",
    n_words: int = 32,
    vlad_max_vectors: int = 100_000,
    intra_normalize: bool = True,
    signed_sqrt: bool = True,
    l2_normalize: bool = True,
    image_size=None,
    crop_bottom=None,
    batch_size: int = 8,
    device: str = "auto",
    engine: str = "auto",
    n_threads: int | None = None,
) -> TexturePlan:
    """Check every option of a texture featurization; ValueError names the first bad one."""
    pools = check_choices("pool", pool, POOLS)
    check_choice("gram_normalization", gram_normalization, GRAM_NORMALIZATIONS)
    check_choice("gram_layout", gram_layout, GRAM_LAYOUTS)
    check_choice("engine", engine, ENGINES)
    if engine == "graph" and not set(pools) <= set(GRAPH_POOLS):
        raise ValueError(
            "engine='graph' cannot compute VLAD (fitted state); use engine='kernels' or 'auto'"
        )
    check_choice("device", device, DEVICES)
    # checked for raw-only plans too, so that they refuse what a CNN plan refuses
    check_trunk_options(block_pooling, precision)
    check_conv_algorithm(conv_algorithm, precision, allow_auto=True)
    items = [t.strip() for t in taps.split(",")] if isinstance(taps, str) else list(taps)
    items = [t for t in items if t != ""]
    cnn = [t for t in items if t != RAW_TAP]
    if not items:
        raise ValueError("taps must name at least one layer (or 'raw')")
    config = None
    if cnn:
        config = BackboneConfig(
            arch=backbone,
            weights=weights,
            taps=cnn,
            block_pooling=block_pooling,
            precision=precision,
        )
    return TexturePlan(
        taps=((RAW_TAP,) if RAW_TAP in items else ()) + (config.taps if config else ()),
        pools=pools,
        config=config,
        gram_normalization=gram_normalization,
        gram_layout=gram_layout,
        n_words=check_positive_int("n_words", n_words),
        vlad_max_vectors=check_positive_int("vlad_max_vectors", vlad_max_vectors),
        intra_normalize=bool(intra_normalize),
        signed_sqrt=bool(signed_sqrt),
        l2_normalize=bool(l2_normalize),
        image_size=check_size(image_size),
        crop_bottom=check_crop_bottom(crop_bottom),
        batch_size=check_positive_int("batch_size", batch_size),
        device=device,
        engine=engine,
        conv_algorithm=conv_algorithm,
        n_threads=check_positive_int("n_threads", n_threads, allow_none=True),
    )


@functools.lru_cache(maxsize=16)
def feature_names(taps: tuple, pools: tuple, gram_layout: str, n_words: int) -> tuple[str, ...]:
    """Column names ``"{tap}/{pool}/{index}"`` (cached: hundreds of thousands of strings)."""
    names = []
    for tap in taps:
        channels = 1 if tap == RAW_TAP else tap_channels(tap)
        for pool in pools:
            n = n_pooled_features(pool, channels, layout=gram_layout, n_words=n_words)
            names.extend(f"{tap}/{pool}/{i}" for i in range(n))
    return tuple(names)


def check_tiles(tile, tile_stride, plan: TexturePlan) -> tuple[int, int] | None:
    """``(size, stride)`` of the patches to cut, checked against ``plan``, or None."""
    if tile is None:
        if tile_stride is not None:
            raise ValueError(f"tile_stride={tile_stride!r} given without tile")
        return None
    what = "a positive number of pixels"
    size = check_positive_int("tile", tile, what=what)
    stride = (
        size if tile_stride is None else check_positive_int("tile_stride", tile_stride, what=what)
    )
    if size < plan.min_side:
        raise ValueError(
            f"tile={size} is smaller than {plan.min_side} pixels, the least that layer "
            f"{plan.cnn_taps[-1]} needs"
        )
    return size, stride


def bundle_document(params: dict[str, Any], plan: TexturePlan, conv_algorithm: str | None) -> dict:
    """The manifest ``config`` of a texture-featurizer bundle (JSON-able).

    ``params`` are the fitted featurizer's (``params_``: the deprecated
    ``pooling`` already resolved into ``block_pooling``).
    """
    params = {
        key: list(value) if isinstance(value, tuple) else value for key, value in params.items()
    }
    params["weights"] = None if params["weights"] is None else str(params["weights"])
    return {
        "params": params,
        "backbone": None if plan.config is None else plan.config.to_dict(),
        "conv_algorithm": conv_algorithm,  # of backbone.onnx, which the bundle runs as is
        "taps": list(plan.taps),
        "pools": list(plan.pools),
        "preprocessing": {
            "image_size": plan.image_size,
            "crop_bottom": plan.crop_bottom,
            "input": "grayscale float32 in [0, 1], (n, 1, h, w)",
        },
        "n_features": len(plan.feature_names),
    }


def params_from_bundle(document: dict) -> dict[str, Any]:
    """The featurizer parameters a bundle's :func:`bundle_document` holds."""
    params = dict(document["params"])
    if "pooling" in params:  # bundles written before block_pooling
        params["block_pooling"] = params.pop("pooling")
    for key in ("taps", "pool", "image_size"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    # the bundle's graph runs as saved; the kernels pool it (equal to the graph's heads)
    params["engine"] = "kernels"
    return params
