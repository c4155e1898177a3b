"""``microtex mks``: the study's table on stdout, its report folder, its errors."""

from __future__ import annotations

import importlib
import json

import pytest

from microtex.cli import mks as mks_command

cli_main = importlib.import_module("microtex.cli.main")  # microtex.cli.main is also a function

SMALL = ["--specimens", "6", "--patches", "4", "--size", "32", "--cutoff", "6",
         "--components", "3", "--degree", "1", "--folds", "3", "--repeats", "2", "--no-cnn",
         "--threads", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The command as ``cli.main`` registers it (``"mks": mks`` in COMMANDS)."""
    monkeypatch.setitem(cli_main.COMMANDS, "mks", mks_command)


def test_mks_prints_the_table_of_its_report(tmp_path, capsys):
    assert cli_main.main(["mks", "-o", str(tmp_path / "out"), *SMALL, "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "mks.json").read_text())
    assert report["settings"]["seed"] == 3 and report["settings"]["n_repeats"] == 2
    assert report["n_patches"] == 24 and report["settings"]["methods"] == ["mks"]
    rows = {(r["target"], r["method"], r["split"]): r for r in report["results"]}
    first = rows["conductivity", "mks", "grouped"]
    assert first["n_features"] == (2 * 6 + 1) ** 2  # --cutoff 6: a 13 x 13 S2 window
    assert first["scores"]["n_splits"] == 3 and len(first["scores"]["fold_r2"]["per_fold"]) == 6
    assert report["settings"]["size"] == 32 and report["settings"]["n_components"] == 3
    lines = [line.split() for line in printed.splitlines() if line.startswith("  ")]
    assert lines[0] == ["target", "method", "grouped", "patch-level", "inflation"]
    assert len(lines) == 1 + 3  # three targets, one method
    for target, method, grouped, loose, inflation in lines[1:]:
        assert float(grouped) == round(rows[target, method, "grouped"]["r2_mean"], 3)
        assert float(loose) == round(rows[target, method, "patch_level"]["r2_mean"], 3)
        assert float(inflation) == round(rows[target, method, "grouped"]["inflation"], 3)
    assert "6 specimens, 24 patches" in printed


def test_mks_help_shows_the_library_defaults(capsys):
    from microtex.analysis.mks import run_mks

    with pytest.raises(SystemExit):
        cli_main.main(["mks", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = run_mks.__kwdefaults__
    assert f"specimens (default {defaults['n_specimens']})" in text
    assert f"patches per specimen (default {defaults['patches_per_specimen']})" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cutoff", "20"], "cutoff 20 is too large for 32x32 patches"),
        (["--specimens", "2"], "2 groups cannot make n_splits=3"),
    ],
)
def test_mks_bad_options_exit_2(tmp_path, capsys, argv, message):
    assert cli_main.main(["mks", "-o", str(tmp_path / "out"), *SMALL, *argv]) == 2
    assert message in capsys.readouterr().err
