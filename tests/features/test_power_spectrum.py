"""Power spectra: numpy.fft, Parseval, closed forms, direct binning, the NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from microtex.features.spectra import (
    PowerSpectrum,
    frequency_bins,
    power_spectrum,
    power_spectrum_reference,
    radial_average,
)


def assert_close(actual, expected, dtype, total=None):
    """Equal to rounding. An FFT's rounding of F(q) is relative to the image's norm, not to
    |F(q)|: in float32, S(q) = |F(q)|^2 / (H W) is off by about 1e-7 sqrt(S(q) sum_q S), a few
    1e-6 of S even at the largest S. ``total``: sum_q S of the image (default: of ``expected``)."""
    largest = float(np.nanmax(np.abs(expected)))
    total = float(np.nansum(np.abs(expected))) if total is None else total
    atol = 1e-13 * largest if dtype == np.float64 else 5e-7 * np.sqrt(largest * total)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=max(atol, 1e-300))


def minmax(images):
    """Each image's minimum to -1 and maximum to +1 (float64)."""
    x = np.asarray(images, np.float64)
    low = x.min(axis=(-2, -1), keepdims=True)
    high = x.max(axis=(-2, -1), keepdims=True)
    return 2 * (x - low) / (high - low) - 1


def numpy_power(phi):
    """|fft2|^2 / (H W), shifted: the definition in float64."""
    h, w = phi.shape[-2:]
    return np.fft.fftshift(np.abs(np.fft.fft2(phi)) ** 2, axes=(-2, -1)) / (h * w)


def direct_binning(spectrum, sectors=None):
    """Frequency by frequency: radius and angle on the square-normalized grid (the docstring)."""
    h, w = spectrum.shape
    side = min(h, w)
    n_radii = side // 2 + 1
    sums = np.zeros((sectors or 1, n_radii))
    counts = np.zeros((sectors or 1, n_radii))
    for i in range(h):
        for j in range(w):
            qy, qx = (i - h // 2) * side / h, (j - w // 2) * side / w
            r = round(math.hypot(qy, qx))  # Python's round: half to even, as numpy.rint
            if r >= n_radii:
                continue
            if sectors is None:
                which = [0]
            elif r == 0:
                which = range(sectors)  # ring 0 has no direction: every sector
            else:
                angle = math.atan2(qy, qx) % math.pi
                which = [int(math.floor(angle / (math.pi / sectors) + 1e-9)) % sectors]
            for s in which:
                sums[s, r] += spectrum[i, j]
                counts[s, r] += 1
    with np.errstate(invalid="ignore"):
        out = sums / counts
    return out[0] if sectors is None else out


SHAPES = [(1, 8, 8), (5, 7, 13), (3, 31, 17), (2, 67, 131), (4, 1, 9), (1, 1, 1), (6, 12, 30),
          (3, 12, 7), (1, 30, 45)]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_numpy_fft_for_any_size_and_batch(dtype, shape):
    # 67 and 131 are primes beyond the plain DFT butterflies (Bluestein); odd batches
    # leave one image without a partner in its complex transform: with H even it takes
    # the real-input path (half a transform), with H odd a complex transform of its own
    images = np.random.default_rng(1).random(shape).astype(dtype) * 50 + 3
    constant = shape[1] * shape[2] == 1  # a one-pixel image is constant: it rescales to 0
    rescaled = np.zeros(shape) if constant else minmax(images)
    for rescale, phi in (("none", images.astype(np.float64)), ("minmax", rescaled)):
        out = power_spectrum(images, rescale=rescale)
        assert out.dtype == dtype and out.shape == shape
        ref = power_spectrum_reference(images, rescale=rescale)
        for got, theirs, want in zip(out, ref, numpy_power(phi)):
            assert_close(got, want, dtype)
            assert_close(theirs, want, dtype)


def test_parseval_the_sum_of_s_is_the_sum_of_phi_squared():
    images = np.random.default_rng(2).standard_normal((4, 24, 19))
    s = power_spectrum(images, rescale="none")
    np.testing.assert_allclose(s.sum(axis=(1, 2)), (images**2).sum(axis=(1, 2)), rtol=1e-12)
    s = power_spectrum(images)
    np.testing.assert_allclose(s.sum(axis=(1, 2)), (minmax(images) ** 2).sum(axis=(1, 2)),
                               rtol=1e-12)  # fmt: skip
    # zero frequency: H W mean(phi)^2
    np.testing.assert_allclose(s[:, 12, 9], 24 * 19 * minmax(images).mean(axis=(1, 2)) ** 2,
                               rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_pure_cosine_puts_all_its_power_at_plus_and_minus_k(dtype):
    h, w, k = 12, 24, 3  # cos(2 pi 3 x / 24) reaches +1 (x = 0) and -1 (x = 4): minmax keeps it
    stripes = np.cos(2 * np.pi * k * np.arange(w) / w)[None, :].repeat(h, 0).astype(dtype)
    expected = np.zeros((h, w))
    expected[h // 2, w // 2 + k] = expected[h // 2, w // 2 - k] = h * w / 4
    for rescale in ("none", "minmax"):
        assert_close(power_spectrum(stripes, rescale=rescale), expected, dtype)
    # horizontal stripes, 2 periods along the 12-pixel side: ring 2, direction pi/2
    rows = np.cos(2 * np.pi * 2 * np.arange(h) / h)[:, None].repeat(w, 1).astype(dtype)
    s = power_spectrum(rows, rescale="none")
    assert s[h // 2 + 2, w // 2] == pytest.approx(h * w / 4, rel=1e-6)
    sectors = power_spectrum(rows, rescale="none", sectors=4)
    # all power in ring 2 of sector 2 (angle pi/2), averaged over that bin's frequencies
    labels, _ = frequency_bins(h, w, 4)
    in_bin = (labels == labels[h // 2 + 2, w // 2]).sum()
    assert sectors[2, 2] == pytest.approx(2 * (h * w / 4) / in_bin, rel=1e-6)
    others = np.delete(sectors.ravel(), 2 * sectors.shape[1] + 2)
    assert np.nanmax(np.abs(others)) < 1e-5 * h * w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 15, 15), (3, 10, 24), (2, 21, 8)])
@pytest.mark.parametrize("sectors", [None, 1, 4, 6])
def test_ring_and_sector_averages_equal_a_direct_binning(dtype, shape, sectors):
    images = np.random.default_rng(3).random(shape).astype(dtype)
    out = power_spectrum(images, radial=sectors is None, sectors=sectors)
    full = power_spectrum(images)
    n_radii = min(shape[1:]) // 2 + 1
    assert out.shape == (shape[0], n_radii) if sectors is None else (shape[0], sectors, n_radii)
    assert out.dtype == dtype
    ref = power_spectrum_reference(images, radial=sectors is None, sectors=sectors)
    for got, spectrum, theirs in zip(out, full.astype(np.float64), ref):
        want = direct_binning(spectrum, sectors)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert_close(np.nan_to_num(got), np.nan_to_num(want), dtype, spectrum.sum())
        assert_close(np.nan_to_num(theirs), np.nan_to_num(want), dtype, spectrum.sum())
    if sectors is None:
        assert not np.isnan(out).any()  # every ring holds frequencies along the shorter side


def test_bins_of_a_5x5_spectrum_by_hand():
    labels, n = frequency_bins(5, 5)
    assert n == 3
    np.testing.assert_array_equal(labels, [[-1, 2, 2, 2, -1],  # |(2, 2)| = 2.8 is past ring 2
                                           [2, 1, 1, 1, 2],
                                           [2, 1, 0, 1, 2],
                                           [2, 1, 1, 1, 2],
                                           [-1, 2, 2, 2, -1]])  # fmt: skip
    labels, n = frequency_bins(5, 5, sectors=4)
    # label 1 + 2 s + (r - 1): sector s of [s pi/4, (s+1) pi/4), angle arctan2(row, column);
    # a direction on a boundary (45 degrees) belongs to the sector it starts
    assert n == 9
    np.testing.assert_array_equal(labels, [[-1, 4, 6, 6, -1],
                                           [2, 3, 5, 7, 8],
                                           [2, 1, 0, 1, 2],
                                           [8, 7, 5, 3, 2],
                                           [-1, 6, 6, 4, -1]])  # fmt: skip
    # a non-square image: frequencies in cycles per min(H, W) = 4 pixels, column steps of 1/2
    labels, n = frequency_bins(4, 8)
    assert n == 3
    # row 2 is q_row = 0; columns are q = -2, -1.5, ..., 1.5; rint(1.5) = 2, rint(0.5) = 0
    np.testing.assert_array_equal(labels[2], [2, 2, 1, 0, 0, 0, 1, 2])


def test_the_ring_average_of_an_odd_square_spectrum_is_two_points_radial_average():
    images = np.random.default_rng(4).random((3, 17, 17))
    _, rings = radial_average(power_spectrum(images))
    np.testing.assert_allclose(power_spectrum(images, radial=True), rings, rtol=1e-12)


def test_narrow_sectors_leave_empty_bins_nan():
    out = power_spectrum(np.random.default_rng(5).random((8, 8)), sectors=6)
    # ring 1 of 8 x 8 has directions 0, 45, 90, 135 degrees only: sectors 2 and 5 (of 30 degrees)
    assert np.isnan(out[:, 1]).tolist() == [False, False, True, False, False, True]
    assert np.all(out[:, 0] == out[0, 0])  # ring 0, shared


def test_rescale_options():
    rng = np.random.default_rng(6)
    two_levels = np.where(rng.random((2, 10, 14)) < 0.3, 10.0, 50.0)  # phi = -1 / +1 after minmax
    s = power_spectrum(two_levels)
    np.testing.assert_allclose(s.sum(axis=(1, 2)), 140.0, rtol=1e-12)
    # minmax ignores gain and offset, and a negative gain (phi -> -phi leaves |F|^2 alone)
    images = rng.random((3, 9, 11))
    for gain, offset in ((7.0, -3.0), (-0.5, 100.0)):
        np.testing.assert_allclose(power_spectrum(gain * images + offset), power_spectrum(images),
                                   atol=1e-12 * 99)  # fmt: skip
    # a constant image: 0 after minmax; "none" keeps its zero frequency, H W c^2
    constant = np.full((6, 4), 0.5)
    assert not power_spectrum(constant).any()
    s = power_spectrum(constant, rescale="none")
    assert s[3, 2] == pytest.approx(24 * 0.25)
    s[3, 2] = 0
    assert np.abs(s).max() < 1e-15


def test_integer_and_bool_images_are_computed_in_float32_or_float64():
    gray = np.random.default_rng(7).integers(0, 256, (2, 12, 12))
    expected = power_spectrum(gray.astype(np.float32))
    for dtype in (np.uint8, np.int16, np.int32):
        out = power_spectrum(gray.astype(dtype))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)
    assert power_spectrum(gray.astype(np.int64)).dtype == np.float64
    assert power_spectrum(gray > 128).dtype == np.float32


def test_threads_layouts_and_a_single_large_image():
    rng = np.random.default_rng(8)
    images = rng.random((7, 40, 36))
    out = power_spectrum(images, n_threads=2)
    np.testing.assert_array_equal(power_spectrum(images, n_threads=1), out)
    np.testing.assert_allclose(power_spectrum(np.asfortranarray(images)), out, atol=1e-13)
    strided = np.zeros((7, 40, 72))
    strided[:, :, ::2] = images
    np.testing.assert_allclose(power_spectrum(strided[:, :, ::2]), out, atol=1e-13)
    assert power_spectrum(images[0]).shape == (40, 36)
    assert power_spectrum(images[0], sectors=3).shape == (3, 19)
    # one image: threads inside each transform
    large = rng.random((300, 280))
    assert_close(power_spectrum(large, n_threads=2), numpy_power(minmax(large)), np.float64)


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "message"),
    [
        (np.pad(np.full((1, 1), np.nan), ((2, 5), (3, 4))), {}, ValueError,
         r"images has a non-finite value \(NaN or inf\) at index \(2, 3\)"),
        (np.pad(np.full((1, 1, 1), np.inf), ((1, 0), (0, 3), (4, 0))), {}, ValueError,
         r"non-finite value .* at index \(1, 0, 4\)"),
        (np.zeros((0, 8, 8)), {}, ValueError, r"images is empty \(shape \(0, 8, 8\)\)"),
        (np.zeros((2, 0, 8)), {}, ValueError, "images is empty"),
        (np.zeros((2, 2, 8, 8)), {}, ValueError, r"\(H, W\) or \(n_samples, H, W\); got shape"),
        (np.zeros(8), {}, ValueError, r"got shape \(8,\)"),
        (np.array([["a"]]), {}, TypeError, "images has unsupported dtype <U1"),
        (np.zeros((8, 8), complex), {}, TypeError, "unsupported dtype complex128"),
        (np.zeros((8, 8)), {"rescale": "zscore"}, ValueError,
         r"unknown rescale 'zscore'; choose one of \['minmax', 'none'\]"),
        (np.zeros((8, 8)), {"sectors": 0}, ValueError, "sectors must be an integer >= 1, got 0"),
        (np.zeros((8, 8)), {"sectors": 2.5}, ValueError, "sectors must be an integer"),
        (np.zeros((8, 8)), {"radial": "yes"}, ValueError, "radial must be True or False"),
        (np.zeros((8, 8)), {"n_threads": 0}, ValueError, "n_threads"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_value(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        power_spectrum(images, **kwargs)
    if "n_threads" not in kwargs:
        with pytest.raises(error, match=message):
            power_spectrum_reference(images, **kwargs)


def test_the_transformer_names_its_features_and_feeds_a_pipeline():
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    images = np.random.default_rng(9).random((10, 8, 6))
    full = PowerSpectrum().fit(images)
    rows = full.transform(images)
    names = full.get_feature_names_out()
    assert rows.shape == (10, 48) and len(names) == 48
    assert names[0] == "power_-4_-3" and names[4 * 6 + 3] == "power_0_0"
    np.testing.assert_array_equal(rows, power_spectrum(images).reshape(10, -1))
    rings = PowerSpectrum(radial=True).fit(images)
    assert rings.get_feature_names_out().tolist() == ["power_r0", "power_r1", "power_r2",
                                                      "power_r3"]  # fmt: skip
    np.testing.assert_array_equal(rings.transform(images), power_spectrum(images, radial=True))
    sectors = PowerSpectrum(sectors=2, rescale="none").fit(images)
    assert sectors.get_feature_names_out()[5] == "power_s1_r1"
    np.testing.assert_array_equal(sectors.transform(images),
                                  power_spectrum(images, sectors=2, rescale="none")
                                  .reshape(10, -1))  # fmt: skip
    pipeline = make_pipeline(clone(rings), PCA(2)).fit(images)
    assert pipeline.transform(images).shape == (10, 2)
    with pytest.raises(ValueError, match=r"fitted on \(8, 6\)"):
        rings.transform(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"X must be \(n_samples, H, W\)"):
        PowerSpectrum().fit(np.zeros((8, 8)))
