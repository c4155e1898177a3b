"""Structure–property regression: conductivity closed forms, the MKS pipeline, grouped CV,
eigen-microstructures and the offline study's report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from microtex.analysis import mks
from microtex.analysis.mks import (
    cross_validate_regression,
    effective_conductivity,
    eigen_microstructures,
    mks_pipeline,
    plot_eigen_microstructures,
    regression_splits,
    run_mks,
)
from microtex.features.spectra import two_point
from microtex.synth import two_phase_field


@pytest.fixture(scope="module")
def specimens():
    """72 patches 32x32 from 8 specimens (9 each) of drawn correlation length and fraction."""
    patches, groups, params = mks._specimens(8, 9, 32, (1.5, 4.0), (0.2, 0.8), 3)
    return patches, groups, params


# ---------------------------------------------------------------- effective conductivity
def test_a_uniform_image_has_its_own_conductivity():
    image = np.ones((7, 12), np.uint8)
    for axis in (0, 1):
        assert effective_conductivity(image, (5.0, 2.5), axis=axis) == pytest.approx(2.5, rel=1e-12)
    assert effective_conductivity(np.zeros((9, 1), int), (4.0,)) == pytest.approx(4.0, rel=1e-12)


def test_layers_along_the_field_average_and_across_it_add_in_series():
    rng = np.random.default_rng(0)
    sigma = np.array([1.0, 7.0, 0.2])
    rows = rng.integers(0, 3, 11)  # one phase per row: layers parallel to the rows
    image = np.repeat(rows[:, None], 9, axis=1)
    fractions = np.bincount(rows, minlength=3) / len(rows)
    arithmetic = float(fractions @ sigma)
    harmonic = 1.0 / float(fractions @ (1.0 / sigma))
    assert effective_conductivity(image, sigma, axis=1) == pytest.approx(arithmetic, rel=1e-10)
    assert effective_conductivity(image, sigma, axis=0) == pytest.approx(harmonic, rel=1e-10)
    # the same layers turned a quarter: the roles swap
    assert effective_conductivity(image.T, sigma, axis=0) == pytest.approx(arithmetic, rel=1e-10)
    assert effective_conductivity(image.T, sigma, axis=1) == pytest.approx(harmonic, rel=1e-10)


def test_the_field_direction_is_the_transpose():
    image = two_phase_field((40, 56), 3.0, 0.4, seed=2)
    assert effective_conductivity(image, axis=0) == pytest.approx(
        effective_conductivity(image.T, axis=1), rel=1e-12
    )


@pytest.mark.parametrize("contrast", [10.0, 0.1])
def test_a_random_image_lies_inside_the_wiener_bounds(contrast):
    image = two_phase_field(64, 2.5, 0.35, seed=4)
    fraction = image.mean()
    sigma = np.array([1.0, contrast])
    arithmetic = (1 - fraction) * sigma[0] + fraction * sigma[1]
    harmonic = 1.0 / ((1 - fraction) / sigma[0] + fraction / sigma[1])
    for axis in (0, 1):
        value = effective_conductivity(image, sigma, axis=axis)
        # well inside, not on a bound: a random image is neither layered way
        assert harmonic + 0.1 * (arithmetic - harmonic) < value
        assert value < arithmetic - 0.1 * (arithmetic - harmonic)


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_weak_contrast_matches_the_perturbation_expansion(fraction):
    # sigma = 1 + eps * indicator: sigma_eff = <sigma> - Var(sigma) / (2 <sigma>) + O(eps^3)
    # for a statistically isotropic image in two dimensions (Landau & Lifshitz, ECM §9)
    image = two_phase_field(128, 3.0, fraction, seed=2)
    v = image.mean()
    eps = 0.02
    mean = 1 + v * eps
    value = np.mean([effective_conductivity(image, (1.0, 1.0 + eps), axis=a) for a in (0, 1)])
    assert abs(value - mean) < 0.5 * eps**2  # first order: the arithmetic mean
    second = v * (1 - v) * eps**2 / (2 * mean)
    assert value == pytest.approx(mean - second, abs=0.1 * second)


def test_symmetric_phases_give_the_geometric_mean():
    # Dykhne (1970): in 2-D, a medium statistically unchanged by swapping its two phases
    # (a Gaussian field thresholded at its median) has sigma_eff = sqrt(sigma_1 sigma_2)
    values = []
    for seed in range(3):
        image = two_phase_field(128, 4.0, 0.5, seed=seed)
        values += [effective_conductivity(image, (1.0, 10.0), axis=a) for a in (0, 1)]
    assert np.exp(np.mean(np.log(values))) == pytest.approx(np.sqrt(10.0), rel=0.04)


@pytest.mark.parametrize(
    ("image", "conductivities", "axis", "match"),
    [
        (np.full((4, 4), 2), (1.0, 2.0), 1, "phase label 2 has no conductivity"),
        (np.full((4, 4), -1), (1.0, 2.0), 1, "phase label -1"),
        (np.full((4, 4), 0.5), (1.0, 2.0), 1, "integer phase labels"),
        (np.zeros((2, 4, 4), int), (1.0, 2.0), 1, "2-D array"),
        (np.zeros((4, 4), int), (1.0, 0.0), 1, "finite and > 0"),
        (np.zeros((4, 4), int), (1.0, np.nan), 1, "finite and > 0"),
        (np.zeros((4, 4), int), (1.0, 2.0), 2, "axis must be 0"),
    ],
)
def test_bad_conductivity_input_fails_clearly(image, conductivities, axis, match):
    with pytest.raises(ValueError, match=match):
        effective_conductivity(image, conductivities, axis=axis)


# ---------------------------------------------------------------- the MKS pipeline and CV
def test_the_pipeline_recovers_a_linear_property_under_grouped_cv(specimens):
    patches, groups, _ = specimens
    y = patches.mean(axis=(1, 2))  # the patch's volume fraction: S2(0), linear in the features
    model = mks_pipeline(cutoff=3, n_components=5, periodic_boundary=False)
    result = cross_validate_regression(model, patches, y, groups, n_splits=4, n_repeats=2)
    assert result.split == "grouped" and result.r2.shape == (2,)
    assert result.r2.min() > 0.99 and result.fold_r2.min() > 0.95
    # the out-of-fold predictions are what the scores say
    residual = result.predictions - y
    np.testing.assert_allclose(result.rmse, np.sqrt(np.mean(residual**2, axis=1)), rtol=1e-12)
    np.testing.assert_allclose(result.mae, np.mean(np.abs(residual), axis=1), rtol=1e-12)
    assert result.rmse.max() < 0.1 * y.std()
    # a polynomial of degree 2 with ridge on the same features still recovers it
    quadratic = mks_pipeline(cutoff=3, n_components=5, degree=2, alpha=1e-3,
                             periodic_boundary=False)  # fmt: skip
    assert [name for name, _ in quadratic.steps] == ["two_point", "scale", "pca", "polynomial",
                                                     "regress"]  # fmt: skip
    assert type(quadratic.named_steps["regress"]).__name__ == "Ridge"
    assert cross_validate_regression(quadratic, patches, y, groups, n_splits=4).r2[0] > 0.98


def test_the_scaler_sees_only_the_training_fold(specimens, monkeypatch):
    from sklearn.preprocessing import StandardScaler

    patches, groups, _ = specimens
    y = patches.mean(axis=(1, 2))
    seen = []
    real_fit = StandardScaler.fit

    def spy(self, X, y=None, sample_weight=None):
        seen.append(np.array(X, copy=True))
        return real_fit(self, X, y, sample_weight)

    monkeypatch.setattr(StandardScaler, "fit", spy)
    model = mks_pipeline(cutoff=3, n_components=5, periodic_boundary=False)
    cross_validate_regression(model, patches, y, groups, n_splits=4, n_repeats=2, random_state=7)
    features = two_point(patches, periodic_boundary=False, cutoff=3).reshape(len(patches), -1)
    splits = regression_splits(len(patches), groups, n_splits=4, n_repeats=2, random_state=7)
    assert len(seen) == len(splits)
    for rows, (_, _, train, test) in zip(seen, splits):
        # each row the scaler saw is one patch's S2 (to float32 rounding: the kernel's FFTs
        # pair images, so a batch's rounding depends on its neighbours)
        distance = np.abs(rows[:, None, :] - features[None, :, :]).max(axis=2)
        nearest = np.argmin(distance, axis=1)
        assert distance[np.arange(len(rows)), nearest].max() < 1e-6
        assert np.sort(np.partition(distance, 1, axis=1)[:, 1]).min() > 1e-3  # and only one
        assert sorted(nearest.tolist()) == sorted(train.tolist())
        assert not set(nearest.tolist()) & set(test.tolist())


def test_grouped_splits_keep_each_specimen_on_one_side():
    groups = np.repeat(np.arange(10), [3, 5, 2, 4, 4, 1, 6, 3, 2, 5])
    splits = regression_splits(len(groups), groups, n_splits=3, n_repeats=4, random_state=1)
    assert len(splits) == 12
    for repeat in range(4):
        tests = [test for r, _, _, test in splits if r == repeat]
        # every sample tested exactly once per repeat
        assert sorted(np.concatenate(tests).tolist()) == list(range(len(groups)))
        sizes = [len(t) for t in tests]
        assert max(sizes) - min(sizes) <= 6  # balanced by samples, as whole groups allow
    for _, _, train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    folds = [tuple(sorted(set(groups[test]))) for _, _, _, test in splits]
    assert len(set(folds)) > 3  # the repeats draw different folds
    again = regression_splits(len(groups), groups, n_splits=3, n_repeats=4, random_state=1)
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(splits, again))  # seeded


def test_repeats_draw_other_folds_when_every_group_has_another_size():
    sizes = np.arange(1, 11)  # groups of 1 to 10 samples: no tie to break
    groups = np.repeat(np.arange(10), sizes)
    splits = regression_splits(len(groups), groups, n_splits=3, n_repeats=6, random_state=0)
    partitions = set()
    for repeat in range(6):
        tests = [test for r, _, _, test in splits if r == repeat]
        assert sorted(np.concatenate(tests).tolist()) == list(range(len(groups)))  # once each
        assert all(len(test) for test in tests)
        assert max(map(len, tests)) - min(map(len, tests)) <= sizes.max()
        partitions.add(frozenset(frozenset(groups[test].tolist()) for test in tests))
    for _, _, train, test in splits:
        assert not set(groups[train]) & set(groups[test])  # every group on one side
    assert len(partitions) >= 5  # of 6 repeats; largest-group-first placement gave 1
    # ... so the scores vary over the repeats (their std was 0)
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(groups), 2))
    y = X @ [1.0, -2.0] + rng.normal(size=len(groups))
    result = cross_validate_regression(LinearRegression(), X, y, groups, n_splits=3, n_repeats=4)
    assert np.std(result.r2) > 0


def test_a_patch_level_split_puts_siblings_on_both_sides():
    groups = np.repeat(np.arange(6), 8)
    splits = regression_splits(len(groups), None, n_splits=3, random_state=0)
    shared = [set(groups[train]) & set(groups[test]) for _, _, train, test in splits]
    assert sum(len(s) for s in shared) >= 16  # of 18 (group, split) pairs; a grouped split: 0


@pytest.mark.parametrize(
    ("y", "groups", "n_splits", "match"),
    [
        ([0.1, np.nan, 0.3, 0.4, 0.5, 0.6], None, 2, r"non-finite value \(nan\) at index 1"),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 0, 1, 1, 2], 2, "groups has 5 entries for 6"),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 0, 0, 1, 1, 1], 3, "2 groups cannot make n_splits=3"),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], None, 1, "n_splits must be at least 2"),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], None, 7, "need at least as many samples"),
        ([0.1, 0.2, 0.3], None, 2, "X has 6 samples for 3 values"),
    ],
)
def test_bad_regression_input_fails_clearly(y, groups, n_splits, match):
    from sklearn.linear_model import LinearRegression

    X = np.arange(6.0)[:, None]
    with pytest.raises(ValueError, match=match):
        cross_validate_regression(LinearRegression(), X, y, groups, n_splits=n_splits)


def test_summary_holds_every_score():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = X @ [1.0, -2.0] + 0.3 * rng.normal(size=40)
    result = cross_validate_regression(LinearRegression(), X, y, np.arange(40) // 4, n_splits=5,
                                       n_repeats=3)  # fmt: skip
    summary = json.loads(json.dumps(result.summary()))
    assert summary["r2"]["per_repeat"] == pytest.approx(result.r2.tolist())
    assert summary["r2"]["mean"] == pytest.approx(np.mean(result.r2))
    assert len(summary["fold_r2"]["per_fold"]) == 15
    assert summary["fold_rmse"]["mean"] == pytest.approx(np.mean(result.fold_rmse))
    assert 0.9 < summary["r2"]["mean"] < 1.0


# ---------------------------------------------------------------- eigen-microstructures
def _two_mode_fields(n=200, seed=0):
    """Fields a1 m1 + a2 m2 + noise, modes +-1/16 patterns (every pixel the same variance)."""
    rows, cols = np.mgrid[:16, :16]
    checker = np.where((rows + cols) % 2 == 0, 1.0, -1.0) / 16
    stripes = np.where(cols % 4 < 2, 1.0, -1.0) / 16
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 2)) * [8.0, 4.0]
    fields = a[:, :1, None] * checker + a[:, 1:, None] * stripes
    return fields + 0.1 * rng.normal(size=fields.shape), checker, stripes


def test_eigen_microstructures_recover_known_modes_and_their_order():
    fields, checker, stripes = _two_mode_fields()
    eigen = eigen_microstructures(fields, n_components=4)
    assert eigen.components.shape == (4, 16, 16) and eigen.scores.shape == (200, 4)
    assert abs(np.sum(eigen.components[0] * checker)) > 0.95
    assert abs(np.sum(eigen.components[1] * stripes)) > 0.95
    ratio = eigen.explained_variance_ratio
    assert np.all(np.diff(ratio) <= 0)
    # mode variances 64 and 16 (unit-norm modes), noise 0.01 per pixel x 256
    total = 64 + 16 + 0.01 * 256
    assert ratio[0] == pytest.approx(64 / total, abs=0.06)
    assert ratio[1] == pytest.approx(16 / total, abs=0.04)
    assert ratio[2] < 0.01
    # the components are orthonormal, their largest entry positive, the scores the projections
    flat = eigen.components.reshape(4, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(4), atol=1e-10)
    assert np.all(flat[np.arange(4), np.argmax(np.abs(flat), axis=1)] > 0)
    z = ((fields - eigen.mean) / eigen.scale).reshape(200, -1)
    np.testing.assert_allclose(eigen.scores, (z - z.mean(axis=0)) @ flat.T, atol=1e-9)


def test_eigen_microstructures_of_s2_maps_and_their_plots(tmp_path):
    from PIL import Image

    images = np.stack([two_phase_field(48, length, fraction, seed=i)
                       for i, (length, fraction) in enumerate(
                           [(length, fraction) for length in (1.5, 3.0, 5.0)
                            for fraction in (0.3, 0.45, 0.6)] * 2)])  # fmt: skip
    s2 = two_point(images, cutoff=8)
    eigen = eigen_microstructures(s2, n_components=3)
    assert eigen.components.shape == (3, 17, 17)
    fractions = images.mean(axis=(1, 2))
    # the leading mode of S2 maps is the volume fraction's
    assert abs(np.corrcoef(eigen.scores[:, 0], fractions)[0, 1]) > 0.95
    modes, variance = plot_eigen_microstructures(eigen, tmp_path, prefix="s2", n_modes=3)
    assert modes == tmp_path / "s2_modes.png" and variance == tmp_path / "s2_variance.png"
    for path in (modes, variance):
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size[0] > 100


@pytest.mark.parametrize(
    ("fields", "n_components", "match"),
    [
        (np.zeros((1, 4, 4)), 1, "n_samples >= 2"),
        (np.full((3, 4, 4), np.nan), 1, "non-finite value at index"),
        (np.zeros((3, 4, 4)), 4, "n_components=4 is more than"),
    ],
)
def test_bad_eigen_input_fails_clearly(fields, n_components, match):
    with pytest.raises(ValueError, match=match):
        eigen_microstructures(fields, n_components)


# ---------------------------------------------------------------- the study
SMALL = {"n_specimens": 6, "patches_per_specimen": 4, "size": 32, "cutoff": 6,
         "n_components": 3, "degree": 1, "n_splits": 3, "n_repeats": 2, "eigen_components": 3,
         "cnn": False, "n_threads": 1}  # fmt: skip


def test_the_small_study_writes_consistent_files(tmp_path):
    report = run_mks(tmp_path / "out", **SMALL)
    out = tmp_path / "out"
    for name in ("mks.json", "mks.csv", "predicted_vs_true.png", "patches.png",
                 "eigen_images_modes.png", "eigen_images_variance.png", "eigen_s2_modes.png",
                 "eigen_s2_variance.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "mks.json").read_text())
    assert written["results"] == json.loads(json.dumps(report["results"]))
    with (out / "mks.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(written["results"]) == 3 * 1 * 2  # targets x methods x splits
    by_key = {(r["target"], r["method"], r["split"]): r for r in written["results"]}
    for row in rows:
        result = by_key[row["target"], row["method"], row["split"]]
        for key in ("r2_mean", "r2_std", "mae_mean", "rmse_mean", "fold_r2_mean", "inflation"):
            assert float(row[key]) == result[key], key  # every digit
        assert result["r2_mean"] == pytest.approx(np.mean(result["scores"]["r2"]["per_repeat"]))
    for target in written["settings"]["targets"]:
        grouped, loose = by_key[target, "mks", "grouped"], by_key[target, "mks", "patch_level"]
        assert grouped["inflation"] == loose["inflation"] == pytest.approx(
            loose["r2_mean"] - grouped["r2_mean"], abs=1e-15)
        assert written["inflation"][f"{target}/mks"] == grouped["inflation"]
    assert written["n_patches"] == 24 and len(written["specimens"]) == 6
    assert written["settings"]["methods"] == ["mks"]
    for part in ("fields", "conductivity", "cross_validation", "eigen_microstructures", "total"):
        assert written["seconds"][part] >= 0
    ratio = written["eigen_microstructures"]["s2"]["explained_variance_ratio"]
    assert len(ratio) == 3 and ratio == sorted(ratio, reverse=True)


def test_the_study_is_deterministic_and_its_property_is_the_solver(tmp_path):
    a = run_mks(tmp_path / "a", **SMALL)
    b = run_mks(tmp_path / "b", **SMALL)
    def scores(report):
        return [{**row, "scores": {k: v for k, v in row["scores"].items() if k != "seconds"}}
                for row in report["results"]]  # fmt: skip

    assert scores(a) == scores(b) and a["specimens"] == b["specimens"]
    patches, groups, params = mks._specimens(6, 4, 32, (1.5, 6.0), (0.25, 0.75), 0)
    first = a["specimens"][0]
    assert first["correlation_length"] == params["correlation_length"][0]
    conductivity = [effective_conductivity(p, (1.0, 10.0)) for p in patches]
    assert a["property"]["conductivity"]["mean"] == pytest.approx(np.mean(conductivity))
    c = run_mks(tmp_path / "c", **{**SMALL, "seed": 1})
    assert c["specimens"] != a["specimens"]


def test_the_study_scores_structure_that_predicts_the_property(tmp_path):
    report = run_mks(tmp_path / "out", **{**SMALL, "n_specimens": 8, "patches_per_specimen": 9,
                                           "n_components": 5, "degree": 2,
                                           "targets": ("conductivity",)})  # fmt: skip
    rows = {r["split"]: r for r in report["results"]}
    # conductivity follows the volume fraction and the connectivity S2 sees
    assert rows["grouped"]["r2_mean"] > 0.8 and rows["patch_level"]["r2_mean"] > 0.8


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"cutoff": 16}, "cutoff 16 is too large for 32x32 patches"),
        ({"n_specimens": 2}, "2 groups cannot make n_splits=3"),
        ({"targets": ("hardness",)}, "unknown targets 'hardness'"),
        ({"volume_fraction_range": (0.5, 1.2)},
         r"volume_fraction_range high must be a number in \[0, 1\], got 1.2"),
        ({"volume_fraction_range": (0.4, 0.4)},
         r"volume_fraction_range must have low < high, got \(0.4, 0.4\)"),
        ({"correlation_length_range": (0.0, 3.0)},
         "correlation_length_range low must be a finite number > 0, got 0.0"),
        ({"correlation_length_range": 3.0}, "correlation_length_range must be a"),
        ({"alpha": -1.0}, "alpha must be a finite number >= 0, got -1.0"),
        ({"alpha": "1"}, "alpha must be a finite number >= 0, got '1'"),
        ({"size": 4}, "size must be at least 8"),
        ({"conductivities": (1.0, 2.0, 3.0)}, "conductivities must be two values"),
        ({"conductivities": (1.0, -2.0)}, "finite and > 0"),
        ({"eigen_components": 30}, "eigen_components=30 is more than the 24 modes"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_study_options_fail_before_any_work(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        run_mks(tmp_path / "out", **{**SMALL, **options})
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_the_study_compares_cnn_features(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    options = {**SMALL, "cnn": True, "n_specimens": 8, "patches_per_specimen": 9,
               "n_components": 8, "targets": ("conductivity",)}  # fmt: skip
    report = run_mks(tmp_path / "out", **options)
    rows = {(r["method"], r["split"]): r for r in report["results"]}
    assert set(rows) == {(m, s) for m in ("mks", "cnn") for s in ("grouped", "patch_level")}
    # relu1_1 and relu2_1 (64 and 128 channels), mean and upper-triangle Gram
    assert rows["cnn", "grouped"]["n_features"] == 64 + 128 + 64 * 65 // 2 + 128 * 129 // 2
    assert rows["cnn", "grouped"]["r2_mean"] > 0.5
    # 8 specimens: a patch-level split lets the many Gram features see a test patch's siblings
    assert rows["cnn", "patch_level"]["r2_mean"] > rows["cnn", "grouped"]["r2_mean"]
    assert report["seconds"]["cnn_features"] > 0
    assert rows["cnn", "grouped"]["inflation"] == pytest.approx(
        rows["cnn", "patch_level"]["r2_mean"] - rows["cnn", "grouped"]["r2_mean"])


def test_without_pytorch_the_cnn_comparison_says_how_to_leave_it_out(tmp_path, monkeypatch):
    from _helpers import run_python

    code = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('No module named torch')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from microtex.analysis.mks import run_mks\n"
        f"run_mks({str(tmp_path / 'out')!r}, n_specimens=6, patches_per_specimen=4, size=32, "
        "cutoff=6, n_components=3, degree=1, n_splits=3, n_repeats=1, targets=['conductivity'])\n"
    )
    monkeypatch.setenv("MICROTEX_CACHE_DIR", str(tmp_path / "cache"))  # no graph cached yet
    result = run_python("-c", code)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and "needs PyTorch" in last
    assert "microtex mks --no-cnn" in last
