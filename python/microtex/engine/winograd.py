"""Winograd F(4×4, 3×3) rewrite of an exported ONNX graph's 3×3 convolutions (a graph pass).

Direct 3×3 convolution costs 9 multiply-adds per input channel, output channel
and output pixel. Winograd's minimal filtering (Lavin & Gray 2016) computes a
4×4 output tile from a 6×6 input tile with 36 elementwise products per channel
pair instead of 144: the input tile ``d`` and the filter ``g`` are taken to a
transformed domain (``V = Bᵀ d B``, ``U = G g Gᵀ``), multiplied pointwise and
summed over input channels, and brought back (``Y = Aᵀ M A``). The sum over
input channels is 36 independent matrix products ``M_ξ = U_ξ V_ξ``, one per
transformed position ξ, each with a quarter of the direct convolution's
multiply-adds.

ONNX Runtime's CPU provider has no Winograd kernel, so the rewrite spells it in
stock ONNX operators that the provider runs well:

* input transform: the channels are folded into the batch (``(n·c, 1, h, w)``)
  and one convolution with 36 fixed 6×6 filters, stride 4, pads (1, 1, 4, 4)
  gives every tile's ``V`` (``(n·c, 36, th, tw)``, ``th = ⌈h/4⌉``);
* products: ``V`` is transposed to ``(n, 36, c, th·tw)`` and one batched
  ``MatMul`` with ``U`` (``(36, c_out, c)``, computed here in float64) gives
  ``M`` as ``(n, 36, c_out, th·tw)``;
* output transform: ``M`` read as ``(n, 36, c_out·th, tw)`` (no copy) goes
  through one ``ConvTranspose`` with 36 fixed 4×4 filters, stride 4, whose output
  ``(n, 1, c_out·4th, 4tw)`` is the image ``(n, c_out, 4th, 4tw)`` (no copy);
  it is cropped to ``(h, w)`` and the bias added.

The transforms use the interpolation points 0, ±1, ±2, ∞. In float32 each
rewritten layer differs from direct convolution by about 1e-5 of its largest
output (measured on VGG weights; tested in ``tests/engine/test_winograd.py``).

It pays where the products dominate. The transforms' memory traffic grows
with the number of channels, the saved products with input times output
channels; at 64 input channels the traffic costs as much as the saved
products, so :func:`rewrite` takes a minimum input-channel count,
:data:`DEFAULT_MIN_CHANNELS` = 128 (measurements: ``benchmarks/README.md``).

The intermediate tensors are larger than direct convolution's: per rewritten
layer ``V`` and its transposed copy are each 2.25× the layer's input and ``M``
2.25× its output (36 values per 4×4 tile).
"""

from __future__ import annotations

import numpy as np

from microtex.engine.export import node_attribute

__all__ = [
    "ALGORITHMS",
    "DEFAULT_MIN_CHANNELS",
    "MIN_OPSET",
    "TILE",
    "rewrite",
    "winograd_matrices",
]

#: Convolution algorithms an export can use for the trunk's 3×3 convolutions.
ALGORITHMS: tuple[str, ...] = ("direct", "winograd")
#: Output tile side of F(4×4, 3×3).
TILE = 4
#: Input channels from which a convolution is rewritten (see the module docstring).
DEFAULT_MIN_CHANNELS = 128
#: Oldest opset whose Slice/Reshape take the tensor inputs the rewrite uses.
MIN_OPSET = 13

_ALPHA = TILE + 2  # input tile side


def winograd_matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Bᵀ, G, Aᵀ)`` of F(4, 3) with points 0, 1, -1, 2, -2, ∞, in float64.

    For a 6-sample signal ``d`` and a 3-tap filter ``g``,
    ``Aᵀ [(G g) ⊙ (Bᵀ d)]`` is the 4-sample valid correlation of ``d`` with ``g``.
    """
    bt = np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        dtype=np.float64,
    )
    g = np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        dtype=np.float64,
    )
    at = np.array(
        [
            [1, 1, 1, 1, 1, 0],
            [0, 1, -1, 2, -2, 0],
            [0, 1, 1, 4, 4, 0],
            [0, 1, -1, 8, -8, 1],
        ],
        dtype=np.float64,
    )
    return bt, g, at


def _eligible(node, initializers: dict, min_channels: int) -> bool:
    """A float32 3×3, stride-1, pad-1, ungrouped convolution with constant weights."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.input) < 2 or node.input[1] not in initializers:
        return False
    weight = initializers[node.input[1]]
    if weight.dtype != np.float32 or weight.ndim != 4 or weight.shape[2:] != (3, 3):
        return False
    if weight.shape[1] < min_channels:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
        return False
    return (
        list(node_attribute(node, "strides", [1, 1])) == [1, 1]
        and list(node_attribute(node, "dilations", [1, 1])) == [1, 1]
        and list(node_attribute(node, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
        and node_attribute(node, "group", 1) == 1
        and node_attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def _replacement(node, weight: np.ndarray, bias: np.ndarray | None, prefix: str):
    """Nodes and initializers computing ``node``'s output by Winograd F(4, 3)."""
    from onnx import helper, numpy_helper

    bt, g, at = winograd_matrices()
    out_channels, in_channels = weight.shape[:2]
    positions = _ALPHA * _ALPHA
    u = np.einsum("au,oiuv,bv->aboi", g, weight.astype(np.float64), g)
    u = u.reshape(positions, out_channels, in_channels).astype(np.float32)
    k_in = np.einsum("ap,bq->abpq", bt, bt).reshape(positions, 1, _ALPHA, _ALPHA)
    k_out = np.einsum("ra,sb->abrs", at, at).reshape(positions, 1, TILE, TILE)

    def name(suffix: str) -> str:
        return f"{prefix}/{suffix}"

    initializers = [
        numpy_helper.from_array(u, name("U")),
        numpy_helper.from_array(k_in.astype(np.float32), name("input_transform")),
        numpy_helper.from_array(k_out.astype(np.float32), name("output_transform")),
        numpy_helper.from_array(np.array([-1, 1, 0, 0], np.int64), name("fold_shape")),
        numpy_helper.from_array(np.array([in_channels, positions, -1], np.int64), name("v_tail")),
        numpy_helper.from_array(np.array([positions, -1], np.int64), name("m_mid")),
        numpy_helper.from_array(np.array([out_channels, -1], np.int64), name("y_mid")),
        numpy_helper.from_array(np.array([0], np.int64), name("i0")),
        numpy_helper.from_array(np.array([1], np.int64), name("i1")),
        numpy_helper.from_array(np.array([2], np.int64), name("i2")),
        numpy_helper.from_array(np.array([3], np.int64), name("i3")),
        numpy_helper.from_array(np.array([4], np.int64), name("i4")),
        numpy_helper.from_array(np.array([0, 0], np.int64), name("zeros2")),
        numpy_helper.from_array(np.array([2, 3], np.int64), name("axes_hw")),
    ]
    x, y = node.input[0], node.output[0]
    nodes = [
        helper.make_node("Shape", [x], [name("x_shape")]),
        helper.make_node("Slice", [name("x_shape"), name("i0"), name("i1")], [name("n")]),
        helper.make_node("Slice", [name("x_shape"), name("i2"), name("i4")], [name("hw")]),
        # (n, c, h, w) -> (n·c, 1, h, w) -> V: (n·c, 36, th, tw)
        helper.make_node("Reshape", [x, name("fold_shape")], [name("folded")]),
        helper.make_node(
            "Conv",
            [name("folded"), name("input_transform")],
            [name("v")],
            strides=[TILE, TILE],
            pads=[1, 1, TILE, TILE],
        ),
        helper.make_node("Shape", [name("v")], [name("v_shape")]),
        helper.make_node("Slice", [name("v_shape"), name("i3"), name("i4")], [name("tw")]),
        # (n, c, 36, th·tw) -> (n, 36, c, th·tw)
        helper.make_node("Concat", [name("n"), name("v_tail")], [name("v_4d")], axis=0),
        helper.make_node("Reshape", [name("v"), name("v_4d")], [name("v_ncxt")]),
        helper.make_node("Transpose", [name("v_ncxt")], [name("v_nxct")], perm=[0, 2, 1, 3]),
        # M = U V: (n, 36, c_out, th·tw), read as (n, 36, c_out·th, tw)
        helper.make_node("MatMul", [name("U"), name("v_nxct")], [name("m")]),
        helper.make_node("Concat", [name("n"), name("m_mid"), name("tw")], [name("m_4d")], axis=0),
        helper.make_node("Reshape", [name("m"), name("m_4d")], [name("m_image")]),
        # (n, 1, c_out·4th, 4tw) is (n, c_out, 4th, 4tw); crop to (h, w)
        helper.make_node(
            "ConvTranspose",
            [name("m_image"), name("output_transform")],
            [name("tiles")],
            strides=[TILE, TILE],
        ),
        helper.make_node("Shape", [name("tiles")], [name("tiles_shape")]),
        helper.make_node("Slice", [name("tiles_shape"), name("i3"), name("i4")], [name("w4")]),
        helper.make_node("Concat", [name("n"), name("y_mid"), name("w4")], [name("y_4d")], axis=0),
        helper.make_node("Reshape", [name("tiles"), name("y_4d")], [name("padded")]),
    ]
    cropped = y if bias is None else name("cropped")
    nodes.append(
        helper.make_node(
            "Slice", [name("padded"), name("zeros2"), name("hw"), name("axes_hw")], [cropped]
        )
    )
    if bias is not None:
        initializers.append(
            numpy_helper.from_array(
                bias.astype(np.float32).reshape(1, out_channels, 1, 1), name("bias")
            )
        )
        nodes.append(helper.make_node("Add", [cropped, name("bias")], [y]))
    return nodes, initializers


def _free_prefix(stem: str, taken: set) -> str:
    """``stem``, or ``stem_2``, ``stem_3``, ..., that starts no name in ``taken``."""
    prefix, k = stem, 1
    while any(name.startswith(prefix + "/") for name in taken):
        k += 1
        prefix = f"{stem}_{k}"
    return prefix


def rewrite(model, *, min_channels: int = DEFAULT_MIN_CHANNELS) -> list:
    """Replace eligible 3×3 convolutions of ``model`` (a ``ModelProto``) in place.

    Eligible: float32 weights (and bias, if any) held as initializers that are
    not also graph inputs, kernel 3×3, stride 1, dilation 1, pads 1, one group,
    at least ``min_channels`` input channels. Returns copies of the replaced
    ``Conv`` nodes, in graph order.

    Raises
    ------
    ValueError
        The model's default-domain opset is older than :data:`MIN_OPSET`.
    """
    from onnx import NodeProto, numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ValueError(f"the Winograd rewrite needs opset >= {MIN_OPSET}, not {opset}")
    graph = model.graph
    overridable = {i.name for i in graph.input}  # an initializer a caller may replace
    initializers = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in overridable
    }
    taken = {t.name for t in graph.initializer} | {n.name for n in graph.node}
    taken |= {name for n in graph.node for name in (*n.input, *n.output)}
    nodes, replaced, new_initializers = [], [], []
    used = set()
    for index, node in enumerate(graph.node):
        if not _eligible(node, initializers, min_channels):
            nodes.append(node)
            continue
        copy = NodeProto()
        copy.CopyFrom(node)
        replaced.append(copy)
        bias = initializers[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        sub_nodes, sub_initializers = _replacement(
            node,
            initializers[node.input[1]],
            bias,
            _free_prefix(f"winograd{index}", taken),
        )
        nodes.extend(sub_nodes)
        new_initializers.extend(sub_initializers)
        used.add(node.input[1])
        if bias is not None:
            used.add(node.input[2])
    if not replaced:
        return replaced
    still_used = {name for node in nodes for name in node.input}
    if any(a.g.node or a.graphs for node in nodes for a in node.attribute):
        still_used |= used  # subgraphs may read the old weights: keep them all
    kept = [t for t in graph.initializer if t.name not in used or t.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    return replaced
