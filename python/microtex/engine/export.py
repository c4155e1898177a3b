"""Export any ``torch.nn.Module`` (or a scikit-learn tree ensemble) to ONNX, with metadata.

Every model microtex ships goes through :func:`export_model` (PyTorch: the
backbones; VQ-VAE and PixelCNN later) or :func:`export_forest` (scikit-learn
forests, through ``skl2onnx``); each returns an ``onnx.ModelProto``
so graph passes (:mod:`microtex.engine.winograd`) can run on it before
:func:`save_model` writes it atomically. PyTorch and ``onnx`` are imported
inside the functions that need them; ``import microtex.engine.export`` is cheap.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from microtex import _files
from microtex._validation import check_choice, check_positive_int
from microtex.engine import metadata as _metadata

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "check_export_options",
    "chain_forest",
    "export_forest",
    "export_model",
    "node_attribute",
    "require_onnx",
    "require_skl2onnx",
    "require_torch",
    "save_model",
]

logger = logging.getLogger("microtex.engine.export")

#: ``"torchscript"``: ``torch.onnx.export(..., dynamo=False)``, needing only
#: ``torch`` and ``onnx``; ``"dynamo"``: the ``torch.export`` based exporter,
#: which also needs ``onnxscript``.
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
DEFAULT_OPSET = 18

#: ``{input or output name: {axis: dimension name}}``.
DynamicAxes = Mapping[str, Mapping[int, str]]


def require_torch(what: str):
    """The ``torch`` module, or an ImportError saying that ``what`` needs the torch extra."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{what} needs PyTorch: pip install 'microtex[torch]'") from None
    return torch


def require_onnx(what: str):
    """The ``onnx`` module, or an ImportError saying that ``what`` needs the torch extra."""
    try:
        import onnx
    except ImportError:
        raise ImportError(f"{what} needs the onnx package: pip install 'microtex[torch]'") from None
    return onnx


def node_attribute(node, name: str, default: Any) -> Any:
    """The value of an ONNX node's attribute ``name`` (ints as a list, strings as bytes),
    or ``default`` when the node does not set it."""
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def require_skl2onnx(what: str):
    """The ``skl2onnx`` module, or an ImportError saying that ``what`` needs the onnx extra."""
    try:
        import skl2onnx
    except ImportError:
        raise ImportError(f"{what} needs skl2onnx: pip install 'microtex[onnx]'") from None
    return skl2onnx


def check_export_options(opset: int | None, exporter: str) -> int:
    """The opset to use (``opset`` or :data:`DEFAULT_OPSET`), after checking ``exporter``.

    Examples
    --------
    >>> check_export_options(None, "torchscript")
    18
    >>> check_export_options(17, "jit")
    Traceback (most recent call last):
    ...
    ValueError: unknown exporter 'jit'; choose one of ['torchscript', 'dynamo']
    """
    check_choice("exporter", exporter, EXPORTERS)
    return DEFAULT_OPSET if opset is None else check_positive_int("opset", int(opset))


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' deprecation chatter, console prints and log lines.

    pytest runs with warnings as errors; the TorchScript exporter warns that it
    is deprecated, the dynamo exporter prints progress, logs that torchvision
    is not installed and warns when inputs share a dynamic dimension.
    """
    torch = require_torch("ONNX export")
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    console = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(console):
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        # dynamo: inputs that share a dimension name keep one of the names (as asked)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        torch_onnx_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            torch_onnx_logger.setLevel(level)
    if console.getvalue():
        logger.debug("exporter output:\n%s", console.getvalue())


def _export_to_bytes(
    module,
    example_inputs: tuple,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: DynamicAxes,
    opset: int,
    exporter: str,
) -> bytes:
    """The serialized ONNX model of ``module`` traced on ``example_inputs``.

    ``dynamic_axes`` names the dynamic axes of inputs and outputs. The
    TorchScript exporter takes all of them; the dynamo exporter takes those of
    the inputs (positionally, so input names need not be ``forward``'s
    parameter names) and infers the outputs'.
    """
    torch = require_torch("ONNX export")
    names = {"input_names": list(input_names), "output_names": list(output_names)}
    with _quiet_exporter(), torch.no_grad():
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(
                module, example_inputs, buffer, dynamo=False, **names, opset_version=opset,
                dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
                do_constant_folding=True,
            )  # fmt: skip
            return buffer.getvalue()
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ImportError(
                "exporter='dynamo' needs the onnxscript package: pip install onnxscript"
            ) from None
        from torch.export import Dim

        dims: dict[str, Any] = {}  # one Dim per name: inputs that share a name share a size
        dynamic_shapes = tuple(
            {axis: dims.setdefault(label, Dim(label)) for axis, label in axes.items()}
            for axes in (dynamic_axes.get(name, {}) for name in input_names)
        )
        program = torch.onnx.export(
            module, example_inputs, None, dynamo=True, **names, opset_version=opset,
            dynamic_shapes=dynamic_shapes, verbose=False,
        )  # fmt: skip
        return program.model_proto.SerializeToString()


def export_model(
    module,
    example_inputs: tuple,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: DynamicAxes | None = None,
    opset: int | None = None,
    exporter: str = "torchscript",
    metadata: Mapping[str, Any] | None = None,
    doc_string: str | None = None,
):
    """Export ``module`` to an in-memory ONNX model.

    Parameters
    ----------
    module : torch.nn.Module
        In eval mode; called as ``module(*example_inputs)``.
    example_inputs : tuple of torch.Tensor
        One tensor per input; give dynamic axes sizes that no other axis has,
        so no size is specialized.
    input_names, output_names : sequence of str
        Names of the graph's inputs and outputs, in order.
    dynamic_axes : dict, optional
        ``{name: {axis: dimension name}}`` for inputs and outputs.
    opset : int, optional
        ONNX opset, default :data:`DEFAULT_OPSET`.
    exporter : {"torchscript", "dynamo"}
        See :data:`EXPORTERS`.
    metadata : dict, optional
        A document built by :func:`microtex.engine.metadata.build_document`,
        attached under the ``"microtex"`` key (see
        :func:`microtex.engine.metadata.attach`). The exporter's own
        ``metadata_props`` are dropped either way.
    doc_string : str, optional
        The model's ``doc_string``.

    Returns
    -------
    onnx.ModelProto
        Write it with :func:`save_model`.
    """
    opset = check_export_options(opset, exporter)
    require_torch("ONNX export")
    onnx = require_onnx("ONNX export")
    data = _export_to_bytes(
        module,
        tuple(example_inputs),
        list(input_names),
        list(output_names),
        dict(dynamic_axes or {}),
        opset,
        exporter,
    )
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    if metadata is not None:
        _metadata.attach(model, metadata)
    if doc_string is not None:
        model.doc_string = doc_string
    return model


def save_model(model, path: str | os.PathLike) -> pathlib.Path:
    """Write ``model`` (an ``onnx.ModelProto``) to ``path`` atomically; parents are created.

    The file appears complete or not at all (:func:`microtex._files.atomic_write_bytes`).
    """
    return _files.atomic_write_bytes(pathlib.Path(path), model.SerializeToString())


def _thresholds_rounded_down(forest):
    """A copy of ``forest`` whose split thresholds are float32 values, each rounded down.

    scikit-learn compares float32 features with float64 thresholds; ONNX's tree
    operators store float32 thresholds. Rounding each threshold t down to the
    largest float32 <= t changes no comparison ``x <= t`` of a float32 ``x``, so
    the exported trees split exactly as scikit-learn's do.
    """
    import copy

    import numpy as np

    forest = copy.deepcopy(forest)
    for tree in getattr(forest, "estimators_", [forest]):
        thresholds = tree.tree_.threshold  # a writable view of the tree's nodes
        single = thresholds.astype(np.float32)
        above = single.astype(np.float64) > thresholds
        single[above] = np.nextafter(single[above], np.float32(-np.inf))
        thresholds[:] = single.astype(np.float64)
    return forest


def export_forest(forest, n_features: int, *, input_name: str = "features",
                  metadata: Mapping[str, Any] | None = None):  # fmt: skip
    """Export a fitted scikit-learn forest classifier to an in-memory ONNX model.

    The graph takes ``input_name`` ``(batch, n_features)`` float32 and returns
    ``"label"`` (int64 class indices: fit on ``0 .. k - 1``) and
    ``"probabilities"`` ``(batch, k)`` float32, no ZipMap. Splits are exact
    (:func:`_thresholds_rounded_down`); probabilities equal scikit-learn's up to
    float32 rounding (about 1e-7).

    Raises
    ------
    ImportError
        ``skl2onnx`` is not installed (the ``onnx`` extra).
    """
    require_skl2onnx("exporting a forest")
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    n_features = check_positive_int("n_features", n_features)
    exact = _thresholds_rounded_down(forest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # version-compatibility notes of skl2onnx
        model = to_onnx(
            exact,
            initial_types=[(input_name, FloatTensorType([None, n_features]))],
            options={id(exact): {"zipmap": False}},
            target_opset={"": DEFAULT_OPSET, "ai.onnx.ml": 3},
        )
    del model.metadata_props[:]
    if metadata is not None:
        _metadata.attach(model, metadata)
    return model


def chain_forest(features_model, feature_outputs: Sequence[str], forest_model,
                 *, prefix: str = "forest/"):  # fmt: skip
    """One graph: ``features_model``'s outputs, concatenated, into ``forest_model``.

    ``feature_outputs`` are the feature model's output names in the order the
    forest was fitted on (their columns concatenated along axis 1 are its
    ``"features"`` input). The result keeps the feature model's inputs and
    gives the forest's ``"probabilities"`` (and ``"label"``); the forest's
    node and tensor names get ``prefix`` so they cannot clash. Both models
    must use the same ONNX opset (:data:`DEFAULT_OPSET`). The microtex
    metadata is a ``"chain"`` document holding both models' documents.
    """
    onnx = require_onnx("chaining a forest to a feature graph")
    from onnx import compose, helper

    features_model = onnx.ModelProto.FromString(features_model.SerializeToString())
    graph = features_model.graph
    known = {o.name for o in graph.output}
    missing = [name for name in feature_outputs if name not in known]
    if missing or not feature_outputs:
        raise ValueError(f"feature outputs {missing or list(feature_outputs)} are not outputs "
                         f"of the feature graph (it has {sorted(known)})")  # fmt: skip
    concat = "features/concat"
    graph.node.append(helper.make_node("Concat", list(feature_outputs), [concat], axis=1,
                                       name="features/concat"))  # fmt: skip
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(concat, onnx.TensorProto.FLOAT,
                                                      ["batch", "n_features"]))  # fmt: skip
    forest = compose.add_prefix(forest_model, prefix)
    opsets = {o.domain: o.version for o in features_model.opset_import}
    for entry in forest.opset_import:
        if entry.domain in opsets and opsets[entry.domain] != entry.version:
            raise ValueError(f"opset {entry.domain or 'ai.onnx'}: the feature graph has "
                             f"{opsets[entry.domain]}, the forest {entry.version}")  # fmt: skip
    documents = {}
    for key, model in (("features", features_model), ("forest", forest)):
        props = {entry.key: entry.value for entry in model.metadata_props}
        documents[key] = _metadata.parse_metadata(props, key) if props else {}
        del model.metadata_props[:]
    ir_version = max(features_model.ir_version, forest.ir_version)
    features_model.ir_version = forest.ir_version = ir_version
    (forest_input,) = [i.name for i in forest.graph.input]
    merged = compose.merge_models(features_model, forest, io_map=[(concat, forest_input)])
    for output in merged.graph.output:
        if output.name.startswith(prefix):
            _rename_output(merged.graph, output.name, output.name[len(prefix):])
    return _metadata.attach(merged, _metadata.build_document("chain", documents))


def _rename_output(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for output in graph.output:
        if output.name == old:
            output.name = new
