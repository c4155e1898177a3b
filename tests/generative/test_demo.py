"""The Perlin demonstration (microtex.generative.demo): wavelength measurement and a tiny run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from microtex.generative.demo import (
    dominant_wavelength,
    perlin_images,
    radial_power_spectrum,
    run_perlin_demo,
)


def stripes(size: int, period: float, *, angle: float = 0.0, phase: float = 0.3) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    return np.cos(2 * math.pi * along / period + phase)


@pytest.mark.parametrize("window", [True, False])
@pytest.mark.parametrize("size", [32, 64])
def test_the_wavelength_of_exact_stripes_is_their_period(size, window):
    ks = [k for k in (1, 2, 3, 5, 8, 13, size // 2 - 1)]
    images = np.stack([stripes(size, size / k) for k in ks])
    assert dominant_wavelength(images, window=window).tolist() == [size / k for k in ks]
    horizontal = np.stack([stripes(size, size / k, angle=math.pi / 2) for k in ks])
    assert dominant_wavelength(horizontal, window=window).tolist() == [size / k for k in ks]


def test_oblique_and_non_integer_stripes_land_within_one_bin():
    size = 64
    for period, angle in [(8.0, math.pi / 4), (6.0, 0.5), (10.0, 0.0), (12.3, 1.0)]:
        image = 0.5 + 0.4 * stripes(size, period, angle=angle)  # an offset is ignored
        found = dominant_wavelength(image)
        assert found.shape == (1,)
        assert abs(size / found[0] - size / period) <= 1.0  # the frequency, within one bin


def test_the_spectrum_excludes_the_mean_and_stays_inside_nyquist():
    image = 3.0 + stripes(16, 4.0)
    spectrum = radial_power_spectrum(image)
    assert spectrum.shape == (1, 9)
    assert spectrum[0, 0] == pytest.approx(0.0, abs=1e-20)
    assert int(spectrum[0].argmax()) == 4
    for bad in (np.zeros((4, 5)), np.zeros((2, 2)), np.full((8, 8), np.nan)):
        with pytest.raises(ValueError):
            dominant_wavelength(bad)


def test_the_real_textures_have_the_wavelength_size_over_k():
    for k in (2, 3, 4, 5, 6, 8):
        images = perlin_images(k, 8, 32, seed=1)
        assert images.shape == (8, 32, 32) and images.dtype == np.float32
        np.testing.assert_array_equal(dominant_wavelength(images), np.full(8, 32 / k))
    # each image has its own noise
    assert not np.array_equal(*perlin_images(4, 2, 32))


@pytest.mark.torch
def test_a_tiny_run_follows_the_condition_including_the_held_out_k(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    result = run_perlin_demo(tmp_path / "demo", small=True, seed=0)
    rows = {row["k"]: row for row in result["per_k"]}
    assert sorted(rows) == [2.0, 3.0, 4.0, 5.0, 6.0, 8.0]
    assert [row["k"] for row in result["per_k"] if row["held_out"]] == [5.0]
    assert result["settings"]["ks"] == [2.0, 3.0, 4.0, 6.0, 8.0]
    for k, row in rows.items():
        assert row["condition"] == pytest.approx(math.log(k))
        assert row["expected"] == 32 / k
        assert row["real_mean"] == pytest.approx(32 / k, rel=1e-12)
        assert row["real_std"] == pytest.approx(0.0, abs=1e-12)
    # Measured over seeds 0-7 before writing this: correlation -0.89 to -0.97, the generated
    # wavelength falling with k over the seen values, the held-out k's between 4's and 6's.
    assert result["pearson_k_generated_wavelength"] < -0.8
    assert result["pearson_k_generated_frequency"] > 0.8
    generated = {k: row["generated_mean"] for k, row in rows.items()}
    assert generated[2.0] > generated[4.0] > generated[8.0]
    assert generated[4.0] > generated[5.0] > generated[6.0]
    assert result["held_out_between_neighbours"] is True
    # the files agree with the returned record
    folder = tmp_path / "demo"
    assert json.loads((folder / "perlin_demo.json").read_text()) == result
    with open(folder / "perlin_demo.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["k"]) for r in table] == sorted(rows)
    assert [float(r["generated_mean"]) for r in table] == pytest.approx(list(generated.values()))
    for name in result["files"]["plots"]:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from microtex.generative.sample import load_generator

    generator = load_generator(folder / "generator", device="cpu")
    assert generator.condition_names == ("ln_k",)
    np.testing.assert_allclose(generator.condition_range, [[math.log(2), math.log(8)]],
                               rtol=1e-6)  # fmt: skip
