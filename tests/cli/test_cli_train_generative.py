"""``microtex train-vqvae`` and ``microtex train-prior``: end to end on tiny Perlin data."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from microtex.cli import main  # noqa: E402  (after the torch skip)
from microtex.cli import train_prior as prior_command  # noqa: E402
from microtex.cli import train_vqvae as vqvae_command  # noqa: E402
from microtex.generative import export  # noqa: E402
from microtex.synth import perlin_texture  # noqa: E402

pytestmark = pytest.mark.torch

#: A VQ-VAE small enough for seconds on two cores: 32×32 patches → 4×4 maps of 16 codes.
SMALL_VQVAE = ["--patch", "32", "--stride", "16", "--codes", "16", "--dim", "8", "--hidden", "8,16",
               "--residual-channels", "4", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu",
               "--no-progress"]  # fmt: skip
SMALL_PRIOR = ["--layers", "2", "--hidden", "8", "--embedding", "8", "--head", "16",
               "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress"]  # fmt: skip
LN_K = {"k0.png": math.log(3), "k1.png": math.log(3), "k2.png": math.log(6),
        "k3.png": math.log(6), "k4.png": math.log(4)}  # fmt: skip


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The commands in ``microtex.cli.main.COMMANDS`` (a no-op once main.py registers them)."""
    module = importlib.import_module("microtex.cli.main")
    monkeypatch.setitem(module.COMMANDS, "train-vqvae", vqvae_command)
    monkeypatch.setitem(module.COMMANDS, "train-prior", prior_command)


@pytest.fixture
def images(tmp_path):
    """Five 64×64 Perlin textures and a corrupt file; the CSV also lists a file that is missing."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (name, ln_k) in enumerate(LN_K.items()):
        image = perlin_texture(64, k=math.exp(ln_k), theta=0.0, amplitude=1.0, seed=i)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    rows = [f"{name},{ln_k:.6f}" for name, ln_k in LN_K.items()]
    text = "path,ln_k,note\n" + "\n".join(rows) + "\nmissing.png,1.0\ncorrupt.png,2.0\n"
    (tmp_path / "conditions.csv").write_text(text)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_vqvae(capsys, images, run_dir, *extra):
    return run(capsys, "train-vqvae", images, "--conditions", images.parent / "conditions.csv",
               "--columns", "ln_k", *SMALL_VQVAE, "-o", run_dir, *extra)  # fmt: skip


def test_train_vqvae_then_train_prior_end_to_end(images, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = train_vqvae(capsys, images, run_dir, "--epochs", "2", "--validation",
                                 "k1.png,k3.png")  # fmt: skip
    assert code == 0, err
    assert "skipped" in err and "missing.png: no such file" in err and "corrupt.png" in err
    assert "90 patches from 5 images (2 held out for validation, 2 skipped)" in err
    assert err.count("vqvae epoch ") == 2 and "perplexity" in err and "Traceback" not in err
    assert "trained the VQ-VAE for 2 epochs" in out
    history = json.loads((run_dir / "vqvae" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["validation_codebook"]["used_codes"] >= 1 for r in history)
    data = json.loads((run_dir / "data.json").read_text())
    assert data["patch_size"] == 32 and data["stride"] == 16 and data["n_patches"] == 90
    sides = {s["path"].rsplit("/", 1)[-1]: s["side"] for s in data["sources"]}
    assert sides == {"k0.png": "train", "k1.png": "validation", "k2.png": "train",
                     "k3.png": "validation", "k4.png": "train"}  # fmt: skip

    code, out, err = run(capsys, "train-prior", run_dir, "--epochs", "3", *SMALL_PRIOR)
    assert code == 0, err
    assert err.count("prior epoch ") == 3 and "Traceback" not in err
    assert "trained the prior for 3 epochs: validation NLL" in out
    history = json.loads((run_dir / "prior" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train"]["nll"] < history[0]["train"]["nll"]
    if not hasattr(export, "save_generator"):
        assert not (run_dir / "generator").exists()
        return
    assert f"generator -> {run_dir / 'generator'}" in out
    manifest = json.loads((run_dir / "generator" / "microtex.json").read_text())
    conditions = manifest["config"]["conditions"]
    assert conditions["names"] == ["ln_k"]
    # over the training images k0, k2, k4: ln 3 to ln 6
    np.testing.assert_allclose(conditions["range"], [[math.log(3), math.log(6)]], rtol=1e-6)
    training = manifest["config"]["training"]
    assert training["prior"]["epochs"] == 3 and training["vqvae"]["epochs"] == 2


def test_resume_continues_to_the_same_epoch_count(images, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_vqvae(capsys, images, run_dir, "--epochs", "1")[0] == 0
    code, _, err = train_vqvae(capsys, images, run_dir, "--epochs", "2")
    assert code == 2 and "already holds a VQ-VAE checkpoint: pass --resume" in err
    code, _, err = train_vqvae(capsys, images, run_dir, "--epochs", "3", "--resume")
    assert code == 0, err
    assert err.count("vqvae epoch ") == 2 and "vqvae epoch 2/3" in err  # epochs 2 and 3 only
    history = json.loads((run_dir / "vqvae" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert sorted(p.name for p in (run_dir / "vqvae").iterdir()) == ["epoch-0003", "history.json"]
    code, _, err = train_vqvae(capsys, images, run_dir, "--epochs", "4", "--resume",
                               "--stride", "32")  # fmt: skip
    assert code == 2 and "cannot resume: the data differ" in err and "stride" in err


@pytest.mark.parametrize(("csv", "columns", "message"), [
    ("path,ln_k\nk0.png,1\nk1.png,2\n", "ln_t",
     "has no column 'ln_t'; its columns are ['path', 'ln_k']"),
    ("path,ln_k\nk0.png,1\nk1.png,nan\n", "ln_k", "conditions.csv:3: ln_k is 'nan'"),
    ("path,ln_k\nk0.png,1\nk1.png,slow\n", "ln_k", "csv:3: ln_k is 'slow', not a number"),
    ("path,ln_k\nk0.png,1\nmissing.png,2\n", "ln_k", "needs at least 2 source images, got 1"),
])  # fmt: skip
def test_bad_input_fails_clearly(images, tmp_path, capsys, csv, columns, message):
    (tmp_path / "conditions.csv").write_text(csv)
    code, _, err = run(capsys, "train-vqvae", images, "--conditions", tmp_path / "conditions.csv",
                       "--columns", columns, *SMALL_VQVAE, "-o", tmp_path / "run")  # fmt: skip
    assert code == 2 and "microtex: error: " in err and message in err, err
    assert "Traceback" not in err and not (tmp_path / "run" / "vqvae").exists()


def test_no_usable_image_exits_1_and_lists_the_files(images, tmp_path, capsys):
    (tmp_path / "conditions.csv").write_text("path,ln_k\nmissing.png,1\ncorrupt.png,2\n")
    code, _, err = train_vqvae(capsys, images, tmp_path / "run", "--epochs", "1")
    assert code == 1
    assert "skipped" in err and "missing.png" in err and "no image listed" in err


def test_train_prior_needs_a_vqvae_run(tmp_path, capsys):
    code, _, err = run(capsys, "train-prior", tmp_path, *SMALL_PRIOR)
    assert code == 2 and "is not a train-vqvae run folder" in err


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--validation", "1.5", "fraction must be in (0, 1)"),
    ("--hidden", "8,x", "positive integers separated by commas"),
    ("--lr", "-1", "--lr must be a finite number > 0"),
])  # fmt: skip
def test_bad_options_are_refused_by_the_parser(images, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        train_vqvae(capsys, images, tmp_path / "run", option, value)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
