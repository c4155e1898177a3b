"""Sharded feature datasets: a folder of Parquet shards and a job manifest, resumable after a kill.

A job over a list of inputs (image paths) writes, in its folder::

    part-00000.parquet ...   one shard per ``shard_size`` inputs, written atomically: column
                             ``image``, then one column per feature (layout "columns"), or,
                             beyond 4096 features (Gram of deep layers), one fixed-size
                             list column ``features`` (layout "vector": Parquet is slow with
                             100,000 columns)
    _microtex_job.lock       locked (``flock``) while a job runs: a second job on the
                             folder fails at once instead of mixing its shards in
    _microtex_job.json       the manifest: configuration and its hash, digest of the
                             input list, shard -> inputs, rows, sha256, failures
    _inputs.json             the input list (written once, when the job starts)
    _columns.json            the feature names (written with the first shard)
    _state/                  what the job fitted and needs to resume (e.g. the
                             featurizer bundle with its VLAD words); the caller's

Shard ``k`` holds the rows of ``inputs[k * shard_size : (k + 1) * shard_size]``
(inputs that failed are listed in its ``failures`` instead). A shard file is
written under a hidden temporary name and renamed (:func:`microtex._files.atomic_path`),
then the manifest is rewritten the same way; a shard counts as done only once
the manifest lists it with its checksum. So ``kill -9`` at any moment loses no
finished shard, and what it leaves is either a hidden temporary (removed by the
next run) or a complete shard the manifest does not list yet (removed by the next
run, and redone). A shard is synced to disk before the manifest lists it. Names
starting with ``_`` or ``.`` are skipped by pyarrow's and pandas' dataset
readers, so ``pandas.read_parquet(folder)`` reads the rows and nothing else; after a
kill, only :func:`read_features` (which reads the shards the manifest lists) is sure
to agree with the manifest until the next run has cleaned up.

One job at a time: :class:`ShardedJob` holds an exclusive lock on
``_microtex_job.lock`` from its opening to :meth:`ShardedJob.close`, and another
opening raises :class:`~microtex.errors.DatasetBusyError`. The input list is
compared by resolved absolute paths, so the same files named from another folder,
or absolutely, resume the job, and other files of the same names do not.

Rerunning the same job resumes it: listed shards are verified (sha256) and
kept, the rest are computed. A job with another configuration, input list or
shard size raises :class:`~microtex.errors.DatasetMismatchError` naming what
changed, unless ``overwrite`` starts it over. Which function computes a shard
is the caller's (``featurize``, ``predict``, ``stereology``, the Ray runner):
this module owns only the layout.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Iterable

import numpy as np

from microtex._files import (
    atomic_path,
    atomic_write_text,
    remove_stale_temporaries_in,
    sha256_bytes,
    sha256_file,
)
from microtex.errors import DatasetBusyError, DatasetMismatchError
from microtex.io.read import ReadFailure
from microtex.io.table import TABLE_SUFFIXES, FeatureTable, _parquet_ids

__all__ = [
    "COLUMNS_FILE",
    "INPUTS_FILE",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "WIDE_MAX",
    "ShardedJob",
    "config_hash",
    "inputs_digest",
    "is_dataset",
    "is_dataset_target",
    "read_features",
    "run_sharded",
]

log = logging.getLogger("microtex.io")

MANIFEST_FILE = "_microtex_job.json"
INPUTS_FILE = "_inputs.json"
LOCK_FILE = "_microtex_job.lock"
_FORMAT = 1
_SHARD = re.compile(r"part-(\d{5,})\.parquet")
COLUMNS_FILE = "_columns.json"
#: Most features written one Parquet column each; wider tables go in one list column.
WIDE_MAX = 4096


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    """sha256 of a configuration's canonical JSON (sorted keys; other objects as ``str``).

    Examples
    --------
    >>> config_hash({"b": 1, "a": [2]}) == config_hash({"a": [2], "b": 1})
    True
    """
    return sha256_bytes(_canonical(config).encode("utf-8"))


def inputs_digest(inputs: Iterable[str]) -> str:
    """sha256 of an ordered input list: one resolved absolute path a line.

    Resolved, so that the same files named relatively from another folder are
    not taken for others, and ``a.png`` and ``/data/a.png`` are the same input.
    Bytes of non-UTF-8 names are kept.
    """
    text = "".join(f"{os.path.realpath(i)}\n" for i in inputs)
    return sha256_bytes(text.encode("utf-8", "surrogateescape"))


def shard_name(index: int) -> str:
    """The file name of shard ``index``: ``part-00000.parquet``."""
    return f"part-{index:05d}.parquet"


def is_dataset_target(path) -> bool:
    """Whether an output path names a dataset folder rather than a table file.

    A path that ends with a separator (``OUT/``), or an existing folder whose
    name has no table suffix (a rerun may leave the separator out).

    Examples
    --------
    >>> is_dataset_target("out/"), is_dataset_target("no-such-out"), is_dataset_target("t.npz")
    (True, False, False)
    """
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        return True
    path = pathlib.Path(text)
    return path.is_dir() and path.suffix.lower() not in TABLE_SUFFIXES


def is_dataset(path) -> bool:
    """Whether ``path`` is a sharded dataset folder (it holds a job manifest)."""
    return (pathlib.Path(path) / MANIFEST_FILE).is_file()


def _changes(old: dict, new: dict, prefix: str = "") -> str:
    """``key: old -> new`` for every entry that differs (nested dicts by dotted key)."""
    changed = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key, "(unset)"), new.get(key, "(unset)")
        if _canonical(before) == _canonical(after):
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changed.append(_changes(before, after, f"{prefix}{key}."))
        else:
            changed.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return "; ".join(changed)


def _read_json(path: pathlib.Path):
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return json.load(handle)


def _write_json(path: pathlib.Path, value) -> None:
    text = json.dumps(value, indent=1, ensure_ascii=True, default=str)
    atomic_write_text(path, text)


def _lock(directory: pathlib.Path) -> int:
    """An open descriptor holding the exclusive lock of ``directory``'s job, or DatasetBusyError.

    ``flock`` locks belong to the open file description: released by
    :func:`os.close`, or by the kernel when the process dies (kill -9 included).
    """
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatasetBusyError(
            f"dataset {str(directory)!r} is in use by another running job (it holds "
            f"{LOCK_FILE}); wait for it to finish, or write to another folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class ShardedJob:
    """The state of a sharded job in ``directory``: what is done, what is pending.

    Opening it cleans up after a killed run (stale temporaries, shards the
    manifest does not list or whose checksum is wrong) and checks that the
    folder belongs to this job.

    Parameters
    ----------
    directory : path
        The dataset folder (created if missing).
    inputs : list of str
        The job's inputs, in order (image paths).
    config : dict
        Everything that decides the rows' values (JSON-able; other objects are
        compared as ``str``). A different one refuses to resume.
    shard_size : int
        Inputs per shard.
    overwrite : bool
        Remove the folder's shards and manifest and start over.

    Raises
    ------
    microtex.errors.DatasetMismatchError
        The folder holds another job's dataset (the message names what
        differs), or files that are not a dataset's.
    microtex.errors.DatasetBusyError
        Another job has the folder open (until it ends or calls :meth:`close`).
    """

    def __init__(self, directory, inputs: list, config: dict, shard_size: int, *,
                 overwrite: bool = False):  # fmt: skip
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size!r}")
        self.directory = pathlib.Path(directory)
        self.inputs = [str(i) for i in inputs]
        self.config = json.loads(_canonical(config))
        self.shard_size = int(shard_size)
        self._columns: list | None = None
        self._lock: int | None = None
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"dataset {str(self.directory)!r} is a file, not a folder")
        try:  # before anything is written: a job that cannot write shards leaves no folder
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ImportError("a sharded dataset is Parquet, which needs pyarrow: "
                              "pip install 'microtex[parquet]'") from None  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_foreign()
        self._lock = _lock(self.directory)
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the folder's lock (the job's files stay); another job may open it."""
        fd, self._lock = getattr(self, "_lock", None), None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> ShardedJob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def _open(self, overwrite: bool) -> None:
        remove_stale_temporaries_in(self.directory)
        manifest_path = self.directory / MANIFEST_FILE
        if overwrite:
            self._clear()
        if manifest_path.is_file():
            self.manifest = _read_json(manifest_path)
            self._check_same_job()
            self._verify()
        else:
            self._clear()  # shards without a manifest: a run killed before it wrote one
            self.manifest = {
                "format": _FORMAT,
                "config_hash": config_hash(self.config),
                "config": self.config,
                "inputs_digest": inputs_digest(self.inputs),
                "n_inputs": len(self.inputs),
                "shard_size": self.shard_size,
                "layout": None,
                "n_columns": None,
                "columns_sha256": None,
                "shards": {},
            }
            _write_json(self.directory / INPUTS_FILE, self.inputs)
            self._save()

    # ------------------------------------------------------------ opening
    def _check_foreign(self) -> None:
        foreign = sorted(
            p.name for p in self.directory.iterdir()
            if not (p.name.startswith(("_", ".")) or _SHARD.fullmatch(p.name))
        )  # fmt: skip
        if foreign:
            raise DatasetMismatchError(
                f"{str(self.directory)!r} holds files that are not a microtex dataset's "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                "write the dataset to a new or empty folder"
            )

    @property
    def state_dir(self) -> pathlib.Path:
        """A folder for what the job fitted (removed with the job's files on ``overwrite``)."""
        return self.directory / "_state"

    def _clear(self) -> None:
        # the manifest first: killed halfway, what is left is shards no manifest lists
        # (removed by the next run), never listed shards without their state
        (self.directory / MANIFEST_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for path in self.directory.iterdir():
            if _SHARD.fullmatch(path.name) or path.name in (INPUTS_FILE, COLUMNS_FILE):
                path.unlink()

    def _check_same_job(self) -> None:
        old, where = self.manifest, f"dataset {str(self.directory)!r}"
        hint = "; pass --overwrite (overwrite=True) to start it over, or write to another folder"
        if old.get("format") != _FORMAT:
            raise DatasetMismatchError(f"{where} has manifest format {old.get('format')!r}, "
                                       f"this microtex writes {_FORMAT}{hint}")  # fmt: skip
        if old.get("config_hash") != config_hash(self.config):
            changes = _changes(old["config"], self.config)
            raise DatasetMismatchError(f"{where} was made with another configuration ({changes})"
                                       f"{hint}")  # fmt: skip
        if old.get("shard_size") != self.shard_size:
            raise DatasetMismatchError(f"{where} has shards of {old.get('shard_size')} inputs, "
                                       f"not {self.shard_size}{hint}")  # fmt: skip
        if old.get("inputs_digest") != inputs_digest(self.inputs):
            given = _read_json(self.directory / INPUTS_FILE)
            before = {os.path.realpath(i) for i in given}
            now = {os.path.realpath(i) for i in self.inputs}
            what = (f"{len(now - before)} inputs added, {len(before - now)} removed, or their "
                    "order changed")  # fmt: skip
            if given == self.inputs:
                what = "the same relative paths name other files from this folder"
            raise DatasetMismatchError(f"{where} was made from another input list ({what}){hint}")

    def _verify(self) -> None:
        """Keep the listed shards whose checksum holds; remove every other shard file."""
        shards = self.manifest["shards"]
        for key, entry in list(shards.items()):
            path = self.directory / entry["file"]
            if not path.is_file() or sha256_file(path, memoize=False) != entry["sha256"]:
                log.warning("shard %s is missing or does not match its checksum: redoing it", path)
                del shards[key]
        listed = {entry["file"] for entry in shards.values()}
        for path in self.directory.iterdir():
            if _SHARD.fullmatch(path.name) and path.name not in listed:
                log.info("removing %s: written by a run killed before it was recorded", path)
                path.unlink()
        self._save()

    def _save(self) -> None:
        _write_json(self.directory / MANIFEST_FILE, self.manifest)

    # ------------------------------------------------------------ running
    @property
    def n_shards(self) -> int:
        return -(-len(self.inputs) // self.shard_size)

    def shard_inputs(self, index: int) -> list:
        return self.inputs[index * self.shard_size : (index + 1) * self.shard_size]

    def pending(self) -> list[tuple[int, list]]:
        """``(index, inputs)`` of every shard not done yet, in order."""
        return [(k, self.shard_inputs(k)) for k in range(self.n_shards)
                if str(k) not in self.manifest["shards"]]  # fmt: skip

    def write_shard(self, index: int, table: FeatureTable) -> dict:
        """Write shard ``index`` (atomically) and record it; returns its manifest entry.

        ``table`` holds the rows of the shard's inputs and, in ``failures``, those
        that could not be read.
        """
        columns = list(table.columns)
        if self._columns is None or columns != self._columns:  # hashed once, not per shard
            digest = _columns_digest(columns)
            if self.manifest["layout"] is None:
                _write_json(self.directory / COLUMNS_FILE, columns)
                self.manifest.update(layout="columns" if len(columns) <= WIDE_MAX else "vector",
                                     n_columns=len(columns), columns_sha256=digest)  # fmt: skip
            elif digest != self.manifest["columns_sha256"]:
                raise ValueError(
                    f"shard {index} has {len(columns)} columns ({columns[:2]}...) that differ "
                    f"from the dataset's {self.manifest['n_columns']}"
                )
            self._columns = columns
        name = shard_name(index)
        # not fsynced: a shard that a power cut leaves short or empty fails its checksum when
        # the job next opens and is redone, and syncing every shard cost ~5 % of a job
        path, digest = _write_shard(self.directory / name, table, self.manifest["layout"])
        start = index * self.shard_size
        self.manifest["shards"][str(index)] = {
            "file": name,
            "inputs": [start, min(start + self.shard_size, len(self.inputs))],
            "rows": len(table.ids),
            "sha256": digest,
            "failures": [{"path": str(f.path), "reason": f.reason} for f in table.failures],
            "seconds": round(float(table.seconds), 6),
        }
        self._save()
        return self.manifest["shards"][str(index)]

    def record(self, key: str, value) -> None:
        """Store ``value`` under ``key`` in the manifest now (e.g. the digest of fitted state)."""
        self.manifest[key] = value
        self._save()

    @property
    def done(self) -> bool:
        return not self.pending()

    def failures(self) -> list[ReadFailure]:
        """Every input that failed, shard by shard."""
        return [ReadFailure(pathlib.Path(f["path"]), f["reason"]) for _, entry in self._entries()
                for f in entry["failures"]]  # fmt: skip

    def n_rows(self) -> int:
        return sum(entry["rows"] for _, entry in self._entries())

    def _entries(self) -> list[tuple[int, dict]]:
        return sorted((int(k), v) for k, v in self.manifest["shards"].items())


def run_sharded(job: ShardedJob, compute: Callable[[list], FeatureTable], *,
                on_shard: Callable[[int, dict], None] | None = None) -> ShardedJob:  # fmt: skip
    """Compute and write every pending shard of ``job`` with ``compute(inputs) -> FeatureTable``.

    ``on_shard(index, entry)`` is called after each shard is recorded (progress).
    An exception from ``compute`` leaves the finished shards as they are.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> def compute(paths):  # one row per input: its length
    ...     rows = np.array([[len(p)] for p in paths], np.float32)
    ...     return FeatureTable(rows, ["length"], list(paths))
    >>> folder = tempfile.mkdtemp()
    >>> job = run_sharded(ShardedJob(folder, ["a", "bb", "ccc"], {"v": 1}, 2), compute)
    >>> sorted(p.name for p in job.directory.glob("part-*"))
    ['part-00000.parquet', 'part-00001.parquet']
    >>> read_features(folder).features[:, 0].tolist()
    [1.0, 2.0, 3.0]
    """
    for index, inputs in job.pending():
        entry = job.write_shard(index, compute(inputs))
        if on_shard is not None:
            on_shard(index, entry)
    return job


def _columns_digest(columns: list) -> str:
    return sha256_bytes(_canonical([str(c) for c in columns]).encode("utf-8", "surrogateescape"))


def _write_shard(path: pathlib.Path, table: FeatureTable, layout: str) -> tuple:
    """Write a shard atomically; ``(path, sha256 of its bytes)``."""
    if layout == "columns":
        return table.write(path), sha256_file(path, memoize=False)
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    features = np.ascontiguousarray(table.features, np.float32).reshape(len(table.ids), -1)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), features.shape[1])
    # a wide shard is built in memory and hashed there, not read back from disk to hash it
    sink = pa.BufferOutputStream()
    # dictionary encoding and statistics of float features cost time and save nothing
    pq.write_table(pa.table({"image": _parquet_ids(pa, table.ids), "features": vectors}), sink,
                   use_dictionary=["image"], write_statistics=["image"])  # fmt: skip
    data = memoryview(sink.getvalue())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path, hashlib.sha256(data).hexdigest()


def _read_shard(path: pathlib.Path, layout: str, columns: list) -> FeatureTable:
    if layout == "columns":
        return FeatureTable.read(path)
    import pyarrow.parquet as pq

    data = pq.read_table(path)
    flat = data.column("features").combine_chunks().flatten().to_numpy()
    ids = [i if isinstance(i, str) else os.fsdecode(i) for i in data.column("image").to_pylist()]
    return FeatureTable(flat.reshape(len(ids), len(columns)).astype(np.float32), columns, ids)


def _iter_shard_tables(directory: pathlib.Path, manifest: dict, columns: list):
    for _, entry in sorted((int(k), v) for k, v in manifest["shards"].items()):
        table = _read_shard(directory / entry["file"], manifest["layout"], columns)
        table.failures = [ReadFailure(pathlib.Path(f["path"]), f["reason"])
                          for f in entry["failures"]]  # fmt: skip
        yield table


def read_features(path) -> FeatureTable:
    """Read a feature table: a ``.parquet``/``.npz``/``.csv`` file, or a sharded dataset folder.

    A folder's shards are read in order and concatenated (only those its
    manifest lists as done; ``failures`` are the manifest's); the dataset of a
    job still running or killed reads as the shards finished so far.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.npz"
    >>> _ = FeatureTable(np.ones((1, 1), np.float32), ["c"], ["a"]).write(path)
    >>> read_features(path).ids
    ['a']
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        return FeatureTable.read(path)
    if not is_dataset(path):
        raise FileNotFoundError(f"{str(path)!r} is a folder without a {MANIFEST_FILE}: "
                                "not a microtex dataset")  # fmt: skip
    manifest = _read_json(path / MANIFEST_FILE)
    columns = _read_json(path / COLUMNS_FILE) if manifest["layout"] else []
    tables = list(_iter_shard_tables(path, manifest, columns))
    if not tables:
        return FeatureTable(np.zeros((0, len(columns)), np.float32), list(columns), [])
    return FeatureTable(
        np.concatenate([t.features.reshape(len(t.ids), len(columns)) for t in tables]),
        list(columns),
        [i for t in tables for i in t.ids],
        [f for t in tables for f in t.failures],
        sum(entry["seconds"] for entry in manifest["shards"].values()),
    )

