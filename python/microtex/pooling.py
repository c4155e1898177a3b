"""Deprecated: the 0.1 home of the pooling kernels; use :mod:`microtex.features.pooling`
(mean, max, Gram) and :mod:`microtex.features.vlad` (VLAD). Removed in 0.3.
"""

import warnings

from microtex.features.pooling import (
    GRAM_LAYOUTS,
    GRAM_NORMALIZATIONS,
    POOLS,
    default_threads,
    gram,
    max_pool,
    mean_pool,
    n_pooled_features,
)
from microtex.features.vlad import fit_vlad_dictionary, vlad_encode

__all__ = [
    "GRAM_LAYOUTS",
    "GRAM_NORMALIZATIONS",
    "POOLS",
    "default_threads",
    "fit_vlad_dictionary",
    "gram",
    "max_pool",
    "mean_pool",
    "n_pooled_features",
    "vlad_encode",
]

warnings.warn(
    "microtex.pooling is deprecated and will be removed in 0.3; use microtex.features.pooling "
    "(mean, max, Gram) and microtex.features.vlad",
    FutureWarning,
    stacklevel=2,
)
