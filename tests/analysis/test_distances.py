"""Pairwise distances: the C++ kernel against direct float64 NumPy and SciPy, the streamed
path against the in-memory one, the exact zeros, and the errors."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist, squareform

from microtex import _kernels
from microtex.analysis.distances import pairwise_distances
from microtex.io import FeatureTable

from _helpers import run_python


def direct_sq(x, y=None):
    """Squared distances as differences, in float64 (no cancellation)."""
    x = np.asarray(x, np.float64)
    y = x if y is None else np.asarray(y, np.float64)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def tolerance(x, y, dtype):
    """Error bound of |x|^2 + |y|^2 - 2 x.y per pair: relative to the norms, per dtype."""
    nx = (np.asarray(x, np.float64) ** 2).sum(1)
    ny = nx if y is None else (np.asarray(y, np.float64) ** 2).sum(1)
    eps = 1e-6 if dtype == np.float32 else 1e-14
    return eps * (nx[:, None] + ny[None, :])


def features(n, n_features, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((n, n_features)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 33])
@pytest.mark.parametrize("n_features", [1, 5, 257, 1031])
def test_matches_direct_float64(dtype, n, n_features):
    x = features(n, n_features, dtype)
    y = features(n + 2, n_features, dtype, seed=1)
    for other in (None, y):
        got = pairwise_distances(x, other, squared=True)
        want = direct_sq(x, other)
        assert got.dtype == np.float64 and got.shape == want.shape
        assert np.all(np.abs(got - want) <= tolerance(x, other, dtype))
        root = pairwise_distances(x, other)
        np.testing.assert_array_equal(root, np.sqrt(got))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_blocks_and_threads(dtype):
    # 400 rows: several 192-row output blocks in the kernel and several finishing tiles
    x = features(400, 300, dtype)
    y = features(250, 300, dtype, seed=1)
    one = _kernels.pairwise_sq_distances(x, None, 1)
    two = _kernels.pairwise_sq_distances(x, None, 2)
    np.testing.assert_array_equal(one, two)  # the threads split blocks, not sums
    assert np.all(np.abs(one - direct_sq(x)) <= tolerance(x, None, dtype))
    cross = _kernels.pairwise_sq_distances(x, y, 2)
    assert np.all(np.abs(cross - direct_sq(x, y)) <= tolerance(x, y, dtype))
    # the symmetric case gives what the cross one does for X against itself
    np.testing.assert_array_equal(_kernels.pairwise_sq_distances(x, x.copy(), 2), one)


def _simd_cases():
    rng = np.random.default_rng(5)
    cases = []
    for dtype in (np.float32, np.float64):
        for n, m, n_features in ((7, 5, 5), (200, 131, 300)):
            x = rng.standard_normal((n, n_features)).astype(dtype)
            cases += [(x, None), (x, rng.standard_normal((m, n_features)).astype(dtype))]
    return cases


def test_avx2_and_avx512_tiles_agree_bit_for_bit(tmp_path, monkeypatch):
    # a machine with AVX-512 runs 12 x 32 tiles; without (or MICROTEX_NO_AVX512) 6 x 16: the
    # same sums per lane, so the same numbers (and the AVX2 path is tested here too)
    code = (
        "import numpy as np, sys\n"
        f"sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
        "from test_distances import _simd_cases\n"
        "from microtex import _kernels\n"
        "out = [_kernels.pairwise_sq_distances(x, y, 2) for x, y in _simd_cases()]\n"
        f"np.savez({str(tmp_path / 'avx2.npz')!r}, *out)\n"
    )
    monkeypatch.setenv("MICROTEX_NO_AVX512", "1")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    narrow = np.load(tmp_path / "avx2.npz")
    for k, (x, y) in enumerate(_simd_cases()):
        here = _kernels.pairwise_sq_distances(x, y, 2)
        np.testing.assert_array_equal(here, narrow[f"arr_{k}"])
        assert np.all(np.abs(here - direct_sq(x, y)) <= tolerance(x, y, x.dtype))


def test_symmetric_exact_zero_diagonal_and_symmetry():
    x = features(97, 129, np.float32) * 1e3 + 5e3
    d = pairwise_distances(x)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    np.testing.assert_array_equal(d, d.T)
    assert pairwise_distances(x, x) is not None
    np.testing.assert_array_equal(pairwise_distances(x, x), d)  # Y is X: the symmetric path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_rows_far_from_the_origin_are_zero_not_negative(dtype):
    # |x|^2 ~ 3e10 against a distance of 0: any rounding would leave +-1e4 behind
    x = (1e4 + features(20, 300, np.float64)).astype(dtype)
    x[11] = x[4]
    x[17] = x[4]
    y = x[[4, 0]].copy()
    d = pairwise_distances(x, squared=True)
    assert d[4, 11] == d[11, 4] == d[4, 17] == d[11, 17] == 0.0
    cross = pairwise_distances(x, y, squared=True)
    np.testing.assert_array_equal(cross[[4, 11, 17], 0], 0.0)
    assert cross[0, 1] == 0.0
    assert np.all(d >= 0) and np.all(cross >= 0) and not np.isnan(d).any()
    # rows that differ slightly: clamped at 0 at worst, never below
    z = x[:2].copy()
    z[1] = np.nextafter(z[0], dtype(np.inf))
    assert pairwise_distances(z, squared=True).min() >= 0


def test_scipy_parity():
    x = features(40, 77, np.float64)
    y = features(15, 77, np.float64, seed=2)
    np.testing.assert_allclose(pairwise_distances(x, y), cdist(x, y), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pairwise_distances(x), squareform(pdist(x)), rtol=1e-10,
                               atol=1e-10)  # fmt: skip
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(pairwise_distances(x32), cdist(x32, x32), rtol=1e-5, atol=1e-4)


@pytest.fixture()
def stored(tmp_path):
    x = features(57, 301, np.float32)
    path = tmp_path / "features.npy"
    np.save(path, x)
    return x, path


@pytest.mark.parametrize("memory_limit", [1, 301 * 4 * 2 * 9, 301 * 4 * 2 * 20])
def test_streaming_equals_in_memory(stored, memory_limit):
    x, path = stored
    y = features(23, 301, np.float32, seed=3)
    whole = pairwise_distances(x)
    # one row per block, 9 rows per block, 20 (uneven last block): the same numbers exactly
    np.testing.assert_array_equal(pairwise_distances(path, memory_limit=memory_limit), whole)
    memmap = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(pairwise_distances(memmap, memory_limit=memory_limit), whole)
    np.testing.assert_array_equal(
        pairwise_distances(str(path), y, memory_limit=memory_limit), pairwise_distances(x, y)
    )
    np.testing.assert_array_equal(
        pairwise_distances(y, memmap, memory_limit=memory_limit), pairwise_distances(y, x)
    )


def test_streamed_conversion_of_integers(tmp_path):
    counts = np.random.default_rng(4).integers(0, 1000, (30, 64))
    path = tmp_path / "counts.npy"
    np.save(path, counts)
    want = pairwise_distances(counts.astype(np.float64), squared=True)
    np.testing.assert_array_equal(pairwise_distances(path, squared=True, memory_limit=2000), want)
    np.testing.assert_array_equal(want, direct_sq(counts))  # integers: exact in float64


def test_dtype_policy():
    x32 = features(9, 20, np.float32)
    x64 = x32.astype(np.float64)
    # float32 with float64: both in float64
    np.testing.assert_array_equal(pairwise_distances(x32, x64), pairwise_distances(x64, x64))
    np.testing.assert_array_equal(
        pairwise_distances(x32.astype(np.float16)), pairwise_distances(x32.astype(np.float16)
                                                                        .astype(np.float32))
    )  # fmt: skip
    assert pairwise_distances([[True, False], [False, False]])[0, 1] == 1.0


def test_feature_table_and_strided_rows():
    x = features(12, 40, np.float32)
    table = FeatureTable(x, [f"raw/mean/{i}" for i in range(40)], [f"im{i}" for i in range(12)])
    np.testing.assert_array_equal(pairwise_distances(table), pairwise_distances(x))
    wide = features(12, 64, np.float32)
    rows = wide[:, :40]  # rows contiguous, row stride 64: the kernel reads them in place
    np.testing.assert_array_equal(
        _kernels.pairwise_sq_distances(rows, None, 1),
        _kernels.pairwise_sq_distances(np.ascontiguousarray(rows), None, 1),
    )
    # any layout through the wrapper
    np.testing.assert_array_equal(pairwise_distances(np.asfortranarray(x)), pairwise_distances(x))


def test_bad_inputs_name_the_value(tmp_path):
    x = features(5, 8, np.float64)
    with pytest.raises(ValueError, match=r"X must be 2-D.*\(5, 8, 1\)"):
        pairwise_distances(x[..., None])
    with pytest.raises(ValueError, match=r"same number of features.*\(5, 8\) and \(3, 7\)"):
        pairwise_distances(x, features(3, 7, np.float64))
    with pytest.raises(TypeError, match="Y has unsupported dtype complex128"):
        pairwise_distances(x, x.astype(complex))
    with pytest.raises(TypeError, match="X has unsupported dtype object"):
        pairwise_distances(np.array([[1, "a"]], dtype=object))
    with pytest.raises(ValueError, match=r"X is empty \(shape \(0, 8\)\)"):
        pairwise_distances(x[:0])
    bad = x.copy()
    bad[3, 6] = np.nan
    with pytest.raises(ValueError, match=r"X has a non-finite value \(nan\) at index \(3, 6\)"):
        pairwise_distances(bad)
    bad[3, 6] = -np.inf
    with pytest.raises(ValueError, match=r"Y has a non-finite value \(-inf\) at index \(3, 6\)"):
        pairwise_distances(x, bad)
    # streamed: the index is the row in the whole table, not in the block
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"X has a non-finite value \(-inf\) at index \(3, 6\)"):
        pairwise_distances(tmp_path / "bad.npy", memory_limit=8 * 8 * 2)
    huge = x.astype(np.float32)
    huge[2, 1] = 1e30  # finite, but its square is not a float32
    with pytest.raises(ValueError, match=r"X row 2 has values too large to square in float32"):
        pairwise_distances(huge)
    with pytest.raises(ValueError, match=r"\.npy file, got '.*features\.csv'"):
        pairwise_distances(str(tmp_path / "features.csv"))
    with pytest.raises(FileNotFoundError):
        pairwise_distances(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="memory_limit must be a positive integer, got 0"):
        pairwise_distances(x, memory_limit=0)
    with pytest.raises(ValueError, match="n_threads must be a positive integer or None, got 0"):
        pairwise_distances(x, n_threads=0)


def test_kernel_checks_what_it_relies_on():
    a32 = features(4, 6, np.float32)
    with pytest.raises(TypeError, match="same dtype; got float32 and float64"):
        _kernels.pairwise_sq_distances(a32, a32.astype(np.float64), 1)
    with pytest.raises(TypeError, match="unsupported feature dtype int64"):
        _kernels.pairwise_sq_distances(np.zeros((2, 3), np.int64), None, 1)
    with pytest.raises(ValueError, match=r"a must be 2-D.*got shape \(6,\)"):
        _kernels.pairwise_sq_distances(a32[0], None, 1)
    with pytest.raises(ValueError, match="same number of features; got 6 and 5"):
        _kernels.pairwise_sq_distances(a32, a32[:, :5].copy(), 1)
    with pytest.raises(ValueError, match="b must have C-contiguous rows"):
        _kernels.pairwise_sq_distances(a32, np.asfortranarray(a32), 1)
    bad = a32.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="b row 2 has a non-finite value"):
        _kernels.pairwise_sq_distances(a32, bad, 1)
