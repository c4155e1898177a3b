"""Synthetic microstructures: Perlin-noise marble textures and thresholded Gaussian random fields.

Marble textures (Lubbers, Lookman & Barros, Sci. Rep. 2017)
-----------------------------------------------------------
A marble texture is a set of parallel stripes bent by a smooth random
displacement field::

    phi(r) = cos(2 pi k  u . n_theta),     u = r + A h(r)

``r = (x, y)`` are pixel coordinates in units of the image side
(``x = column / size``, ``y = row / size``, so ``r`` lies in ``[0, 1)^2`` and
``k`` is the number of stripes per image side), ``n_theta = (cos theta,
sin theta)`` is the stripe normal, ``A`` the noise amplitude and ``h`` a
vector field whose two components are independent multi-octave Perlin
(gradient) noise fields, each scaled to an RMS of ``noise_scale`` image sides.

The noise is implemented here in vectorized NumPy on a periodic lattice, so
``h`` (but not the stripes themselves, unless ``k n_theta`` has integer
components) tiles the image periodically.

Two-phase fields of known statistics
------------------------------------
A Gaussian random field ``g`` with covariance ``E[g(x) g(x + r)] =
exp(-|r|^2 / (2 l^2))`` (correlation length ``l`` pixels), thresholded so
that a fraction ``V`` of the pixels is phase 1, is a two-phase microstructure
whose two-point statistic is known in closed form::

    S2(r) = V^2 + 1/(2 pi) int_0^{arcsin rho(r)} exp(-t^2 / (1 + sin u)) du,
    rho(r) = exp(-|r|^2 / (2 l^2)),   t = Phi^-1(1 - V)

(the probability that two standard normals of correlation ``rho`` both
exceed ``t``; ``S2(0) = V``, ``S2 -> V^2`` beyond a few ``l``, and for
``V = 1/2`` ``S2 = 1/4 + arcsin(rho) / (2 pi)``). The fields are periodic,
so their statistics are those of periodic two-point statistics.

Functions
---------
perlin_noise
    Scalar multi-octave gradient noise with unit expected RMS.
perlin_texture
    One marble texture, float32 in ``[0, 1]``.
marble_dataset
    A small labelled set of marble textures for demos and tests.
gaussian_random_field
    A periodic Gaussian random field of given correlation length.
two_phase_field
    That field thresholded to a 0/1 image of given volume fraction.
two_phase_two_point
    The expected two-point statistic of such an image (the formula above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from microtex._validation import check_int, check_real

__all__ = [
    "DEFAULT_NOISE_SCALE",
    "DEFAULT_BASE_FREQUENCY",
    "DEFAULT_OCTAVES",
    "DEFAULT_MARBLE_CLASSES",
    "MarbleDataset",
    "perlin_noise",
    "perlin_texture",
    "marble_dataset",
    "gaussian_random_field",
    "two_phase_field",
    "two_phase_two_point",
]

#: RMS of each component of the displacement field ``h``, in image sides.
DEFAULT_NOISE_SCALE = 0.01
#: Lattice cells per image side of the first (coarsest) noise octave.
DEFAULT_BASE_FREQUENCY = 4
#: Number of noise octaves (frequencies 4, 8, 16 cells per side by default).
DEFAULT_OCTAVES = 3

#: Default classes of :func:`marble_dataset` as ``(k, theta)`` pairs (theta in
#: radians): a 2 x 2 design of 6 or 12 stripes per side at 0 or 60 degrees.
DEFAULT_MARBLE_CLASSES: tuple[tuple[float, float], ...] = (
    (6.0, 0.0),
    (6.0, math.pi / 3),
    (12.0, 0.0),
    (12.0, math.pi / 3),
)

_LACUNARITY = 2  # frequency ratio of successive octaves (keeps the lattice periodic)


class MarbleDataset(NamedTuple):
    """A labelled set of marble textures, as returned by :func:`marble_dataset`.

    Attributes
    ----------
    images : ndarray of float32, shape (n_samples, size, size)
        Textures in ``[0, 1]``.
    labels : ndarray of int64, shape (n_samples,)
        Class index into the ``classes`` the set was made from.
    params : dict of str to ndarray, each of shape (n_samples,)
        ``"k"``, ``"theta"`` (radians, jitter included), ``"amplitude"`` and
        ``"seed"`` of every image; ``perlin_texture(size, k, theta, amplitude,
        seed)`` with these values (and the same noise options) reproduces it.
    """

    images: np.ndarray
    labels: np.ndarray
    params: dict[str, np.ndarray]


# --------------------------------------------------------------------------- checks


def _check_shape(shape) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = (shape, shape)
    if len(dims) != 2:
        raise ValueError(f"shape must be (height, width), got {shape!r}")
    return check_int("shape[0]", dims[0], 1), check_int("shape[1]", dims[1], 1)


# --------------------------------------------------------------------------- noise


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@lru_cache(maxsize=1)
def _octave_variance() -> float:
    """Expected variance of one octave of gradient noise, averaged over a cell.

    With independent uniform unit gradients ``E[(g.d)^2] = |d|^2 / 2`` and the
    corner terms are uncorrelated; by symmetry the four corners contribute
    equally, giving ``4 I0 I2`` with ``I0 = int_0^1 (1 - f)^2`` and
    ``I2 = int_0^1 t^2 (1 - f)^2`` for the fade ``f``. Exact polynomial
    integrals; the value is 0.046531... (RMS 0.21571...).
    """
    fade = np.polynomial.Polynomial([0, 0, 0, 10, -15, 6])
    t = np.polynomial.Polynomial([0, 1])
    i0 = ((1 - fade) ** 2).integ()(1.0)
    i2 = (t**2 * (1 - fade) ** 2).integ()(1.0)
    return float(4.0 * i0 * i2)


def _axis_weights(n_pixels: int, frequency: int, offset: float):
    """Interpolation matrices of one axis, each of shape (n_pixels, frequency).

    Pixel ``p`` sits at lattice position ``s = p * frequency / n_pixels + offset``
    (periodic). For node ``c`` at signed distance ``d = s - c`` (|d| < 1) the
    blend weight is ``K(d) = 1 - fade(|d|)``; ``weight[p, c] = K(d)`` and
    ``ramp[p, c] = d K(d)`` (the node's gradient dotted into ``d``). All other
    entries are zero.
    """
    position = np.arange(n_pixels) * (frequency / n_pixels) + offset
    cell = np.floor(position)
    fraction = position - cell
    left = cell.astype(np.intp) % frequency
    right = (left + 1) % frequency
    fade = _fade(fraction)
    rows = np.arange(n_pixels)
    weight = np.zeros((n_pixels, frequency))
    ramp = np.zeros((n_pixels, frequency))
    # Two statements, so that with frequency == 1 (left == right) both terms add up.
    weight[rows, left] += 1.0 - fade
    ramp[rows, left] += fraction * (1.0 - fade)
    weight[rows, right] += fade
    ramp[rows, right] += (fraction - 1.0) * fade
    return weight, ramp


def _octave_factors(height: int, width: int, frequency: int, rng: np.random.Generator):
    """Factors of one octave of periodic gradient noise, ``frequency`` cells per axis.

    Perlin's blend of the four corner dot products is separable: with gradient
    components ``G_x[cy, cx]`` and ``G_y[cy, cx]`` the octave equals
    ``W_y G_x R_x^T + R_y G_y W_x^T`` for the per-axis matrices of
    :func:`_axis_weights`. Returns ``left = [W_y G_x, R_y G_y]`` of shape
    (height, 2 frequency) and ``right = [R_x, W_x]`` of shape
    (width, 2 frequency), so the octave is ``left @ right.T``.
    """
    angle = rng.uniform(0.0, 2.0 * np.pi, size=(frequency, frequency))
    offset_y, offset_x = rng.uniform(0.0, 1.0, size=2)
    weight_y, ramp_y = _axis_weights(height, frequency, offset_y)
    weight_x, ramp_x = _axis_weights(width, frequency, offset_x)
    left = np.concatenate([weight_y @ np.cos(angle), ramp_y @ np.sin(angle)], axis=1)
    right = np.concatenate([ramp_x, weight_x], axis=1)
    return left, right


def perlin_noise(
    shape,
    base_frequency: int = DEFAULT_BASE_FREQUENCY,
    octaves: int = DEFAULT_OCTAVES,
    rng: int | np.random.Generator | None = None,
    *,
    persistence: float = 0.5,
) -> np.ndarray:
    """Multi-octave periodic Perlin (gradient) noise, normalized to unit RMS.

    Octave ``o = 0 .. octaves-1`` is gradient noise on a periodic lattice of
    ``base_frequency * 2**o`` cells along each axis (lacunarity 2), with
    independent uniformly random unit gradients at the lattice nodes, the
    quintic fade ``6t^5 - 15t^4 + 10t^3`` and bilinear blending of the four
    corner dot products, shifted by a random fraction of a cell (so no pixel is
    a node of every octave). Octaves are weighted by ``persistence**o`` and
    summed. The sum is divided by its exact expected RMS, so the field has
    mean 0 and RMS 1 in expectation; the RMS of one 512 x 512 realization
    scatters by about 5 % between seeds for ``base_frequency`` 4 or 8 and
    2 % for 16 (sampling error of the coarsest cells).

    Parameters
    ----------
    shape : int or (int, int)
        ``(height, width)`` of the field in pixels; an int means a square.
        For a non-square shape the cells are stretched so that each axis holds
        ``base_frequency`` of them, and the field is periodic along both axes.
    base_frequency : int, default 4
        Lattice cells per side of the first (coarsest) octave, >= 1.
    octaves : int, default 3
        Number of octaves, >= 1. Octaves with more cells than pixels per side
        alias; they are allowed but add only white noise.
    rng : int, numpy.random.Generator or None
        Seed or generator (passed to :func:`numpy.random.default_rng`). A
        generator is advanced, so successive calls give independent fields.
    persistence : float, default 0.5
        Amplitude ratio of successive octaves, > 0.

    Returns
    -------
    ndarray of float64, shape (height, width)

    Examples
    --------
    >>> import numpy as np
    >>> field = perlin_noise((256, 256), base_frequency=8, octaves=3, rng=0)
    >>> field.shape, field.dtype
    ((256, 256), dtype('float64'))
    >>> bool(0.8 < np.sqrt(np.mean(field**2)) < 1.2)
    True
    """
    height, width = _check_shape(shape)
    base_frequency = check_int("base_frequency", base_frequency, 1)
    octaves = check_int("octaves", octaves, 1)
    persistence = check_real("persistence", persistence, minimum=0.0, inclusive=False)
    rng = np.random.default_rng(rng)

    lefts, rights = [], []
    total_weight = 0.0
    for octave in range(octaves):
        weight = persistence**octave
        left, right = _octave_factors(height, width, base_frequency * _LACUNARITY**octave, rng)
        lefts.append(weight * left)
        rights.append(right)
        total_weight += weight * weight
    # All octaves in one product: sum_o left_o right_o^T.
    field = np.concatenate(lefts, axis=1) @ np.concatenate(rights, axis=1).T
    field /= math.sqrt(_octave_variance() * total_weight)
    return field


# --------------------------------------------------------------------------- textures


def perlin_texture(
    size: int,
    k: float,
    theta: float,
    amplitude: float,
    seed: int | np.random.Generator | None = None,
    *,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    base_frequency: int = DEFAULT_BASE_FREQUENCY,
    octaves: int = DEFAULT_OCTAVES,
) -> np.ndarray:
    """A Perlin-noise marble texture: stripes bent by a smooth random field.

    Computes ``phi(r) = cos(2 pi k (r + A h(r)) . n_theta)`` on a
    ``size x size`` grid and returns ``(phi + 1) / 2``. Pixel ``(row, col)``
    sits at ``r = (x, y) = (col / size, row / size)``, so ``k`` is the number
    of stripes per image side. ``n_theta = (cos theta, sin theta)`` in these
    ``(x, y)`` coordinates: ``theta = 0`` gives stripes whose intensity varies
    along x (the columns), i.e. vertical stripes; ``theta = pi / 2`` gives
    horizontal stripes. Since rows grow downwards when the image is shown,
    increasing ``theta`` turns the stripe normal clockwise on screen.

    ``h`` has two independent components, each :func:`perlin_noise` times
    ``noise_scale`` (RMS ``noise_scale`` image sides). The stripes are shifted
    along their normal by ``A h . n_theta``, i.e. ``A * noise_scale * k``
    stripe periods RMS, and the local stripe normal is tilted (and the local
    spacing changed) by the slope ``A * noise_scale * |grad h|``, which does
    not depend on ``k`` and sets how distorted a texture looks. The defaults
    (``noise_scale = 0.01``; octaves of 4, 8 and 16 cells per side, RMS slope
    of the unit noise about 18 per image side) give an RMS slope of about
    0.18 rad per unit ``A``. Seen at ``k = 8`` and 256 pixels: ``A = 0`` gives
    straight stripes; ``A = 1`` bends them into visible gentle waves (tilts of
    about 10 degrees, 0.08 periods of displacement); ``A = 4`` distorts them
    strongly (stripes pinch, merge and enclose blobs) while their mean
    orientation stays plain to see. Beyond ``A`` of about 6 the slope exceeds
    1, stripes fold over and the orientation fades.

    The noise depends only on ``seed`` and the noise options, not on ``k``,
    ``theta`` or ``amplitude``: textures made with one seed and different
    ``A`` are the same field deformed more or less.

    Parameters
    ----------
    size : int
        Side of the square image in pixels, >= 8.
    k : float
        Stripes per image side (wavenumber in cycles per side), > 0. Values
        near or above ``size / 2`` (two pixels per stripe) alias.
    theta : float
        Angle of the stripe normal in radians (convention above).
    amplitude : float
        Noise amplitude ``A`` >= 0; 0 gives exact straight stripes.
    seed : int, numpy.random.Generator or None
        Seed of the noise field (see :func:`numpy.random.default_rng`).
    noise_scale : float, default 0.01
        RMS of each component of ``h``, in image sides, >= 0.
    base_frequency : int, default 4
        Lattice cells per image side of the coarsest noise octave, >= 1.
    octaves : int, default 3
        Number of noise octaves (lacunarity 2, persistence 0.5), >= 1.

    Returns
    -------
    ndarray of float32, shape (size, size)
        ``(phi + 1) / 2``, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If ``size < 8``, ``k <= 0``, ``amplitude < 0``, ``octaves < 1``,
        ``base_frequency < 1``, ``noise_scale < 0`` or any of them is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> image = perlin_texture(64, k=8, theta=np.deg2rad(30), amplitude=1.0, seed=0)
    >>> image.shape, image.dtype
    ((64, 64), dtype('float32'))
    >>> bool(image.min() >= 0.0 and image.max() <= 1.0)
    True
    >>> straight = perlin_texture(64, k=4, theta=0.0, amplitude=0.0)
    >>> bool(np.allclose(straight[0], straight[-1]))  # vertical stripes
    True
    """
    size = check_int("size", size, 8)
    k = check_real("k", k, minimum=0.0, inclusive=False)
    theta = check_real("theta", theta)
    amplitude = check_real("amplitude", amplitude, minimum=0.0)
    noise_scale = check_real("noise_scale", noise_scale, minimum=0.0)
    base_frequency = check_int("base_frequency", base_frequency, 1)
    octaves = check_int("octaves", octaves, 1)

    normal_x, normal_y = math.cos(theta), math.sin(theta)
    coordinate = np.arange(size) / size
    # u . n = r . n + A h . n, as a (rows, cols) array.
    projection = normal_x * coordinate[None, :] + normal_y * coordinate[:, None]
    displacement = amplitude * noise_scale
    if displacement != 0.0:
        rng = np.random.default_rng(seed)
        noise_x = perlin_noise((size, size), base_frequency, octaves, rng)
        noise_y = perlin_noise((size, size), base_frequency, octaves, rng)
        projection = projection + displacement * (normal_x * noise_x + normal_y * noise_y)
    phi = np.cos((2.0 * np.pi * k) * projection)
    image = (phi + 1.0) * 0.5
    return image.astype(np.float32)


def marble_dataset(
    n_per_class: int = 16,
    classes: Sequence[tuple[float, float]] | None = None,
    size: int = 128,
    seed: int | np.random.Generator | None = 0,
    *,
    amplitude_range: tuple[float, float] = (0.5, 2.0),
    theta_jitter: float = math.radians(5.0),
    noise_scale: float = DEFAULT_NOISE_SCALE,
    base_frequency: int = DEFAULT_BASE_FREQUENCY,
    octaves: int = DEFAULT_OCTAVES,
) -> MarbleDataset:
    """A small labelled set of marble textures (:func:`perlin_texture`).

    Each class is a ``(k, theta)`` pair. Every image draws, from ``seed``, its
    amplitude uniformly from ``amplitude_range``, a jitter of ``theta`` uniformly
    from ``[-theta_jitter, theta_jitter]`` and its own noise seed. Images are
    ordered by class: ``n_per_class`` of class 0, then of class 1, and so on.

    Parameters
    ----------
    n_per_class : int, default 16
        Images per class, >= 1.
    classes : sequence of (k, theta) pairs, optional
        Stripes per side and stripe-normal angle in radians of each class.
        The default, :data:`DEFAULT_MARBLE_CLASSES`, is the 2 x 2 design
        ``k`` in {6, 12} by ``theta`` in {0, 60 degrees}:
        label 0 = (6, 0), 1 = (6, 60 deg), 2 = (12, 0), 3 = (12, 60 deg).
    size : int, default 128
        Image side in pixels, >= 8.
    seed : int, numpy.random.Generator or None, default 0
        Seed of the whole set.
    amplitude_range : (float, float), default (0.5, 2.0)
        Bounds ``0 <= low <= high`` of the per-image amplitude ``A``.
    theta_jitter : float, default 5 degrees (in radians)
        Half-width of the uniform per-image jitter of ``theta``, >= 0.
    noise_scale, base_frequency, octaves
        Noise options passed to :func:`perlin_texture`.

    Returns
    -------
    MarbleDataset
        Named tuple ``(images, labels, params)``: images float32
        ``(n_samples, size, size)``, labels int64 ``(n_samples,)``, params a
        dict of ``(n_samples,)`` arrays ``"k"``, ``"theta"``, ``"amplitude"``,
        ``"seed"``.

    Examples
    --------
    >>> images, labels, params = marble_dataset(n_per_class=2, size=32, seed=1)
    >>> images.shape, labels.tolist()
    ((8, 32, 32), [0, 0, 1, 1, 2, 2, 3, 3])
    >>> sorted(params)
    ['amplitude', 'k', 'seed', 'theta']
    """
    n_per_class = check_int("n_per_class", n_per_class, 1)
    size = check_int("size", size, 8)
    if classes is None:
        classes = DEFAULT_MARBLE_CLASSES
    classes = list(classes)
    if not classes:
        raise ValueError(f"classes must hold at least one (k, theta) pair, got {classes!r}")
    class_k, class_theta = [], []
    for index, pair in enumerate(classes):
        try:
            k, theta = pair
        except (TypeError, ValueError):
            raise ValueError(f"classes[{index}] must be a (k, theta) pair, got {pair!r}") from None
        class_k.append(check_real(f"classes[{index}] k", k, minimum=0.0, inclusive=False))
        class_theta.append(check_real(f"classes[{index}] theta", theta))
    try:
        low, high = amplitude_range
    except (TypeError, ValueError):
        raise ValueError(
            f"amplitude_range must be a (low, high) pair, got {amplitude_range!r}"
        ) from None
    low = check_real("amplitude_range low", low, minimum=0.0)
    high = check_real("amplitude_range high", high, minimum=0.0)
    if high < low:
        raise ValueError(f"amplitude_range must have low <= high, got {amplitude_range!r}")
    theta_jitter = check_real("theta_jitter", theta_jitter, minimum=0.0)

    rng = np.random.default_rng(seed)
    n_samples = n_per_class * len(classes)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), n_per_class)
    params = {
        "k": np.asarray(class_k, dtype=np.float64)[labels],
        "theta": np.asarray(class_theta, dtype=np.float64)[labels]
        + rng.uniform(-theta_jitter, theta_jitter, size=n_samples),
        "amplitude": rng.uniform(low, high, size=n_samples),
        "seed": rng.integers(0, 2**63 - 1, size=n_samples, dtype=np.int64),
    }
    images = np.empty((n_samples, size, size), dtype=np.float32)
    for i in range(n_samples):
        images[i] = perlin_texture(
            size,
            params["k"][i],
            params["theta"][i],
            params["amplitude"][i],
            int(params["seed"][i]),
            noise_scale=noise_scale,
            base_frequency=base_frequency,
            octaves=octaves,
        )
    return MarbleDataset(images, labels, params)


# --------------------------------------------------------------------------- two-phase fields


def gaussian_random_field(
    shape, correlation_length: float, seed: int | np.random.Generator | None = None
) -> np.ndarray:
    """A periodic Gaussian random field of correlation length ``correlation_length`` pixels.

    White noise ``w`` (independent standard normals, one per pixel) is
    filtered in Fourier space by ``exp(-l^2 |k|^2 / 4)`` (``k`` in radians per
    pixel, ``l = correlation_length``): the square root of the spectrum of the
    covariance ``C(r) = exp(-|r|^2 / (2 l^2))``, so the field has that
    covariance (up to the periodic images of the Gaussian, negligible while
    ``l`` is small against the sides). The realization is then standardized:
    its own mean is subtracted and it is divided by its own standard
    deviation, so it has mean exactly 0 and variance exactly 1 (for ``l``
    small against the sides this moves the covariance by little; for ``l``
    comparable to a side, the field holds only a few independent blobs).
    Below about one pixel the lattice cannot resolve ``l`` and the field
    tends to white noise.

    Parameters
    ----------
    shape : int or (int, int)
        ``(height, width)`` in pixels (an int: a square), at least 2 pixels in all.
    correlation_length : float
        ``l`` in pixels, > 0.
    seed : int, numpy.random.Generator or None
        Seed or generator (:func:`numpy.random.default_rng`); a generator is advanced.

    Returns
    -------
    ndarray of float64, shape (height, width)

    Raises
    ------
    ValueError
        A bad shape, a correlation length that is not a positive finite
        number, or one so long against the sides that no variation survives
        the filter.

    Examples
    --------
    >>> field = gaussian_random_field((64, 96), 4.0, seed=0)
    >>> field.shape, round(float(field.mean()), 12), round(float(field.std()), 12)
    ((64, 96), 0.0, 1.0)
    """
    height, width = _check_shape(shape)
    if height * width < 2:
        raise ValueError(f"shape must hold at least 2 pixels, got {shape!r}")
    length = check_real("correlation_length", correlation_length, minimum=0.0, inclusive=False)
    noise = np.random.default_rng(seed).standard_normal((height, width))
    k_row = 2.0 * np.pi * np.fft.fftfreq(height)[:, None]
    k_col = 2.0 * np.pi * np.fft.rfftfreq(width)[None, :]
    transfer = np.exp(-(length * length / 4.0) * (k_row * k_row + k_col * k_col))
    field = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(height, width))
    field -= field.mean()
    spread = field.std()
    if not spread > 1e-12:  # only the mean passed the filter: nothing left to standardize
        raise ValueError(
            f"correlation_length {correlation_length!r} is too long for a {height}x{width} "
            "field: no variation survives the filter"
        )
    field /= spread
    return field


def two_phase_field(
    shape,
    correlation_length: float,
    volume_fraction: float,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """A two-phase image: a :func:`gaussian_random_field` thresholded at its own quantile.

    Phase 1 is the ``round(volume_fraction * n_pixels)`` pixels of the
    largest field values, phase 0 the rest: the threshold is the realization's
    quantile, not the Gaussian one, so the image's volume fraction is
    ``volume_fraction`` exactly (to the nearest whole pixel), not only in
    expectation. Its expected two-point statistic is
    :func:`two_phase_two_point` (the realization's own, from
    :func:`microtex.features.spectra.two_point`, scatters about it by the
    sampling error of a field of ``(side / l)^2`` independent blobs).

    Parameters
    ----------
    shape, correlation_length, seed
        As :func:`gaussian_random_field`.
    volume_fraction : float
        Fraction of phase 1, in [0, 1].

    Returns
    -------
    ndarray of uint8, shape (height, width)
        0 and 1.

    Examples
    --------
    >>> image = two_phase_field(64, 3.0, 0.3, seed=1)
    >>> image.dtype, float(image.mean()) == round(0.3 * 64 * 64) / (64 * 64)
    (dtype('uint8'), True)
    """
    fraction = check_real("volume_fraction", volume_fraction, minimum=0.0, maximum=1.0)
    field = gaussian_random_field(shape, correlation_length, seed)
    n_pixels = field.size
    n_phase = int(round(fraction * n_pixels))
    image = np.zeros(n_pixels, np.uint8)
    # ties have probability zero for a continuous field; a stable sort settles them anyway
    image[np.argsort(field, axis=None, kind="stable")[n_pixels - n_phase:]] = 1
    return image.reshape(field.shape)


def two_phase_two_point(distance, correlation_length: float, volume_fraction: float) -> np.ndarray:
    """Expected two-point statistic ``S2(|r|)`` of phase 1 of a :func:`two_phase_field`.

    ``S2(r) = P(g(x) > t, g(x + r) > t)`` for a standard Gaussian field of
    correlation ``rho(r) = exp(-|r|^2 / (2 l^2))`` and ``t = Phi^-1(1 - V)``,
    written as ``V^2 + 1/(2 pi) int_0^{arcsin rho} exp(-t^2 / (1 + sin u)) du``
    (the bivariate normal orthant probability) and integrated by 48-point
    Gauss-Legendre quadrature (the integrand is smooth on the interval; the
    result is exact to about 1e-15).

    Parameters
    ----------
    distance : array_like
        ``|r|`` in pixels, >= 0.
    correlation_length : float
        ``l`` in pixels, > 0.
    volume_fraction : float
        ``V`` in [0, 1].

    Returns
    -------
    ndarray of float64, the shape of ``distance``

    Examples
    --------
    >>> s2 = two_phase_two_point([0.0, 100.0], 4.0, 0.5)
    >>> [round(float(v), 12) for v in s2]
    [0.5, 0.25]
    """
    from statistics import NormalDist

    length = check_real("correlation_length", correlation_length, minimum=0.0, inclusive=False)
    fraction = check_real("volume_fraction", volume_fraction, minimum=0.0, maximum=1.0)
    distance = np.asarray(distance, dtype=np.float64)
    if not (np.isfinite(distance).all() and (distance >= 0).all()):
        raise ValueError("distance must be finite and >= 0")
    if fraction in (0.0, 1.0):
        return np.full(distance.shape, fraction)
    threshold = NormalDist().inv_cdf(1.0 - fraction)
    upper = np.arcsin(np.exp(-(distance**2) / (2.0 * length * length)))
    nodes, weights = np.polynomial.legendre.leggauss(48)
    angle = upper[..., None] * (nodes + 1.0) / 2.0
    integrand = np.exp(-(threshold**2) / (1.0 + np.sin(angle)))
    integral = (upper / 2.0) * (integrand @ weights)
    return fraction**2 + integral / (2.0 * np.pi)
