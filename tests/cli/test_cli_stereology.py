"""``microtex stereology``: files in, one row of stereology per image out, bad files skipped."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microtex.cli import main
from microtex.cli import stereology as command
from microtex.io import FeatureTable


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The command in ``microtex.cli.main.COMMANDS`` (a no-op once main.py registers it)."""
    module = importlib.import_module("microtex.cli.main")
    monkeypatch.setitem(module.COMMANDS, "stereology", command)


def save_png(path, image) -> Path:
    Image.fromarray(np.round(np.asarray(image) * 255).astype(np.uint8)).save(path)
    return Path(path)


@pytest.fixture
def image_dir(tmp_path):
    """Stripes 3 px wide every 8 px (41 columns: pixel centres 0 to 40 span 5 periods),
    a dark field with one bright 10 x 10 square, and a corrupt file (sorted: a, b, bad)."""
    folder = tmp_path / "images"
    folder.mkdir()
    columns = np.arange(8 * 5 + 1)
    save_png(folder / "a.png", np.repeat(((columns % 8) < 3)[None] * 0.8 + 0.1, 16, axis=0))
    square = np.full((20, 20), 0.15)
    square[5:15, 5:15] = 0.9
    save_png(folder / "b.png", square)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("suffix", [".csv", ".npz", ".parquet"])
def test_stereology_writes_one_row_per_image_and_skips_bad_files(image_dir, tmp_path, capsys,
                                                                 suffix):  # fmt: skip
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    output = tmp_path / "out" / f"stereology{suffix}"
    code, out, err = run(capsys, "stereology", image_dir, "--pixel-size", "4", "-o", output)
    assert code == 0, err
    assert "bad.png" in err and "skipped" in err and "Traceback" not in err
    assert "measured 2 images (1 skipped)" in out and str(output) in out
    table = FeatureTable.read(output)
    assert [Path(i).name for i in table.ids] == ["a.png", "b.png"]
    stripes, square = (dict(zip(table.columns, row)) for row in table.features)
    assert stripes["mean_intercept_h_px"] == pytest.approx(3)  # the stripe width
    assert stripes["mean_free_path_h_px"] == pytest.approx(5)  # the gap between stripes
    assert stripes["mean_intercept_h_um"] == pytest.approx(12)
    assert square["V_V"] == pytest.approx(0.25) and square["n_particles"] == 1
    assert square["mean_intercept_px"] == pytest.approx(10)
    assert stripes["d_f_um"] == stripes["mean_intercept_um"]  # Noguchi's d_f, by name
    assert square["astm_G"] == pytest.approx(6.0, abs=1e-5)  # 40 µm


def test_stereology_options_reach_the_measurement(image_dir, tmp_path, capsys):
    output = tmp_path / "dark.csv"
    code, _, err = run(capsys, "stereology", image_dir / "b.png", "--phase", "dark",
                       "--threshold", "0.5", "--spacing", "5", "--connectivity", "4",
                       "--exclude-border", "--denoise", "0.5", "-o", output)  # fmt: skip
    assert code == 0, err
    row = dict(zip(*[(t := FeatureTable.read(output)).columns, t.features[0]]))
    assert row["V_V"] == pytest.approx(0.75) and row["threshold"] == pytest.approx(0.5)
    assert row["n_particles"] == 0  # the dark phase is one region touching the border
    assert "mean_intercept_um" not in row and "astm_G" not in row
    # rows and columns 0, 5, 10, 15: two of each cross the square (10 px of it), twice
    assert row["P_L_h_per_px"] == pytest.approx(4 / (4 * 19))


def test_stereology_crop_bottom_removes_the_rows_before_measuring(tmp_path, capsys):
    image = np.full((24, 20), 0.1)
    image[:, :10] = 0.9
    image[20:] = 1.0  # a white "info band"
    path = save_png(tmp_path / "band.png", image)
    output = tmp_path / "t.npz"
    code, _, err = run(capsys, "stereology", path, "--crop-bottom", "4", "-o", output)
    assert code == 0, err
    table = FeatureTable.read(output)
    assert table.features[0, table.columns.index("V_V")] == pytest.approx(0.5)


def test_stereology_with_no_measurable_image_exits_1(tmp_path, capsys):
    flat = save_png(tmp_path / "flat.png", np.full((8, 8), 0.5))
    code, _, err = run(capsys, "stereology", flat, "-o", tmp_path / "t.csv")
    assert code == 1
    assert "flat.png" in err and "constant image" in err and "no image could be measured" in err
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "1.5"], "threshold must be 'otsu' or a number in [0, 1], got 1.5"),
        (["--threshold", "mean"], "got 'mean'"),
        (["--phase", "grey"], "invalid choice: 'grey'"),
        (["--pixel-size", "0"], "must be a finite number > 0, got 0.0"),
        (["--pixel-size", "um"], "must be a finite number > 0, got 'um'"),
        (["--denoise", "nan"], "must be a finite number > 0, got nan"),
        (["--spacing", "0"], "spacing"),
        (["--connectivity", "6"], "invalid choice: 6"),
    ],
)
def test_stereology_bad_options_are_usage_errors(image_dir, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        main(["stereology", str(image_dir), "-o", str(tmp_path / "t.csv"), *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_stereology_refuses_an_unwritable_output_before_any_work(image_dir, tmp_path, capsys):
    code, _, err = run(capsys, "stereology", image_dir, "-o", tmp_path / "t.xlsx")
    assert code == 2 and "unsupported feature file type '.xlsx'" in err


def test_stereology_help_says_what_mean_free_path_and_d_f_are(capsys):
    with pytest.raises(SystemExit):
        main(["stereology", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "mean_free_path (Fullman's lambda: the mean intercept of the OTHER phase" in text
    assert "d_f" in text and "(default otsu)" in text and "(default 8)" in text
