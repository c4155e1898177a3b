"""How close generated micrographs come to real ones: phase statistics, texture, latents.

DESIGN.md §1 (Noguchi row) and issue 17, item 4. For each processing condition the
generator draws images, the real micrographs of that condition are cut into patches of
the same size, and both sets are measured the same way:

* **Phase statistics** (:func:`phase_statistics`, through
  :func:`microtex.features.stereology.measure`): Noguchi & Inoue's ferrite fraction V_f
  (Otsu's threshold per image; the fraction of pixels in the phase of interest) and mean
  free path ``d_f = V_f / (N_L I_u)`` (the mean intercept of the phase of interest on
  horizontal and vertical test lines ``I_u = spacing`` pixels apart, conventions of
  :mod:`microtex.features.stereology`), and the mean particle size (equivalent circle
  diameter) of that phase. Per set: mean, standard deviation, variance; between the sets,
  the 1-D Wasserstein distance of each statistic's distribution.
* **Texture** (:func:`compare_sets`): the Fréchet distance between Gaussians fitted to VGG19
  mean-pooled activations (``relu1_1, relu2_1, relu3_1`` by default) of the two sets,
  ``||μ1 - μ2||² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)`` (:func:`frechet_distance`): the squared
  2-Wasserstein distance of the Gaussians, FID's formula on texture descriptors. (No
  mean Gram distance: a featurizer with ``pool="gram"`` gives the Fréchet distance of
  Gram descriptors instead.)
* **Latents** (:func:`latent_pca`): PCA of the encoder's continuous output ``z_e``,
  mean-pooled over positions, coloured by condition; and (:func:`codebook_pca`) PCA of the
  VQ-VAE codebook, read from ``decoder.onnx`` (the table its ``Gather`` looks indices up in).

:func:`evaluate_generated` does all of it for a generator and real images grouped by
condition, and writes the numbers (JSON, CSV) and the plots (PNG). The phase of interest
is the bright one unless told otherwise: the ferrite of nital-etched optical micrographs,
as Noguchi & Inoue measure it; in SEM images of spheroidized steel the bright phase is the
cementite, whose fraction and particle size the same numbers then give.
"""

from __future__ import annotations

import math
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from microtex._validation import check_choice, check_positive_int, check_real
from microtex.errors import BundleError
from microtex.features.segment import otsu_threshold
from microtex.features.stereology import check_measure_options, measure
from microtex.io.decode import as_float_image
from microtex.report import csv_text

__all__ = [
    "DEFAULT_TEXTURE_TAPS",
    "LATENT_POOLINGS",
    "STATISTICS",
    "codebook_pca",
    "codebook_vectors",
    "compare_sets",
    "encoder_latents",
    "evaluate_generated",
    "frechet_distance",
    "gaussian_frechet_distance",
    "latent_pca",
    "phase_statistics",
    "read_images_by_condition",
]

#: The per-image statistics, by name: V_f, d_f (pixels), mean particle ECD (pixels).
STATISTICS: tuple[str, ...] = ("V_f", "d_f_px", "ecd_mean_px")
#: The :func:`~microtex.features.stereology.Stereology.as_dict` key of each statistic.
_STEREOLOGY_KEYS = {"V_f": "V_V", "d_f_px": "d_f_px", "ecd_mean_px": "ecd_mean_px"}
#: VGG19 layers whose mean activations the texture distance compares.
DEFAULT_TEXTURE_TAPS = "relu1_1,relu2_1,relu3_1"
#: ``pooling=`` choices of :func:`latent_pca`: over positions, or every position kept.
LATENT_POOLINGS: tuple[str, ...] = ("mean", "flatten")
_TEXTURES = ("frechet", "none")


# --------------------------------------------------------------------------- inputs


def _as_images(images, name: str) -> list[np.ndarray]:
    """Float32 2-D images in [0, 1] from an ``(n, h, w)`` array or a sequence of 2-D arrays."""
    if isinstance(images, np.ndarray):
        items = [images] if images.ndim == 2 else list(images) if images.ndim == 3 else None
        if items is None:
            raise ValueError(f"{name} must be (n, height, width) or a list of 2-D images, "
                             f"got an array of shape {images.shape}")  # fmt: skip
    elif isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"{name} must be an array of images or a list of 2-D arrays, "
                        f"got {type(images).__name__}")  # fmt: skip
    else:
        items = list(images)
    if not items:
        raise ValueError(f"{name} is empty: no images to measure")
    out = []
    for i, image in enumerate(items):
        array = np.asarray(image)
        if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            raise ValueError(f"{name}[{i}] holds NaN or infinite values")
        try:
            out.append(as_float_image(array, f"{name}[{i}]"))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}[{i}]: {exc}") from None
    return out


def _condition_key(value, n_conditions: int) -> tuple[float, ...]:
    """A condition as a tuple of floats, each the shortest decimal of its float32 value.

    Conditions reach the PixelCNN as float32 and a CSV's are read as float32: the same
    decimal gives the same key whichever way it came.
    """
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.ndim != 1 or values.shape[0] != n_conditions or not np.isfinite(values).all():
        raise ValueError(f"condition {value!r} must be {n_conditions} finite number(s)")
    return tuple(float(str(np.float32(v))) for v in values)


def _label(names: Sequence[str], key: tuple[float, ...]) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in zip(names, key))


def read_images_by_condition(conditions, columns, *, image_dir=None, crop_bottom=None,
                             path_column: str = "path"):  # fmt: skip
    """Read the micrographs a conditions CSV lists, grouped by their condition.

    The CSV is the one ``microtex train-vqvae`` reads
    (:func:`microtex.generative.data.read_conditions`). Unreadable files are reported
    (a warning on the ``"microtex.io"`` logger) and left out.

    Parameters
    ----------
    conditions : path-like
        The conditions CSV.
    columns : str or sequence of str
        Its condition columns, in the generator's order.
    image_dir : path-like, optional
        Folder that relative paths are relative to (default: the CSV's folder).
    crop_bottom : None, int or "auto"
        Rows of SEM info band to remove (:func:`microtex.io.read.read_image`).
    path_column : str

    Returns
    -------
    images : dict of tuple of float to list of numpy.ndarray
        Condition (one float per column) → float32 images in [0, 1], in file order.
    failures : list of microtex.io.read.ReadFailure
        The files left out, with the reason.

    Raises
    ------
    ValueError
        A bad conditions file (a missing column, a value that is not a number, ...).
    """
    from microtex.generative.data import read_conditions, read_listed_images

    table = read_conditions(conditions, columns, base=image_dir, path_column=path_column)
    groups: dict[tuple[float, ...], list[np.ndarray]] = {}
    failures: list = []
    for _, row, image in read_listed_images(table, crop_bottom=crop_bottom, failures=failures):
        groups.setdefault(_condition_key(row, len(table.columns)), []).append(image)
    return groups, failures


# --------------------------------------------------------------------------- statistics


def phase_statistics(images, *, threshold: str | float = "otsu", phase: str = "bright",
                     spacing: int = 1) -> dict[str, np.ndarray]:  # fmt: skip
    """Noguchi & Inoue's V_f and d_f, and the mean particle size, of each image.

    Every image is segmented (Otsu's threshold of that image unless a gray level is
    given; the bright phase is the phase of interest unless ``phase="dark"``) and measured
    by :func:`microtex.features.stereology.measure`:

    * ``V_f``: the fraction of pixels in the phase of interest (V_V, = A_A); the ferrite
      fraction of Noguchi & Inoue when the ferrite is that phase.
    * ``d_f_px``: their mean free path ``d_f = V_f / (N_L I_u)`` with test lines every
      ``I_u = spacing`` pixels, horizontal and vertical: the mean intercept of the phase
      of interest (``L_L / N_L`` on the lines, N_L counting intercepts, not crossing
      points; the three choices the formula leaves open are listed in
      :mod:`microtex.features.stereology`). NaN when no line crosses a boundary.
    * ``ecd_mean_px``: the mean equivalent circle diameter of its particles
      (8-connected). NaN when there is none.

    An image whose pixels all fall in one of Otsu's 256 bins (a flat image: something a
    collapsed generator makes) has no Otsu threshold: its three numbers are NaN, and the
    comparisons count it as undefined.

    Parameters
    ----------
    images : array_like, shape (n, height, width), or list of 2-D arrays
        Gray images (float in [0, 1], uint8, uint16 or bool).
    threshold : "otsu" or float in [0, 1]
    phase : {"bright", "dark"}
    spacing : int
        Pixels between test lines (I_u).

    Returns
    -------
    dict of str to numpy.ndarray
        :data:`STATISTICS` → float64 ``(n,)``.

    Raises
    ------
    ValueError
        No images, an image with NaN or infinite values or not 2-D (named by its index),
        a bad option.

    Examples
    --------
    Bright vertical stripes ``a = 2`` pixels wide every ``p = 8``, on ``m p + 1 = 33``
    columns whose first and last start a stripe: ``m a + 1 = 9`` of the 33 columns are
    bright. Horizontal lines have ``L_L = a / p`` and ``N_L = 1 / p``, vertical ones
    ``L_L = 9 / 33`` and no intercept, so that ``d_f = <L_L> / <N_L> = a + 9 p / 33``
    (:mod:`microtex.features.stereology`'s conventions):

    >>> stripes = np.where(np.arange(33) % 8 < 2, 0.9, 0.1)[None].repeat(32, axis=0)
    >>> numbers = phase_statistics([stripes])
    >>> float(numbers["V_f"][0]) == 9 / 33, float(numbers["d_f_px"][0]) == 2 + 72 / 33
    (True, True)
    >>> flat = np.full((32, 33), 0.5)   # no Otsu threshold: undefined
    >>> phase_statistics([stripes, flat])["V_f"].round(3).tolist()
    [0.273, nan]
    """
    options = check_measure_options(threshold=threshold, phase=phase, spacing=spacing)
    if options["threshold"] is None:
        raise ValueError("threshold must be 'otsu' or a gray level in [0, 1], got None")
    images = _as_images(images, "images")
    out = {name: np.full(len(images), np.nan) for name in STATISTICS}
    for i, image in enumerate(images):
        level = options["threshold"]
        if level == "otsu":
            try:
                level = otsu_threshold(image)
            except ValueError:  # a flat image: the checks above leave no other cause
                continue
        numbers = measure(image, threshold=level, phase=options["phase"],
                          spacing=options["spacing"]).as_dict()  # fmt: skip
        for name, key in _STEREOLOGY_KEYS.items():
            out[name][i] = numbers[key]
    return out


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    std = float(np.std(finite, ddof=1)) if n >= 2 else math.nan
    return {"n": n, "undefined": int(values.size - n),
            "mean": float(finite.mean()) if n else math.nan, "std": std,
            "var": std * std}  # fmt: skip


def _compare_statistics(real: Mapping[str, np.ndarray],
                        generated: Mapping[str, np.ndarray]) -> dict[str, dict]:  # fmt: skip
    """Per statistic: each set's summary and the Wasserstein distance of the two samples."""
    from scipy.stats import wasserstein_distance

    out = {}
    for name in STATISTICS:
        a, b = np.asarray(real[name]), np.asarray(generated[name])
        fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
        distance = float(wasserstein_distance(fa, fb)) if fa.size and fb.size else math.nan
        out[name] = {"real": _summary(a), "generated": _summary(b), "wasserstein": distance}
    return out


# --------------------------------------------------------------------------- texture


def gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """Fréchet distance ``||μa - μb||² + Tr(Σa + Σb - 2 (Σa Σb)^½)`` of two Gaussians.

    The squared 2-Wasserstein distance between ``N(μa, Σa)`` and ``N(μb, Σb)`` (FID's
    formula). ``Tr((Σa Σb)^½)`` is computed as ``Σ √λ`` over the eigenvalues λ of the
    symmetric matrix ``Σa^½ Σb Σa^½`` (similar to ``Σa Σb``), negative rounding clipped
    to 0: real and finite also for the singular covariances of fewer samples than
    features, where ``scipy.linalg.sqrtm(Σa Σb)`` can turn complex.

    Examples
    --------
    >>> gaussian_frechet_distance([0.0], [[4.0]], [1.0], [[1.0]])   # 1 + (2 - 1)**2
    2.0
    """
    mean_a, mean_b = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mean_a, mean_b))
    cov_a, cov_b = (np.atleast_2d(np.asarray(c, np.float64)) for c in (cov_a, cov_b))
    n = mean_a.shape[0]
    if mean_a.shape != (n,) or mean_b.shape != (n,) or cov_a.shape != (n, n) \
            or cov_b.shape != (n, n):  # fmt: skip
        raise ValueError(f"means must be (F,) and covariances (F, F) alike, got "
                         f"{mean_a.shape}, {cov_a.shape}, {mean_b.shape}, {cov_b.shape}")
    eigenvalues, vectors = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    difference = mean_a - mean_b
    value = difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross
    return float(max(value, 0.0))  # a squared distance: below 0 only by rounding


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two samples of feature vectors.

    Means and covariances (``ddof=1``) of ``features_a`` ``(n_a, F)`` and
    ``features_b`` ``(n_b, F)``, then :func:`gaussian_frechet_distance`.

    Raises
    ------
    ValueError
        Fewer than 2 rows on a side, different numbers of columns, NaN.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> round(frechet_distance(x, x), 9), round(frechet_distance(x, x + [1.0, 2.0, 0.0]), 9)
    (0.0, 5.0)
    """
    a, b = (np.asarray(f, dtype=np.float64) for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature tables must be (n, F) with the same F, got shapes "
                         f"{a.shape} and {b.shape}")  # fmt: skip
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a covariance needs at least 2 samples a side, got {len(a)} and "
                         f"{len(b)}")  # fmt: skip
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("feature tables hold NaN or infinite values")
    covariance = (lambda f: np.atleast_2d(np.cov(f, rowvar=False)))  # noqa: E731
    return gaussian_frechet_distance(a.mean(0), covariance(a), b.mean(0), covariance(b))


def _texture_featurizer(featurizer, images):
    """The featurizer given (fitted), or VGG19 mean activations at the default taps."""
    if featurizer is not None:
        return featurizer
    from microtex.features.texture import TextureFeaturizer

    return TextureFeaturizer(taps=DEFAULT_TEXTURE_TAPS, pool="mean").fit(images)


def _describe(featurizer) -> dict:
    params = getattr(featurizer, "params_", None) or {}
    taps = getattr(featurizer, "taps_", None)
    return {"taps": list(taps) if taps is not None else None, "pool": params.get("pool"),
            "n_features": getattr(featurizer, "n_features_out_", None)}  # fmt: skip


def _texture_entry(features_real, features_generated) -> dict:
    if min(len(features_real), len(features_generated)) < 2:
        return {"frechet": math.nan,
                "note": "a covariance needs at least 2 images on each side"}  # fmt: skip
    return {"frechet": frechet_distance(features_real, features_generated)}


def compare_sets(real, generated, *, threshold: str | float = "otsu", phase: str = "bright",
                 spacing: int = 1, texture: str = "frechet", featurizer=None) -> dict:  # fmt: skip
    """Phase statistics and texture of a real and a generated set of images, compared.

    Parameters
    ----------
    real, generated : array_like, shape (n, height, width), or list of 2-D arrays
        Gray images in [0, 1] (see :func:`phase_statistics`).
    threshold, phase, spacing
        As :func:`phase_statistics`.
    texture : {"frechet", "none"}
        ``"frechet"``: the Fréchet distance (:func:`frechet_distance`) between the sets'
        texture features; ``"none"`` skips it (it needs the VGG19 graph: PyTorch on first
        use, to export it).
    featurizer : fitted featurizer, optional
        Anything with ``transform(images) -> (n, F)``; default a
        :class:`~microtex.features.texture.TextureFeaturizer` of VGG19 mean activations
        at :data:`DEFAULT_TEXTURE_TAPS`.

    Returns
    -------
    dict
        ``n_real``, ``n_generated``; ``statistics``: for each of :data:`STATISTICS`,
        ``real`` and ``generated`` summaries (``n`` finite values, ``undefined``, ``mean``,
        ``std`` with ddof=1, ``var``) and ``wasserstein``, the 1-D Wasserstein distance
        of the two samples' finite values (:func:`scipy.stats.wasserstein_distance`);
        ``texture``: ``frechet`` and the ``features`` used, or None. NaN where a number is
        undefined (no finite value; a standard deviation of one value).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> real = (rng.random((4, 32, 32)) < 0.3).astype(np.float32)
    >>> found = compare_sets(real, 1.0 - real, texture="none")
    >>> stats = found["statistics"]["V_f"]
    >>> round(stats["real"]["mean"], 2), round(stats["generated"]["mean"], 2)
    (0.3, 0.7)
    >>> round(stats["wasserstein"], 2)
    0.4
    """
    check_choice("texture", texture, _TEXTURES)
    options = {"threshold": threshold, "phase": phase, "spacing": spacing}
    real_images, generated_images = _as_images(real, "real"), _as_images(generated, "generated")
    out = {
        "n_real": len(real_images),
        "n_generated": len(generated_images),
        "statistics": _compare_statistics(phase_statistics(real_images, **options),
                                          phase_statistics(generated_images, **options)),
        "texture": None,
    }  # fmt: skip
    if texture == "frechet":
        featurizer = _texture_featurizer(featurizer, real_images)
        entry = _texture_entry(featurizer.transform(real_images),
                               featurizer.transform(generated_images))  # fmt: skip
        out["texture"] = {**entry, "features": _describe(featurizer)}
    return out


# --------------------------------------------------------------------------- latents


def _encode(generator, images, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``z_e`` ``(n, D, h, w)`` and index maps ``(n, h, w)`` of images ``(n, s, s)`` in [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or not len(images):
        side = generator.image_size
        raise ValueError(f"images must be (n >= 1, {side}, {side}), got shape {images.shape}")
    return generator.encode_latents(images, batch_size=batch_size)


def encoder_latents(generator, images) -> np.ndarray:
    """The encoder's continuous output ``z_e``, ``(n, D, latent, latent)`` float32.

    ``images`` is ``(n, image_size, image_size)`` in [0, 1], as for
    :meth:`~microtex.generative.sample.Generator.encode` (which gives the index maps of
    the codebook vectors nearest to these).
    """
    return _encode(generator, images)[0]


def _pca2(table: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    if min(table.shape) < 2:
        raise ValueError(f"a 2-component PCA of {what} needs at least 2 rows and 2 columns, "
                         f"got {table.shape}")  # fmt: skip
    pca = PCA(n_components=2, svd_solver="full").fit(table)
    return pca.transform(table), pca.explained_variance_ratio_


def _pooled(latents: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "mean":  # a texture's latents, wherever in the patch they are
        return latents.mean(axis=(2, 3), dtype=np.float64)
    return latents.reshape(len(latents), -1).astype(np.float64)


def latent_pca(generator, images, conditions, *, pooling: str = "mean") -> dict:
    """PCA (2 components) of the encoder's outputs, one point per image.

    Parameters
    ----------
    generator : microtex.generative.sample.Generator
    images : array_like, shape (n, image_size, image_size)
        In [0, 1].
    conditions : array_like, shape (n,) or (n, n_conditions)
        Each image's condition (carried along for colouring).
    pooling : {"mean", "flatten"}
        ``"mean"``: ``z_e`` averaged over the latent positions (a D-vector, blind to where
        a feature sits); ``"flatten"``: every position kept (D · latent² numbers).

    Returns
    -------
    dict
        ``coordinates`` ``(n, 2)``, ``explained_variance_ratio`` ``(2,)``, ``conditions``
        ``(n, n_conditions)``.
    """
    check_choice("pooling", pooling, LATENT_POOLINGS)
    latents = encoder_latents(generator, images)
    values = np.asarray(conditions, dtype=np.float64).reshape(len(latents), -1)
    coordinates, explained = _pca2(_pooled(latents, pooling), "encoder outputs")
    return {"coordinates": coordinates, "explained_variance_ratio": explained,
            "conditions": values}  # fmt: skip


def codebook_vectors(generator) -> np.ndarray:
    """The VQ-VAE codebook ``(n_codes, D)`` float32, read from the bundle's ``decoder.onnx``.

    The decoder looks each index up in the codebook (a ``Gather`` whose data is the
    ``(n_codes, D)`` table and whose indices are the graph's input); that table is
    returned. Needs the ``onnx`` package.

    Raises
    ------
    microtex.errors.BundleError
        No such lookup, or more than one, in the decoder graph.
    ImportError
        Without ``onnx``.
    """
    from microtex.engine.export import require_onnx

    onnx = require_onnx("reading the codebook from decoder.onnx")
    from onnx import numpy_helper

    path = generator.decoder_path
    graph = onnx.load(path).graph
    tables = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = node.attribute[0].t
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    inputs = {value.name for value in graph.input}
    found = []
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) != 2 or node.input[1] not in inputs:
            continue
        name = node.input[0]
        while name in aliases and name not in tables:
            name = aliases[name]
        if name in tables:
            table = numpy_helper.to_array(tables[name])
            if table.ndim == 2 and table.shape[0] == generator.n_codes:
                found.append(table)
    if len(found) != 1:
        raise BundleError(f"{path!r}: expected one codebook lookup of {generator.n_codes} rows "
                          f"on the decoder's input, found {len(found)}")  # fmt: skip
    return np.ascontiguousarray(found[0], dtype=np.float32)


def codebook_pca(generator, *, indices=None) -> dict:
    """PCA (2 components) of the codebook vectors (:func:`codebook_vectors`).

    Parameters
    ----------
    generator : microtex.generative.sample.Generator
    indices : array_like of int, optional
        Index maps whose code counts come along (e.g. of real patches).

    Returns
    -------
    dict
        ``coordinates`` ``(n_codes, 2)``, ``explained_variance_ratio`` ``(2,)``,
        ``usage`` ``(n_codes,)`` int64 counts or None.
    """
    coordinates, explained = _pca2(codebook_vectors(generator).astype(np.float64), "the codebook")
    usage = None
    if indices is not None:
        usage = np.bincount(np.asarray(indices, np.int64).ravel(), minlength=generator.n_codes)
    return {"coordinates": coordinates, "explained_variance_ratio": explained, "usage": usage}


# --------------------------------------------------------------------------- evaluation


def _real_patches(images: list[np.ndarray], side: int, stride: int, label: str) -> np.ndarray:
    from microtex.io.preprocess import tile

    patches = []
    for i, image in enumerate(images):
        if min(image.shape) < side:
            raise ValueError(f"real image {i} of {label} is {image.shape[0]}×{image.shape[1]}, "
                             f"smaller than the generator's {side}×{side} images")  # fmt: skip
        patches.append(tile(image, side, stride)[0])
    return np.concatenate(patches).astype(np.float32)


def _in_training(generator, key: tuple[float, ...]) -> bool | None:
    """Whether a training (not validation) image of the bundle had this condition."""
    sources = generator.training.get("sources")
    if not sources:
        return None
    for source in sources:
        try:
            if source["side"] == "train" and _condition_key(source["conditions"], len(key)) == key:
                return True
        except (KeyError, TypeError, ValueError):  # a record of another shape says nothing
            continue
    return False


def _clean(value):
    """JSON-ready: NaN as None, arrays as lists, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _summary_csv(names: Sequence[str], conditions: list[dict]) -> str:
    header = [*names, "in_training", "quantity", "n_real", "undefined_real", "real_mean",
              "real_std", "n_generated", "undefined_generated", "generated_mean",
              "generated_std", "distance", "distance_kind"]  # fmt: skip
    rows = []
    for entry in conditions:
        head = [*(entry["condition"][n] for n in names), entry["in_training"]]
        for name in STATISTICS:
            s = entry["statistics"][name]
            r, g = s["real"], s["generated"]
            rows.append([*head, name, r["n"], r["undefined"], r["mean"], r["std"], g["n"],
                         g["undefined"], g["mean"], g["std"], s["wasserstein"], "wasserstein"])
        if entry["texture"] is not None:
            rows.append([*head, "texture", entry["n_real_patches"], None, None, None,
                         entry["n_generated"], None, None, None, entry["texture"]["frechet"],
                         "frechet"])  # fmt: skip
    return csv_text(header, rows)


def _box_plots(output: pathlib.Path, labels: list[str], real: list[dict],
               generated: list[dict]) -> list[str]:  # fmt: skip
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    names = []
    titles = {"V_f": "V_f (fraction of the phase of interest)", "d_f_px": "d_f (pixels)",
              "ecd_mean_px": "mean particle ECD (pixels)"}  # fmt: skip
    for name in STATISTICS:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(labels) + 1.5), 4.0))
        for offset, sets, colour, what in ((-0.2, real, "tab:blue", "real"),
                                           (0.2, generated, "tab:orange", "generated")):
            data = [s[name][np.isfinite(s[name])] for s in sets]
            shown = [i for i, values in enumerate(data) if values.size]
            if not shown:
                continue
            parts = ax.boxplot([data[i] for i in shown], positions=[i + offset for i in shown],
                               widths=0.35, patch_artist=True, manage_ticks=False)  # fmt: skip
            for box in parts["boxes"]:
                box.set_facecolor(colour)
                box.set_alpha(0.6)
            parts["boxes"][0].set_label(what)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlim(-0.7, len(labels) - 0.3)
        ax.set_ylabel(titles[name])
        ax.legend(fontsize=8, frameon=False)
        path = output / f"boxplot_{name}.png"
        _save(fig, path)
        names.append(path.name)
    return names


def _scatter(path: pathlib.Path, coordinates, groups, sets, labels, explained,
             title: str) -> None:  # fmt: skip
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.8))
    for g, label in enumerate(labels):
        for what, marker, fill in (("real", "o", True), ("generated", "^", False)):
            m = (groups == g) & (sets == what)
            if not m.any():
                continue
            colour = plt.cm.tab10(g % 10)
            ax.scatter(coordinates[m, 0], coordinates[m, 1], s=22, marker=marker,
                       facecolors=colour if fill else "none", edgecolors=colour,
                       linewidths=0.8, label=f"{label} ({what})")  # fmt: skip
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}% of variance)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    _save(fig, path)


def _codebook_plot(path: pathlib.Path, coordinates, usage, explained) -> None:
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    used = usage > 0
    if (~used).any():
        ax.scatter(coordinates[~used, 0], coordinates[~used, 1], s=14, marker="x",
                   color="0.6", label="not used by the real patches")  # fmt: skip
    if used.any():
        points = ax.scatter(coordinates[used, 0], coordinates[used, 1], s=18,
                            c=np.log10(usage[used]), cmap="viridis")  # fmt: skip
        fig.colorbar(points, ax=ax, label="log10 uses in the real patches")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}% of variance)")
    ax.set_title("codebook vectors", fontsize=10)
    if (~used).any():
        ax.legend(fontsize=7, frameon=False)
    _save(fig, path)


def evaluate_generated(generator, real_images_by_condition: Mapping, *, n_generated: int = 64,
                       seed: int = 0, temperature: float = 1.0, output=None,
                       overwrite: bool = False, threshold: str | float = "otsu",
                       phase: str = "bright", spacing: int = 1, texture: str = "frechet",
                       featurizer=None, patch_stride: int | None = None,
                       latent_pooling: str = "mean", batch_size: int = 64) -> dict:  # fmt: skip
    """Generate images for each condition and compare them with real ones.

    For condition number ``c`` (in the mapping's order) the generator draws
    ``n_generated`` images with the cached sampler, as samples ``c · n_generated`` to
    ``(c + 1) · n_generated - 1`` of ``seed`` (no two conditions share random numbers).
    The real images of that condition are cut into patches of the generator's size
    every ``patch_stride`` pixels (default: the patch size, no overlap, so that the
    spread is not understated by near copies). Both sets are measured and compared by
    :func:`compare_sets`' numbers; the encoder's outputs of all patches and images go
    into one :func:`latent_pca`; and :func:`codebook_pca` runs when ``onnx`` can read the
    codebook (else ``codebook_pca`` says why not).

    Parameters
    ----------
    generator : microtex.generative.sample.Generator
    real_images_by_condition : mapping
        Condition (a number, or one per condition of the generator) → real gray images
        (an ``(n, h, w)`` array or a list of 2-D arrays in [0, 1]), each at least the
        generator's image size; e.g. :func:`read_images_by_condition`'s first result.
    n_generated : int
        Images generated per condition.
    seed, temperature
        Of the sampler (:meth:`~microtex.generative.sample.Generator.sample_indices`).
    output : path-like, optional
        Folder to write (below); it must not exist unless ``overwrite``.
    threshold, phase, spacing
        As :func:`phase_statistics`.
    texture, featurizer
        As :func:`compare_sets`.
    patch_stride : int, optional
    latent_pooling : {"mean", "flatten"}
        As :func:`latent_pca`.
    batch_size : int
        Samples drawn per sampler call.

    Returns
    -------
    dict
        What ``evaluation.json`` holds: ``settings``, ``condition_names``,
        ``conditions`` (per condition: ``condition``, ``label``, ``in_training`` (whether
        a training image of the bundle had it; None when the bundle does not say),
        counts, ``statistics`` and ``texture`` as :func:`compare_sets` gives them),
        ``latent_pca`` and ``codebook_pca`` (explained variance, or why it is missing),
        ``files``. Undefined numbers are None.

    Notes
    -----
    The files written to ``output``: ``evaluation.json``; ``evaluation.csv`` (a row per
    condition and statistic with both sets' n, mean and std and the Wasserstein distance,
    plus a ``texture`` row with the Fréchet distance); ``statistics.csv`` (every image's
    numbers: the box plots' data); ``boxplot_V_f.png``, ``boxplot_d_f_px.png``,
    ``boxplot_ecd_mean_px.png``; ``latent_pca.png`` / ``.csv``; ``codebook_pca.png`` /
    ``.csv`` when available; ``samples.png`` (real and generated images of each
    condition); ``generated_indices.npz`` (the sampled index maps, one array per
    condition).
    """
    n_generated = check_positive_int("n_generated", n_generated)
    temperature = check_real("temperature", temperature, minimum=0.0)
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("texture", texture, _TEXTURES)
    check_choice("latent_pooling", latent_pooling, LATENT_POOLINGS)
    options = check_measure_options(threshold=threshold, phase=phase, spacing=spacing)
    options = {key: options[key] for key in ("threshold", "phase", "spacing")}
    side = generator.image_size
    stride = side if patch_stride is None else check_positive_int("patch_stride", patch_stride)
    if output is not None and pathlib.Path(output).exists() and not overwrite:
        raise FileExistsError(f"output {os.fspath(output)!r} exists; pass overwrite=True "
                              "to replace it")  # fmt: skip
    run = _Run(generator.condition_names, side)
    run.add_real(generator, real_images_by_condition, stride)
    for c, key in enumerate(run.keys):
        run.maps.append(generator.sample_indices(key, n_generated, temperature=temperature,
                                                 seed=seed, first_sample=c * n_generated,
                                                 batch_size=batch_size))  # fmt: skip
        run.generated.append(generator.decode(run.maps[-1]))
    run.real_stats = [phase_statistics(run.real[key], **options) for key in run.keys]
    run.generated_stats = [phase_statistics(images, **options) for images in run.generated]
    described = None
    if texture == "frechet":
        featurizer = _texture_featurizer(featurizer, run.real[run.keys[0]])
        described = _describe(featurizer)
    entries = []
    for c, key in enumerate(run.keys):
        entries.append({
            "condition": dict(zip(run.names, key)), "label": run.labels[c],
            "in_training": _in_training(generator, key), "n_real_images": run.n_images[c],
            "n_real_patches": len(run.real[key]), "n_generated": n_generated,
            "statistics": _compare_statistics(run.real_stats[c], run.generated_stats[c]),
            "texture": None if described is None else _texture_entry(
                featurizer.transform(run.real[key]), featurizer.transform(run.generated[c])),
        })  # fmt: skip

    # one PCA of every real patch and generated image: both sets in the same axes
    real_all = np.concatenate([run.real[key] for key in run.keys])
    latents, run.real_indices = _encode(generator, real_all, batch_size)
    latents = np.concatenate([latents, encoder_latents(generator, np.concatenate(run.generated))])
    run.latent_coordinates, explained = _pca2(_pooled(latents, latent_pooling),
                                              "encoder outputs")  # fmt: skip
    try:
        run.codebook = codebook_pca(generator, indices=run.real_indices)
        codebook = {"available": True,
                    "explained_variance_ratio": run.codebook["explained_variance_ratio"]}
    except (ImportError, BundleError) as exc:  # no onnx, or a graph without the lookup
        codebook = {"available": False, "reason": str(exc)}
    result = _clean({
        "settings": {"n_generated": n_generated, "seed": seed, "temperature": temperature,
                     **options, "patch_size": side, "patch_stride": stride, "texture": texture,
                     "texture_features": described, "latent_pooling": latent_pooling},
        "condition_names": list(run.names),
        "conditions": entries,
        "latent_pca": {"explained_variance_ratio": explained, "pooling": latent_pooling},
        "codebook_pca": codebook,
        "files": [],
    })  # fmt: skip
    if output is not None:
        run.write(pathlib.Path(output), result)
    return result


class _Run:
    """What :func:`evaluate_generated` gathers per condition, and the files it makes of it."""

    def __init__(self, names: Sequence[str], side: int):
        self.names, self.side = tuple(names), side
        self.keys: list[tuple[float, ...]] = []
        self.labels: list[str] = []
        self.n_images: list[int] = []
        self.real: dict[tuple[float, ...], np.ndarray] = {}
        self.maps: list[np.ndarray] = []
        self.generated: list[np.ndarray] = []
        self.real_stats: list[dict] = []
        self.generated_stats: list[dict] = []
        self.real_indices = self.latent_coordinates = self.codebook = None

    def add_real(self, generator, images_by_condition, stride: int) -> None:
        if not isinstance(images_by_condition, Mapping) or not images_by_condition:
            raise ValueError("real_images_by_condition must map at least one condition to "
                             "images")  # fmt: skip
        for condition, images in images_by_condition.items():
            key = _condition_key(condition, len(self.names))
            with warnings.catch_warnings():  # sampling warns about the range, once
                warnings.simplefilter("ignore", UserWarning)
                generator.check_conditions(key, 1)  # refuses what sampling would, before work
            label = _label(self.names, key)
            if key in self.real:
                raise ValueError(f"condition {label} is given twice")
            checked = _as_images(images, f"real images of {label}")
            self.real[key] = _real_patches(checked, self.side, stride, label)
            self.keys.append(key)
            self.labels.append(label)
            self.n_images.append(len(checked))

    def _sets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Set name, condition number and number within its group of each latent PCA point."""
        sizes = [len(self.real[key]) for key in self.keys] + [len(g) for g in self.generated]
        sets = np.repeat(["real"] * len(self.keys) + ["generated"] * len(self.keys), sizes)
        groups = np.repeat(np.tile(np.arange(len(self.keys)), 2), sizes)
        within = np.concatenate([np.arange(n) for n in sizes])
        return sets, groups, within

    def write(self, output: pathlib.Path, result: dict) -> None:
        from microtex import _files
        from microtex.report import write_json

        replace = output.exists()  # only with overwrite: evaluate_generated refused it else
        with _files.atomic_directory(output, replace=replace) as staging:
            files = _box_plots(staging, self.labels, self.real_stats, self.generated_stats)
            rows = []
            for c, key in enumerate(self.keys):
                for what, stats in (("real", self.real_stats[c]),
                                    ("generated", self.generated_stats[c])):  # fmt: skip
                    rows += [[what, *key, i, *(_clean(float(stats[s][i])) for s in STATISTICS)]
                             for i in range(len(stats[STATISTICS[0]]))]  # fmt: skip
            _files.atomic_write_text(staging / "statistics.csv",
                                     csv_text(["set", *self.names, "image", *STATISTICS], rows))
            sets, groups, within = self._sets()
            explained = result["latent_pca"]["explained_variance_ratio"]
            _scatter(staging / "latent_pca.png", self.latent_coordinates, groups, sets,
                     self.labels, explained,
                     f"encoder outputs z_e ({result['latent_pca']['pooling']} pooling)")
            _files.atomic_write_text(staging / "latent_pca.csv", csv_text(
                ["set", *self.names, "image", "pc1", "pc2"],
                [[sets[i], *self.keys[groups[i]], within[i], float(x), float(y)]
                 for i, (x, y) in enumerate(self.latent_coordinates)]))  # fmt: skip
            files += ["statistics.csv", "latent_pca.png", "latent_pca.csv"]
            if self.codebook is not None:
                files += self._write_codebook(staging)
            files += [self._write_samples(staging), "generated_indices.npz"]
            np.savez(staging / "generated_indices.npz",
                     **{f"condition_{c}": maps for c, maps in enumerate(self.maps)})
            files += ["evaluation.csv", "evaluation.json"]
            result["files"] = sorted(files)
            _files.atomic_write_text(staging / "evaluation.csv",
                                     _summary_csv(list(self.names), result["conditions"]))
            write_json(staging / "evaluation.json", result)

    def _write_codebook(self, staging: pathlib.Path) -> list[str]:
        from microtex import _files

        book = self.codebook
        _codebook_plot(staging / "codebook_pca.png", book["coordinates"], book["usage"],
                       book["explained_variance_ratio"])  # fmt: skip
        generated = np.bincount(np.concatenate(self.maps).ravel(), minlength=len(book["usage"]))
        _files.atomic_write_text(staging / "codebook_pca.csv", csv_text(
            ["code", "pc1", "pc2", "uses_real", "uses_generated"],
            [[k, float(x), float(y), int(book["usage"][k]), int(generated[k])]
             for k, (x, y) in enumerate(book["coordinates"])]))  # fmt: skip
        return ["codebook_pca.png", "codebook_pca.csv"]

    def _write_samples(self, staging: pathlib.Path) -> str:
        """Up to 4 real patches and 4 generated images of each condition, a row each."""
        from microtex.report import montage

        shown = min(4, len(self.generated[0]))
        blank = np.ones((self.side, self.side), np.float32)
        pictures, titles = [], []
        for c, key in enumerate(self.keys):
            for what, images in (("real", self.real[key]), ("generated", self.generated[c])):
                n = min(shown, len(images))
                pictures += [*images[:n], *[blank] * (shown - n)]
                titles += [f"{what} {self.labels[c]}"] * n + [""] * (shown - n)
        montage(pictures, titles, staging / "samples.png", columns=2 * shown)
        return "samples.png"
