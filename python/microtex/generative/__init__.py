"""Generating micrographs for a processing condition: a VQ-VAE and a conditional gated PixelCNN.

DESIGN.md §1 (Noguchi & Inoue) and §8. A VQ-VAE compresses a grayscale patch
to a map of codebook indices; a gated PixelCNN, conditioned on a continuous
process parameter (e.g. ln cooling rate), models those maps position by
position; sampling a map and decoding it makes a new micrograph.

* :mod:`~microtex.generative.vqvae`: :class:`~microtex.generative.vqvae.VQVAEConfig`,
  the ``VQVAE`` module (encoder, codebook with the straight-through estimator,
  decoder), its loss terms and codebook usage (perplexity, dead codes). Torch.
* :mod:`~microtex.generative.pixelcnn`: :class:`~microtex.generative.pixelcnn.PixelCNNConfig`
  and ``GatedPixelCNN``, the prior over index maps (vertical and horizontal
  stacks without blind spot, condition bias in every gate). Torch.
* :mod:`~microtex.generative.data`: patches of micrographs with their
  conditions (a CSV), split by source image. NumPy.
* :mod:`~microtex.generative.train`: seeded, validated, resumable training of
  the VQ-VAE and of the prior on its index maps. Torch.
* :mod:`~microtex.generative.export`: encoder, decoder and PixelCNN to ONNX
  through :mod:`microtex.engine.export`, the PixelCNN weights as an ``.npz``,
  and all of it as a ``generator`` bundle (``save_generator``).
* :mod:`~microtex.generative.sample`: the ``Generator`` a bundle loads as:
  the cached C++ sampler and the naive reference, decoding. ONNX Runtime.
* :mod:`~microtex.generative.evaluate`: generated vs real micrographs per
  condition: Otsu V_f, mean free path d_f and particle size (distributions,
  Wasserstein distances, box plots), a Fréchet distance on VGG features, PCA
  of the encoder's outputs and of the codebook.

``import microtex.generative`` is cheap: nothing here imports PyTorch; the two
model modules do, when they are imported.
"""
