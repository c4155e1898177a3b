"""Stereology: golden values on stripes, squares and disks whose answers are known exactly,
ASTM E112, units, batches, bad input, and Otsu against hand-drawn masks on real micrographs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microtex.errors import NoImagesError
from microtex.features.stereology import (
    area_fraction,
    as_phase,
    astm_grain_size,
    boundary_length_per_area,
    line_intercepts,
    measure,
    particle_sizes,
)
from microtex.features.stereology_table import stereology_table
from microtex.io import FeatureTable

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def stripes(a: int, p: int, n_periods: int, height: int = 7, extra: int = 0) -> np.ndarray:
    """Vertical stripes of the phase, ``a`` px wide every ``p`` px; column 0 starts a stripe."""
    columns = np.arange(n_periods * p + extra)
    return np.repeat(((columns % p) < a)[None], height, axis=0)


def disk(radius: int, size: int) -> np.ndarray:
    """The pixels within ``radius`` of the centre pixel of a ``size`` x ``size`` image."""
    y, x = np.mgrid[:size, :size] - size // 2
    return x**2 + y**2 <= radius**2


# --------------------------------------------------------------------------- V_V, P_L, intercepts
@pytest.mark.parametrize(("a", "p", "m"), [(2, 6, 4), (3, 10, 5), (1, 4, 8)])
def test_periodic_stripes_have_exact_closed_forms(a, p, m):
    image = stripes(a, p, m)
    found = line_intercepts(image, periodic=True)
    assert area_fraction(image) == pytest.approx(a / p, abs=1e-15)
    assert (found.crossings_h, found.length_h) == (7 * 2 * m, 7 * m * p)
    assert found.P_L_h == pytest.approx(2 / p)
    assert found.L_L_h == pytest.approx(a / p)
    assert found.mean_intercept_h == pytest.approx(a)  # d_f across the stripes: the width
    assert found.mean_free_path_h == pytest.approx(p - a)  # ... and the matrix between them
    # vertical lines run along the stripes: no crossing, so no intercept to measure
    assert found.crossings_v == 0 and found.P_L_v == 0
    assert math.isnan(found.mean_intercept_v) and math.isnan(found.mean_free_path_v)
    # the orientation average halves P_L and doubles the intercepts
    assert found.P_L == pytest.approx(1 / p) and found.N_L == pytest.approx(1 / (2 * p))
    assert found.mean_intercept == pytest.approx(2 * a)
    assert found.mean_free_path == pytest.approx(2 * (p - a))
    assert boundary_length_per_area(image, periodic=True) == pytest.approx(math.pi / (2 * p))


@pytest.mark.parametrize(("a", "p", "m"), [(2, 6, 4), (3, 10, 5)])
def test_noguchi_d_f_is_the_mean_intercept_of_the_phase_of_interest_by_name(a, p, m):
    numbers = measure(stripes(a, p, m), periodic=True, pixel_size_um=0.5).as_dict()
    assert numbers["d_f_px"] == numbers["mean_intercept_px"] == pytest.approx(2 * a)
    assert numbers["d_f_um"] == pytest.approx(a)  # 2 a pixels of 0.5 µm
    # Fullman's λ is the other phase's intercept, not d_f
    assert numbers["mean_free_path_px"] == pytest.approx(2 * (p - a))
    matrix = measure(stripes(a, p, m), periodic=True, phase="dark").as_dict()
    assert matrix["d_f_px"] == pytest.approx(numbers["mean_free_path_px"])


def test_stripes_transposed_swap_the_directions():
    image = stripes(3, 8, 4, height=9).T
    found = line_intercepts(image, periodic=True)
    assert found.mean_intercept_v == pytest.approx(3) and found.mean_free_path_v == pytest.approx(5)
    assert found.crossings_h == 0 and found.mean_intercept == pytest.approx(6)


@pytest.mark.parametrize(("a", "p", "m"), [(2, 6, 4), (4, 9, 3)])
def test_stripes_in_a_window_from_stripe_start_to_stripe_start_are_exact(a, p, m):
    # m p + 1 columns: the lines run over m whole periods, pixel centre to pixel centre
    image = stripes(a, p, m, extra=1)
    found = line_intercepts(image)
    height = image.shape[0]
    assert (found.crossings_h, found.length_h) == (height * 2 * m, height * m * p)
    assert found.phase_length_h == height * m * a
    assert found.mean_intercept_h == pytest.approx(a)
    assert found.mean_free_path_h == pytest.approx(p - a)
    # vertical lines: every phase column is one line, (height - 1) long, all in the phase
    assert found.L_L_v == pytest.approx((m * a + 1) / (m * p + 1))
    assert area_fraction(image) == pytest.approx((m * a + 1) / (m * p + 1))
    expected = (a / p + (m * a + 1) / (m * p + 1)) / 2 / (1 / (2 * p))
    assert found.mean_intercept == pytest.approx(expected)


def test_border_is_not_a_boundary_and_a_cut_intercept_counts_half():
    row = np.array([[1, 1, 1, 0, 0, 0, 0]] * 2, bool)
    found = line_intercepts(row)
    # one crossing per row; the phase runs from the line's start (pixel centre 0) to the
    # boundary at 2.5: ASTM's half intercept, so the mean intercept is 2.5 / 0.5
    assert (found.crossings_h, found.phase_length_h, found.length_h) == (2, 5.0, 12)
    assert found.mean_intercept_h == pytest.approx(5.0)
    full = line_intercepts(np.ones((3, 5), bool))
    assert full.crossings_h == full.crossings_v == 0 and math.isnan(full.mean_intercept)
    assert full.L_L == 1.0


def test_spacing_selects_every_spacing_th_row_and_column():
    image = np.zeros((20, 20), bool)
    image[3:9, 5:15] = True  # 6 rows x 10 columns
    found = line_intercepts(image, spacing=4)  # rows and columns 0, 4, 8, 12, 16
    assert found.spacing == 4
    assert (found.crossings_h, found.length_h, found.phase_length_h) == (4, 95, 20.0)  # rows 4, 8
    assert (found.crossings_v, found.length_v, found.phase_length_v) == (4, 95, 12.0)  # cols 8, 12
    assert found.mean_intercept_h == pytest.approx(10)
    assert found.mean_intercept_v == pytest.approx(6)
    assert found.mean_intercept == pytest.approx((20 / 95 + 12 / 95) / 2 / (4 / 95 / 2))
    every = line_intercepts(image)
    assert (every.crossings_h, every.crossings_v) == (12, 20)
    assert every.mean_intercept == pytest.approx(((60 + 60) / 380 / 2) / ((12 + 20) / 380 / 4))


def test_disk_area_fraction_intercept_boundary_length_and_diameter():
    radius, size = 20, 101
    image = disk(radius, size)
    area = int(image.sum())
    assert area_fraction(image) == pytest.approx(math.pi * radius**2 / size**2, rel=0.01)
    found = line_intercepts(image)
    # 2 R + 1 rows and columns cross the disk, each twice
    assert found.crossings_h == found.crossings_v == 2 * (2 * radius + 1)
    assert found.mean_intercept_h == pytest.approx(area / (2 * radius + 1))
    assert found.mean_intercept == pytest.approx(math.pi * radius / 2, rel=0.03)  # mean chord
    # Cauchy-Crofton: a disk's boundary has no preferred direction
    continuum = 2 * math.pi * radius / size**2
    assert boundary_length_per_area(image) == pytest.approx(continuum, rel=0.05)
    particles = particle_sizes(image)
    assert particles.n_particles == 1 and particles.areas_px.tolist() == [area]
    assert abs(particles.mean_ecd_px - 2 * radius) < 1


def test_bright_and_dark_phases_swap_intercept_and_free_path():
    rng = np.random.default_rng(3)
    image = rng.random((40, 50)).astype(np.float32)
    bright, dark = measure(image, threshold=0.4), measure(image, threshold=0.4, phase="dark")
    assert bright.intercepts.area_fraction + dark.intercepts.area_fraction == pytest.approx(1)
    assert bright.intercepts.mean_intercept == pytest.approx(dark.intercepts.mean_free_path)
    assert bright.intercepts.mean_free_path == pytest.approx(dark.intercepts.mean_intercept)
    assert bright.boundary_length_per_area == pytest.approx(dark.boundary_length_per_area)


# --------------------------------------------------------------------------- particles
def test_bool_options_take_numpy_bools_and_refuse_truthy_values():
    image = stripes(2, 6, 4)
    assert measure(image, periodic=np.bool_(True)).intercepts.periodic is True
    found = particle_sizes(image, exclude_border=np.bool_(True))
    assert found.exclude_border is True and found.n_particles == 0  # every stripe touches
    with pytest.raises(ValueError, match="periodic must be True or False, got 'no'"):
        line_intercepts(image, periodic="no")
    with pytest.raises(ValueError, match="exclude_border must be True or False, got 'no'"):
        particle_sizes(image, exclude_border="no")


def test_particles_count_connectivity_and_border():
    image = np.zeros((12, 12), bool)
    image[2:4, 2:4] = True  # 4 px
    image[4, 4] = True  # touches the square at a corner only
    image[8:11, 0:3] = True  # 9 px on the left border
    eight = particle_sizes(image)
    assert eight.areas_px.tolist() == [5, 9] and eight.connectivity == 8
    assert particle_sizes(image, connectivity=4).areas_px.tolist() == [4, 1, 9]
    inner = particle_sizes(image, exclude_border=True)
    assert inner.areas_px.tolist() == [5] and inner.number_per_area == 1 / 144
    assert eight.ecd_px == pytest.approx(2 * np.sqrt(np.array([5, 9]) / np.pi))
    assert eight.median_ecd_px == pytest.approx(eight.ecd_px.mean())
    none = particle_sizes(np.zeros((3, 3), bool))
    assert none.n_particles == 0 and math.isnan(none.mean_ecd_px)


def test_many_disks_are_counted_and_sized():
    image = np.zeros((120, 120), bool)
    for row, col in [(20, 20), (20, 80), (70, 50), (95, 95)]:
        image[row - 12 : row + 13, col - 12 : col + 13] |= disk(8, 25)
    particles = particle_sizes(image)
    assert particles.n_particles == 4
    assert np.all(np.abs(particles.ecd_px - 16) < 1)


# --------------------------------------------------------------------------- ASTM E112
def test_astm_grain_size_number_from_the_standard_definition():
    assert astm_grain_size(0.32) == pytest.approx(0.0, abs=1e-12)  # 32.00 mm at 100x
    assert astm_grain_size(0.04) == pytest.approx(6.0)
    assert astm_grain_size(0.032) == pytest.approx(2 * math.log2(10))  # 6.6439
    assert astm_grain_size(0.16) - astm_grain_size(0.32) == pytest.approx(2.0)
    for intercept_mm in (0.005, 0.02, 0.1, 0.5):  # the standard's printed formula
        printed = -6.643856 * math.log10(intercept_mm) - 3.288
        assert astm_grain_size(intercept_mm) == pytest.approx(printed, abs=3e-4)
    assert math.isnan(astm_grain_size(float("nan")))
    with pytest.raises(ValueError, match="mean intercept must be a length > 0 mm, got 0"):
        astm_grain_size(0)


def test_measure_gives_astm_g_from_the_intercept_in_mm():
    image = np.zeros((20, 20), np.uint8)
    image[5:15, 5:15] = 200
    numbers = measure(image, pixel_size_um=4.0).as_dict()
    assert numbers["mean_intercept_px"] == pytest.approx(10)
    assert numbers["mean_intercept_um"] == pytest.approx(40)
    assert numbers["astm_G"] == pytest.approx(6.0)


# --------------------------------------------------------------------------- units and dict
def test_every_length_is_also_given_in_micrometres():
    rng = np.random.default_rng(1)
    image = (rng.random((30, 40)) < 0.4).astype(np.float32)
    pixel = 0.25
    plain = measure(image).as_dict()
    scaled = measure(image, pixel_size_um=pixel).as_dict()
    assert not any(key.endswith(("_um", "_per_um", "_per_um2")) for key in plain)
    assert "astm_G" not in plain
    assert {k: v for k, v in scaled.items() if k in plain} == pytest.approx(plain, nan_ok=True)
    converted = 0
    for key, value in plain.items():
        units = (("_per_px2", "_per_um2", pixel**-2), ("_per_px", "_per_um", 1 / pixel),
                 ("_px", "_um", pixel))  # fmt: skip
        for suffix, um_suffix, factor in units:
            if key.endswith(suffix):
                expected = value * factor
                assert scaled[key[: -len(suffix)] + um_suffix] == pytest.approx(expected)
                converted += 1
                break
    assert converted == 16
    assert scaled["S_V_per_px"] == pytest.approx(4 / math.pi * scaled["L_A_per_px"])
    assert scaled["S_V_per_px"] == pytest.approx(2 * scaled["P_L_per_px"])  # spacing 1
    assert scaled["N_L_per_px"] == pytest.approx(scaled["P_L_per_px"] / 2)


def test_measure_reports_the_otsu_threshold_and_takes_bool_arrays_as_phases():
    image = np.full((10, 10), 0.2, np.float32)
    image[:, :3] = 0.8
    result = measure(image)
    assert result.threshold == pytest.approx(0.5) and result.intercepts.area_fraction == 0.3
    phases = measure(image > 0.5)
    assert math.isnan(phases.threshold) and phases.intercepts == result.intercepts
    empty = measure(np.zeros((5, 5), bool)).as_dict()  # all matrix is a valid phase image
    assert empty["V_V"] == 0.0 and empty["n_particles"] == 0.0
    assert measure(np.array([[0, 1], [1, 1]], np.uint8), threshold=None).as_dict()["V_V"] == 0.75


def test_spacing_changes_the_intercept_lines_but_not_l_a():
    image = np.zeros((20, 20), bool)
    image[3:9, 5:15] = True
    every, sparse = measure(image), measure(image, spacing=4)
    assert sparse.intercepts.spacing == 4 and sparse.intercepts.crossings_h == 4
    assert sparse.boundary_length_per_area == every.boundary_length_per_area


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.array([[0.0, 0.5], [1.0, 1.0]]), {"threshold": None}, ValueError,
         r"must be binary \(bool, or only 0 and 1\); found values \[0.5\]"),
        (np.array([[0, 255], [255, 0]], np.uint8), {"threshold": None}, ValueError,
         r"found values \[255\]"),
        (np.zeros((0, 5), np.float32), {}, ValueError, "empty"),
        (np.zeros((0, 5), bool), {}, ValueError, "empty"),
        (np.array([[0.1, np.nan], [0.3, 0.4]]), {}, ValueError, "1 NaN"),
        (np.zeros((3, 3, 3), np.float32), {}, ValueError, r"2-D .*\(3, 3, 3\)"),
        (np.eye(4), {"phase": "grey"}, ValueError, r"unknown phase 'grey'"),
        (np.eye(4), {"threshold": 2}, ValueError, r"threshold must be 'otsu' or a number in"),
        (np.eye(4), {"spacing": 0}, ValueError, "spacing must be a positive integer, got 0"),
        (np.eye(4), {"pixel_size_um": -1.0}, ValueError, "pixel_size_um must be a length > 0"),
        (np.eye(4), {"connectivity": 6}, ValueError, "connectivity must be 4 or 8, got 6"),
        (np.eye(4), {"connectivity": 4.0}, ValueError, "connectivity must be 4 or 8, got 4.0"),
        (np.eye(4), {"periodic": "no"}, ValueError, "periodic must be True or False, got 'no'"),
        (np.eye(4), {"exclude_border": 1}, ValueError,
         "exclude_border must be True or False, got 1"),
        (np.eye(4), {"pixel_size_um": "2"}, ValueError, "pixel_size_um must be a length > 0"),
        (np.eye(4), {"denoise": True}, ValueError, "denoise must be a Gaussian sigma > 0"),
        (np.eye(4) > 0, {"denoise": 1.0}, ValueError, "denoise applies to gray images"),
        (np.full((4, 4), 0.3), {}, ValueError, r"constant image \(every pixel is 0.3\)"),
        (np.array([[0.0, 1.0, 0.0]]), {}, ValueError, r"shape \(1, 3\) is too small"),
        (np.array([["a"]]), {"threshold": None}, TypeError, "dtype <U1"),
    ],
)  # fmt: skip
def test_bad_input_fails_clearly(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        measure(image, **kwargs)


def test_as_phase_lists_the_values_it_found():
    with pytest.raises(ValueError, match=r"found values \[2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]"):
        as_phase(np.arange(20).reshape(4, 5))


# --------------------------------------------------------------------------- tables
def _save(path, array) -> Path:
    Image.fromarray(np.round(np.asarray(array) * 255).astype(np.uint8)).save(path)
    return Path(path)


def test_table_of_files_reports_and_skips_bad_ones(tmp_path, caplog):
    good = _save(tmp_path / "a.png", stripes(2, 6, 5, height=12, extra=1))
    _save(tmp_path / "b_constant.png", np.full((8, 8), 0.5))
    (tmp_path / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _save(tmp_path / "d.png", stripes(3, 6, 5, height=12, extra=1).T)
    table = stereology_table(tmp_path, pixel_size_um=2.0)
    assert [Path(i).name for i in table.ids] == ["a.png", "d.png"]
    assert sorted(f.path.name for f in table.failures) == ["b_constant.png", "c_broken.png"]
    assert "constant image" in next(f.reason for f in table.failures if "constant" in f.path.name)
    row = dict(zip(table.columns, table.features[0]))
    assert row["mean_intercept_h_px"] == pytest.approx(2) and row["mean_intercept_h_um"] == 4
    assert table.features.dtype == np.float32 and table.seconds > 0
    written = FeatureTable.read(table.write(tmp_path / "out" / "stereology.csv"))
    assert written.columns == table.columns and written.ids == table.ids
    assert str(good) == table.ids[0]


def test_table_of_arrays_keeps_bool_phase_images_and_crops(tmp_path):
    images = [np.zeros((6, 6), bool), np.eye(6, dtype=np.float32), np.full((6, 6), 0.5)]
    table = stereology_table(images, crop_bottom=2)
    assert table.ids == ["array[0]", "array[1]"] and table.failures[0].path == "array[2]"
    assert table.cropped == {"array[0]": 2, "array[1]": 2}
    v_v = table.columns.index("V_V")
    assert table.features[:, v_v].tolist() == pytest.approx([0.0, 4 / 24])


def test_table_of_a_batch_array_and_bad_options_before_any_work(tmp_path):
    batch = np.zeros((3, 8, 8), np.float32)
    batch[:, :, :4] = 1.0
    table = stereology_table(batch, spacing=2)
    assert table.ids == ["array[0]", "array[1]", "array[2]"]
    assert table.features[:, table.columns.index("V_V")].tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="unknown phase 'grey'"):
        stereology_table(tmp_path / "missing.png", phase="grey")
    with pytest.raises(ValueError, match="periodic must be True or False, got 'no'"):
        stereology_table(tmp_path / "missing.png", periodic="no")
    with pytest.raises(ValueError, match="exclude_border must be True or False, got 'yes'"):
        stereology_table(tmp_path / "missing.png", exclude_border="yes")
    with pytest.raises(TypeError, match=r"unknown measure\(\) option\(s\) \['spcing'\]"):
        stereology_table(batch, spcing=2)
    with pytest.raises(ValueError, match=r"got an array of shape \(8, 8\)"):
        stereology_table(batch[0])
    with pytest.raises(ValueError, match="constant image"):
        stereology_table(np.full((1, 4, 4), 0.2), on_error="raise")


def test_table_with_nothing_measurable_raises_with_the_failures():
    with pytest.raises(NoImagesError, match="no image could be measured") as caught:
        stereology_table([np.full((4, 4), 0.2), np.full((4, 4), 0.7)])
    assert [f.path for f in caught.value.failures] == ["array[0]", "array[1]"]
    empty = stereology_table([], pixel_size_um=1.0)
    assert empty.features.shape == (0, len(empty.columns)) and "astm_G" in empty.columns


# --------------------------------------------------------------------------- real micrographs
@pytest.mark.data
def test_otsu_against_hand_drawn_masks_on_spheroidite():
    """Otsu on UHCS spheroidite SEM images vs the particle masks of UHCSDB/AMPIS.

    Measured (10 images, no denoising): Otsu's V_V exceeds the masks' by -0.007 to +0.144
    (mean |ΔV_V| 0.049; the bright lamellar matrix texture passes the threshold) and pixel
    IoU is 0.41-0.62 (mean 0.54). Otsu counts 1.4-4.9x the annotated particles (specks of
    noise); a Gaussian blur of sigma 2 brings that to 0.85-2.6x. The bounds below are those
    measurements with a small margin: they catch a broken threshold, phase or labelling, not
    the limits of a global threshold on SEM contrast.
    """
    images = sorted((DATA / "ampis" / "spheroidite" / "images").glob("*.png"))
    if not images:
        pytest.skip(f"spheroidite images not found under {DATA}")
    from microtex.io import read_image

    differences, ious = [], []
    for path in images:
        image = read_image(path)
        mask = np.asarray(Image.open(path.parent.parent / "annotations" / path.name)) > 127
        truth = measure(mask)  # a bool mask is taken as the phases
        assert truth.intercepts.area_fraction == pytest.approx(mask.mean())
        assert truth.particles.n_particles == particle_sizes(mask).n_particles
        found = measure(image)
        otsu = image > found.threshold
        differences.append(found.intercepts.area_fraction - mask.mean())
        ious.append((otsu & mask).sum() / (otsu | mask).sum())
        blurred = measure(image, denoise=2.0)
        ratio = blurred.particles.n_particles / truth.particles.n_particles
        assert 0.7 < ratio < 3.0, (path.name, ratio)
    differences = np.array(differences)
    assert np.all(np.abs(differences) < 0.16) and np.all(differences > -0.02), differences
    assert np.abs(differences).mean() < 0.06
    assert min(ious) > 0.38 and np.mean(ious) > 0.5, ious
