"""Stereology of many micrographs: :func:`~microtex.features.stereology.measure` each, one
table row per image, bad files reported and skipped as ``featurize`` does."""

from __future__ import annotations

import os
import time

import numpy as np

from microtex import io as mio
from microtex._validation import check_on_error
from microtex.errors import ImageReadError, ImageTooSmallError, NoImagesError
from microtex.features.stereology import check_measure_options, measure
from microtex.io.read import report_skip
from microtex.io.table import FeatureTable

__all__ = ["stereology_table"]


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _inputs(images, crop_bottom, on_error, failures, cropped):
    """``(id, path or None, image)`` for paths and folders, an (n, h, w) array or 2-D arrays."""
    if _is_path(images) or (
        isinstance(images, (list, tuple)) and images and all(_is_path(x) for x in images)
    ):
        for path, image, info in mio.iter_images(
            images, crop_bottom=crop_bottom, on_error=on_error, failures=failures
        ):
            if info.rows_cropped:
                cropped[str(path)] = info.rows_cropped
            yield str(path), path, image
        return
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(
            f"images must be an array (n_images, height, width), a list of 2-D arrays or paths; "
            f"got an array of shape {images.shape} (measure() takes one image)"
        )
    for i, item in enumerate(images):
        if _is_path(item):
            raise TypeError("mix of paths and arrays in one input; pass one kind")
        image_id = f"array[{i}]"
        array = np.asarray(item)
        try:
            if crop_bottom is not None:
                kept, rows = mio.prepare_image(
                    mio.as_float_image(array, image_id), crop_bottom=crop_bottom, name=image_id
                )
                if rows:
                    cropped[image_id] = rows
                array = kept > 0.5 if array.dtype == np.bool_ else kept
        except (ValueError, TypeError) as exc:
            if on_error == "raise":
                raise
            report_skip(failures, image_id, str(exc))
            continue
        yield image_id, None, array


def stereology_table(images, *, crop_bottom=None, on_error: str = "skip",
                     **options) -> FeatureTable:  # fmt: skip
    """:func:`~microtex.features.stereology.measure` every image: one row per image.

    The columns are the keys of :meth:`~microtex.features.stereology.Stereology.as_dict`.

    Parameters
    ----------
    images : paths, folders, an array (n_images, height, width) or a list of 2-D arrays
        Files are read by :func:`microtex.io.iter_images`; row ids are the paths, or
        ``"array[i]"``.
    crop_bottom : None, int or "auto", optional
        Rows of instrument info band to remove before segmenting (see
        :func:`microtex.io.read_image`); an info band left in would count as a phase.
    on_error : {"skip", "raise"}, optional
        A file that cannot be read, or an image that cannot be measured (e.g. a constant
        image under Otsu, NaN), is reported in ``failures`` (and logged) and skipped, or
        raises.
    **options
        Keyword arguments of :func:`~microtex.features.stereology.measure`, the same for
        every image; checked before any image is read
        (:func:`~microtex.features.stereology.check_measure_options`).

    Returns
    -------
    microtex.io.FeatureTable
        float32 ``features`` (one row per measured image), ``columns``, ``ids``,
        ``failures``, ``seconds``, ``cropped``.

    Raises
    ------
    TypeError
        An option ``measure`` does not have.
    ValueError
        A bad option (before any image is read).
    microtex.errors.NoImagesError
        Images were given but none could be measured.

    Examples
    --------
    >>> import numpy as np
    >>> images = np.zeros((2, 8, 8), np.float32); images[:, :4] = 1.0; images[1, :, :] = 0.5
    >>> table = stereology_table(images, pixel_size_um=1.0)
    >>> table.ids, [f.path for f in table.failures]
    (['array[0]'], ['array[1]'])
    >>> float(table.features[0, table.columns.index("V_V")])
    0.5
    """
    start = time.perf_counter()
    check_on_error(on_error)
    options = check_measure_options(**options)  # every image gets the same, checked once
    failures: list = []
    cropped: dict = {}
    ids, rows, columns = [], [], None
    for image_id, path, image in _inputs(images, crop_bottom, on_error, failures, cropped):
        try:
            numbers = measure(image, **options).as_dict()
        except (ValueError, ImageTooSmallError, ImageReadError) as exc:
            if on_error == "raise":
                raise
            report_skip(failures, path if path is not None else image_id, str(exc))
            cropped.pop(image_id, None)  # the table's crops are those of its rows
            continue
        columns = columns or list(numbers)
        ids.append(image_id)
        rows.append([numbers[key] for key in columns])
    if not rows and failures:
        raise NoImagesError(
            f"no image could be measured; {len(failures)} skipped, the first "
            f"{str(failures[0].path)!r}: {failures[0].reason}", failures=failures
        )  # fmt: skip
    if columns is None:
        columns = list(_empty_columns(options))
    features = np.asarray(rows, np.float32).reshape(len(rows), len(columns))
    return FeatureTable(features, columns, ids, failures, time.perf_counter() - start, cropped)


def _empty_columns(options) -> dict:
    """The column names for a table with no rows (no images were given)."""
    phases = np.zeros((2, 2), bool)
    phases[0, 0] = True
    kept = {k: v for k, v in options.items() if k in ("pixel_size_um", "spacing")}
    return measure(phases, **kept).as_dict()
