"""``microtex evaluate-generated``: a generator bundle against real images from a conditions CSV."""

from __future__ import annotations

import csv
import importlib
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("onnx")

from microtex.cli import evaluate_generated as command  # noqa: E402  (after the torch skip)
from microtex.cli import main  # noqa: E402
from microtex.generative.evaluate import STATISTICS  # noqa: E402
from microtex.synth import perlin_texture  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The command in ``microtex.cli.main.COMMANDS`` (a no-op once main.py registers it)."""
    module = importlib.import_module("microtex.cli.main")
    monkeypatch.setitem(module.COMMANDS, "evaluate-generated", command)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A random-weight generator of 32×32 images, one condition ``ln_t`` in [2, 4.5]."""
    import torch

    from microtex.generative.export import save_generator
    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig
    from microtex.generative.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(1)
    vqvae = VQVAE(VQVAEConfig(image_size=32, hidden_channels=(8, 16), embedding_dim=8,
                              n_codes=16, residual_channels=4)).eval()  # fmt: skip
    prior = GatedPixelCNN(PixelCNNConfig(n_codes=16, embedding_dim=8, hidden_channels=8,
                                         n_layers=2, head_channels=16, n_conditions=1,
                                         latent_size=4)).eval()  # fmt: skip
    with torch.no_grad():  # contrast in the decoded images
        vqvae.codebook.mul_(16.0)
        vqvae.decoder[-2].weight.mul_(4.0)
    return save_generator(tmp_path_factory.mktemp("gen") / "generator", vqvae, prior,
                          condition_names=["ln_t"], condition_range=[[2.0, 4.5]])  # fmt: skip


@pytest.fixture
def images(tmp_path):
    """Three 64×64 Perlin PNGs at two conditions, a corrupt file, and the CSV listing them."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (name, k) in enumerate([("a.png", 3), ("b.png", 3), ("c.png", 6)]):
        image = perlin_texture(64, k=k, theta=0.0, amplitude=1.0, seed=i)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / name)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    (tmp_path / "conditions.csv").write_text(
        "path,ln_t,T\na.png,2.5,1\nb.png,2.5,1\nc.png,4.0,1\nbad.png,3.0,1\n")
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def evaluate(capsys, bundle, images, output, *extra):
    return run(capsys, "evaluate-generated", bundle, "--conditions",
               images.parent / "conditions.csv", "--image-dir", images, "-n", "5", "--seed",
               "2", "--texture", "none", "--device", "cpu", "-o", output, *extra)  # fmt: skip


def test_evaluate_generated_end_to_end(bundle, images, tmp_path, capsys):
    output = tmp_path / "report"
    code, out, err = evaluate(capsys, bundle, images, output, "--columns", "ln_t")
    assert code == 0, err
    assert "skipped" in err and "bad.png" in err
    assert "3 real images in 2 conditions (1 skipped); generating 5 per condition" in err
    result = json.loads((output / "evaluation.json").read_text())
    assert [e["condition"] for e in result["conditions"]] == [{"ln_t": 2.5}, {"ln_t": 4.0}]
    assert [e["n_real_images"] for e in result["conditions"]] == [2, 1]
    assert [e["n_real_patches"] for e in result["conditions"]] == [8, 4]
    assert result["settings"]["n_generated"] == 5 and result["settings"]["seed"] == 2
    assert all(e["texture"] is None for e in result["conditions"])
    # one line per condition on stdout with the numbers of evaluation.json
    lines = [line for line in out.splitlines() if line.startswith("ln_t=")]
    assert len(lines) == 2
    v_f = result["conditions"][1]["statistics"]["V_f"]
    assert lines[1].startswith(f"ln_t=4: V_f real {v_f['real']['mean']:.4g} ± ")
    assert f"(W {v_f['wasserstein']:.4g})" in lines[1]
    assert f"report -> {output}/" in out
    for name in STATISTICS:
        assert (output / f"boxplot_{name}.png").is_file()
    with open(output / "statistics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 + 5 + 4 + 5
    # the same run again: refused without --overwrite, identical numbers with it
    code, _, err = evaluate(capsys, bundle, images, output)
    assert code == 2 and "--overwrite" in err
    code, _, err = evaluate(capsys, bundle, images, output, "--overwrite")
    assert code == 0, err
    assert json.loads((output / "evaluation.json").read_text()) == result


def test_the_texture_distance_and_options_reach_the_report(bundle, images, tmp_path, capsys):
    output = tmp_path / "report"
    code, out, err = run(capsys, "evaluate-generated", bundle, "--conditions",
                         images.parent / "conditions.csv", "--image-dir", images, "-n", "3",
                         "--taps", "relu1_1",
                         "--phase", "dark", "--spacing", "2", "--stride", "16",
                         "--device", "cpu", "-o", output)  # fmt: skip
    assert code == 0, err
    result = json.loads((output / "evaluation.json").read_text())
    settings = result["settings"]
    assert settings["texture_features"]["taps"] == ["relu1_1"]
    assert settings["texture_features"]["n_features"] == 64
    assert (settings["phase"], settings["spacing"], settings["patch_stride"]) == ("dark", 2, 16)
    assert result["conditions"][0]["n_real_patches"] == 2 * 9  # 3 × 3 origins every 16 px
    assert "texture FD " in out


def test_bad_input_fails_clearly(bundle, images, tmp_path, capsys):
    csv_path = images.parent / "conditions.csv"
    code, _, err = evaluate(capsys, bundle, images, tmp_path / "a", "--columns", "ln_time")
    assert code == 2 and "no column 'ln_time'" in err and "['path', 'ln_t', 'T']" in err
    code, _, err = evaluate(capsys, bundle, images, tmp_path / "b", "--columns", "ln_t,T")
    assert code == 2 and "the generator takes 1 condition(s): ['ln_t']" in err
    csv_path.write_text("path,ln_t\na.png,2.5\nc.png,nan\n")
    code, _, err = evaluate(capsys, bundle, images, tmp_path / "c")
    assert code == 2 and "conditions.csv:3: ln_t is 'nan'" in err
    csv_path.write_text("path,ln_t\nbad.png,2.5\n")
    code, _, err = evaluate(capsys, bundle, images, tmp_path / "d")
    assert code == 1 and "no image listed" in err
    small = images / "small.png"
    Image.fromarray(np.zeros((16, 64), np.uint8)).save(small)
    csv_path.write_text("path,ln_t\nsmall.png,2.5\n")
    code, _, err = evaluate(capsys, bundle, images, tmp_path / "e")
    assert code == 2 and "smaller than the generator's 32×32 images" in err
    assert not any((tmp_path / name).exists() for name in "abcde")
