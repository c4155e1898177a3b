"""The VQ-VAE (microtex.generative.vqvae): shapes, nearest codes, losses, straight-through."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from microtex.generative.vqvae import (  # noqa: E402  (after the torch skip)
    LOSS_TERMS,
    VQVAE,
    VQVAEConfig,
    codebook_usage,
    vqvae_loss,
)

pytestmark = pytest.mark.torch

SMALL = VQVAEConfig(image_size=32, hidden_channels=(8, 16), embedding_dim=8, n_codes=16,
                    residual_channels=4)  # fmt: skip


def small_model(seed=0, config=SMALL):
    torch.manual_seed(seed)
    return VQVAE(config)


def images(n, side=32, seed=1):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_reference_configuration_shapes():
    """Noguchi's sizes: 128×128 → 16×16×128, K = 512, decoder back to 128×128 in [-1, 1]."""
    config = VQVAEConfig()
    assert (config.downsampling, config.latent_size) == (8, 16)
    torch.manual_seed(0)
    model = VQVAE().eval()
    assert tuple(model.codebook.shape) == (512, 128)
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(32, 1, 4, 4), (64, 32, 4, 4),
                                                       (128, 64, 4, 4)]  # fmt: skip
    blocks = [m for m in model.encoder if not isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d,
                                                             torch.nn.ReLU))]  # fmt: skip
    assert len(blocks) == 2
    assert [tuple(m.weight.shape) for m in blocks[0].body if isinstance(m, torch.nn.Conv2d)] == [
        (32, 128, 3, 3), (128, 32, 1, 1)]  # fmt: skip
    transposed = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    # ConvTranspose2d weights are (in, out, kh, kw)
    assert [tuple(c.weight.shape) for c in transposed] == [(128, 64, 4, 4), (64, 32, 4, 4),
                                                           (32, 1, 4, 4)]  # fmt: skip
    with torch.no_grad():
        z_e = model.encode(images(1, 128))
        assert tuple(z_e.shape) == (1, 128, 16, 16)
        decoded = model.decode_indices(torch.randint(0, 512, (1, 16, 16)))
    assert tuple(decoded.shape) == (1, 1, 128, 128)
    assert float(decoded.abs().max()) <= 1.0


def test_encoder_is_fully_convolutional():
    model = small_model().eval()
    with torch.no_grad():
        recon, indices, _ = model(images(2).repeat(1, 1, 2, 1))  # 64×32
    assert tuple(indices.shape) == (2, 8, 4) and tuple(recon.shape) == (2, 1, 64, 32)


def test_quantization_picks_the_nearest_codebook_vector():
    model = small_model()
    z_e = torch.randn(3, 8, 4, 5, generator=torch.Generator().manual_seed(3))
    z_q, indices, _ = model.quantize(z_e)
    z = z_e.permute(0, 2, 3, 1).double().numpy()
    codebook = model.codebook.detach().double().numpy()
    distances = ((z[..., None, :] - codebook) ** 2).sum(-1)  # (n, h, w, K), brute force
    np.testing.assert_array_equal(indices.numpy(), distances.argmin(-1))
    assert indices.dtype == torch.int64
    # the straight-through output carries the codebook vectors' values
    expected = torch.from_numpy(codebook[distances.argmin(-1)]).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(z_q, expected, rtol=0, atol=1e-6)


def two_code_model():
    """K = 2, D = 2: codebook e_0 = (0, 0), e_1 = (2, 0)."""
    model = VQVAE(VQVAEConfig(image_size=4, hidden_channels=(), embedding_dim=2, n_codes=2,
                              residual_channels=1))  # fmt: skip
    with torch.no_grad():
        model.codebook.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    return model


def test_codebook_and_commitment_losses_on_a_hand_made_example():
    """z_e at two positions: (0.5, 0) is nearest e_0, (1.5, 1) nearest e_1.

    Squared errors per element: 0.25, 0, 0.25, 1 → both losses 1.5 / 4 = 0.375.
    Gradients of the mean: codebook loss → e_k only, 2 (e_k - z) / 4: e_0 gets
    (-0.25, 0), e_1 (0.25, -0.5); commitment → z_e only, 2 (z - e) / 4.
    """
    model = two_code_model()
    z_e = torch.tensor([[0.5, 1.5], [0.0, 1.0]]).reshape(1, 2, 1, 2).requires_grad_()
    z_q, indices, losses = model.quantize(z_e)
    assert indices.tolist() == [[[0, 1]]]
    torch.testing.assert_close(z_q.detach(), torch.tensor([[0.0, 2.0], [0.0, 0.0]])
                               .reshape(1, 2, 1, 2))  # fmt: skip
    assert losses["codebook"].item() == pytest.approx(0.375)
    assert losses["commitment"].item() == pytest.approx(0.375)

    losses["codebook"].backward(retain_graph=True)
    torch.testing.assert_close(model.codebook.grad, torch.tensor([[-0.25, 0.0], [0.25, -0.5]]))
    assert z_e.grad is None  # the codebook loss stops at sg[z_e]
    model.codebook.grad = None
    losses["commitment"].backward()
    torch.testing.assert_close(z_e.grad, torch.tensor([[0.25, -0.25], [0.0, 0.5]])
                               .reshape(1, 2, 1, 2))  # fmt: skip
    assert model.codebook.grad is None  # the commitment loss stops at sg[e]


def test_a_tie_goes_to_the_lowest_index():
    model = two_code_model()
    _, indices, _ = model.quantize(torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1))
    assert indices.item() == 0


def test_straight_through_gradients_reach_the_encoder():
    model = small_model().train()
    x = images(2)
    recon, _, losses = model(x)
    losses["reconstruction"].backward()
    through_model = [p.grad.clone() for p in model.encoder.parameters()]
    assert all(g.abs().sum() > 0 for g in through_model)  # every encoder weight learns
    assert model.codebook.grad is None  # the decoder's gradient skips the codebook

    # the same graph written out: z_e + (z_q - z_e).detach() into the decoder
    model.zero_grad(set_to_none=True)
    z_e = model.encoder(x)
    z_e.retain_grad()
    z_q = model.lookup(model.nearest(z_e))
    z_st = z_e + (z_q - z_e).detach()
    z_st.retain_grad()
    torch.nn.functional.mse_loss(model.decoder(z_st), x).backward()
    torch.testing.assert_close(z_e.grad, z_st.grad, rtol=0, atol=0)  # copied, unchanged
    for by_hand, through in zip(model.encoder.parameters(), through_model):
        torch.testing.assert_close(by_hand.grad, through, rtol=1e-6, atol=1e-8)


def test_forward_losses_compose_with_beta():
    config = VQVAEConfig(image_size=32, hidden_channels=(8, 16), embedding_dim=8, n_codes=16,
                         residual_channels=4, beta=0.5)  # fmt: skip
    model = small_model(config=config).eval()
    x = images(2)
    with torch.no_grad():
        recon, indices, losses = model(x)
        z_e = model.encode(x)
        z_q = model.lookup(indices)
    assert tuple(losses) == LOSS_TERMS
    assert float(losses["reconstruction"]) == pytest.approx(float(((recon - x) ** 2).mean()))
    assert float(losses["codebook"]) == pytest.approx(float(((z_q - z_e) ** 2).mean()))
    assert float(losses["total"]) == pytest.approx(
        float(losses["reconstruction"] + losses["codebook"] + 0.5 * losses["commitment"])
    )
    assert float(recon.abs().max()) <= 1.0  # tanh output


def test_vqvae_loss_is_the_documented_sum():
    terms = vqvae_loss(
        torch.zeros(2, 1, 2, 2),
        torch.full((2, 1, 2, 2), 3.0),
        {"codebook": torch.tensor(1.5), "commitment": torch.tensor(4.0)},
        0.25,
    )
    assert {k: float(v) for k, v in terms.items()} == {
        "reconstruction": 9.0, "codebook": 1.5, "commitment": 4.0, "total": 11.5}  # fmt: skip


@pytest.mark.parametrize("k", [1, 3, 16])
def test_perplexity_of_a_uniform_histogram_is_the_number_of_codes(k):
    indices = np.tile(np.arange(k) * (16 // k), 5)  # k distinct codes, 5 times each
    usage = codebook_usage(indices.reshape(5, -1), n_codes=16)
    assert usage["perplexity"] == pytest.approx(k)
    assert (usage["used_codes"], usage["dead_codes"]) == (k, 16 - k)


def test_perplexity_of_a_skewed_histogram_and_of_a_tensor():
    usage = codebook_usage(torch.tensor([[2, 2, 2, 7]]), n_codes=8)  # p = (0.75, 0.25)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert usage["perplexity"] == pytest.approx(math.exp(entropy))  # 1.7548
    assert usage["perplexity"] == pytest.approx(1.7548, abs=1e-4)
    assert usage["dead_codes"] == 6


@pytest.mark.parametrize(
    ("indices", "message"),
    [([0, 8], "index 8 is outside the codebook"), ([-1, 0], "index -1"),
     ([], "empty"), ([0.0, 1.0], "integers")],
)  # fmt: skip
def test_codebook_usage_refuses_bad_indices(indices, message):
    with pytest.raises(ValueError, match=message):
        codebook_usage(np.array(indices), n_codes=8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_size": 0}, "image_size must be a positive integer, got 0"),
        ({"image_size": 100}, "image_size 100 is not a multiple of the downsampling factor 8"),
        ({"image_size": 32, "hidden_channels": (8, 8, 8, 8, 8)},
         "image_size 32 is not a multiple of the downsampling factor 64"),
        ({"n_codes": -3}, "n_codes must be a positive integer, got -3"),
        ({"embedding_dim": 0}, "embedding_dim must be a positive integer, got 0"),
        ({"in_channels": 1.5}, "in_channels must be a positive integer, got 1.5"),
        ({"hidden_channels": (32, 0)}, r"hidden_channels must be .* got \(32, 0\)"),
        ({"hidden_channels": 32}, "hidden_channels must be a sequence"),
        ({"kernel_size": 3}, "kernel_size must be even .* got 3"),
        ({"n_residual_blocks": -1}, "n_residual_blocks must be an integer >= 0, got -1"),
        ({"residual_channels": 0}, "residual_channels must be a positive integer, got 0"),
        ({"beta": -0.1}, "beta must be a finite number >= 0, got -0.1"),
        ({"beta": float("nan")}, "beta must be a finite number >= 0, got nan"),
    ],
)  # fmt: skip
def test_bad_configurations_name_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**options)


def test_bad_inputs_name_the_shape():
    model = small_model().eval()
    with pytest.raises(ValueError, match=r"multiples of 8, got 36×32"):
        model.encode(torch.zeros(1, 1, 36, 32))
    with pytest.raises(
        ValueError, match=r"\(batch, 1, height, width\), got shape \(1, 3, 32, 32\)"
    ):
        model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        model.decode_indices(torch.zeros(4, 4, dtype=torch.long))


def test_configuration_round_trips_through_a_dict():
    document = SMALL.to_dict()
    assert document["hidden_channels"] == [8, 16]
    assert VQVAEConfig.from_dict(document) == SMALL
    with pytest.raises(ValueError, match=r"unknown VQ-VAE configuration keys \['codes'\]"):
        VQVAEConfig.from_dict({**document, "codes": 3})
