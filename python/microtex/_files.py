"""Files: checksums, the user cache directory and atomic writes.

Everything microtex writes (feature tables, reports, bundles, cached ONNX
files) appears complete or not at all: it is written under a temporary name in
the destination's directory and renamed into place with :func:`os.replace`.
No third-party imports.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Iterator

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "check_can_write",
    "remove_stale_temporaries",
    "remove_stale_temporaries_in",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 20
_DIGESTS: dict[tuple, str] = {}
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

    With ``memoize`` the result is remembered per file identity and state
    (resolved path, device, inode, size, modification and change times in
    ns), so a large weight file is hashed once per process unless it changes.
    The change time is part of it because a user can set the modification
    time back after editing a file in place, but not the change time.
    """
    path = pathlib.Path(path)
    key = None
    if memoize:
        stat = path.stat()
        key = (
            str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
            stat.st_ctime_ns,
        )  # fmt: skip
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary sibling of ``path`` to write; renamed to ``path`` when the block succeeds.

    Parent directories are created. If the block raises, the temporary file is
    removed and ``path`` is left as it was.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; nothing microtex writes is a secret
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_can_write(path: str | os.PathLike) -> pathlib.Path:
    """``path`` if a file can be created or replaced there; else an OSError naming it.

    Checked before work whose result goes there: ``path`` must not be a
    folder, its nearest existing ancestor must be a folder, and that folder
    writable.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder; name a file in it")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            f"cannot write {str(path)!r}: {str(ancestor)!r} is a file, not a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {str(path)!r}: folder {str(ancestor)!r} is read-only")
    return path


def _temporary_prefix(path: pathlib.Path) -> str:
    # the writer's pid is in the name, so a later run can tell a dead process's leftovers
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
    """Remove what writes of ``path`` left behind when their process was killed (kill -9).

    Temporaries are named ``.{name}.{pid}.{random}.tmp`` (or ``.old``); those of
    a process that no longer runs are removed, files and folders alike. An
    ``.old`` folder is the previous version a replace had moved aside: if
    ``path`` is missing (the process died between the two renames) it is put
    back instead.
    """
    path = pathlib.Path(path)
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*"):
        parts = candidate.name[len(path.name) + 2 :].split(".")
        if len(parts) != 3 or parts[2] not in ("tmp", "old") or not parts[0].isdigit():
            continue
        if _alive(int(parts[0])):
            continue
        if parts[2] == "old" and not os.path.lexists(path):
            os.rename(candidate, path)
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def remove_stale_temporaries_in(directory: str | os.PathLike) -> list[pathlib.Path]:
    """:func:`remove_stale_temporaries` for every file of ``directory`` that left some.

    A folder-wide sweep after a killed writer, when the names it was writing
    are not known (e.g. the shards of a dataset).
    """
    removed = []
    for target in sorted({_temporary_target(p) for p in pathlib.Path(directory).glob(".*.*.*.*")}
                         - {None}):  # fmt: skip
        removed.extend(remove_stale_temporaries(target))
    return removed


def _temporary_target(candidate: pathlib.Path) -> pathlib.Path | None:
    """The path whose temporary ``candidate`` is (``.{name}.{pid}.{random}.tmp|old``), or None."""
    parts = candidate.name[1:].rsplit(".", 3)
    if len(parts) != 4 or parts[3] not in ("tmp", "old") or not parts[1].isdigit():
        return None
    return candidate.with_name(parts[0])


def _sibling_directory(path: pathlib.Path, suffix: str) -> pathlib.Path:
    return pathlib.Path(
        tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=suffix, dir=path.parent)
    )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[pathlib.Path]:
    """A fresh temporary sibling directory to fill; it becomes ``path`` when the block succeeds.

    With ``replace`` an existing directory at ``path`` is swapped out (and put
    back if the swap fails). If the block raises, the temporary directory is
    removed and ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    staging = _sibling_directory(path, ".tmp")
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes 0700
        if not replace:
            os.rename(staging, path)
            return
        backup = _sibling_directory(path, ".old")
        backup.rmdir()
        os.rename(path, backup)
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(backup, path)
            raise
        if backup.is_symlink():  # path was a link to a directory: drop the link only
            backup.unlink()
        else:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`), synced to disk."""
    path = pathlib.Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
