"""The texture featurization core: images in, batches through the network, pooled rows out.

:class:`TexturePipeline` runs a :class:`~microtex.features.plan.TexturePlan`: it
reads images on a background thread so that decoding overlaps inference, groups
images of equal size into batches, runs them through the backbone's ONNX Runtime
session and pools the activations with the C++ kernels (or takes the vectors
pooled by heads inside the graph). :class:`~microtex.features.texture.TextureFeaturizer`
and :func:`~microtex.features.api.featurize` are thin shells over it.

The tap ``"raw"`` is the untransformed image (one channel): the same poolings
without a network, Ling et al.'s raw-image baseline.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from microtex import io as mio
from microtex._pools import GRAPH_POOLS
from microtex._validation import check_on_error
from microtex.backbones import Heads, cached_onnx, resolve_conv_algorithm
from microtex.engine import session as runtime
from microtex.engine.memory import format_bytes, is_out_of_memory
from microtex.errors import ImageTooLargeError, ImageTooSmallError, NoImagesError
from microtex.features import pooling
from microtex.features.plan import RAW_TAP, TexturePlan
from microtex.features.vlad import fit_vlad_dictionary, vlad_encode
from microtex.io.read import report_skip

__all__ = [
    "TexturePipeline",
    "all_paths",
    "batches",
    "graph_conv_algorithm",
    "input_list",
    "iter_inputs",
    "prefetch",
]

log = logging.getLogger("microtex.features")

_VECTORS_PER_IMAGE = 4096  # activation vectors sampled per image and tap for the VLAD fit


# ---------------------------------------------------------------- inputs
def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def all_paths(images) -> bool:
    """True when ``images`` is a path or a non-empty sequence of paths."""
    return _is_path(images) or (
        isinstance(images, (list, tuple)) and bool(images) and all(_is_path(x) for x in images)
    )


def input_list(images) -> tuple[list, bool]:
    """``images`` as a list to read (folders expanded), and whether they are files.

    For callers that visit the inputs more than once or out of order (a
    generator is consumed here, once); :func:`iter_inputs` reads the list.
    """
    if _is_path(images):
        images = [images]
    elif isinstance(images, np.ndarray) and images.ndim == 2:
        return [images], False
    images = list(images)
    if images and all(_is_path(x) for x in images):
        return mio.expand_paths(images), True
    return images, False


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def iter_inputs(
    images, crop_bottom, size, on_error: str, failures: list, cropped: dict | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """``(id, float32 image)`` for an array, a list of 2-D arrays, or paths and directories.

    Rows cropped from an image's bottom go to ``cropped[id]`` (when given).
    """
    if (
        images is None
        or isinstance(images, (bytes, bytearray, dict, set))
        or (isinstance(images, np.ndarray) and images.ndim == 0)
        or not (_is_path(images) or isinstance(images, Iterable))
    ):
        raise TypeError(
            "images must be an array (n, height, width), a list of 2-D arrays, or paths "
            f"(str or os.PathLike) of files and folders; got {type(images).__name__} "
            f"{_shown(images)}"
        )
    if _is_path(images):
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim in (3, 4):
        if images.ndim == 4:
            if images.shape[1] != 1:
                raise ValueError(
                    f"4-D image batches must be (n, 1, height, width); got {images.shape}"
                )
            images = images[:, 0]
        images = list(images)
    if isinstance(images, np.ndarray):
        raise ValueError(
            "images must be an array (n, height, width), a list of 2-D arrays or paths; got an "
            f"array of shape {images.shape}"
        )
    images = list(images)
    if images and all(_is_path(x) for x in images):
        for path, image, info in mio.iter_images(
            images, crop_bottom=crop_bottom, size=size, on_error=on_error, failures=failures
        ):
            if info.rows_cropped and cropped is not None:
                cropped[str(path)] = info.rows_cropped
            yield str(path), image
        return
    for i, x in enumerate(images):
        if _is_path(x):
            raise TypeError("mix of paths and arrays in one input; pass one kind")
        image, rows = mio.prepare_image(
            mio.as_float_image(np.asarray(x), f"array[{i}]"),
            crop_bottom=crop_bottom,
            size=size,
            name=f"array[{i}]",
        )
        if rows and cropped is not None:
            cropped[f"array[{i}]"] = rows
        yield f"array[{i}]", image


def batches(
    items: Iterable[tuple[str, np.ndarray]], batch_size: int, max_pixels: int | None = None
):
    """Group consecutive images of equal shape into ``(ids, (n, 1, h, w))`` batches.

    A batch holds at most ``batch_size`` images and, when ``max_pixels`` is
    given, at most ``max_pixels`` pixels (but always one image).
    """
    ids, images = [], []
    for image_id, image in items:
        full = len(images) == batch_size or (
            max_pixels is not None and (len(images) + 1) * image.size > max_pixels
        )
        if images and (image.shape != images[0].shape or full):
            yield ids, np.stack(images)[:, None]
            ids, images = [], []
        ids.append(image_id)
        images.append(image)
    if images:
        yield ids, np.stack(images)[:, None]


def prefetch(generator, depth: int = 2):
    """Run ``generator`` on a background thread, ``depth`` items ahead."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in generator:
                if stop.is_set():
                    return
                items.put(("item", item))
            items.put(("done", None))
        except BaseException as exc:  # re-raised in the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=produce, name="microtex-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
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
                items.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


# ---------------------------------------------------------------- running
def graph_conv_algorithm(conv_algorithm: str, config, device: str = "auto") -> str:
    """``conv_algorithm``, or for ``"auto"`` the one a graph run on ``device`` should use.

    The one rule the featurizer and ``export/export_backbone.py`` share: Winograd
    for an fp32 graph on the CPU (:func:`microtex.backbones.auto_conv_algorithm`).
    """
    # the device matters only for "auto" (and resolving it may raise DeviceError)
    on_cpu = conv_algorithm != "auto" or runtime.runs_on_cpu(device)
    return resolve_conv_algorithm(conv_algorithm, config, on_cpu=on_cpu)


class TexturePipeline:
    """A plan with its fitted VLAD words and its ONNX Runtime sessions.

    Parameters
    ----------
    plan : TexturePlan
    dictionaries : dict of str to ndarray, optional
        Fitted VLAD words per tap (:meth:`fit_vlad` fills it).
    onnx_path : path, optional
        Run this activations graph (a bundle's) instead of the cached export
        of ``plan.config``; pooling then runs in the kernels.

    Attributes
    ----------
    sessions : dict
        Open sessions by ``("heads" | "acts", device, n_threads)``.
    """

    def __init__(self, plan: TexturePlan, dictionaries: dict | None = None, onnx_path=None):
        self.plan = plan
        self.dictionaries = {} if dictionaries is None else dictionaries
        self.onnx_path = onnx_path
        self.sessions: dict = {}

    def __getstate__(self):
        return {**self.__dict__, "sessions": {}}  # sessions are rebuilt on demand

    def needs_fit(self) -> bool:
        """Whether a pooling needs fitted state (VLAD words), which no graph can compute."""
        return any(pool not in GRAPH_POOLS for pool in self.plan.pools)

    def needs_calibration(self) -> bool:
        """Whether this is an int8 plan whose graph is not calibrated yet."""
        return self.plan.quantized and self.onnx_path is None

    def engine(self) -> str:
        """``"kernels"`` or ``"graph"``: where mean/max/Gram pooling runs."""
        if self.plan.engine != "auto":
            return self.plan.engine
        if self.needs_fit() or self.onnx_path is not None or self.plan.quantized:
            return "kernels"
        return "kernels" if runtime.runs_on_cpu(self.plan.device) else "graph"

    def conv_algorithm(self) -> str:
        """The graph's convolution algorithm: the plan's, or for ``"auto"`` the device's."""
        return graph_conv_algorithm(self.plan.conv_algorithm, self.plan.config, self.plan.device)

    def session(self, heads: bool = False) -> runtime.Session:
        """The (cached) session over the activations graph, or the pooling-heads graph."""
        plan = self.plan
        key = ("heads" if heads else "acts", plan.device, plan.n_threads)
        if key not in self.sessions:
            if self.needs_calibration():
                from sklearn.exceptions import NotFittedError

                raise NotFittedError(
                    "precision='int8' quantizes the network on calibration images: fit the "
                    "featurizer on yours (or microtex calibrate), or fit(None) on built-in "
                    "textures, first"
                )
            path = None if heads else self.onnx_path
            if path is None:
                graph_heads = None
                if heads:
                    graph_heads = Heads(
                        pools=tuple(p for p in plan.pools if p in GRAPH_POOLS),
                        gram_normalization=plan.gram_normalization,
                        gram_layout=plan.gram_layout,
                    )
                path = cached_onnx(plan.config, graph_heads, conv_algorithm=self.conv_algorithm())
            session = runtime.shared_session(path, device=plan.device, n_threads=plan.n_threads)
            if plan.config.precision == "fp16" and session.device == "cpu":
                log.warning(
                    "precision='fp16' on the CPU: ONNX Runtime runs it slower than "
                    "precision='fp32'; fp16 is meant for device='cuda'"
                )
            self.sessions[key] = session
        return self.sessions[key]

    def device(self) -> str:
        """Where the network runs (``"cpu"`` when no session is open, as for ``taps="raw"``)."""
        return next(iter(self.sessions.values())).device if self.sessions else "cpu"

    def outputs(
        self,
        images,
        on_error: str = "raise",
        failures: list | None = None,
        cropped: dict | None = None,
        tiles: tuple[int, int] | None = None,
    ) -> Iterator[tuple[list, dict]]:
        """``(ids, {tap: activations or {pool: features}})`` per batch.

        With ``tiles=(size, stride)`` every image is cut into square patches
        (:func:`microtex.io.tile`, after cropping and resizing), each
        featurized as an image of its own with the id ``"{id}@{row},{column}"``.
        Images too small for a tile or for the deepest tap, larger than
        ``plan.max_pixels``, or that run out of memory in the network, are
        reported in ``failures`` and skipped (``on_error="skip"``, files only)
        or raise (ImageTooSmallError, ImageTooLargeError).
        """
        plan = self.plan
        check_on_error(on_error)
        failures = [] if failures is None else failures

        def skip(image_id: str, message: str, error=ImageTooSmallError) -> bool:
            if on_error == "skip" and not image_id.startswith("array["):
                report_skip(failures, image_id, message, log)
                return True
            raise error(f"{image_id}: {message}")

        def checked():
            for image_id, image in iter_inputs(
                images, plan.crop_bottom, plan.image_size, on_error, failures, cropped
            ):
                shape = f"{image.shape[0]}x{image.shape[1]}"
                if tiles is not None:
                    size, stride = tiles
                    if min(image.shape) < size and skip(
                        image_id, f"image {shape} is smaller than one {size}x{size} tile"
                    ):
                        continue
                    patches, origins = mio.tile(image, size, stride)
                    for patch, (row, col) in zip(patches, origins):
                        yield f"{image_id}@{row},{col}", patch
                elif min(image.shape) < plan.min_side and skip(
                    image_id,
                    f"image {shape} is smaller than {plan.min_side} pixels, the least "
                    f"that layer {plan.cnn_taps[-1]} needs",
                ):
                    continue
                elif plan.cnn_taps and (why := plan.too_large(*image.shape)):
                    if skip(image_id, why, ImageTooLargeError):
                        continue
                else:
                    yield image_id, image

        def run(ids: list, batch: np.ndarray):
            outputs: dict = {RAW_TAP: batch} if plan.raw else {}
            if session is None:
                yield ids, outputs
                return
            try:
                result = session.run(batch)
            except Exception as exc:  # noqa: BLE001  (ONNX Runtime's own exception types)
                if not is_out_of_memory(exc):
                    raise
                if len(ids) > 1:  # the images alone may fit
                    log.info("out of memory on a batch of %d; running its images one by one",
                             len(ids))
                    for i in range(len(ids)):
                        yield from run(ids[i : i + 1], batch[i : i + 1])
                    return
                height, width = batch.shape[-2:]
                log.debug("out of memory on %s: %s", ids[0], exc)
                skip(
                    ids[0],
                    f"out of memory in the network on an image {height}x{width} (estimated "
                    f"peak {format_bytes(plan.peak_bytes(height * width))}); pass image_size "
                    "(--image-size) or tile (--tile), or lower max_pixels (--max-pixels)",
                    ImageTooLargeError,
                )
                return
            if "/" in session.output_names[0]:  # pooled by heads in the graph
                for name, value in result.items():
                    tap, pool = name.split("/")
                    outputs.setdefault(tap, {})[pool] = value
            else:
                outputs.update(result)
            yield ids, outputs

        stream = prefetch(batches(checked(), plan.batch_size, plan.max_pixels))
        session = self.session(heads=self.engine() == "graph") if plan.cnn_taps else None
        for ids, batch in stream:
            yield from run(ids, batch)

    def pool(self, outputs: dict) -> np.ndarray:
        """One batch's feature rows from its outputs (C++ kernels on ``plan.n_threads``)."""
        plan, parts = self.plan, []
        threads = plan.n_threads
        for tap in plan.taps:
            value = outputs[tap]
            for pool in plan.pools:
                if isinstance(value, dict):
                    features = value[pool]
                elif pool == "mean":
                    features = pooling.mean_pool(value, n_threads=threads)
                elif pool == "max":
                    features = pooling.max_pool(value, n_threads=threads)
                elif pool == "gram":
                    features = pooling.gram(
                        value, plan.gram_normalization, plan.gram_layout, n_threads=threads
                    )
                else:
                    features = vlad_encode(
                        value,
                        self.dictionaries[tap],
                        intra_normalize=plan.intra_normalize,
                        signed_sqrt=plan.signed_sqrt,
                        l2_normalize=plan.l2_normalize,
                        n_threads=threads,
                    )
                parts.append(np.asarray(features, dtype=np.float32))
        return np.concatenate(parts, axis=1)

    def features(
        self, images, *, overlap: bool | None = None, **read
    ) -> Iterator[tuple[list, np.ndarray]]:
        """``(ids, feature rows)`` per batch; ``read`` as the keywords of :meth:`outputs`.

        With the network on a GPU, pooling of batch i runs on its own thread
        while batch i+1 runs (``overlap``; default: only then). On the CPU it
        runs between inferences, on all threads: ONNX Runtime splits each
        operator evenly over its threads and waits for the slowest, so a
        pooling thread beside it delays inference by about the pooling's
        single-thread time, more than pooling in turn costs.
        """
        stream = self.outputs(images, **read)
        if overlap is None:
            overlap = (
                bool(self.plan.cnn_taps)
                and self.session(heads=self.engine() == "graph").device != "cpu"
            )
        if not overlap:
            for ids, outputs in stream:
                yield ids, self.pool(outputs)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="microtex-pool") as executor:
            pending = None
            for ids, outputs in stream:
                future = executor.submit(self.pool, outputs)
                if pending is not None:
                    yield pending[0], pending[1].result()
                pending = (ids, future)
            if pending is not None:
                yield pending[0], pending[1].result()

    def fit_vlad(
        self,
        images,
        random_state=None,
        on_error: str = "raise",
        failures: list | None = None,
        tiles: tuple[int, int] | None = None,
    ) -> dict:
        """Fit the VLAD words of every tap on ``images``, store them and return them.

        Up to 4096 activation vectors are sampled per image and tap, and at
        most ``plan.vlad_max_vectors`` of those are clustered.
        """
        plan = self.plan
        rng = np.random.default_rng(random_state)
        samples: dict = {tap: [] for tap in plan.taps}
        n_images = 0
        failures = [] if failures is None else failures
        for ids, outputs in self.outputs(images, on_error, failures, tiles=tiles):
            n_images += len(ids)
            for tap in plan.taps:
                n, c, h, w = outputs[tap].shape
                columns = outputs[tap].reshape(n, c, h * w).transpose(0, 2, 1).reshape(-1, c)
                take = min(len(columns), _VECTORS_PER_IMAGE * n)
                chosen = rng.choice(len(columns), size=take, replace=False)
                samples[tap].append(np.ascontiguousarray(columns[chosen]))
        if n_images == 0:
            raise NoImagesError(
                "no readable image to fit the VLAD dictionaries on", failures=failures
            )
        dictionaries = {}
        for tap, parts in samples.items():
            columns = np.concatenate(parts)  # (k, c), as (1, c, 1, k) activations
            dictionaries[tap] = fit_vlad_dictionary(
                columns.T[None, :, None, :],
                plan.n_words,
                max_vectors=plan.vlad_max_vectors,
                random_state=int(rng.integers(2**31 - 1)),
            )
        self.dictionaries.clear()
        self.dictionaries.update(dictionaries)
        return self.dictionaries
