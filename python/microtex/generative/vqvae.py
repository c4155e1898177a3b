"""The VQ-VAE of Noguchi & Inoue (DESIGN.md §1, §8): encoder, codebook, decoder and losses.

Reference configuration (:class:`VQVAEConfig` defaults), for a 128×128
grayscale patch scaled to [-1, 1]:

* encoder: Conv4×4/2 (1→32)-BN-ReLU, Conv4×4/2 (32→64)-BN-ReLU, Conv4×4/2
  (64→128), two residual blocks (ReLU-Conv3×3 128→32-BN-ReLU-Conv1×1
  32→128-BN, plus the skip) → ``z_e`` (n, 128, 16, 16);
* codebook: K = 512 vectors of dimension D = 128; each position of ``z_e``
  is replaced by its nearest codebook vector (squared Euclidean distance,
  lowest index on a tie), the straight-through estimator carries the
  decoder's gradient back to the encoder;
* decoder: the mirror image: the residual blocks, ReLU, ConvT4×4/2 (128→64)-BN-ReLU,
  ConvT4×4/2 (64→32)-BN-ReLU, ConvT4×4/2 (32→1), tanh;
* loss (van den Oord et al. 2017): ``mse(x, x̂) + mse(sg[z_e], e) + β mse(z_e, sg[e])``
  (:func:`vqvae_loss`; ``sg`` stops gradients, ``mse`` is the mean over all
  elements, β = 0.25).

PyTorch is imported when this module is; the rest of microtex runs the exported
ONNX graphs (:mod:`microtex.generative.export`). :func:`codebook_usage` needs
NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from microtex._validation import check_int, check_positive_int, is_int
from microtex.engine.export import require_torch

torch = require_torch("the VQ-VAE (microtex.generative.vqvae)")
nn = torch.nn
functional = torch.nn.functional

__all__ = [
    "LOSS_TERMS",
    "VQVAE",
    "IndexDecoder",
    "IndexEncoder",
    "VQVAEConfig",
    "codebook_usage",
    "vqvae_loss",
]

#: Keys of the loss dictionary :meth:`VQVAE.forward` returns (:func:`vqvae_loss`).
LOSS_TERMS: tuple[str, ...] = ("reconstruction", "codebook", "commitment", "total")


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """Every size of a :class:`VQVAE`; the defaults are Noguchi & Inoue's.

    Parameters
    ----------
    image_size : int
        Side of the square training patches (128). Any input whose height and
        width are multiples of :attr:`downsampling` can be encoded; this size
        fixes the exported graphs' input.
    in_channels : int
        Image channels (1: grayscale).
    hidden_channels : tuple of int
        Output channels of the strided convolutions before the last one
        (32, 64); the last one outputs ``embedding_dim``. The encoder halves
        the image ``len(hidden_channels) + 1`` times.
    embedding_dim : int
        D, the dimension of a codebook vector and the channels of ``z_e`` (128).
    n_codes : int
        K, the number of codebook vectors (512).
    n_residual_blocks : int
        Residual blocks after the encoder's convolutions and before the
        decoder's (2; 0 is allowed).
    residual_channels : int
        Inner channels of a residual block (32).
    kernel_size : int
        Side of the strided (transposed) convolutions (4); even, so that
        padding ``(kernel_size - 2) / 2`` halves (doubles) a side exactly.
    beta : float
        β, the weight of the commitment loss (0.25).

    Raises
    ------
    ValueError
        A size that is not a positive integer, an odd ``kernel_size``, a
        negative or non-finite ``beta``, or an ``image_size`` that is not a
        multiple of :attr:`downsampling`; the message names the value.

    Examples
    --------
    >>> config = VQVAEConfig()
    >>> config.downsampling, config.latent_size
    (8, 16)
    >>> VQVAEConfig(image_size=100)
    Traceback (most recent call last):
    ...
    ValueError: image_size 100 is not a multiple of the downsampling factor 8 ...
    """

    image_size: int = 128
    in_channels: int = 1
    hidden_channels: tuple[int, ...] = (32, 64)
    embedding_dim: int = 128
    n_codes: int = 512
    n_residual_blocks: int = 2
    residual_channels: int = 32
    kernel_size: int = 4
    beta: float = 0.25

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "embedding_dim", "n_codes",
                     "residual_channels", "kernel_size"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        check_int("n_residual_blocks", self.n_residual_blocks, 0)
        hidden = self.hidden_channels
        if not isinstance(hidden, (tuple, list)) or not all(
            is_int(channels) and channels >= 1 for channels in hidden
        ):
            raise ValueError(f"hidden_channels must be a sequence of positive integers, "
                             f"got {hidden!r}")  # fmt: skip
        object.__setattr__(self, "hidden_channels", tuple(int(c) for c in hidden))
        if self.kernel_size % 2:
            raise ValueError(f"kernel_size must be even (so a stride-2 convolution halves a side "
                             f"exactly), got {self.kernel_size}")  # fmt: skip
        beta = self.beta
        if is_int(beta):
            beta = float(beta)
        if not isinstance(beta, (float, np.floating)) or not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        object.__setattr__(self, "beta", float(beta))
        if self.image_size % self.downsampling:
            n = len(self.hidden_channels) + 1
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the downsampling factor "
                f"{self.downsampling} (2 ** {n}: len(hidden_channels) + 1 strided convolutions)"
            )

    @property
    def downsampling(self) -> int:
        """How many image pixels one latent position covers along a side."""
        return 2 ** (len(self.hidden_channels) + 1)

    @property
    def latent_size(self) -> int:
        """Side of the index map of an ``image_size`` patch (16 for the reference)."""
        return self.image_size // self.downsampling

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able values (``hidden_channels`` a list)."""
        document = dataclasses.asdict(self)
        document["hidden_channels"] = list(self.hidden_channels)
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> VQVAEConfig:
        """The configuration :meth:`to_dict` wrote; unknown keys raise ``ValueError``."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(document) - names)
        if unknown:
            raise ValueError(f"unknown VQ-VAE configuration keys {unknown}; known: {sorted(names)}")
        values = dict(document)
        if "hidden_channels" in values and isinstance(values["hidden_channels"], list):
            values["hidden_channels"] = tuple(values["hidden_channels"])
        return cls(**values)


# --------------------------------------------------------------------------- modules


class _ResidualBlock(nn.Module):
    """``x + BN(Conv1×1(ReLU(BN(Conv3×3(ReLU(x))))))``: channels in = channels out."""

    def __init__(self, channels: int, inner_channels: int):
        super().__init__()
        # not in place: the skip needs x unchanged
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, inner_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner_channels),
            nn.ReLU(),
            nn.Conv2d(inner_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return x + self.body(x)


def _build_encoder(config: VQVAEConfig) -> nn.Sequential:
    padding = (config.kernel_size - 2) // 2
    layers: list[nn.Module] = []
    channels = config.in_channels
    for out in config.hidden_channels:
        # bias=False: the batch norm that follows has its own shift
        layers += [nn.Conv2d(channels, out, config.kernel_size, 2, padding, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU()]  # fmt: skip
        channels = out
    layers.append(nn.Conv2d(channels, config.embedding_dim, config.kernel_size, 2, padding))
    layers += [_ResidualBlock(config.embedding_dim, config.residual_channels)
               for _ in range(config.n_residual_blocks)]  # fmt: skip
    return nn.Sequential(*layers)


def _build_decoder(config: VQVAEConfig) -> nn.Sequential:
    padding = (config.kernel_size - 2) // 2
    layers: list[nn.Module] = [_ResidualBlock(config.embedding_dim, config.residual_channels)
                               for _ in range(config.n_residual_blocks)]  # fmt: skip
    layers.append(nn.ReLU())
    channels = config.embedding_dim
    for out in reversed(config.hidden_channels):
        layers += [nn.ConvTranspose2d(channels, out, config.kernel_size, 2, padding, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU()]  # fmt: skip
        channels = out
    layers += [nn.ConvTranspose2d(channels, config.in_channels, config.kernel_size, 2, padding),
               nn.Tanh()]  # fmt: skip
    return nn.Sequential(*layers)


class VQVAE(nn.Module):
    """Vector-quantized autoencoder: image ↔ map of codebook indices.

    Parameters
    ----------
    config : VQVAEConfig, optional
        Default: the reference configuration.

    Attributes
    ----------
    config : VQVAEConfig
    encoder, decoder : torch.nn.Sequential
    codebook : torch.nn.Parameter
        ``(n_codes, embedding_dim)``, initialized uniformly in ±1/K.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = VQVAE(VQVAEConfig(image_size=16, hidden_channels=(4,), embedding_dim=8,
    ...                           n_codes=16, residual_channels=4))
    >>> recon, indices, losses = model(torch.rand(2, 1, 16, 16) * 2 - 1)
    >>> tuple(recon.shape), tuple(indices.shape), indices.dtype
    ((2, 1, 16, 16), (2, 4, 4), torch.int64)
    >>> sorted(losses) == sorted(LOSS_TERMS)
    True
    """

    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        self.config = VQVAEConfig() if config is None else config
        if not isinstance(self.config, VQVAEConfig):
            raise TypeError(f"config must be a VQVAEConfig, got {type(self.config).__name__}")
        k, d = self.config.n_codes, self.config.embedding_dim
        self.encoder = _build_encoder(self.config)
        self.decoder = _build_decoder(self.config)
        self.codebook = nn.Parameter(torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k))

    def _check_image(self, x) -> None:
        config = self.config
        if x.ndim != 4 or x.shape[1] != config.in_channels:
            raise ValueError(f"images must be (batch, {config.in_channels}, height, width), "
                             f"got shape {tuple(x.shape)}")  # fmt: skip
        height, width = int(x.shape[2]), int(x.shape[3])
        if height % config.downsampling or width % config.downsampling:
            raise ValueError(f"image height and width must be multiples of "
                             f"{config.downsampling}, got {height}×{width}")  # fmt: skip

    def encode(self, x):
        """``z_e`` ``(n, D, h, w)`` of images ``x`` ``(n, in_channels, H, W)`` in [-1, 1]."""
        self._check_image(x)
        return self.encoder(x)

    def nearest(self, z_e):
        """Index ``(n, h, w)`` int64 of the codebook vector nearest to each position of ``z_e``.

        Squared distances ‖z‖² − 2 z·e + ‖e‖²; ``argmin`` takes the lowest index on a tie.
        """
        z = z_e.permute(0, 2, 3, 1)  # (n, h, w, D): one vector per position
        codebook = self.codebook
        distances = (
            (z * z).sum(-1, keepdim=True) - 2.0 * torch.matmul(z, codebook.t())
            + (codebook * codebook).sum(1)
        )  # fmt: skip
        return distances.argmin(-1)

    def lookup(self, indices):
        """Codebook vectors ``(n, D, h, w)`` of an index map ``(n, h, w)``."""
        return functional.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def quantize(self, z_e):
        """Replace each position of ``z_e`` by its nearest codebook vector.

        Returns
        -------
        z_q : torch.Tensor
            ``z_e + (z_q - z_e).detach()``: equal to the codebook vectors, with
            the gradient of ``z_e`` (the straight-through estimator).
        indices : torch.Tensor
            ``(n, h, w)`` int64.
        losses : dict of str to torch.Tensor
            ``"codebook"``: ``mse(z_q, z_e.detach())`` (moves the codebook);
            ``"commitment"``: ``mse(z_e, z_q.detach())`` (keeps the encoder
            near its codes). Equal values, different gradients.
        """
        indices = self.nearest(z_e)
        z_q = self.lookup(indices)
        losses = {
            "codebook": functional.mse_loss(z_q, z_e.detach()),
            "commitment": functional.mse_loss(z_e, z_q.detach()),
        }
        return z_e + (z_q - z_e).detach(), indices, losses

    def decode(self, z_q):
        """Images ``(n, in_channels, H, W)`` in [-1, 1] from quantized latents ``(n, D, h, w)``."""
        return self.decoder(z_q)

    def decode_indices(self, indices):
        """Images ``(n, in_channels, H, W)`` in [-1, 1] from an index map ``(n, h, w)`` int64."""
        if indices.ndim != 3:
            raise ValueError(f"index maps must be (batch, height, width), "
                             f"got shape {tuple(indices.shape)}")  # fmt: skip
        return self.decoder(self.lookup(indices))

    def forward(self, x):
        """Reconstruct ``x``: ``(reconstruction, indices, losses)`` with :data:`LOSS_TERMS`."""
        z_q, indices, quantizer_losses = self.quantize(self.encode(x))
        reconstruction = self.decoder(z_q)
        losses = vqvae_loss(x, reconstruction, quantizer_losses, self.config.beta)
        return reconstruction, indices, losses


def vqvae_loss(image, reconstruction, quantizer_losses: Mapping[str, Any], beta: float) -> dict:
    """The VQ-VAE loss terms: ``{"reconstruction", "codebook", "commitment", "total"}``.

    ``total = reconstruction + codebook + beta * commitment`` with
    ``reconstruction = mse(image, reconstruction)`` (mean over all elements)
    and the two terms :meth:`VQVAE.quantize` returns.

    Examples
    --------
    >>> import torch
    >>> terms = vqvae_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2),
    ...                    {"codebook": torch.tensor(2.0), "commitment": torch.tensor(2.0)}, 0.25)
    >>> {name: float(value) for name, value in terms.items()}
    {'reconstruction': 1.0, 'codebook': 2.0, 'commitment': 2.0, 'total': 3.5}
    """
    reconstruction_loss = functional.mse_loss(reconstruction, image)
    codebook, commitment = quantizer_losses["codebook"], quantizer_losses["commitment"]
    return {
        "reconstruction": reconstruction_loss,
        "codebook": codebook,
        "commitment": commitment,
        "total": reconstruction_loss + codebook + beta * commitment,
    }


def codebook_usage(indices, n_codes: int) -> dict[str, float | int]:
    """How evenly a batch of index maps uses the codebook.

    Parameters
    ----------
    indices : array-like or torch.Tensor of int
        Codebook indices of any shape, each in ``[0, n_codes)``.
    n_codes : int
        K.

    Returns
    -------
    dict
        ``"perplexity"``: ``exp(-Σ p_k ln p_k)`` of the index histogram ``p``
        (1 when one code is used, k when k codes are used equally often, at
        most K); ``"used_codes"``: codes that occur; ``"dead_codes"``: the
        K − used codes that do not.

    Examples
    --------
    >>> usage = codebook_usage([0, 1, 2, 3, 0, 1, 2, 3], n_codes=8)
    >>> round(usage["perplexity"], 6), usage["used_codes"], usage["dead_codes"]
    (4.0, 4, 4)
    """
    n_codes = check_positive_int("n_codes", n_codes)
    if hasattr(indices, "detach"):  # a tensor, on any device
        indices = indices.detach().cpu().numpy()
    flat = np.asarray(indices).reshape(-1)
    if flat.size == 0:
        raise ValueError("codebook usage needs at least one index, got an empty array")
    if not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {flat.dtype}")
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high >= n_codes:
        bad = low if low < 0 else high
        raise ValueError(f"index {bad} is outside the codebook [0, {n_codes})")
    counts = np.bincount(flat, minlength=n_codes)
    probabilities = counts[counts > 0] / flat.size
    entropy = float(-(probabilities * np.log(probabilities)).sum())
    used = int(np.count_nonzero(counts))
    return {"perplexity": math.exp(entropy), "used_codes": used, "dead_codes": n_codes - used}


# --------------------------------------------------------------------------- exported graphs


class IndexEncoder(nn.Module):
    """The graph :func:`microtex.generative.export.export_encoder` exports.

    ``image`` ``(n, in_channels, H, W)`` in [-1, 1] → ``(z_e, indices)``.
    """

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, image):
        z_e = self.model.encode(image)
        return z_e, self.model.nearest(z_e)


class IndexDecoder(nn.Module):
    """The graph :func:`microtex.generative.export.export_decoder` exports.

    ``indices`` ``(n, h, w)`` int64 → ``image`` ``(n, in_channels, H, W)`` in [-1, 1].
    """

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, indices):
        return self.model.decode_indices(indices)
