"""Training patches for the generative model: micrographs + a conditions CSV → a :class:`PatchSet`.

DESIGN.md §1 (Noguchi row) and §8. Every source image listed in a conditions
file is read as float32 gray in [0, 1] (:mod:`microtex.io.read`, optionally
cropping an SEM info band), cut into ``patch_size`` × ``patch_size`` patches
every ``stride`` pixels (:func:`microtex.io.preprocess.tile`), each patch
followed by its horizontal mirror image, and scaled to [-1, 1] (``2 x - 1``).
Every patch carries its source image's condition vector.

The train/validation split is made **by source image** (:meth:`PatchSet.split`):
overlapping patches of one micrograph are nearly the same data, so a patch
split would let validation measure memory rather than generalization.

A conditions file is a CSV with a header: a ``path`` column (absolute, or
relative to the image folder, or to the CSV's folder when no image folder is
given) and one or more numeric condition columns named by the caller, e.g.
``ln_cooling_rate``, or ``anneal_temp_kK,ln_time_h``. Conditions enter the
PixelCNN through a linear layer without normalization: give them on a scale
of order one (a logarithm, a temperature in 1000 K).

NumPy only: the torch side is :mod:`microtex.generative.train`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from microtex._validation import CropBottom, check_bool, check_crop_bottom, check_positive_int
from microtex.errors import ImageReadError, ImageTooSmallError, NoImagesError
from microtex.io.preprocess import tile
from microtex.io.read import ReadFailure, expand_paths, read_image, report_skip

__all__ = [
    "ConditionTable",
    "PatchSet",
    "load_patch_set",
    "patches_from_image",
    "read_conditions",
    "read_listed_images",
    "split_sources",
]

logger = logging.getLogger("microtex.generative")


# --------------------------------------------------------------------------- conditions file


@dataclasses.dataclass(frozen=True)
class ConditionTable:
    """What a conditions file says.

    Attributes
    ----------
    paths : list of pathlib.Path
        Image files, resolved against the base folder, in file order (not
        checked for existence: reading reports and skips a missing one).
    values : numpy.ndarray
        float32 ``(n_images, n_conditions)``, every value finite.
    columns : tuple of str
        The condition columns, in the order of ``values``' columns.
    lines : list of int
        The CSV line of each image (the header is line 1).
    """

    paths: list[pathlib.Path]
    values: np.ndarray
    columns: tuple[str, ...]
    lines: list[int]


def _check_columns(columns: str | Sequence[str], path_column: str) -> tuple[str, ...]:
    items = columns.split(",") if isinstance(columns, str) else list(columns)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"columns must be names (strings), got {columns!r}")
    names = tuple(item.strip() for item in items if item.strip())
    if not names:
        raise ValueError(f"name at least one condition column, got {columns!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated condition column in {list(names)}")
    if path_column in names:
        raise ValueError(f"{path_column!r} is the path column, not a condition column")
    return names


def _parse_number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} is {text!r}, not a number") from None
    if not math.isfinite(value):  # float() reads "nan" and "inf"
        raise ValueError(f"{where}: {column} is {text!r}; conditions must be finite numbers")
    return value


def read_conditions(path: str | os.PathLike, columns: str | Sequence[str], *,
                    base: str | os.PathLike | None = None,
                    path_column: str = "path") -> ConditionTable:  # fmt: skip
    """Read a conditions CSV and check it.

    Parameters
    ----------
    path : path-like
        The CSV file (UTF-8, a header line).
    columns : str or sequence of str
        The condition columns, as names or one comma-separated string.
    base : path-like, optional
        Folder that relative image paths are relative to; default the CSV's folder.
    path_column : str
        The column of image paths.

    Returns
    -------
    ConditionTable

    Raises
    ------
    ValueError
        An unreadable or empty file, a missing column (the message lists those
        present), an empty cell, a value that is not a finite number (NaN,
        inf, text) or a path listed twice: each named with its CSV line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "c.csv").write_text("path,ln_t,T\\na.png,2.5,0.75\\nb.png,3.25,0.75\\n")
    >>> table = read_conditions(folder / "c.csv", "ln_t,T")
    >>> [p.name for p in table.paths], table.values.tolist(), table.lines
    (['a.png', 'b.png'], [[2.5, 0.75], [3.25, 0.75]], [2, 3])
    >>> _ = (folder / "bad.csv").write_text("path,ln_t\\na.png,2.1\\nb.png,nan\\n")
    >>> read_conditions(folder / "bad.csv", ["ln_t"])
    Traceback (most recent call last):
    ...
    ValueError: .../bad.csv:3: ln_t is 'nan'; conditions must be finite numbers
    """
    names = _check_columns(columns, path_column)
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise ValueError(f"cannot read conditions file {str(path)!r}: "
                         f"{exc.strerror or exc}") from None  # fmt: skip
    reader = csv.DictReader(text.splitlines())
    present = reader.fieldnames or []
    for column in (path_column, *names):
        if column not in present:
            raise ValueError(f"conditions file {str(path)!r} has no column {column!r}; "
                             f"its columns are {present}")  # fmt: skip
    folder = path.parent if base is None else pathlib.Path(base)
    paths, rows, lines, seen = [], [], [], {}
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        cells = {column: (row.get(column) or "").strip() for column in (path_column, *names)}
        empty = [column for column, cell in cells.items() if not cell]
        if empty:
            raise ValueError(f"{where}: empty {empty[0]!r}")
        image = pathlib.Path(cells[path_column])
        image = image if image.is_absolute() else folder / image
        key = os.path.realpath(image)
        if key in seen:
            raise ValueError(f"{where}: {str(image)!r} is listed twice (line {seen[key]})")
        seen[key] = line
        paths.append(image)
        rows.append([_parse_number(cells[column], where, column) for column in names])
        lines.append(line)
    if not paths:
        raise ValueError(f"conditions file {str(path)!r} lists no images")
    return ConditionTable(paths, np.asarray(rows, dtype=np.float32), names, lines)


# --------------------------------------------------------------------------- patches


def patches_from_image(image, patch_size: int, stride: int, *,
                       flips: bool = True) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Cut one gray image in [0, 1] into training patches in [-1, 1].

    Parameters
    ----------
    image : array_like, shape (height, width)
        Values in [0, 1]; at least ``patch_size`` on each side.
    patch_size, stride : int
        Patches start at rows and columns ``0, stride, 2 stride, ...``; one
        that would run past the right or bottom edge is left out
        (:func:`microtex.io.preprocess.tile`).
    flips : bool
        Follow the patches with their horizontal mirror images (columns reversed).

    Returns
    -------
    patches : numpy.ndarray
        float32 ``(n, patch_size, patch_size)``, ``2 x - 1``: the unflipped
        patches in row-major order of their origins, then (with ``flips``)
        their mirror images in the same order.
    origins : numpy.ndarray
        int64 ``(n, 2)``: ``(row, column)`` of each patch's top-left pixel in the image.
    flipped : numpy.ndarray
        bool ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]], np.float32)
    >>> patches, origins, flipped = patches_from_image(image, 2, 1)
    >>> patches[0].tolist(), patches[2].tolist()  # the first patch and its mirror image
    ([[-1.0, 0.0], [1.0, 0.0]], [[0.0, -1.0], [0.0, 1.0]])
    >>> origins.tolist(), flipped.tolist()
    ([[0, 0], [0, 1], [0, 0], [0, 1]], [False, False, True, True])
    """
    flips = check_bool("flips", flips)
    patches, origins = tile(np.asarray(image, dtype=np.float32), patch_size, stride)
    flipped = np.zeros(len(patches), dtype=bool)
    if flips:
        patches = np.concatenate([patches, patches[:, :, ::-1]])
        origins = np.concatenate([origins, origins])
        flipped = np.concatenate([flipped, ~flipped])
    # 2 x - 1 in float32: 0 → -1, 0.5 → 0, 1 → 1 exactly
    scaled = np.ascontiguousarray(patches, dtype=np.float32) * np.float32(2.0) - np.float32(1.0)
    return scaled, origins, flipped


def split_sources(n_sources: int, validation: float | Sequence[int], *,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Source indices on each side of a train/validation split.

    Parameters
    ----------
    n_sources : int
        Number of source images, at least 2.
    validation : float or sequence of int
        A fraction in (0, 1): ``round(fraction · n_sources)`` sources, at least
        one and at most ``n_sources - 1``, drawn with ``seed``; or the indices
        of the validation sources.
    seed : int
        Seed of the draw (:func:`numpy.random.default_rng`).

    Returns
    -------
    train, validation : numpy.ndarray
        Sorted int64 source indices; together every source exactly once.

    Raises
    ------
    ValueError
        Fewer than two sources, a fraction outside (0, 1), an index out of
        range or repeated, or a list that leaves no source on one side.

    Examples
    --------
    >>> train, validation = split_sources(5, [1, 3])
    >>> train.tolist(), validation.tolist()
    ([0, 2, 4], [1, 3])
    >>> [len(side) for side in split_sources(10, 0.2, seed=0)]
    [8, 2]
    """
    n_sources = int(n_sources)
    if n_sources < 2:
        raise ValueError(f"a train/validation split by source image needs at least 2 source "
                         f"images, got {n_sources}")  # fmt: skip
    if isinstance(validation, (float, np.floating)) and not isinstance(validation, bool):
        fraction = float(validation)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {validation!r}")
        n_validation = min(max(round(fraction * n_sources), 1), n_sources - 1)
        rng = np.random.default_rng(seed)
        held = np.sort(rng.choice(n_sources, size=n_validation, replace=False))
    else:
        try:
            held = np.asarray(list(validation), dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"validation must be a fraction in (0, 1) or a list of source "
                             f"indices, got {validation!r}") from None  # fmt: skip
        if held.size and (held.min() < 0 or held.max() >= n_sources):
            raise ValueError(f"validation source index out of range [0, {n_sources}): "
                             f"{held.tolist()}")  # fmt: skip
        if len(np.unique(held)) != held.size:
            raise ValueError(f"repeated validation source in {held.tolist()}")
        if not 0 < held.size < n_sources:
            raise ValueError(f"the validation list must leave at least one source image on each "
                             f"side; it holds {held.size} of {n_sources}")  # fmt: skip
        held = np.sort(held)
    train = np.setdiff1d(np.arange(n_sources), held)
    return train.astype(np.int64), held.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class PatchSet:
    """Training patches, their conditions and where each came from.

    Attributes
    ----------
    patches : numpy.ndarray
        float32 ``(n, 1, patch_size, patch_size)`` in [-1, 1].
    conditions : numpy.ndarray
        float32 ``(n, n_conditions)``: the source image's conditions.
    source : numpy.ndarray
        int64 ``(n,)``: index into ``sources`` of each patch.
    origins : numpy.ndarray
        int64 ``(n, 2)``: top-left ``(row, column)`` of each patch in its (cropped) source.
    flipped : numpy.ndarray
        bool ``(n,)``: the patch is a horizontal mirror image.
    sources : tuple of pathlib.Path
        The source images that gave patches.
    source_conditions : numpy.ndarray
        float32 ``(n_sources, n_conditions)``.
    condition_names : tuple of str
    patch_size, stride : int
    validation_sources : tuple of int
        Indices into ``sources`` held out for validation (empty until :meth:`split`).
    failures : tuple of ReadFailure
        Files left out (unreadable, smaller than a patch, not listed), with the reason.
    settings : dict
        How the set was made (``flips``, ``crop_bottom``), for a run's record.
    """

    patches: np.ndarray
    conditions: np.ndarray
    source: np.ndarray
    origins: np.ndarray
    flipped: np.ndarray
    sources: tuple[pathlib.Path, ...]
    source_conditions: np.ndarray
    condition_names: tuple[str, ...]
    patch_size: int
    stride: int
    validation_sources: tuple[int, ...] = ()
    failures: tuple[ReadFailure, ...] = ()
    settings: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def n_conditions(self) -> int:
        """Length of a condition vector."""
        return len(self.condition_names)

    @property
    def train_sources(self) -> tuple[int, ...]:
        """Indices into ``sources`` of the training side."""
        held = set(self.validation_sources)
        return tuple(i for i in range(len(self.sources)) if i not in held)

    @property
    def is_validation(self) -> np.ndarray:
        """bool ``(n,)``: the patch comes from a validation source."""
        return np.isin(self.source, np.asarray(self.validation_sources, dtype=np.int64))

    @property
    def train_indices(self) -> np.ndarray:
        """int64 indices of the training patches."""
        return np.flatnonzero(~self.is_validation)

    @property
    def validation_indices(self) -> np.ndarray:
        """int64 indices of the validation patches."""
        return np.flatnonzero(self.is_validation)

    def condition_range(self) -> list[list[float]]:
        """``[low, high]`` of each condition over the training side's source images."""
        values = self.source_conditions[list(self.train_sources)].astype(np.float64)
        return [[float(low), float(high)] for low, high in zip(values.min(0), values.max(0))]

    def split(self, validation: float | Sequence = 0.2, *, seed: int = 0) -> PatchSet:
        """The same patches with source images held out for validation.

        Parameters
        ----------
        validation : float or sequence
            A fraction in (0, 1) of the source images, drawn with ``seed``
            (:func:`split_sources`); or the validation images, each named by
            its path or its file name, or by its index in ``sources``.
        seed : int

        Returns
        -------
        PatchSet
            With ``validation_sources`` set; no source is on both sides.

        Raises
        ------
        ValueError
            Fewer than two source images (the message says how many files
            were left out and why), a name that is not a source (or one that
            fits several), or a split with an empty side.
        """
        if len(self.sources) < 2:
            skipped = "".join(f"; {f.path}: {f.reason}" for f in self.failures)
            raise ValueError(f"a train/validation split by source image needs at least 2 source "
                             f"images, got {len(self.sources)}{skipped}")  # fmt: skip
        if isinstance(validation, (str, os.PathLike, int, np.integer)):
            raise ValueError(f"validation must be a fraction in (0, 1) or a list of images, "
                             f"got {validation!r}")  # fmt: skip
        if not isinstance(validation, (float, np.floating)):
            validation = [self._source_index(entry) for entry in validation]
        _, held = split_sources(len(self.sources), validation, seed=seed)
        return dataclasses.replace(self, validation_sources=tuple(int(i) for i in held))

    def _source_index(self, entry) -> int:
        if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
            return int(entry)
        text = os.fspath(entry)
        real = os.path.realpath(text)
        matches = [i for i, p in enumerate(self.sources)
                   if os.path.realpath(p) == real or p.name == text]  # fmt: skip
        if len(matches) != 1:
            why = "is not a source image" if not matches else "names several source images"
            names = [p.name for p in self.sources]
            raise ValueError(f"validation image {text!r} {why}; the sources are {names}")
        return matches[0]

    def describe(self) -> dict:
        """A JSON-able record of the set: sources, conditions, sizes, split, files left out."""
        held = set(self.validation_sources)
        return {
            "condition_names": list(self.condition_names),
            "patch_size": self.patch_size,
            "stride": self.stride,
            **self.settings,
            "n_patches": len(self),
            "n_train_patches": int(len(self.train_indices)),
            "n_validation_patches": int(len(self.validation_indices)),
            "sources": [
                {"path": str(path), "conditions": [float(v) for v in self.source_conditions[i]],
                 "patches": int(np.count_nonzero(self.source == i)),
                 "side": "validation" if i in held else "train"}
                for i, path in enumerate(self.sources)
            ],
            "condition_range": self.condition_range(),
            "skipped": [[str(f.path), f.reason] for f in self.failures],
        }  # fmt: skip


def read_listed_images(table: ConditionTable, *, crop_bottom=None, failures: list):
    """``(path, condition row, image)`` of each readable image a conditions table lists.

    A directory or an unreadable file is reported (``io.read.report_skip``
    into ``failures``) and skipped; images are float32 in [0, 1].
    """
    for path, row in zip(table.paths, table.values):
        if path.is_dir():
            report_skip(failures, path, "is a directory, not an image")
            continue
        try:
            image = read_image(path, crop_bottom=crop_bottom)
        except (ImageReadError, ImageTooSmallError) as exc:
            report_skip(failures, path, getattr(exc, "reason", str(exc)))
            continue
        yield path, row, image


def load_patch_set(conditions: str | os.PathLike, columns: str | Sequence[str], *,
                   image_dir: str | os.PathLike | None = None, patch_size: int = 128,
                   stride: int = 64, flips: bool = True, crop_bottom: CropBottom = None,
                   path_column: str = "path") -> PatchSet:  # fmt: skip
    """Read the images a conditions file lists and cut them into training patches.

    Parameters
    ----------
    conditions : path-like
        The conditions CSV (:func:`read_conditions`).
    columns : str or sequence of str
        Its condition columns.
    image_dir : path-like, optional
        Folder that relative paths in the CSV are relative to (default: the
        CSV's folder). Its image files that the CSV does not list are
        reported and left out (they have no condition).
    patch_size, stride : int
        Patch side (128) and step between patch origins (64).
    flips : bool
        Add each patch's horizontal mirror image.
    crop_bottom : None, int or "auto"
        Rows to remove at the bottom of each image before cutting (an SEM
        info band), as :func:`microtex.io.read.read_image` does.
    path_column : str

    Returns
    -------
    PatchSet
        Sources in the CSV's order; no split yet (:meth:`PatchSet.split`).

    Raises
    ------
    ValueError
        A bad conditions file (:func:`read_conditions`) or option.
    microtex.errors.NoImagesError
        No listed image gave a patch; ``failures`` says why for each file.

    Notes
    -----
    A listed file that cannot be read (missing, corrupt), that is smaller
    than one patch after cropping, or whose crop takes all its rows is
    reported (a warning on the ``"microtex.io"`` logger) and left out; the
    reasons are in :attr:`PatchSet.failures`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["a.png", "b.png"]:
    ...     Image.fromarray(np.zeros((12, 16), np.uint8)).save(folder / name)
    >>> _ = (folder / "c.csv").write_text("path,ln_t\\na.png,1.0\\nb.png,2.5\\n")
    >>> patches = load_patch_set(folder / "c.csv", "ln_t", patch_size=8, stride=4)
    >>> patches.patches.shape, patches.conditions[-1].tolist(), float(patches.patches.min())
    ((24, 1, 8, 8), [2.5], -1.0)
    >>> patches.split([pathlib.Path(folder / "b.png")]).validation_indices.tolist()[:3]
    [12, 13, 14]
    """
    patch_size = check_positive_int("patch_size", patch_size)
    stride = check_positive_int("stride", stride)
    flips = check_bool("flips", flips)
    crop_bottom = check_crop_bottom(crop_bottom)
    table = read_conditions(conditions, columns, base=image_dir, path_column=path_column)
    failures: list[ReadFailure] = []
    if image_dir is not None:
        listed = {os.path.realpath(p) for p in table.paths}
        for path in expand_paths(image_dir):
            if os.path.realpath(path) not in listed:
                report_skip(failures, path, f"not listed in {os.fspath(conditions)!r}")
    chunks, sources, values = [], [], []
    for path, row, image in read_listed_images(table, crop_bottom=crop_bottom, failures=failures):
        height, width = image.shape
        if height < patch_size or width < patch_size:
            report_skip(failures, path, f"{height}×{width} is smaller than one "
                                        f"{patch_size}×{patch_size} patch")  # fmt: skip
            continue
        chunks.append(patches_from_image(image, patch_size, stride, flips=flips))
        sources.append(path)
        values.append(row)
    if not sources:
        raise NoImagesError(f"no image listed in {os.fspath(conditions)!r} gave a "
                            f"{patch_size}×{patch_size} patch", failures)  # fmt: skip
    counts = [len(chunk[0]) for chunk in chunks]
    source = np.repeat(np.arange(len(sources), dtype=np.int64), counts)
    source_conditions = np.stack(values).astype(np.float32)
    return PatchSet(
        patches=np.concatenate([chunk[0] for chunk in chunks])[:, None],
        conditions=source_conditions[source],
        source=source,
        origins=np.concatenate([chunk[1] for chunk in chunks]),
        flipped=np.concatenate([chunk[2] for chunk in chunks]),
        sources=tuple(sources),
        source_conditions=source_conditions,
        condition_names=table.columns,
        patch_size=patch_size,
        stride=stride,
        failures=tuple(failures),
        settings={"flips": flips, "crop_bottom": crop_bottom},
    )
