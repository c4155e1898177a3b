"""VGG layer names, tap presets, channels and the forward plan.

Layer names are ``conv{block}_{i}`` (convolution output, before the ReLU) and
``relu{block}_{i}`` (after the ReLU); a 2×2 stride-2 pooling sits between
blocks, so block ``b`` sees the image at 1 / 2**(b - 1) of its size.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from microtex._validation import check_choice
from microtex.errors import UnknownLayerError

__all__ = [
    "ARCHITECTURES",
    "BLOCK_CHANNELS",
    "PRESETS",
    "PRESET_NAMES",
    "conv_shapes",
    "forward_plan",
    "layer_names",
    "min_image_side",
    "resolve_taps",
    "tap_block",
    "tap_channels",
]

#: Convolutions per block.
ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "vgg19": (2, 2, 4, 4, 4),
    "vgg16": (2, 2, 3, 3, 3),
}
#: Output channels of every convolution of a block (same for VGG16 and VGG19).
BLOCK_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)

PRESET_NAMES: tuple[str, ...] = ("block_first", "block_last", "all")

_TAP = re.compile(r"(?:conv|relu)([1-5])_[1-4]")


def check_arch(arch: str) -> tuple[int, ...]:
    """Convolutions per block of ``arch``; ValueError naming it if unknown."""
    check_choice("architecture", arch, sorted(ARCHITECTURES))
    return ARCHITECTURES[arch]


def _conv_names(arch: str) -> tuple[str, ...]:
    blocks = check_arch(arch)
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
    blocks = check_arch(arch)
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


def tap_block(tap: str) -> int:
    """The block (1 to 5) a layer belongs to.

    Raises
    ------
    UnknownLayerError
        ``tap`` is not named like ``relu3_1`` or ``conv3_1``.

    Examples
    --------
    >>> tap_block("relu3_1"), tap_block("conv5_4")
    (3, 5)
    """
    match = _TAP.fullmatch(tap) if isinstance(tap, str) else None
    if match is None:
        raise UnknownLayerError(f"unknown layer {tap!r}; layers are named like 'relu3_1'")
    return int(match.group(1))


def tap_channels(tap: str) -> int:
    """Number of channels of a layer, e.g. 256 for ``relu3_1``.

    Examples
    --------
    >>> tap_channels("relu3_1")
    256
    """
    return BLOCK_CHANNELS[tap_block(tap) - 1]


def min_image_side(tap: str) -> int:
    """The smallest image side at which ``tap`` still sees one position: 2**(block - 1).

    Examples
    --------
    >>> min_image_side("relu1_1"), min_image_side("relu5_1")
    (1, 16)
    """
    return 2 ** (tap_block(tap) - 1)


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


def conv_shapes(arch: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``conv{b}_{i}`` -> (weight shape, bias shape), in forward order.

    Examples
    --------
    >>> conv_shapes("vgg16")["conv2_1"]
    ((128, 64, 3, 3), (128,))
    """
    shapes = {}
    in_channels = 3
    for b, n in enumerate(check_arch(arch), 1):
        out_channels = BLOCK_CHANNELS[b - 1]
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}"] = ((out_channels, in_channels, 3, 3), (out_channels,))
            in_channels = out_channels
    return shapes


def forward_plan(arch: str, deepest: str) -> list[tuple[str, str]]:
    """Forward steps up to ``deepest``: ("conv", name), ("relu", name) and ("pool", "pool{b}").

    Examples
    --------
    >>> forward_plan("vgg19", "conv2_1")  # doctest: +NORMALIZE_WHITESPACE
    [('conv', 'conv1_1'), ('relu', 'relu1_1'), ('conv', 'conv1_2'), ('relu', 'relu1_2'),
     ('pool', 'pool1'), ('conv', 'conv2_1')]
    """
    steps: list[tuple[str, str]] = []
    for b, n in enumerate(check_arch(arch), 1):
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
