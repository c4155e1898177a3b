"""Training the generative model (microtex.generative.train): losses, usage, checkpoints, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from microtex.errors import BundleError, DeviceError  # noqa: E402  (after the torch skip)
from microtex.generative.data import load_patch_set  # noqa: E402
from microtex.generative.pixelcnn import PixelCNNConfig  # noqa: E402
from microtex.generative.train import (  # noqa: E402
    batch_indices,
    encode_patches,
    latest_checkpoint,
    load_checkpoint,
    resolve_device,
    restart_dead_codes,
    train_prior,
    train_vqvae,
)
from microtex.generative.vqvae import LOSS_TERMS, VQVAE, VQVAEConfig  # noqa: E402
from microtex.synth import perlin_texture  # noqa: E402

pytestmark = pytest.mark.torch

SMALL = VQVAEConfig(image_size=32, hidden_channels=(8, 16), embedding_dim=8, n_codes=16,
                    residual_channels=4)  # fmt: skip
PRIOR = PixelCNNConfig(n_codes=16, embedding_dim=8, hidden_channels=8, n_layers=2,
                       head_channels=16, latent_size=4)  # fmt: skip
FAST = {"batch_size": 8, "lr": 3e-3, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def conditions_csv(tmp_path_factory):
    """Six 64×64 Perlin textures, two each of k = 3, 6, 4, and their conditions (ln k)."""
    folder = tmp_path_factory.mktemp("perlin")
    rows = ["path,ln_k"]
    for i, k in enumerate([3, 3, 6, 6, 4, 4]):
        image = perlin_texture(64, k=k, theta=0.0, amplitude=1.0, seed=i)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"k{i}.png")
        rows.append(f"k{i}.png,{math.log(k):.6f}")
    (folder / "conditions.csv").write_text("\n".join(rows) + "\n")
    return folder / "conditions.csv"


@pytest.fixture(scope="module")
def patch_set(conditions_csv):
    """32×32 patches every 16 pixels with mirrors: 108 patches; images 1 and 3 held out."""
    return load_patch_set(conditions_csv, "ln_k", patch_size=32, stride=16).split([1, 3])


@pytest.fixture(scope="module")
def trained(patch_set):
    """Eight epochs of the small VQ-VAE (with dead-code restarts)."""
    return train_vqvae(patch_set, SMALL, epochs=8, seed=0, **FAST)


def same_weights(first, second, atol=1e-6):
    a, b = first.state_dict(), second.state_dict()
    assert sorted(a) == sorted(b)
    return all(torch.allclose(a[k].cpu().double(), b[k].cpu().double(), rtol=0, atol=atol)
               for k in a)  # fmt: skip


def without_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_the_vqvae_losses_fall_and_every_epoch_is_recorded(trained):
    history = trained.history
    assert [r["epoch"] for r in history] == list(range(1, 9))
    first, last = history[0], history[-1]
    assert sorted(first["train"]) == sorted(LOSS_TERMS) == sorted(first["validation"])
    assert last["train"]["reconstruction"] < 0.6 * first["train"]["reconstruction"]
    assert last["train"]["total"] < 0.7 * first["train"]["total"]
    assert last["validation"]["reconstruction"] < first["validation"]["reconstruction"]
    for record in history:
        total = record["train"]
        assert total["total"] == pytest.approx(
            total["reconstruction"] + total["codebook"] + SMALL.beta * total["commitment"])
        assert record["seconds"] > 0
    assert not trained.model.training and trained.checkpoint is None


def test_codebook_usage_is_recorded_each_epoch(trained, patch_set):
    for record in trained.history:
        for key in ("codebook", "validation_codebook"):
            usage = record[key]
            assert usage["used_codes"] + usage["dead_codes"] == SMALL.n_codes
            assert 1.0 <= usage["perplexity"] <= usage["used_codes"] + 1e-9
        assert 0 <= record["restarted_codes"] <= SMALL.n_codes
    # the record is the usage of the model's indices: recompute the validation side's
    maps = encode_patches(trained.model, patch_set.patches[patch_set.validation_indices],
                          device="cpu")  # fmt: skip
    used = len(np.unique(maps))
    assert trained.history[-1]["validation_codebook"]["used_codes"] == used


def test_training_is_reproducible_by_seed(patch_set, trained):
    again = train_vqvae(patch_set, SMALL, epochs=8, seed=0, **FAST)
    assert same_weights(again.model, trained.model, atol=0)
    assert without_seconds(again.history) == without_seconds(trained.history)
    other = train_vqvae(patch_set, SMALL, epochs=1, seed=1, **FAST)
    assert other.history[0]["train"] != trained.history[0]["train"]


def test_resume_equals_an_uninterrupted_run(patch_set, tmp_path):
    whole = train_vqvae(patch_set, SMALL, epochs=2, seed=4, checkpoint_dir=tmp_path / "whole",
                        **FAST)  # fmt: skip
    first = train_vqvae(patch_set, SMALL, epochs=1, seed=4, checkpoint_dir=tmp_path / "parts",
                        **FAST)  # fmt: skip
    assert not same_weights(first.model, whole.model)
    resumed = train_vqvae(patch_set, SMALL, epochs=2, seed=4, checkpoint_dir=tmp_path / "parts",
                          resume=True, **FAST)  # fmt: skip
    assert same_weights(resumed.model, whole.model, atol=1e-6)
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert resumed.checkpoint.name == "epoch-0002"
    # nothing left to do: the checkpoint's model and history come back unchanged
    done = train_vqvae(patch_set, SMALL, epochs=2, seed=4, checkpoint_dir=tmp_path / "parts",
                       resume=True, **FAST)  # fmt: skip
    assert same_weights(done.model, whole.model, atol=0) and len(done.history) == 2
    with pytest.raises(ValueError, match="is at epoch 2, beyond epochs=1"):
        train_vqvae(patch_set, SMALL, epochs=1, seed=4, checkpoint_dir=tmp_path / "parts",
                    resume=True, **FAST)  # fmt: skip


def test_the_prior_learns_and_resumes_exactly(patch_set, trained, tmp_path):
    whole = train_prior(patch_set, trained.model, PRIOR, epochs=6, seed=2,
                        checkpoint_dir=tmp_path / "whole", **FAST)  # fmt: skip
    nll = [record["train"]["nll"] for record in whole.history]
    assert nll[0] < math.log(SMALL.n_codes) + 0.3  # starts near a uniform guess over K codes
    assert nll[-1] < 0.8 * nll[0]
    assert whole.history[-1]["validation"]["nll"] < whole.history[0]["validation"]["nll"]
    train_prior(patch_set, trained.model, PRIOR, epochs=4, seed=2,
                checkpoint_dir=tmp_path / "parts", **FAST)  # fmt: skip
    resumed = train_prior(patch_set, trained.model, PRIOR, epochs=6, seed=2,
                          checkpoint_dir=tmp_path / "parts", resume=True, **FAST)  # fmt: skip
    assert same_weights(resumed.model, whole.model, atol=1e-6)
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert not trained.model.training  # the VQ-VAE was used, not changed


def test_checkpoints_are_complete_and_readable(patch_set, tmp_path):
    result = train_vqvae(patch_set, SMALL, epochs=3, seed=0, checkpoint_dir=tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003", "history.json"]
    folder = latest_checkpoint(tmp_path)
    assert folder == result.checkpoint == tmp_path / "epoch-0003"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "model.npz",
                                                        "optimizer.pt"]  # fmt: skip
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.kind == "vqvae-checkpoint" and checkpoint.epoch == 3
    assert isinstance(checkpoint.model, VQVAE) and checkpoint.model.config == SMALL
    assert same_weights(checkpoint.model, result.model, atol=0)
    assert checkpoint.document["settings"] == {"batch_size": 8, "lr": 3e-3, "seed": 0,
                                               "restart_dead": True}  # fmt: skip
    assert without_seconds(checkpoint.history) == without_seconds(result.history)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    with np.load(folder / "model.npz", allow_pickle=False) as weights:  # no pickle needed
        assert "codebook" in weights.files and weights["codebook"].shape == (16, 8)
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    assert int(state["state"][0]["step"]) == 3 * math.ceil(len(patch_set.train_indices) / 8)


def test_a_checkpoint_that_does_not_match_is_refused(patch_set, tmp_path):
    train_vqvae(patch_set, SMALL, epochs=1, seed=0, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train_vqvae(patch_set, SMALL, epochs=2, seed=0, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="its settings is .*'lr': 0.003"):
        train_vqvae(patch_set, SMALL, epochs=2, seed=0, checkpoint_dir=tmp_path, resume=True,
                    **{**FAST, "lr": 1e-3})  # fmt: skip
    with pytest.raises(ValueError, match="its config is"):
        train_vqvae(patch_set, VQVAEConfig(**{**SMALL.to_dict(), "n_codes": 8}), epochs=2,
                    checkpoint_dir=tmp_path, resume=True, **FAST)  # fmt: skip
    other_split = patch_set.split([0, 2])
    with pytest.raises(ValueError, match="its data_sha256 is"):
        train_vqvae(other_split, SMALL, epochs=2, checkpoint_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(BundleError, match="is a vqvae-checkpoint, not a pixelcnn-checkpoint"):
        train_prior(patch_set, VQVAE(SMALL), PRIOR, epochs=2, checkpoint_dir=tmp_path,
                    resume=True, **FAST)  # fmt: skip
    (tmp_path / "epoch-0001" / "model.npz").write_bytes(b"damaged")
    with pytest.raises(BundleError, match="cannot read fitted state"):
        load_checkpoint(tmp_path)
    with pytest.raises(BundleError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "nowhere")


def test_bad_inputs_are_refused(patch_set, conditions_csv):
    unsplit = load_patch_set(conditions_csv, "ln_k", patch_size=32, stride=16)
    with pytest.raises(ValueError, match="no validation source images: split it first"):
        train_vqvae(unsplit, SMALL, epochs=1, **FAST)
    with pytest.raises(ValueError, match="the patches are 1×32×32; the configuration wants 1×64"):
        train_vqvae(patch_set, VQVAEConfig(**{**SMALL.to_dict(), "image_size": 64}), epochs=1,
                    **FAST)  # fmt: skip
    with pytest.raises(ValueError, match="the prior's n_codes is 32, but the VQ-VAE"):
        train_prior(patch_set, VQVAE(SMALL), PixelCNNConfig(**{**PRIOR.to_dict(), "n_codes": 32}),
                    epochs=1, **FAST)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        train_vqvae(patch_set, SMALL, epochs=1, **{**FAST, "batch_size": 0})
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train_vqvae(patch_set, SMALL, epochs=1, **{**FAST, "lr": float("nan")})
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        train_vqvae(patch_set, SMALL, epochs=1, **{**FAST, "device": "tpu"})
    with pytest.raises(TypeError, match="patch_set must be a PatchSet"):
        train_vqvae(patch_set.patches, SMALL, epochs=1, **FAST)


def test_encode_patches_gives_the_nearest_codes_in_eval_mode(trained, patch_set):
    model = trained.model.train()  # the caller's mode is left as it is
    maps = encode_patches(model, patch_set.patches[:5], device="cpu", batch_size=2)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model.nearest(model.encode(torch.from_numpy(patch_set.patches[:5])))
    assert maps.dtype == np.int64 and maps.shape == (5, 4, 4)
    np.testing.assert_array_equal(maps, expected.numpy())


def test_dead_codes_move_to_encoder_outputs_and_lose_their_momentum(patch_set):
    torch.manual_seed(0)
    model = VQVAE(SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    patches = torch.from_numpy(patch_set.patches[:12])
    _, _, losses = model(patches)
    losses["total"].backward()
    optimizer.step()  # Adam now holds moments for every codebook row
    before = model.codebook.detach().clone()
    moved = restart_dead_codes(model, optimizer, patches, np.array([[0, 3], [3, 5]]),
                               np.random.default_rng(0), sample_size=4)  # fmt: skip
    assert moved == 13 and model.training
    dead = [k for k in range(16) if k not in (0, 3, 5)]
    kept = [0, 3, 5]
    assert torch.equal(model.codebook[kept], before[kept])
    model.eval()
    with torch.no_grad():  # every moved code is one of the encoder's output vectors
        z_e = model.encode(patches).permute(0, 2, 3, 1).reshape(-1, 8)
    squared = ((model.codebook[dead].detach()[:, None] - z_e[None]) ** 2).sum(-1)
    assert float(squared.min(dim=1).values.max()) < 1e-10
    state = optimizer.state[model.codebook]
    assert float(state["exp_avg"][dead].abs().max()) == 0.0
    assert float(state["exp_avg_sq"][dead].abs().max()) == 0.0
    assert float(state["exp_avg_sq"][kept].abs().min()) > 0.0
    assert restart_dead_codes(model, optimizer, patches, np.arange(16),
                              np.random.default_rng(0)) == 0  # fmt: skip


def test_batches_cover_every_item_and_depend_on_seed_and_epoch_only():
    order = np.concatenate(batch_indices(10, 3, seed=7, epoch=2))
    assert sorted(order.tolist()) == list(range(10))
    assert [len(b) for b in batch_indices(10, 3, seed=7, epoch=2)] == [3, 3, 3, 1]
    np.testing.assert_array_equal(order, np.concatenate(batch_indices(10, 3, seed=7, epoch=2)))
    assert not np.array_equal(order, np.concatenate(batch_indices(10, 3, seed=7, epoch=3)))
    assert np.concatenate(batch_indices(10, 4)).tolist() == list(range(10))


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_training_on_cuda_matches_the_cpu_closely(patch_set):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    on_gpu = train_vqvae(patch_set, SMALL, epochs=2, seed=0, **{**FAST, "device": "cuda"})
    on_cpu = train_vqvae(patch_set, SMALL, epochs=2, seed=0, **FAST)
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    assert on_gpu.history[-1]["train"]["reconstruction"] == pytest.approx(
        on_cpu.history[-1]["train"]["reconstruction"], rel=0.05)
