"""microtex: an inference engine for materials micrographs.

``import microtex`` is cheap: it loads neither PyTorch nor ONNX Runtime, and
the names below are imported on first use.

>>> import microtex
>>> table = microtex.featurize(microtex.marble_dataset(2, size=32).images, taps="raw", pool="mean")
>>> table.features.shape
(8, 1)
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> the module that owns it
_PUBLIC = {
    "featurize": "microtex.features.api",
    "TextureFeaturizer": "microtex.features.texture",
    "FeatureTable": "microtex.io.table",
    "read_image": "microtex.io.read",
    "read_images": "microtex.io.read",
    "iter_images": "microtex.io.read",
    "load_bundle": "microtex.bundle",
    "open_bundle": "microtex.bundle",
    "perlin_texture": "microtex.synth",
    "marble_dataset": "microtex.synth",
    "run_demo": "microtex.demo",
    "MicrotexError": "microtex.errors",
}

__all__ = ["__version__", *_PUBLIC]


# subpackages reachable as attributes (``microtex.io.read_image``), imported on first use;
# featurizer, pooling and runtime are 0.1's module names, deprecated until 0.3
_SUBMODULES = frozenset(
    {"backbones", "bundle", "demo", "distributed", "engine", "errors", "features", "io", "report",
     "synth", "featurizer", "pooling", "runtime"}
)  # fmt: skip


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"microtex.{name}")
    else:
        raise AttributeError(f"module 'microtex' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
