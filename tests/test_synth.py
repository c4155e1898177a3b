"""Tests of microtex.synth: Perlin noise and marble textures."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from microtex import synth
from microtex.synth import (
    DEFAULT_MARBLE_CLASSES,
    marble_dataset,
    perlin_noise,
    perlin_texture,
)

SIZE = 128


def _analytic(size, k, theta):
    x = np.arange(size)[None, :] / size
    y = np.arange(size)[:, None] / size
    return 0.5 * (1.0 + np.cos(2 * np.pi * k * (x * np.cos(theta) + y * np.sin(theta))))


def _spectrum(image, window=False):
    """|FFT|^2 of the mean-removed image and the frequency grids (cycles per side)."""
    image = np.asarray(image, dtype=np.float64)
    n = image.shape[0]
    image = image - image.mean()
    if window:
        hann = np.hanning(n)
        image = image * np.outer(hann, hann)
    power = np.abs(np.fft.fft2(image)) ** 2
    power[0, 0] = 0.0
    freq = np.fft.fftfreq(n, 1.0 / n)
    freq_y, freq_x = np.meshgrid(freq, freq, indexing="ij")
    return power, freq_y, freq_x


def _axial_mean_angle(image):
    """Power-weighted mean orientation (radians mod pi) of the Hann-windowed spectrum."""
    power, freq_y, freq_x = _spectrum(image, window=True)
    phi = np.arctan2(freq_y, freq_x)
    return 0.5 * math.atan2((power * np.sin(2 * phi)).sum(), (power * np.cos(2 * phi)).sum())


def _angle_difference(a, b):
    """Difference of two axial angles (mod pi), in degrees, in [-90, 90)."""
    return (math.degrees(a - b) + 90.0) % 180.0 - 90.0


# --------------------------------------------------------------------------- noise


def test_noise_reproducible_and_seed_dependent():
    a = perlin_noise((64, 96), 4, 3, rng=5)
    b = perlin_noise((64, 96), 4, 3, rng=5)
    c = perlin_noise((64, 96), 4, 3, rng=6)
    assert a.shape == (64, 96) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.1


def test_noise_generator_is_advanced():
    rng = np.random.default_rng(3)
    first = perlin_noise(64, 4, 2, rng)
    second = perlin_noise(64, 4, 2, rng)
    assert np.abs(first - second).mean() > 0.1
    np.testing.assert_array_equal(first, perlin_noise(64, 4, 2, np.random.default_rng(3)))


@pytest.mark.parametrize(
    ("base_frequency", "octaves", "persistence"),
    [(16, 1, 0.5), (16, 3, 0.5), (8, 4, 0.5), (16, 3, 0.8)],
)
def test_noise_has_unit_rms(base_frequency, octaves, persistence):
    # Documented normalization: mean 0 and RMS 1 in expectation.
    field = perlin_noise(1024, base_frequency, octaves, rng=11, persistence=persistence)
    rms = np.sqrt(np.mean(field**2))
    assert abs(rms - 1.0) < 0.1
    assert abs(field.mean()) < 0.15


def test_default_noise_has_unit_rms_on_average():
    mean_square = np.mean([np.mean(perlin_noise(256, rng=seed) ** 2) for seed in range(12)])
    assert abs(np.sqrt(mean_square) - 1.0) < 0.1


def test_noise_is_smooth():
    field = perlin_noise(256, 4, 3, rng=2)
    variance = field.var()
    step_x = np.mean(np.diff(field, axis=1) ** 2)
    step_y = np.mean(np.diff(field, axis=0) ** 2)
    # White noise would give 2 * variance.
    assert step_x < 0.02 * variance
    assert step_y < 0.02 * variance


def test_noise_is_periodic():
    field = perlin_noise(128, 4, 3, rng=4)
    interior_x = np.mean(np.diff(field, axis=1) ** 2)
    interior_y = np.mean(np.diff(field, axis=0) ** 2)
    wrap_x = np.mean((field[:, 0] - field[:, -1]) ** 2)
    wrap_y = np.mean((field[0, :] - field[-1, :]) ** 2)
    # The step across the wrap is an ordinary neighbour step, not a jump.
    assert wrap_x < 4 * interior_x
    assert wrap_y < 4 * interior_y


def test_noise_single_cell_lattice():
    # frequency 1: left and right nodes coincide; still smooth and periodic.
    field = perlin_noise(64, 1, 1, rng=0)
    assert np.all(np.isfinite(field))
    assert np.mean(np.diff(field, axis=1) ** 2) < 0.01 * field.var()


# --------------------------------------------------------------------------- textures


def test_texture_reproducible_and_seed_dependent():
    a = perlin_texture(SIZE, 8, 0.3, 1.0, seed=1)
    b = perlin_texture(SIZE, 8, 0.3, 1.0, seed=1)
    c = perlin_texture(SIZE, 8, 0.3, 1.0, seed=2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05


@pytest.mark.parametrize(
    ("size", "k", "theta"),
    [(64, 4, 0.0), (128, 8, math.radians(30)), (100, 5.5, 2.0), (128, 16, -1.1)],
)
def test_zero_amplitude_is_exact_cosine(size, k, theta):
    image = perlin_texture(size, k, theta, 0.0, seed=0)
    np.testing.assert_allclose(image, _analytic(size, k, theta), rtol=0, atol=1e-6)


def test_zero_noise_scale_is_exact_cosine():
    image = perlin_texture(64, 6, 0.4, 3.0, seed=0, noise_scale=0.0)
    np.testing.assert_allclose(image, _analytic(64, 6, 0.4), rtol=0, atol=1e-6)


def test_direction_convention():
    vertical = perlin_texture(64, 4, 0.0, 0.0)  # varies along columns only
    assert np.ptp(vertical, axis=0).max() < 1e-6
    assert np.ptp(vertical[0]) > 0.99
    horizontal = perlin_texture(64, 4, math.pi / 2, 0.0)  # varies along rows only
    assert np.ptp(horizontal, axis=1).max() < 1e-6
    assert np.ptp(horizontal[:, 0]) > 0.99


@pytest.mark.parametrize("amplitude", [0.0, 1.0, 4.0, 10.0])
def test_texture_range_dtype_shape(amplitude):
    image = perlin_texture(72, 8, 0.5, amplitude, seed=3)
    assert image.shape == (72, 72)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.max() - image.min() > 0.99


def test_amplitude_enters_only_with_noise_scale():
    # The noise depends on the seed only; A and noise_scale act through A * noise_scale.
    a = perlin_texture(SIZE, 8, 0.7, 2.0, seed=9, noise_scale=0.01)
    b = perlin_texture(SIZE, 8, 0.7, 1.0, seed=9, noise_scale=0.02)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert np.abs(a - perlin_texture(SIZE, 8, 0.7, 1.0, seed=9, noise_scale=0.01)).max() > 0.1


def test_texture_follows_the_noise_field():
    # phi = cos(2 pi k (r + A h) . n) with h = noise_scale * (two perlin_noise fields).
    size, k, theta, amplitude, scale = 64, 6.0, 0.9, 1.5, 0.01
    rng = np.random.default_rng(21)
    noise_x = perlin_noise(size, 4, 3, rng)
    noise_y = perlin_noise(size, 4, 3, rng)
    x = np.arange(size)[None, :] / size
    y = np.arange(size)[:, None] / size
    u_x = x + amplitude * scale * noise_x
    u_y = y + amplitude * scale * noise_y
    expected = 0.5 * (1 + np.cos(2 * np.pi * k * (u_x * np.cos(theta) + u_y * np.sin(theta))))
    image = perlin_texture(size, k, theta, amplitude, seed=21, noise_scale=scale)
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [4, 8, 16])
@pytest.mark.parametrize("amplitude", [0.0, 1.0])
@pytest.mark.parametrize("theta_degrees", [0.0, 30.0, 75.0, 120.0])
def test_spectral_peak_at_k(k, amplitude, theta_degrees):
    theta = math.radians(theta_degrees)
    image = perlin_texture(SIZE, k, theta, amplitude, seed=int(theta_degrees))
    power, freq_y, freq_x = _spectrum(image)
    peak = np.unravel_index(np.argmax(power), power.shape)
    radial = math.hypot(freq_y[peak], freq_x[peak])
    assert abs(radial - k) <= 1.0
    peak_angle = math.atan2(freq_y[peak], freq_x[peak])
    assert abs(_angle_difference(peak_angle, theta)) < 5.0
    tolerance = 0.5 if amplitude == 0 else 3.0
    assert abs(_angle_difference(_axial_mean_angle(image), theta)) < tolerance


@pytest.mark.parametrize("k", [4, 8, 16])
@pytest.mark.parametrize("theta_degrees", [0.0, 30.0, 75.0, 120.0])
def test_orientation_survives_strong_distortion(k, theta_degrees):
    # A = 4 distorts the stripes strongly (see below) but their mean orientation
    # stays that of theta: measured worst 5.9 degrees over these cases, 3 seeds
    theta = math.radians(theta_degrees)
    for seed in range(3):
        image = perlin_texture(SIZE, k, theta, 4.0, seed=seed)
        assert abs(_angle_difference(_axial_mean_angle(image), theta)) < 10.0


@pytest.mark.parametrize(("k", "theta_degrees"), [(4, 60.0), (8, 30.0), (16, 100.0)])
def test_distortion_grows_with_amplitude(k, theta_degrees):
    theta = math.radians(theta_degrees)
    centre_x, centre_y = k * math.cos(theta), k * math.sin(theta)
    for seed in range(2):
        fractions = []
        for amplitude in (0.0, 0.5, 1.0, 2.0, 4.0):
            image = perlin_texture(SIZE, k, theta, amplitude, seed=seed)
            power, freq_y, freq_x = _spectrum(image, window=True)
            near = (np.hypot(freq_x - centre_x, freq_y - centre_y) <= 2) | (
                np.hypot(freq_x + centre_x, freq_y + centre_y) <= 2
            )
            fractions.append(power[near].sum() / power.sum())
        assert fractions[0] > 0.99
        assert np.all(np.diff(fractions) < 0), fractions


# --------------------------------------------------------------------------- dataset


def test_marble_dataset_defaults():
    images, labels, params = marble_dataset(n_per_class=3, size=32, seed=4)
    n_classes = len(DEFAULT_MARBLE_CLASSES)
    assert images.shape == (3 * n_classes, 32, 32) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(labels, np.repeat(np.arange(n_classes), 3))
    assert set(params) == {"k", "theta", "amplitude", "seed"}
    for values in params.values():
        assert values.shape == (3 * n_classes,)
    class_k = np.array([k for k, _ in DEFAULT_MARBLE_CLASSES])
    class_theta = np.array([theta for _, theta in DEFAULT_MARBLE_CLASSES])
    np.testing.assert_array_equal(params["k"], class_k[labels])
    assert np.all(np.abs(params["theta"] - class_theta[labels]) <= math.radians(5.0) + 1e-12)
    assert np.all((params["amplitude"] >= 0.5) & (params["amplitude"] <= 2.0))
    assert len(np.unique(params["amplitude"])) == len(labels)


def test_marble_dataset_images_reproducible_from_params():
    images, _, params = marble_dataset(n_per_class=2, size=48, seed=7)
    for i in (0, 3, 7):
        image = perlin_texture(
            48,
            params["k"][i],
            params["theta"][i],
            params["amplitude"][i],
            int(params["seed"][i]),
        )
        np.testing.assert_array_equal(images[i], image)
    again = marble_dataset(n_per_class=2, size=48, seed=7)
    np.testing.assert_array_equal(images, again.images)
    other = marble_dataset(n_per_class=2, size=48, seed=8)
    assert np.abs(images - other.images).mean() > 0.05


def test_marble_dataset_custom_classes_and_options():
    data = marble_dataset(
        n_per_class=4,
        classes=[(5, 0.0), (10, 1.0), (20, 2.0)],
        size=64,
        seed=0,
        amplitude_range=(0.0, 0.0),
        theta_jitter=0.0,
    )
    assert data.images.shape == (12, 64, 64)
    np.testing.assert_array_equal(data.labels, [0] * 4 + [1] * 4 + [2] * 4)
    np.testing.assert_array_equal(data.params["amplitude"], 0.0)
    for i, (k, theta) in zip((0, 5, 11), [(5, 0.0), (10, 1.0), (20, 2.0)]):
        np.testing.assert_allclose(data.images[i], _analytic(64, k, theta), atol=1e-6)


def test_marble_dataset_classes_are_separable_by_spectrum():
    # The dominant frequency of each image gives back its class's k.
    images, labels, params = marble_dataset(n_per_class=3, size=96, seed=1)
    for image, k in zip(images, params["k"]):
        power, freq_y, freq_x = _spectrum(image)
        peak = np.unravel_index(np.argmax(power), power.shape)
        assert abs(math.hypot(freq_y[peak], freq_x[peak]) - k) <= 1.5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda: perlin_texture(7, 8, 0.0, 1.0), "7"),
        (lambda: perlin_texture(4.5, 8, 0.0, 1.0), "4.5"),
        (lambda: perlin_texture(64, 0, 0.0, 1.0), "0"),
        (lambda: perlin_texture(64, -3.0, 0.0, 1.0), "-3.0"),
        (lambda: perlin_texture(64, float("nan"), 0.0, 1.0), "nan"),
        (lambda: perlin_texture(64, float("inf"), 0.0, 1.0), "inf"),
        (lambda: perlin_texture(64, 8, float("nan"), 1.0), "nan"),
        (lambda: perlin_texture(64, 8, float("-inf"), 1.0), "-inf"),
        (lambda: perlin_texture(64, 8, 0.0, -0.5), "-0.5"),
        (lambda: perlin_texture(64, 8, 0.0, float("nan")), "nan"),
        (lambda: perlin_texture(64, 8, 0.0, float("inf")), "inf"),
        (lambda: perlin_texture(64, 8, 0.0, 1.0, octaves=0), "0"),
        (lambda: perlin_texture(64, 8, 0.0, 1.0, base_frequency=0), "0"),
        (lambda: perlin_texture(64, 8, 0.0, 1.0, noise_scale=-0.1), "-0.1"),
        (lambda: perlin_texture(64, "eight", 0.0, 1.0), "'eight'"),
        (lambda: perlin_noise(64, 4, 0), "0"),
        (lambda: perlin_noise(64, 2.5, 2), "2.5"),
        (lambda: perlin_noise((64, 0), 4, 2), "0"),
        (lambda: perlin_noise((8, 8, 8), 4, 2), "(8, 8, 8)"),
        (lambda: perlin_noise(64, 4, 2, persistence=0.0), "0.0"),
        (lambda: marble_dataset(n_per_class=0), "0"),
        (lambda: marble_dataset(size=5), "5"),
        (lambda: marble_dataset(classes=[]), "[]"),
        (lambda: marble_dataset(classes=[(4, 0.0), (-2, 0.0)]), "-2"),
        (lambda: marble_dataset(classes=[(4, float("nan"))]), "nan"),
        (lambda: marble_dataset(classes=[(4,)]), "(4,)"),
        (lambda: marble_dataset(amplitude_range=(2.0, 1.0)), "(2.0, 1.0)"),
        (lambda: marble_dataset(amplitude_range=(-1.0, 1.0)), "-1.0"),
        (lambda: marble_dataset(theta_jitter=-0.1), "-0.1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(call, shown):
    with pytest.raises(ValueError) as info:
        call()
    assert f"got {shown}" in str(info.value)


def test_docstring_examples_run():
    result = doctest.testmod(synth, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------- two-phase fields


def test_gaussian_random_field_is_standardized_reproducible_and_periodic():
    from microtex.synth import gaussian_random_field

    field = gaussian_random_field((96, 128), 4.0, seed=3)
    assert field.shape == (96, 128) and field.dtype == np.float64
    assert abs(field.mean()) < 1e-12 and abs(field.std() - 1.0) < 1e-12
    np.testing.assert_array_equal(field, gaussian_random_field((96, 128), 4.0, seed=3))
    assert np.abs(field - gaussian_random_field((96, 128), 4.0, seed=4)).mean() > 0.5
    # periodic: the step across the wrap is an ordinary neighbour step
    interior = np.mean(np.diff(field, axis=1) ** 2)
    assert np.mean((field[:, 0] - field[:, -1]) ** 2) < 2 * interior


@pytest.mark.parametrize("length", [2.0, 5.0])
def test_gaussian_random_field_has_the_gaussian_covariance(length):
    from microtex.synth import gaussian_random_field

    fields = [gaussian_random_field(256, length, seed=s) for s in range(4)]
    # periodic autocovariance along rows at lags 0..3 l, averaged over the fields
    lags = np.arange(0, int(3 * length) + 1)
    measured = np.mean([[np.mean(f * np.roll(f, -lag, axis=1)) for lag in lags] for f in fields],
                       axis=0)  # fmt: skip
    expected = np.exp(-(lags**2) / (2 * length**2))
    assert np.abs(measured - expected).max() < 0.06, (measured.round(3), expected.round(3))


@pytest.mark.parametrize("fraction", [0.0, 0.137, 0.5, 0.8, 1.0])
def test_two_phase_field_has_the_asked_volume_fraction(fraction):
    from microtex.synth import two_phase_field

    image = two_phase_field((50, 70), 3.0, fraction, seed=1)
    assert image.dtype == np.uint8 and set(np.unique(image)) <= {0, 1}
    # to the nearest whole pixel, whatever the realization
    assert image.sum() == round(fraction * 50 * 70)


def test_two_phase_field_phase_one_is_the_largest_field_values():
    from microtex.synth import gaussian_random_field, two_phase_field

    field = gaussian_random_field(64, 3.0, seed=9)
    image = two_phase_field(64, 3.0, 0.3, seed=9)
    assert field[image == 1].min() > field[image == 0].max()


@pytest.mark.parametrize(("length", "fraction"), [(4.0, 0.5), (2.0, 0.3), (6.0, 0.3)])
def test_two_phase_s2_matches_the_closed_form(length, fraction):
    from microtex.features.spectra import two_point
    from microtex.synth import two_phase_field, two_phase_two_point

    c = 20
    images = np.stack([two_phase_field(256, length, fraction, seed=s) for s in range(8)])
    s2 = two_point(images, cutoff=c).mean(axis=0)
    offsets = np.arange(-c, c + 1)
    expected = two_phase_two_point(np.hypot(offsets[:, None], offsets[None, :]), length, fraction)
    assert abs(s2[c, c] - fraction) < 1e-3  # S2(0) = V
    assert np.abs(s2 - expected).max() < 0.01
    # beyond a few correlation lengths: V^2
    far = np.hypot(offsets[:, None], offsets[None, :]) >= 3.5 * length
    assert np.abs(s2[far] - fraction**2).max() < 0.01


def test_two_phase_correlation_length_grows_with_the_parameter():
    from microtex.features.spectra import radial_average, two_point
    from microtex.synth import two_phase_field

    measured = []
    for length in (2.0, 4.0, 8.0):
        images = np.stack([two_phase_field(192, length, 0.4, seed=s) for s in range(4)])
        distance, s2 = radial_average(two_point(images, cutoff=40).mean(axis=0))
        normalized = (s2 - 0.16) / (0.4 - 0.16)
        # where S2 has fallen halfway from V to V^2, interpolated between rings
        i = int(np.argmax(normalized < 0.5))
        step = (normalized[i - 1] - 0.5) / (normalized[i - 1] - normalized[i])
        measured.append(distance[i - 1] + step)
    assert measured[0] < measured[1] < measured[2]
    ratios = measured[1] / measured[0], measured[2] / measured[1]
    assert all(1.7 < r < 2.3 for r in ratios), measured  # S2 is a function of |r| / l


def test_two_phase_two_point_closed_forms():
    from microtex.synth import two_phase_two_point

    r = np.array([0.0, 1.0, 2.5, 4.0, 30.0])
    rho = np.exp(-(r**2) / (2 * 3.0**2))
    # V = 1/2: S2 = 1/4 + arcsin(rho) / (2 pi)
    np.testing.assert_allclose(two_phase_two_point(r, 3.0, 0.5),
                               0.25 + np.arcsin(rho) / (2 * np.pi), atol=1e-14)  # fmt: skip
    s2 = two_phase_two_point(r, 3.0, 0.2)
    assert s2[0] == pytest.approx(0.2, abs=1e-13) and s2[-1] == pytest.approx(0.04, abs=1e-13)
    assert np.all(np.diff(s2) < 0)
    # bivariate normal orthant probability at rho = 0.5 and t = Phi^-1(0.8), by brute force
    from statistics import NormalDist

    t = NormalDist().inv_cdf(0.8)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 2_000_000))
    y = 0.5 * a + np.sqrt(0.75) * b
    distance = 3.0 * np.sqrt(2 * np.log(2))  # rho = 1/2
    assert two_phase_two_point(distance, 3.0, 0.2) == pytest.approx(
        np.mean((a > t) & (y > t)), abs=1e-3
    )


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda: synth.gaussian_random_field(32, 0.0), "0.0"),
        (lambda: synth.gaussian_random_field(32, float("nan")), "nan"),
        (lambda: synth.gaussian_random_field((32, 0), 2.0), "0"),
        (lambda: synth.gaussian_random_field(1, 2.0), "1"),
        (lambda: synth.two_phase_field(32, 2.0, 1.5), "1.5"),
        (lambda: synth.two_phase_field(32, 2.0, -0.1), "-0.1"),
        (lambda: synth.two_phase_two_point(1.0, 2.0, 2.0), "2.0"),
    ],
)
def test_two_phase_bad_arguments_name_the_value(call, shown):
    with pytest.raises(ValueError) as info:
        call()
    assert f"got {shown}" in str(info.value)


def test_a_correlation_length_too_long_for_the_field_is_refused():
    with pytest.raises(ValueError, match="too long for a 8x8 field"):
        synth.gaussian_random_field(8, 1e4, seed=0)
