"""Seeing what the network sees: filter textures, important and characteristic
textures, activation heat maps and texture synthesis.

Gradient-based tools (activation maximization, synthesis) need PyTorch (the
``torch`` extra); it is imported inside the functions that use it, so
importing this package stays cheap. Everything that only needs a forward pass
(heat maps, characteristic filters) runs the exported ONNX graph.
"""
