"""The conditional gated PixelCNN prior over VQ-VAE index maps (DESIGN.md §1, §8).

van den Oord et al. 2016, *Conditional Image Generation with PixelCNN
Decoders*, as Noguchi & Inoue use it: an index map ``(n, h, w)`` is embedded
(K → E), passed through gated layers with a vertical and a horizontal stack,
and a head (1×1 conv → ReLU → 1×1 conv) gives K logits per position. A
continuous condition vector ``(n, n_conditions)`` (e.g. ln cooling rate) enters
every gate as a bias through a linear layer.

Causality (raster order: row by row, left to right). Logits at ``(i, j)``
depend on the positions strictly before ``(i, j)`` only. It is built into the
shapes of the kernels, not into masks, so a sampler outside PyTorch can use
every weight as stored (:mod:`microtex.generative.export`). Every
convolution reads zeros outside the map. With ``half = kernel_size // 2``,
in every layer:

* the **vertical** convolution has a ``(half + 1) × kernel_size`` kernel over
  rows ``i - half .. i`` and columns ``j - half .. j + half`` (zero padding
  above and at the sides): vertical features at row ``i`` see input rows
  ``<= i`` only;
* the vertical → horizontal link is a 1×1 convolution of the vertical
  pre-activations **shifted down one row** (the vertical convolution
  evaluated one row up; for row 0 that is a window of zeros: the bias), so
  the horizontal stack at row ``i`` sees rows ``<= i - 1`` through it, the
  row above, right-hand side included: no blind spot;
* the **horizontal** convolution has a ``1 × half`` kernel over columns
  ``j - half .. j - 1`` in the first layer (mask A: not the position itself)
  and a ``1 × (half + 1)`` kernel over ``j - half .. j`` in the others (mask
  B: the position's own features, which are already causal); the others add
  their input back (residual);
* the head reads the horizontal stack only.

Gates: ``tanh(a + c_a) · sigmoid(b + c_b)`` where ``(a, b)`` split a
convolution's 2p channels and ``(c_a, c_b)`` the condition's linear map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from microtex._validation import check_positive_int
from microtex.engine.export import require_torch

torch = require_torch("the gated PixelCNN (microtex.generative.pixelcnn)")
nn = torch.nn
functional = torch.nn.functional

__all__ = ["GatedLayer", "GatedPixelCNN", "PixelCNNConfig", "prior_loss"]


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig:
    """Every size of a :class:`GatedPixelCNN`; the defaults are Noguchi & Inoue's.

    Parameters
    ----------
    n_codes : int
        K, the VQ-VAE's codebook size: the input vocabulary and the logits per
        position (512).
    embedding_dim : int
        E, the embedding of an index (64).
    hidden_channels : int
        p, the channels of both stacks (64); each gate's convolutions output 2p.
    n_layers : int
        Gated layers (15): the first with mask A, the others with mask B.
    first_kernel_size : int
        Kernel side of the first layer (7); odd and >= 3 (mask A needs a
        left neighbour).
    kernel_size : int
        Kernel side of the other layers (3); odd.
    head_channels : int
        Channels between the head's two 1×1 convolutions (256).
    n_conditions : int
        Length of the condition vector (1: ln cooling rate). For an
        unconditional prior, pass a constant.
    latent_size : int
        Side of the index maps (16); the network itself takes any size, this
        one fixes the exported graph and the sampler.

    Raises
    ------
    ValueError
        A size that is not a positive integer or a kernel side that is even
        (or a first kernel side below 3); the message names the value.

    Examples
    --------
    >>> PixelCNNConfig().n_layers
    15
    >>> PixelCNNConfig(kernel_size=4)
    Traceback (most recent call last):
    ...
    ValueError: kernel_size must be odd (a centred causal kernel), got 4
    """

    n_codes: int = 512
    embedding_dim: int = 64
    hidden_channels: int = 64
    n_layers: int = 15
    first_kernel_size: int = 7
    kernel_size: int = 3
    head_channels: int = 256
    n_conditions: int = 1
    latent_size: int = 16

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_positive_int(field.name, getattr(self, field.name))
        for name in ("first_kernel_size", "kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (a centred causal kernel), "
                                 f"got {getattr(self, name)}")  # fmt: skip
        if self.first_kernel_size < 3:
            raise ValueError(f"first_kernel_size must be >= 3 (mask A sees the left neighbours "
                             f"only), got {self.first_kernel_size}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> PixelCNNConfig:
        """The configuration :meth:`to_dict` wrote; unknown keys raise ``ValueError``."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(document) - names)
        if unknown:
            raise ValueError(f"unknown PixelCNN configuration keys {unknown}; "
                             f"known: {sorted(names)}")  # fmt: skip
        return cls(**document)


def _gate(x):
    """``tanh(first half of the channels) · sigmoid(second half)``."""
    filters, gates = x.chunk(2, dim=1)
    return torch.tanh(filters) * torch.sigmoid(gates)


class GatedLayer(nn.Module):
    """One gated layer: vertical and horizontal stacks, link, condition biases.

    Parameters
    ----------
    in_channels, channels : int
        Input channels (E for the first layer, p after) and p.
    kernel_size : int
        Odd kernel side.
    n_conditions : int
    first : bool
        Mask A (the horizontal kernel stops left of the position, no residual)
        instead of mask B.
    last : bool
        The last layer: its vertical stack only feeds the link, so it has no
        vertical gate (and no ``vertical_condition``) and returns ``None`` for
        the vertical stack.

    The parameters (names as in the state dict) are ``vertical``
    ``(2p, in, half + 1, k)``, ``vertical_to_horizontal`` ``(2p, 2p, 1, 1)``,
    ``horizontal`` ``(2p, in, 1, half)`` (mask A) or ``(2p, in, 1, half + 1)``,
    ``horizontal_output`` ``(p, p, 1, 1)``, ``vertical_condition`` (not in the
    last layer) and ``horizontal_condition`` (linear ``n_conditions → 2p``),
    each with a bias.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, n_conditions: int,
                 first: bool, last: bool = False):  # fmt: skip
        super().__init__()
        self.half = kernel_size // 2
        self.first, self.last = bool(first), bool(last)
        half = self.half
        # Zero padding through the convolutions' own (symmetric) padding, and
        # the causal window by keeping the first rows/columns of the output:
        # F.pad exports as a Pad whose pads the TorchScript exporter cannot fold.
        # Vertical: padded by half + 1 rows, output row r covers input rows
        # r - half - 1 .. r - 1, so rows 1..h are the stack and rows 0..h-1 the
        # same features one row up.
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel_size),
                                  padding=(half + 1, half))  # fmt: skip
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        # horizontal: output column c covers c - half .. c - 1 (mask A) or .. c (mask B)
        width = half if self.first else half + 1
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, width), padding=(0, half))
        self.horizontal_output = nn.Conv2d(channels, channels, 1)
        if not self.last:
            self.vertical_condition = nn.Linear(n_conditions, 2 * channels)
        self.horizontal_condition = nn.Linear(n_conditions, 2 * channels)

    def forward(self, vertical, horizontal, conditions):
        """``(vertical, horizontal)`` of the next layer; ``conditions`` is ``(n, n_conditions)``."""
        height, width = vertical.shape[2], vertical.shape[3]
        stack = self.vertical(vertical)
        above = stack[:, :, :height]  # row i: the vertical features of row i - 1
        vertical_out = None
        if not self.last:
            vertical_pre = stack[:, :, 1 : height + 1]  # row i: input rows i - half .. i
            vertical_bias = self.vertical_condition(conditions)[:, :, None, None]
            vertical_out = _gate(vertical_pre + vertical_bias)
        horizontal_pre = (
            self.horizontal(horizontal)[:, :, :, :width] + self.vertical_to_horizontal(above)
            + self.horizontal_condition(conditions)[:, :, None, None]
        )  # fmt: skip
        horizontal_out = self.horizontal_output(_gate(horizontal_pre))
        if not self.first:
            horizontal_out = horizontal_out + horizontal
        return vertical_out, horizontal_out


class GatedPixelCNN(nn.Module):
    """Conditional gated PixelCNN: ``(indices, conditions) → logits``.

    Parameters
    ----------
    config : PixelCNNConfig, optional
        Default: the reference configuration.

    Attributes
    ----------
    config : PixelCNNConfig
    embedding : torch.nn.Embedding
        ``(n_codes, embedding_dim)``.
    layers : torch.nn.ModuleList of GatedLayer
    head_hidden, head_output : torch.nn.Conv2d
        The head's 1×1 convolutions (p → head_channels, ReLU, → n_codes).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> config = PixelCNNConfig(n_codes=16, embedding_dim=8, hidden_channels=8, n_layers=2,
    ...                         head_channels=16, latent_size=4)
    >>> model = GatedPixelCNN(config)
    >>> logits = model(torch.randint(0, 16, (3, 4, 4)), torch.zeros(3, 1))
    >>> tuple(logits.shape)
    (3, 16, 4, 4)
    """

    def __init__(self, config: PixelCNNConfig | None = None):
        super().__init__()
        self.config = PixelCNNConfig() if config is None else config
        if not isinstance(self.config, PixelCNNConfig):
            raise TypeError(f"config must be a PixelCNNConfig, got {type(self.config).__name__}")
        c = self.config
        self.embedding = nn.Embedding(c.n_codes, c.embedding_dim)
        self.layers = nn.ModuleList(
            GatedLayer(c.embedding_dim if layer == 0 else c.hidden_channels, c.hidden_channels,
                       c.first_kernel_size if layer == 0 else c.kernel_size, c.n_conditions,
                       first=layer == 0, last=layer == c.n_layers - 1)
            for layer in range(c.n_layers)
        )  # fmt: skip
        self.head_hidden = nn.Conv2d(c.hidden_channels, c.head_channels, 1)
        self.head_output = nn.Conv2d(c.head_channels, c.n_codes, 1)

    def embed(self, indices):
        """Embedded index map ``(n, embedding_dim, h, w)`` of ``indices`` ``(n, h, w)`` int64."""
        if indices.ndim != 3:
            raise ValueError(f"index maps must be (batch, height, width), "
                             f"got shape {tuple(indices.shape)}")  # fmt: skip
        return self.embedding(indices).permute(0, 3, 1, 2)

    def logits_from_embedding(self, embedded, conditions):
        """Logits ``(n, n_codes, h, w)`` of an embedded map ``(n, embedding_dim, h, w)``.

        Separate from :meth:`forward` so that gradients with respect to the
        embedded input (causality tests) can be taken.
        """
        n_conditions = self.config.n_conditions
        if conditions.ndim != 2 or conditions.shape[1] != n_conditions:
            raise ValueError(f"conditions must be (batch, {n_conditions}), "
                             f"got shape {tuple(conditions.shape)}")  # fmt: skip
        if conditions.shape[0] != embedded.shape[0]:
            raise ValueError(f"{int(conditions.shape[0])} condition rows for a batch of "
                             f"{int(embedded.shape[0])} index maps")  # fmt: skip
        vertical = horizontal = embedded
        for layer in self.layers:
            vertical, horizontal = layer(vertical, horizontal, conditions)
        return self.head_output(functional.relu(self.head_hidden(horizontal)))

    def forward(self, indices, conditions):
        """Logits ``(n, n_codes, h, w)`` of ``indices`` ``(n, h, w)`` int64 given
        ``conditions`` ``(n, n_conditions)`` float32: position ``(i, j)`` from
        the positions before it in raster order."""
        return self.logits_from_embedding(self.embed(indices), conditions)


def prior_loss(logits, indices):
    """Mean negative log-likelihood (nats per position) of ``indices`` under ``logits``.

    ``logits`` ``(n, K, h, w)`` from :meth:`GatedPixelCNN.forward` on the same
    ``indices`` ``(n, h, w)``: the cross-entropy training minimizes.

    Examples
    --------
    >>> import math, torch
    >>> round(float(prior_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))),
    ...       6) == round(math.log(4), 6)
    True
    """
    return functional.cross_entropy(logits, indices)
