"""Model bundles: a directory of files plus a checksummed ``microtex.json`` manifest.

A bundle is the unit of deployment of every model microtex fits: ONNX files,
fitted state (``.npz``: VLAD words, scaler, ...) and a manifest::

    {
      "format_version": 2,
      "kind": "texture-featurizer",          # what model it holds (see register_kind)
      "kind_version": 1,
      "microtex_version": "0.2.0",
      "config": {...},                       # the model's own document
      "files": {"backbone.onnx": "<sha256>", "state.npz": "<sha256>"}
    }

:func:`save_bundle` writes into a temporary sibling directory and renames it
into place, so a failure leaves no half-written bundle. :func:`open_bundle`
verifies the format version, the kind and every checksum;
:func:`load_bundle` then builds the model through the loader its kind
registered. Nothing is ever unpickled: fitted arrays are ``.npz`` read with
``allow_pickle=False``. No PyTorch here.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import pathlib
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from microtex import _files
from microtex.errors import BundleError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Bundle",
    "check_target",
    "is_bundle",
    "kinds",
    "load_bundle",
    "load_npz",
    "npz_bytes",
    "open_bundle",
    "register_kind",
    "save_bundle",
    "save_npz",
]

FORMAT_VERSION = 2
#: Format versions this microtex reads; version 1 had no kind (its config named the class).
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "microtex.json"

FileSource = str | os.PathLike | bytes | bytearray | memoryview


# --------------------------------------------------------------------------- kinds
@dataclasses.dataclass(frozen=True)
class _Kind:
    loader: Callable[[Bundle], Any]
    version: int


_KINDS: dict[str, _Kind] = {}
# The modules that register microtex's own kinds, imported when such a bundle is
# loaded: the registry sits below the models, so it names them rather than importing them.
_BUILTIN_KINDS = {
    "texture-featurizer": "microtex.features.texture",
    "classifier": "microtex.analysis.classify",
    "generator": "microtex.generative.sample",
}
_V1_KINDS = {"TextureFeaturizer": "texture-featurizer"}
_KIND_NAME = re.compile(r"[a-z][a-z0-9-]*")


def _check_kind(name: object) -> str:
    if not isinstance(name, str) or not _KIND_NAME.fullmatch(name):
        raise ValueError(f"bundle kind must be lower-case words joined by '-', not {name!r}")
    return name


def register_kind(name: str, loader: Callable[[Bundle], Any], *, version: int = 1) -> None:
    """Make :func:`load_bundle` build bundles of kind ``name`` with ``loader(bundle)``.

    ``version`` is the kind's own layout version: a bundle written with a
    newer one is refused rather than misread.
    """
    _KINDS[_check_kind(name)] = _Kind(loader, int(version))


def kinds() -> tuple[str, ...]:
    """The bundle kinds this microtex can load."""
    return tuple(sorted({*_KINDS, *_BUILTIN_KINDS}))


def _kind(name: str) -> _Kind | None:
    if name not in _KINDS and name in _BUILTIN_KINDS:
        importlib.import_module(_BUILTIN_KINDS[name])
    return _KINDS.get(name)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle.

    Attributes
    ----------
    path : pathlib.Path
        The bundle directory (absolute).
    kind : str
        What model it holds, e.g. ``"texture-featurizer"``.
    config : dict
        The caller's configuration as saved.
    files : dict of str to pathlib.Path
        Relative name in the manifest -> absolute path.
    microtex_version : str
        Version of microtex that wrote the bundle.
    format_version : int
    """

    path: pathlib.Path
    kind: str
    config: dict[str, Any]
    files: dict[str, pathlib.Path]
    microtex_version: str
    format_version: int = FORMAT_VERSION
    kind_version: int = 1

    def file(self, name: str) -> pathlib.Path:
        """Absolute path of the bundle file ``name``; BundleError if there is none."""
        try:
            return self.files[name]
        except KeyError:
            raise BundleError(
                f"bundle {str(self.path)!r} has no file {name!r}; it has {sorted(self.files)}"
            ) from None


def _check_name(name: object) -> str:
    """A manifest file name: relative, '/'-separated, staying inside the bundle."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"bundle file names must be non-empty strings, not {name!r}")
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or any(part in ("", ".", "..") for part in parts)
        or pathlib.PurePosixPath(name).is_absolute()
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
    ):
        raise BundleError(
            f"bad bundle file name {name!r}: use a relative '/'-separated path inside the bundle"
        )
    if name == MANIFEST_NAME:
        raise BundleError(f"{MANIFEST_NAME!r} is the manifest; choose another file name")
    return name


def is_bundle(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds a ``microtex.json`` manifest (not verified)."""
    return (pathlib.Path(directory) / MANIFEST_NAME).is_file()


def check_target(directory: str | os.PathLike, overwrite: bool = False) -> bool:
    """Whether saving a bundle to ``directory`` replaces something there; raise if it may not.

    A new path or an empty folder is fine, an existing bundle only with
    ``overwrite``; anything else is a FileExistsError naming the path. Callers
    that do long work before saving check first.
    """
    target = pathlib.Path(directory)
    if not (target.exists() or target.is_symlink()):
        return False
    if not target.is_dir():
        raise FileExistsError(f"{str(target)!r} exists and is not a directory")
    if is_bundle(target):
        if not overwrite:
            raise FileExistsError(
                f"bundle {str(target)!r} already exists; pass overwrite=True to replace it"
            )
        return True
    if any(target.iterdir()):
        raise FileExistsError(
            f"{str(target)!r} exists and is not a microtex bundle (no {MANIFEST_NAME}); "
            "refusing to overwrite it"
        )
    return True  # an empty directory


def _write_source(source: FileSource, destination: pathlib.Path) -> str:
    """Copy a path or write bytes to ``destination``; return its sha256."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (bytes, bytearray, memoryview)):
        destination.write_bytes(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        source_path = pathlib.Path(source)
        if not source_path.is_file():
            raise FileNotFoundError(f"bundle source file not found: {str(source_path)!r}")
        shutil.copyfile(source_path, destination)
    else:
        raise TypeError(f"bundle file sources must be paths or bytes, not {type(source).__name__}")
    return _files.sha256_file(destination, memoize=False)


def save_bundle(
    directory: str | os.PathLike,
    files: Mapping[str, FileSource],
    config: Mapping[str, Any],
    *,
    kind: str,
    kind_version: int = 1,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a bundle directory.

    Parameters
    ----------
    directory : path-like
        The bundle to create. It must not exist, be an empty directory, or
        (with ``overwrite=True``) be an existing bundle; any other existing
        path is refused.
    files : mapping of str to path-like or bytes
        Relative name inside the bundle (``'/'``-separated, may contain
        sub-directories) -> source file to copy, or the bytes to write.
    config : mapping
        JSON-serializable configuration (backbone, taps, pooling options,
        preprocessing, ...), stored verbatim in the manifest.
    kind : str
        What model the bundle holds (lower-case words joined by ``-``); the
        loader :func:`register_kind` registered for it rebuilds the model.
    kind_version : int
        The layout version of the kind's ``config`` and files.
    overwrite : bool
        Replace an existing bundle.

    Returns
    -------
    pathlib.Path
        The bundle directory.

    Raises
    ------
    FileExistsError
        ``directory`` exists and is not an empty directory or a bundle
        ``overwrite`` allows replacing.
    BundleError
        A bad file name.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> path = save_bundle(root / "model", {"notes.txt": b"hello"}, {"n": 1}, kind="example")
    >>> opened = open_bundle(path)
    >>> opened.kind, opened.config
    ('example', {'n': 1})
    """
    from microtex import __version__

    _check_kind(kind)
    target = pathlib.Path(directory).absolute()
    names = {_check_name(name): source for name, source in files.items()}
    folders = {str(parent) for name in names for parent in pathlib.PurePosixPath(name).parents}
    if clash := sorted(folders & set(names)):
        raise BundleError(f"bundle file {clash[0]!r} is also the folder of another file")
    try:
        config_json = json.loads(json.dumps(dict(config), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"bundle config must be JSON-serializable: {exc}") from None

    with _files.atomic_directory(target, replace=check_target(target, overwrite)) as staging:
        checksums = {
            name: _write_source(source, staging / name) for name, source in sorted(names.items())
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "kind_version": int(kind_version),
            "microtex_version": __version__,
            "config": config_json,
            "files": checksums,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target


def _check_types(manifest: dict, path: pathlib.Path, *expected: tuple[str, type]) -> None:
    for key, kind in expected:
        if not isinstance(manifest.get(key), kind):
            raise BundleError(
                f"manifest {str(path)!r}: {key!r} expected a {kind.__name__}, "
                f"found {manifest.get(key)!r}"
            )


def _read_manifest(directory: pathlib.Path) -> dict[str, Any]:
    manifest_path = directory / MANIFEST_NAME
    if not directory.is_dir():
        why = "it is a file, not a folder" if directory.exists() else "no such folder"
        raise BundleError(f"no bundle at {str(directory)!r}: {why}")
    if not manifest_path.is_file():
        raise BundleError(f"bundle {str(directory)!r} has no manifest {MANIFEST_NAME!r}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(
            f"manifest {str(manifest_path)!r} is unreadable or corrupt: {exc}"
        ) from None
    if not isinstance(manifest, dict):
        raise BundleError(f"manifest {str(manifest_path)!r} is not a JSON object")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        newer = (
            f" (written by microtex {manifest.get('microtex_version')!r})"
            if type(version) is int and version > FORMAT_VERSION
            else ""
        )
        raise BundleError(
            f"manifest {str(manifest_path)!r}: format_version expected {FORMAT_VERSION} "
            f"(or {', '.join(map(str, READABLE_VERSIONS[:-1]))}), found {version!r}{newer}"
        )
    _check_types(
        manifest, manifest_path, ("config", dict), ("files", dict), ("microtex_version", str)
    )
    if version == 1:  # no kind yet: the config named the estimator class
        named = manifest["config"].get("kind")
        if not isinstance(named, str):
            raise BundleError(
                f"manifest {str(manifest_path)!r}: a format-1 bundle whose config names no "
                f"kind (config 'kind' is {named!r}); microtex cannot tell what model it holds"
            )
        manifest = {**manifest, "kind": _V1_KINDS.get(named, named), "kind_version": 1}
    _check_types(manifest, manifest_path, ("kind", str), ("kind_version", int))
    return manifest


def open_bundle(
    directory: str | os.PathLike, *, kind: str | None = None, verify: bool = True
) -> Bundle:
    """Open a bundle and verify it.

    Parameters
    ----------
    directory : path-like
    kind : str, optional
        Refuse a bundle of any other kind.
    verify : bool
        Check every file's sha256 against the manifest (default). The format
        version and the presence of every file are always checked.

    Raises
    ------
    BundleError
        Missing or corrupt manifest, unknown format version, another kind, a
        missing file or a checksum mismatch; the message names the file and
        the expected and actual values.
    """
    root = pathlib.Path(directory).absolute()
    manifest = _read_manifest(root)
    if kind is not None and manifest["kind"] != kind:
        raise BundleError(
            f"bundle {str(root)!r} holds a {manifest['kind']!r}, not a {kind!r}"
        )
    registered = _kind(manifest["kind"])
    if registered is not None and manifest["kind_version"] > registered.version:
        raise BundleError(
            f"bundle {str(root)!r}: {manifest['kind']!r} layout version "
            f"{manifest['kind_version']} is newer than this microtex reads ({registered.version}); "
            f"it was written by microtex {manifest['microtex_version']!r}"
        )
    paths: dict[str, pathlib.Path] = {}
    for name, expected in manifest["files"].items():
        _check_name(name)
        path = root / name
        if not path.is_file():
            raise BundleError(
                f"bundle {str(root)!r}: file {name!r} listed in the manifest is missing"
            )
        if verify:
            actual = _files.sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle {str(root)!r}: checksum mismatch for {name!r}: "
                    f"expected sha256 {expected}, found {actual}"
                )
        paths[name] = path
    return Bundle(
        path=root,
        kind=manifest["kind"],
        config=manifest["config"],
        files=paths,
        microtex_version=manifest["microtex_version"],
        format_version=manifest["format_version"],
        kind_version=manifest["kind_version"],
    )


def load_bundle(directory: str | os.PathLike) -> Any:
    """The model a bundle holds (e.g. a fitted ``TextureFeaturizer``), verified.

    Raises
    ------
    BundleError
        As :func:`open_bundle`, or a kind this microtex does not know, or one
        written with a newer layout of that kind.
    """
    opened = open_bundle(directory)
    kind = _kind(opened.kind)
    if kind is None:
        raise BundleError(
            f"bundle {str(opened.path)!r} holds an unknown kind {opened.kind!r}; "
            f"this microtex loads {list(kinds())}"
        )
    return kind.loader(opened)


# --------------------------------------------------------------------------- npz


def _as_plain_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    plain = {}
    for key, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"array {key!r} has dtype object; fitted state must not need pickle")
        plain[str(key)] = array
    return plain


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """The bytes of an uncompressed ``.npz`` holding ``arrays`` (no object dtypes)."""
    buffer = io.BytesIO()
    np.savez(buffer, **_as_plain_arrays(arrays))
    return buffer.getvalue()


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> pathlib.Path:
    """Write fitted arrays to ``path`` atomically; object arrays are refused.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = save_npz(pathlib.Path(tempfile.mkdtemp()) / "state.npz", {"centers": np.eye(2)})
    >>> load_npz(path)["centers"].shape
    (2, 2)
    """
    path = pathlib.Path(path)
    return _files.atomic_write_bytes(path, npz_bytes(arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file, never unpickling anything.

    Raises
    ------
    BundleError
        If the file is missing, corrupt, or holds an object array.
    """
    path = pathlib.Path(path)
    try:
        # the file is opened here so that it is closed when a damaged one fails to parse
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"cannot read fitted state {str(path)!r}: {exc}") from None
