"""Texture manifolds: Gram distances by definition, MDS and stress, angle and R² recovery,
the marble experiments and the embed job."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from tests._helpers import reference_gram

from microtex._validation import check_layer_weights
from microtex.analysis import manifold as mf
from microtex.analysis import manifold_experiments as me
from microtex.analysis.distances import pairwise_distances
from microtex.cli.main import main
from microtex.features.pooling import gram
from microtex.io import read_image as microtex_read


def _distances(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))


# ---------------------------------------------------------------- Gram distance by definition
def test_weighted_lubbers_gram_distance_equals_the_definition():
    rng = np.random.default_rng(0)
    layers = {"l1": rng.random((2, 3, 4, 5)), "l2": rng.random((2, 6, 2, 3))}
    weights = {"l1": 0.7, "l2": 2.5}
    features, columns = [], []
    for tap, acts in layers.items():
        pooled = gram(acts, normalization="lubbers", layout="triu")
        features.append(pooled)
        columns += [f"{tap}/gram/{i}" for i in range(pooled.shape[1])]
    vectors = mf.weight_layers(np.concatenate(features, axis=1), columns, weights)
    # d^2 = sum_l w_l / (4 N_l^2 M_l^2) ||G_1 - G_2||_F^2, G = F F^T unnormalized
    expected = 0.0
    for tap, acts in layers.items():
        n_channels, m = acts.shape[1], acts.shape[2] * acts.shape[3]
        f = acts.reshape(2, n_channels, m)
        g = f @ f.transpose(0, 2, 1)
        expected += weights[tap] / (4 * n_channels**2 * m**2) * np.sum((g[0] - g[1]) ** 2)
    assert pairwise_distances(vectors)[0, 1] == pytest.approx(math.sqrt(expected), rel=1e-12)


def test_layer_weights_are_checked_by_name_and_count():
    with pytest.raises(ValueError, match="relu9_9"):
        check_layer_weights({"relu9_9": 1.0}, mf.GRAM_TAPS)
    with pytest.raises(ValueError, match="3 values for 5 layers"):
        check_layer_weights([1, 1, 1], mf.GRAM_TAPS)
    with pytest.raises(ValueError, match="all zero"):
        check_layer_weights([0] * 5, mf.GRAM_TAPS)
    with pytest.raises(ValueError, match="layer weight of relu2_1"):
        check_layer_weights([1, -1, 1, 1, 1], mf.GRAM_TAPS)
    assert check_layer_weights({"relu3_1": 2.0}, mf.GRAM_TAPS).tolist() == [0, 0, 2, 0, 0]
    with pytest.raises(ValueError, match="no weighted layer"):
        mf.weight_layers(np.ones((1, 1)), ["x/gram/0"], {"a": 1.0})


def test_gram_vectors_are_the_weighted_lubbers_normalization_of_the_featurizer(tmp_path):
    """The VGG19 path: layer l of gram_vectors is sqrt(w_l) G/(2 N_l M_l) of the same network."""
    from microtex.features.texture import TextureFeaturizer

    rng = np.random.default_rng(1)
    images = rng.random((2, 40, 48)).astype(np.float32)
    weights = [1.0, 0.5, 2.0, 0.0, 3.0]
    vectors, ids = mf.gram_vectors(images, layer_weights=weights)
    plain = TextureFeaturizer(taps=list(mf.GRAM_TAPS), pool="gram", block_pooling="avg",
                              gram_normalization="spatial", gram_layout="full", device="cpu")
    table_columns = plain.fit(None).get_feature_names_out()
    spatial = plain.transform(images)
    assert ids == ["array[0]", "array[1]"]
    start = 0
    for tap, weight in zip(mf.GRAM_TAPS, weights):
        n_channels = int(math.isqrt(sum(c.startswith(f"{tap}/") for c in table_columns)))
        full = spatial[:, [c.startswith(f"{tap}/") for c in table_columns]]
        g = full.reshape(2, n_channels, n_channels).astype(np.float64)
        rows, cols = np.triu_indices(n_channels)
        triu = g[:, rows, cols] * np.where(rows == cols, 1.0, math.sqrt(2.0))
        expected = math.sqrt(weight) * triu / (2 * n_channels)
        width = triu.shape[1]
        np.testing.assert_allclose(vectors[:, start:start + width], expected, rtol=2e-4,
                                   atol=2e-6 * np.abs(expected).max())
        start += width
    assert start == vectors.shape[1]


def test_reference_gram_helper_agrees_with_lubbers_pooling():
    acts = np.random.default_rng(2).random((3, 4, 5, 6))
    np.testing.assert_allclose(gram(acts, "lubbers", "triu"), reference_gram(acts, "lubbers"),
                               rtol=1e-12)


# ---------------------------------------------------------------- MDS and stress
def test_stress_is_zero_for_points_already_in_the_embedding_dimension():
    points = np.random.default_rng(3).normal(size=(25, 3))
    d = _distances(points)
    assert mf.kruskal_stress(d, points) == pytest.approx(0.0, abs=1e-12)
    for embed in (lambda: mf.classical_mds(d, 3)[0], lambda: mf.smacof(d, 3).embedding):
        embedding = embed()
        assert mf.kruskal_stress(d, embedding) < 1e-8
        np.testing.assert_allclose(_distances(embedding), d, atol=1e-7)


def test_kruskal_stress_known_value():
    d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    x = np.array([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 against 1, 2, 1
    expected = math.sqrt((0 + 1 + 1) / (1 + 4 + 1))
    assert mf.kruskal_stress(d, x) == pytest.approx(expected, rel=1e-12)


def test_smacof_improves_on_the_classical_start_and_on_scikit_learn():
    from sklearn.manifold import smacof as sk_smacof

    points = np.random.default_rng(4).normal(size=(40, 5)) * [3.0, 2.0, 1.0, 0.7, 0.5]
    d = _distances(points)
    classical, _ = mf.classical_mds(d, 2)
    result = mf.smacof(d, 2, n_init=3, random_state=0)
    assert result.stress < mf.kruskal_stress(d, classical) - 1e-3
    assert result.stress == pytest.approx(mf.kruskal_stress(d, result.embedding), rel=1e-9)
    assert result.stress == pytest.approx(min(result.stresses), rel=1e-12)
    theirs, _ = sk_smacof(d, n_components=2, init=classical, n_init=1, max_iter=3000, eps=1e-9,
                          normalized_stress=False)
    assert result.stress <= mf.kruskal_stress(d, theirs) + 1e-4
    np.testing.assert_allclose(result.embedding.mean(axis=0), 0.0, atol=1e-9)
    again = mf.smacof(d, 2, n_init=3, random_state=0)
    np.testing.assert_array_equal(again.embedding, result.embedding)


def test_smacof_from_a_given_start_and_option_errors():
    d = _distances(np.random.default_rng(5).normal(size=(10, 2)))
    start = np.random.default_rng(6).normal(size=(10, 2))
    result = mf.smacof(d, 2, n_init=1, init=start, max_iter=2000, tol=1e-12)
    assert result.start == "init" and result.stress < 1e-5
    with pytest.raises(ValueError, match=r"init must have shape \(10, 2\)"):
        mf.smacof(d, 2, init=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="n_components=11 exceeds the 10 points"):
        mf.smacof(d, 11)
    with pytest.raises(ValueError, match="all distances are 0"):
        mf.smacof(np.zeros((3, 3)), 1)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "not symmetric"),
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), "negative"),
        (np.array([[1.0, 1.0], [1.0, 0.0]]), r"distances\[0, 0\] = 1.0"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "must be finite"),
        (np.zeros((2, 3)), "square"),
        (np.zeros((1, 1)), "at least 2 points"),
        (np.array([["a", "b"], ["c", "d"]]), "unsupported dtype"),
    ],
)
def test_bad_distance_matrices_are_refused_naming_the_value(matrix, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mf.check_distances(matrix)


# ---------------------------------------------------------------- what the embedding recovers
@pytest.mark.parametrize("offset", [0.0, 0.4, 1.5, 2.9, -2.0])
@pytest.mark.parametrize("reflected", [False, True])
def test_angle_rmse_is_zero_on_a_perfect_loop_for_any_offset_and_reflection(offset, reflected):
    theta = np.arange(30) * math.pi / 30
    phase = 2 * theta + offset
    loop = np.column_stack([np.cos(phase), (-1 if reflected else 1) * np.sin(phase)]) * 3 + 7
    fit = mf.angle_fit(loop, theta)
    assert fit.rmse == pytest.approx(0.0, abs=1e-12)
    assert fit.reflected == reflected
    errors = (fit.estimates - theta + math.pi / 2) % math.pi - math.pi / 2
    np.testing.assert_allclose(errors, 0.0, atol=1e-12)


def test_angle_rmse_known_error_across_the_wrap_around():
    theta = np.arange(40) * math.pi / 40
    error = np.where(np.arange(40) % 2 == 0, 0.1, -0.1)  # RMSE 0.1, mean 0
    phase = 2 * (theta + error + 3.0)  # offset of 3 rad: estimates wrap round pi
    fit = mf.angle_fit(np.column_stack([np.cos(phase), np.sin(phase)]), theta)
    assert fit.rmse == pytest.approx(0.1, rel=1e-9)


def test_best_offset_is_the_exact_circular_least_squares():
    rng = np.random.default_rng(7)
    for _ in range(20):
        delta = rng.uniform(0, math.pi, size=15) * rng.choice([0.3, 1.0])
        offset, rmse = mf._best_offset(delta, math.pi)
        grid = np.linspace(0, math.pi, 20001)
        residual = (delta[None, :] - grid[:, None] + math.pi / 2) % math.pi - math.pi / 2
        brute = np.sqrt((residual**2).mean(axis=1)).min()
        assert rmse <= brute + 1e-12
        assert rmse == pytest.approx(brute, abs=2e-4)


def test_linear_r2_and_regression_directions():
    x = np.random.default_rng(8).normal(size=(50, 3))
    assert mf.linear_r2(x, 3 * x[:, 1] - 2) == pytest.approx(1.0, abs=1e-12)
    y = x[:, 0] + np.where(np.arange(50) % 2 == 0, 1.0, -1.0)
    fitted_r2 = mf.linear_r2(x, y)
    design = np.column_stack([x, np.ones(50)])
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert fitted_r2 == pytest.approx(1 - residual @ residual / np.sum((y - y.mean()) ** 2),
                                      rel=1e-12)
    k_direction = mf.regression_direction(x, 2 * x[:, 0])
    a_direction = mf.regression_direction(x, -x[:, 2] + 5)
    np.testing.assert_allclose(k_direction, [1, 0, 0], atol=1e-12)
    assert mf.direction_angle(k_direction, a_direction) == pytest.approx(90.0)
    assert mf.direction_angle([1, 1], [1, 0]) == pytest.approx(45.0)
    assert mf.direction_angle([1, 0], [-2, 0]) == pytest.approx(180.0)
    with pytest.raises(ValueError, match="constant"):
        mf.linear_r2(x, np.ones(50))


# ---------------------------------------------------------------- the experiments
def test_grid_parameters_are_half_open_levels():
    p = me.grid_parameters(4, k_range=(4, 12), a_range=(0, 2))
    assert sorted(set(p["k"].tolist())) == [4, 6, 8, 10]
    assert sorted(set(p["amplitude"].tolist())) == [0, 0.5, 1.0, 1.5]
    np.testing.assert_allclose(sorted(set(p["theta"].tolist())), np.arange(4) * math.pi / 4)
    assert len(set(p["seed"].tolist())) == 64


def test_gram_recovers_the_angle_better_than_the_power_spectrum_at_low_amplitude():
    setting = me.TextureSetting(size=64)
    result = me.angle_experiment((0.0, 1.0), n_angles=16, k=6, trials=1, setting=setting,
                                 n_init=2, seed=3)  # fmt: skip
    gram_rmse = [r["rmse_degrees"]["mean"] for r in result["results"]["gram"]]
    spectrum_rmse = [r["rmse_degrees"]["mean"] for r in result["results"]["spectrum"]]
    for g, s in zip(gram_rmse, spectrum_rmse):
        assert g < 5.0  # degrees: the loop comes back
        assert s > g + 10.0
    assert result["embeddings"]["gram"][0].shape == (16, 2)


def test_grid_experiment_rows_and_their_invariants():
    result = me.grid_experiment(3, dims=(1, 2, 3), setting=me.TextureSetting(size=48),
                                descriptors=("gram",), n_init=1)  # fmt: skip
    rows = result["results"]["gram"]
    assert [r["D"] for r in rows] == [1, 2, 3]
    stresses = [r["stress"] for r in rows]
    assert stresses[0] >= stresses[1] - 1e-9 >= stresses[2] - 2e-9
    assert all(0.0 <= r["r2_k"] <= 1.0 and 0.0 <= r["r2_amplitude"] <= 1.0 for r in rows)
    assert result["embeddings"]["gram"].shape == (27, 3)
    spread = result["embeddings"]["gram"].std(axis=0)
    assert spread[0] >= spread[1] >= spread[2]  # principal axes, largest first


def test_noise_sweep_scores_each_setting_by_its_worse_r2(tmp_path):
    settings = [me.TextureSetting(size=40), me.TextureSetting(size=40, noise_scale=0.03)]
    result = me.run_sweep(tmp_path, settings=settings, levels=2, dims=(1, 2),
                          descriptors=("spectrum", "gram"))  # fmt: skip
    assert result["parameters"]["scored"] == "gram"
    for run, setting in zip(result["runs"], settings):
        assert run["setting"] == setting.as_dict() and run["score_D"] == 2
        at = run["results"]["gram"][1]
        assert run["score"] == pytest.approx(min(at["r2_k"], at["r2_amplitude"]))
    scores = [run["score"] for run in result["runs"]]
    assert result["best"] == int(np.argmax(scores))
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[3]["r2_k"]) == pytest.approx(
        result["runs"][1]["results"]["gram"][1]["r2_k"])
    with pytest.raises(ValueError, match="unknown descriptor"):
        me.noise_sweep(settings, descriptors="grams")


def test_layer_weights_follow_the_order_the_caller_lists_the_layers():
    images = np.random.default_rng(11).random((2, 32, 32)).astype(np.float32)
    forward, _ = mf.gram_vectors(images, taps=["relu1_1", "relu2_1"], layer_weights=[0.0, 4.0])
    reverse, _ = mf.gram_vectors(images, taps=["relu2_1", "relu1_1"], layer_weights=[4.0, 0.0])
    named, _ = mf.gram_vectors(images, taps=["relu2_1", "relu1_1"],
                               layer_weights={"relu2_1": 4.0})  # fmt: skip
    np.testing.assert_array_equal(forward, reverse)
    np.testing.assert_array_equal(forward, named)
    assert not forward[:, :2080].any() and forward[:, 2080:].any()  # relu1_1: 64*65/2 columns
    with pytest.raises(ValueError, match="2 values for 1 layers"):
        mf.gram_vectors(images, taps=["relu1_1"], layer_weights=[1.0, 2.0])


def test_texture_settings_are_checked():
    with pytest.raises(ValueError, match="layer_weights needs 5 values"):
        me.TextureSetting(layer_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="size"):
        me.TextureSetting(size=8)
    with pytest.raises(ValueError, match="unknown descriptor 'vlad'"):
        me.angle_experiment(descriptors=("vlad",))
    variants = me.sweep_settings()
    assert variants[0] == me.GRID_DEFAULTS and len(set(variants)) == len(variants)


# ---------------------------------------------------------------- commands
def test_manifold_angle_command_writes_the_numbers_it_prints(tmp_path, capsys):
    out = tmp_path / "angle"
    assert main(["manifold", "angle", "-o", str(out), "--n", "8", "--trials", "2",
                 "--size", "48", "--amplitudes", "0,2", "--k", "4",
                 "--descriptors", "spectrum"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((out / "angle.json").read_text())
    rows = report["results"]["spectrum"]
    assert [r["amplitude"] for r in rows] == [0.0, 2.0]
    for r in rows:
        trials = r["rmse_degrees_trials"]
        assert len(trials) == 2 and r["rmse_degrees"]["mean"] == pytest.approx(np.mean(trials))
        assert f"{r['rmse_degrees']['mean']:.2f}" in printed
    with open(out / "angle.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert float(table[1]["stress_mean"]) == pytest.approx(rows[1]["stress"]["mean"])
    for name in ("angle_rmse.png", "angle_stress.png", "angle_embeddings.png"):
        assert (out / name).stat().st_size > 1000


def test_manifold_grid_command(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["manifold", "grid", "-o", str(out), "--levels", "3", "--dims", "1-2",
                 "--size", "48", "--descriptors", "spectrum"]) == 0  # fmt: skip
    report = json.loads((out / "grid.json").read_text())
    assert report["parameters"]["n_images"] == 27
    with open(out / "grid_embedding.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 27
    assert {"theta", "k", "amplitude", "spectrum_D2_1", "spectrum_D2_2"} <= set(rows[0])
    coords = np.array([[float(r["spectrum_D2_1"]), float(r["spectrum_D2_2"])] for r in rows])
    k = np.array([float(r["k"]) for r in rows])
    assert mf.linear_r2(coords, k) == pytest.approx(report["results"]["spectrum"][1]["r2_k"],
                                                    rel=1e-9)
    one = tmp_path / "one"  # a 1-D embedding is drawn on a line
    assert main(["manifold", "grid", "-o", str(one), "--levels", "2", "--dims", "1",
                 "--size", "40", "--descriptors", "spectrum"]) == 0  # fmt: skip
    assert (one / "grid_embeddings.png").stat().st_size > 1000


def test_embed_a_feature_table_recovers_planar_points(tmp_path, capsys):
    from microtex.io.table import FeatureTable

    points = np.random.default_rng(9).normal(size=(12, 2))
    rotation = np.linalg.qr(np.random.default_rng(10).normal(size=(5, 5)))[0][:2]
    features = (points @ rotation).astype(np.float32)  # planar points in 5-D
    ids = [f"img{i}.png" for i in range(12)]
    FeatureTable(features, [f"x/mean/{i}" for i in range(5)], ids).write(tmp_path / "t.npz")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,grade\n" + "".join(f"img{i}.png,{i % 3}\n" for i in range(12)))
    out = tmp_path / "emb"
    assert main(["embed", str(tmp_path / "t.npz"), "-o", str(out),
                 "--color-by", f"{labels}:grade"]) == 0  # fmt: skip
    summary = json.loads((out / "embedding.json").read_text())
    assert summary["descriptor"] == "table" and summary["stress"] < 1e-6
    with open(out / "embedding.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    coords = np.array([[float(r["mds_1"]), float(r["mds_2"])] for r in rows])
    np.testing.assert_allclose(_distances(coords), _distances(points), atol=1e-4)
    assert [r["grade"] for r in rows] == [str(float(i % 3)) for i in range(12)]


def test_embed_a_folder_of_images_with_thumbnails_and_a_bad_file(tmp_path, capsys):
    from PIL import Image

    from microtex import synth

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        image = synth.perlin_texture(48, 4 + 4 * (i % 2), 0.3 * i, 1.0, seed=i)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"m{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = sorted(str(p) for p in folder.glob("m*.png"))
    for descriptor in ("spectrum", "gram"):
        out = tmp_path / descriptor
        assert main(["embed", str(folder), "-o", str(out), "--descriptor", descriptor]) == 0
        captured = capsys.readouterr()
        assert "broken.png" in captured.err
        summary = json.loads((out / "embedding.json").read_text())
        assert summary["n_items"] == 6 and [s["path"] for s in summary["skipped"]] == [
            str(folder / "broken.png")]
        assert (out / "thumbnails.png").stat().st_size > 1000
        with open(out / "embedding.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["id"] for r in rows] == good
        coords = np.array([[float(r["mds_1"]), float(r["mds_2"])] for r in rows])
        images = np.stack([microtex_read(p) for p in good])
        vectors = (mf.gram_vectors(images)[0] if descriptor == "gram"
                   else mf.spectrum_vectors(images))
        assert mf.kruskal_stress(pairwise_distances(vectors), coords) == pytest.approx(
            summary["stress"], rel=1e-6)
    with pytest.raises(ValueError, match="radial averaging applies to power spectra"):
        mf.run_embed(folder, tmp_path / "x", descriptor="gram", radial=True)
    colors = tmp_path / "c.csv"
    colors.write_text("path,x\nother.png,1\n")
    with pytest.raises(ValueError, match="no row for .*m0.png"):
        mf._color_values(f"{colors}:x", [folder / "m0.png"])
    with pytest.raises(ValueError, match="no column 'y'"):
        mf._color_values(f"{colors}:y", [folder / "m0.png"])
    with pytest.raises(ValueError, match="CSV:COLUMN"):
        mf._color_values("labels.csv", [])


def test_embed_a_sharded_dataset_folder(tmp_path):
    from microtex.features.api import featurize_dataset

    images = [np.full((16, 16), v, np.float32) for v in (0.0, 0.1, 0.5, 0.9)]
    paths = []
    for i, image in enumerate(images):
        from PIL import Image

        paths.append(tmp_path / f"i{i}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    featurize_dataset(paths, tmp_path / "ds", shard_size=3, taps="raw", pool="mean")
    summary = mf.run_embed(tmp_path / "ds", tmp_path / "emb", n_components=1)
    assert summary["descriptor"] == "table" and summary["n_items"] == 4
    with open(tmp_path / "emb" / "embedding.csv", newline="") as f:
        coords = [float(r["mds_1"]) for r in csv.DictReader(f)]
    means = [np.floor(v * 255) / 255 for v in (0.0, 0.1, 0.5, 0.9)]  # uint8 truncates
    gaps = np.abs(np.subtract.outer(coords, coords))
    np.testing.assert_allclose(gaps, np.abs(np.subtract.outer(means, means)), atol=1e-6)


def test_manifold_texture_options_reach_the_experiment(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["manifold", "grid", "-o", str(out), "--levels", "2", "--dims", "1",
                 "--size", "40", "--noise-scale", "0.02", "--base-frequency", "8",
                 "--octaves", "2", "--layer-weights", "1,0,0,0,0", "--seed", "5",
                 "--descriptors", "gram"]) == 0  # fmt: skip
    parameters = json.loads((out / "grid.json").read_text())["parameters"]
    assert parameters["setting"] == {"size": 40, "noise_scale": 0.02, "base_frequency": 8,
                                     "octaves": 2, "layer_weights": [1.0, 0.0, 0.0, 0.0, 0.0]}
    assert parameters["seed"] == 5 and parameters["descriptors"] == ["gram"]
    setting = me.TextureSetting(size=40, noise_scale=0.02, base_frequency=8, octaves=2,
                                layer_weights=(1.0, 0.0, 0.0, 0.0, 0.0))
    reference = me.grid_experiment(2, dims=(1,), descriptors="gram", seed=5, setting=setting)
    printed = json.loads((out / "grid.json").read_text())["results"]["gram"][0]
    assert printed["stress"] == pytest.approx(reference["results"]["gram"][0]["stress"], rel=1e-9)


def test_embed_options_reach_the_embedding(tmp_path, capsys):
    from PIL import Image

    from microtex import synth

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        image = synth.perlin_texture(40, 3 + i, 0.2 * i, 1.0, seed=i)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"m{i}.png")
    out = tmp_path / "emb"
    assert main(["embed", str(folder), "-o", str(out), "--descriptor", "spectrum", "--radial",
                 "--dims", "3", "--image-size", "32"]) == 0  # fmt: skip
    summary = json.loads((out / "embedding.json").read_text())
    assert summary["radial"] is True and summary["image_size"] == 32
    with open(out / "embedding.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    coords = np.array([[float(r[f"mds_{i}"]) for i in (1, 2, 3)] for r in rows])
    images = np.stack([microtex_read(p, size=32) for p in sorted(folder.glob("*.png"))])
    d = pairwise_distances(mf.spectrum_vectors(images, radial=True))
    assert mf.kruskal_stress(d, coords) == pytest.approx(summary["stress"], rel=1e-6)
