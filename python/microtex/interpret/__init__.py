"""Seeing what the network sees: filter textures, important and characteristic textures,
activation heat maps and texture synthesis.

Gradient-based tools (activation maximization, synthesis) need PyTorch (the
``torch`` extra); it is imported inside the functions that use it, so
importing this package stays cheap. Everything that only needs a forward pass
(heat maps, characteristic filters) runs the exported ONNX graph.

>>> from microtex import interpret
>>> interpret.feature_source("relu2_1/gram/130").filters  # row 0 of the triangle has 128
(1, 3)
"""

from __future__ import annotations

import importlib

# public name -> the module that owns it (imported on first use)
_PUBLIC = {
    "TextureSettings": "filters",
    "FilterTexture": "filters",
    "filter_texture": "filters",
    "filter_textures": "filters",
    "texture_grid": "filters",
    "layer_grid": "filters",
    "top_filters": "filters",
    "feature_source": "importance",
    "permutation_importance": "importance",
    "rank_features": "importance",
    "characteristic_filters": "importance",
    "activations": "heatmap",
    "mean_activations": "heatmap",
    "filter_heatmap": "heatmap",
    "classifier_heatmaps": "heatmap",
    "overlay": "heatmap",
    "explain": "explanation",
    "synthesize": "synthesis",
    "gram_loss": "synthesis",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'microtex.interpret' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"microtex.interpret.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
