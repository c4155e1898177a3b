"""Label files: which image belongs to which class (and specimen, sample, ...).

A labels file is a CSV with a header: a ``path`` column (absolute, or relative
to the CSV's folder), a ``label`` column, and any further columns, any of which
can serve as groups for grouped cross-validation. Problems are found when the
file is read, before any image is featurized, and named with the CSV's line.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from collections import Counter

import numpy as np

__all__ = ["LabelTable", "read_labels"]


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """What a labels file says.

    Attributes
    ----------
    paths : list of pathlib.Path
        Image files, resolved against the CSV's folder, in file order.
    labels : numpy.ndarray of str
    groups : numpy.ndarray of str or None
        The group column asked for, else None.
    group_column : str or None
    """

    paths: list[pathlib.Path]
    labels: np.ndarray
    groups: np.ndarray | None = None
    group_column: str | None = None

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {str(k): int(v) for k, v in sorted(Counter(self.labels.tolist()).items())}


def read_labels(path: str | os.PathLike, *, groups: str | None = None, path_column: str = "path",
                label_column: str = "label") -> LabelTable:  # fmt: skip
    """Read a labels CSV and check it.

    Parameters
    ----------
    path : path-like
        The CSV file.
    groups : str, optional
        Name of the column holding each image's group.

    Raises
    ------
    ValueError
        A missing column (the message lists those present), an empty file, a
        row without a path or label, a path that is listed twice or does not
        exist, a single class, or (with ``groups``) a group with only one
        image: each named with its line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["a.png", "b.png", "c.png", "d.png"]:
    ...     _ = (folder / name).write_bytes(b"")
    >>> _ = (folder / "labels.csv").write_text(
    ...     "path,label,specimen\\na.png,ferrite,S1\\nb.png,ferrite,S1\\n"
    ...     "c.png,pearlite,S2\\nd.png,pearlite,S2\\n")
    >>> table = read_labels(folder / "labels.csv", groups="specimen")
    >>> [p.name for p in table.paths], table.counts(), table.groups.tolist()
    (['a.png', 'b.png', 'c.png', 'd.png'], {'ferrite': 2, 'pearlite': 2}, ['S1', 'S1', 'S2', 'S2'])
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise ValueError(f"cannot read labels file {str(path)!r}: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    wanted = [path_column, label_column] + ([groups] if groups is not None else [])
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(
            f"labels file {str(path)!r} has no column {missing[0]!r}; its columns are {columns}"
        )
    base = path.parent
    paths, labels, group_values, seen = [], [], [], {}
    for line, row in enumerate(reader, start=2):
        values = {c: (row.get(c) or "").strip() for c in wanted}
        empty = [c for c in wanted if not values[c]]
        if empty:
            raise ValueError(f"{path}:{line}: empty {empty[0]!r}")
        image = pathlib.Path(values[path_column])
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            why = "is a directory, not an image" if image.is_dir() else "no such image"
            raise ValueError(f"{path}:{line}: {why} {str(image)!r}")
        key = os.path.realpath(image)
        if key in seen:
            raise ValueError(f"{path}:{line}: {str(image)!r} is listed twice (line {seen[key]})")
        seen[key] = line
        paths.append(image)
        labels.append(values[label_column])
        if groups is not None:
            group_values.append(values[groups])
    if not paths:
        raise ValueError(f"labels file {str(path)!r} lists no images")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(
            f"labels file {str(path)!r}: every image is labelled {classes[0]!r}; "
            "classification needs at least two classes"
        )
    if groups is not None:
        sizes = Counter(group_values)
        single = sorted(g for g, n in sizes.items() if n == 1)
        if single:
            raise ValueError(
                f"labels file {str(path)!r}: group {single[0]!r} of column {groups!r} has only "
                f"one image ({len(single)} such groups); a grouped split of single images is an "
                "image-level split: merge such groups or leave --groups out"
            )
    return LabelTable(
        paths=paths,
        labels=np.asarray(labels),
        groups=None if groups is None else np.asarray(group_values),
        group_column=groups,
    )
