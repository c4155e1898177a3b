"""File helpers shared by :mod:`microtex.backbones` and :mod:`microtex.bundle`.

Checksums (memoized per path, size and modification time), the user cache
directory, and atomic writes (temporary file in the same directory, then
:func:`os.replace`). No third-party imports.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import threading

__all__ = ["atomic_write_bytes", "cache_dir", "sha256_bytes", "sha256_file", "temporary_sibling"]

_CHUNK = 1 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def cache_dir() -> pathlib.Path:
    """The user cache directory of microtex (not created here).

    ``$MICROTEX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/microtex``, else
    ``~/.cache/microtex``.
    """
    explicit = os.environ.get("MICROTEX_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "microtex"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, *, memoize: bool = True) -> str:
    """Hex sha256 of a file's bytes.

    With ``memoize`` the result is remembered per (resolved path, size,
    modification time in ns), so a large weight file is hashed once per
    process unless it changes.
    """
    path = pathlib.Path(path)
    key = None
    if memoize:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with _DIGESTS_LOCK:
            if key in _DIGESTS:
                return _DIGESTS[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if key is not None:
        with _DIGESTS_LOCK:
            _DIGESTS[key] = value
    return value


def temporary_sibling(path: str | os.PathLike, suffix: str = ".tmp") -> pathlib.Path:
    """A fresh, unused file name next to ``path`` (the file is created empty)."""
    path = pathlib.Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return pathlib.Path(name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` via a temporary sibling and :func:`os.replace`."""
    path = pathlib.Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached models are not secrets
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
