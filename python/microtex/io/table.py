"""Feature tables: one row per image, named columns, written to ``.npz``, ``.csv`` or ``.parquet``.

The file type follows the suffix (any case). Writes are atomic
(:func:`microtex._files.atomic_path`): a table file appears complete or not at
all. ``.parquet`` needs pyarrow (the ``parquet`` extra); :func:`check_writable`
says whether a path can be written before any work is done.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from microtex._files import atomic_path, check_can_write

__all__ = ["TABLE_SUFFIXES", "FeatureTable", "check_writable"]

#: Suffixes (lower case) a feature table can be written to and read from.
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".npz", ".csv")


def check_writable(path) -> str:
    """The lower-case suffix of ``path`` if a feature table can be written there.

    Parameters
    ----------
    path : str or os.PathLike
        The table file to write.

    Returns
    -------
    str
        One of `TABLE_SUFFIXES`.

    Raises
    ------
    ValueError
        If the suffix is not one of `TABLE_SUFFIXES`.
    ImportError
        If the suffix is ``.parquet`` and pyarrow is not installed (the message
        names the ``microtex[parquet]`` extra).
    OSError
        If ``path`` is a folder, lies under a file, or in a read-only folder.

    Examples
    --------
    >>> check_writable("out/features.NPZ")
    '.npz'
    >>> check_writable("f.xlsx")
    Traceback (most recent call last):
    ...
    ValueError: unsupported feature file type '.xlsx' for 'f.xlsx'; use .parquet, .npz or .csv
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        choices = ", ".join(TABLE_SUFFIXES[:-1]) + " or " + TABLE_SUFFIXES[-1]
        raise ValueError(
            f"unsupported feature file type {path.suffix!r} for {str(path)!r}; use {choices}"
        )
    if suffix == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ImportError(
                "writing .parquet needs pyarrow: pip install 'microtex[parquet]'"
            ) from None
    check_can_write(path)
    return suffix


def _parquet_ids(pa, ids: list):
    """The id column: text, or the file names' bytes when one is not UTF-8 (read back alike)."""
    try:
        return pa.array(ids, type=pa.string())
    except UnicodeEncodeError:
        return pa.array([os.fsencode(i) for i in ids], type=pa.binary())


@dataclasses.dataclass
class FeatureTable:
    """Features of a set of images: one row per image, named columns.

    Attributes
    ----------
    features : ndarray, shape (n_images, n_features), float32
    columns : list of str
        ``"{tap}/{pool}/{index}"``.
    ids : list of str
        Image paths (or ``"array[i]"`` for in-memory images), one per row.
    failures : list of microtex.io.ReadFailure
        Files that could not be read (skipped).
    seconds : float
        Wall time of the featurization.
    cropped : dict of str to int
        Rows removed from the bottom of each image that lost some (``crop_bottom``
        a number, or an info band found by ``crop_bottom="auto"``), by id.
        Not written to files.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> table = FeatureTable(np.eye(2, dtype=np.float32), ["raw/mean/0", "raw/max/0"], ["a", "b"])
    >>> path = table.write(pathlib.Path(tempfile.mkdtemp()) / "features.csv")
    >>> back = FeatureTable.read(path)
    >>> back.features.tolist(), back.columns, back.ids
    ([[1.0, 0.0], [0.0, 1.0]], ['raw/mean/0', 'raw/max/0'], ['a', 'b'])
    """

    features: np.ndarray
    columns: list
    ids: list
    failures: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    cropped: dict = dataclasses.field(default_factory=dict)

    def write(self, path) -> pathlib.Path:
        """Write to ``.npz``, ``.csv`` or ``.parquet`` (by suffix), atomically.

        The file appears complete or not at all: it is written under a
        temporary name in the same directory and then renamed.
        """
        path = pathlib.Path(path)
        suffix = check_writable(path)
        with atomic_path(path) as tmp:
            if suffix == ".npz":
                with open(tmp, "wb") as f:
                    np.savez(
                        f,
                        features=self.features,
                        columns=np.array(self.columns, dtype=str),
                        ids=np.array(self.ids, dtype=str),
                    )
            elif suffix == ".csv":
                # ids are file names: ones that are not UTF-8 keep their bytes
                with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
                    f.write(",".join(["image", *self.columns]) + "\n")
                    for image_id, row in zip(self.ids, self.features):
                        quoted = '"' + image_id.replace('"', '""') + '"'
                        f.write(quoted + "," + ",".join(f"{v:.9g}" for v in row) + "\n")
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                arrays = [_parquet_ids(pa, self.ids)] + [
                    pa.array(self.features[:, j]) for j in range(self.features.shape[1])
                ]
                pq.write_table(pa.Table.from_arrays(arrays, names=["image", *self.columns]), tmp)
        return path

    @classmethod
    def read(cls, path) -> FeatureTable:
        """Read a table written by :meth:`write` (``.npz``, ``.csv`` or ``.parquet``)."""
        path = pathlib.Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return cls(data["features"], [str(c) for c in data["columns"]],
                           [str(i) for i in data["ids"]])  # fmt: skip
        if suffix == ".csv":
            import csv

            with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
                rows = list(csv.reader(f))
            header, body = rows[0], rows[1:]
            features = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float32)
            return cls(
                features.reshape(len(body), len(header) - 1), header[1:], [r[0] for r in body]
            )
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            names = table.column_names
            features = np.stack([table.column(n).to_numpy() for n in names[1:]], axis=1)
            ids = [i if isinstance(i, str) else os.fsdecode(i) for i in table.column(0).to_pylist()]
            return cls(features.astype(np.float32), names[1:], ids)
        raise ValueError(f"unsupported feature file type {path.suffix!r} for {str(path)!r}")
