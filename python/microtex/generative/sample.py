"""Sampling a ``generator`` bundle: index maps from the PixelCNN prior, images from the decoder.

A :class:`Generator` is what ``microtex.load_bundle`` returns for a bundle
:func:`microtex.generative.export.save_generator` wrote. It runs on ONNX
Runtime alone (no PyTorch): the PixelCNN fills an index map position by
position in raster order, each index drawn from the softmax of the logits at
that position divided by the temperature, and the VQ-VAE decoder turns the
maps into images.

Random numbers are counter-based, so a sample depends on the seed and its
own number only, never on the batch it was drawn in or on the sampler: the
uniform for sample ``s`` at position ``p`` (raster index ``i * w + j``) is

    u = (mix(mix(mix(seed) + s) + p) >> 11) * 2**-53

with ``mix`` SplitMix64's finalizer (add 0x9E3779B97F4A7C15, then xor-shift
30 / multiply 0xBF58476D1CE4E5B9, xor-shift 27 / multiply 0x94D049BB133111EB,
xor-shift 31; all modulo 2**64), and the index is the first ``k`` whose
cumulative probability (float64) exceeds ``u`` times the total. Temperature
0 takes the most probable index.

Two samplers draw the same maps from the same numbers: ``"cached"`` (the
default) runs the C++ kernel ``microtex._kernels.PixelCNNSampler`` on the
bundle's PixelCNN weights, computing at each position only what that
position adds (csrc/include/microtex/sampler.hpp); ``"naive"`` is the
reference, one full ONNX Runtime forward pass of the PixelCNN per position
(``h * w`` passes per batch). Their logits agree to float32 rounding (about
1e-6), so their maps are identical except where a uniform falls within that
rounding of a boundary of the cumulative distribution.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from microtex import bundle
from microtex._validation import check_choice, check_positive_int, check_real
from microtex.engine.session import check_threads
from microtex.errors import BundleError

__all__ = [
    "SAMPLERS",
    "Generator",
    "categorical",
    "load_generator",
    "sample_uniforms",
]

#: ``sampler=`` choices of :meth:`Generator.sample_indices`.
SAMPLERS: tuple[str, ...] = ("cached", "naive")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's step on uint64 arrays (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def _check_seed(seed) -> int:
    """A seed of the counters: an integer in [0, 2**64)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def sample_uniforms(seed: int, samples, position: int) -> np.ndarray:
    """The uniforms in [0, 1) of ``samples`` (sample numbers) at raster ``position``.

    Examples
    --------
    >>> u = sample_uniforms(0, [0, 1, 2], 5)
    >>> u.shape, bool(((u >= 0) & (u < 1)).all()), bool(u[0] != u[1])
    ((3,), True, True)
    >>> float(sample_uniforms(0, [1], 5)[0]) == float(u[1])   # the batch does not matter
    True
    """
    key = _mix(np.array([_check_seed(seed)], dtype=np.uint64))
    ids = np.asarray(samples, dtype=np.uint64).reshape(-1)
    z = _mix(_mix(key + ids) + np.uint64(position))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def categorical(logits, uniforms, temperature: float = 1.0) -> np.ndarray:
    """Indices drawn from ``softmax(logits / temperature)`` by inverse CDF at ``uniforms``.

    ``logits`` is ``(n, K)``, ``uniforms`` ``(n,)`` in [0, 1); temperature 0
    is the argmax. Computed in float64.

    Examples
    --------
    >>> categorical(np.log([[0.2, 0.5, 0.3]]), [0.69])   # cumulative 0.2, 0.7, 1.0
    array([1])
    >>> categorical([[0.0, 3.0, 1.0]], [0.99], temperature=0)
    array([1])
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return np.argmax(logits, axis=1)
    scaled = logits / temperature
    weights = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1)
    target = np.asarray(uniforms, dtype=np.float64) * cdf[:, -1]
    index = (cdf <= target[:, None]).sum(axis=1)
    return np.minimum(index, logits.shape[1] - 1)


@dataclasses.dataclass(frozen=True)
class _Condition:
    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray


class Generator:
    """A trained VQ-VAE + PixelCNN, sampled and decoded by ONNX Runtime.

    Made by :func:`load_generator` or ``microtex.load_bundle`` from a
    ``generator`` bundle.

    Attributes
    ----------
    condition_names : tuple of str
    condition_range : numpy.ndarray
        ``(n_conditions, 2)``: the lowest and highest value of each condition
        in training; sampling outside it warns (extrapolation).
    latent_size, n_codes, image_size : int
    training : dict
        What the bundle says about its training.
    """

    def __init__(self, opened, *, device: str = "auto", n_threads: int | None = None):
        from microtex.engine.metadata import parse_session_metadata
        from microtex.engine.session import shared_session

        where = f"bundle {str(opened.path)!r}"
        config = opened.config
        try:
            self._vqvae = dict(config["vqvae"])
            self._pixelcnn = dict(config["pixelcnn"])
            names = tuple(str(n) for n in config["conditions"]["names"])
            bounds = np.asarray(config["conditions"]["range"], dtype=np.float64)
            self.latent_size = int(self._pixelcnn["latent_size"])
            self.n_codes = int(self._pixelcnn["n_codes"])
            self.image_size = int(self._vqvae["image_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} has an incomplete generator manifest: {exc!r}") from None
        if bounds.shape != (len(names), 2) or len(names) != self._pixelcnn.get("n_conditions"):
            raise BundleError(f"{where}: {len(names)} condition names, range of shape "
                              f"{bounds.shape}, PixelCNN n_conditions "
                              f"{self._pixelcnn.get('n_conditions')}")  # fmt: skip
        self._condition = _Condition(names, bounds[:, 0], bounds[:, 1])
        self.training = dict(config.get("training") or {})
        self._weights_path = opened.file("pixelcnn.npz")
        self._cached = None
        self.n_threads = n_threads
        self._sessions = {}
        for name in ("encoder", "decoder", "pixelcnn"):
            try:
                session = shared_session(opened.file(f"{name}.onnx"), device=device,
                                         n_threads=n_threads)  # fmt: skip
            except BundleError:
                raise
            except Exception as exc:  # noqa: BLE001  (ONNX Runtime's own exception types)
                raise BundleError(f"{where}: cannot open {name}.onnx: {exc}") from None
            self._sessions[name] = session
        document = parse_session_metadata(self._sessions["pixelcnn"])
        if document.get("config") != self._pixelcnn:
            raise BundleError(f"{where}: pixelcnn.onnx was exported from another configuration "
                              "than the manifest's")  # fmt: skip

    @classmethod
    def from_bundle(cls, opened) -> Generator:
        return cls(opened)

    @property
    def condition_names(self) -> tuple[str, ...]:
        return self._condition.names

    @property
    def condition_range(self) -> np.ndarray:
        return np.stack([self._condition.low, self._condition.high], axis=1)

    def check_conditions(self, condition, n: int) -> np.ndarray:
        """``(n, n_conditions)`` float32 conditions from one condition (or one per sample).

        ``condition`` is a number (one condition), a sequence of
        ``n_conditions`` numbers, or an ``(n, n_conditions)`` array. NaN,
        infinity or a wrong length is an error naming the value; a value
        outside the training range warns: the model extrapolates there.
        """
        n = check_positive_int("n", n)
        k = len(self._condition.names)
        values = np.asarray(condition, dtype=np.float64) if not isinstance(condition, str) else None
        if values is None or values.dtype == object:
            raise ValueError(f"condition must be numbers, got {condition!r}")
        if values.ndim == 0:
            values = values.reshape(1)
        if values.ndim == 1:
            if values.shape[0] != k:
                names = list(self._condition.names)
                raise ValueError(f"condition {values.tolist()} has {values.shape[0]} value(s); "
                                 f"this generator takes {k}: {names}")  # fmt: skip
            values = np.broadcast_to(values, (n, k))
        if values.shape != (n, k):
            raise ValueError(f"conditions must be ({n}, {k}), got shape {values.shape}")
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"condition {self._condition.names[col]!r} is {values[row, col]} "
                             f"(sample {row}): conditions must be finite numbers")  # fmt: skip
        for col, name in enumerate(self._condition.names):
            low, high = self._condition.low[col], self._condition.high[col]
            # conditions travel as float32: a training value read back is not "outside"
            slack = 1e-6 * max(1.0, abs(low), abs(high))
            column = values[:, col]
            outside = column[(column < low - slack) | (column > high + slack)]
            if outside.size:
                warnings.warn(f"condition {name!r} = {outside[0]:g} is outside the training "
                              f"range [{low:g}, {high:g}]: the generator extrapolates",
                              UserWarning, stacklevel=3)  # fmt: skip
        return np.ascontiguousarray(values, dtype=np.float32)

    def _cached_sampler(self):
        """The C++ sampler over the bundle's PixelCNN weights (built once)."""
        if self._cached is None:
            from microtex.features.pooling import kernels
            from microtex.generative.export import load_pixelcnn_weights, pixelcnn_tensor_shapes

            config, weights = load_pixelcnn_weights(self._weights_path)
            if config != self._pixelcnn:
                raise BundleError(f"{str(self._weights_path)!r} holds another configuration "
                                  "than the bundle's manifest")  # fmt: skip
            sizes = [int(config[key]) for key in (
                "n_codes", "embedding_dim", "hidden_channels", "n_layers", "first_kernel_size",
                "kernel_size", "head_channels", "n_conditions", "latent_size")]  # fmt: skip
            tensors = [weights[name] for name in pixelcnn_tensor_shapes(config)]
            self._cached = kernels().PixelCNNSampler(sizes, tensors)
        return self._cached

    def logits(self, indices, condition, *, sampler: str = "cached") -> np.ndarray:
        """Logits ``(n, n_codes, latent, latent)`` of given index maps (teacher forcing).

        Position ``(i, j)`` from the positions before it, as sampling sees them;
        for checking the samplers against each other and against PyTorch.
        """
        check_choice("sampler", sampler, SAMPLERS)
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        side = self.latent_size
        if indices.ndim != 3 or indices.shape[1:] != (side, side):
            raise ValueError(f"indices must be (n, {side}, {side}), got shape {indices.shape}")
        conditions = self.check_conditions(condition, len(indices))
        if sampler == "naive":
            return self._sessions["pixelcnn"].run({"indices": indices, "conditions": conditions},
                                                  outputs=["logits"])["logits"]  # fmt: skip
        _, logits = self._cached_sampler().run(conditions, 0, 0, 1.0, indices, True,
                                               check_threads(self.n_threads))  # fmt: skip
        return logits.transpose(0, 3, 1, 2)

    def sample_indices(self, condition, n: int, *, temperature: float = 1.0, seed: int = 0,
                       first_sample: int = 0, batch_size: int = 64,
                       sampler: str = "cached") -> np.ndarray:  # fmt: skip
        """``(n, latent, latent)`` int64 index maps drawn from the prior (module docstring).

        Sample ``first_sample + i`` gets its own random numbers, whatever the
        batch or the sampler: a run of 1000 samples and one of the last 10
        (``first_sample=990``) agree on those 10.
        """
        conditions = self.check_conditions(condition, n)
        temperature = check_real("temperature", temperature, minimum=0.0)
        batch_size = check_positive_int("batch_size", batch_size)
        check_choice("sampler", sampler, SAMPLERS)
        first_sample = int(first_sample)
        if first_sample < 0:
            raise ValueError(f"first_sample must be >= 0, got {first_sample}")
        seed = _check_seed(seed)
        if sampler == "cached":
            native = self._cached_sampler()
            parts = []
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                maps, _ = native.run(conditions[lo:hi], seed, first_sample + lo, temperature,
                                     None, False, check_threads(self.n_threads))  # fmt: skip
                parts.append(maps)
            return np.concatenate(parts)
        side = self.latent_size
        out = np.zeros((n, side, side), np.int64)
        session = self._sessions["pixelcnn"]
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            maps = out[lo:hi]
            ids = np.arange(first_sample + lo, first_sample + hi)
            for position in range(side * side):
                i, j = divmod(position, side)
                logits = session.run({"indices": maps, "conditions": conditions[lo:hi]},
                                     outputs=["logits"])["logits"]  # fmt: skip
                u = sample_uniforms(seed, ids, position)
                maps[:, i, j] = categorical(logits[:, :, i, j], u, temperature)
        return out

    def decode(self, indices) -> np.ndarray:
        """Images ``(n, image_size, image_size)`` float32 in [0, 1] of index maps."""
        indices = np.asarray(indices)
        side = self.latent_size
        if indices.ndim != 3 or indices.shape[1:] != (side, side):
            raise ValueError(f"indices must be (n, {side}, {side}), got shape {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_codes):
            raise ValueError(f"indices must be in [0, {self.n_codes}), found "
                             f"[{indices.min()}, {indices.max()}]")  # fmt: skip
        image = self._sessions["decoder"].run(indices.astype(np.int64), outputs=["image"])["image"]
        return np.clip((image[:, 0] + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)

    def encode_latents(self, images, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's ``z_e`` ``(n, D, latent, latent)`` and index maps ``(n, latent, latent)``.

        ``images`` is ``(n, size, size)`` (or one ``(size, size)``) in [0, 1].
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        side = self.image_size
        if images.ndim != 3 or images.shape[1:] != (side, side) or not len(images):
            raise ValueError(f"images must be (n >= 1, {side}, {side}), got shape {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")
        batch_size = check_positive_int("batch_size", batch_size)
        latents, indices = [], []
        for lo in range(0, len(images), batch_size):
            scaled = images[lo:lo + batch_size, None] * np.float32(2.0) - np.float32(1.0)
            found = self._sessions["encoder"].run(scaled, outputs=["z_e", "indices"])
            latents.append(found["z_e"])
            indices.append(found["indices"])
        return np.concatenate(latents), np.concatenate(indices)

    def encode(self, images) -> np.ndarray:
        """Index maps ``(n, latent, latent)`` of images ``(n, size, size)`` in [0, 1]."""
        return self.encode_latents(images)[1]

    @property
    def decoder_path(self):
        """The bundle's ``decoder.onnx`` (its graph holds the codebook)."""
        return self._sessions["decoder"].path

    def generate(self, condition, n: int, **sampling: Any) -> np.ndarray:
        """``n`` images for ``condition``: :meth:`sample_indices`, then :meth:`decode`."""
        return self.decode(self.sample_indices(condition, n, **sampling))

    def __repr__(self) -> str:
        c = self._condition
        ranges = ", ".join(f"{name} in [{lo:g}, {hi:g}]"
                           for name, lo, hi in zip(c.names, c.low, c.high))  # fmt: skip
        return (f"Generator({self.image_size}x{self.image_size} images, {self.n_codes} codes on "
                f"{self.latent_size}x{self.latent_size} maps; {ranges})")


def load_generator(directory, *, device: str = "auto", n_threads: int | None = None) -> Generator:
    """The :class:`Generator` of a ``generator`` bundle (checksums verified)."""
    from microtex.generative.export import BUNDLE_KIND

    return Generator(bundle.open_bundle(directory, kind=BUNDLE_KIND), device=device,
                     n_threads=n_threads)  # fmt: skip


def _register() -> None:
    from microtex.generative.export import BUNDLE_KIND

    bundle.register_kind(BUNDLE_KIND, Generator.from_bundle)


_register()
