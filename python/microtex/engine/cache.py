"""Per-configuration files in the user cache: export once, reuse while nothing changed.

A model's exporter describes what it would export in a *key document* (the
model's metadata document plus a fingerprint of the code that builds the
graph, :func:`key_document`); :func:`cached_path` names the file by the
document's hash, produces it on first use and checks it on every later use
against a sidecar JSON that records the key and the file's sha256. A file that
does not match its sidecar is produced again (logged on
``microtex.engine.cache``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from microtex import _files

__all__ = ["cached_path", "code_fingerprint", "key_digest", "key_document"]

logger = logging.getLogger("microtex.engine.cache")

#: Subdirectory of the cache directory that holds exported ONNX files.
SUBDIRECTORY = "onnx"
#: Characters of the key digest in a cached file's name.
NAME_DIGEST_LENGTH = 24


def code_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the sources in ``paths``: a change to any of them changes it.

    ``"unknown"`` when a file cannot be read (e.g. a zipped installation).
    """
    try:
        digests = [_files.sha256_file(path, memoize=False) for path in paths]
    except OSError:
        return "unknown"
    return _files.sha256_bytes(" ".join(digests).encode())


def key_document(metadata: Mapping[str, Any], graph_code_sha256: str) -> dict[str, Any]:
    """The cache key of a model: its metadata document plus the graph code's fingerprint."""
    return {**metadata, "graph_code_sha256": graph_code_sha256}


def key_digest(document: Mapping[str, Any]) -> str:
    """Hex sha256 of ``document`` as sorted JSON.

    Examples
    --------
    >>> key_digest({"b": 1, "a": [2]}) == key_digest({"a": [2], "b": 1})
    True
    """
    return _files.sha256_bytes(json.dumps(dict(document), sort_keys=True).encode())


def _problem(path: pathlib.Path, sidecar: pathlib.Path, key: str) -> str | None:
    """Why the cached ``path`` cannot be used, or None."""
    try:
        recorded = json.loads(sidecar.read_text())
        if recorded.get("key") != key:
            return "its sidecar records another configuration"
        if recorded.get("sha256") != _files.sha256_file(path):
            return "its sha256 does not match the sidecar"
    except (OSError, ValueError, AttributeError) as exc:
        return f"its sidecar {str(sidecar)!r} is missing or unreadable ({exc.__class__.__name__})"
    return None


def cached_path(
    key: Mapping[str, Any],
    prefix: str,
    produce: Callable[[pathlib.Path], Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    record: Mapping[str, Any] | None = None,
    what: str = "model",
    suffix: str = ".onnx",
    subdirectory: str = SUBDIRECTORY,
) -> pathlib.Path:
    """The cached file for ``key``, produced by ``produce(path)`` on first use.

    Parameters
    ----------
    key : dict
        JSON-able document of everything the file depends on (see
        :func:`key_document`).
    prefix : str
        Start of the file name: ``<prefix>-<24 hex digits of the key>.onnx``.
    produce : callable
        ``produce(path)`` writes the file at ``path`` (atomically: a failed
        run must leave nothing there).
    cache_dir : path-like, optional
        Default: :func:`microtex._files.cache_dir`; files go to its ``subdirectory``.
    record : dict, optional
        More JSON-able fields for the sidecar (``<file>.json``), which always
        records ``key`` (the digest) and ``sha256`` (of the file).
    what : str
        What is produced, for the log line of a first export.
    suffix : str
        File name suffix.
    subdirectory : str
        Folder of the cache directory the file goes to (``onnx`` for graphs).

    Returns
    -------
    pathlib.Path
    """
    root = pathlib.Path(cache_dir) if cache_dir is not None else _files.cache_dir()
    digest = key_digest(key)
    directory = root / subdirectory
    path = directory / f"{prefix}-{digest[:NAME_DIGEST_LENGTH]}{suffix}"
    sidecar = path.with_name(path.name + ".json")
    if path.is_file():
        reason = _problem(path, sidecar, digest)
        if reason is None:
            return path
        logger.warning("re-exporting cached file %s: %s", path, reason)
    else:
        logger.info("exporting %s to %s", what, path)
    directory.mkdir(parents=True, exist_ok=True)
    produce(path)
    document = {**(record or {}), "key": digest, "sha256": _files.sha256_file(path)}
    _files.atomic_write_bytes(sidecar, json.dumps(document, indent=1, sort_keys=True).encode())
    return path
