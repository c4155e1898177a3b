"""The JSON document every exported microtex model carries under its ``"microtex"`` key.

An ONNX file's ``metadata_props`` is a string → string map; microtex stores one
JSON object there (:data:`METADATA_KEY`), built by :func:`build_document`: the
model's ``kind`` (``"backbone"``, ...), the microtex version and whatever the
model's exporter records (configuration, weights checksum, input and output
names). The cache key of an exported file is derived from the same document
(:mod:`microtex.engine.cache`), so the two cannot drift apart.

``import microtex.engine.metadata`` is cheap: ``onnxruntime`` is imported by
:func:`read_metadata` only.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from microtex.errors import BundleError

__all__ = [
    "METADATA_KEY",
    "attach",
    "build_document",
    "parse_metadata",
    "parse_session_metadata",
    "read_metadata",
]

#: Key of the JSON document in the ONNX ``metadata_props``.
METADATA_KEY = "microtex"


def build_document(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata document of a ``kind`` of model: ``fields``, ``kind`` and ``microtex_version``.

    ``fields`` must be JSON-able; its own ``kind`` or ``microtex_version`` are
    overridden.

    Examples
    --------
    >>> document = build_document("backbone", {"opset": 18})
    >>> sorted(document), document["kind"]
    (['kind', 'microtex_version', 'opset'], 'backbone')
    """
    from microtex import __version__

    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    return {**fields, "kind": kind, "microtex_version": __version__}


def attach(model, document: Mapping[str, Any]):
    """Store ``document`` as JSON under :data:`METADATA_KEY` of ``model`` (an ``onnx.ModelProto``).

    An earlier microtex entry is replaced; other entries are kept. Returns ``model``.
    """
    kept = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(dict(document), sort_keys=True)
    return model


def parse_metadata(props: Mapping[str, str], source: str | os.PathLike) -> dict[str, Any]:
    """The microtex document in a model's custom metadata map, as a dict.

    ``props`` is what :meth:`microtex.engine.session.Session.metadata` returns
    (or ONNX Runtime's ``custom_metadata_map``); ``source`` names the file in
    error messages.

    Raises
    ------
    BundleError
        No microtex entry, or one that is not valid JSON.

    Examples
    --------
    >>> parse_metadata({"microtex": '{"kind": "backbone"}'}, "b.onnx")
    {'kind': 'backbone'}
    """
    source = os.fspath(source)
    if METADATA_KEY not in props:
        raise BundleError(f"ONNX file {source!r} has no {METADATA_KEY!r} metadata")
    try:
        return json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise BundleError(f"ONNX file {source!r} has corrupt microtex metadata: {exc}") from None


def parse_session_metadata(session) -> dict[str, Any]:
    """The microtex document of the file an open :class:`~microtex.engine.session.Session` runs.

    Reads what the session has loaded already (:func:`read_metadata` would
    load the file again). Raises :class:`~microtex.errors.BundleError` as
    :func:`parse_metadata` does.
    """
    return parse_metadata(session.metadata(), session.path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``"microtex"`` metadata JSON of an exported ONNX file, as a dict.

    The file is opened without graph optimizations, on the CPU. For a file
    already open in a :class:`~microtex.engine.session.Session`, use
    :func:`parse_session_metadata` instead.

    Raises
    ------
    BundleError
        If the file is missing, unreadable or has no microtex metadata.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise BundleError(f"ONNX file not found: {str(path)!r}")
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        props = session.get_modelmeta().custom_metadata_map
    except Exception as exc:  # noqa: BLE001  (onnxruntime's own exception types)
        raise BundleError(f"cannot read ONNX file {str(path)!r}: {exc}") from None
    return parse_metadata(props, path)
