"""``featurize``: a folder (or arrays) in, a feature table out, bad files reported and skipped."""

from __future__ import annotations

import time

import numpy as np

from microtex import io as mio
from microtex._validation import check_on_error
from microtex.errors import NoImagesError
from microtex.features.stream import all_paths
from microtex.features.texture import TextureFeaturizer
from microtex.io.table import FeatureTable

__all__ = ["featurize"]


def featurize(images, *, on_error: str = "skip", progress: bool = False, fit_images=None,
              featurizer: TextureFeaturizer | None = None, tile: int | None = None,
              tile_stride: int | None = None, **params) -> FeatureTable:
    """Featurize images (arrays, files or directories) into a :class:`~microtex.io.FeatureTable`.

    Parameters
    ----------
    images : array (n, h, w), list of 2-D arrays, or paths / directories
    on_error : {"skip", "raise"}
        A file that cannot be read (or is too small) is reported in the
        table's ``failures`` and skipped, or raises.
    progress : bool
        Show a progress bar (tqdm, on stderr).
    fit_images : optional
        Images to fit VLAD dictionaries on (default: ``images``).
    featurizer : TextureFeaturizer, optional
        A fitted featurizer to use instead of building one from ``params``.
    tile : int, optional
        Cut every image (after cropping and resizing) into ``tile`` x ``tile``
        patches and featurize each: one row per patch, with the id
        ``"{image id}@{row},{column}"`` (its top-left pixel). An image smaller
        than one tile is reported and skipped. VLAD words are fitted on patches too.
    tile_stride : int, optional
        Step between patch origins (default ``tile``: patches do not overlap).
    **params
        :class:`TextureFeaturizer` parameters.

    Raises
    ------
    microtex.errors.NoImagesError
        Images were given but none could be featurized (all were skipped);
        its ``failures`` lists the files and why.

    Examples
    --------
    >>> import numpy as np
    >>> table = featurize(np.ones((2, 16, 16), np.float32), taps="raw", pool="mean,max")
    >>> table.columns, table.features.tolist()
    (['raw/mean/0', 'raw/max/0'], [[1.0, 1.0], [1.0, 1.0]])
    """
    check_on_error(on_error)
    start = time.perf_counter()
    if featurizer is not None and params:
        raise TypeError(
            f"pass either a fitted featurizer or featurizer parameters, not both: {sorted(params)}"
        )
    if featurizer is None:
        # images are read here only to fit VLAD words; unreadable ones are skipped as below
        featurizer = TextureFeaturizer(**params).fit(
            images if fit_images is None else fit_images, on_error=on_error, tile=tile,
            tile_stride=tile_stride,
        )
    failures: list = []
    cropped: dict = {}
    ids, rows = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        total = len(mio.expand_paths(images)) if tile is None and all_paths(images) else None
        bar = tqdm(total=total, unit="img" if tile is None else "tile", desc="featurize",
                   leave=False)
    try:
        for batch_ids, features in featurizer.iter_features(
            images, on_error=on_error, tile=tile, tile_stride=tile_stride, failures=failures,
            cropped=cropped,
        ):
            rows.append(features)
            ids.extend(batch_ids)
            if bar is not None:
                bar.update(len(batch_ids))
    finally:
        if bar is not None:
            bar.close()
    if not rows and failures:
        raise NoImagesError(
            f"no image could be featurized; {len(failures)} skipped, the first "
            f"{str(failures[0].path)!r}: {failures[0].reason}", failures=failures
        )
    features = (np.concatenate(rows, axis=0) if rows
                else np.zeros((0, featurizer.n_features_out_), dtype=np.float32))
    return FeatureTable(features, list(featurizer.get_feature_names_out()), ids, failures,
                        time.perf_counter() - start, cropped)
