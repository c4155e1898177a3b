"""Evaluation of generated micrographs (microtex.generative.evaluate)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.stats import wasserstein_distance

from microtex.generative.evaluate import (
    STATISTICS,
    compare_sets,
    frechet_distance,
    gaussian_frechet_distance,
    phase_statistics,
)


def stripes(a: int, p: int, m: int, height: int = 24, *, low=0.1, high=0.9) -> np.ndarray:
    """Bright vertical stripes ``a`` wide every ``p`` on ``m p + 1`` columns (first and last
    column start a stripe), as in microtex.features.stereology's docstrings."""
    return np.where(np.arange(m * p + 1) % p < a, high, low)[None].repeat(height, axis=0)


def with_fraction(fraction: float, rng, side: int = 16) -> np.ndarray:
    """A binary image with exactly ``fraction`` of its pixels bright."""
    flat = np.zeros(side * side, np.float32)
    flat[: round(fraction * side * side)] = 1.0
    return rng.permutation(flat).reshape(side, side)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(("a", "p", "m"), [(2, 8, 4), (3, 7, 5), (5, 6, 3)])
def test_phase_statistics_of_stripes_follow_the_closed_form(a, p, m):
    # horizontal lines: L_L = a / p, N_L = P_L / 2 = 1 / p; vertical lines: L_L = the
    # fraction of bright columns, (m a + 1) / (m p + 1), no intercept. The orientation
    # averages give d_f = <L_L> / <N_L> = a + p (m a + 1) / (m p + 1).
    height = 24
    bright_columns = m * a + 1
    found = phase_statistics([stripes(a, p, m, height)])
    assert found["V_f"][0] == pytest.approx(bright_columns / (m * p + 1), abs=1e-12)
    assert found["d_f_px"][0] == pytest.approx(a + p * bright_columns / (m * p + 1), abs=1e-12)
    # m stripes a × height and the last column 1 × height, equivalent circle diameters
    ecd = (m * math.sqrt(4 * a * height / math.pi) + math.sqrt(4 * height / math.pi)) / (m + 1)
    assert found["ecd_mean_px"][0] == pytest.approx(ecd, rel=1e-12)
    # the other phase: intercepts p - a wide on the horizontal lines
    dark = phase_statistics([stripes(a, p, m, height)], phase="dark")
    dark_columns = m * (p - a)
    assert dark["V_f"][0] == pytest.approx(1 - bright_columns / (m * p + 1), abs=1e-12)
    assert dark["d_f_px"][0] == pytest.approx((p - a) + p * dark_columns / (m * p + 1), abs=1e-12)


def test_otsu_is_taken_per_image_and_test_line_spacing_is_passed_on():
    faint = stripes(2, 8, 4, low=0.40, high=0.55)  # another contrast, the same phases
    found = phase_statistics(np.stack([stripes(2, 8, 4), faint]))
    np.testing.assert_array_equal(found["V_f"], [9 / 33, 9 / 33])
    np.testing.assert_array_equal(found["d_f_px"], found["d_f_px"][[0, 0]])
    # a gray level between the faint stripes' levels: all bright for the contrasty image
    fixed = phase_statistics([faint, stripes(2, 8, 4, low=0.6)], threshold=0.5)
    assert fixed["V_f"].tolist() == [9 / 33, 1.0] and np.isnan(fixed["d_f_px"][1])
    # lines every 2 pixels: of the vertical lines on columns 0, 2, ..., 32, 5 of 17 are bright
    sparse = phase_statistics([stripes(2, 8, 4)], spacing=2)["d_f_px"][0]
    assert sparse == pytest.approx(2 + 8 * 5 / 17)


def test_a_flat_image_has_undefined_statistics_and_is_counted_as_such():
    rng = np.random.default_rng(0)
    images = [with_fraction(0.25, rng), np.full((16, 16), 0.3), with_fraction(0.5, rng)]
    found = phase_statistics(images)
    assert np.isnan(found["V_f"][1]) and np.isnan(found["d_f_px"][1])
    assert found["V_f"][[0, 2]].tolist() == [0.25, 0.5]
    compared = compare_sets(images[:1] * 2, images, texture="none")["statistics"]["V_f"]
    assert compared["generated"]["n"] == 2 and compared["generated"]["undefined"] == 1
    assert compared["generated"]["mean"] == 0.375  # of the two defined values


def test_bad_images_fail_clearly():
    good = stripes(2, 8, 4)
    with pytest.raises(ValueError, match="empty"):
        phase_statistics([])
    with pytest.raises(ValueError, match="empty"):
        phase_statistics(np.zeros((0, 8, 8)))
    nan = good.copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"images\[1\] holds NaN"):
        phase_statistics([good, nan])
    with pytest.raises(ValueError, match=r"images\[0\].*2-D"):
        phase_statistics([np.zeros(8)])
    with pytest.raises(ValueError, match="shape"):
        phase_statistics(np.zeros((2, 2, 8, 8)))
    with pytest.raises(TypeError, match="list of 2-D arrays"):
        phase_statistics("image.png")
    with pytest.raises(ValueError, match="threshold"):
        phase_statistics([good], threshold=None)
    with pytest.raises(ValueError, match="phase"):
        phase_statistics([good], phase="grey")
    with pytest.raises(ValueError, match=r"generated\[0\] holds NaN"):
        compare_sets([good], [nan], texture="none")


# --------------------------------------------------------------------------- comparison


def test_compare_sets_gives_means_stds_and_the_wasserstein_distance_of_known_samples():
    rng = np.random.default_rng(1)
    real = [with_fraction(f, rng) for f in (0.25, 0.5)]
    generated = [with_fraction(f, rng) for f in (0.5, 0.75, 0.75)]
    found = compare_sets(real, generated, texture="none")
    assert found["n_real"] == 2 and found["n_generated"] == 3 and found["texture"] is None
    v_f = found["statistics"]["V_f"]
    assert v_f["real"]["mean"] == 0.375 and v_f["generated"]["mean"] == pytest.approx(2 / 3)
    assert v_f["real"]["std"] == pytest.approx(0.125 * math.sqrt(2))  # ddof = 1
    assert v_f["real"]["var"] == pytest.approx(0.03125)
    # the two CDFs differ by 1/2 on [0.25, 0.5) and by 1 - 1/3 on [0.5, 0.75): the area
    assert v_f["wasserstein"] == pytest.approx(0.5 * 0.25 + (2 / 3) * 0.25)
    assert v_f["wasserstein"] == pytest.approx(wasserstein_distance([0.25, 0.5],
                                                                    [0.5, 0.75, 0.75]))
    assert set(found["statistics"]) == set(STATISTICS)
    same = compare_sets(real, real, texture="none")["statistics"]
    assert all(same[name]["wasserstein"] == 0.0 for name in STATISTICS)


def test_compare_sets_uses_the_featurizer_it_is_given_for_the_frechet_distance():
    class Moments:  # mean and standard deviation of the gray levels
        def transform(self, images):
            return np.array([[np.mean(x), np.std(x)] for x in images])

    rng = np.random.default_rng(2)
    real = [rng.random((16, 16), np.float32) * 0.5 for _ in range(6)]
    generated = [rng.random((16, 16), np.float32) for _ in range(5)]
    found = compare_sets(real, generated, featurizer=Moments())
    expected = frechet_distance(Moments().transform(real), Moments().transform(generated))
    assert found["texture"]["frechet"] == expected and expected > 0.01
    assert compare_sets(real, real, featurizer=Moments())["texture"]["frechet"] < 1e-12
    with pytest.raises(ValueError, match="unknown texture"):
        compare_sets(real, generated, texture="gram")


# --------------------------------------------------------------------------- Fréchet


def sqrtm_frechet(mean_a, cov_a, mean_b, cov_b) -> float:
    """FID's formula with scipy.linalg.sqrtm, real part (the reference)."""
    cross = sqrtm(np.asarray(cov_a) @ np.asarray(cov_b)).real
    d = np.asarray(mean_a) - np.asarray(mean_b)
    return float(d @ d + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))


def test_frechet_distance_of_gaussians_matches_the_closed_forms():
    # 1-D: (μa - μb)² + (σa - σb)²
    assert gaussian_frechet_distance([1.0], [[9.0]], [1.0], [[4.0]]) == pytest.approx(1.0)
    assert gaussian_frechet_distance(3.0, 1.0, 0.0, 1.0) == pytest.approx(9.0)
    # diagonal covariances: a sum over the axes
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.0])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    found = gaussian_frechet_distance(mean_a, np.diag(sd_a**2), mean_b, np.diag(sd_b**2))
    assert found == pytest.approx(expected, abs=1e-12)
    # full covariances: scipy's matrix square root agrees
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = x @ x.T + 0.1 * np.eye(6), y @ y.T + 0.1 * np.eye(6)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    found = gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b)
    assert found == pytest.approx(sqrtm_frechet(mean_a, cov_a, mean_b, cov_b), rel=1e-9)
    assert found == pytest.approx(gaussian_frechet_distance(mean_b, cov_b, mean_a, cov_a))
    with pytest.raises(ValueError, match="covariances"):
        gaussian_frechet_distance(mean_a, cov_a, mean_b[:3], cov_b)


def test_frechet_distance_of_samples():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 5))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(x, x + shift) == pytest.approx(shift @ shift)
    assert frechet_distance(x[:, :1], 2 * x[:, :1]) == pytest.approx(
        x[:, 0].mean() ** 2 + x[:, 0].std(ddof=1) ** 2)  # (σ - 2σ)² + (μ - 2μ)²
    # fewer samples than features: singular covariances, still a finite, symmetric number
    wide_a, wide_b = rng.normal(size=(4, 30)), rng.normal(size=(5, 30)) + 0.5
    d = frechet_distance(wide_a, wide_b)
    assert math.isfinite(d) and d > 0 and d == pytest.approx(frechet_distance(wide_b, wide_a))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(x, x[:, :3])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(bad, x)


# --------------------------------------------------------------------------- with a generator


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """A random-weight generator of 32×32 images (4×4 maps of 16 codes), with contrast."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from microtex.generative.export import save_generator
    from microtex.generative.sample import load_generator

    from _helpers import tiny_generator_models

    vqvae, prior = tiny_generator_models()
    with torch.no_grad():  # initial weights decode every map to a nearly flat gray
        vqvae.codebook.mul_(16.0)
        vqvae.decoder[-2].weight.mul_(4.0)
        prior.head_output.weight.mul_(8.0)
    sources = [{"path": "a.png", "conditions": [2.5], "side": "train"},
               {"path": "b.png", "conditions": [4.0], "side": "validation"}]  # fmt: skip
    path = save_generator(tmp_path_factory.mktemp("gen") / "generator", vqvae, prior,
                          condition_names=["ln_t"], condition_range=[[2.0, 4.5]],
                          training={"sources": sources})  # fmt: skip
    return load_generator(path, device="cpu", n_threads=1)


@pytest.fixture(scope="module")
def real_images():
    """Perlin textures: two 64×64 images at ln_t = 2.5 (k = 3), one 96×64 at ln_t = 4 (k = 6)."""
    from microtex.synth import perlin_texture

    coarse = [perlin_texture(64, k=3, theta=0.0, amplitude=1.0, seed=s) for s in (0, 1)]
    fine = perlin_texture(96, k=6, theta=0.0, amplitude=1.0, seed=2)[:, :64]
    return {2.5: coarse, 4.0: fine[None]}


@pytest.mark.torch
def test_the_codebook_read_from_the_decoder_is_the_one_the_encoder_quantizes_with(generator,
                                                                                  real_images):
    from microtex.generative.evaluate import codebook_pca, codebook_vectors, encoder_latents

    codebook = codebook_vectors(generator)
    assert codebook.shape == (16, 8) and codebook.dtype == np.float32
    patches = np.stack([image[:32, :32] for image in real_images[2.5]] +
                       [image[32:, 32:] for image in real_images[2.5]])  # fmt: skip
    z_e = encoder_latents(generator, patches).transpose(0, 2, 3, 1)  # (n, 4, 4, 8)
    assert z_e.shape == (4, 4, 4, 8)
    distances = ((z_e[..., None, :] - codebook) ** 2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(-1), generator.encode(patches))
    found = codebook_pca(generator, indices=generator.encode(patches))
    assert found["coordinates"].shape == (16, 2) and found["usage"].sum() == 4 * 16
    centred = codebook - codebook.mean(0)
    total = (centred.astype(np.float64) ** 2).sum()
    assert found["explained_variance_ratio"].sum() * total == pytest.approx(
        (found["coordinates"] ** 2).sum(), rel=1e-5)  # the two components' share of variance


@pytest.mark.torch
def test_latent_pca_is_the_pca_of_the_mean_pooled_encoder_outputs(generator, real_images):
    from microtex.generative.evaluate import encoder_latents, latent_pca

    images = np.stack([image[r:r + 32, c:c + 32] for image in real_images[2.5]
                       for r in (0, 32) for c in (0, 32)])  # fmt: skip
    conditions = np.repeat([2.5, 4.0], 4)
    found = latent_pca(generator, images, conditions)
    pooled = encoder_latents(generator, images).mean(axis=(2, 3), dtype=np.float64)
    centred = pooled - pooled.mean(0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ axes[:2].T
    np.testing.assert_allclose(np.abs(found["coordinates"]), np.abs(reference), atol=1e-6)
    np.testing.assert_allclose(found["explained_variance_ratio"],
                               singular[:2] ** 2 / (singular**2).sum(), rtol=1e-6)  # fmt: skip
    assert found["conditions"].tolist() == [[2.5]] * 4 + [[4.0]] * 4
    flat = latent_pca(generator, images, conditions, pooling="flatten")
    assert flat["coordinates"].shape == (8, 2)
    with pytest.raises(ValueError, match="images must be"):
        latent_pca(generator, images[:, :16], conditions)
    with pytest.raises(ValueError, match="unknown pooling"):
        latent_pca(generator, images, conditions, pooling="max")


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.torch
def test_evaluation_of_a_generator_writes_consistent_numbers_and_plots(generator, real_images,
                                                                       tmp_path):
    from microtex.generative.evaluate import evaluate_generated

    class Moments:
        def transform(self, images):
            return np.array([[np.mean(x), np.std(x)] for x in images])

    output = tmp_path / "report"
    result = evaluate_generated(generator, real_images, n_generated=6, seed=3, output=output,
                                featurizer=Moments())  # fmt: skip
    assert json.loads((output / "evaluation.json").read_text()) == result
    assert sorted(p.name for p in output.iterdir()) == result["files"]
    assert [f"boxplot_{name}.png" for name in STATISTICS] == [
        name for name in result["files"] if name.startswith("boxplot_")]
    for name in result["files"]:
        if name.endswith(".png"):
            assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first, second = result["conditions"]
    assert first["condition"] == {"ln_t": 2.5} and second["label"] == "ln_t=4"
    assert first["in_training"] is True and second["in_training"] is False
    assert (first["n_real_images"], first["n_real_patches"]) == (2, 8)  # 4 patches of 64×64
    assert (second["n_real_images"], second["n_real_patches"]) == (1, 6)  # 3 × 2 of 96×64

    # the generated images are the sampler's, condition c as samples c n ... (c + 1) n - 1
    maps = np.load(output / "generated_indices.npz")
    for c, key in enumerate((2.5, 4.0)):
        expected = generator.sample_indices(key, 6, seed=3, first_sample=6 * c)
        np.testing.assert_array_equal(maps[f"condition_{c}"], expected)

    # statistics.csv holds every image's numbers; evaluation.json summarizes them
    rows = read_csv(output / "statistics.csv")
    assert len(rows) == 8 + 6 + 6 + 6
    generated = generator.decode(maps["condition_1"])
    recomputed = phase_statistics(generated)
    for name in STATISTICS:
        column = [float(r[name]) if r[name] else np.nan
                  for r in rows if r["set"] == "generated" and r["ln_t"] == "4.0"]  # fmt: skip
        np.testing.assert_array_equal(column, recomputed[name])
        values = np.array(column)
        summary = second["statistics"][name]["generated"]
        assert summary["n"] == np.isfinite(values).sum()
        if summary["n"] >= 2:
            assert summary["mean"] == pytest.approx(np.nanmean(values), rel=1e-12)
            assert summary["std"] == pytest.approx(np.nanstd(values, ddof=1), rel=1e-12)

    # evaluation.csv: the same numbers as evaluation.json, as written
    table = read_csv(output / "evaluation.csv")
    assert len(table) == 2 * (len(STATISTICS) + 1)
    for row in table:
        entry = first if row["ln_t"] == "2.5" else second
        assert float(row["ln_t"]) == entry["condition"]["ln_t"]
        if row["quantity"] == "texture":
            assert row["distance_kind"] == "frechet"
            assert float(row["distance"]) == entry["texture"]["frechet"]
            continue
        numbers = entry["statistics"][row["quantity"]]
        assert row["distance_kind"] == "wasserstein"
        for side in ("real", "generated"):
            for what in ("mean", "std"):
                value = numbers[side][what]
                assert row[f"{side}_{what}"] == ("" if value is None else repr(value))
            assert int(row[f"n_{side}"]) == numbers[side]["n"]
        assert float(row["distance"]) == numbers["wasserstein"]

    latent = read_csv(output / "latent_pca.csv")
    assert [r["set"] for r in latent] == ["real"] * 14 + ["generated"] * 12
    assert len(result["latent_pca"]["explained_variance_ratio"]) == 2
    assert result["codebook_pca"]["available"] is True
    codes = read_csv(output / "codebook_pca.csv")
    assert len(codes) == 16
    assert sum(int(r["uses_real"]) for r in codes) == 14 * 16
    assert sum(int(r["uses_generated"]) for r in codes) == 12 * 16


@pytest.mark.torch
def test_the_default_texture_distance_uses_vgg19_mean_activations(generator, real_images):
    from microtex.generative.evaluate import evaluate_generated

    result = evaluate_generated(generator, {2.5: real_images[2.5]}, n_generated=3)
    features = result["settings"]["texture_features"]
    assert features["taps"] == ["relu1_1", "relu2_1", "relu3_1"]
    assert features["n_features"] == 64 + 128 + 256
    assert result["conditions"][0]["texture"]["frechet"] > 0
    assert result["files"] == []  # no output folder: nothing written


@pytest.mark.torch
def test_evaluation_refuses_bad_input(generator, real_images, tmp_path):
    from microtex.generative.evaluate import evaluate_generated

    def evaluate(images, **options):
        return evaluate_generated(generator, images, n_generated=2, texture="none", **options)

    with pytest.raises(ValueError, match="at least one condition"):
        evaluate({})
    nan = real_images[2.5][0].copy()
    nan[5, 5] = np.nan
    with pytest.raises(ValueError, match=r"real images of ln_t=2.5\[1\] holds NaN"):
        evaluate({2.5: [real_images[2.5][1], nan]})
    with pytest.raises(ValueError, match="empty"):
        evaluate({2.5: []})
    with pytest.raises(ValueError, match="smaller than the generator's 32×32"):
        evaluate({2.5: [np.zeros((16, 64), np.float32)]})
    with pytest.raises(ValueError, match="1 finite number"):
        evaluate({(2.5, 1.0): real_images[2.5]})
    with pytest.raises(ValueError, match="1 finite number"):
        evaluate({math.nan: real_images[2.5]})
    with pytest.raises(ValueError, match="given twice"):
        evaluate({2.5: real_images[2.5], (2.5,): real_images[2.5]})
    with pytest.raises(ValueError, match="n_generated"):
        evaluate_generated(generator, real_images, n_generated=0)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate(real_images, output=tmp_path / "taken")
    evaluate(real_images, output=tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "evaluation.json").is_file()
    with pytest.warns(UserWarning, match="outside the training range"):
        evaluate({6.0: real_images[4.0]})
