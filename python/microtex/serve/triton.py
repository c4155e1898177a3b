"""A Triton Inference Server model repository from a featurizer or classifier bundle.

``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/model.onnx``, for the
``onnxruntime_onnx`` backend with dynamic batching:

* a ``texture-featurizer`` bundle: the backbone with its mean/max/Gram pooling
  as heads inside the graph, one output ``"{tap}/{pool}"`` per pooling;
* a ``classifier`` bundle: the same graph, its pooled features concatenated
  and fed to the forest (:func:`microtex.engine.export.chain_forest`), one
  output ``"probabilities"`` whose columns ``labels.txt`` names (Triton's
  classification extension answers class names with it).

One model rather than a Triton ensemble: the features never leave the graph,
and there is one thing to version. VLAD needs fitted words outside the graph
and is refused, as is the ``raw`` tap. Exporting the heads needs PyTorch (the
torch extra), as any export does.
"""

from __future__ import annotations

import pathlib
import re

from microtex import _files
from microtex._validation import check_choice, check_positive_int

__all__ = ["KINDS", "export_triton", "model_config"]

#: Where Triton runs the model instances.
KINDS: tuple[str, ...] = ("gpu", "cpu")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def model_config(name: str, outputs: dict[str, int], *, max_batch_size: int = 8,
                 max_queue_delay_us: int = 2000, instances: int = 1, kind: str = "gpu",
                 tensorrt_fp16: bool = False, label_files: dict[str, str] | None = None,
                 ) -> str:  # fmt: skip
    """The ``config.pbtxt`` text (Triton's ``ModelConfig`` in protobuf text format).

    ``outputs`` maps output names to their feature counts; ``label_files``
    maps an output to the file (beside ``config.pbtxt``) naming its columns.
    """
    label_files = label_files or {}
    check_positive_int("max_batch_size", max_batch_size)
    check_positive_int("instances", instances)
    check_choice("kind", kind, KINDS)
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        '  { name: "image" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }',
        "]",
        "output [",
        ",\n".join(f'  {{ name: "{out}" data_type: TYPE_FP32 dims: [ {n} ]'
                   + (f' label_filename: "{label_files[out]}"' if out in label_files else "")
                   + " }" for out, n in outputs.items()),  # fmt: skip
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: KIND_{kind.upper()} }} ]",
    ]
    if tensorrt_fp16:
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator : [ {",
            '  name : "tensorrt"',
            '  parameters { key: "precision_mode" value: "FP16" }',
            "} ] } }",
        ]
    return "\n".join(lines) + "\n"


def export_triton(bundle_dir, repository, *, name: str | None = None, max_batch_size: int = 8,
                  max_queue_delay_us: int = 2000, instances: int = 1, kind: str = "gpu",
                  tensorrt_fp16: bool = False) -> pathlib.Path:  # fmt: skip
    """Write ``repository/<name>/`` for a texture-featurizer or classifier bundle.

    Returns that folder. The model's input is ``"image"`` ``(batch, 1, H, W)``
    float32 in [0, 1], the image as the bundle's featurizer reads it.
    """
    from microtex._pools import GRAPH_POOLS
    from microtex.analysis.classify import BUNDLE_KIND as CLASSIFIER
    from microtex.analysis.classify import TextureClassifier
    from microtex.backbones import Heads, cached_onnx, feature_sizes
    from microtex.bundle import open_bundle
    from microtex.engine.export import chain_forest, require_onnx
    from microtex.features.texture import BUNDLE_KIND as FEATURIZER
    from microtex.features.texture import TextureFeaturizer

    opened = open_bundle(bundle_dir)
    if opened.kind == FEATURIZER:
        featurizer, classifier = TextureFeaturizer.from_bundle(opened), None
    elif opened.kind == CLASSIFIER:
        classifier = TextureClassifier.from_bundle(opened)
        featurizer = classifier.featurizer
    else:
        raise ValueError(f"export-triton takes a {FEATURIZER!r} or {CLASSIFIER!r} bundle; this "
                         f"one holds a {opened.kind!r}")  # fmt: skip
    plan = featurizer.pipeline_.plan
    if plan.config is None or plan.raw:
        raise ValueError("export-triton needs CNN taps only (no 'raw': it is not a graph output)")
    if not set(plan.pools) <= set(GRAPH_POOLS):
        raise ValueError("export-triton cannot put VLAD in the graph (it needs fitted words); "
                         "save a featurizer without 'vlad'")  # fmt: skip
    name = name or pathlib.Path(opened.path).name
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
    heads = Heads(pools=plan.pools, gram_normalization=plan.gram_normalization,
                  gram_layout=plan.gram_layout)  # fmt: skip
    conv_algorithm = opened.config.get("conv_algorithm") or "direct"
    if classifier is not None:
        conv_algorithm = opened.config["featurizer"].get("conv_algorithm") or "direct"
    graph = pathlib.Path(cached_onnx(plan.config, heads, conv_algorithm=conv_algorithm))
    sizes = feature_sizes(plan.config, heads)  # {"tap/pool": n}, graph output order
    outputs = {f"{tap}/{pool}": sizes[f"{tap}/{pool}"] for tap in plan.cnn_taps
               for pool in plan.pools}  # fmt: skip
    root = pathlib.Path(repository) / name
    label_files = {}
    if classifier is None:
        model_bytes = graph.read_bytes()
    else:
        onnx = require_onnx("exporting a classifier for Triton")
        forest = onnx.load_model_from_string(opened.file("forest.onnx").read_bytes())
        merged = chain_forest(onnx.load_model(str(graph)), list(outputs), forest)
        model_bytes = merged.SerializeToString()
        outputs = {"probabilities": len(classifier.classes_)}
        label_files = {"probabilities": "labels.txt"}
        _files.atomic_write_text(root / "labels.txt",
                                 "".join(f"{c}\n" for c in classifier.classes_))  # fmt: skip
    text = model_config(name, outputs, max_batch_size=max_batch_size,
                        max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind,
                        tensorrt_fp16=tensorrt_fp16, label_files=label_files)  # fmt: skip
    _files.atomic_write_bytes(root / "1" / "model.onnx", model_bytes)
    _files.atomic_write_text(root / "config.pbtxt", text)
    return root
