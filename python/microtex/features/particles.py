"""Particles of a binary phase image: connected components, their number and sizes.

The phase image is as in :mod:`microtex.features.stereology` (True is the phase of
interest); :func:`~microtex.features.stereology.measure` reports these numbers with the
test-line ones.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from microtex._validation import check_bool, is_int
from microtex.features.segment import as_phase

__all__ = ["CONNECTIVITIES", "Particles", "particle_sizes"]

#: Pixel neighbourhoods that make one particle: edge neighbours (4) or edge and corner (8).
CONNECTIVITIES: tuple[int, ...] = (4, 8)


@dataclasses.dataclass(frozen=True, eq=False)
class Particles:
    """Connected regions of the phase of interest, and their sizes.

    Attributes
    ----------
    areas_px : ndarray of int64
        Pixel count of each particle (label order: the order in which a row-by-row scan
        first meets them).
    image_area_px : int
        Pixels in the image.
    connectivity : int
        4 or 8.
    exclude_border : bool
        Whether particles touching the image border were left out.
    """

    areas_px: np.ndarray
    image_area_px: int
    connectivity: int = 8
    exclude_border: bool = False

    @property
    def n_particles(self) -> int:
        return int(self.areas_px.size)

    @property
    def number_per_area(self) -> float:
        """N_A: particles per pixel² of image."""
        return self.n_particles / self.image_area_px

    @property
    def ecd_px(self) -> np.ndarray:
        """Equivalent circle diameter of each particle, ``2 sqrt(area / π)`` (pixels)."""
        return 2.0 * np.sqrt(self.areas_px / np.pi)

    @property
    def mean_ecd_px(self) -> float:
        return float(self.ecd_px.mean()) if self.n_particles else math.nan

    @property
    def median_ecd_px(self) -> float:
        return float(np.median(self.ecd_px)) if self.n_particles else math.nan


def _check_connectivity(connectivity) -> int:
    if not (is_int(connectivity) and connectivity in CONNECTIVITIES):
        shown = " or ".join(map(str, CONNECTIVITIES))
        raise ValueError(f"connectivity must be {shown}, got {connectivity!r}")
    return int(connectivity)


def particle_sizes(phase, *, connectivity: int = 8, exclude_border: bool = False) -> Particles:
    """Particles of the phase of interest: connected components and their areas.

    Pixels of the phase of interest are one particle when joined through edge neighbours
    (``connectivity=4``) or edge and corner neighbours (``connectivity=8``, the default, as
    in scikit-image's ``label``), found by ``scipy.ndimage.label``. Particles cut by the image
    border are counted (a particle's area is then what lies inside); ``exclude_border=True``
    leaves out every particle with a pixel on the border, which removes the cut sizes but
    lowers the count (large particles are more often on the border).

    Examples
    --------
    >>> import numpy as np
    >>> phase = np.zeros((6, 6), bool); phase[1:3, 1:3] = True; phase[3, 3] = True
    >>> particle_sizes(phase).areas_px.tolist(), particle_sizes(phase, connectivity=4).n_particles
    ([5], 2)
    """
    from scipy import ndimage

    array = as_phase(phase)
    connectivity = _check_connectivity(connectivity)
    exclude_border = check_bool("exclude_border", exclude_border)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n_labels = ndimage.label(array, structure=structure)
    areas = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:].astype(np.int64)
    if exclude_border and n_labels:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep = np.ones(n_labels + 1, bool)
        keep[edge] = False
        areas = areas[keep[1:]]
    return Particles(areas, int(array.size), connectivity, exclude_border)
