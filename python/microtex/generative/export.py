"""The generative model's exported pieces: encoder, decoder and PixelCNN graphs, PixelCNN weights.

Every graph goes through :func:`microtex.engine.export.export_model` with a
dynamic batch axis and a microtex metadata document
(:func:`microtex.engine.metadata.build_document`) holding the configuration,
the input and output names and a SHA-256 of the weights:

* ``"vqvae-encoder"`` (:func:`export_encoder`): ``image`` → ``z_e``
  (n, D, h, w) and ``indices`` (n, h, w);
* ``"vqvae-decoder"`` (:func:`export_decoder`): ``indices`` → ``image``;
* ``"pixelcnn"`` (:func:`export_pixelcnn`): ``indices``, ``conditions`` →
  ``logits`` (n, K, h, w).

``image`` is float32 ``(n, in_channels, image_size, image_size)`` in [-1, 1];
``indices`` int64 ``(n, latent_size, latent_size)``; ``conditions`` float32
``(n, n_conditions)``.

The PixelCNN weights file (:func:`save_pixelcnn_weights`) is an ``.npz`` (no
pickle) for a sampler outside PyTorch: every parameter as a float32 array
named as in the module's state dict, in PyTorch's layouts (convolutions
``(out, in, kernel_height, kernel_width)``, cross-correlation, with the
offsets :mod:`microtex.generative.pixelcnn` documents; linear layers
``(out, in)``), listed with their shapes by :func:`pixelcnn_tensor_shapes`,
plus a ``"microtex"`` entry: the UTF-8 bytes (uint8) of a JSON document of
kind ``"pixelcnn-weights"`` with the configuration and the format version.

:func:`save_generator` writes all of it as one ``generator`` bundle
(:mod:`microtex.bundle`: checksummed files and a manifest), which
:class:`microtex.generative.sample.Generator` loads without PyTorch.

``import microtex.generative.export`` does not import PyTorch: the functions
that need it import it; :func:`load_pixelcnn_weights` and
:func:`pixelcnn_tensor_shapes` need NumPy only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
from typing import Any

import numpy as np

from microtex import bundle
from microtex.engine import export as _export
from microtex.engine import metadata as _metadata
from microtex.engine.export import require_onnx, require_torch
from microtex.errors import BundleError

__all__ = [
    "BUNDLE_KIND",
    "DECODER_KIND",
    "ENCODER_KIND",
    "PIXELCNN_KIND",
    "WEIGHTS_FORMAT_VERSION",
    "WEIGHTS_KIND",
    "export_decoder",
    "export_encoder",
    "export_pixelcnn",
    "load_pixelcnn",
    "load_pixelcnn_weights",
    "pixelcnn_tensor_shapes",
    "save_generator",
    "save_pixelcnn_weights",
    "weights_sha256",
]

#: The bundle kind of a trained generator (:func:`save_generator`).
BUNDLE_KIND = "generator"
ENCODER_KIND = "vqvae-encoder"
DECODER_KIND = "vqvae-decoder"
PIXELCNN_KIND = "pixelcnn"
#: ``kind`` of the document inside a PixelCNN weights file.
WEIGHTS_KIND = "pixelcnn-weights"
WEIGHTS_FORMAT_VERSION = 1

_BATCH = "batch"


def _example_batch(*sizes: int) -> int:
    """A batch size for tracing that no other input axis has, so none is specialized."""
    batch = 2
    while batch in sizes:
        batch += 1
    return batch


def weights_sha256(module) -> str:
    """SHA-256 over a module's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        array = state[name].detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _frozen_copy(model, expected_type: type, what: str):
    """An eval-mode copy of ``model`` (so the caller's training state is untouched)."""
    if not isinstance(model, expected_type):
        raise TypeError(f"{what} must be a {expected_type.__name__}, got {type(model).__name__}")
    return copy.deepcopy(model).cpu().eval()


def _export_graph(module, example_inputs, names, document, path, opset, exporter):
    """Export ``module`` with ``names = (input names, output names)``, batch axes dynamic."""
    input_names, output_names = names
    axes = {name: {0: _BATCH} for name in (*input_names, *output_names)}
    onnx_model = _export.export_model(
        module, example_inputs, input_names=input_names, output_names=output_names,
        dynamic_axes=axes, opset=opset, exporter=exporter, metadata=document,
    )  # fmt: skip
    return _export.save_model(onnx_model, path)


def _document(kind: str, model, config, inputs: dict, outputs: dict, opset: int) -> dict:
    return _metadata.build_document(kind, {
        "config": config.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "opset": opset,
        "weights_sha256": weights_sha256(model),
    })  # fmt: skip


def export_encoder(model, path: str | os.PathLike, *, opset: int | None = None,
                   exporter: str = "torchscript") -> pathlib.Path:  # fmt: skip
    """Export a VQ-VAE's encoder and quantizer to ONNX: ``image → (z_e, indices)``.

    Parameters
    ----------
    model : microtex.generative.vqvae.VQVAE
        Exported in eval mode (a copy; ``model`` itself is not changed).
    path : path-like
        Destination ``.onnx`` file, written atomically (parents created).
    opset : int, optional
        Default :data:`microtex.engine.export.DEFAULT_OPSET`.
    exporter : {"torchscript", "dynamo"}

    Returns
    -------
    pathlib.Path
        ``path``. Metadata kind ``"vqvae-encoder"``.
    """
    torch = require_torch("exporting the VQ-VAE encoder")
    require_onnx("exporting the VQ-VAE encoder")
    from microtex.generative.vqvae import VQVAE, IndexEncoder

    opset = _export.check_export_options(opset, exporter)
    model = _frozen_copy(model, VQVAE, "model")
    config = model.config
    side, channels = config.image_size, config.in_channels
    batch = _example_batch(channels, side)
    image = torch.rand(batch, channels, side, side) * 2.0 - 1.0
    latent = config.latent_size
    document = _document(
        ENCODER_KIND, model, config,
        {"image": {"shape": [_BATCH, channels, side, side], "dtype": "float32", "range": [-1, 1]}},
        {"z_e": {"shape": [_BATCH, config.embedding_dim, latent, latent], "dtype": "float32"},
         "indices": {"shape": [_BATCH, latent, latent], "dtype": "int64"}},
        opset,
    )  # fmt: skip
    names = (["image"], ["z_e", "indices"])
    return _export_graph(IndexEncoder(model), (image,), names, document, path, opset, exporter)


def export_decoder(model, path: str | os.PathLike, *, opset: int | None = None,
                   exporter: str = "torchscript") -> pathlib.Path:  # fmt: skip
    """Export a VQ-VAE's decoder to ONNX: ``indices → image`` in [-1, 1].

    Parameters and return value as :func:`export_encoder`; metadata kind
    ``"vqvae-decoder"``.
    """
    torch = require_torch("exporting the VQ-VAE decoder")
    require_onnx("exporting the VQ-VAE decoder")
    from microtex.generative.vqvae import VQVAE, IndexDecoder

    opset = _export.check_export_options(opset, exporter)
    model = _frozen_copy(model, VQVAE, "model")
    config = model.config
    latent, side = config.latent_size, config.image_size
    batch = _example_batch(latent)
    indices = torch.randint(0, config.n_codes, (batch, latent, latent))
    document = _document(
        DECODER_KIND, model, config,
        {"indices": {"shape": [_BATCH, latent, latent], "dtype": "int64"}},
        {"image": {"shape": [_BATCH, config.in_channels, side, side], "dtype": "float32",
                   "range": [-1, 1]}},
        opset,
    )  # fmt: skip
    names = (["indices"], ["image"])
    return _export_graph(IndexDecoder(model), (indices,), names, document, path, opset, exporter)


def export_pixelcnn(model, path: str | os.PathLike, *, opset: int | None = None,
                    exporter: str = "torchscript") -> pathlib.Path:  # fmt: skip
    """Export a gated PixelCNN to ONNX: ``(indices, conditions) → logits``.

    One full forward pass: the logits of every position of the given map (the
    naive sampler runs it once per position). Parameters and return value as
    :func:`export_encoder`; metadata kind ``"pixelcnn"``.
    """
    torch = require_torch("exporting the PixelCNN")
    require_onnx("exporting the PixelCNN")
    from microtex.generative.pixelcnn import GatedPixelCNN

    opset = _export.check_export_options(opset, exporter)
    model = _frozen_copy(model, GatedPixelCNN, "model")
    config = model.config
    latent, n_conditions = config.latent_size, config.n_conditions
    batch = _example_batch(latent, n_conditions)
    indices = torch.randint(0, config.n_codes, (batch, latent, latent))
    conditions = torch.randn(batch, n_conditions)
    document = _document(
        PIXELCNN_KIND, model, config,
        {"indices": {"shape": [_BATCH, latent, latent], "dtype": "int64"},
         "conditions": {"shape": [_BATCH, n_conditions], "dtype": "float32"}},
        {"logits": {"shape": [_BATCH, config.n_codes, latent, latent], "dtype": "float32"}},
        opset,
    )  # fmt: skip
    names = (["indices", "conditions"], ["logits"])
    return _export_graph(model, (indices, conditions), names, document, path, opset, exporter)


# --------------------------------------------------------------------------- weights file


def _config_values(config) -> dict[str, Any]:
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def pixelcnn_tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of a PixelCNN weights file, in a sampler's reading order.

    Parameters
    ----------
    config : PixelCNNConfig or mapping
        A configuration or its :meth:`~microtex.generative.pixelcnn.PixelCNNConfig.to_dict`.

    Returns
    -------
    dict of str to tuple of int
        ``embedding.weight`` (K, E); per layer ``l`` (``layers.{l}.``):
        ``vertical.weight`` (2p, in, half + 1, k), ``vertical_to_horizontal.weight``
        (2p, 2p, 1, 1), ``horizontal.weight`` (2p, in, 1, half) for ``l = 0``
        (mask A) else (2p, in, 1, half + 1), ``horizontal_output.weight`` (p, p, 1, 1),
        ``vertical_condition.weight`` and ``horizontal_condition.weight``
        (2p, n_conditions), each followed by its ``.bias``; ``in`` is E for
        ``l = 0``, else p; ``half = k // 2``. Then ``head_hidden.weight``
        (head, p, 1, 1), ``head_output.weight`` (K, head, 1, 1) and their biases.

    Examples
    --------
    >>> shapes = pixelcnn_tensor_shapes({"n_codes": 512, "embedding_dim": 64,
    ...     "hidden_channels": 64, "n_layers": 15, "first_kernel_size": 7, "kernel_size": 3,
    ...     "head_channels": 256, "n_conditions": 1, "latent_size": 16})
    >>> shapes["layers.0.vertical.weight"], shapes["layers.0.horizontal.weight"]
    ((128, 64, 4, 7), (128, 64, 1, 3))
    >>> shapes["layers.1.horizontal.weight"], len(shapes)
    ((128, 64, 1, 2), 183)
    """
    c = _config_values(config)
    k_codes, embedding, p, head = (c["n_codes"], c["embedding_dim"], c["hidden_channels"],
                                   c["head_channels"])  # fmt: skip
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (k_codes, embedding)}
    for layer in range(c["n_layers"]):
        first = layer == 0
        kernel = c["first_kernel_size"] if first else c["kernel_size"]
        half, inputs = kernel // 2, embedding if first else p
        prefix = f"layers.{layer}."
        parts = [
            ("vertical", (2 * p, inputs, half + 1, kernel)),
            ("vertical_to_horizontal", (2 * p, 2 * p, 1, 1)),
            ("horizontal", (2 * p, inputs, 1, half if first else half + 1)),
            ("horizontal_output", (p, p, 1, 1)),
            ("vertical_condition", (2 * p, c["n_conditions"])),
            ("horizontal_condition", (2 * p, c["n_conditions"])),
        ]
        if layer == c["n_layers"] - 1:  # its vertical stack only feeds the link: no gate
            del parts[4]
        for name, shape in parts:
            shapes[prefix + name + ".weight"] = shape
            shapes[prefix + name + ".bias"] = (shape[0],)
    shapes.update({
        "head_hidden.weight": (head, p, 1, 1), "head_hidden.bias": (head,),
        "head_output.weight": (k_codes, head, 1, 1), "head_output.bias": (k_codes,),
    })  # fmt: skip
    return shapes


def save_pixelcnn_weights(model, path: str | os.PathLike) -> pathlib.Path:
    """Write a PixelCNN's weights and configuration to an ``.npz`` (atomically, no pickle).

    Tensor names and shapes: :func:`pixelcnn_tensor_shapes`; read it back with
    :func:`load_pixelcnn_weights` (NumPy) or :func:`load_pixelcnn` (PyTorch).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    require_torch("saving PixelCNN weights")
    from microtex.generative.pixelcnn import GatedPixelCNN

    if not isinstance(model, GatedPixelCNN):
        raise TypeError(f"model must be a GatedPixelCNN, got {type(model).__name__}")
    state = model.state_dict()
    arrays = {name: state[name].detach().cpu().float().contiguous().numpy()
              for name in pixelcnn_tensor_shapes(model.config)}  # fmt: skip
    document = _metadata.build_document(WEIGHTS_KIND, {
        "format_version": WEIGHTS_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "weights_sha256": weights_sha256(model),
    })  # fmt: skip
    text = json.dumps(document, sort_keys=True).encode("utf-8")
    arrays[_metadata.METADATA_KEY] = np.frombuffer(text, dtype=np.uint8)
    return bundle.save_npz(path, arrays)


def load_pixelcnn_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The configuration and the weights of a file :func:`save_pixelcnn_weights` wrote.

    Returns
    -------
    config : dict
        As :meth:`~microtex.generative.pixelcnn.PixelCNNConfig.to_dict` wrote it.
    weights : dict of str to numpy.ndarray
        float32 arrays, in the order and with the shapes of :func:`pixelcnn_tensor_shapes`.

    Raises
    ------
    BundleError
        A missing or damaged file, one of another kind or format version, or
        a missing, extra or misshapen tensor (the message names it).
    """
    arrays = bundle.load_npz(path)
    source = os.fspath(path)
    raw = arrays.pop(_metadata.METADATA_KEY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise BundleError(f"{source!r} is not a PixelCNN weights file (no microtex document)")
    try:
        document = json.loads(raw.tobytes().decode("utf-8"))
    except ValueError as exc:
        raise BundleError(f"{source!r} has a corrupt microtex document: {exc}") from None
    if not isinstance(document, dict) or document.get("kind") != WEIGHTS_KIND:
        kind = document.get("kind") if isinstance(document, dict) else None
        raise BundleError(f"{source!r} holds {kind!r}, not {WEIGHTS_KIND!r}")
    if document.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise BundleError(f"{source!r} has weights format version "
                          f"{document.get('format_version')!r}; this microtex reads "
                          f"{WEIGHTS_FORMAT_VERSION}")  # fmt: skip
    config = document.get("config")
    try:
        shapes = pixelcnn_tensor_shapes(config)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{source!r} has an incomplete PixelCNN configuration: {exc!r}") from None
    missing = [name for name in shapes if name not in arrays]
    extra = sorted(set(arrays) - set(shapes))
    if missing or extra:
        raise BundleError(f"{source!r}: tensors missing {missing}, unexpected {extra}")
    weights = {}
    for name, shape in shapes.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != np.float32:
            raise BundleError(f"{source!r}: tensor {name!r} is {array.dtype} {array.shape}, "
                              f"expected float32 {shape}")  # fmt: skip
        weights[name] = array
    return config, weights


def load_pixelcnn(path: str | os.PathLike):
    """The :class:`~microtex.generative.pixelcnn.GatedPixelCNN` (eval mode) of a weights file."""
    torch = require_torch("loading a PixelCNN")
    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig

    config, weights = load_pixelcnn_weights(path)
    model = GatedPixelCNN(PixelCNNConfig.from_dict(config))
    model.load_state_dict({name: torch.from_numpy(array) for name, array in weights.items()})
    return model.eval()


# --------------------------------------------------------------------------- the bundle

#: The files of a generator bundle.
GENERATOR_FILES = ("encoder.onnx", "decoder.onnx", "pixelcnn.onnx", "pixelcnn.npz")


def check_condition_range(condition_names, condition_range, n_conditions: int):
    """Names and ``[[low, high], ...]`` of the conditions, checked against the PixelCNN's count."""
    names = [str(name) for name in condition_names]
    if len(names) != n_conditions or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"condition_names must be {n_conditions} distinct non-empty names "
                         f"(the PixelCNN's n_conditions), got {condition_names!r}")  # fmt: skip
    try:
        bounds = np.asarray(condition_range, dtype=np.float64).reshape(n_conditions, 2)
    except (TypeError, ValueError):
        raise ValueError(f"condition_range must be one [low, high] per condition, got "
                         f"{condition_range!r}") from None  # fmt: skip
    if not np.isfinite(bounds).all() or (bounds[:, 0] > bounds[:, 1]).any():
        raise ValueError(f"condition_range must be finite [low, high] pairs with low <= high, "
                         f"got {bounds.tolist()}")  # fmt: skip
    return names, bounds.tolist()


def save_generator(directory: str | os.PathLike, vqvae, pixelcnn, *, condition_names,
                   condition_range, training: dict | None = None, overwrite: bool = False,
                   opset: int | None = None) -> pathlib.Path:  # fmt: skip
    """Write a trained VQ-VAE and PixelCNN as a ``generator`` bundle.

    The bundle holds ``encoder.onnx``, ``decoder.onnx`` and ``pixelcnn.onnx``
    (:func:`export_encoder`, :func:`export_decoder`, :func:`export_pixelcnn`),
    ``pixelcnn.npz`` (:func:`save_pixelcnn_weights`, for the cached sampler)
    and a manifest with both configurations, the condition names and the
    range of each condition seen in training (sampling outside it warns), and
    ``training`` (e.g. losses, data, seeds) as given.

    Parameters
    ----------
    directory : path-like
        The bundle folder (see :func:`microtex.bundle.save_bundle`).
    vqvae : microtex.generative.vqvae.VQVAE
    pixelcnn : microtex.generative.pixelcnn.GatedPixelCNN
        Trained on ``vqvae``'s index maps: same codebook size and latent size.
    condition_names : sequence of str
        One name per condition (e.g. ``["ln_time_h"]``).
    condition_range : sequence of (float, float)
        ``[low, high]`` of each condition over the training data.

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    import tempfile

    require_torch("saving a generator")
    from microtex.generative.pixelcnn import GatedPixelCNN
    from microtex.generative.vqvae import VQVAE

    if not isinstance(vqvae, VQVAE) or not isinstance(pixelcnn, GatedPixelCNN):
        raise TypeError(f"save_generator takes a VQVAE and a GatedPixelCNN, got "
                        f"{type(vqvae).__name__} and {type(pixelcnn).__name__}")  # fmt: skip
    vq, prior = vqvae.config, pixelcnn.config
    if vq.n_codes != prior.n_codes or vq.latent_size != prior.latent_size:
        raise ValueError(
            f"the PixelCNN models {prior.n_codes} codes on {prior.latent_size}^2 maps; the "
            f"VQ-VAE has {vq.n_codes} codes on {vq.latent_size}^2 maps"
        )
    names, bounds = check_condition_range(condition_names, condition_range, prior.n_conditions)
    config = {
        "vqvae": vq.to_dict(),
        "pixelcnn": prior.to_dict(),
        "conditions": {"names": names, "range": bounds},
        "training": dict(training or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        export_encoder(vqvae, folder / "encoder.onnx", opset=opset)
        export_decoder(vqvae, folder / "decoder.onnx", opset=opset)
        export_pixelcnn(pixelcnn, folder / "pixelcnn.onnx", opset=opset)
        save_pixelcnn_weights(pixelcnn, folder / "pixelcnn.npz")
        files = {name: folder / name for name in GENERATOR_FILES}
        return bundle.save_bundle(directory, files, config, kind=BUNDLE_KIND, overwrite=overwrite)
