"""The generator bundle and its reference sampler (microtex.generative.sample)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from microtex import load_bundle
from microtex.errors import BundleError
from microtex.generative.sample import categorical, sample_uniforms

pytestmark = pytest.mark.torch


def test_uniforms_are_uniform_and_depend_on_seed_sample_and_position_only():
    u = sample_uniforms(7, np.arange(100_000), 3)
    assert ((u >= 0) & (u < 1)).all()
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert np.abs(counts - 5000).max() < 5 * np.sqrt(5000)  # 5 sigma of a binomial count
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    np.testing.assert_array_equal(sample_uniforms(7, [5, 99], 3), u[[5, 99]])
    assert sample_uniforms(8, [5], 3)[0] != u[5] and sample_uniforms(7, [5], 4)[0] != u[5]
    with pytest.raises(ValueError, match="seed must be in"):
        sample_uniforms(-1, [0], 0)


def test_categorical_draws_follow_the_softmax_and_its_temperature():
    logits = np.log([0.1, 0.2, 0.3, 0.4])
    u = sample_uniforms(1, np.arange(200_000), 0)
    rows = np.broadcast_to(logits, (len(u), 4))
    counts = np.bincount(categorical(rows, u), minlength=4)
    expected = np.array([0.1, 0.2, 0.3, 0.4]) * len(u)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    hot = np.bincount(categorical(rows, u, temperature=0.5), minlength=4) / len(u)
    np.testing.assert_allclose(hot, np.array([1, 4, 9, 16]) / 30, atol=0.005)  # p**2 / sum
    assert (categorical(rows[:3], u[:3], temperature=0) == 3).all()


@pytest.fixture(scope="module")
def models():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from _helpers import tiny_generator_models

    vqvae, prior = tiny_generator_models()
    with torch.no_grad():  # larger logits than at initialization: draws that matter
        prior.head_output.weight.mul_(8.0)
    return vqvae, prior


@pytest.fixture(scope="module")
def bundle_dir(models, tmp_path_factory):
    from microtex.generative.export import save_generator

    vqvae, prior = models
    path = tmp_path_factory.mktemp("gen") / "generator"
    return save_generator(path, vqvae, prior, condition_names=["ln_t"],
                          condition_range=[[2.0, 4.5]], training={"epochs": 0})  # fmt: skip


def torch_sample(prior, condition, n, seed, temperature, first_sample=0):
    """The same draws made with the PyTorch model, position by position."""
    import torch

    side = prior.config.latent_size
    maps = torch.zeros((n, side, side), dtype=torch.int64)
    conditions = torch.full((n, 1), float(condition))
    ids = np.arange(first_sample, first_sample + n)
    with torch.no_grad():
        for position in range(side * side):
            i, j = divmod(position, side)
            logits = prior(maps, conditions)[:, :, i, j].numpy()
            maps[:, i, j] = torch.from_numpy(
                categorical(logits, sample_uniforms(seed, ids, position), temperature))
    return maps.numpy()


def test_the_bundle_loads_as_a_generator_without_pytorch_objects(bundle_dir):
    generator = load_bundle(bundle_dir)
    assert generator.condition_names == ("ln_t",)
    np.testing.assert_array_equal(generator.condition_range, [[2.0, 4.5]])
    assert (generator.latent_size, generator.n_codes, generator.image_size) == (4, 16, 32)
    assert generator.training == {"epochs": 0}
    assert "ln_t in [2, 4.5]" in repr(generator)


@pytest.mark.parametrize("sampler", ["cached", "naive"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_both_samplers_draw_what_the_pytorch_model_draws(models, bundle_dir, temperature, sampler):
    generator = load_bundle(bundle_dir)
    maps = generator.sample_indices(3.0, 6, seed=11, temperature=temperature, batch_size=4,
                                    sampler=sampler)  # fmt: skip
    np.testing.assert_array_equal(maps, torch_sample(models[1], 3.0, 6, 11, temperature))
    if temperature:  # draws, not one index everywhere (greedy maps are alike by design)
        assert len(np.unique(maps)) > 3


@pytest.mark.parametrize("sampler", ["cached", "naive"])
def test_a_sample_depends_on_its_seed_and_number_not_on_its_batch(bundle_dir, sampler):
    generator = load_bundle(bundle_dir)
    draw = lambda **kw: generator.sample_indices(3.0, kw.pop("n", 5), sampler=sampler, **kw)  # noqa: E731
    maps = draw(seed=3, batch_size=5)
    np.testing.assert_array_equal(draw(seed=3, batch_size=2), maps)
    np.testing.assert_array_equal(draw(n=2, seed=3, first_sample=3), maps[3:])
    assert not np.array_equal(draw(seed=4), maps)


def test_the_cached_logits_equal_the_full_network_on_every_prefix(models, bundle_dir):
    import torch

    generator = load_bundle(bundle_dir)
    rng = np.random.default_rng(2)
    maps = rng.integers(0, 16, (5, 4, 4))
    conditions = rng.uniform(2.0, 4.5, (5, 1))
    cached = generator.logits(maps, conditions)
    with torch.no_grad():
        expected = models[1](torch.from_numpy(maps),
                             torch.from_numpy(conditions.astype(np.float32))).numpy()
    np.testing.assert_allclose(cached, expected, atol=1e-4)
    np.testing.assert_allclose(generator.logits(maps, conditions, sampler="naive"), expected,
                               atol=1e-4)  # fmt: skip
    # many seeds and a sharper temperature: the two samplers still agree map for map
    for seed in range(4):
        np.testing.assert_array_equal(
            generator.sample_indices(conditions, 5, seed=seed, temperature=0.7),
            generator.sample_indices(conditions, 5, seed=seed, temperature=0.7, sampler="naive"))


def test_the_cached_sampler_at_the_reference_size_equals_the_full_network():
    torch = pytest.importorskip("torch")
    from microtex import _kernels
    from microtex.generative.export import pixelcnn_tensor_shapes
    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig

    torch.manual_seed(4)
    config = PixelCNNConfig()  # Noguchi & Inoue's: 512 codes, 15 layers, 16 x 16
    model = GatedPixelCNN(config).eval()
    state = model.state_dict()
    sampler = _kernels.PixelCNNSampler(
        [config.n_codes, config.embedding_dim, config.hidden_channels, config.n_layers,
         config.first_kernel_size, config.kernel_size, config.head_channels,
         config.n_conditions, config.latent_size],
        [state[name].numpy() for name in pixelcnn_tensor_shapes(config)])  # fmt: skip
    maps = np.random.default_rng(3).integers(0, 512, (2, 16, 16))
    conditions = np.array([[-1.0], [2.5]], np.float32)
    _, logits = sampler.run(conditions, 0, 0, 1.0, maps, True)
    with torch.no_grad():
        expected = model(torch.from_numpy(maps), torch.from_numpy(conditions)).numpy()
    np.testing.assert_allclose(logits.transpose(0, 3, 1, 2), expected, atol=1e-4)


def test_decode_and_encode_equal_the_pytorch_model(models, bundle_dir):
    import torch

    vqvae = models[0]
    generator = load_bundle(bundle_dir)
    indices = np.random.default_rng(0).integers(0, 16, (3, 4, 4))
    with torch.no_grad():
        expected = vqvae.decode_indices(torch.from_numpy(indices)).numpy()[:, 0]
    images = generator.decode(indices)
    assert images.shape == (3, 32, 32) and images.dtype == np.float32
    np.testing.assert_allclose(images, np.clip((expected + 1) / 2, 0, 1), atol=1e-5)
    with torch.no_grad():
        _, expected_indices, _ = vqvae(torch.from_numpy(images[:, None] * 2 - 1))
    np.testing.assert_array_equal(generator.encode(images), expected_indices.numpy())
    with pytest.raises(ValueError, match=r"indices must be in \[0, 16\), found \[16, 16\]"):
        generator.decode(np.full((1, 4, 4), 16))


def test_bad_conditions_fail_clearly_and_extrapolation_warns(bundle_dir):
    generator = load_bundle(bundle_dir)
    with pytest.raises(ValueError, match="condition 'ln_t' is nan"):
        generator.check_conditions(float("nan"), 2)
    with pytest.raises(ValueError, match=r"has 2 value\(s\); this generator takes 1"):
        generator.check_conditions([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="condition must be numbers"):
        generator.check_conditions("3.0", 2)
    with pytest.warns(UserWarning, match=r"'ln_t' = 9 is outside the training range \[2, 4.5\]"):
        assert generator.check_conditions(9.0, 2).tolist() == [[9.0], [9.0]]
    np.testing.assert_array_equal(generator.check_conditions(3.25, 3), np.full((3, 1), 3.25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the range's own ends, as float32 rounds them, are inside
        generator.check_conditions([[float(np.float32(4.5))], [2.0 - 1e-7]], 2)


def test_a_tampered_bundle_and_mismatched_models_are_refused(models, bundle_dir, tmp_path):
    import shutil

    from microtex.generative.export import save_generator

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / "pixelcnn.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "pixelcnn.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="pixelcnn.onnx"):
        load_bundle(copy)
    vqvae, prior = models
    with pytest.raises(ValueError, match="condition_names must be 1 distinct"):
        save_generator(tmp_path / "g2", vqvae, prior, condition_names=["a", "b"],
                       condition_range=[[0, 1], [0, 1]])  # fmt: skip
    with pytest.raises(ValueError, match="low <= high"):
        save_generator(tmp_path / "g3", vqvae, prior, condition_names=["a"],
                       condition_range=[[1, 0]])  # fmt: skip


def test_the_generate_command_writes_the_samples_it_draws(bundle_dir, tmp_path, capsys):
    from PIL import Image

    from microtex.cli.main import main

    out = tmp_path / "out"
    code = main(["generate", str(bundle_dir), "--condition", "3.5", "-n", "3", "--seed", "5",
                 "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    generator = load_bundle(bundle_dir)
    expected = generator.generate(3.5, 3, seed=5)
    written = np.stack([np.asarray(Image.open(out / f"generated_{i:05d}.png")) for i in range(3)])
    np.testing.assert_array_equal(written, np.round(expected * 255).astype(np.uint8))
    manifest = __import__("json").loads((out / "generated.json").read_text())
    assert manifest["condition"] == {"ln_t": 3.5} and manifest["n"] == 3
    assert manifest["sampler"] == "cached" and manifest["temperature"] == 1.0
    code = main(["generate", str(bundle_dir), "--condition", "3.5", "-n", "3", "--seed", "5",
                 "--temperature", "0", "--sampler", "naive",
                 "-o", str(tmp_path / "greedy")])  # fmt: skip
    assert code == 0
    greedy = np.stack([np.asarray(Image.open(tmp_path / "greedy" / f"generated_{i:05d}.png"))
                       for i in range(3)])  # fmt: skip
    expected = generator.generate(3.5, 3, seed=5, temperature=0)
    np.testing.assert_array_equal(greedy, np.round(expected * 255).astype(np.uint8))
    assert not np.array_equal(greedy, written)  # the temperature is not ignored
    assert __import__("json").loads(
        (tmp_path / "greedy" / "generated.json").read_text())["sampler"] == "naive"
    assert main(["generate", str(bundle_dir), "--condition", "3.5", "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["generate", str(bundle_dir), "--condition", "nan", "-o",
                 str(tmp_path / "o2")]) == 2  # fmt: skip
    assert "'ln_t' is nan" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["generate", str(bundle_dir), "--condition", "1,2", "-o",
                 str(tmp_path / "o3")]) == 2  # fmt: skip
    assert "this generator takes 1" in capsys.readouterr().err


def test_the_native_sampler_refuses_what_it_cannot_read(bundle_dir):
    from microtex import _kernels

    generator = load_bundle(bundle_dir)
    with pytest.raises(ValueError, match="index out of range"):
        generator.logits(np.full((1, 4, 4), 16), 3.0)
    with pytest.raises(ValueError, match="too few PixelCNN tensors"):
        _kernels.PixelCNNSampler([16, 8, 8, 3, 7, 3, 16, 1, 4], [np.zeros(128, np.float32)])
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        generator.sample_indices(3.0, 1, sampler="fast")
