"""The differentiable backbone the gradient-based tools share."""

from __future__ import annotations

import functools

from microtex.backbones.config import BackboneConfig
from microtex.engine.export import require_torch

__all__ = ["gray_tensor", "tap_module", "torch_threads"]


@functools.lru_cache(maxsize=4)
def tap_module(config: BackboneConfig):
    """``build_torch_module(config)`` with raw activations per tap, built once per config.

    Parameters never need gradients; gradients with respect to the input do
    flow. The module is shared, so callers must not modify it.
    """
    from microtex.backbones.vgg import build_torch_module

    return build_torch_module(config)


def gray_tensor(image, torch):
    """A (1, 1, h, w) float32 tensor of a 2-D image in [0, 1]."""
    return torch.as_tensor(image, dtype=torch.float32)[None, None]


class torch_threads:  # noqa: N801  (used as a context manager, like torch's own)
    """Run PyTorch on ``n`` intra-op threads inside the block (None: leave as is)."""

    def __init__(self, n: int | None):
        self.n = n
        self.before = None

    def __enter__(self):
        torch = require_torch("interpretation")
        if self.n is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(int(self.n))
        return torch

    def __exit__(self, *exc):
        if self.before is not None:
            require_torch("interpretation").set_num_threads(self.before)
        return False
