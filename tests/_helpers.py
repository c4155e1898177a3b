"""Helpers shared by the test modules: NumPy (float64) references, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter that imports what this one does."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True,
                          env=env, timeout=timeout)


def reference_gram(acts, normalization: str = "spatial", layout: str = "triu") -> np.ndarray:
    """Gram features of activations (n, c, h, w) as DESIGN.md §4 defines them."""
    n, c = np.shape(acts)[:2]
    F = np.asarray(acts, dtype=np.float64).reshape(n, c, -1)
    M = F.shape[2]
    G = F @ F.transpose(0, 2, 1)
    G = G / {"sum": 1.0, "spatial": M, "lubbers": 2.0 * c * M}[normalization]
    if layout == "full":
        return G.reshape(n, c * c)
    rows, cols = np.triu_indices(c)
    return G[:, rows, cols] * np.where(rows == cols, 1.0, np.sqrt(2.0))


# Positions of the convolutions in torchvision's vgg16().features.
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_SHAPES = (
    (64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
    (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
)  # fmt: skip


def fake_vgg16_state(seed=0):
    """A torchvision-format VGG16 state dict with the real shapes, stored compactly.

    Each weight is a random per-output-channel value broadcast (stride 0) over
    the other axes, so the saved file is a few kB while every key still has its
    true shape and a distinct value.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out_channels, in_channels) in zip(
        TORCHVISION_VGG16_CONVS, VGG16_CONV_SHAPES, strict=True
    ):
        per_output = torch.randn(out_channels, 1, 1, 1, generator=generator) * 0.05
        state[f"features.{index}.weight"] = per_output.expand(out_channels, in_channels, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.1
    state["classifier.0.weight"] = torch.zeros(4, 7)  # ignored
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def save_state(state, path):
    import torch

    torch.save(state, path)
    return path


def tiny_generator_models(seed: int = 0):
    """A random-weight VQ-VAE (32×32 images, 4×4 maps of 16 codes) and PixelCNN prior (3 layers,
    one condition), eval mode: the smallest generator the generative tests build bundles from."""
    import torch

    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig
    from microtex.generative.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(seed)
    vqvae = VQVAE(VQVAEConfig(image_size=32, hidden_channels=(8, 16), embedding_dim=8,
                              n_codes=16, residual_channels=4)).eval()  # fmt: skip
    prior = GatedPixelCNN(PixelCNNConfig(n_codes=16, embedding_dim=8, hidden_channels=8,
                                         n_layers=3, head_channels=16, n_conditions=1,
                                         latent_size=4)).eval()  # fmt: skip
    return vqvae, prior
