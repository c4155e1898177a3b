"""Deprecated: the 0.1 home of the featurizer; use ``microtex.featurize`` and friends.

Removed in 0.3. ``TextureFeaturizer`` is :mod:`microtex.features.texture`, ``featurize``
:mod:`microtex.features.api` and ``FeatureTable`` :mod:`microtex.io.table`; all three are
also ``microtex.<name>``.
"""

import warnings

from microtex.features.api import featurize
from microtex.features.plan import RAW_TAP
from microtex.features.texture import TextureFeaturizer
from microtex.io.table import FeatureTable

__all__ = ["RAW_TAP", "FeatureTable", "TextureFeaturizer", "featurize"]

warnings.warn(
    "microtex.featurizer is deprecated and will be removed in 0.3; use microtex.featurize, "
    "microtex.TextureFeaturizer and microtex.FeatureTable",
    FutureWarning,
    stacklevel=2,
)
