"""A texture featurization's configuration: checked once, stored in bundles, named in columns.

:class:`TexturePlan` is what :class:`~microtex.features.texture.TextureFeaturizer`'s
parameters mean once checked (:func:`make_plan`); :func:`feature_names` names the
columns, and :func:`bundle_document` / :func:`params_from_bundle` are the
featurizer's part of a bundle manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
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
    peak_bytes_per_pixel,
    tap_channels,
)
from microtex.engine.memory import format_bytes, machine_memory, memory_budget
from microtex.engine.session import DEVICES

__all__ = [
    "ENGINES",
    "FEATURIZER_PRECISIONS",
    "RAW_TAP",
    "TexturePlan",
    "bundle_document",
    "check_tiles",
    "feature_names",
    "make_plan",
    "params_from_bundle",
]

log = logging.getLogger("microtex.features")

RAW_TAP = "raw"
#: Where mean/max/Gram pooling runs: C++ kernels on the activations, or heads in the graph.
ENGINES: tuple[str, ...] = ("auto", "kernels", "graph")
#: A featurizer's arithmetic: the backbone's (fp32, fp16), or ``"int8"``, a float32
#: graph quantized to int8 on calibration images when the featurizer is fitted
#: (:mod:`microtex.engine.quantize`); the CPU's fast path, run with direct convolution.
FEATURIZER_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
INT8 = "int8"


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
    max_pixels: int | None = None  # per network input; None when no network runs
    quantized: bool = False  # precision="int8": the graph is calibrated when fitted
    float_layers: tuple[str, ...] = ()  # convolutions an int8 graph keeps in float32

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

    def peak_bytes(self, pixels: int) -> int:
        """Estimated peak memory of one network input of ``pixels`` (all images of a batch)."""
        if self.config is None:
            return 0
        return pixels * peak_bytes_per_pixel(self.config, self.conv_algorithm)

    def too_large(self, height: int, width: int) -> str | None:
        """Why one ``height`` x ``width`` image cannot go through the network, or None."""
        pixels = height * width
        if self.max_pixels is None or pixels <= self.max_pixels:
            return None
        return (
            f"image {height}x{width} ({pixels:,} pixels) is larger than max_pixels="
            f"{self.max_pixels:,} (the network would need about "
            f"{format_bytes(self.peak_bytes(pixels))}); pass image_size (--image-size) "
            "to resize it or tile (--tile) to cut it into patches, or raise max_pixels "
            "(--max-pixels)"
        )


def _check_float_layers(float_layers, quantized: bool, config, backbone) -> tuple[str, ...]:
    """``float_layers`` as a tuple of conv names the int8 network runs, checked."""
    from microtex.backbones.layers import layer_names

    if isinstance(float_layers, str):
        float_layers = [t.strip() for t in float_layers.split(",") if t.strip()]
    if not isinstance(float_layers, (list, tuple)):
        raise ValueError(f"float_layers must be conv layer names, got {float_layers!r}")
    names = tuple(dict.fromkeys(float_layers))
    if not names:
        return ()
    if not quantized:
        raise ValueError("float_layers keeps convolutions of an int8 network in float32; "
                         "it needs precision='int8'")  # fmt: skip
    if config is None:
        raise ValueError("float_layers names convolutions, but taps='raw' runs no network")
    layers = layer_names(backbone)
    run = layers[: layers.index(config.taps[-1]) + 1]
    for name in names:
        if not isinstance(name, str) or not name.startswith("conv") or name not in layers:
            raise ValueError(f"float_layers: {name!r} is not a convolution of {backbone}")
        if name not in run:
            raise ValueError(f"float_layers: {name!r} lies past the deepest tap "
                             f"{run[-1]!r}; the network does not run it")
    return tuple(sorted(names, key=layers.index))  # one order, one cached graph


def resolve_max_pixels(max_pixels, config: BackboneConfig | None, conv_algorithm: str):
    """``max_pixels`` as an int (None without a network); ``"auto"`` fits `memory_budget`."""
    if max_pixels == "auto":
        if config is None:
            return None
        per_pixel = peak_bytes_per_pixel(config, conv_algorithm)
        return max(1, memory_budget() // per_pixel)
    max_pixels = check_positive_int(
        "max_pixels", max_pixels, what="a positive number of pixels or 'auto'"
    )
    if config is not None:
        need = max_pixels * peak_bytes_per_pixel(config, conv_algorithm)
        if need > memory_budget():
            log.warning(
                "max_pixels=%s lets one network input take about %s, more than half of "
                "this machine's %s; a large image may run out of memory",
                f"{max_pixels:,}", format_bytes(need), format_bytes(machine_memory()),
            )
    return max_pixels


def _check_image_size(image_size, max_pixels: int | None):
    """``image_size`` checked (sides, and pixels against ``max_pixels``) before any work."""
    try:
        image_size = check_size(image_size)
    except ValueError as exc:
        raise ValueError(f"image_size: {exc}") from None
    if image_size is None:
        return None
    sides = (image_size, image_size) if isinstance(image_size, int) else image_size
    least = sides[0] * sides[1]  # an int sets the short side: no image is smaller
    if max_pixels is not None and least > max_pixels:
        raise ValueError(
            f"image_size={image_size!r} makes every image at least {least:,} pixels, more "
            f"than max_pixels={max_pixels:,}; use a smaller image_size (--image-size), tile "
            "the images (--tile), or raise max_pixels (--max-pixels)"
        )
    return image_size


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
    max_pixels="auto",
    float_layers=(),
) -> TexturePlan:
    """Check every option of a texture featurization; ValueError names the first bad one.

    ``max_pixels`` bounds the pixels of one network input (all images of a
    batch together): batches of large images are made smaller to fit, and an
    image larger on its own is reported, not run. ``"auto"`` fits the network's
    estimated peak memory (:func:`microtex.backbones.peak_bytes_per_pixel`) in
    half of the machine's memory (:func:`microtex.engine.memory.memory_budget`).
    ``float_layers`` (``precision="int8"`` only) names convolutions kept in float32.
    """
    pools = check_choices("pool", pool, POOLS)
    check_choice("gram_normalization", gram_normalization, GRAM_NORMALIZATIONS)
    check_choice("gram_layout", gram_layout, GRAM_LAYOUTS)
    check_choice("engine", engine, ENGINES)
    if engine == "graph" and not set(pools) <= set(GRAPH_POOLS):
        raise ValueError(
            "engine='graph' cannot compute VLAD (fitted state); use engine='kernels' or 'auto'"
        )
    check_choice("device", device, DEVICES)
    check_choice("precision", precision, FEATURIZER_PRECISIONS)
    quantized = precision == INT8
    if quantized:
        if device == "cuda":
            raise ValueError(
                "precision='int8' runs on the CPU (ONNX Runtime's int8 kernels); on CUDA use "
                "precision='fp16'"
            )
        if conv_algorithm == "winograd":
            raise ValueError("precision='int8' quantizes direct convolutions; not 'winograd'")
        device, conv_algorithm, precision = "cpu", "direct", "fp32"
        if engine == "graph":
            raise ValueError(
                "precision='int8' pools in the kernels; use engine='kernels' or 'auto'"
            )
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
    max_pixels = resolve_max_pixels(max_pixels, config, conv_algorithm)
    float_layers = _check_float_layers(float_layers, quantized, config, backbone)
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
        image_size=_check_image_size(image_size, max_pixels),
        crop_bottom=check_crop_bottom(crop_bottom),
        batch_size=check_positive_int("batch_size", batch_size),
        device=device,
        engine=engine,
        conv_algorithm=conv_algorithm,
        n_threads=check_positive_int("n_threads", n_threads, allow_none=True),
        max_pixels=max_pixels,
        quantized=quantized and config is not None,
        float_layers=float_layers,
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
    if plan.max_pixels is not None and size * size > plan.max_pixels:
        raise ValueError(
            f"tile={size} makes {size * size:,} pixels per patch, more than max_pixels="
            f"{plan.max_pixels:,}; use a smaller tile or raise max_pixels (--max-pixels)"
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
    for key in ("taps", "pool", "image_size", "float_layers"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    # the bundle's graph runs as saved; the kernels pool it (equal to the graph's heads)
    params["engine"] = "kernels"
    return params
