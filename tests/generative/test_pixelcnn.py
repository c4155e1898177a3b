"""The gated PixelCNN (microtex.generative.pixelcnn): causality, no blind spot, condition, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from microtex.generative.pixelcnn import (  # noqa: E402  (after the torch skip)
    GatedPixelCNN,
    PixelCNNConfig,
    prior_loss,
)

pytestmark = pytest.mark.torch

SIDE = 8
SMALL = PixelCNNConfig(n_codes=16, embedding_dim=8, hidden_channels=8, n_layers=3,
                       head_channels=16, n_conditions=2, latent_size=SIDE)  # fmt: skip


def small_model(seed=0, config=SMALL):
    """A float64 model (exact zeros and tiny differences stay meaningful), biases non-zero."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.3)
    return model


def dependence(model, position, side=SIDE, seed=0):
    """(side, side) bool: which positions of the embedded input the logits at ``position`` read.

    A random projection of the K logits, so no sum can cancel by accident.
    """
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    dtype = model.embedding.weight.dtype
    embedded = torch.randn(1, config.embedding_dim, side, side, generator=generator, dtype=dtype,
                           requires_grad=True)  # fmt: skip
    conditions = torch.randn(1, config.n_conditions, generator=generator, dtype=dtype)
    logits = model.logits_from_embedding(embedded, conditions)
    weights = torch.randn(config.n_codes, generator=generator, dtype=dtype)
    (gradient,) = torch.autograd.grad((logits[0, :, position[0], position[1]] * weights).sum(),
                                      embedded)  # fmt: skip
    return (gradient[0].abs().sum(0) != 0).numpy()


def raster_before(position, side=SIDE):
    """(side, side) bool: the positions strictly before ``position`` in raster order."""
    order = np.arange(side * side).reshape(side, side)
    return order < position[0] * side + position[1]


def test_no_position_reads_itself_or_the_future():
    """d logits[p] / d input[q] == 0 exactly for every q >= p, at every p of an 8×8 map."""
    model = small_model()
    for i in range(SIDE):
        for j in range(SIDE):
            reads = dependence(model, (i, j))
            leaks = reads & ~raster_before((i, j))
            assert not leaks.any(), f"logits at {(i, j)} read {np.argwhere(leaks).tolist()}"


def test_no_blind_spot_near_a_position():
    """Each position reads its left neighbour and the three above it, above-right included.

    The original PixelCNN's masked 3×3 stack misses the above-right region (the
    blind spot); the vertical stack's full-width rows must not.
    """
    model = small_model()
    for i in range(SIDE):
        for j in range(SIDE):
            reads = dependence(model, (i, j))
            wanted = [(i, j - 1)] + [(i - 1, j + d) for d in (-1, 0, 1)]
            for a, b in wanted:
                if 0 <= a < SIDE and 0 <= b < SIDE:
                    assert reads[a, b], f"logits at {(i, j)} do not read {(a, b)}"
    # three layers reach 3 + 1 + 1 = 5 columns right of the row above
    assert dependence(model, (4, 2))[3, 7] and not dependence(model, (4, 1))[3, 7]


def test_the_reference_network_reads_every_earlier_position():
    """15 layers (7×7 then 3×3) cover a whole 16×16 map: logits at p read exactly q < p."""
    torch.manual_seed(0)
    model = GatedPixelCNN().eval()
    for position in [(15, 15), (8, 0), (0, 15)]:
        reads = dependence(model, position, side=16)
        np.testing.assert_array_equal(reads, raster_before(position, side=16), err_msg=position)


def test_perturbing_later_indices_never_changes_earlier_logits():
    """For every p: new indices at all q >= p leave logits at q <= p as they were."""
    model = small_model()
    generator = torch.Generator().manual_seed(5)
    indices = torch.randint(0, 16, (1, SIDE, SIDE), generator=generator)
    conditions = torch.randn(1, 2, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        reference = model(indices, conditions)[0]
        for p in range(SIDE * SIDE):
            changed = indices.clone().view(-1)
            changed[p:] = (changed[p:] + 1 + torch.randint(0, 15, (SIDE * SIDE - p,),
                                                           generator=generator)) % 16  # fmt: skip
            logits = model(changed.view(1, SIDE, SIDE), conditions)[0]
            unchanged = torch.from_numpy(raster_before(divmod(p, SIDE)))
            unchanged.view(-1)[p] = True  # p itself: its logits depend on q < p only
            torch.testing.assert_close(logits[:, unchanged], reference[:, unchanged],
                                       rtol=0, atol=1e-12)  # fmt: skip
            if p % SIDE < SIDE - 1:  # the next position in the row does see the change at p
                assert (logits.reshape(16, -1)[:, p + 1] - reference.reshape(16, -1)[:, p + 1]
                        ).abs().max() > 1e-6  # fmt: skip


def test_the_condition_changes_the_logits_and_nothing_else_does():
    model = small_model()
    indices = torch.randint(0, 16, (1, SIDE, SIDE), generator=torch.Generator().manual_seed(2))
    low = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    high = torch.tensor([[2.5, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        first, again = model(indices, low), model(indices, low)
        other = model(indices, high)
        both = model(indices.repeat(2, 1, 1), torch.cat([low, high]))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    # every position moves, the first one included (it reads only the condition)
    assert (other - first).abs().amax(dim=1).min() > 1e-4
    torch.testing.assert_close(both[:1], first, rtol=0, atol=1e-12)
    torch.testing.assert_close(both[1:], other, rtol=0, atol=1e-12)


def test_the_condition_enters_every_gate_and_no_weight_is_dead():
    """Every parameter, each layer's condition maps included, gets a gradient from the loss."""
    model = small_model()
    generator = torch.Generator().manual_seed(3)
    indices = torch.randint(0, 16, (2, SIDE, SIDE), generator=generator)
    conditions = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    prior_loss(model(indices, conditions), indices).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    names = {name for name, _ in model.named_parameters()}
    for layer in range(3):
        assert f"layers.{layer}.horizontal_condition.weight" in names
        # the last layer's vertical stack only feeds its link: no gate there
        assert (f"layers.{layer}.vertical_condition.weight" in names) == (layer < 2)


def test_reference_sizes():
    torch.manual_seed(0)
    model = GatedPixelCNN().eval()
    assert len(model.layers) == 15
    assert tuple(model.embedding.weight.shape) == (512, 64)
    first, second = model.layers[0], model.layers[1]
    assert tuple(first.vertical.weight.shape) == (128, 64, 4, 7)  # rows i-3..i, mask A 7×7
    assert tuple(first.horizontal.weight.shape) == (128, 64, 1, 3)  # columns j-3..j-1
    assert tuple(second.vertical.weight.shape) == (128, 64, 2, 3)
    assert tuple(second.horizontal.weight.shape) == (128, 64, 1, 2)  # columns j-1..j
    assert tuple(first.vertical_condition.weight.shape) == (128, 1)
    assert tuple(model.head_output.weight.shape) == (512, 256, 1, 1)
    with torch.no_grad():
        logits = model(torch.randint(0, 512, (2, 16, 16)), torch.tensor([[3.0], [4.0]]))
    assert tuple(logits.shape) == (2, 512, 16, 16) and logits.dtype == torch.float32


def test_prior_loss_is_the_mean_negative_log_likelihood():
    logits = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    indices = torch.randint(0, 5, (2, 3, 3), generator=torch.Generator().manual_seed(1))
    log_p = torch.log_softmax(logits, dim=1).gather(1, indices[:, None])
    assert float(prior_loss(logits, indices)) == pytest.approx(float(-log_p.mean()), rel=1e-6)
    assert float(prior_loss(torch.zeros(1, 5, 2, 2), indices[:1, :2, :2])) == pytest.approx(
        math.log(5)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_codes": 0}, "n_codes must be a positive integer, got 0"),
        ({"embedding_dim": -1}, "embedding_dim must be a positive integer, got -1"),
        ({"hidden_channels": 0}, "hidden_channels must be a positive integer, got 0"),
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"head_channels": 2.0}, "head_channels must be a positive integer, got 2.0"),
        ({"n_conditions": 0}, "n_conditions must be a positive integer, got 0"),
        ({"latent_size": 0}, "latent_size must be a positive integer, got 0"),
        ({"first_kernel_size": 6}, "first_kernel_size must be odd .* got 6"),
        ({"kernel_size": 4}, "kernel_size must be odd .* got 4"),
        ({"first_kernel_size": 1}, "first_kernel_size must be >= 3 .* got 1"),
    ],
)  # fmt: skip
def test_bad_configurations_name_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        PixelCNNConfig(**options)


def test_bad_inputs_name_the_shape():
    model = small_model()
    indices = torch.zeros(2, SIDE, SIDE, dtype=torch.long)
    conditions = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(batch, height, width\), got shape \(8, 8\)"):
        model(indices[0], conditions)
    with pytest.raises(ValueError, match=r"conditions must be \(batch, 2\), got shape \(2, 3\)"):
        model(indices, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 condition rows for a batch of 2 index maps"):
        model(indices, torch.zeros(3, 2, dtype=torch.float64))


def test_one_layer_and_a_kernel_of_one_are_causal():
    """Edge sizes: a single (first and last) layer, 1×1 mask-B kernels after it."""
    for config in (
        PixelCNNConfig(n_codes=4, embedding_dim=3, hidden_channels=2, n_layers=1,
                       first_kernel_size=3, head_channels=4, latent_size=5),
        PixelCNNConfig(n_codes=4, embedding_dim=3, hidden_channels=2, n_layers=3,
                       first_kernel_size=3, kernel_size=1, head_channels=4, latent_size=5),
    ):  # fmt: skip
        model = small_model(config=config)
        for i in range(5):
            for j in range(5):
                reads = dependence(model, (i, j), side=5)
                assert not (reads & ~raster_before((i, j), side=5)).any(), (config, i, j)
                if j > 0:
                    assert reads[i, j - 1]
                if i > 0 and j < 4:
                    assert reads[i - 1, j + 1]
