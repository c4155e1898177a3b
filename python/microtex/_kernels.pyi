"""The compiled kernels (csrc/). Call them through microtex.features.pooling / .vlad /
.spectra / microtex.analysis.distances / microtex.generative.sample, which check shapes and
dtypes; the pooling kernels take float32 or float64 (n, c, h, w) arrays, two_point
C-contiguous (n, h, w, n_phases) ones, power_spectrum C-contiguous (n, h, w) ones and int32
(h, w) bin labels, pairwise_sq_distances (n, F) ones with C-contiguous rows, PixelCNNSampler
the float32 tensors of a PixelCNN weights file."""

import numpy as np
from numpy.typing import NDArray

def simd_level() -> str: ...
def mean_max_pool(
    x: NDArray[np.floating], want_mean: bool, want_max: bool, n_threads: int = 0
) -> tuple[NDArray[np.floating] | None, NDArray[np.floating] | None]: ...
def gram(
    x: NDArray[np.floating], normalization: str, layout: str, n_threads: int = 0
) -> NDArray[np.floating]: ...
def vlad(
    x: NDArray[np.floating],
    words: NDArray[np.floating],
    intra_normalize: bool,
    signed_sqrt: bool,
    l2_normalize: bool,
    n_threads: int = 0,
) -> NDArray[np.floating]: ...
def two_point(
    data: NDArray[np.floating],
    pairs: NDArray[np.integer],
    periodic: bool,
    cutoff: int,
    mask: NDArray[np.floating] | None,
    n_threads: int = 0,
) -> NDArray[np.floating]: ...
def power_spectrum(
    images: NDArray[np.floating],
    rescale: bool,
    bins: NDArray[np.int32] | None,
    n_bins: int,
    n_threads: int = 0,
) -> NDArray[np.floating]: ...

def pairwise_sq_distances(
    a: NDArray[np.floating], b: NDArray[np.floating] | None, n_threads: int = 0
) -> NDArray[np.float64]: ...

class PixelCNNSampler:
    def __init__(self, sizes: list[int], tensors: list[NDArray[np.float32]]) -> None: ...
    def run(
        self,
        conditions: NDArray[np.float32],
        seed: int,
        first_sample: int,
        temperature: float,
        forced: NDArray[np.integer] | None,
        want_logits: bool,
        n_threads: int = 0,
    ) -> tuple[NDArray[np.int64], NDArray[np.float32] | None]: ...
