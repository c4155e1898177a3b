"""microtex: an inference engine for materials micrographs.

``import microtex`` is cheap: it loads neither PyTorch nor ONNX Runtime. The
public names below are resolved on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "pooling": "microtex.pooling",
    "io": "microtex.io",
    "synth": "microtex.synth",
    "backbones": "microtex.backbones",
    "runtime": "microtex.runtime",
    "featurizer": "microtex.featurizer",
    "errors": "microtex.errors",
    "bundle": "microtex.bundle",
    "report": "microtex.report",
    "demo": "microtex.demo",
}
_LAZY_ATTRS = {
    "TextureFeaturizer": "microtex.featurizer",
    "featurize": "microtex.featurizer",
    "read_image": "microtex.io",
    "perlin_texture": "microtex.synth",
}

__all__ = ["__version__", *_LAZY, *_LAZY_ATTRS]


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    raise AttributeError(f"module 'microtex' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
