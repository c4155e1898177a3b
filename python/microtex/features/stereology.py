"""Stereology of a two-phase micrograph: V_V, L_A and S_V, lineal intercepts, ASTM E112 grain
size, Noguchi's mean free path and particle sizes (DESIGN.md §6).

The phase image is a binary array (``bool``, or numbers that are all 0 or 1); True is the
*phase of interest* (α), False the rest. :func:`measure` takes a gray micrograph, segments it
(:func:`microtex.features.segment.segment`: Otsu, white is α unless told otherwise) and
returns every number below; the other functions take the phase image. The particle numbers
come from :mod:`microtex.features.particles` (re-exported here); many images become one table
with :func:`microtex.features.stereology_table.stereology_table`.

Conventions, the same for every function:

* **Pixels are point samples** one pixel apart, at the pixel centres.
* **Test lines** run along rows ``0, s, 2s, ...`` (horizontal) and columns ``0, s, 2s, ...``
  (vertical), ``s = spacing`` pixels apart (Noguchi & Inoue's I_u). A line runs from the
  centre of its first pixel to the centre of its last: ``width - 1`` pixels long (horizontal),
  ``height - 1`` (vertical).
* **A boundary crossing** is a pair of neighbouring pixels on a line that belong to different
  phases (the boundary lies between them). The image border is *not* a boundary: the window
  cuts the microstructure, it does not end it. With ``periodic=True`` the image is one period
  of a periodic field: the last and first pixel of a line are neighbours too, and lines are
  ``width`` and ``height`` pixels long.
* **P_L** = crossings / test-line length, per direction; the orientation average is the mean
  of the horizontal and vertical values, ``<P_L> = (P_L,h + P_L,v) / 2``.
* **N_L** = intercepts of α per unit line length = ``P_L / 2``: every α intercept has an
  entry and an exit, and an intercept cut by a line end counts one half (ASTM E112's rule
  for intercept counts), which makes ``N_L = P_L / 2`` exact on any window, whatever the
  parity of the crossings on a line.
* **L_L** = length of test line inside α / line length, the boundary lying halfway between
  unlike neighbours (a line's end pixels weigh one half, the others one). The intercepts use
  L_L, so that numerator and denominator see the same points; L_L estimates V_V (Rosiwal),
  and with ``spacing=1`` differs from it only by the half weight of the border pixels.
* **V_V** is the fraction of α pixels of the whole image (point count, = A_A).

**Noguchi & Inoue's mean free path of the ferrite**, ``d_f = V_f / (N_L I_u)``, is the mean
intercept of the phase of interest with the ferrite as that phase (white in nital-etched
steel: the default ``phase="bright"``). :meth:`Stereology.as_dict` gives it by name,
``d_f_px`` (and ``d_f_um``), equal to ``mean_intercept_px``. It is *not*
``mean_free_path_*``: that is Fullman's λ, the mean intercept of the *other* phase (the
edge-to-edge distance between regions of the phase of interest); it equals d_f only when the
second phase is made the phase of interest. Test lines run every ``I_u = spacing`` pixels,
horizontal and vertical; N_L counts ferrite intercepts per unit *image area*, so that
``N_L I_u`` is intercepts per unit *line length* (the grid has ``area / I_u`` of line). The
formula leaves three choices open; ours are:

1. **N_L counts intercepts, not crossing points**: ``N_L = P_L / 2``, each ferrite intercept
   having an entry and an exit. The paper's notation also reads as crossing points per unit
   length (P_L), which would halve d_f: a factor-2 ambiguity to keep in mind when comparing
   with published values.
2. **V_f is L_L on the same test lines**, not V_V of the whole image, so that numerator and
   denominator see the same points.
3. **The directions are combined as a ratio of averages**: ``d_f = <L_L> / <N_L>``, L_L and
   P_L averaged over horizontal and vertical lines, then divided; not the mean of the
   per-direction intercepts. For stripes, whose vertical lines cross nothing, d_f is then
   twice the horizontal intercept, as an orientation average must be.

Every length is in pixels; :meth:`Stereology.as_dict` adds the same numbers in µm when a pixel
size is given.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import numpy as np

from microtex._validation import check_bool, check_choice, check_positive_int, check_real
from microtex.features.particles import (
    CONNECTIVITIES,
    Particles,
    _check_connectivity,
    particle_sizes,
)
from microtex.features.segment import (
    PHASES,
    _check_sigma,
    _check_threshold,
    as_phase,
    segment,
)

__all__ = [
    "CONNECTIVITIES",
    "Intercepts",
    "Particles",
    "Stereology",
    "area_fraction",
    "as_phase",
    "astm_grain_size",
    "boundary_length_per_area",
    "check_measure_options",
    "line_intercepts",
    "measure",
    "particle_sizes",
]

#: ASTM E112: G = 0 at a mean lineal intercept of 32.00 mm at 100x, i.e. 0.32 mm.
_ASTM_G0_INTERCEPT_MM = 0.32


def area_fraction(phase) -> float:
    """V_V: the fraction of pixels in the phase of interest.

    Examples
    --------
    >>> import numpy as np
    >>> area_fraction(np.array([[1, 0, 0, 0]]))
    0.25
    """
    array = as_phase(phase)
    return float(np.count_nonzero(array) / array.size)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


@dataclasses.dataclass(frozen=True)
class Intercepts:
    """Boundary crossings on horizontal and vertical test lines, and what follows from them.

    Attributes
    ----------
    area_fraction : float
        V_V of the whole image.
    crossings_h, crossings_v : int
        Boundary crossings counted on the horizontal / vertical test lines.
    length_h, length_v : int
        Total length (pixels) of the horizontal / vertical test lines.
    phase_length_h, phase_length_v : float
        The part of that length inside the phase of interest.
    spacing : int
        Pixels between neighbouring test lines.
    periodic : bool
        Whether lines wrapped around the image.

    The properties are NaN where a denominator is 0 (e.g. an intercept when
    no line crosses a boundary: it is longer than the window can tell).
    """

    area_fraction: float
    crossings_h: int
    crossings_v: int
    length_h: int
    length_v: int
    phase_length_h: float
    phase_length_v: float
    spacing: int = 1
    periodic: bool = False

    @property
    def P_L_h(self) -> float:
        """Boundary crossings per pixel of horizontal test line."""
        return _ratio(self.crossings_h, self.length_h)

    @property
    def P_L_v(self) -> float:
        """Boundary crossings per pixel of vertical test line."""
        return _ratio(self.crossings_v, self.length_v)

    @property
    def P_L(self) -> float:
        """Orientation average ``(P_L,h + P_L,v) / 2`` (per pixel)."""
        return (self.P_L_h + self.P_L_v) / 2

    @property
    def N_L(self) -> float:
        """Intercepts of the phase of interest per pixel of line, ``<P_L> / 2``."""
        return self.P_L / 2

    @property
    def L_L_h(self) -> float:
        """Fraction of the horizontal lines' length inside the phase of interest."""
        return _ratio(self.phase_length_h, self.length_h)

    @property
    def L_L_v(self) -> float:
        """Fraction of the vertical lines' length inside the phase of interest."""
        return _ratio(self.phase_length_v, self.length_v)

    @property
    def L_L(self) -> float:
        """Orientation average ``(L_L,h + L_L,v) / 2``."""
        return (self.L_L_h + self.L_L_v) / 2

    @property
    def mean_intercept_h(self) -> float:
        """Mean intercept of the phase of interest on horizontal lines, ``L_L,h / (P_L,h / 2)``."""
        return _ratio(self.phase_length_h, self.crossings_h / 2)

    @property
    def mean_intercept_v(self) -> float:
        """Mean intercept of the phase of interest on vertical lines, ``L_L,v / (P_L,v / 2)``."""
        return _ratio(self.phase_length_v, self.crossings_v / 2)

    @property
    def mean_intercept(self) -> float:
        """Mean intercept length of the phase of interest, ``<L_L> / <N_L>`` (pixels)."""
        return _ratio(self.L_L, self.N_L)

    @property
    def mean_free_path_h(self) -> float:
        """Mean intercept of the other phase on horizontal lines, ``(1 - L_L,h) / (P_L,h / 2)``."""
        return _ratio(self.length_h - self.phase_length_h, self.crossings_h / 2)

    @property
    def mean_free_path_v(self) -> float:
        """Mean intercept of the other phase on vertical lines, ``(1 - L_L,v) / (P_L,v / 2)``."""
        return _ratio(self.length_v - self.phase_length_v, self.crossings_v / 2)

    @property
    def mean_free_path(self) -> float:
        """Mean intercept of the other phase, ``(1 - <L_L>) / <N_L>`` (pixels): Fullman's λ.

        The edge-to-edge distance between regions of the phase of interest; Noguchi's d_f
        of the phase of interest is :attr:`mean_intercept`, not this.
        """
        return _ratio(1.0 - self.L_L, self.N_L)


def _crossings(lines: np.ndarray, periodic: bool) -> tuple[int, int, float]:
    """Phase changes along the rows of ``lines``, the rows' total length and its part in phase."""
    n_lines, n_points = lines.shape
    changes = np.count_nonzero(lines[:, 1:] != lines[:, :-1])
    inside = np.count_nonzero(lines)
    if periodic:
        changes += np.count_nonzero(lines[:, 0] != lines[:, -1])
        return int(changes), n_lines * n_points, float(inside)
    # from the first pixel's centre to the last's: the end pixels lie half on the line
    ends = np.count_nonzero(lines[:, 0]) + np.count_nonzero(lines[:, -1])
    return int(changes), n_lines * (n_points - 1), float(inside - ends / 2)


def line_intercepts(phase, *, spacing: int = 1, periodic: bool = False) -> Intercepts:
    """Count boundary crossings on horizontal and vertical test lines ``spacing`` pixels apart.

    See the module docstring for the conventions. From the counts
    (:class:`Intercepts`):

    * ``P_L,h``, ``P_L,v``: crossings per unit line length; ``<P_L>`` their mean.
    * ``N_L = <P_L> / 2``: intercepts of the phase of interest α per unit length.
    * ``L_L``: the fraction of line length inside α (``<L_L>`` the mean of both directions).
    * Mean intercept length of α, ``L_α = <L_L> / <N_L>`` (per direction: ``L_L,h / (P_L,h /
      2)``, the α length on the lines over the α intercepts counted on them): ASTM E112's
      mean lineal intercept of α, and Noguchi & Inoue's d_f when α is the ferrite (see the
      module docstring).
    * Mean free path ``λ = (1 - <L_L>) / <N_L>``: the mean intercept of the *other* phase,
      the edge-to-edge distance between α regions along a line (Fullman's λ; not Noguchi's
      d_f, which is ``L_α``).

    For vertical stripes of α, ``a`` pixels wide with period ``p``, on an image ``m p + 1``
    pixels wide whose first column starts a stripe (``m p`` with ``periodic=True``),
    horizontal lines cross ``2 m`` boundaries over ``m p`` pixels, ``a m`` of them in α:
    ``P_L,h = 2 / p``, ``L_L,h = a / p``, ``L_α,h = a`` and ``λ_h = p - a``. Vertical lines
    cross none (``P_L,v = 0``), so the orientation average halves ``<P_L>`` to ``1 / p`` and
    doubles the intercepts: ``L_α = 2 a`` and ``λ = 2 (p - a)`` when ``<L_L> = a / p``.

    Parameters
    ----------
    phase : array_like, shape (height, width)
        Binary phase image (:func:`as_phase`); at least 2 x 2 pixels.
    spacing : int, optional
        Pixels between test lines (1: every row and column).
    periodic : bool, optional
        Treat the image as one period of a periodic field.

    Returns
    -------
    Intercepts

    Examples
    --------
    >>> import numpy as np
    >>> stripes = np.tile([1, 1, 0, 0, 0, 0], 4)[None].repeat(6, axis=0)  # a = 2, p = 6
    >>> found = line_intercepts(stripes, periodic=True)
    >>> found.crossings_h, found.length_h, found.P_L_h, found.mean_intercept_h
    (48, 144, 0.3333333333333333, 2.0)
    >>> found.crossings_v, found.mean_intercept, round(found.mean_free_path, 9)
    (0, 4.0, 8.0)
    """
    array = as_phase(phase)
    spacing = check_positive_int("spacing", spacing)
    periodic = check_bool("periodic", periodic)
    if min(array.shape) < 2:
        raise ValueError(
            f"phase image of shape {array.shape} is too small for test lines: "
            "height and width must be at least 2"
        )
    crossings_h, length_h, inside_h = _crossings(array[::spacing], periodic)
    crossings_v, length_v, inside_v = _crossings(array.T[::spacing], periodic)
    return Intercepts(
        area_fraction=float(np.count_nonzero(array) / array.size),
        crossings_h=crossings_h, crossings_v=crossings_v, length_h=length_h, length_v=length_v,
        phase_length_h=inside_h, phase_length_v=inside_v, spacing=spacing, periodic=periodic,
    )  # fmt: skip


def boundary_length_per_area(phase, *, periodic: bool = False) -> float:
    """L_A: boundary length per unit area (1/pixel), from crossings on every row and column.

    The estimator is the Cauchy–Crofton (test-line) relation ``L_A = (π/2) <P_L>``, with
    ``<P_L>`` the mean of the crossings per unit length on all horizontal and all vertical
    lines (:func:`line_intercepts` with ``spacing=1``). It is unbiased for boundaries with no
    preferred orientation (a disk of radius R gives ``2 π R / area``); with only two line
    directions a straight boundary at angle θ is weighted by ``(|cos θ| + |sin θ|) π / 4``,
    between 0.79 and 1.11. ``S_V = (4/π) L_A = 2 <P_L>`` is the boundary area per unit
    volume of a structure that is isotropic in 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> half = np.zeros((4, 4), bool); half[:, 2:] = True  # one vertical boundary 4 px long
    >>> round(boundary_length_per_area(half), 4)  # (π/2) * (4 crossings / 12 px) / 2
    0.2618
    """
    return (math.pi / 2) * line_intercepts(phase, spacing=1, periodic=periodic).P_L


def astm_grain_size(mean_intercept_mm) -> float:
    """ASTM E112 grain size number G from the mean lineal intercept length (mm).

    ``G = 2 log2(0.32 mm / ℓ)``: G = 0 at ℓ = 32.00 mm at 100x (0.32 mm), and every step
    of 1 in G divides ℓ by √2. This is the standard's
    ``G = -6.643856 log10(ℓ) - 3.288`` with its constant unrounded (3.28771), so the two
    agree within 0.0003. For a two-phase structure, ℓ is the mean intercept of the grains'
    phase (:attr:`Intercepts.mean_intercept` with that phase as the phase of interest).

    On an image of a grain-boundary network (thin boundaries between grains), measure the
    grains as the phase of interest (e.g. ``phase="bright"`` for dark boundaries). The
    boundary pixels then belong to no grain and are left out of ℓ, the grains' length on
    the test lines per grain intercept: ℓ comes out low, by roughly the boundary area
    fraction ``f_b`` (``ℓ ≈ (1 - f_b)`` times the centre-to-centre spacing of the
    boundaries), and G high, by about ``-2 log2(1 - f_b) ≈ 2.9 f_b``. Thin the boundaries
    to one pixel, or correct ℓ by ``1 / (1 - f_b)``, where that matters.

    Examples
    --------
    >>> [round(astm_grain_size(mm), 4) for mm in (0.32, 0.04, 0.032)]
    [0.0, 6.0, 6.6439]
    """
    value = float(mean_intercept_mm)
    if math.isnan(value):
        return math.nan
    if not value > 0:
        raise ValueError(f"mean intercept must be a length > 0 mm, got {mean_intercept_mm!r}")
    return 2.0 * math.log2(_ASTM_G0_INTERCEPT_MM / value)


# key suffix in pixel units -> (suffix in µm, power of the pixel size)
_UNITS = (("_per_px2", "_per_um2", -2), ("_per_px", "_per_um", -1), ("_px", "_um", 1))


@dataclasses.dataclass(frozen=True, eq=False)
class Stereology:
    """What :func:`measure` found in one image.

    Attributes
    ----------
    threshold : float
        The gray threshold used (Otsu's, or the one given); NaN for a phase image.
    intercepts : Intercepts
        On the test lines ``spacing`` apart.
    boundary_length_per_area : float
        L_A (1/pixel), from every row and column (:func:`boundary_length_per_area`).
    particles : Particles
    pixel_size_um : float or None
    """

    threshold: float
    intercepts: Intercepts
    boundary_length_per_area: float
    particles: Particles
    pixel_size_um: float | None = None

    def as_dict(self) -> dict[str, float]:
        """The numbers by name; with a pixel size, every length again in µm, and ASTM G.

        Keys: ``threshold``, ``V_V``, ``L_L`` (on the test lines); ``L_A_per_px`` and
        ``S_V_per_px`` (= 4/π L_A); ``P_L_h_per_px``, ``P_L_v_per_px``, ``P_L_per_px`` (their
        mean), ``N_L_per_px``; ``mean_intercept_h_px``, ``mean_intercept_v_px``,
        ``mean_intercept_px`` (the phase of interest); ``d_f_px``, Noguchi & Inoue's mean free
        path of the phase of interest (the ferrite, when that is the phase of interest): the
        same number as ``mean_intercept_px``, by the name of their paper;
        ``mean_free_path_h_px``, ``mean_free_path_v_px``, ``mean_free_path_px``: Fullman's λ,
        the mean intercept of the *other* phase; ``n_particles``, ``N_A_per_px2``,
        ``ecd_mean_px``, ``ecd_median_px``. With ``pixel_size_um`` the same keys ending
        ``_um``, ``_per_um``, ``_per_um2``, and ``astm_G`` (:func:`astm_grain_size` of
        ``mean_intercept_um / 1000``).
        """
        found, particles = self.intercepts, self.particles
        out = {
            "threshold": self.threshold,
            "V_V": found.area_fraction,
            "L_L": found.L_L,
            "L_A_per_px": self.boundary_length_per_area,
            "S_V_per_px": (4 / math.pi) * self.boundary_length_per_area,
            "P_L_h_per_px": found.P_L_h,
            "P_L_v_per_px": found.P_L_v,
            "P_L_per_px": found.P_L,
            "N_L_per_px": found.N_L,
            "mean_intercept_h_px": found.mean_intercept_h,
            "mean_intercept_v_px": found.mean_intercept_v,
            "mean_intercept_px": found.mean_intercept,
            "d_f_px": found.mean_intercept,  # Noguchi & Inoue's d_f (module docstring)
            "mean_free_path_h_px": found.mean_free_path_h,
            "mean_free_path_v_px": found.mean_free_path_v,
            "mean_free_path_px": found.mean_free_path,
            "n_particles": float(particles.n_particles),
            "N_A_per_px2": particles.number_per_area,
            "ecd_mean_px": particles.mean_ecd_px,
            "ecd_median_px": particles.median_ecd_px,
        }
        if self.pixel_size_um is None:
            return out
        for key, value in list(out.items()):
            for suffix, um_suffix, power in _UNITS:
                if key.endswith(suffix):
                    out[key[: -len(suffix)] + um_suffix] = value * self.pixel_size_um**power
                    break
        out["astm_G"] = astm_grain_size(out["mean_intercept_um"] / 1000.0)
        return out


@functools.cache
def _measure_defaults() -> dict:
    """:func:`measure`'s options and their defaults, read from its signature (written once)."""
    parameters = inspect.signature(measure).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def check_measure_options(**options) -> dict:
    """:func:`measure`'s options, checked, with its defaults for those not given.

    For callers that measure many images with one set of options and want a bad one
    refused before the first image is read, as ``stereology_table`` does (module
    :mod:`microtex.features.stereology_table`). ``threshold`` comes back as ``"otsu"``, a
    float or None; the numbers as float or int.

    Raises
    ------
    TypeError
        An option :func:`measure` does not have.
    ValueError
        A bad value; the message names the option and the value.

    Examples
    --------
    >>> options = check_measure_options(spacing=2, pixel_size_um=1)
    >>> options["spacing"], options["pixel_size_um"], options["threshold"], options["periodic"]
    (2, 1.0, 'otsu', False)
    >>> check_measure_options(periodic="no")
    Traceback (most recent call last):
    ...
    ValueError: periodic must be True or False, got 'no'
    """
    defaults = _measure_defaults()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"unknown measure() option(s) {unknown}; choose from {sorted(defaults)}")
    given = {**defaults, **options}
    threshold = given["threshold"]
    return {
        "threshold": None if threshold is None else _check_threshold(threshold),
        "phase": check_choice("phase", given["phase"], PHASES),
        "spacing": check_positive_int("spacing", given["spacing"]),
        "pixel_size_um": check_real("pixel_size_um", given["pixel_size_um"], minimum=0.0,
                                    inclusive=False, allow_none=True,
                                    what="a length > 0 in µm"),
        "denoise": _check_sigma(given["denoise"]),
        "connectivity": _check_connectivity(given["connectivity"]),
        "exclude_border": check_bool("exclude_border", given["exclude_border"]),
        "periodic": check_bool("periodic", given["periodic"]),
    }  # fmt: skip


def measure(image, *, threshold: str | float | None = "otsu", phase: str = "bright",
            spacing: int = 1, pixel_size_um: float | None = None, denoise: float | None = None,
            connectivity: int = 8, exclude_border: bool = False,
            periodic: bool = False) -> Stereology:  # fmt: skip
    """Every stereological number of one micrograph (or phase image).

    Parameters
    ----------
    image : array_like, shape (height, width)
        A gray micrograph (``uint8``, ``uint16``, float in ``[0, 1]``), segmented with
        ``threshold``, ``phase`` and ``denoise`` (:func:`~microtex.features.segment.segment`);
        or a ``bool`` array, which is taken as the phases themselves (True is the bright
        phase; no threshold or blur is applied).
    threshold : "otsu", float in [0, 1] or None, optional
        Pixels brighter than it are the bright phase. None: ``image`` already is a binary
        phase image (bool or 0/1 numbers); anything else is a ValueError naming its values.
    phase : {"bright", "dark"}, optional
        The phase of interest (V_V, intercepts, particles are of this phase).
    spacing : int, optional
        Pixels between test lines for P_L, N_L and the intercepts (Noguchi's I_u). L_A and
        S_V always use every row and column.
    pixel_size_um : float, optional
        Side of a pixel in µm: adds every length in µm and ASTM G to :meth:`~Stereology.as_dict`.
    denoise : float, optional
        Sigma (pixels) of a Gaussian blur before thresholding (gray images only).
    connectivity : {4, 8}, optional
        Particle connectivity (:func:`particle_sizes`).
    exclude_border : bool, optional
        Leave particles touching the border out of the particle numbers.
    periodic : bool, optional
        Test lines wrap around the image (:func:`line_intercepts`).

    Returns
    -------
    Stereology
        Its :meth:`~Stereology.as_dict` gives the numbers by name.

    Raises
    ------
    ValueError
        A bad option; an image that is empty, not 2-D, smaller than 2 x 2, holds NaN, is
        constant (for Otsu), or is not binary when ``threshold=None``.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((20, 20), np.uint8); image[5:15, 5:15] = 200  # a 10 x 10 particle
    >>> numbers = measure(image, pixel_size_um=0.5).as_dict()
    >>> numbers["V_V"], numbers["n_particles"], numbers["mean_intercept_px"]
    (0.25, 1.0, 10.0)
    >>> numbers["mean_intercept_um"], round(numbers["ecd_mean_um"], 3)
    (5.0, 5.642)
    """
    options = check_measure_options(
        threshold=threshold, phase=phase, spacing=spacing, pixel_size_um=pixel_size_um,
        denoise=denoise, connectivity=connectivity, exclude_border=exclude_border,
        periodic=periodic,
    )  # fmt: skip
    periodic = options["periodic"]
    array = np.asarray(image)
    if options["threshold"] is None or array.dtype == np.bool_:
        if options["denoise"] is not None:
            raise ValueError("denoise applies to gray images; this image is taken as phases")
        bright = as_phase(array, "image")
        phases = bright if phase == "bright" else ~bright
        used = math.nan
    else:
        phases, used = segment(array, options["threshold"], phase=phase,
                               denoise=options["denoise"], return_threshold=True)  # fmt: skip
    intercepts = line_intercepts(phases, spacing=options["spacing"], periodic=periodic)
    everywhere = (
        intercepts if options["spacing"] == 1 else line_intercepts(phases, periodic=periodic)
    )
    return Stereology(
        threshold=float(used),
        intercepts=intercepts,
        boundary_length_per_area=(math.pi / 2) * everywhere.P_L,
        particles=particle_sizes(phases, connectivity=options["connectivity"],
                                 exclude_border=options["exclude_border"]),
        pixel_size_um=options["pixel_size_um"],
    )  # fmt: skip
