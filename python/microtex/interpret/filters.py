"""Filter textures: what one VGG filter (or a pair of filters) responds to.

Activation maximization: starting from seeded noise, gradient ascent on the
input image raises the filter's mean activation over the image. Left alone,
the ascent finds high-frequency patterns no person can read; three standard
regularizers make the texture readable:

* **frequency-space parametrization** (``"fourier"``, the default): the
  image is the sigmoid of an inverse FFT of a spectrum whose coefficients are
  scaled by 1/|f|, so every frequency moves at a comparable rate and the
  ascent does not favour pixel-level noise (``"pixel"`` optimizes the pixels'
  logits directly and blurs them every few steps instead);
* **jitter**: the image is shifted circularly by a random offset of up to
  ``jitter`` pixels before each step, so a pattern must work at every
  position;
* **decay**: an L2 penalty on the parameters (Adam's weight decay) pulls
  what the filter does not need back to mid-gray.

The objective of a single filter ``f`` of layer ``conv{b}_{i}`` or
``relu{b}_{i}`` is the mean over positions of the convolution's output
channel ``f`` *before* the ReLU (after it, every position the ReLU zeroes
passes no gradient); the activation reported is the tap's own (after the ReLU
for a ``relu`` layer). A Gram entry couples two filters ``(a, b)``: its
objective is mean(softplus(F_a)·softplus(F_b)), a smooth stand-in for the
reported mean(relu(F_a)·relu(F_b)) = G_ab / M. A VLAD entry (word, filter) is drawn
as its filter's texture. Textures are gray, as the
backbone sees micrographs (one channel replicated to three).

Rendered textures are cached in ``<cache>/textures/`` under a hash of the
backbone's weights and configuration, the filter, every setting and this
module's code, so a report does not recompute them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from microtex._validation import (
    check_choice,
    check_non_negative_int,
    check_positive_int,
    check_real,
)
from microtex.backbones.config import BackboneConfig
from microtex.backbones.layers import layer_names, min_image_side, tap_channels
from microtex.errors import UnknownLayerError

__all__ = [
    "PARAMETRIZATIONS",
    "FilterTexture",
    "TextureSettings",
    "filter_texture",
    "filter_textures",
    "layer_grid",
    "texture_grid",
    "top_filters",
]

PARAMETRIZATIONS = ("fourier", "pixel")
_CACHE_SUBDIRECTORY = "textures"
# Gaussian blur of the pixel parametrization: sigma 0.5 px every 4 steps
_BLUR_EVERY, _BLUR_SIGMA = 4, 0.5


@dataclasses.dataclass(frozen=True)
class TextureSettings:
    """How a filter texture is rendered.

    Parameters
    ----------
    size : int
        Side of the square texture in pixels. The deepest layers need room for
        their receptive field (relu5_1 sees about 200 px); 128 is enough for
        a readable texture at every layer.
    steps : int
        Adam steps.
    learning_rate : float
        Adam's step size on the (spectrum or pixel) parameters.
    jitter : int
        Largest circular shift in pixels before each step (0: none).
    decay : float
        Adam's weight decay on the parameters (0: none).
    parametrization : {"fourier", "pixel"}
    seed : int
        Seeds the starting noise and the jitter.
    """

    size: int = 128
    steps: int = 192
    learning_rate: float = 0.05
    jitter: int = 4
    decay: float = 1e-3
    parametrization: str = "fourier"
    seed: int = 0

    def __post_init__(self):
        # stored as plain int/float/str: the cache key is their JSON
        checked = {
            "size": check_positive_int("size", self.size),
            "steps": check_positive_int("steps", self.steps),
            "learning_rate": float(
                check_real("learning_rate", self.learning_rate, minimum=0, inclusive=False)
            ),
            "jitter": check_non_negative_int("jitter", self.jitter),
            "decay": float(check_real("decay", self.decay, minimum=0)),
            "parametrization": check_choice(
                "parametrization", self.parametrization, PARAMETRIZATIONS
            ),
            "seed": check_non_negative_int("seed", self.seed),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FilterTexture:
    """A rendered filter texture.

    Attributes
    ----------
    layer : str
        The layer as asked (``relu3_1`` or ``conv3_1``).
    filters : tuple of int
        One filter, or two for a Gram entry.
    image : ndarray, shape (size, size)
        float32 in [0, 1].
    noise : ndarray, shape (size, size)
        The starting image the ascent began from.
    start, final : float
        The reported activation (mean of the tap's channel, or of the two
        channels' product) on the starting noise and on the texture.
    settings : TextureSettings
    """

    layer: str
    filters: tuple[int, ...]
    image: np.ndarray
    noise: np.ndarray
    start: float
    final: float
    settings: TextureSettings

    @property
    def gain(self) -> float:
        """``final / start`` (inf when the noise did not excite the filter: mean <= 0)."""
        return self.final / self.start if self.start > 0 else math.inf

    @property
    def label(self) -> str:
        """``"relu3_1 #12"`` or ``"relu3_1 #12×#40"``."""
        return f"{self.layer} " + "×".join(f"#{f}" for f in self.filters)


def _check_layer(config: BackboneConfig, layer: str) -> str:
    names = layer_names(config.arch)
    if layer not in names:
        raise UnknownLayerError(
            f"unknown layer {layer!r} for {config.arch}; layers are {', '.join(names)}"
        )
    return layer


def _check_filters(layer: str, filters) -> tuple[int, ...]:
    if isinstance(filters, (int, np.integer)):
        filters = (filters,)
    filters = tuple(filters)
    if len(filters) not in (1, 2):
        raise ValueError(f"filters must be one filter or a pair, got {filters!r}")
    channels = tap_channels(layer)
    for f in filters:
        if not isinstance(f, (int, np.integer)) or isinstance(f, bool) or not 0 <= f < channels:
            raise ValueError(
                f"filter {f!r} is not one of {layer}'s {channels} filters (0..{channels - 1})"
            )
    return tuple(int(f) for f in filters)


def _conv_layer(layer: str) -> str:
    return "conv" + layer[4:] if layer.startswith("relu") else layer


def _gradient_config(config: BackboneConfig, layer: str) -> BackboneConfig:
    """The backbone of ``config`` ending at the convolution of ``layer``, raw output."""
    return BackboneConfig(
        arch=config.arch,
        weights=config.weights,
        taps=(_conv_layer(layer),),
        block_pooling=config.block_pooling,
    )


class _Parametrization:
    """Parameters -> image (1, 1, h, w) in (0, 1), and its starting noise."""

    def __init__(self, torch, settings: TextureSettings, generator):
        self.torch, self.settings = torch, settings
        size = settings.size
        if settings.parametrization == "fourier":
            fy = torch.fft.fftfreq(size)[:, None]
            fx = torch.fft.rfftfreq(size)[None, :]
            frequency = torch.sqrt(fx * fx + fy * fy)
            # 1/|f| (capped at the lowest frequency): equal change per octave
            self.scale = 1.0 / torch.clamp(frequency, min=1.0 / size)
            shape = (2, size, size // 2 + 1)
        else:
            shape = (size, size)
        self.parameters = (torch.randn(shape, generator=generator) * 0.01).requires_grad_(True)

    def image(self):
        torch = self.torch
        p = self.parameters
        if self.settings.parametrization == "fourier":
            spectrum = torch.complex(p[0], p[1]) * self.scale
            size = self.settings.size
            logits = torch.fft.irfft2(spectrum, s=(size, size), norm="ortho")
        else:
            logits = p * 25.0  # the same start as the fourier path: std about 0.25 in logits
        return torch.sigmoid(logits)[None, None]

    def regularize(self, step: int) -> None:
        if self.settings.parametrization == "pixel" and step % _BLUR_EVERY == _BLUR_EVERY - 1:
            from scipy.ndimage import gaussian_filter

            with self.torch.no_grad():
                blurred = gaussian_filter(self.parameters.numpy(), _BLUR_SIGMA, mode="wrap")
                self.parameters.copy_(self.torch.from_numpy(blurred))


def _reported(torch, conv_out, layer: str, filters: tuple[int, ...]):
    """The tap's activation measure: mean of the channel, or of the channels' product."""
    acts = torch.relu(conv_out) if layer.startswith("relu") else conv_out
    if len(filters) == 1:
        return acts[:, filters[0]].mean()
    return (acts[:, filters[0]] * acts[:, filters[1]]).mean()


def _objective(torch, conv_out, filters: tuple[int, ...]):
    if len(filters) == 1:
        return conv_out[:, filters[0]].mean()
    soft = torch.nn.functional.softplus
    return (soft(conv_out[:, filters[0]]) * soft(conv_out[:, filters[1]])).mean()


def _render(
    config: BackboneConfig, layer: str, filters: tuple[int, ...], settings: TextureSettings
) -> dict[str, np.ndarray]:
    """``{"image", "noise", "start", "final"}`` of one activation maximization."""
    from microtex.engine.export import require_torch
    from microtex.interpret._torch import tap_module

    torch = require_torch("filter textures")
    module = tap_module(_gradient_config(config, layer))
    generator = torch.Generator().manual_seed(settings.seed)
    param = _Parametrization(torch, settings, generator)
    rng = np.random.default_rng(settings.seed)
    optimizer = torch.optim.Adam(
        [param.parameters], lr=settings.learning_rate, weight_decay=settings.decay
    )
    with torch.no_grad():
        noise = param.image()
        start = float(_reported(torch, module(noise)[0], layer, filters))
    for step in range(settings.steps):
        optimizer.zero_grad()
        image = param.image()
        if settings.jitter:
            dy, dx = (int(v) for v in rng.integers(-settings.jitter, settings.jitter + 1, 2))
            image = torch.roll(image, shifts=(dy, dx), dims=(2, 3))
        loss = -_objective(torch, module(image)[0], filters)
        loss.backward()
        optimizer.step()
        param.regularize(step)
    with torch.no_grad():
        image = param.image()
        final = float(_reported(torch, module(image)[0], layer, filters))
    return {
        "image": image[0, 0].numpy().astype(np.float32),
        "noise": noise[0, 0].numpy().astype(np.float32),
        "start": np.float64(start),
        "final": np.float64(final),
    }


def _texture(layer, filters, arrays, settings) -> FilterTexture:
    return FilterTexture(
        layer,
        filters,
        arrays["image"],
        arrays["noise"],
        float(arrays["start"]),
        float(arrays["final"]),
        settings,
    )


@functools.cache
def _code_fingerprint() -> str:
    from microtex.backbones import config, layers, vgg, weights
    from microtex.engine import cache
    from microtex.interpret import _torch

    modules = (vgg, config, layers, weights, _torch)
    return cache.code_fingerprint([__file__, *(module.__file__ for module in modules)])


def filter_texture(
    layer: str,
    filters,
    *,
    config: BackboneConfig | None = None,
    settings: TextureSettings | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> FilterTexture:
    """Render the texture of one filter (or of a Gram entry's pair) by activation maximization.

    Parameters
    ----------
    layer : str
        ``relu{b}_{i}`` or ``conv{b}_{i}`` of the backbone.
    filters : int or pair of int
        A filter of ``layer``, or two for the Gram entry ``G_ab``.
    config : BackboneConfig, optional
        The backbone (architecture, weights, pooling between blocks); its taps
        do not matter. Default: the normalized VGG19 with max pooling, as
        trained and as microtex featurizes by default.
    settings : TextureSettings, optional
    cache : bool
        Reuse (and store) the texture in ``<cache>/textures/``.
    cache_dir : path-like, optional
        The cache directory (see :func:`microtex.engine.cache.cached_path`).

    Returns
    -------
    FilterTexture
    """
    config = BackboneConfig() if config is None else config
    settings = TextureSettings() if settings is None else settings
    layer = _check_layer(config, layer)
    filters = _check_filters(layer, filters)
    if settings.size < min_image_side(layer):
        raise ValueError(
            f"size {settings.size} is smaller than {min_image_side(layer)} pixels, "
            f"the least that layer {layer} needs"
        )
    if not cache:
        return _texture(layer, filters, _render(config, layer, filters, settings), settings)

    from microtex import bundle
    from microtex.backbones.weights import weights_digest
    from microtex.engine import cache as _cache

    key = {
        "kind": "filter_texture",
        "backbone": _gradient_config(config, layer).to_dict(),
        "weights_sha256": weights_digest(config),
        "layer": layer,
        "filters": list(filters),
        "settings": settings.to_dict(),
        "code_sha256": _code_fingerprint(),
    }

    def produce(path: pathlib.Path) -> None:
        bundle.save_npz(path, _render(config, layer, filters, settings))

    name = f"{config.arch}-{layer}-" + "-".join(map(str, filters))
    path = _cache.cached_path(
        key,
        name,
        produce,
        cache_dir=cache_dir,
        suffix=".npz",
        subdirectory=_CACHE_SUBDIRECTORY,
        what=f"texture of {layer} filter(s) {filters}",
    )
    return _texture(layer, filters, bundle.load_npz(path), settings)


def filter_textures(layer: str, filters: Sequence, **options) -> list[FilterTexture]:
    """:func:`filter_texture` for each entry of ``filters`` (ints or pairs)."""
    return [filter_texture(layer, f, **options) for f in filters]


def top_filters(activations, k: int = 8) -> np.ndarray:
    """The ``k`` filters with the highest mean activation over a set of images.

    Parameters
    ----------
    activations : array, shape (n_images, n_filters)
        Mean-pooled activations of one tap (``"{tap}/mean/*"`` columns of
        :func:`microtex.featurize`).
    k : int

    Returns
    -------
    ndarray of int, shape (min(k, n_filters),)
        Filter indices, most active first (ties by index).
    """
    acts = np.asarray(activations, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ValueError(f"activations must be (n_images, n_filters), got shape {acts.shape}")
    if not np.all(np.isfinite(acts)):
        raise ValueError("activations contain NaN or infinity")
    k = check_positive_int("k", k)
    order = np.lexsort((np.arange(acts.shape[1]), -acts.mean(axis=0)))
    return order[:k]


def layer_grid(
    layer: str,
    path,
    *,
    filters: Sequence | None = None,
    images=None,
    k: int = 8,
    config: BackboneConfig | None = None,
    settings: TextureSettings | None = None,
    columns: int = 4,
) -> tuple[pathlib.Path, list[FilterTexture]]:
    """Render a layer's chosen filters, or its ``k`` most active on ``images``, as one PNG.

    Parameters
    ----------
    layer : str
    path : path-like
        The PNG to write.
    filters : sequence of int or pairs, optional
        The filters to draw; else the ``k`` filters with the highest mean
        activation over ``images`` (:func:`top_filters`, activations from the
        exported ONNX graph of ``config``).
    images : paths or arrays, optional
    k : int
    config, settings
        As for :func:`filter_texture` (textures are cached).
    columns : int

    Returns
    -------
    (pathlib.Path, list of FilterTexture)
    """
    config = BackboneConfig() if config is None else config
    layer = _check_layer(config, layer)
    if filters is None:
        if images is None:
            raise ValueError("give filters, or images to pick the layer's most active filters")
        from microtex.interpret.heatmap import mean_activations

        tap_config = BackboneConfig(
            arch=config.arch, weights=config.weights, taps=layer, block_pooling=config.block_pooling
        )
        _, acts = mean_activations(images, layer, tap_config)
        filters = [int(f) for f in top_filters(acts, k)]
    textures = filter_textures(layer, filters, config=config, settings=settings)
    return texture_grid(textures, path, columns=columns), textures


def texture_grid(
    textures: Sequence[FilterTexture],
    path,
    *,
    titles: Sequence[str] | None = None,
    columns: int = 4,
) -> pathlib.Path:
    """Save textures side by side as a PNG with a title under each (default: layer and filters)."""
    from microtex.report import montage

    if not textures:
        raise ValueError("no textures to draw")
    titles = [t.label for t in textures] if titles is None else list(titles)
    if len(titles) != len(textures):
        raise ValueError(f"{len(titles)} titles for {len(textures)} textures")
    return montage([t.image for t in textures], titles, path, columns=columns)
