"""Two-point statistics: brute-force sums, closed forms, the NumPy reference and PyMKS."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from microtex.features.spectra import (
    TwoPointCorrelation,
    max_cutoff,
    radial_average,
    two_point,
    two_point_reference,
)


def brute_force(a, b, c, periodic, mask=None):
    """sum_x M(x) M(x+r) a(x) b(x+r) / sum_x M(x) M(x+r), offset by offset."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    H, W = a.shape
    m = np.ones((H, W)) if mask is None else np.asarray(mask, float)
    out = np.empty((2 * c + 1, 2 * c + 1))
    for dr in range(-c, c + 1):
        for dc in range(-c, c + 1):
            num = den = 0.0
            for y in range(H):
                for x in range(W):
                    y2, x2 = y + dr, x + dc
                    if periodic:
                        y2, x2 = y2 % H, x2 % W
                    elif not (0 <= y2 < H and 0 <= x2 < W):
                        continue
                    num += m[y, x] * m[y2, x2] * a[y, x] * b[y2, x2]
                    den += m[y, x] * m[y2, x2]
            out[dr + c, dc + c] = num / den if den > 0 else np.nan
    return out


def indicators(shape, fraction=0.4, seed=0, dtype=np.float64):
    return (np.random.default_rng(seed).random(shape) < fraction).astype(dtype)


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("shape", [(9, 8), (10, 13), (7, 7)])
def test_equals_the_brute_force_sum_over_shifts(periodic, shape):
    a = indicators(shape, seed=1)
    b = indicators(shape, 0.6, seed=2)
    c = max_cutoff(*shape)
    data = np.stack([a, b], axis=-1)[None]
    out = two_point(data, [(0, 0), (0, 1), (1, 0)], periodic_boundary=periodic)
    np.testing.assert_allclose(out[0, ..., 0], brute_force(a, a, c, periodic), atol=1e-12)
    np.testing.assert_allclose(out[0, ..., 1], brute_force(a, b, c, periodic), atol=1e-12)
    # S_ab(r) = S_ba(-r)
    np.testing.assert_allclose(out[0, ..., 2], out[0, ::-1, ::-1, 1], atol=1e-12)


@pytest.mark.parametrize("periodic", [True, False])
def test_a_mask_weights_pairs_as_the_brute_force_sum(periodic):
    a = indicators((11, 9), seed=3)
    mask = np.random.default_rng(4).random((11, 9))
    mask[:, :3] = 0  # a scale bar: nothing there counts
    out = two_point(a, periodic_boundary=periodic, cutoff=4, mask=mask)
    np.testing.assert_allclose(out, brute_force(a, a, 4, periodic, mask), atol=1e-12)


def test_offsets_without_a_valid_pair_are_nan():
    a = indicators((9, 12), seed=5)
    mask = np.zeros((9, 12))
    mask[:, :2] = 1  # only two columns count: offsets of 2+ columns have no pair
    out = two_point(a, periodic_boundary=False, cutoff=3, mask=mask)
    assert np.isnan(out[:, [0, 6]]).all() and np.isfinite(out[:, 2:5]).all()
    np.testing.assert_allclose(out[:, 2:5], brute_force(a, a, 3, False, mask)[:, 2:5], atol=1e-12)


def test_stripes_have_their_closed_form():
    # vertical stripes 3 on, 5 off: V = 3/8; along columns S2 is the overlap of a
    # shifted stripe pattern, along rows it is V
    phase = np.zeros((16, 24))
    phase[:, (np.arange(24) % 8) < 3] = 1
    out = two_point(phase, cutoff=7)
    assert out[7, 7] == pytest.approx(3 / 8)
    for d in range(8):
        overlap = max(0, 3 - min(d, 8 - d))
        assert out[7, 7 + d] == pytest.approx(overlap / 8)
        assert out[7 + d, 7] == pytest.approx(3 / 8)


def test_volume_fraction_at_zero_and_its_square_far_away():
    data = indicators((4, 128, 128), 0.3, seed=6)
    out = two_point(data, periodic_boundary=False, cutoff=20)
    fraction = data.mean(axis=(1, 2))
    np.testing.assert_allclose(out[:, 20, 20], fraction, rtol=1e-6)
    far = out[:, :, :][:, np.abs(np.arange(-20, 21))[:, None] + np.zeros(41) > 5]
    # uncorrelated pixels: S2(r != 0) = V^2 up to sampling noise (~ V sqrt(1/N))
    np.testing.assert_allclose(far.mean(axis=1), fraction**2, atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape", [(3, 16, 16, 2), (2, 17, 13, 3), (2, 26, 21, 2), (1, 37, 30, 1), (5, 12, 10, 2)]
)
@pytest.mark.parametrize("periodic", [True, False])
def test_the_kernel_equals_the_numpy_reference(dtype, shape, periodic):
    rng = np.random.default_rng(7)
    data = rng.random(shape).astype(dtype)  # volume fractions, not only 0/1
    pairs = [(i, j) for i in range(shape[-1]) for j in range(shape[-1])]
    cutoff = max_cutoff(*shape[1:3]) - 1
    out = two_point(data, pairs, periodic_boundary=periodic, cutoff=cutoff)
    ref = two_point_reference(data, pairs, periodic_boundary=periodic, cutoff=cutoff)
    window = 2 * cutoff + 1
    assert out.dtype == dtype and out.shape == (shape[0], window, window, len(pairs))
    np.testing.assert_allclose(out, ref, atol=2e-6 if dtype == np.float32 else 1e-13)
    single = two_point(data, pairs, periodic_boundary=periodic, cutoff=cutoff, n_threads=1)
    np.testing.assert_array_equal(single, out)


def test_shapes_dtypes_and_the_default_correlations():
    a = indicators((10, 12), seed=8)
    assert two_point(a).shape == (9, 9)
    assert two_point(a[None].repeat(3, 0), cutoff=2).shape == (3, 5, 5)
    one_hot = np.stack([a, 1 - a, np.zeros_like(a)], axis=-1)[None]
    out = two_point(one_hot, cutoff=2)
    assert out.shape == (1, 5, 5, 3)  # (0, 0), (0, 1), (0, 2)
    np.testing.assert_allclose(out[..., 0] + out[..., 1], a.mean(), atol=1e-12)  # sums to V_0
    assert np.all(out[..., 2] == 0)
    assert two_point(a.astype(bool)).dtype == np.float32
    assert two_point(a.astype(np.uint8)).dtype == np.float32
    assert two_point(a.astype(np.int64)).dtype == np.float64


def test_a_cutoff_beyond_the_largest_is_capped_with_a_warning():
    a = indicators((10, 12), seed=9)
    with pytest.warns(UserWarning, match=r"cutoff 7 capped at 4"):
        out = two_point(a, cutoff=7)
    assert out.shape == (9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert two_point(a, cutoff=4).shape == (9, 9)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "message"),
    [
        (np.pad(np.full((1, 1), np.nan), ((2, 5), (3, 4))), {}, ValueError,
         r"non-finite value .* at index \(2, 3\)"),
        (np.zeros((0, 8, 8)), {}, ValueError, "phase data is empty"),
        (np.zeros((2, 2, 8, 8, 1)), {}, ValueError, "must be \\(H, W\\)"),
        (np.array([["a"]]), {}, TypeError, "unsupported dtype"),
        (np.zeros((8, 8, 2))[None], {"correlations": [(0, 2)]}, ValueError,
         "phase index 2 out of range: the data has 2 phase"),
        (np.zeros((8, 8)), {"correlations": [(0,)]}, ValueError, "pairs of phase indices"),
        (np.zeros((8, 8)), {"cutoff": -1}, ValueError, "cutoff"),
        (np.zeros((8, 8)), {"mask": np.full((8, 8), 1.5)}, ValueError,
         r"mask values .* \[1.5, 1.5\]"),
        (np.zeros((8, 8)), {"mask": np.ones((7, 8))}, ValueError, "mask must be"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_clearly(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        two_point(data, **kwargs)


def test_radial_average_of_a_known_window():
    c = 3
    offsets = np.arange(-c, c + 1)
    distance = np.hypot(offsets[:, None], offsets[None, :])
    window = np.rint(distance) * 10.0  # a function of round(|r|) only
    r, values = radial_average(window)
    assert r.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(values, [0, 10, 20, 30])
    stacked = np.stack([window, 2 * window], axis=-1)[None]  # (n, 2c+1, 2c+1, n_corr)
    r, values = radial_average(stacked, cutoff=2)
    assert values.shape == (1, 2, 3)
    np.testing.assert_allclose(values[0, 1], [0, 20, 40])


def test_the_transformer_feeds_a_pipeline():
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    data = indicators((12, 16, 16), 0.5, seed=10)
    one_hot = np.stack([data, 1 - data], axis=-1)
    transformer = TwoPointCorrelation(correlations=[(0, 0)], cutoff=3, flatten=True)
    rows = transformer.fit_transform(one_hot)
    assert rows.shape == (12, 49)
    np.testing.assert_allclose(rows[:, 24], data.mean(axis=(1, 2)))
    pipeline = make_pipeline(clone(transformer), PCA(2)).fit(one_hot)
    assert pipeline.transform(one_hot).shape == (12, 2)
    assert TwoPointCorrelation(cutoff=3).fit_transform(data).shape == (12, 7, 7)


def test_parity_with_pymks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyMKS 0.4.1 imports the deprecated pkg_resources
        pytest.importorskip("pymks")
        from pymks import TwoPointCorrelation as PyMKS

    data = np.stack([indicators((3, 17, 14), 0.4, seed=11)] * 2, axis=-1)
    data[..., 1] = 1 - data[..., 0]
    for periodic in (True, False):
        for cutoff in (4, None):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PyMKS's own deprecation noise
                theirs = np.asarray(PyMKS(correlations=[(0, 0), (0, 1), (1, 1)],
                                          periodic_boundary=periodic, cutoff=cutoff)
                                    .transform(data))  # fmt: skip
            ours = two_point(data, [(0, 0), (0, 1), (1, 1)], periodic_boundary=periodic,
                             cutoff=cutoff)  # fmt: skip
            np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_radial_average_reads_two_points_layout_even_when_the_last_axes_look_like_a_window():
    # three phases, default correlations, cutoff 1: (n, 3, 3, 3), the last two axes are not
    # the window
    data = np.random.default_rng(12).random((2, 9, 9, 3))
    s2 = two_point(data, cutoff=1)
    assert s2.shape == (2, 3, 3, 3)
    r, values = radial_average(s2)
    assert values.shape == (2, 3, 2)
    np.testing.assert_allclose(values[..., 0], s2[:, 1, 1, :])
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False  # round(|r|) = 1 for the 4 edge and the 4 corner offsets
    np.testing.assert_allclose(values[..., 1], s2[:, ring, :].mean(axis=1))
    with pytest.raises(ValueError, match="must be two_point's"):
        radial_average(np.zeros((2, 4, 4)))


@pytest.mark.parametrize("periodic", [True, False])
def test_threads_over_images_inside_transforms_and_per_image_masks_equal_the_reference(periodic):
    rng = np.random.default_rng(13)
    cases = [
        rng.random((5, 160, 150, 2)),  # threads over images
        rng.random((1, 300, 280, 2)),  # one image: threads inside each transform
        rng.random((5, 150, 160)),  # one field: images two to a complex transform, n odd
    ]
    for data in cases:
        mask = rng.random((len(data), *data.shape[1:3]))
        for kw in ({}, {"mask": mask}, {"mask": mask[0]}):
            out = two_point(data, periodic_boundary=periodic, cutoff=20, n_threads=2, **kw)
            ref = two_point_reference(data, periodic_boundary=periodic, cutoff=20, **kw)
            np.testing.assert_allclose(out, ref, atol=1e-13)


def test_any_memory_layout_and_the_smallest_image():
    data = np.random.default_rng(14).random((3, 21, 34, 2))
    expected = two_point(data, cutoff=5)
    np.testing.assert_allclose(two_point(np.asfortranarray(data), cutoff=5), expected, atol=1e-15)
    strided = np.zeros((3, 21, 68, 2))
    strided[:, :, ::2] = data
    np.testing.assert_allclose(two_point(strided[:, :, ::2], cutoff=5), expected, atol=1e-15)
    assert two_point(np.ones((1, 1))).tolist() == [[1.0]]


@pytest.mark.parametrize("size", [(67, 131), (211, 12), (257, 257)])
def test_sizes_with_large_prime_factors_equal_the_reference(size):
    # 67, 131, 211 and 257 are primes beyond the plain DFT butterflies: Bluestein's algorithm
    data = np.random.default_rng(15).random((2, *size))
    for periodic in (True, False):
        np.testing.assert_allclose(two_point(data, periodic_boundary=periodic),
                                   two_point_reference(data, periodic_boundary=periodic),
                                   atol=1e-13)  # fmt: skip


def test_a_mask_with_no_pixel_is_refused():
    with pytest.raises(ValueError, match="mask is zero everywhere for image 1"):
        two_point(np.ones((2, 8, 8)), mask=np.stack([np.ones((8, 8)), np.zeros((8, 8))]))


def test_the_transformer_refuses_images_unlike_those_it_was_fitted_on():
    transformer = TwoPointCorrelation().fit(np.zeros((2, 16, 16, 2)))
    with pytest.raises(ValueError, match=r"fitted on \(16, 16\) with 2"):
        transformer.transform(np.zeros((2, 32, 32, 2)))
    with pytest.raises(ValueError, match="must be \\(n_samples, H, W"):
        transformer.transform(np.zeros((16, 16)))
