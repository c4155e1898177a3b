"""Reading micrographs and writing feature tables: the bottom of the flow.

Files become float32 gray images in ``[0, 1]``; how bit depths, colour, float
data and TIFF ``MinIsWhite`` are converted, which decoders are used and which
errors are raised is documented in :mod:`microtex.io.decode`.

* :mod:`~microtex.io.decode`: files and arrays to float32 gray.
* :mod:`~microtex.io.infoband`: the instrument info band at the bottom of SEM images.
* :mod:`~microtex.io.preprocess`: crop, resize, tile.
* :mod:`~microtex.io.read`: paths (files, folders) to images and batches.
* :mod:`~microtex.io.table`: :class:`FeatureTable`, written to ``.npz``, ``.csv`` or ``.parquet``.
* :mod:`~microtex.io.shards`: sharded Parquet datasets of resumable jobs; :func:`read_features`
  reads a table file or a dataset folder.

Everything logs on the ``"microtex.io"`` logger.
"""

from __future__ import annotations

from microtex.io.decode import as_float_image
from microtex.io.infoband import detect_info_band
from microtex.io.preprocess import prepare_image, resize_image, tile
from microtex.io.read import (
    IMAGE_EXTENSIONS,
    ImageBatch,
    ImageInfo,
    ReadFailure,
    expand_paths,
    iter_images,
    read_image,
    read_image_with_info,
    read_images,
)
from microtex.io.shards import read_features
from microtex.io.table import FeatureTable

__all__ = [
    "IMAGE_EXTENSIONS",
    "FeatureTable",
    "ImageBatch",
    "ImageInfo",
    "ReadFailure",
    "as_float_image",
    "detect_info_band",
    "expand_paths",
    "iter_images",
    "prepare_image",
    "read_image",
    "read_image_with_info",
    "read_features",
    "read_images",
    "resize_image",
    "tile",
]
