"""Export of the generative model (microtex.generative.export): ONNX parity, metadata, weights file.

(Named test_generative_export.py: tests/engine/test_export.py holds the basename
test_export.py, and test folders are not packages.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from microtex.bundle import load_npz, save_npz
from microtex.engine.metadata import read_metadata
from microtex.errors import BundleError
from microtex.generative import export

from _helpers import run_python

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vqvae_model():
    """A small VQ-VAE whose batch norms hold non-trivial running statistics."""
    torch = pytest.importorskip("torch")
    from microtex.generative.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_size=32, hidden_channels=(8, 16), embedding_dim=8,
                              n_codes=16, residual_channels=4))  # fmt: skip
    with torch.no_grad():
        for _ in range(3):  # training-mode passes move the running mean and variance
            model(torch.rand(4, 1, 32, 32) * 2 - 1)
    return model.eval()


@pytest.fixture(scope="module")
def pixelcnn_model():
    torch = pytest.importorskip("torch")
    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig

    torch.manual_seed(1)
    config = PixelCNNConfig(n_codes=16, embedding_dim=8, hidden_channels=8, n_layers=3,
                            head_channels=16, n_conditions=2, latent_size=8)  # fmt: skip
    return GatedPixelCNN(config).eval()


@pytest.fixture(scope="module")
def exported(vqvae_model, pixelcnn_model, tmp_path_factory):
    """Paths of the three exported graphs."""
    pytest.importorskip("onnx")
    folder = tmp_path_factory.mktemp("generative")
    return {
        "encoder": export.export_encoder(vqvae_model, folder / "encoder.onnx"),
        "decoder": export.export_decoder(vqvae_model, folder / "decoder.onnx"),
        "pixelcnn": export.export_pixelcnn(pixelcnn_model, folder / "pixelcnn.onnx"),
    }


def session(path):
    from microtex.engine.session import Session

    return Session(path, device="cpu", n_threads=1)


@pytest.mark.torch
@pytest.mark.parametrize("batch", [1, 3])  # traced at batch 2: both sizes need the dynamic axis
def test_encoder_parity(exported, vqvae_model, batch):
    import torch

    images = torch.rand(batch, 1, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    outputs = session(exported["encoder"]).run(images.numpy())
    with torch.no_grad():
        z_e = vqvae_model.encode(images)
        indices = vqvae_model.nearest(z_e)
    assert outputs["z_e"].shape == (batch, 8, 4, 4)
    assert np.abs(outputs["z_e"] - z_e.numpy()).max() < TOLERANCE
    assert outputs["indices"].dtype == np.int64
    np.testing.assert_array_equal(outputs["indices"], indices.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("batch", [1, 3])
def test_decoder_parity(exported, vqvae_model, batch):
    import torch

    indices = torch.randint(0, 16, (batch, 4, 4), generator=torch.Generator().manual_seed(batch))
    image = session(exported["decoder"]).run(indices.numpy())["image"]
    with torch.no_grad():
        expected = vqvae_model.decode_indices(indices).numpy()
    assert image.shape == (batch, 1, 32, 32)
    assert np.abs(image - expected).max() < TOLERANCE
    assert np.abs(expected).max() > 0.01  # not a trivially zero image


@pytest.mark.torch
@pytest.mark.parametrize("batch", [1, 3])
def test_pixelcnn_parity(exported, pixelcnn_model, batch):
    import torch

    generator = torch.Generator().manual_seed(batch)
    indices = torch.randint(0, 16, (batch, 8, 8), generator=generator)
    conditions = torch.randn(batch, 2, generator=generator)
    runner = session(exported["pixelcnn"])
    assert runner.input_names == ("indices", "conditions")
    logits = runner.run({"indices": indices.numpy(), "conditions": conditions.numpy()})["logits"]
    with torch.no_grad():
        expected = pixelcnn_model(indices, conditions).numpy()
    assert logits.shape == (batch, 16, 8, 8)
    assert np.abs(logits - expected).max() < TOLERANCE


@pytest.mark.torch
def test_metadata_documents(exported, vqvae_model, pixelcnn_model):
    encoder, decoder, prior = (read_metadata(exported[name])
                               for name in ("encoder", "decoder", "pixelcnn"))  # fmt: skip
    assert (encoder["kind"], decoder["kind"], prior["kind"]) == (
        "vqvae-encoder", "vqvae-decoder", "pixelcnn")  # fmt: skip
    assert encoder["config"] == decoder["config"] == vqvae_model.config.to_dict()
    assert prior["config"] == pixelcnn_model.config.to_dict()
    assert encoder["weights_sha256"] == export.weights_sha256(vqvae_model)
    assert prior["weights_sha256"] == export.weights_sha256(pixelcnn_model)
    assert encoder["outputs"]["indices"] == {"shape": ["batch", 4, 4], "dtype": "int64"}
    assert prior["inputs"]["conditions"] == {"shape": ["batch", 2], "dtype": "float32"}
    assert encoder["opset"] == 18


@pytest.mark.torch
def test_export_leaves_the_model_as_it_was(pixelcnn_model, tmp_path):
    pytest.importorskip("onnx")
    pixelcnn_model.train()
    try:
        export.export_pixelcnn(pixelcnn_model, tmp_path / "prior.onnx")
        assert pixelcnn_model.training
    finally:
        pixelcnn_model.eval()
    with pytest.raises(TypeError, match="model must be a VQVAE, got GatedPixelCNN"):
        export.export_encoder(pixelcnn_model, tmp_path / "encoder.onnx")


@pytest.mark.torch
def test_weights_file_round_trips(pixelcnn_model, tmp_path):
    import torch

    path = export.save_pixelcnn_weights(pixelcnn_model, tmp_path / "prior.npz")
    config, weights = export.load_pixelcnn_weights(path)
    assert config == pixelcnn_model.config.to_dict()
    state = pixelcnn_model.state_dict()
    assert list(weights) == list(export.pixelcnn_tensor_shapes(config))
    assert set(weights) == set(state)
    for name, array in weights.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, state[name].numpy(), err_msg=name)
    loaded = export.load_pixelcnn(path)
    indices = torch.randint(0, 16, (2, 8, 8))
    conditions = torch.randn(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(indices, conditions),
                                   pixelcnn_model(indices, conditions), rtol=0, atol=0)  # fmt: skip
    document = json.loads(load_npz(path)["microtex"].tobytes())
    assert (document["kind"], document["format_version"]) == ("pixelcnn-weights", 1)


@pytest.mark.torch
def test_tensor_shapes_match_the_reference_module():
    import torch

    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig

    torch.manual_seed(0)
    state = GatedPixelCNN().state_dict()
    shapes = export.pixelcnn_tensor_shapes(PixelCNNConfig())
    assert shapes == {name: tuple(tensor.shape) for name, tensor in state.items()}


def test_tensor_shapes_without_torch():
    config = {"n_codes": 16, "embedding_dim": 8, "hidden_channels": 4, "n_layers": 2,
              "first_kernel_size": 5, "kernel_size": 3, "head_channels": 6, "n_conditions": 3,
              "latent_size": 8}  # fmt: skip
    shapes = export.pixelcnn_tensor_shapes(config)
    assert shapes["embedding.weight"] == (16, 8)
    assert shapes["layers.0.vertical.weight"] == (8, 8, 3, 5)
    assert shapes["layers.0.horizontal.weight"] == (8, 8, 1, 2)
    assert shapes["layers.1.horizontal.weight"] == (8, 4, 1, 2)
    assert shapes["layers.0.vertical_condition.weight"] == (8, 3)
    assert "layers.1.vertical_condition.weight" not in shapes  # the last layer has no gate there
    assert shapes["head_output.weight"] == (16, 6, 1, 1)
    assert len(shapes) == 1 + 12 + 10 + 4


@pytest.mark.torch
def test_damaged_weights_files_are_refused(pixelcnn_model, tmp_path):
    path = export.save_pixelcnn_weights(pixelcnn_model, tmp_path / "prior.npz")
    arrays = load_npz(path)

    def write(name, changed):
        return save_npz(tmp_path / name, changed)

    missing = {k: v for k, v in arrays.items() if k != "head_output.bias"}
    with pytest.raises(BundleError, match=r"missing \['head_output.bias'\]"):
        export.load_pixelcnn_weights(write("missing.npz", missing))
    misshapen = {**arrays, "embedding.weight": arrays["embedding.weight"][:3]}
    with pytest.raises(BundleError, match=r"'embedding.weight' is float32 \(3, 8\)"):
        export.load_pixelcnn_weights(write("misshapen.npz", misshapen))
    document = json.loads(arrays["microtex"].tobytes())
    other = json.dumps({**document, "kind": "vlad"}).encode()
    with pytest.raises(BundleError, match="holds 'vlad', not 'pixelcnn-weights'"):
        export.load_pixelcnn_weights(write("kind.npz", {**arrays, "microtex": np.frombuffer(
            other, dtype=np.uint8)}))  # fmt: skip
    no_document = {k: v for k, v in arrays.items() if k != "microtex"}
    with pytest.raises(BundleError, match="not a PixelCNN weights file"):
        export.load_pixelcnn_weights(write("plain.npz", no_document))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="cannot read"):
        export.load_pixelcnn_weights(tmp_path / "junk.npz")


def test_importing_the_package_and_its_export_module_loads_no_torch():
    code = (
        "import sys\n"
        "import microtex.generative, microtex.generative.export as e\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx imported'\n"
        "print(len(e.pixelcnn_tensor_shapes({'n_codes': 512, 'embedding_dim': 64,\n"
        "    'hidden_channels': 64, 'n_layers': 15, 'first_kernel_size': 7, 'kernel_size': 3,\n"
        "    'head_channels': 256, 'n_conditions': 1, 'latent_size': 16})))\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "183"
