"""Gatys texture synthesis (microtex.interpret.synthesis) and ``microtex synthesize``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from microtex.backbones.config import BackboneConfig  # noqa: E402  (after the torch skip)
from microtex.cli import main  # noqa: E402
from microtex.errors import ImageTooSmallError, UnknownLayerError  # noqa: E402
from microtex.features.spectra import power_spectrum  # noqa: E402
from microtex.interpret._torch import tap_module  # noqa: E402
from microtex.interpret.synthesis import DEFAULT_STEPS, gram_loss, synthesize  # noqa: E402
from microtex.synth import perlin_texture  # noqa: E402

pytestmark = pytest.mark.torch

# one thread: two OpenMP threads on two cores crawl whenever another process holds
# one of them (each parallel region waits for the descheduled thread)
THREADS = 1


@pytest.fixture(scope="module")
def texture():
    """64² Perlin marble, 6 stripes per side (a radial power-spectrum peak at bin 6)."""
    return perlin_texture(64, k=6, theta=0.5, amplitude=2.0, seed=1)


@pytest.fixture(scope="module")
def result(texture):
    """60 L-BFGS iterations from seed 0 at the source's size (about 3 s on one core)."""
    return synthesize(texture, steps=60, seed=0, n_threads=THREADS)


def test_synthesis_lowers_the_gram_loss_by_orders_of_magnitude(texture, result):
    initial, final = result.initial_loss, result.final_loss
    assert initial.total / final.total >= 100
    assert list(final.per_layer) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    for tap, value in final.per_layer.items():
        assert value < initial.per_layer[tap] / 5, tap
    # the recorded final loss is the loss of the returned image
    measured = gram_loss(result.image, texture, n_threads=THREADS)
    assert measured.total == pytest.approx(final.total, rel=1e-4)
    assert result.loss_history[0] == pytest.approx(initial.total, rel=1e-6)
    assert min(result.loss_history) == pytest.approx(final.total, rel=1e-4)
    assert result.iterations <= 60 < result.evaluations <= 75  # evaluations: 1.25 x steps
    assert result.image.shape == texture.shape and result.image.dtype == np.float32
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0


def test_start_is_seeded_uniform_noise(texture, result):
    """The initial loss is the loss of torch.rand from the seed, mapped to [0.01, 0.99]."""
    noise = torch.rand((1, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    noise = (0.01 + 0.98 * noise)[0, 0].numpy()
    expected = gram_loss(noise, texture, n_threads=THREADS)
    assert result.initial_loss.total == pytest.approx(expected.total, rel=1e-4)


def test_synthesized_power_spectrum_peak_matches_the_source(texture, result):
    source = power_spectrum(texture, radial=True)
    synthesized = power_spectrum(result.image, radial=True)
    source_peak = int(source[1:].argmax()) + 1  # bin 0 is the mean
    synthesized_peak = int(synthesized[1:].argmax()) + 1
    assert source_peak == 6
    assert abs(synthesized_peak - source_peak) <= 1
    # a peak, not flat noise: the peak bin holds far more than the median bin
    assert synthesized[synthesized_peak] > 5 * np.median(synthesized[1:])


def test_gram_loss_definition():
    """E_l = ||F F^T / M - F' F'^T / M'||_F^2 / N^2 per tap; the total weighs them."""
    rng = np.random.default_rng(0)
    image, source = rng.random((20, 24), np.float32), rng.random((32, 16), np.float32)
    taps = ("relu1_1", "relu2_1")
    module = tap_module(BackboneConfig(taps=taps, block_pooling="avg"))
    with torch.no_grad():
        a = [t[0].numpy().reshape(t.shape[1], -1).astype(np.float64)
             for t in module(torch.from_numpy(image)[None, None])]  # fmt: skip
        b = [t[0].numpy().reshape(t.shape[1], -1).astype(np.float64)
             for t in module(torch.from_numpy(source)[None, None])]  # fmt: skip
    expected = [np.sum((f @ f.T / f.shape[1] - g @ g.T / g.shape[1]) ** 2) / f.shape[0] ** 2
                for f, g in zip(a, b)]  # fmt: skip
    loss = gram_loss(image, source, taps=taps, layer_weights=[2.0, 0.5])
    assert loss.per_layer["relu1_1"] == pytest.approx(expected[0], rel=1e-4)
    assert loss.per_layer["relu2_1"] == pytest.approx(expected[1], rel=1e-4)
    assert loss.total == pytest.approx(2.0 * expected[0] + 0.5 * expected[1], rel=1e-4)
    assert gram_loss(source, source, taps=taps).total == 0.0


def test_same_seed_same_image_other_seed_other_image(texture):
    first = synthesize(texture, 32, steps=4, seed=3, n_threads=THREADS)
    again = synthesize(texture, 32, steps=4, seed=3, n_threads=THREADS)
    other = synthesize(texture, 32, steps=4, seed=4, n_threads=THREADS)
    np.testing.assert_array_equal(first.image, again.image)
    assert np.abs(first.image - other.image).mean() > 0.05
    assert first.settings["seed"] == 3 and other.settings["seed"] == 4


def test_output_size_differs_from_the_source(texture):
    out = synthesize(texture, (48, 80), steps=15, seed=0, n_threads=THREADS)
    assert out.image.shape == (48, 80)
    assert out.settings["size"] == [48, 80] and out.settings["source_shape"] == [64, 64]
    assert out.final_loss.total < out.initial_loss.total / 10
    assert synthesize(texture, 40, steps=2, n_threads=THREADS).image.shape == (40, 40)


def test_coarse_to_fine(texture):
    """Two scales: 32² against the source at 32², then 64² from it upsampled."""
    out = synthesize(texture, steps=10, scales=2, seed=0, n_threads=THREADS)
    first, second = out.scales
    assert (first.shape, first.source_shape) == ((32, 32), (32, 32))
    assert (second.shape, second.source_shape) == ((64, 64), (64, 64))
    assert out.image.shape == (64, 64)
    # the fine scale starts from the coarse result, far below the noise's loss
    assert second.initial_loss.total < out.initial_loss.total / 10
    assert second.final_loss.total < second.initial_loss.total
    assert out.loss_history == first.loss_history + second.loss_history
    assert json.loads(json.dumps(out.to_dict()))["scales"][1]["shape"] == [64, 64]


def test_source_size_and_callback(texture):
    seen = []
    out = synthesize(texture, steps=3, source_size=32, n_threads=THREADS,
                     callback=lambda *args: seen.append(args))  # fmt: skip
    assert out.image.shape == (32, 32) and out.scales[0].source_shape == (32, 32)
    assert [s[1] for s in seen] == list(range(1, out.evaluations + 1))
    assert {s[0] for s in seen} == {0} and seen[0][2] == out.loss_history[0]


@pytest.mark.parametrize(
    ("source", "kwargs", "error", "match"),
    [
        (np.full((32, 32), np.nan, np.float32), {}, ValueError, "non-finite"),
        (np.full((32, 32), 0.5, np.float32), {}, ValueError, "constant"),
        (np.zeros((2, 32, 32), np.float32), {}, ValueError, "2-D"),
        ("texture", {"size": 0}, ValueError, "size must be"),
        ("texture", {"size": (32, -1)}, ValueError, r"\(32, -1\)"),
        ("texture", {"size": 2.5}, ValueError, "2.5"),
        ("texture", {"size": 8}, ImageTooSmallError, r"\(8, 8\).*relu5_1.*16"),
        ("texture", {"scales": 4}, ImageTooSmallError, r"1/8 of its size \(scales=4\)"),
        ("texture", {"steps": 0}, ValueError, "steps must be a positive integer, got 0"),
        ("texture", {"seed": -1}, ValueError, "seed"),
        ("texture", {"layer_weights": [1, 1]}, ValueError, "2 values for 5 layers"),
        ("texture", {"taps": "relu9_1"}, UnknownLayerError, "relu9_1"),
        ("texture", {"callback": 3}, TypeError, "callback"),
    ],
)
def test_bad_input_is_refused_with_the_value(texture, source, kwargs, error, match):
    source = texture if isinstance(source, str) else source
    with pytest.raises(error, match=match):
        synthesize(source, **{"steps": 1, **kwargs})


def test_too_small_source_names_its_shape():
    with pytest.raises(ImageTooSmallError, match=r"source of shape \(12, 40\)"):
        synthesize(np.random.default_rng(0).random((12, 40)), steps=1)


def save_png(path, image):
    Image.fromarray(np.round(np.asarray(image) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_writes_png_of_the_size_and_its_record(texture, tmp_path, capsys):
    source = save_png(tmp_path / "source.png", texture)
    output = tmp_path / "out" / "texture.png"
    code = main(["synthesize", str(source), "-o", str(output), "--size", "40x56",
                 "--steps", "15", "--seed", "2", "--threads", str(THREADS)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    with Image.open(output) as im:
        assert im.size == (56, 40) and im.mode == "L"
    record = json.loads((tmp_path / "out" / "texture.json").read_text())
    assert record["settings"]["size"] == [40, 56] and record["settings"]["seed"] == 2
    assert record["settings"]["steps"] == 15
    assert record["final_loss"]["total"] < record["initial_loss"]["total"] / 10
    history = record["scales"][0]["loss_history"]
    assert min(history) < history[0] / 10
    assert set(record["final_loss"]["per_layer"]) == set(record["settings"]["taps"])
    assert "lower" in out and str(output) in out
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".")] == []


def test_cli_errors_exit_2(texture, tmp_path, capsys):
    source = save_png(tmp_path / "source.png", texture)
    assert main(["synthesize", str(source), "-o", str(tmp_path / "a.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
    assert main(["synthesize", str(source), "-o", str(tmp_path / "a.png"), "--size", "8"]) == 2
    assert "too small" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "a.json").exists()
    with pytest.raises(SystemExit):
        main(["synthesize", str(source), "-o", str(tmp_path / "a.png"), "--size", "0x3"])
    assert "--size" in capsys.readouterr().err


def test_cli_help_states_the_default_steps(capsys):
    with pytest.raises(SystemExit):
        main(["synthesize", "--help"])
    assert f"(default {DEFAULT_STEPS})" in capsys.readouterr().out
