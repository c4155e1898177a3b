"""What a pooling is called and how long its descriptor is.

Shared by the C++ kernels' wrappers (:mod:`microtex.features.pooling`), the
pooling heads inside exported graphs (:mod:`microtex.backbones`) and the
featurizer's column names, so the three can never disagree.
"""

from __future__ import annotations

from microtex._validation import check_choice

__all__ = ["GRAM_LAYOUTS", "GRAM_NORMALIZATIONS", "GRAPH_POOLS", "POOLS", "n_pooled_features"]

#: Every pooling of activations; ``vlad`` needs a fitted dictionary.
POOLS: tuple[str, ...] = ("mean", "max", "gram", "vlad")
#: Poolings an exported graph can compute itself (no fitted state).
GRAPH_POOLS: tuple[str, ...] = ("mean", "max", "gram")
#: ``sum``: G as is (Ling); ``spatial``: G / M (Gatys); ``lubbers``: G / (2 N M).
GRAM_NORMALIZATIONS: tuple[str, ...] = ("sum", "spatial", "lubbers")
#: ``full``: N² values row-major; ``triu``: upper triangle, off-diagonal × √2.
GRAM_LAYOUTS: tuple[str, ...] = ("full", "triu")


def n_pooled_features(
    pool: str, n_channels: int, *, layout: str = "triu", n_words: int = 32
) -> int:
    """Length of the descriptor a pooling produces for ``n_channels`` channels.

    Examples
    --------
    >>> n_pooled_features("gram", 64), n_pooled_features("vlad", 64, n_words=32)
    (2080, 2048)
    """
    check_choice("pooling", pool, POOLS)
    if pool == "gram":
        check_choice("Gram layout", layout, GRAM_LAYOUTS)
        return n_channels * (n_channels + 1) // 2 if layout == "triu" else n_channels**2
    if pool == "vlad":
        return n_words * n_channels
    return n_channels
